"""Training checkpoints with orbax: periodic and final saves, keep-last-N, resume, SIGTERM.

A checkpoint `checkpoints/<step>/` holds the whole training state (params, optimizer
state, step, RNG key data; sharded arrays written by every process) and a JSON record
(step, examples consumed, wall time; the trainer adds its counters). Orbax writes into a
temporary directory and renames it when complete, so a crash or kill -9 never leaves a
checkpoint that looks finished. A checkpoint that is finished but unreadable (truncated or
deleted files) is skipped with a warning and the one before it is used; when every one is
unreadable the run stops (DamagedCheckpoints) instead of silently starting again from step
0, unless the trainer allows a restart (`run.restart_if_damaged`). An existing step is never
overwritten: orbax refuses, and we only save steps greater than the latest. Restoring takes
the target's shardings, so a run resumes on another mesh (orbax reshards).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import signal
import sys
import threading
import warnings
from typing import Any

import jax
import orbax.checkpoint as ocp

from varjax import errors

STATE, RECORD = "state", "record"
SPACE_MARGIN = 1 << 20  # metadata, the JSON record and the file system's own blocks


@contextlib.contextmanager
def _without_read_only_notice():
  """Drops orbax's warning that a read-only manager's directory is read only: asked for
  here. varjax's commands raise absl to ERROR (cli._quiet_library_logs), but a sweep's Ray
  worker trains without them, and every cool-down opens its trunk's checkpoints."""
  def keep(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Given directory is read only")
  logger = logging.getLogger("absl")
  logger.addFilter(keep)
  try:
    yield
  finally:
    logger.removeFilter(keep)


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
                                           save_interval_steps=0 if read_only else 1,
                                           cleanup_tmp_directories=not read_only,
                                           enable_async_checkpointing=False)
    with _without_read_only_notice() if read_only else contextlib.nullcontext():
      self.manager = ocp.CheckpointManager(self.directory, options=options)

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, state: Any, record: dict) -> None:
    if step in self.manager.all_steps():
      return  # the same step from the same run: nothing new to write, nothing overwritten
    self._check_space(step, state)
    self.manager.save(step, args=ocp.args.Composite(**{
        STATE: ocp.args.StandardSave(state), RECORD: ocp.args.JsonSave(record)}), force=True)
    self.manager.wait_until_finished()

  def _check_space(self, step: int, state: Any) -> None:
    """Refuses a save the disk cannot hold, before orbax starts writing: a save that fails
    halfway is cleaned up, but its worker threads report the failure as pages of tracebacks
    after the one line the command prints."""
    need = sum(getattr(leaf, "nbytes", 0) for leaf in jax.tree.leaves(state)) + SPACE_MARGIN
    free = shutil.disk_usage(self.directory).free
    if need > free:
      raise OSError(errno.ENOSPC, f"No space left on device: the checkpoint of step {step} "
                    f"needs {need / 2**20:.1f} MiB, {free / 2**20:.1f} MiB are free",
                    self.directory)

  def restore_step(self, abstract_state: Any, step: int) -> tuple[Any, dict] | None:
    """(state, record) of exactly `step`, None if it is missing or unreadable."""
    if step not in self.steps():
      return None
    restored = self.restore_latest(abstract_state, at_most=step)
    return restored if restored is not None and int(restored[1]["step"]) == step else None

  def restore_latest(self, abstract_state: Any, at_most: int | None = None,
                     restart_if_damaged: bool = True) -> tuple[Any, dict] | None:
    """(state, record) of the newest readable checkpoint (of step <= `at_most` if given),
    or None if there is none. `abstract_state` gives shapes, dtypes and target shardings:
    jax.ShapeDtypeStructs, or arrays of the same shape (NumPy arrays restore as NumPy).
    When checkpoints exist but none is readable: None if `restart_if_damaged`, else
    DamagedCheckpoints."""
    tried = []
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
        tried.append(step)
        warnings.warn(f"checkpoint {self.directory}/{step} is unreadable ({first}); "
                      f"trying the one before it", stacklevel=2)
    if tried and not restart_if_damaged:
      raise DamagedCheckpoints(
          f"every checkpoint in {self.directory} is unreadable (steps "
          f"{', '.join(map(str, sorted(tried)))}); nothing was changed. Rerun with "
          "--run.restart_if_damaged=true to train again from step 0, or restore the files")
    return None

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


class DamagedCheckpoints(errors.VarjaxError):
  """Checkpoints exist but none can be read."""


# A stop that arrived while no training loop was listening yet (see ask_to_stop).
_stop_asked: list[str] = []


def ask_to_stop(reason: str = "Ctrl-C") -> None:
  """Records a stop request made before the loop's PreemptionFlag exists: a Ray task cancelled
  during its setup gets a simulated Ctrl-C, and Python's default handler raises it wherever
  the main thread is, where it can be swallowed (seen inside one of JAX's garbage-collection
  callbacks, after which the run trained to the end). The next PreemptionFlag starts
  requested instead, so the run saves at the end of its first step and records its
  interruption."""
  if not _stop_asked:
    _stop_asked.append(reason)


def clear_stop_request() -> None:
  """Forgets a pending ask_to_stop (a worker process starting its next task)."""
  _stop_asked.clear()


class PreemptionFlag:
  """SIGTERM (TPU/cloud preemption, `kill`, Ray stopping a task) or Ctrl-C asks the loop to
  save a checkpoint at the end of a step and exit; `reached(step)` says when, `reason` which
  ("SIGTERM" or "Ctrl-C"). A second Ctrl-C stops at once (KeyboardInterrupt), without
  waiting for the step or the save.

  One process: a Python SIGTERM handler sets a flag (only the main thread can install it;
  elsewhere the flag stays unset). Several processes (`jax.distributed` initialised): the
  signal may reach only some of them, yet the save is collective, so they must agree on
  the step. JAX's preemption sync manager does that: it catches SIGTERM itself, tells the
  other processes through the coordination service, and `reached_preemption_sync_point`
  returns True on every process at the same step. No Python handler is installed then,
  since it would take the signal away from JAX's; Ctrl-C then keeps Python's default."""

  def __init__(self):
    import jax
    self.requested = False
    self.reason = "SIGTERM"
    if _stop_asked:  # asked before this loop listened (ask_to_stop)
      self.requested, self.reason = True, _stop_asked.pop()
    self._previous: dict[int, Any] = {}
    self._synced = (jax.process_count() > 1 and jax.distributed.is_initialized()
                    and jax.config.jax_enable_preemption_service)
    if threading.current_thread() is not threading.main_thread():
      return  # only the main thread can install handlers; the flag stays unset
    if not self._synced:
      self._previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._handle)
      self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._handle)

  def _handle(self, signum, frame):
    if signum == signal.SIGINT:
      if self.requested:  # the second Ctrl-C: stop now
        raise KeyboardInterrupt
      print("Ctrl-C: saving a checkpoint at the end of this step (Ctrl-C again stops at "
            "once, losing the steps since the last checkpoint)", file=sys.stderr, flush=True)
      self.reason = "Ctrl-C"
    self.requested = True

  def reached(self, step: int) -> bool:
    """Call once per step, with the same steps on every process."""
    if self._synced:
      from jax.experimental import multihost_utils
      return multihost_utils.reached_preemption_sync_point(step)
    return self.requested

  def restore(self) -> None:
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)
    self._previous = {}


Preempted = errors.Preempted  # raised after the preemption checkpoint is written
