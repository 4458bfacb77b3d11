"""Critical batch size from a batch sweep (`python -m analysis critical-batch`).

McCandlish et al. (2018, "An Empirical Model of Large-Batch Training"): to reach a given
loss, the optimizer steps S and the examples processed E = S B trade off as

    S = S_min (1 + B_crit / B),    E = E_min (1 + B / B_crit),    E_min = S_min B_crit,

so (S / S_min - 1)(E / E_min - 1) = 1, and B_crit is the batch at which a run takes twice
the fewest steps and twice the fewest examples. (Their noise scale B_simple = tr(Sigma) / |G|^2,
from per-example gradients, predicts B_crit; it is not computed here.) Kaplan et al. (2020,
"Scaling Laws for Neural Language Models") found B_crit growing as the loss falls:
B_crit(L) = B* / L^(1/alpha_B), B* = 2e8 tokens, alpha_B = 0.21 (`KAPLAN`), e.g.
B_crit(L = 3 nats) = 1.07e6 tokens.

Input: runs that differ in batch size, each with its eval loss logged against steps (a
registry's metrics.jsonl records with split "eval"; or a CSV of batch, step, loss rows).
For each target loss, each run's S is the first step its eval loss reaches the target,
interpolated linearly in steps between the two logged points around the crossing (a
target reached at or before a run's first logged point has no bracket: that run is left
out for it). Then S = S_min + (S_min B_crit) / B is a line in 1/B, fitted by least
squares with each row divided by its S: steps span orders of magnitude across batch
sizes, and unweighted residuals would let the smallest batches decide the fit alone.
Across targets, log B_crit = log B* - (1 / alpha_B) log L by least squares (>= 3 targets).

An lr x batch sweep (several runs per batch size, `best_of_batch`): per target and batch
size, S is the fewest steps among that batch's runs, i.e. the lr tuned per target, as
McCandlish et al. tune it per batch size; the point names the run. Default targets then
come from each batch size's best run. `--group-col` (e.g. params) fits each model size
apart: B_crit depends on N and the loss, so runs of different sizes do not share one S(B).

The gradient noise scale B_simple = tr(Sigma) / |G|^2 that varjax logs in the train
records (`gns_b_simple`, run.log_noise_scale) predicts B_crit (McCandlish et al.: B_crit is
about B_noise, of which B_simple is the estimate that assumes a well-conditioned Hessian).
When the curves carry it, each point gets B_simple interpolated (linear in steps between
logged train records) at its crossing step, and the target the geometric mean over its
points: `B_simple` beside `B_crit`, in the same unit.

Units: B in the batch column's unit (images per step for a varjax registry; multiply by
tokens per image for Kaplan's tokens), S in logged steps, E = S B.
"""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np
import pandas as pd

from analysis.validate import AnalysisError

NUM_TARGETS = 4
MIN_TARGETS_FOR_LAW = 3
# Eval points around a crossing further apart than this x the run's S: B_crit biased low
# (on the synthetic sweeps of tests/test_analysis_critical_batch.py, where the largest
# batch's S is about S_min: 0.2 S: -0.5%, 0.4 S: -2.3%, 0.75 S: -10%); the target gets a
# note.
COARSE = 0.25
# A B_crit over this factor beyond the batch sizes swept (above the largest, below the
# smallest) is only a bound: S ~ 1 / B (or S ~ S_min) across the whole sweep; the target
# gets a note.
BEYOND = 4.0
KAPLAN = {"B_star": 2e8, "alpha_B": 0.21}  # Kaplan et al. 2020, B in tokens, L in nats
INTERPOLATION = ("linear in steps between the two logged eval points around the first "
                 "crossing of the target")


def steps_to_reach(n_steps: float, b_crit: float, batch) -> np.ndarray:
  """McCandlish et al.: S = S_min (1 + B_crit / B), elementwise in B."""
  return n_steps * (1 + b_crit / np.asarray(batch, np.float64))


def examples_to_reach(e_min: float, b_crit: float, batch) -> np.ndarray:
  """McCandlish et al.: E = E_min (1 + B / B_crit), elementwise in B."""
  return e_min * (1 + np.asarray(batch, np.float64) / b_crit)


def b_crit_of_loss(loss, b_star: float = KAPLAN["B_star"],
                   alpha_b: float = KAPLAN["alpha_B"]) -> np.ndarray:
  """Kaplan et al.: B_crit(L) = B* / L^(1/alpha_B) (defaults: theirs, B in tokens)."""
  return b_star / np.asarray(loss, np.float64) ** (1 / alpha_b)


# ---------------------------------------------------------------- curves

@dataclasses.dataclass
class Curve:
  name: str
  batch: float
  steps: np.ndarray  # float64[k], increasing
  loss: np.ndarray  # float64[k]: eval loss at those steps
  group: str = ""
  # (steps, B_simple) of the train records that log the gradient noise scale; None without
  noise: tuple[np.ndarray, np.ndarray] | None = None


def noise_at(curve: Curve, step: float) -> float | None:
  """The curve's logged B_simple at `step`, linear in steps between the records around it
  (None without records or outside them)."""
  if curve.noise is None or not len(curve.noise[0]):
    return None
  steps, values = curve.noise
  if not steps[0] <= step <= steps[-1]:
    return None
  return float(np.interp(step, steps, values))


def bracket(curve: Curve, target: float) -> tuple[float, float] | None:
  """The logged steps (s0, s1) around the first crossing of `target`; None when the curve
  never reaches it or already did at its first point."""
  hit = np.flatnonzero(curve.loss <= target)
  if not len(hit) or hit[0] == 0:
    return None
  return float(curve.steps[hit[0] - 1]), float(curve.steps[hit[0]])


def first_reach(curve: Curve, target: float) -> float | None:
  """The first step at which the curve reaches `target`, linear in steps between the
  logged points around the crossing; None when it never does or already did at its first
  point (no bracket)."""
  hit = np.flatnonzero(curve.loss <= target)
  if not len(hit) or hit[0] == 0:
    return None
  i = hit[0]
  s0, s1, l0, l1 = curve.steps[i - 1], curve.steps[i], curve.loss[i - 1], curve.loss[i]
  return float(s0 + (l0 - target) / (l0 - l1) * (s1 - s0))


def default_targets(curves: list[Curve], num: int = NUM_TARGETS,
                    best_of_batch: bool = False) -> np.ndarray:
  """`num` losses evenly spaced from the highest loss every run gets down to (the worst
  run's best; with `best_of_batch` the worst batch size's best run's) up to, not
  including, the lowest first logged loss: every run (every batch size) crosses each one
  between two logged points."""
  if best_of_batch:
    lower = max(min(float(c.loss.min()) for c in curves if c.batch == b)
                for b in {c.batch for c in curves})
  else:
    lower = max(float(c.loss.min()) for c in curves)
  upper = min(float(c.loss[0]) for c in curves)
  if not lower < upper:
    raise AnalysisError(f"no loss is reached by every batch size after its first logged "
                        f"point (the worst run's best {lower:.4g} >= the lowest first logged "
                        f"loss {upper:.4g}); give --targets")
  return np.linspace(lower, upper, num + 1)[:-1]


# ---------------------------------------------------------------- fits

def fit_hyperbola(batch: np.ndarray, steps: np.ndarray) -> dict:
  """S = S_min (1 + B_crit / B) by least squares of S on 1/B, each row divided by S:
  {S_min, B_crit, E_min, rms_relative_residual}; raises AnalysisError when the line does
  not have a positive intercept and slope (S must fall towards S_min as B grows)."""
  x = np.stack([np.ones_like(batch), 1 / batch], axis=1) / steps[:, None]
  (s_min, slope), *_ = np.linalg.lstsq(x, np.ones_like(steps), rcond=None)
  if not (s_min > 0 and slope > 0):
    raise AnalysisError(f"S against 1/B has intercept {s_min:.3g} and slope {slope:.3g}; "
                        "S = S_min (1 + B_crit / B) needs both positive")
  resid = steps_to_reach(s_min, slope / s_min, batch) / steps - 1
  return {"S_min": float(s_min), "B_crit": float(slope / s_min), "E_min": float(slope),
          "rms_relative_residual": float(np.sqrt(np.mean(resid ** 2)))}


def fit_b_crit_law(loss: np.ndarray, b_crit: np.ndarray) -> dict:
  """B_crit(L) = B* / L^(1/alpha_B): least squares of log B_crit on log L."""
  x = np.stack([np.ones_like(loss), np.log(loss)], axis=1)
  (log_b_star, slope), *_ = np.linalg.lstsq(x, np.log(b_crit), rcond=None)
  resid = np.log(b_crit) - x @ np.array([log_b_star, slope])
  return {"form": "B_crit(L) = B* / L^(1/alpha_B)", "B_star": float(np.exp(log_b_star)),
          "alpha_B": float(-1 / slope) if slope else math.inf,
          "targets": len(loss), "rms_log_residual": float(np.sqrt(np.mean(resid ** 2)))}


def _points(curves: list[Curve], target: float, best_of_batch: bool) -> tuple[list, list]:
  """(points, left-out run names) of one target: each run's first crossing, or with
  `best_of_batch` the fewest steps among each batch size's runs."""
  points, left_out = [], []
  for c in curves:
    s = first_reach(c, target)
    if s is None:
      left_out.append(c.name)
      continue
    point = {"run": c.name, "batch": c.batch, "steps": s, "examples": s * c.batch,
             "bracket": list(bracket(c, target))}
    b_simple = noise_at(c, s)
    if b_simple is not None:
      point["B_simple"] = b_simple
    points.append(point)
  if best_of_batch:
    fewest = {}
    for p in points:
      if p["batch"] not in fewest or p["steps"] < fewest[p["batch"]]["steps"]:
        fewest[p["batch"]] = p
    points = [fewest[b] for b in sorted(fewest)]
    left_out = [f"batch {b:g}" for b in sorted({c.batch for c in curves}) if b not in fewest]
  return points, left_out


def analyse(curves: list[Curve], targets=None, best_of_batch: bool = False) -> dict:
  """The critical-batch report (module docstring) for runs of several batch sizes; with
  `best_of_batch`, per target the fewest steps among each batch size's runs."""
  if len({c.batch for c in curves}) < 2:
    raise AnalysisError(f"{len(curves)} run(s), all at batch {curves[0].batch:g}: a batch "
                        "sweep needs two or more batch sizes")
  chosen = "given" if targets is not None else "default"
  targets = np.sort(np.asarray(targets if targets is not None
                               else default_targets(curves, best_of_batch=best_of_batch),
                               np.float64))[::-1]
  rows = []
  for target in targets:
    points, left_out = _points(curves, target, best_of_batch)
    row = {"loss": float(target), "points": points, "left_out": left_out}
    noise = [p["B_simple"] for p in points if p.get("B_simple", 0) > 0]
    if noise:
      row["B_simple"] = float(np.exp(np.mean(np.log(noise))))
    batches = np.array([p["batch"] for p in points])
    if len(np.unique(batches)) < 2:
      row["skipped"] = (f"loss {target:.4g}: {len(np.unique(batches))} batch size(s) reach it "
                        "between logged points; the fit needs 2")
    else:
      try:
        row.update(fit_hyperbola(batches, np.array([p["steps"] for p in points])))
        width = max((p["bracket"][1] - p["bracket"][0]) / p["steps"] for p in points)
        row["max_relative_bracket"] = width
        notes = []
        if width > COARSE:
          notes.append(f"loss {target:.4g}: logged eval points up to {width:.2g} x S apart "
                       f"around a crossing (over {COARSE:g}): linear interpolation of a "
                       "convex curve puts the fast runs' S late, so B_crit is low")
        lo, hi = batches.min(), batches.max()
        if row["B_crit"] > BEYOND * hi or row["B_crit"] < lo / BEYOND:
          side = "above the largest" if row["B_crit"] > hi else "below the smallest"
          row["beyond_swept"] = True
          notes.append(f"loss {target:.4g}: B_crit {row['B_crit']:.3g} lies over {BEYOND:g}x "
                       f"{side} batch swept ({lo:g}-{hi:g}): S ~ "
                       f"{'1/B' if row['B_crit'] > hi else 'S_min'} across the sweep, so it "
                       "is a bound, not a measurement")
        if notes:
          row["note"] = "; ".join(notes)
      except AnalysisError as e:
        row["skipped"] = f"loss {target:.4g}: {e}"
    rows.append(row)
  fitted = [r for r in rows if "B_crit" in r]
  if not fitted:
    raise AnalysisError("no target loss could be fitted: " + "; ".join(r["skipped"] for r in rows))
  if len(fitted) >= MIN_TARGETS_FOR_LAW:
    law = fit_b_crit_law(np.array([r["loss"] for r in fitted]),
                         np.array([r["B_crit"] for r in fitted]))
  else:
    law = {"skipped": f"{len(fitted)} fitted target(s); B_crit(L) needs {MIN_TARGETS_FOR_LAW}"}
  return {"curves": [{"run": c.name, "batch": c.batch, "points": len(c.steps),
                      "first_loss": float(c.loss[0]), "final_loss": float(c.loss[-1]),
                      "min_loss": float(c.loss.min())} for c in curves],
          "targets_chosen": chosen, "interpolation": INTERPOLATION,
          "best_of_batch": best_of_batch,
          "fit": "least squares of S on 1/B, rows divided by S (relative residuals)",
          "targets": rows, "b_crit_law": law, "kaplan": KAPLAN,
          "notes": [r.get("skipped", r.get("note")) for r in rows
                    if "skipped" in r or "note" in r]}


# ---------------------------------------------------------------- input

def _curve(name: str, batch: float, frame: pd.DataFrame, step_col: str, loss_col: str,
           where: str) -> Curve | None:
  """The eval curve of one run; None when it has fewer than 2 eval points."""
  for col in (step_col, loss_col):
    if col not in frame.columns:
      raise AnalysisError(f"{where}: no {col!r} column (columns: "
                          f"{', '.join(map(str, frame.columns))})")
  if "split" in frame.columns:
    frame = frame[frame["split"] == "eval"]
  steps = pd.to_numeric(frame[step_col], errors="coerce").to_numpy(np.float64)
  loss = pd.to_numeric(frame[loss_col], errors="coerce").to_numpy(np.float64)
  ok = np.isfinite(steps) & np.isfinite(loss)
  if (~ok).any() and len(frame):
    raise AnalysisError(f"{where}: {int((~ok).sum())} eval point(s) with a missing or "
                        f"non-numeric {step_col} or {loss_col} (NaN)")
  if len(steps) < 2:
    return None
  order = np.argsort(steps, kind="stable")
  return Curve(name, float(batch), steps[order], loss[order])


def _check_batch(batch: float, where: str) -> float:
  if not (math.isfinite(batch) and batch > 0):
    raise AnalysisError(f"{where}: batch size {batch} is not a positive number")
  return batch


def _noise(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray] | None:
  """(steps, gns_b_simple) of the train records that have a finite one; None without."""
  if "gns_b_simple" not in frame.columns:
    return None
  rows = frame[frame["split"] == "train"] if "split" in frame.columns else frame
  steps = pd.to_numeric(rows["step"], errors="coerce").to_numpy(np.float64)
  values = pd.to_numeric(rows["gns_b_simple"], errors="coerce").to_numpy(np.float64)
  ok = np.isfinite(steps) & np.isfinite(values)
  if not ok.any():
    return None
  order = np.argsort(steps[ok], kind="stable")
  return steps[ok][order], values[ok][order]


def _label(value) -> str:
  number = pd.to_numeric(pd.Series([value]), errors="coerce")[0]
  return f"{number:g}" if np.isfinite(number) else str(value)


def curves_from_registry(path: str, batch_col: str, loss_col: str,
                         group_col: str | None = None) -> list[Curve]:
  from analysis.extrapolate import read_metrics
  from analysis.runs import load_runs
  table = load_runs(path)
  if table.empty:
    raise AnalysisError(f"no finished runs (summary.json) under {path}")
  for flag, col in (("--batch-col", batch_col), ("--group-col", group_col)):
    if col is not None and col not in table.columns:
      raise AnalysisError(f"{flag} {col!r} is not a column of the registry")
  curves = []
  for _, row in table.iterrows():
    metrics = os.path.join(row["run_dir"], "metrics.jsonl")
    batch = _check_batch(pd.to_numeric(pd.Series([row[batch_col]]), errors="coerce")[0],
                         row["run_dir"])
    frame = read_metrics(metrics)
    curve = _curve(str(row["run"]), batch, frame, "step", loss_col, metrics)
    if curve is not None:
      curve.noise = _noise(frame)
      curve.group = _label(row[group_col]) if group_col else ""
    curves.append(curve)
  return _usable(curves, path)


def curves_from_csv(path: str, batch_col: str, step_col: str, loss_col: str) -> list[Curve]:
  if not os.path.isfile(path):
    raise AnalysisError(f"CSV file not found: {path}")
  try:
    table = pd.read_csv(path)
  except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
    raise AnalysisError(f"{path} is not a readable CSV: {str(e).splitlines()[0]}") from None
  return curves_from_csv_frame(table, batch_col, step_col, loss_col, path)


def curves_from_csv_frame(table: pd.DataFrame, batch_col: str = "batch",
                          step_col: str = "step", loss_col: str = "loss",
                          path: str = "the table") -> list[Curve]:
  """One curve per `run` value (or per batch size without a run column)."""
  if batch_col not in table.columns:
    raise AnalysisError(f"--batch-col {batch_col!r} is not a column of {path} (columns: "
                        f"{', '.join(map(str, table.columns))})")
  batch = pd.to_numeric(table[batch_col], errors="coerce")
  if batch.isna().any():
    raise AnalysisError(f"{path}: --batch-col {batch_col!r} is missing or not a number (NaN) "
                        f"in {int(batch.isna().sum())} row(s)")
  key = table["run"].astype(str) if "run" in table.columns else batch
  curves = []
  for name, rows in table.groupby(key, sort=True):
    values = pd.to_numeric(rows[batch_col], errors="coerce").unique()
    if len(values) != 1:
      raise AnalysisError(f"{path}: run {name} has several batch sizes")
    label = str(name) if "run" in table.columns else f"batch {values[0]:g}"
    curves.append(_curve(label, _check_batch(float(values[0]), f"{path}: {label}"), rows,
                         step_col, loss_col, f"{path}: {label}"))
  return _usable(curves, path)


def _usable(curves: list, where: str) -> list[Curve]:
  """The curves with 2 or more eval points; a warning counts the others."""
  usable = [c for c in curves if c is not None]
  if len(usable) < len(curves):
    import warnings
    warnings.warn(f"{len(curves) - len(usable)} run(s) under {where} with fewer than 2 eval "
                  "points left out")
  if not usable:
    raise AnalysisError(f"{where}: no run with 2 or more eval points")
  return usable


# ---------------------------------------------------------------- text and plot

def summary_text(report: dict) -> str:
  best = ("; per batch size the fewest steps among its runs (lr tuned per target)"
          if report.get("best_of_batch") else "")
  noise = any("B_simple" in r for r in report["targets"])
  lines = [f"critical-batch: {len(report['curves'])} runs, batch sizes "
           f"{', '.join(f'{b:g}' for b in sorted({c['batch'] for c in report['curves']}))}; "
           f"S = first step at the target ({report['interpolation']}){best}",
           f"  {'target':>8} {'runs':>4} {'S_min':>10} {'E_min':>10} {'B_crit':>10} "
           f"{'rms rel resid':>13}" + (f" {'B_simple':>10}" if noise else "")]
  for r in report["targets"]:
    b_simple = f" {r['B_simple']:>10.4g}" if "B_simple" in r else (" " * 11 if noise else "")
    if "B_crit" in r:
      lines.append(f"  {r['loss']:>8.4f} {len(r['points']):>4} {r['S_min']:>10.4g} "
                   f"{r['E_min']:>10.4g} {r['B_crit']:>10.4g} "
                   f"{r['rms_relative_residual']:>13.2%}{b_simple}")
    else:
      lines.append(f"  {r['loss']:>8.4f} {len(r['points']):>4} skipped: {r['skipped']}")
    if r["left_out"]:
      lines.append(f"           left out (not bracketed): {', '.join(r['left_out'])}")
  if noise:
    lines.append("  B_simple: the logged gradient noise scale (gns_b_simple) at each point's "
                 "crossing step, geometric mean over the points")
  lines += [f"note: {r['note']}" for r in report["targets"] if "note" in r]
  law = report["b_crit_law"]
  if "skipped" in law:
    lines.append(f"B_crit(L): skipped: {law['skipped']}")
  else:
    lines.append(f"B_crit(L) = {law['B_star']:.4g} / L^(1/{law['alpha_B']:.3g}) over "
                 f"{law['targets']} targets (rms log residual {law['rms_log_residual']:.3g}); "
                 f"Kaplan et al. 2020: B* = 2e8 tokens, alpha_B = 0.21")
  lines += [f"plot: {p}" for p in report.get("plots", [])]
  return "\n".join(lines)


def plot(report: dict, out_dir: str, suffix: str = "") -> list[str]:
  """critical_batch.png: S against E per target with the fitted hyperbola, and B_crit
  against the target loss with B* / L^(1/alpha_B)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from analysis.plots import _save
  fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
  fitted = [r for r in report["targets"] if "B_crit" in r]
  batches = np.array([c["batch"] for c in report["curves"]])
  grid = np.geomspace(batches.min() / 4, batches.max() * 4, 100)
  for colour, r in zip(plt.cm.viridis(np.linspace(0, 0.9, len(fitted))), fitted):
    left.scatter([p["examples"] for p in r["points"]], [p["steps"] for p in r["points"]],
                 color=colour, label=f"L = {r['loss']:.3f}: B_crit {r['B_crit']:.3g}")
    left.plot(examples_to_reach(r["E_min"], r["B_crit"], grid),
              steps_to_reach(r["S_min"], r["B_crit"], grid), color=colour)
  left.set_xscale("log")
  left.set_yscale("log")
  left.set_xlabel("examples E = S B")
  left.set_ylabel("steps S")
  left.set_title("S = S_min (1 + B_crit / B), E = E_min (1 + B / B_crit)", fontsize=9)
  left.legend(fontsize=7)
  loss = np.array([r["loss"] for r in fitted])
  right.scatter(loss, [r["B_crit"] for r in fitted], color="k", zorder=3)
  law = report["b_crit_law"]
  if "skipped" not in law:
    span = np.geomspace(loss.min() / 1.05, loss.max() * 1.05, 50)
    right.plot(span, b_crit_of_loss(span, law["B_star"], law["alpha_B"]), "k-",
               label=f"B_crit = {law['B_star']:.3g} / L^(1/{law['alpha_B']:.3g})")
    right.legend(fontsize=8)
  right.set_xscale("log")
  right.set_yscale("log")
  right.set_xlabel("target loss L")
  right.set_ylabel("B_crit")
  if suffix:
    fig.suptitle(suffix.lstrip("-"), fontsize=10)
  return [_save(fig, os.path.join(out_dir, f"critical_batch{suffix}.png"))]


# ---------------------------------------------------------------- command line

def _targets(text: str) -> list[float]:
  import argparse
  from analysis.arguments import positive_number
  values = [positive_number(t) for t in text.split(",")]
  if len(set(values)) != len(values):
    raise argparse.ArgumentTypeError(f"{text!r}: a target loss is given twice")
  return values


def add_parser(sub) -> None:
  """`python -m analysis critical-batch`: its arguments, on the `analysis` subparsers."""
  p = sub.add_parser("critical-batch", help="S_min, E_min and the critical batch B_crit "
                                            "per target loss from a batch sweep's curves")
  source = p.add_mutually_exclusive_group(required=True)
  source.add_argument("--runs", metavar="DIR",
                      help="a registry: each run's metrics.jsonl eval records")
  source.add_argument("--csv", metavar="FILE",
                      help="rows of batch, step, loss (optional run, split columns)")
  p.add_argument("--batch-col", default=None,
                 help="batch size (default: global_batch_size in a registry, batch in a CSV)")
  p.add_argument("--step-col", default="step", help="--csv: the step column (step)")
  p.add_argument("--loss-col", default="loss", help="the eval loss (loss)")
  p.add_argument("--targets", type=_targets, default=None, metavar="L,L,...",
                 help=f"target losses (default {NUM_TARGETS} evenly spaced over the losses "
                      "every run reaches)")
  p.add_argument("--group-col", default=None, metavar="COL",
                 help="--runs: one fit per value of this registry column (params: per model "
                      "size)")
  p.add_argument("--best-of-batch", action="store_true",
                 help="runs sharing a batch size (an lr sweep): per target the fewest steps "
                      "among them, the lr tuned per target")
  p.add_argument("--plot-dir", default=None)
  p.add_argument("--json", action="store_true", help="print JSON")
  p.set_defaults(func=run_command, d_col=None, c_col=None)


def analyse_groups(curves: list[Curve], group_col: str, targets=None,
                   best_of_batch: bool = False) -> dict:
  """One report per group of curves ({"groups": [...]}); a group that cannot be fitted is
  kept with `skipped` (its one-line reason); all of them skipped is an AnalysisError."""
  def key(label):
    number = pd.to_numeric(pd.Series([label]), errors="coerce")[0]
    return (0, float(number), "") if np.isfinite(number) else (1, 0.0, label)
  groups = []
  for label in sorted({c.group for c in curves}, key=key):
    members = [c for c in curves if c.group == label]
    try:
      groups.append({"group_col": group_col, "group": label,
                     **analyse(members, targets, best_of_batch)})
    except AnalysisError as e:
      groups.append({"group_col": group_col, "group": label, "runs": len(members),
                     "skipped": str(e)})
  if all("skipped" in g for g in groups):
    raise AnalysisError("no group could be fitted: " + "; ".join(
        f"{group_col}={g['group']}: {g['skipped']}" for g in groups))
  return {"group_col": group_col, "groups": groups}


def run_command(args) -> dict:
  if args.group_col and not args.runs:
    raise AnalysisError("--group-col reads a registry column: give --runs DIR")
  if args.runs:
    curves = curves_from_registry(args.runs, args.batch_col or "global_batch_size",
                                  args.loss_col, args.group_col)
  else:
    curves = curves_from_csv(args.csv, args.batch_col or "batch", args.step_col, args.loss_col)
  if args.group_col:
    report = analyse_groups(curves, args.group_col, args.targets, args.best_of_batch)
    texts = []
    for g in report["groups"]:
      if args.plot_dir and "skipped" not in g:
        g["plots"] = plot(g, args.plot_dir, suffix=f"-{args.group_col}{g['group']}")
      body = (f"skipped: {g['skipped']}" if "skipped" in g else summary_text(g))
      texts.append(f"[{args.group_col} = {g['group']}] {body}")
    report["text"] = "\n".join(texts)
    return report
  report = analyse(curves, args.targets, args.best_of_batch)
  if args.plot_dir:
    report["plots"] = plot(report, args.plot_dir)
  report["text"] = summary_text(report)
  return report
