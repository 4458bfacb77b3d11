"""BACKEND=lanes: the sweep's runs grouped by shape, each group trained as lanes of one
vmapped program (varjax.train.lanes); a run alone in its shape trains as a single run.

Runs of one shape are those that differ only in seed and learning rate (`lr.scales` or
several `seeds` in the spec). Finished runs are skipped; a run another process holds is
left out of its group; a group whose program fails records the failure for every lane.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Callable

from varjax.errors import Preempted

from sweeps import launch, registry
from sweeps.spec import Run


def groups(runs: list[Run], max_lanes: int) -> list[list[Run]]:
  """Runs of equal shape in chunks of at most `max_lanes`, in sweep order."""
  from varjax.train.lanes import shape_key
  by_key: dict[str, list[Run]] = {}
  for run in runs:  # a warm-started run (a WSD cool-down) trains alone
    key = run.name if run.config.run.warm_start else shape_key(run.config)
    by_key.setdefault(key, []).append(run)
  out = []
  for members in by_key.values():
    out += [members[i:i + max_lanes] for i in range(0, len(members), max_lanes)]
  return out


def _train_group(group: list[Run], progress, log) -> list[dict[str, Any]]:
  from varjax.train import lanes
  start = time.time()
  out_dir = group[0].config.run.out_dir
  with contextlib.ExitStack() as stack:
    held, outcomes = [], []
    for run in group:
      try:
        stack.enter_context(registry.run_lock(run.directory))
      except registry.Busy:
        outcomes.append({"run": run.name, "status": "busy", "seconds": 0.0})
        continue
      # Statuses were read when the sweep started: another process may have finished (or
      # stopped) this run since, and its lock is only ours now. As launch.run_one does.
      now = registry.status(run.directory)
      if now in ("finished", "stopped_early"):
        outcomes.append({"run": run.name, "status": now, "seconds": 0.0})
        continue
      held.append(run)
    if not held:
      return outcomes
    if len(held) == 1:
      stack.close()
      return outcomes + [launch.run_one(held[0], progress=progress, log=log, backend="lanes")]
    for run in held:
      launch.begin(run, backend="lanes", lanes=len(held),
                   resumed=registry.status(run.directory) == "interrupted")
    try:
      results = lanes.train_lanes([r.config for r in held], progress=progress, log=log)
    except (Preempted, KeyboardInterrupt):
      for run in held:
        registry.append_event(out_dir, run.name, "interrupted", seconds=time.time() - start)
      raise
    except Exception as e:  # noqa: BLE001 -- recorded for every lane, the sweep goes on
      results = [e] * len(held)
    seconds = time.time() - start
    for run, result in zip(held, results):
      if isinstance(result, dict) and "error" not in result:
        registry.append_event(out_dir, run.name, "finished", loss=result["loss"],
                              seconds=seconds, lanes=len(held))
        outcomes.append({"run": run.name, "status": "trained", "loss": result["loss"],
                         "seconds": seconds})
        continue
      error = result if isinstance(result, BaseException) else RuntimeError(result["error"])
      outcome = registry.fail(out_dir, run.name, error, seconds)
      log(f"{run.name}: FAILED: {outcome['error']}")
      outcomes.append(outcome)
    return outcomes


def run_lanes(runs: list[Run], *, progress: bool | None = None, max_lanes: int = 8,
              log: Callable[[str], None] = print) -> list[dict[str, Any]]:
  done = {r.name: registry.status(r.directory) for r in runs}
  todo = [r for r in runs if done[r.name] not in ("finished", "stopped_early")]
  outcomes = {r.name: {"run": r.name, "status": done[r.name], "seconds": 0.0}
              for r in runs if r not in todo}
  for group in groups(todo, max_lanes):
    log(f"lanes: {', '.join(r.name for r in group)}")
    for outcome in _train_group(group, progress, log):
      outcomes[outcome["run"]] = outcome
  return [outcomes[r.name] for r in runs]
