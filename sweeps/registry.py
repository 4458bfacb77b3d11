"""The run registry: a directory of run directories plus an append-only event log.

    <out_dir>/<run>/config.json     the run's full varjax config (written when it starts)
    <out_dir>/<run>/sweep.json      its place in the sweep (model, budget, seed, lr scale)
    <out_dir>/<run>/metrics.jsonl   training and evaluation records
    <out_dir>/<run>/checkpoints/    orbax checkpoints (resume)
    <out_dir>/<run>/summary.json    final losses, FLOPs, parameter counts, wall time,
                                    hardware; written last, so it marks the run finished
    <out_dir>/<run>/error.json      why the last attempt failed (removed when it is retried)
    <out_dir>/<run>/stopped_early.json  an early-stop sweep stopped the run at a step: its
                                    forecast, rank and group (sweeps/early_stop.py); the
                                    run is done, not finished, and never resumed by a sweep
    <out_dir>/early_stop/<group>.json   an early-stop group's decision (who goes on)
    <out_dir>/registry.jsonl        one line per event (started / paused / stopped_early /
                                    kept / finished / failed / interrupted) from every
                                    launcher and worker

Several processes may share a registry (two `make sweep`s, Ray workers, TPU hosts):
events are appended under an exclusive `flock` with one `write` per line, and a run is
trained only by the process holding the non-blocking lock on `<run>/.lock`; another
process finds it busy and leaves it. `analysis.load_runs(out_dir)` reads the result.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
import traceback
from typing import Any

from varjax import files
from varjax.train import rundir

EVENTS_FILE = "registry.jsonl"
ERROR_FILE = "error.json"
STOPPED_FILE = "stopped_early.json"
LOCK_FILE = rundir.LOCK_FILE


# The run lock is the trainer's own (`varjax train` takes it too): one definition.
Busy = rundir.RunBusy
run_lock = rundir.run_lock


def append_event(out_dir: str, run: str, event: str, **fields: Any) -> None:
  """Appends one JSON line to <out_dir>/registry.jsonl; safe with concurrent writers."""
  os.makedirs(out_dir, exist_ok=True)
  record = {"time": time.time(), "run": run, "event": event, "host": socket.gethostname(),
            "pid": os.getpid(), **fields}
  line = (json.dumps(record, default=str) + "\n").encode()
  fd = os.open(os.path.join(out_dir, EVENTS_FILE), os.O_WRONLY | os.O_APPEND | os.O_CREAT,
               0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX)
    view = memoryview(line)
    while view:  # O_APPEND + the lock: no other line can land inside this one
      view = view[os.write(fd, view):]
  finally:
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def events(out_dir: str) -> list[dict[str, Any]]:
  path = os.path.join(out_dir, EVENTS_FILE)
  if not os.path.exists(path):
    return []
  out = []
  with open(path) as f:
    for line in f:
      if line.strip():
        out.append(json.loads(line))
  return out


def status(directory: str) -> str:
  """finished | stopped_early | failed | interrupted (started, resumable; also an
  early-stop run paused at its stop step) | pending (never started)."""
  if os.path.exists(os.path.join(directory, "summary.json")):
    return "finished"
  if os.path.exists(os.path.join(directory, STOPPED_FILE)):
    return "stopped_early"
  if os.path.exists(os.path.join(directory, ERROR_FILE)):
    return "failed"
  if os.path.exists(os.path.join(directory, "config.json")):
    return "interrupted"
  return "pending"


def record_failure(directory: str, error: BaseException) -> dict[str, Any]:
  info = {"time": time.time(), "type": type(error).__name__,
          "error": str(error).strip().splitlines()[0][:500] if str(error).strip() else "",
          "traceback": traceback.format_exception(error)}
  os.makedirs(directory, exist_ok=True)
  files.write_json(os.path.join(directory, ERROR_FILE), info)
  return info


def fail(out_dir: str, run: str, error: BaseException, seconds: float,
         **fields: Any) -> dict[str, Any]:
  """Records a run's failure (error.json and a `failed` event); returns its outcome."""
  info = record_failure(os.path.join(out_dir, run), error)
  append_event(out_dir, run, "failed", error=info["error"], type=info["type"],
               seconds=seconds, **fields)
  return {"run": run, "status": "failed", "error": f"{info['type']}: {info['error']}",
          "seconds": seconds}


def read_failure(directory: str) -> dict[str, Any] | None:
  path = os.path.join(directory, ERROR_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def clear_failure(directory: str) -> None:
  with contextlib.suppress(FileNotFoundError):
    os.remove(os.path.join(directory, ERROR_FILE))
