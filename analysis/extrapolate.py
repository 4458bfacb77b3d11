"""Learning-curve extrapolation: a run's final eval and train loss from the first part of
its curve, with 95% intervals; and a backtest of the methods over a registry.

Methods, each a law fitted by `fit_law` (Huber on log residuals, multi-start):

    lr_annealing  L = L0 + A S1^-alpha - C S2 (Tissue et al. 2024; analysis.laws.ANNEALING),
                  S1 and S2 from the run's own lr schedule up to its last step. The default:
                  the only method that knows the schedule ahead.
    pow3          L = c + a step^-alpha      (LC-PFN's pow3, Adriaensen et al. 2023, for a
    log_power     L = a / (1 + (step / e^b)^c)   falling loss; both ignore the schedule)

C S2 is fitted only once the prefix holds an lr decrease: before it (a WSD run in its
stable phase, a constant schedule) S2 is 0 at every point and C cannot be told from the
data, so C = 0 and the forecast carries no gain from the decay to come (stated in
`notes`).

Train points are the mean loss of each log window (`loss_mean`, which varjax logs besides
the noisy loss of the logged step's one batch), fitted as the law's mean over the window
(`window_law`; the first window, over the steep start, is left out), so the train forecast
and its measured value are of the last window's mean (a window of under half the usual
steps, as a run ends on when its length is not a multiple of log_every, is joined to the
one before); records without it (other tools' files, older runs) give their own loss at
their step.

A split with more prefix points than the law has parameters is fitted directly; eval loss
logged too rarely for that (a run evaluating every 1000 steps) is forecast as the train fit
times exp(mean log(eval / train fit)) over the eval points in the prefix, and skipped
without any. Intervals: pairs bootstrap of the fit plus a resampled residual, as
`forecast` does (analysis.uncertainty); points of one curve are correlated, so they are
narrower than they should be.

Curves come from a run directory (config.json gives the schedule through varjax's own
`lr_schedule`; metrics.jsonl the points, a warm-started run's including its trunk's) or
from a metrics file (JSONL records, or a CSV with step, loss and optionally split) with
the schedule from flags.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from analysis.fitting import fit_law
from analysis.laws import ANNEALING, Law, annealing_areas
from analysis.runs import run_dirs
from analysis.uncertainty import bootstrap
from analysis.validate import AnalysisError

METHODS = ("lr_annealing", "pow3", "log_power")
FRACTIONS = (0.1, 0.2, 0.3, 0.5)
# Starts kept after screening for the full fit: these laws have 3-4 parameters, and on the
# demo registry's backtest 64 give the same MAPE to the last digit as the fitter's default
# 256, in three quarters of the time.
KEEP_STARTS = 64
SPLITS = ("eval", "train")
PAD_POINTS = 64  # fit_padded's smallest size: the demo's longest run has 53 points at 50%
MOMENTUM = 0.999  # S2's, as in laws.annealing_areas and Tissue et al.


def _grid(*axes) -> np.ndarray:
  return np.array(np.meshgrid(*axes, indexing="ij")).reshape(len(axes), -1).T


POW3 = Law(
    name="pow3", formula="L = c + a step^-alpha", inputs=("step",),
    theta_names=("log_a", "log_c", "alpha"),
    features=lambda d: (np.log(np.asarray(d["step"], np.float64)),),
    log_predict=lambda t, f: jnp.logaddexp(t[0] - t[2] * f[0], t[1]),
    public=lambda t: {"c": float(np.exp(t[1])), "a": float(np.exp(t[0])),
                      "alpha": float(t[2])},
    start_grid=lambda: _grid(np.arange(-2, 12, 2.0), np.arange(-2, 3, 0.5),
                             np.array([0.1, 0.3, 0.6, 1.0, 1.5])),
)

LOG_POWER = Law(
    name="log_power", formula="L = a / (1 + (step / e^b)^c)", inputs=("step",),
    theta_names=("log_a", "b", "c"),
    features=lambda d: (np.log(np.asarray(d["step"], np.float64)),),
    log_predict=lambda t, f: t[0] - jax.nn.softplus(t[2] * (f[0] - t[1])),
    public=lambda t: {"a": float(np.exp(t[0])), "b": float(t[1]), "c": float(t[2])},
    start_grid=lambda: _grid(np.arange(0, 4.5, 0.5), np.arange(0, 20, 2.0),
                             np.array([0.02, 0.05, 0.1, 0.2, 0.5, 1.0])),
)

# ANNEALING with C = 0: for a prefix before the first lr decrease (S2 = 0 at every point).
ANNEALING_NO_DECAY = dataclasses.replace(
    ANNEALING, formula=f"{ANNEALING.formula},  C = 0 (no lr decrease yet)", inputs=("S1",),
    theta_names=ANNEALING.theta_names[:3],
    features=lambda d: (np.asarray(d["S1"], np.float64),) * 2,  # S2's slot: C = 0 ignores it
    log_predict=lambda t, f: ANNEALING.log_predict(jnp.concatenate([t, jnp.zeros(1, t.dtype)]), f),
    public=lambda t: ANNEALING.public(np.concatenate([np.asarray(t), [0.0]])),
    start_grid=lambda: np.unique(ANNEALING.start_grid()[:, :3], axis=0))
if getattr(ANNEALING_NO_DECAY, "from_public", None) is not None:  # ANNEALING's takes 4
  ANNEALING_NO_DECAY = dataclasses.replace(ANNEALING_NO_DECAY, from_public=None)


# ---------------------------------------------------------------- curves

@dataclasses.dataclass
class Curve:
  name: str
  total_steps: int  # the run's last step: what is forecast
  lr_S: np.ndarray | None  # float64[total_steps]: lr of update s at index s - 1; None: unknown
  warmup_steps: int
  points: dict[str, tuple[np.ndarray, np.ndarray]]  # split -> (steps int64[k], loss float64[k])
  schedule: dict  # how lr_S was made, for the output
  # split -> int64[k]: the first step of the window each loss is the mean over (a train
  # record's loss_mean); None or a missing split: the record's own step
  first: dict[str, np.ndarray] | None = None
  _areas: tuple | None = dataclasses.field(default=None, repr=False, compare=False)

  def window_first(self, split: str) -> np.ndarray:
    return (self.first or {}).get(split, self.points[split][0])

  def areas(self) -> tuple[np.ndarray, np.ndarray]:
    """S1, S2 per step (float64[total_steps]), warmup counted at the peak; computed once
    (a step-by-step recursion, and a backtest asks for it at every fraction and split)."""
    if self._areas is None:
      warm = min(self.warmup_steps, self.total_steps - 1)
      self._areas = annealing_areas(self.lr_S, warmup_steps=warm, momentum=MOMENTUM)
    return self._areas


def schedule_lr(optim: Mapping, total_steps: int, global_batch_size: int = 256) -> np.ndarray:
  """float64[total_steps]: varjax's lr schedule (varjax.train.optimizer.lr_schedule) for an
  `optim` section of a config; imported here so the rest of analysis needs no varjax."""
  from varjax.config import OptimConfig, build_dataclass
  from varjax.errors import VarjaxError
  from varjax.train.optimizer import lr_schedule
  try:
    config = build_dataclass(OptimConfig, optim, "optim")
  except VarjaxError as e:
    raise AnalysisError(f"lr schedule: {e}") from None
  schedule = lr_schedule(config, total_steps, global_batch_size)
  return np.asarray(schedule(np.arange(total_steps)), np.float64)


def _read_json(path: str, what: str) -> dict:
  try:
    with open(path, encoding="utf-8") as f:
      value = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise AnalysisError(f"{what} {path} cannot be read: {e}") from None
  if not isinstance(value, dict):
    raise AnalysisError(f"{what} {path} is not a JSON object")
  return value


def _points(frame: pd.DataFrame, source: str):
  """({split: (steps int64[k], loss float64[k])}, {split: first int64[k]}): each split's
  records in step order, and the first step of the window each loss is the mean over. A
  train record with `loss_mean` (varjax logs the mean loss of the steps since the previous
  record, see varjax.train.steploop) gives that mean over its window, unless the window
  reaches back past half its end step; others give their own `loss` (window: the step)."""
  for col in ("step", "loss"):
    if col not in frame.columns:
      raise AnalysisError(f"{source}: no {col!r} column (columns: "
                          f"{', '.join(map(str, frame.columns))})")
  if "split" not in frame.columns:  # one curve: taken as the eval loss
    frame = frame.assign(split="eval")
  number = lambda rows, col: (pd.to_numeric(rows[col], errors="coerce").to_numpy(np.float64)
                              if col in rows.columns else np.full(len(rows), np.nan))
  points, firsts = {}, {}
  for split in SPLITS:
    rows = frame[frame["split"] == split]
    step, loss = number(rows, "step"), number(rows, "loss")
    first = step.copy()
    if split == "train":
      mean, window = number(rows, "loss_mean"), number(rows, "loss_mean_steps")
      windowed = np.isfinite(mean) & (mean > 0) & np.isfinite(window) & (window >= 1)
      loss = np.where(windowed, mean, loss)
      first = np.where(windowed, step - window + 1, step)
      # A window reaching back past half its end step (the first: steps 1..100) averages
      # the steep start, where the laws do not hold: left out.
      loss = np.where(windowed & (window > step / 2), np.nan, loss)
    ok = np.isfinite(step) & np.isfinite(loss) & (step >= 1) & (loss > 0)
    if ok.any():
      order = np.argsort(step[ok], kind="stable")
      step, loss, first = step[ok][order], loss[ok][order], np.maximum(first[ok][order], 1)
      step, loss, first = _merge_short_windows(step, loss, first)
      points[split] = (step.astype(np.int64), loss)
      firsts[split] = first.astype(np.int64)
  if not points:
    raise AnalysisError(f"{source}: no eval or train loss points (step >= 1, loss > 0)")
  return points, firsts


def _merge_short_windows(step, loss, first):
  """Windows (first..step) of fewer than half the median window's steps joined to the window
  just before them, as the step-weighted mean of both. A run whose length is not a multiple
  of log_every ends on a short window (a 2,404-step run logging every 100 ends on a mean of
  4 batches), and that window is the measured final train loss: alone its noise is 5x
  the rest's (one demo run's last 4 batches sat 1.3% above the 100 before them)."""
  size = step - first + 1
  if len(step) < 2 or np.all(size == 1):
    return step, loss, first
  short = size < 0.5 * np.median(size[size > 1])
  step, loss, first, size = (list(a) for a in (step, loss, first, size))
  for i in range(len(step) - 1, 0, -1):
    if short[i] and first[i] == step[i - 1] + 1:
      w = size[i - 1] + size[i]
      loss[i - 1] = (loss[i - 1] * size[i - 1] + loss[i] * size[i]) / w
      step[i - 1], size[i - 1] = step[i], w
      del step[i], loss[i], first[i], size[i]
  return np.array(step, np.float64), np.array(loss, np.float64), np.array(first, np.float64)


def read_metrics(path: str, select: dict[str, str] | None = None) -> pd.DataFrame:
  """A metrics file as a table: JSONL records (varjax's metrics.jsonl) or a CSV; rows
  filtered by `select` {column: value}."""
  if not os.path.isfile(path):
    raise AnalysisError(f"metrics file not found: {path}")
  try:
    if path.endswith((".jsonl", ".json")):
      records = []
      with open(path, encoding="utf-8") as f:
        for line in f:
          if line.strip():
            try:
              records.append(json.loads(line))
            except json.JSONDecodeError:
              break  # a run killed mid-write leaves a partial last line
      frame = pd.DataFrame([r for r in records if isinstance(r, dict)])
    else:
      frame = pd.read_csv(path)
  except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
    raise AnalysisError(f"{path} cannot be read: {str(e).splitlines()[0]}") from None
  for col, value in (select or {}).items():
    if col not in frame.columns:
      raise AnalysisError(f"--select {col}={value}: {path} has no column {col!r}")
    frame = frame[frame[col].astype(str) == value]
    if frame.empty:
      raise AnalysisError(f"--select {col}={value}: no row of {path} has it")
  return frame


def load_run(run_dir: str) -> Curve:
  """A run directory's curve and schedule (config.json: optim, run.steps, the batch)."""
  if not os.path.isdir(run_dir):
    raise AnalysisError(f"--run {run_dir}: no such directory")
  config_path = os.path.join(run_dir, "config.json")
  metrics_path = os.path.join(run_dir, "metrics.jsonl")
  if not os.path.isfile(config_path):
    raise AnalysisError(f"--run {run_dir}: no config.json (not a run directory)")
  if not os.path.isfile(metrics_path):
    raise AnalysisError(f"--run {run_dir}: no metrics.jsonl (the run has logged no step)")
  config = _read_json(config_path, "config")
  optim, run = config.get("optim", {}), config.get("run", {})
  total = run.get("steps")
  if not isinstance(total, int) or total < 2:
    raise AnalysisError(f"--run {run_dir}: config.json has no run.steps >= 2")
  batch = config.get("data", {}).get("global_batch_size", 256)
  frame = read_metrics(metrics_path)
  if frame.empty:
    raise AnalysisError(f"--run {run_dir}: metrics.jsonl holds no records")
  lr = schedule_lr(optim, total, batch)
  points, first = _points(frame, metrics_path)
  return Curve(os.path.basename(os.path.normpath(run_dir)), total, lr,
               int(optim.get("warmup_steps", 0)), points,
               {"schedule": optim.get("schedule", "linear"), "steps": total,
                "warmup_steps": int(optim.get("warmup_steps", 0)),
                "peak_lr": float(lr.max()), "source": "config.json"}, first)


def load_metrics_file(path: str, select=None, optim: Mapping | None = None,
                      total_steps: int | None = None, global_batch_size: int = 256) -> Curve:
  """A curve from a metrics file; the schedule from `optim` (a config's optim section)
  over `total_steps` (default: the last step in the file). Without `optim` the schedule is
  unknown and only the schedule-free methods run."""
  frame = read_metrics(path, select)
  points, first = _points(frame, path)
  last = max(int(s[-1]) for s, _ in points.values())
  total = int(total_steps or last)
  lr = schedule_lr(optim, total, global_batch_size) if optim is not None else None
  schedule = ({"schedule": optim.get("schedule", "linear"), "steps": total,
               "warmup_steps": int(optim.get("warmup_steps", 0)), "peak_lr": float(lr.max()),
               "source": "flags"} if optim is not None else {"steps": total, "source": None})
  name = os.path.basename(path) + "".join(f" [{k}={v}]" for k, v in (select or {}).items())
  return Curve(name, total, lr, int((optim or {}).get("warmup_steps", 0)), points, schedule,
               first)


# ---------------------------------------------------------------- one forecast

def _step_inputs(curve: Curve):
  """inputs(steps) -> {"S1", "S2"} of the annealing law under the curve's own schedule."""
  if curve.lr_S is None:
    raise AnalysisError("needs the lr schedule (--run DIR, or --config / --schedule with "
                        "--metrics)")
  s1, s2 = curve.areas()
  return lambda s: {"S1": s1[np.asarray(s) - 1], "S2": s2[np.asarray(s) - 1]}


def _method_law(method: str, curve: Curve, prefix_steps: np.ndarray, decay_elsewhere=False):
  """(law, inputs(steps) -> dict, note or None) of a method on this curve; `decay_elsewhere`:
  a curve fitted with it has an lr decrease among its points."""
  if method in ("pow3", "log_power"):
    law = POW3 if method == "pow3" else LOG_POWER
    return law, lambda s: {"step": np.asarray(s, np.float64)}, None
  if method != "lr_annealing":
    raise AnalysisError(f"unknown method {method!r}; methods are {', '.join(METHODS)}")
  inputs = _step_inputs(curve)
  if not decay_elsewhere and np.all(inputs(prefix_steps)["S2"] <= 0):
    note = (f"no lr decrease by step {int(prefix_steps.max())}: C S2 cannot be fitted, so C = 0 "
            "and the forecast carries no gain from the decay to come")
    return ANNEALING_NO_DECAY, inputs, note
  return ANNEALING, inputs, None


# Below this share of the schedule's lr decrease in the prefix, C is weakly determined:
# on the reference cosine curve (docs/analysis.md) the forecast missed by -3.9% at 30% of
# the steps (18% of the decrease) and by -1.0% at 50% (48%).
WEAK_DECAY_SHARE = 0.5


def _weak_decay(curve: Curve, cut: int) -> str | None:
  """A caution when the prefix has begun the lr's decrease but holds under
  WEAK_DECAY_SHARE of it (before any decrease, C = 0 and the note says so instead)."""
  if curve.lr_S is None or cut <= curve.warmup_steps:
    return None
  lr = curve.lr_S[curve.warmup_steps:]  # from the peak; cut < total_steps
  total, seen = lr[0] - lr[-1], lr[0] - lr[cut - 1 - curve.warmup_steps]
  if total <= 0 or seen <= 0 or seen / total >= WEAK_DECAY_SHARE:
    return None
  return (f"the prefix holds {seen / total:.0%} of the lr's decrease: C (the decay's gain) is "
          "weakly determined by it; read the interval rather than the point (docs/analysis.md), "
          "or fit a finished curve of another schedule with it (--with-run, --with-select)")


# A law's mean over a window of steps (a train record's loss_mean) is the Gauss-Legendre
# weighted mean of its values at 4 steps of the window (rounded to whole steps): on steps
# 101-200, the mean of s^-0.5 is 1.43% above its value at the middle step and 7e-5 below
# the 4-node sum (1.4e-6 unrounded). Written here because the laws are fitted through
# fit_law, which predicts one value per point.
WINDOW_NODES, WINDOW_WEIGHTS = np.polynomial.legendre.leggauss(4)  # on [-1, 1]; sum 2


@functools.lru_cache(maxsize=None)
def window_law(law: Law) -> Law:
  """`law` averaged over windows of steps: input `<name>@j` holds `<name>` at node j of
  each point's window (`window_inputs`). One per law: fit_law keeps its compiled programs
  per Law object, and a new one for every forecast recompiled them (a backtest of the demo's
  15 runs spent most of its 2 minutes compiling)."""
  k = len(WINDOW_NODES)
  m = len(law.features({n: np.ones(1) for n in law.inputs}))
  log_weights = np.log(WINDOW_WEIGHTS / 2)[:, None]
  node = lambda names, j: tuple(f"{n}@{j}" for n in names)

  def features(d):
    return sum((tuple(law.features(dict(zip(law.inputs, (d[x] for x in node(law.inputs, j))))))
                for j in range(k)), ())

  def log_predict(t, f):
    logs = jnp.stack([law.log_predict(t, f[j * m:(j + 1) * m]) for j in range(k)])
    return jax.nn.logsumexp(logs + log_weights, axis=0)

  positive = None if law.positive_inputs is None else sum(
      (node(law.positive_inputs, j) for j in range(k)), ())
  return dataclasses.replace(
      law, formula=f"{law.formula}, averaged over each point's window of steps",
      inputs=sum((node(law.inputs, j) for j in range(k)), ()), features=features,
      log_predict=log_predict, positive_inputs=positive, data_starts=None, from_public=None)


def window_inputs(inputs, first, last) -> dict:
  """`window_law`'s inputs for windows of steps first..last (int arrays, inclusive), from
  a method's `inputs(steps)`."""
  first, last = np.asarray(first, np.float64), np.asarray(last, np.float64)
  mid, half = (first + last) / 2, (last - first + 1) / 2
  out = {}
  for j, x in enumerate(WINDOW_NODES):
    steps = np.clip(np.floor(mid + x * half + 0.5), first, last).astype(np.int64)
    out.update({f"{name}@{j}": v for name, v in inputs(steps).items()})
  return out


def fit_padded(law: Law, x: dict, y: np.ndarray):
  """fit_law on the points padded with zero-weight copies of the last to 64, 128, ...: a
  backtest then compiles one program per law and stage, not one per prefix length (each
  takes seconds to compile, and a fit of 64 points as long to run as one of 16). The
  returned fit holds the points without the padding."""
  n = len(y)
  size = max(PAD_POINTS, 1 << (n - 1).bit_length())
  pad = lambda v: np.concatenate([np.asarray(v, np.float64), np.repeat(v[-1:], size - n)])
  fit = fit_law(law, {k: pad(v) for k, v in x.items()}, pad(y),
                weights=np.concatenate([np.ones(n), np.zeros(size - n)]), keep=KEEP_STARTS)
  return dataclasses.replace(fit, inputs={k: np.asarray(x[k], np.float64) for k in law.inputs},
                             y=np.asarray(y, np.float64))


def forecast(curve: Curve, fraction: float, methods=METHODS, replicates: int = 200,
             seed: int = 0, others: tuple[Curve, ...] = ()) -> dict:
  """Each method's forecast of each split's loss at the curve's last step from the points
  at steps <= fraction x last step: {"forecasts": [...], "skipped": [...], ...}.

  `others`: finished curves of the same model, data and peak lr under other schedules,
  fitted with the prefix by lr_annealing (one L0, A, alpha, C; each curve's S1 and S2 from
  its own schedule: Tissue et al. fit a law on some schedules' curves and predict
  another's). Their every point is used. pow3 and log-power know no schedule, so they fit
  the prefix alone."""
  cut = int(np.floor(fraction * curve.total_steps + 1e-9))
  final = curve.total_steps
  caution = _weak_decay(curve, cut)  # lr_annealing's, when fitted on the prefix alone
  rows, skipped = [], []
  for method in methods:
    train_fit = None  # (fit, inputs, note) of the train split, for the eval offset
    for split in ("train", "eval"):
      if split not in curve.points:
        continue
      steps, loss = curve.points[split]
      first = curve.window_first(split)
      windows = bool(np.any(first != steps))  # train records with loss_mean
      pre = steps <= cut
      measured = loss[steps == final]
      first_final = int(first[steps == final][-1]) if len(measured) else final
      row = {"method": method, "split": split, "num_points": int(pre.sum()),
             "measured": float(measured[-1]) if len(measured) else None}
      if windows:
        row["window_means"] = True  # losses, forecast and measured: means over log windows
      try:
        if not pre.any():
          raise AnalysisError(f"no {split} point at or before step {cut}")
        # (first, last steps of each point's window, inputs(steps), loss) of every curve fitted
        parts = [(o.window_first(split), o.points[split][0], _step_inputs(o), o.points[split][1])
                 for o in (others if method == "lr_annealing" else ()) if split in o.points]
        decay_elsewhere = any(np.any(p[2](p[1])["S2"] > 0) for p in parts)
        law, at_steps, note = _method_law(method, curve, steps[pre], decay_elsewhere)
        if parts:
          row["with"] = [o.name for o in others if split in o.points]
          row["num_points_with"] = int(sum(len(p[3]) for p in parts))
        parts.insert(0, (first[pre], steps[pre], at_steps, loss[pre]))
        if windows or any(np.any(p[0] != p[1]) for p in parts):
          law = window_law(law)
          make = window_inputs
        else:
          make = lambda at, f, last: at(last)
        inputs = lambda f, last, at_steps=at_steps, make=make: make(at_steps, f, last)
        scale = 1.0
        y = np.concatenate([p[3] for p in parts])
        if len(y) > law.num_params and np.ptp(y) > 0:
          xs = [make(p[2], p[0], p[1]) for p in parts]
          fit = fit_padded(law, {k: np.concatenate([x[k] for x in xs]) for k in xs[0]}, y)
          row["fit_on"] = split + (f" + {len(parts) - 1} other curve(s)" if len(parts) > 1 else "")
        elif split == "eval" and train_fit is not None:
          fit, inputs, note = train_fit
          scale = float(np.exp(np.mean(np.log(loss[pre]) -
                                       np.log(fit.predict(inputs(steps[pre], steps[pre]))))))
          row.update(fit_on="train x eval/train", eval_over_train=scale)
        else:
          raise AnalysisError(f"{int(pre.sum())} {split} point(s) at or before step {cut}; "
                              f"{law.name} needs {law.num_params + 1}" +
                              (" (or a train fit)" if split == "eval" else ""))
        if split == "train":
          train_fit = (fit, inputs, note)
        x_final = inputs([first_final], [final])
        row.update(forecast=scale * float(fit.predict(x_final)[0]), law=fit.law.formula,
                   params=fit.params)
        if note:
          row["note"] = note
        if caution and method == "lr_annealing" and len(parts) == 1:
          row["caution"] = caution
        if replicates:
          lo, hi = bootstrap(fit, replicates, seed=seed).predict_interval(x_final)
          row["interval_95"] = [scale * float(lo[0]), scale * float(hi[0])]
        if row["measured"] is not None:
          row["relative_error"] = (row["forecast"] - row["measured"]) / row["measured"]
        rows.append(row)
      except AnalysisError as e:
        skipped.append({"method": method, "split": split, "reason": str(e)})
  return {"run": curve.name, "fraction": fraction, "cut_step": cut, "final_step": final,
          "schedule": curve.schedule, "forecasts": rows, "skipped": skipped}


# ---------------------------------------------------------------- backtest

def backtest(registry: str, fractions=FRACTIONS, methods=METHODS) -> dict:
  """Every run of a registry forecast from each fraction of its curve, against its measured
  final loss; MAPE per method over the runs every method could forecast (per fraction and
  split), so the methods are compared on the same runs."""
  if not os.path.isdir(registry):
    raise AnalysisError(f"--backtest {registry}: no such directory")
  curves, unusable = [], []
  for run_dir in run_dirs(registry):
    try:
      curves.append(load_run(run_dir))
    except AnalysisError as e:
      unusable.append(str(e))
  if not curves:
    raise AnalysisError(f"--backtest {registry}: no run with config.json and metrics.jsonl")
  runs = []
  for curve in curves:
    for fraction in fractions:
      result = forecast(curve, fraction, methods, replicates=0)
      for r in result["forecasts"]:
        if "relative_error" in r:
          runs.append({"run": curve.name, "fraction": fraction, "split": r["split"],
                       "method": r["method"], "forecast": r["forecast"],
                       "measured": r["measured"], "relative_error": r["relative_error"],
                       "no_decay_seen": "note" in r})
  table = []
  for fraction in fractions:
    for split in SPLITS:
      errors = {m: {r["run"]: abs(r["relative_error"]) for r in runs
                    if r["fraction"] == fraction and r["split"] == split and r["method"] == m}
                for m in methods}
      common = sorted(set.intersection(*(set(e) for e in errors.values())))
      row = {"fraction": fraction, "split": split, "num_runs": len(common),
             # runs whose prefix had no lr decrease: lr_annealing's C cannot be fitted there
             "no_decay_seen": sum(1 for r in runs if r["fraction"] == fraction
                                  and r["split"] == split and r["method"] == "lr_annealing"
                                  and r["run"] in common and r["no_decay_seen"])}
      for m in methods:
        row[m] = float(np.mean([errors[m][r] for r in common])) if common else None
      table.append(row)
  return {"registry": registry, "num_runs": len(curves), "methods": list(methods),
          "fractions": list(fractions), "mape": table, "runs": runs, "unusable": unusable}


# Fewer runs than this behind a MAPE: too few to rank the methods (the report says so).
MIN_RUNS_TO_RANK = 5


def read_backtest(path: str) -> dict:
  """A backtest saved by `extrapolate --backtest DIR --json > FILE` (the report's
  --curve-backtest), checked, with `findings`: per fraction and split, which method had
  the least MAPE and whether lr_annealing beat pow3, said plainly when too few runs."""
  if not os.path.isfile(path):
    raise AnalysisError(f"--curve-backtest {path}: no such file (write it with `python -m "
                        "analysis extrapolate --backtest DIR --json > FILE`)")
  try:
    with open(path) as f:
      report = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise AnalysisError(f"--curve-backtest {path}: not JSON ({e})") from None
  if not isinstance(report, dict) or not {"mape", "methods", "registry"} <= set(report):
    raise AnalysisError(f"--curve-backtest {path}: not an `extrapolate --backtest` result "
                        "(needs mape, methods, registry)")
  return {**{k: report[k] for k in ("registry", "num_runs", "methods", "fractions", "mape")},
          "source": path, "findings": backtest_findings(report)}


def backtest_findings(report: dict) -> list[str]:
  out = []
  for r in report["mape"]:
    scored = {m: r[m] for m in report["methods"] if r.get(m) is not None}
    if not scored:
      continue
    best = min(scored, key=scored.get)
    what = (f"at {r['fraction']:.0%} of the steps ({r['split']} loss, {r['num_runs']} runs) "
            f"{best} forecast the final loss best (MAPE {_pct(scored[best])})")
    if "lr_annealing" in scored and "pow3" in scored:
      beats = scored["lr_annealing"] < scored["pow3"]
      a, b = _pct(scored["lr_annealing"]), _pct(scored["pow3"])
      if a == b:  # a tie at two decimals: show the digit that decides
        a, b = _pct(scored["lr_annealing"], 3), _pct(scored["pow3"], 3)
      what += f"; lr_annealing {'beat' if beats else 'did not beat'} pow3 ({a} vs {b})"
      blind = r.get("no_decay_seen")
      if blind:
        what += (f"; in {'all' if blind == r['num_runs'] else blind} of the "
                 f"{r['num_runs']} runs the lr had not begun to fall by the cut (a WSD run "
                 "decays at its end), so lr_annealing had no decay to fit (C = 0): there it "
                 "is a power law in the lr area, no better informed than pow3, and the "
                 "decay's gain is missing from both forecasts")
    if r["num_runs"] < MIN_RUNS_TO_RANK:
      what += (f", but {r['num_runs']} runs are too few to rank the methods (fewer than "
               f"{MIN_RUNS_TO_RANK}: log more often or train longer runs)")
    out.append(what)
  return out


# ---------------------------------------------------------------- text

def _pct(v, digits: int = 2) -> str:
  return "–" if v is None else f"{100 * v:.{digits}f}%"


def forecast_text(report: dict) -> str:
  sch = report["schedule"]
  how = (f"schedule {sch['schedule']}, warmup {sch['warmup_steps']}, peak lr {sch['peak_lr']:.3g}"
         if sch.get("source") else "schedule unknown")
  lines = [f"extrapolate: {report['run']} from the first {report['fraction']:.0%} "
           f"(steps <= {report['cut_step']} of {report['final_step']}; {how})",
           f"{'split':<6} {'method':<13} {'points':>6}  {'forecast':>9}  {'95% interval':<17} "
           f"{'measured':>9}  {'error':>7}  fit on"]
  for r in report["forecasts"]:
    iv = r.get("interval_95")
    interval = f"{iv[0]:.4f}-{iv[1]:.4f}" if iv else "–"
    measured = "–" if r["measured"] is None else f"{r['measured']:.4f}"
    error = f"{100 * r['relative_error']:+.2f}%" if "relative_error" in r else "–"
    lines.append(f"{r['split']:<6} {r['method']:<13} {r['num_points']:>6}  "
                 f"{r['forecast']:>9.4f}  {interval:<17} {measured:>9}  {error:>7}  "
                 f"{r['fit_on']}")
  notes = sorted({r["note"] for r in report["forecasts"] if "note" in r})
  lines += [f"note: {n}" for n in notes]
  lines += sorted({f"caution: {r['caution']}" for r in report["forecasts"] if "caution" in r})
  lines += sorted({f"with ({r['split']}): {', '.join(r['with'])}: {r['num_points_with']} points"
                   for r in report["forecasts"] if "with" in r})
  lines += [f"skipped: {s['method']} {s['split']}: {s['reason']}" for s in report["skipped"]]
  return "\n".join(lines)


def backtest_text(report: dict) -> str:
  methods = report["methods"]
  lines = [f"backtest: {report['registry']}, {report['num_runs']} runs: mean absolute "
           "percentage error of the final loss, over the runs every method forecast",
           f"{'fraction':>8}  {'split':<5} {'runs':>4}  " +
           "  ".join(f"{m:>12}" for m in methods)]
  for r in report["mape"]:
    lines.append(f"{r['fraction']:>8.0%}  {r['split']:<5} {r['num_runs']:>4}  " +
                 "  ".join(f"{_pct(r[m]):>12}" for m in methods))
  lines += [f"unusable: {u}" for u in report["unusable"]]
  return "\n".join(lines)


# ---------------------------------------------------------------- command line

def _open_fraction(text: str) -> float:
  import argparse
  try:
    value = float(text)
  except ValueError:
    value = float("nan")
  if not 0 < value < 1:
    raise argparse.ArgumentTypeError(f"must be in (0, 1), got {text}")
  return value


def _fractions(text: str) -> tuple[float, ...]:
  return tuple(_open_fraction(t) for t in text.split(","))


def _methods(text: str) -> tuple[str, ...]:
  import argparse
  names = tuple(t.strip() for t in text.split(","))
  unknown = [n for n in names if n not in METHODS]
  if unknown or not names:
    raise argparse.ArgumentTypeError(f"unknown method(s) {', '.join(unknown)}; methods are "
                                     f"{', '.join(METHODS)}")
  return names


def _key_value(text: str) -> tuple[str, str]:
  import argparse
  key, equals, value = text.partition("=")
  if not key or not equals:
    raise argparse.ArgumentTypeError(f"expected COLUMN=VALUE, got {text!r}")
  return key.strip(), value.strip()


def add_parser(sub) -> None:
  """`python -m analysis extrapolate`: its arguments, on the `analysis` subparsers."""
  from analysis.arguments import count, fraction, positive_int, positive_number, replicates
  p = sub.add_parser("extrapolate", help="a run's final eval and train loss from the first "
                                         "part of its curve; --backtest a registry")
  source = p.add_mutually_exclusive_group(required=True)
  source.add_argument("--run", metavar="DIR", help="a run directory (config.json, metrics.jsonl)")
  source.add_argument("--metrics", metavar="FILE",
                      help="metrics.jsonl records or a CSV (step, loss[, split]); the schedule "
                           "from --config or --schedule")
  source.add_argument("--backtest", metavar="DIR",
                      help="every run of a registry at --fractions: MAPE per method")
  p.add_argument("--fraction", type=_open_fraction, default=0.3,
                 help="forecast from the points at steps <= this fraction of the run (0.3)")
  p.add_argument("--fractions", type=_fractions, default=FRACTIONS, metavar="F,F,...",
                 help="--backtest: the fractions (default 0.1,0.2,0.3,0.5)")
  p.add_argument("--methods", type=_methods, default=METHODS, metavar="M,M,...",
                 help=f"of {', '.join(METHODS)} (default all)")
  p.add_argument("--bootstrap", type=replicates, default=200, metavar="K",
                 help="bootstrap replicates for the intervals (0: none; --backtest uses none)")
  p.add_argument("--seed", type=count, default=0)
  p.add_argument("--select", action="append", type=_key_value, default=[], metavar="COL=VALUE",
                 help="--metrics: keep the rows whose COL is VALUE (repeatable)")
  p.add_argument("--config", metavar="FILE",
                 help="--metrics: a run's config.json (schedule, steps)")
  p.add_argument("--schedule", choices=("linear", "cosine", "wsd", "constant"),
                 help="--metrics: the lr schedule (varjax's; with --steps, --peak-lr, ...)")
  p.add_argument("--steps", type=positive_int, default=None,
                 help="--metrics: the run's total steps (default: the last step in the file)")
  p.add_argument("--warmup-steps", type=count, default=0)
  p.add_argument("--peak-lr", type=positive_number, default=None)
  p.add_argument("--min-lr-ratio", type=float, default=0.0)
  p.add_argument("--decay-fraction", type=fraction, default=0.2)
  p.add_argument("--with-run", action="append", default=[], metavar="DIR",
                 help="a finished run of the same model, data and peak lr under another "
                      "schedule, fitted with the prefix by lr_annealing (repeatable)")
  p.add_argument("--with-select", action="append", type=_key_value, default=[],
                 metavar="COL=VALUE", help="--metrics: the rows of another finished curve in "
                 "the same file, fitted with the prefix by lr_annealing (repeatable)")
  p.add_argument("--with-schedule", choices=("linear", "cosine", "wsd", "constant"),
                 help="--with-select: those curves' lr schedule (default --schedule's; the "
                      "other schedule flags are shared)")
  p.add_argument("--json", action="store_true", help="print JSON")
  p.set_defaults(func=run_command, d_col=None, c_col=None)


def _metrics_curve(args, select=None, schedule=None) -> Curve:
  """The --metrics curve (rows of --select, or `select` with `schedule` for a --with-select
  curve, whose total steps are its own last step unless --steps)."""
  select = dict(args.select) if select is None else select
  if args.config and args.schedule:
    raise AnalysisError("give --config FILE or --schedule, not both")
  optim, total, batch = None, args.steps, 256
  if args.config:
    config = _read_json(args.config, "--config")
    optim = config.get("optim", {})
    total = total or config.get("run", {}).get("steps")
    batch = config.get("data", {}).get("global_batch_size", 256)
  elif args.schedule:
    optim = {"schedule": args.schedule, "warmup_steps": args.warmup_steps,
             "min_lr_ratio": args.min_lr_ratio, "decay_fraction": args.decay_fraction}
    if args.peak_lr is not None:
      optim["peak_lr"] = args.peak_lr
  if optim is not None and schedule:
    optim = dict(optim, schedule=schedule)
  curve = load_metrics_file(args.metrics, select, optim, total, batch)
  last = max(int(s[-1]) for s, _ in curve.points.values())
  if last > curve.total_steps:
    raise AnalysisError(f"{args.metrics} has points up to step {last}, beyond the run's "
                        f"{curve.total_steps} steps (--steps)")
  return curve


def run_command(args) -> dict:
  if not args.metrics and (args.config or args.schedule or args.select or args.steps
                           or args.with_select or args.with_schedule):
    raise AnalysisError("--config, --schedule, --select, --steps and --with-select go with "
                        "--metrics FILE")
  if args.backtest and args.with_run:
    raise AnalysisError("--with-run goes with --run or --metrics, not --backtest")
  if args.with_schedule and not args.with_select:
    raise AnalysisError("--with-schedule goes with --with-select")
  if args.backtest:
    report = backtest(args.backtest, args.fractions, args.methods)
    report["text"] = backtest_text(report)
    return report
  curve = load_run(args.run) if args.run else _metrics_curve(args)
  others = tuple(load_run(d) for d in args.with_run)
  others += tuple(_metrics_curve(args, dict([kv]), args.with_schedule)
                  for kv in args.with_select)
  if others and curve.lr_S is None:
    raise AnalysisError("--with-run / --with-select need the lr schedule of the run "
                        "(--config or --schedule with --metrics)")
  report = forecast(curve, args.fraction, args.methods, args.bootstrap, args.seed, others)
  if not report["forecasts"]:
    raise AnalysisError(f"nothing to forecast from the first {args.fraction:.0%}: " +
                        "; ".join(f"{s['method']} {s['split']}: {s['reason']}"
                                  for s in report["skipped"]))
  report["text"] = forecast_text(report)
  return report
