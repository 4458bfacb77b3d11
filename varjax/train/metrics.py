"""Training metrics: `metrics.jsonl` in the run dir and TensorBoard events.

Each line of metrics.jsonl is one JSON object with `step` and `split` ("train" or "eval");
lists (per-scale values) stay lists. The file is appended and flushed line by line, so a
crash loses at most the line being written. On resume, lines beyond the restored step
are dropped first (they belong to steps that are about to be recomputed), so the curve of
a resumed run equals the curve of an uninterrupted one.

TensorBoard event files go to `run_dir/tensorboard` (scalars only; per-scale lists become
`loss_per_scale/<k>`), written with tensorboardX (no TensorFlow or TensorBoard server needed).
Only process 0 writes.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import jax
import numpy as np

from varjax import files

METRICS_FILE = "metrics.jsonl"


def _plain(value):
  value = np.asarray(value) if isinstance(value, (jax.Array, np.ndarray, np.generic)) else value
  if isinstance(value, np.ndarray):
    return value.item() if value.ndim == 0 else value.tolist()
  return value


def truncate_after(run_dir: str, step: int) -> None:
  """Drops metrics lines with step > `step` (and a torn last line) before a resume."""
  path = os.path.join(run_dir, METRICS_FILE)
  if not os.path.exists(path):
    return
  kept = []
  with open(path) as f:
    for line in f:
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        continue  # a line cut short by a crash
      if record.get("step", 0) <= step:
        kept.append(json.dumps(record))
  files.write_atomic(path, "".join(k + "\n" for k in kept))


class MetricsWriter:
  def __init__(self, run_dir: str, tensorboard: bool = True):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(run_dir, METRICS_FILE)
    self._file = open(self.path, "a") if self.enabled else None
    self._tb = None
    if self.enabled and tensorboard:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(os.path.join(run_dir, "tensorboard"), flush_secs=30)

  def write(self, step: int, split: str, values: dict[str, Any]) -> dict[str, Any]:
    record = {"step": int(step), "split": split, **{k: _plain(v) for k, v in values.items()}}
    if not self.enabled:
      return record
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()
    if self._tb is not None:
      for key, value in record.items():
        if key in ("step", "split"):
          continue
        if isinstance(value, list):
          for i, v in enumerate(value):
            if isinstance(v, (int, float)) and math.isfinite(v):
              self._tb.add_scalar(f"{split}/{key}/{i}", v, int(step))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) \
            and math.isfinite(value):
          self._tb.add_scalar(f"{split}/{key}", value, int(step))
    return record

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None
    if self._tb is not None:
      try:
        self._tb.close()
      except OSError:  # a full or read-only disk: metrics.jsonl is the record, TB is a view
        # tensorboardX retries a failed close at exit and prints a traceback then; mark its
        # writers closed so the one-line error the CLI prints stays the only one.
        for writer in (self._tb.all_writers or {}).values():
          writer.event_writer._closed = True
      self._tb = None
