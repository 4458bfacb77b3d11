"""Early stopping of an lr sweep (spec `early_stop: {at, keep, group_by}`), BACKEND=local.

The runs that share `group_by` (model, budget, seed and unique_images by default: the runs
that differ only in lr) form a group. Two phases:

  1. every run of a group trains to its stop step, round(at x steps), where it is
     checkpointed (the sweep puts the step in run.keep_steps) and `paused`; its lr
     schedule is that of its full length all along;
  2. once all of a group has reached it, each run's final loss is forecast from its curve
     up to that step (analysis.extrapolate, lr_annealing on the run's own schedule; the
     eval loss when every run of the group has an eval forecast, else the train loss;
     the 95% bootstrap interval is recorded beside it, not used), the
     decision is written to <out_dir>/early_stop/<group>.json, the best kept(n) runs
     (keep x n rounded, halves up, at least 1) are recorded `kept` and resume to the end,
     the others get <run>/stopped_early.json and a `stopped_early` event (forecast, rank).

Nothing is lost on a crash or Ctrl-C: a paused run is an ordinary interrupted run with a
checkpoint at its stop step, the decision file is written atomically before any run is
marked, and marking is idempotent; running the sweep again continues (a decided group
stays decided). A group whose runs cannot all be forecast (too few points) keeps every
run and says why. A run that finished before its group was decided is never stopped.
Stopped runs are not finished: `analysis.load_runs` leaves them out unless asked
(`include_stopped_early`), since their loss is not a trained run's final loss.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import time
from typing import Any, Callable

from varjax import files

from sweeps import launch, registry
from sweeps.spec import EarlyStopSpec, Run

DECISIONS_DIR = "early_stop"
METHOD = "lr_annealing"
REPLICATES = 100  # bootstrap replicates of each forecast's 95% interval (recorded, not used)


def groups(runs: list[Run]) -> dict[str, list[Run]]:
  """The runs of each early-stop group, in sweep order."""
  out: dict[str, list[Run]] = {}
  for run in runs:
    out.setdefault(run.info["early_stop_group"], []).append(run)
  return out


def describe(early: EarlyStopSpec, runs: list[Run]) -> list[str]:
  """The plan, for `sweeps list` and dry runs: one line, then one per group."""
  shared = ", ".join(early.group_by) or "nothing"
  lines = [f"early stop: at {early.at:g} of each run's steps its final loss is forecast "
           f"({METHOD}); of the runs sharing {shared} (differing in lr) the best "
           f"{early.keep:g} train on, the others stop"]
  for label, members in groups(runs).items():
    steps = sorted({m.info["early_stop_step"] for m in members})
    lines.append(f"  group {label}: {len(members)} runs, keep {early.kept(len(members))}, "
                 f"decide at step {', '.join(map(str, steps))}")
  return lines


def decision_path(out_dir: str, group: str) -> str:
  return os.path.join(out_dir, DECISIONS_DIR, f"{group}.json")


def read_decision(out_dir: str, group: str) -> dict[str, Any] | None:
  path = decision_path(out_dir, group)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def reached(run: Run) -> bool:
  """Whether the run has trained to its stop step (a checkpoint there or later; finished)."""
  if registry.status(run.directory) in ("finished", "stopped_early"):
    return True
  ckpts = os.path.join(run.directory, "checkpoints")
  if not os.path.isdir(ckpts):
    return False
  return any(d.isdigit() and int(d) >= run.info["early_stop_step"] for d in os.listdir(ckpts))


def forecast_run(run: Run) -> dict[str, Any]:
  """{split: forecast of the final loss} from the run's curve up to its stop step, and the
  losses measured last at or before it."""
  import numpy as np
  from analysis import extrapolate
  from analysis.validate import AnalysisError
  stop, steps = run.info["early_stop_step"], run.info["steps"]
  out: dict[str, Any] = {"run": run.name, "stop_step": stop, "steps": steps}
  try:
    curve = extrapolate.load_run(run.directory)
    result = extrapolate.forecast(curve, stop / steps, methods=(METHOD,),
                                  replicates=REPLICATES)
  except AnalysisError as e:
    return dict(out, forecasts={}, reason=str(e))
  out["forecasts"] = {r["split"]: r["forecast"] for r in result["forecasts"]
                      if math.isfinite(r["forecast"])}
  out["intervals_95"] = {r["split"]: r["interval_95"] for r in result["forecasts"]
                         if "interval_95" in r}
  out["reason"] = "; ".join(f"{s['split']}: {s['reason']}" for s in result["skipped"])
  for split in ("eval", "train"):
    if split in curve.points:
      at, loss = curve.points[split]
      before = at <= stop
      if before.any():
        out[f"{split}_step"] = int(at[before][-1])
        out[f"{split}_loss_at_stop"] = float(np.asarray(loss)[before][-1])
  return out


def decide(group: str, members: list[Run], early: EarlyStopSpec) -> dict[str, Any]:
  """The group's decision from the members' forecasts (every member has reached its stop
  step): which train on and which stop, with each one's forecast and rank."""
  rows = [forecast_run(m) for m in members]
  n, keep = len(members), early.kept(len(members))
  split = next((s for s in ("eval", "train") if all(s in r["forecasts"] for r in rows)), None)
  decision = {"group": group, "at": early.at, "keep": early.keep, "size": n, "kept": keep,
              "method": METHOD, "split": split, "time": time.time()}
  finished = {m.name for m in members if registry.status(m.directory) == "finished"}
  if split is None:
    missing = [f"{r['run']} ({r['reason'] or 'no forecast'})" for r in rows
               if "train" not in r["forecasts"]]
    decision["reason"] = ("every run kept: no forecast of " + "; ".join(missing))
    for r in rows:
      r.update(decision="kept", rank=None, forecast=None, interval_95=None)
    return dict(decision, kept=n, runs=rows)
  order = sorted(range(n), key=lambda i: (rows[i]["forecasts"][split], i))
  for rank, i in enumerate(order, start=1):
    row = rows[i]
    row.update(forecast=row["forecasts"][split], rank=rank,
               interval_95=row.get("intervals_95", {}).get(split),
               decision="kept" if rank <= keep else "stopped_early")
    if row["decision"] == "stopped_early" and row["run"] in finished:
      row.update(decision="kept", note="finished before the group was decided")
  return dict(decision, runs=rows)


def apply(out_dir: str, decision: dict[str, Any]) -> None:
  """Marks the decided runs (idempotent: what is already marked is left as it is)."""
  logged = {(e["run"], e["event"]) for e in registry.events(out_dir)
            if e["event"] in ("kept", "stopped_early")}
  for row in decision["runs"]:
    fields = {"group": decision["group"], "step": row["stop_step"],
              "forecast": row["forecast"], "interval_95": row["interval_95"],
              "rank": row["rank"], "of": decision["size"],
              "kept": decision["kept"], "split": decision["split"],
              "method": decision["method"]}
    if row["decision"] == "stopped_early":
      path = os.path.join(out_dir, row["run"], registry.STOPPED_FILE)
      if not os.path.exists(path):
        files.write_json(path, dict(row, **fields, time=decision["time"]))
    if (row["run"], row["decision"]) not in logged:
      registry.append_event(out_dir, row["run"], row["decision"], **fields)


@contextlib.contextmanager
def _decision_lock(out_dir: str):
  """One process decides a group at a time (two sweeps may share a registry)."""
  directory = os.path.join(out_dir, DECISIONS_DIR)
  os.makedirs(directory, exist_ok=True)
  fd = os.open(os.path.join(directory, ".lock"), os.O_WRONLY | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX)
    yield
  finally:
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def settle(out_dir: str, group: str, members: list[Run], early: EarlyStopSpec,
           log: Callable[[str], None]) -> dict[str, Any] | None:
  """The group's decision: read, or made now if every member has reached its stop step
  (None otherwise); applied either way."""
  with _decision_lock(out_dir):
    decision = read_decision(out_dir, group)
    if decision is None:
      if not all(reached(m) for m in members):
        return None
      decision = decide(group, members, early)
      files.write_json(decision_path(out_dir, group), decision)
      log(format_decision(decision))
    apply(out_dir, decision)
  return decision


def format_decision(decision: dict[str, Any]) -> str:
  lines = [f"early stop {decision['group']}: keep {decision['kept']} of {decision['size']}"
           + (f" by forecast {decision['split']} loss" if decision["split"] else "")
           + (f" ({decision['reason']})" if decision.get("reason") else "")]
  for row in sorted(decision["runs"], key=lambda r: r["rank"] or 0):
    forecast = f"{row['forecast']:.4f}" if row["forecast"] is not None else "-"
    if row.get("interval_95"):
      forecast += " [{:.4g}, {:.4g}]".format(*row["interval_95"])
    lines.append(f"  {row['rank'] or '-'}. {row['run']:<28} forecast {forecast}  "
                 f"{row['decision']}" + (f" ({row['note']})" if row.get("note") else ""))
  return "\n".join(lines)


def run_local(runs: list[Run], early: EarlyStopSpec, all_runs: list[Run], *,
              progress: bool | None = None,
              log: Callable[[str], None] = print) -> list[dict[str, Any]]:
  """BACKEND=local with early stopping: phase 1 (each undecided group to its stop step,
  then its decision), phase 2 (the kept runs to the end). `runs` are the selected runs,
  `all_runs` the sweep's: a group is decided only once all of its runs have reached the
  stop step, selected or not."""
  if not runs:
    return []
  out_dir = runs[0].config.run.out_dir
  selected = {r.name for r in runs}
  outcomes: dict[str, dict[str, Any]] = {}
  for group, members in groups(all_runs).items():
    if not selected & {m.name for m in members}:
      continue
    if read_decision(out_dir, group) is None:
      for m in members:
        if m.name in selected and not reached(m):
          log(f"[phase 1] {m.name}: to step {m.info['early_stop_step']} of {m.info['steps']}")
          outcome = launch.run_one(m, progress=progress, log=log,
                                   stop_at=m.info["early_stop_step"])
          if outcome["status"] in ("failed", "busy"):
            outcomes[m.name] = outcome
    if settle(out_dir, group, members, early, log) is None:
      waiting = [m.name for m in members if not reached(m)]
      log(f"early stop {group}: undecided until {', '.join(waiting)} reach their stop step")
  todo = [r for r in runs if r.name not in outcomes]
  for run in todo:
    decision = read_decision(out_dir, run.info["early_stop_group"])
    if decision is None:
      outcomes[run.name] = {"run": run.name, "status": "paused", "seconds": 0.0,
                            "detail": "at its stop step; its group is undecided"}
      continue
    if registry.status(run.directory) == "stopped_early":
      row = next(r for r in decision["runs"] if r["run"] == run.name)
      outcomes[run.name] = {"run": run.name, "status": "stopped_early", "seconds": 0.0,
                            "detail": f"at step {row['stop_step']}: forecast "
                                      f"{row['forecast']:.4f}, rank {row['rank']} of "
                                      f"{decision['size']}"}
      continue
    if registry.status(run.directory) != "finished":
      log(f"[phase 2] {run.name}: on to step {run.info['steps']}")
    outcomes[run.name] = launch.run_one(run, progress=progress, log=log)
  return [outcomes[r.name] for r in runs]
