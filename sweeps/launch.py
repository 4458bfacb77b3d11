"""Running a sweep's runs: one run in this process (shared by every backend), the local
backend (one run after another), and the outcome table.

`run_one` is idempotent: a finished run is skipped, an interrupted one resumes from its
newest checkpoint (varjax.train.loop), a failed one is retried with its error cleared, and
a run another process is training right now is left to it, and a run an early-stop sweep
stopped stays stopped. With `stop_at` a run trains to that step (checkpointed: the sweep
puts it in run.keep_steps), records `paused` and returns; run again it resumes there with
the schedule of its full length (sweeps/early_stop.py). Failures are recorded in the
run directory (error.json, with the traceback) and the registry, and the sweep goes on.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any, Callable

from varjax import files
from varjax.errors import Preempted

from sweeps import registry
from sweeps.spec import SWEEP_FILE, Run


def _is_main() -> bool:
  import jax
  return jax.process_index() == 0


def _single_process() -> bool:
  import jax
  return jax.process_count() == 1


class Paused(Exception):
  """Raised after the checkpoint of a run's stop step (run_one's `stop_at`)."""

  def __init__(self, step: int):
    super().__init__(f"paused at step {step}")
    self.step = step


def run_one(run: Run, *, progress: bool | None = None, log: Callable[[str], None] = print,
            on_step: Callable[[int], None] | None = None, backend: str = "local",
            stop_at: int | None = None) -> dict[str, Any]:
  """Trains (or resumes, or skips) one run here; returns its outcome:
  {"run", "status": finished | trained | paused | stopped_early | failed | busy, "error"?,
  "loss"?, "step"?, "seconds"}. `stop_at`: train only to that step (it must be in the
  run's keep_steps, so it is checkpointed before the run pauses)."""
  from varjax.train import loop
  directory, out_dir = run.directory, run.config.run.out_dir
  start = time.time()
  before = registry.status(directory)
  if before in ("finished", "stopped_early"):
    return {"run": run.name, "status": before, "seconds": 0.0}
  if stop_at is not None and stop_at not in run.config.run.keep_steps:
    raise ValueError(f"{run.name}: stop_at {stop_at} is not in run.keep_steps")

  def step_hook(step: int) -> None:
    if on_step is not None:
      on_step(step)
    if step == stop_at:  # its checkpoint is written (keep_steps): pause here
      raise Paused(step)
  main = _is_main()
  try:
    # Several processes of one multi-host run train it together: only single-process
    # launchers take the lock (processes of a pod would find each other busy).
    lock = registry.run_lock(directory) if _single_process() else contextlib.nullcontext()
    with lock:
      if registry.status(directory) == "finished":  # finished by another process meanwhile
        return {"run": run.name, "status": "finished", "seconds": 0.0}
      if main:
        begin(run, backend=backend, resumed=before == "interrupted")
      summary = loop.train(run.config, progress=progress, log=log, on_step=step_hook)
      if main:
        registry.append_event(out_dir, run.name, "finished", loss=summary["loss"],
                              seconds=time.time() - start)
      return {"run": run.name, "status": "trained", "loss": summary["loss"],
              "seconds": time.time() - start}
  except registry.Busy:
    return {"run": run.name, "status": "busy", "seconds": 0.0}
  except Paused as p:
    if main:
      registry.append_event(out_dir, run.name, "paused", step=p.step,
                            seconds=time.time() - start)
    return {"run": run.name, "status": "paused", "step": p.step,
            "seconds": time.time() - start}
  except (Preempted, KeyboardInterrupt):
    if main:
      registry.append_event(out_dir, run.name, "interrupted", seconds=time.time() - start)
    raise
  except Exception as e:  # noqa: BLE001 -- a failed run is recorded, the sweep goes on
    if not main:
      raise
    outcome = registry.fail(out_dir, run.name, e, time.time() - start)
    log(f"{run.name}: FAILED: {outcome['error']} "
        f"(traceback in {os.path.join(directory, registry.ERROR_FILE)})")
    return outcome


def begin(run: Run, **fields) -> None:
  """A run starts (again): its old error cleared, its sweep.json written, a `started`
  event with `fields` (backend, resumed, ...)."""
  registry.clear_failure(run.directory)
  files.write_json(os.path.join(run.directory, SWEEP_FILE), run.info)
  registry.append_event(run.config.run.out_dir, run.name, "started", **fields)


def run_local(runs: list[Run], *, progress: bool | None = None,
              log: Callable[[str], None] = print) -> list[dict[str, Any]]:
  """BACKEND=local: the runs one after another in this process."""
  outcomes = []
  for i, run in enumerate(runs):
    if registry.status(run.directory) not in ("finished", "stopped_early"):
      log(f"[{i + 1}/{len(runs)}] {run.name}: {run.info['steps']} steps, "
          f"N = {run.info['params']:,}, D = {run.info['tokens']:,} tokens")
    outcomes.append(run_one(run, progress=progress, log=log))
  return outcomes


def format_outcomes(outcomes: list[dict[str, Any]]) -> str:
  lines = []
  for o in outcomes:
    detail = {"finished": "already finished (skipped)", "busy": "being trained by another process",
              "trained": f"eval loss {o.get('loss', float('nan')):.4f}",
              "paused": o.get("detail", f"at step {o.get('step')}"),
              "stopped_early": o.get("detail", "stopped early (not trained to the end)"),
              "failed": o.get("error", "")}.get(o["status"], "")
    lines.append(f"  {o['run']:<28} {o['status']:<13} {o['seconds']:7.1f} s  {detail}")
  return "\n".join(lines)
