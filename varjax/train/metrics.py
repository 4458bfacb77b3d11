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
import jax.numpy as jnp
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


@jax.jit
def _ema_zeros(like):
  zeros = jnp.zeros(jnp.shape(like), jnp.float32)
  return {"g2": zeros, "trace": zeros, "weight": zeros}


@jax.jit
def _ema_update(ema, g2, trace, decay):
  keep = jnp.isfinite(g2) & jnp.isfinite(trace)  # a diverged step does not poison the mean
  mix = lambda old, new: jnp.where(keep, decay * old + (1 - decay) * new, old)
  ema = {"g2": mix(ema["g2"], g2), "trace": mix(ema["trace"], trace),
         "weight": mix(ema["weight"], jnp.ones_like(g2))}
  weight = jnp.maximum(ema["weight"], 1e-30)
  g2_avg, trace_avg = ema["g2"] / weight, ema["trace"] / weight
  return ema, {"gns_g2": g2_avg, "gns_trace": trace_avg, "gns_b_simple": trace_avg / g2_avg}


class NoiseScaleEMA:
  """Exponential moving averages of the per-step |G|^2 and tr(Sigma) estimates on the
  device (one tiny jitted update per step, no host sync), bias-corrected like Adam's
  moments. McCandlish et al. (2018, appendix A.1) average numerator and denominator
  separately: B_simple = EMA[tr(Sigma)] / EMA[|G|^2], not an average of noisy ratios.

  It lives outside the checkpointed train state: a resumed run restarts the averages
  (the first records after a resume average the steps since it). Shapes follow the
  metrics: [] for one run, [K] for K lanes."""

  def __init__(self, decay: float):
    self.decay = decay
    self.ema = None

  def update(self, m: dict[str, Any]) -> dict[str, Any]:
    """m with gns_g2, gns_trace (averages) and gns_b_simple added; m unchanged if it has
    no per-step estimates."""
    if "gns_g2_step" not in m:
      return m
    g2, trace = m["gns_g2_step"], m["gns_trace_step"]
    if self.ema is None:  # zeros placed like the metrics (jit keeps the input's devices)
      self.ema = _ema_zeros(g2)
    self.ema, values = _ema_update(self.ema, g2, trace, jnp.float32(self.decay))
    return dict(m, **values)


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
