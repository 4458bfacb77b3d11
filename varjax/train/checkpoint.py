"""Training checkpoints with orbax: periodic and final saves, keep-last-N, resume, SIGTERM.

A checkpoint `checkpoints/<step>/` holds the whole training state (params, AdamW state,
step, RNG key data; sharded arrays written by every process) and a JSON record (step, data
position = examples consumed, config digest, wall time). Orbax writes into a temporary
directory and renames it when complete, so a crash or kill -9 never leaves a checkpoint
that looks finished. A checkpoint that is finished but unreadable (truncated or deleted
files) is skipped with a warning and the one before it is used. An existing step is never
overwritten: orbax refuses, and we only save steps greater than the latest.
"""

from __future__ import annotations

import os
import signal
import threading
import warnings
from typing import Any

import orbax.checkpoint as ocp

from varjax import errors

STATE, RECORD = "state", "record"


class Checkpoints:
  """`CheckpointManager` over `run_dir/checkpoints` keeping the last `keep` steps."""

  def __init__(self, run_dir: str, keep: int, keep_steps: tuple[int, ...] = (),
               read_only: bool = False):
    """Keeps the newest `keep` checkpoints, and those of `keep_steps` for good; `read_only`
    for reading another run's checkpoints (nothing is written or deleted there)."""
    self.directory = os.path.join(os.path.abspath(run_dir), "checkpoints")
    policies = ocp.checkpoint_managers
    preserve = policies.LatestN(keep)
    if keep_steps:
      preserve = policies.AnyPreservationPolicy([preserve, policies.CustomSteps(keep_steps)])
    options = ocp.CheckpointManagerOptions(preservation_policy=preserve, create=not read_only,
                                           read_only=read_only,
                                           cleanup_tmp_directories=not read_only,
                                           enable_async_checkpointing=False)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def save_and_stop(self, step: int, state: Any, record: dict):
    """The preemption exit: saves `step` and raises Preempted (the CLI exits 143)."""
    self.save(step, state, record)
    raise errors.Preempted(f"SIGTERM: saved step {step} in {self.directory}; rerun the same "
                           "command to resume")

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, state: Any, record: dict) -> None:
    if step in self.manager.all_steps():
      return  # the same step from the same run: nothing new to write, nothing overwritten
    self.manager.save(step, args=ocp.args.Composite(**{
        STATE: ocp.args.StandardSave(state), RECORD: ocp.args.JsonSave(record)}), force=True)
    self.manager.wait_until_finished()

  def restore_step(self, abstract_state: Any, step: int) -> tuple[Any, dict] | None:
    """(state, record) of exactly `step`, None if it is missing or unreadable."""
    if step not in self.steps():
      return None
    restored = self.restore_latest(abstract_state, at_most=step)
    return restored if restored is not None and int(restored[1]["step"]) == step else None

  def restore_latest(self, abstract_state: Any,
                     at_most: int | None = None) -> tuple[Any, dict] | None:
    """(state, record) of the newest readable checkpoint (of step <= `at_most` if given),
    or None if there is none. `abstract_state` gives shapes, dtypes and target shardings:
    jax.ShapeDtypeStructs, or arrays of the same shape (NumPy arrays restore as NumPy)."""
    for step in reversed(self.steps()):
      if at_most is not None and step > at_most:
        continue
      try:
        restored = self.manager.restore(step, args=ocp.args.Composite(**{
            STATE: ocp.args.StandardRestore(abstract_state),
            RECORD: ocp.args.JsonRestore()}))
        return restored[STATE], dict(restored[RECORD])
      except Exception as e:  # orbax raises many types for damaged files
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        warnings.warn(f"checkpoint {self.directory}/{step} is unreadable ({first}); "
                      f"trying the one before it", stacklevel=2)
    return None

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


class PreemptionFlag:
  """SIGTERM (TPU/cloud preemption, `kill`, Ray stopping a task) asks the loop to save a
  checkpoint at the end of a step and exit; `reached(step)` says when.

  One process: a Python SIGTERM handler sets a flag (only the main thread can install it;
  elsewhere the flag stays unset). Several processes (`jax.distributed` initialised): the
  signal may reach only some of them, yet the save is collective, so they must agree on
  the step. JAX's preemption sync manager does that: it catches SIGTERM itself, tells the
  other processes through the coordination service, and `reached_preemption_sync_point`
  returns True on every process at the same step. No Python handler is installed then,
  since it would take the signal away from JAX's."""

  def __init__(self):
    import jax
    self.requested = False
    self._previous = None
    self._synced = (jax.process_count() > 1 and jax.distributed.is_initialized()
                    and jax.config.jax_enable_preemption_service)
    if not self._synced and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    self.requested = True

  def reached(self, step: int) -> bool:
    """Call once per step, with the same steps on every process."""
    if self._synced:
      from jax.experimental import multihost_utils
      return multihost_utils.reached_preemption_sync_point(step)
    return self.requested

  def restore(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None


Preempted = errors.Preempted  # raised after the preemption checkpoint is written
