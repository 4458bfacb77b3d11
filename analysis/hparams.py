"""Optimal learning rate and batch size against N and D (`python -m analysis hparams`).

Input: one run per row, each with its parameters N, tokens D, peak learning rate, batch
size and final loss; runs that share N and D (within 2%) form a cell, and each cell sweeps
lr x batch. Per cell:

  near-optimal set  runs whose loss is within `tolerance` (relative, default 0.25%) of the
                    cell's best (Step Law's selection: Li et al. 2025, "Predictable Scale,
                    Part I");
  optimum           a quadratic in (log lr, log batch) least-squares fitted to the runs
                    within WINDOW grid steps of the best run, when that window holds at
                    least 3 lrs, 3 batch sizes and 7 points, the quadratic is convex and its
                    minimum lies inside the window's swept range; else the best run (the
                    grid's optimum). The cell reports which (`method`) and why.

Runs at the same (lr, batch) in a cell (seeds) are averaged first.

Laws, least squares in log space (numpy lstsq) over one point per cell (its optimum; or
`fit_on="near-optimal"`: every near-optimal run, as Step Law regresses):

  lr_opt    = a N^b D^c
  batch_opt = d D^e          or the variant   batch_opt = d N^f D^e

N-only form, chosen automatically when every cell has the same D (a sweep at one token
budget, where c and e cannot be estimated): c = e = 0 are fixed, not fitted, and

  lr_opt    = a N^b
  batch_opt = d              or the variant   batch_opt = d N^f

with the same selection of the batch form by backtest (d N^f in the role of d N^f D^e).
Such a law holds at that D only: the report says so (`law.D_fixed`) and a prediction at
another D is flagged as an extrapolation. It needs 3 or more sizes (2 coefficients and a
residual); the full form needs 4 or more cells with N and D varying independently.

The batch form is chosen by the leave-largest-out backtest: refit without the cells of the
largest N, predict their (lr, batch), and take the loss of the run nearest the prediction
(Euclidean in natural log lr, log batch) relative to the cell's best loss. d N^f D^e is
chosen only with a lower mean gap, or an equal one (the same nearest runs) and a batch log
error (prediction vs the cell's optimum) at least 10% lower; else d D^e. 95% intervals:
from `replicates` bootstrap resamples of the cells (seeded): estimate +- t sd (`_interval`).

Units are the input columns': lr as given, batch in whatever the batch column counts
(images per step for a varjax registry; Step Law's B counts tokens).

Reference (Step Law, Li et al. 2025): lr_opt = 1.79 N^-0.713 D^0.307, B_opt = 0.58 D^0.571
(B in tokens), i.e. lr 9.2e-4 and B 5.0e6 tokens at N = 7e9, D = 1.4e12 (`STEP_LAW`).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd

from analysis.validate import AnalysisError, check_positive_finite

TOLERANCE = 0.0025  # Step Law: runs within 0.25% of the cell's best loss
SAME_CELL = 0.02  # runs whose N (and D) agree within 2% share a cell
WINDOW = 2  # the quadratic sees runs within 2 grid steps of the best in lr and in batch
MIN_LEVELS, MIN_POINTS = 3, 7  # per window: distinct lrs and batches; points (6 parameters)
REPLICATES = 200
ND_MARGIN = 0.9  # d N^f D^e must cut the backtest's batch log error by 10% at an equal gap
LEVEL = 0.95
BATCH_FORMS = {"D": "batch_opt = d D^e", "ND": "batch_opt = d N^f D^e",
               "const": "batch_opt = d (D fixed)", "N": "batch_opt = d N^f (D fixed)"}
LR_FORMS = {"ND": "lr_opt = a N^b D^c", "N": "lr_opt = a N^b (D fixed)"}
LR_FORM = LR_FORMS["ND"]
# The batch forms compared by the backtest (simpler first) when N and D vary ("ND") and
# when D is the same in every cell ("N": the N-only form).
CANDIDATES = {"ND": ("D", "ND"), "N": ("const", "N")}
N_ONLY = {"const", "N"}
# Coefficients each form fits; the others are fixed at 0 (c, e in the N-only form; f in d D^e).
FITTED = {"lr": ("a", "b", "c"), "lr-N": ("a", "b"), "D": ("d", "e"), "ND": ("d", "f", "e"),
          "const": ("d",), "N": ("d", "f")}
FIT_ON = ("optimum", "near-optimal")
# Li et al. 2025 ("Predictable Scale, Part I: Optimal Hyperparameter Scaling Law in Large
# Language Model Pretraining"): lr in AdamW's units, B in tokens.
STEP_LAW = {"a": 1.79, "b": -0.713, "c": 0.307, "d": 0.58, "e": 0.571}


def lr_law(n, d, a: float, b: float, c: float) -> np.ndarray:
  """lr_opt = a N^b D^c, elementwise (N parameters, D tokens)."""
  return a * np.asarray(n, np.float64) ** b * np.asarray(d, np.float64) ** c


def batch_law(n, d, d_coef: float, e: float, f: float = 0.0) -> np.ndarray:
  """batch_opt = d N^f D^e, elementwise (f = 0: Step Law's d D^e)."""
  return d_coef * np.asarray(n, np.float64) ** f * np.asarray(d, np.float64) ** e


# ---------------------------------------------------------------- cells

def levels(values: np.ndarray, rel: float = SAME_CELL) -> tuple[np.ndarray, np.ndarray]:
  """(int[runs] level index, float64[levels] geometric mean per level): sorted values
  whose neighbours differ by under `rel` (relative) share a level."""
  logs = np.log(values)
  order = np.argsort(logs, kind="stable")
  breaks = np.diff(logs[order]) > math.log1p(rel)
  ids = np.empty(len(values), np.int64)
  ids[order] = np.concatenate([[0], np.cumsum(breaks)])
  means = np.array([np.exp(logs[ids == k].mean()) for k in range(ids.max() + 1)])
  return ids, means


@dataclasses.dataclass
class Cell:
  n: float
  d: float
  lr: np.ndarray  # float64[points]: distinct (lr, batch) of the cell
  batch: np.ndarray
  loss: np.ndarray  # mean final loss over the runs at that point
  runs: np.ndarray  # int64[points]: how many runs were averaged
  opt_lr: float = math.nan
  opt_batch: float = math.nan
  opt_loss: float = math.nan
  method: str = "grid"
  reason: str = ""

  @property
  def best(self) -> int:
    return int(np.argmin(self.loss))

  def near_optimal(self, tolerance: float) -> np.ndarray:
    return self.loss <= self.loss.min() * (1 + tolerance)

  def nearest(self, lr: float, batch: float) -> int:
    """The point nearest (lr, batch) in (log lr, log batch)."""
    dist = np.hypot(np.log(self.lr / lr), np.log(self.batch / batch))
    return int(np.argmin(dist))

  def gap(self, lr: float, batch: float) -> float:
    """(loss of the point nearest (lr, batch) - best loss) / best loss."""
    return float(self.loss[self.nearest(lr, batch)] / self.loss.min() - 1)


def make_cells(n, d, lr, batch, loss) -> list[Cell]:
  """Runs grouped into (N, D) cells, each (lr, batch) once (seeds averaged)."""
  n_id, n_lv = levels(n)
  d_id, d_lv = levels(d)
  cells = []
  for i, j in sorted(set(zip(n_id.tolist(), d_id.tolist()))):
    sel = (n_id == i) & (d_id == j)
    frame = pd.DataFrame({"lr": lr[sel], "batch": batch[sel], "loss": loss[sel]})
    g = frame.groupby(["lr", "batch"], sort=True)["loss"].agg(["mean", "size"]).reset_index()
    cells.append(Cell(float(n_lv[i]), float(d_lv[j]), g["lr"].to_numpy(np.float64),
                      g["batch"].to_numpy(np.float64), g["mean"].to_numpy(np.float64),
                      g["size"].to_numpy(np.int64)))
  return cells


def _grid_index(values: np.ndarray) -> np.ndarray:
  """int[points]: each value's position among the distinct values (the sweep's grid)."""
  return np.unique(values, return_inverse=True)[1].reshape(-1)


def _quadratic_features(x: np.ndarray, y: np.ndarray) -> np.ndarray:
  return np.stack([np.ones_like(x), x, y, x * x, y * y, x * y], axis=1)


def smooth_optimum(cell: Cell) -> Cell:
  """The cell's optimum (module docstring): a convex quadratic's interior minimum in
  (log lr, log batch) near the best run, else the best run; sets opt_*, method, reason."""
  b = cell.best
  cell.opt_lr, cell.opt_batch, cell.opt_loss = cell.lr[b], cell.batch[b], cell.loss[b]
  cell.method = "grid"
  il, ib = _grid_index(cell.lr), _grid_index(cell.batch)
  win = (np.abs(il - il[b]) <= WINDOW) & (np.abs(ib - ib[b]) <= WINDOW)
  num_lr, num_b = len(np.unique(il[win])), len(np.unique(ib[win]))
  if num_lr < MIN_LEVELS or num_b < MIN_LEVELS or win.sum() < MIN_POINTS:
    cell.reason = (f"{num_lr} lr(s), {num_b} batch size(s), {int(win.sum())} point(s) near the "
                   f"best run (a quadratic needs {MIN_LEVELS}, {MIN_LEVELS}, {MIN_POINTS})")
    return cell
  # Centred on the best run: the quadratic's coefficients are then well conditioned.
  x0, y0 = math.log(cell.lr[b]), math.log(cell.batch[b])
  x, y = np.log(cell.lr[win]) - x0, np.log(cell.batch[win]) - y0
  coef = np.linalg.lstsq(_quadratic_features(x, y), cell.loss[win], rcond=None)[0]
  hess = np.array([[2 * coef[3], coef[5]], [coef[5], 2 * coef[4]]])
  if np.linalg.eigvalsh(hess).min() <= 0:
    cell.reason = "the fitted quadratic is not convex"
    return cell
  xo, yo = np.linalg.solve(hess, -coef[1:3])
  if not (x.min() <= xo <= x.max() and y.min() <= yo <= y.max()):
    cell.reason = "the fitted quadratic's minimum lies outside the swept lr x batch range"
    return cell
  cell.opt_lr, cell.opt_batch = math.exp(x0 + xo), math.exp(y0 + yo)
  cell.opt_loss = float(_quadratic_features(np.array([xo]), np.array([yo]))[0] @ coef)
  cell.method, cell.reason = "quadratic", ""
  return cell


# ---------------------------------------------------------------- laws

@dataclasses.dataclass
class Points:
  """What the laws regress: log N, log D, log lr, log batch per point, and its cell."""
  log_n: np.ndarray
  log_d: np.ndarray
  log_lr: np.ndarray
  log_batch: np.ndarray
  cell: np.ndarray  # int[points]

  def take(self, cells: np.ndarray) -> "Points":
    """The points of `cells` (with repeats: a bootstrap resample), cells renumbered."""
    parts = [np.flatnonzero(self.cell == c) for c in cells]
    idx = np.concatenate(parts)
    new = np.repeat(np.arange(len(cells)), [len(p) for p in parts])
    return Points(self.log_n[idx], self.log_d[idx], self.log_lr[idx], self.log_batch[idx], new)


def law_points(cells: list[Cell], fit_on: str, tolerance: float) -> Points:
  rows = []
  for k, c in enumerate(cells):
    if fit_on == "optimum":
      rows.append((c.n, c.d, c.opt_lr, c.opt_batch, k))
    else:
      near = c.near_optimal(tolerance)
      rows += [(c.n, c.d, lr, bs, k) for lr, bs in zip(c.lr[near], c.batch[near])]
  a = np.array(rows, np.float64)
  return Points(np.log(a[:, 0]), np.log(a[:, 1]), np.log(a[:, 2]), np.log(a[:, 3]),
                a[:, 4].astype(np.int64))


def _design(p: Points, form: str) -> np.ndarray:
  """Columns of the log-linear law: lr and 'ND': [1, log N, log D]; 'D': [1, log D];
  the N-only forms: 'lr-N' and 'N': [1, log N]; 'const': [1]."""
  columns = {"lr": ("one", "n", "d"), "ND": ("one", "n", "d"), "D": ("one", "d"),
             "lr-N": ("one", "n"), "N": ("one", "n"), "const": ("one",)}[form]
  values = {"one": np.ones_like(p.log_n), "n": p.log_n, "d": p.log_d}
  return np.stack([values[k] for k in columns], axis=1)


def lr_form(batch_form: str) -> str:
  """The lr law's design that goes with a batch form: 'lr-N' for the N-only forms."""
  return "lr-N" if batch_form in N_ONLY else "lr"


def _solve(x: np.ndarray, y: np.ndarray) -> np.ndarray | None:
  """Least-squares coefficients, or None when the design is rank deficient (N and D
  collinear, a single N ...)."""
  if np.linalg.matrix_rank(x) < x.shape[1]:
    return None
  return np.linalg.lstsq(x, y, rcond=None)[0]


def fit_coefficients(p: Points, batch_form: str) -> dict[str, float] | None:
  """{a, b, c, d, e[, f]} or None when a design is rank deficient; the N-only forms give
  c = e = 0 (fixed, not fitted)."""
  lr_design = lr_form(batch_form)
  lr = _solve(_design(p, lr_design), p.log_lr)
  bt = _solve(_design(p, batch_form), p.log_batch)
  if lr is None or bt is None:
    return None
  out = {"c": 0.0, "e": 0.0}
  for names, values in ((FITTED[lr_design], lr), (FITTED[batch_form], bt)):
    for k, v in zip(names, values):
      out[k] = math.exp(v) if k in ("a", "d") else float(v)
  if batch_form == "const":
    out["f"] = 0.0  # d N^0: the N-only constant (kept so a reader sees no N dependence)
  return out


def predict(coef: dict, n, d) -> tuple[np.ndarray, np.ndarray]:
  """(lr_opt, batch_opt) at N, D from coefficients {a, b, c, d, e[, f]}."""
  return (lr_law(n, d, coef["a"], coef["b"], coef["c"]),
          batch_law(n, d, coef["d"], coef["e"], coef.get("f", 0.0)))


def bootstrap(p: Points, batch_form: str, replicates: int, seed: int) -> list[dict]:
  """Coefficients refitted on `replicates` resamples of the cells (with replacement);
  a rank-deficient resample is drawn again (at most 10 x replicates draws)."""
  rng = np.random.default_rng(seed)
  num = int(p.cell.max()) + 1
  out, draws = [], 0
  while len(out) < replicates and draws < 10 * replicates:
    draws += 1
    coef = fit_coefficients(p.take(rng.integers(0, num, num)), batch_form)
    if coef is not None:
      out.append(coef)
  return out


def _interval(estimate: float, values, num_cells: int, num_params: int,
              log: bool = False) -> list[float]:
  """95% interval of `estimate` from its bootstrap `values`: estimate +- t x sd, where sd is
  the replicates' standard deviation times sqrt(cells / (cells - params)) and t Student's
  with cells - params degrees of freedom (in log space when `log`). Why not the replicates'
  percentiles: resampling a dozen cells shrinks the spread by (cells - params) / cells and
  the normal quantile is too small for so few, so percentile intervals held the truth in
  82-92% of 40 synthetic sweeps of 16 cells (mean 88%), these in 87.5-97.5% (mean 93.5%;
  tests/test_analysis_hparams.py, docs/analysis.md)."""
  from scipy import stats
  v = np.log(np.asarray(values, np.float64)) if log else np.asarray(values, np.float64)
  centre = math.log(estimate) if log else estimate
  dof = max(num_cells - num_params, 1)
  half = float(stats.t.ppf(0.5 + LEVEL / 2, dof)) * float(np.std(v, ddof=1)) \
      * math.sqrt(num_cells / dof)
  lo, hi = centre - half, centre + half
  return [math.exp(lo), math.exp(hi)] if log else [lo, hi]


def law_report(coef: dict, boot: list[dict], batch_form: str, num_cells: int) -> dict:
  def block(names, all_names):
    iv = {k: _interval(coef[k], [b[k] for b in boot], num_cells, len(names),
                       log=k in ("a", "d")) for k in names} if boot else None
    fixed = {k: coef[k] for k in all_names if k not in names}
    return {**{k: coef[k] for k in all_names}, "interval_95": iv,
            **({"fixed": fixed} if fixed else {})}
  n_only = batch_form in N_ONLY
  batch_names = ("d", "e") if batch_form == "D" else ("d", "f", "e")
  return {"lr": {"form": LR_FORMS["N" if n_only else "ND"],
                 **block(FITTED[lr_form(batch_form)], ("a", "b", "c"))},
          "batch": {"form": BATCH_FORMS[batch_form], **block(FITTED[batch_form], batch_names)},
          "batch_form": batch_form, "replicates": len(boot)}


# ---------------------------------------------------------------- backtest

def backtest(cells: list[Cell], p: Points, batch_form: str) -> dict:
  """Leave-largest-out: refit without the cells of the largest N; each held-out cell's
  predicted (lr, batch), the run nearest it, and that run's loss gap to the cell's best."""
  n_top = max(c.n for c in cells)
  held = [k for k, c in enumerate(cells) if c.n == n_top]
  kept = [k for k in range(len(cells)) if k not in held]
  coef = fit_coefficients(p.take(np.array(kept)), batch_form) if kept else None
  if coef is None:
    return {"skipped": f"without the largest N ({n_top:.3g}) the remaining "
                       f"{len(kept)} cell(s) cannot fit the laws (too few distinct N and D)"}
  rows = []
  for k in held:
    c = cells[k]
    lr, bs = (float(v[0]) for v in predict(coef, [c.n], [c.d]))
    j = c.nearest(lr, bs)
    rows.append({"N": c.n, "D": c.d, "lr": lr, "batch": bs, "nearest_lr": float(c.lr[j]),
                 "nearest_batch": float(c.batch[j]), "loss": float(c.loss[j]),
                 "best_loss": float(c.loss.min()), "gap": c.gap(lr, bs),
                 "lr_log_error": math.log(lr / c.opt_lr),
                 "batch_log_error": math.log(bs / c.opt_batch)})
  gaps = [r["gap"] for r in rows]
  return {"held_out_N": n_top, "fitted_cells": len(kept), "cells": rows,
          "mean_gap": float(np.mean(gaps)), "max_gap": float(np.max(gaps)),
          "batch_rms_log_error": float(np.sqrt(np.mean([r["batch_log_error"] ** 2
                                                         for r in rows])))}


def choose_batch_form(tests: dict[str, dict]) -> tuple[str, str]:
  """(form, why): the form with N (d N^f D^e, or d N^f at one D) only when it earns its
  extra parameter in the backtest: a lower mean gap, or the same gap (the same nearest
  runs) and a batch log error under ND_MARGIN x that of the simpler form; else the simpler
  (Step Law's d D^e, or the constant d at one D). `tests` has the two candidates of
  CANDIDATES["ND"] or CANDIDATES["N"]."""
  simple, with_n = CANDIDATES["N"] if set(tests) == set(CANDIDATES["N"]) else CANDIDATES["ND"]
  if any("skipped" in t for t in tests.values()):
    return simple, f"{BATCH_FORMS[simple]} (the simpler form): no backtest (too few N)"
  d, nd = tests[simple], tests[with_n]
  gap_d, gap_nd = round(d["mean_gap"], 12), round(nd["mean_gap"], 12)
  better = gap_nd < gap_d or (gap_nd == gap_d and nd["batch_rms_log_error"]
                              < ND_MARGIN * d["batch_rms_log_error"])
  form = with_n if better else simple
  return form, (
      f"{BATCH_FORMS[form]} by the leave-largest-out backtest: mean gap "
      f"{d['mean_gap']:.4%} ({BATCH_FORMS[simple]}) vs {nd['mean_gap']:.4%} "
      f"({BATCH_FORMS[with_n]}); batch rms log error "
      f"{d['batch_rms_log_error']:.3g} vs {nd['batch_rms_log_error']:.3g}")


# ---------------------------------------------------------------- analysis

def _range_factor(value: float, lo: float, hi: float) -> float:
  """How many times `value` lies beyond [lo, hi] (1.0 inside)."""
  return float(max(value / hi, lo / value, 1.0))


def predictions(coef: dict, boot: list[dict], at: list[dict], cells: list[Cell],
                form: str) -> list[dict]:
  ns, ds = [c.n for c in cells], [c.d for c in cells]
  k = len(cells)
  p_lr, p_batch = len(FITTED[lr_form(form)]), len(FITTED[form])
  out = []
  for point in at:
    n, d = point["N"], point["D"]
    lr, bs = (float(v[0]) for v in predict(coef, [n], [d]))
    sample = [predict(b, [n], [d]) for b in boot]
    factors = {"N": _range_factor(n, min(ns), max(ns)), "D": _range_factor(d, min(ds), max(ds))}
    out.append({"N": n, "D": d, "lr": lr, "batch": bs,
                "lr_interval": _interval(lr, [s[0][0] for s in sample], k, p_lr, log=True)
                if boot else None,
                "batch_interval": _interval(bs, [s[1][0] for s in sample], k, p_batch, log=True)
                if boot else None,
                "extrapolation": {"beyond_fitted_range": max(factors.values()) > 1,
                                  "N_factor": factors["N"], "D_factor": factors["D"]}})
  return out


def _cell_report(c: Cell, tolerance: float, coef: dict) -> dict:
  near = c.near_optimal(tolerance)
  b = c.best
  lr, bs = (float(v[0]) for v in predict(coef, [c.n], [c.d]))
  return {"N": c.n, "D": c.d, "points": len(c.loss), "runs": int(c.runs.sum()),
          "lrs": len(np.unique(c.lr)), "batches": len(np.unique(c.batch)),
          "best": {"lr": float(c.lr[b]), "batch": float(c.batch[b]), "loss": float(c.loss[b])},
          "near_optimal": [{"lr": float(x), "batch": float(y), "loss": float(z)}
                           for x, y, z in zip(c.lr[near], c.batch[near], c.loss[near])],
          "optimum": {"lr": c.opt_lr, "batch": c.opt_batch, "loss": c.opt_loss,
                      "method": c.method, **({"reason": c.reason} if c.reason else {})},
          "law": {"lr": lr, "batch": bs, "gap": c.gap(lr, bs)}}


def check_cells(cells: list[Cell]) -> None:
  if len(cells) < 2:
    c = cells[0]
    raise AnalysisError(f"one (N, D) cell only (N={c.n:.3g}, D={c.d:.3g}): the laws need "
                        "cells at several N and D")
  for c in cells:
    for name, values in (("learning rate", c.lr), ("batch size", c.batch)):
      if len(np.unique(values)) < 2:
        raise AnalysisError(f"cell N={c.n:.3g}, D={c.d:.3g} has a single {name} "
                            f"({values[0]:g}): each cell must sweep lr and batch size")
  ns = [c.n for c in cells]
  if len(np.unique(ns)) < 2:
    raise AnalysisError(f"all {len(cells)} cells have the same N ({ns[0]:.3g}): "
                        "lr_opt = a N^b D^c needs two or more values of N")


def analyse(n, d, lr, batch, loss, tolerance: float = TOLERANCE, replicates: int = REPLICATES,
            seed: int = 0, at=(), fit_on: str = "optimum"):
  """(report, cells, coefficients, bootstrap coefficients): the hparams report (module
  docstring) from per-run arrays (float64[runs], positive)."""
  for name, values in (("N", n), ("D", d), ("lr", lr), ("batch", batch), ("loss", loss)):
    check_positive_finite(name, values)
  cells = make_cells(*(np.asarray(v, np.float64) for v in (n, d, lr, batch, loss)))
  check_cells(cells)
  for c in cells:
    smooth_optimum(c)
  p = law_points(cells, fit_on, tolerance)
  d_fixed = len({c.d for c in cells}) == 1  # one D level: the N-only form
  vary = "N" if d_fixed else "ND"
  if d_fixed and len(cells) < 3:
    raise AnalysisError(f"{len(cells)} cells, all at D={cells[0].d:.3g}: the N-only form "
                        "lr_opt = a N^b (2 coefficients) needs at least 3 sizes")
  if not d_fixed and len(cells) < 4:
    raise AnalysisError(f"{len(cells)} (N, D) cells: lr_opt = a N^b D^c (3 coefficients) "
                        "needs at least 4")
  if not d_fixed and fit_coefficients(p, "ND") is None:
    raise AnalysisError(f"N and D do not vary independently across the {len(cells)} cells "
                        "(D a fixed multiple of N, say): lr_opt = a N^b D^c cannot tell b "
                        "from c")
  tests = {form: backtest(cells, p, form) for form in CANDIDATES[vary]}
  form, why = choose_batch_form(tests)
  coef = fit_coefficients(p, form)
  boot = bootstrap(p, form, replicates, seed) if replicates else []
  report = {"law": {**law_report(coef, boot, form, len(cells)), "chosen_by": why, "fit_on": fit_on,
                    "varies": vary,
                    "D_fixed": cells[0].d if d_fixed else None,
                    **({"why_N_only": f"every cell has D = {cells[0].d:.4g}: c and e cannot be "
                        "estimated, so lr_opt = a N^b and the batch law without D (valid at "
                        "this D only)"} if d_fixed else {}),
                    "N_range": [min(c.n for c in cells), max(c.n for c in cells)],
                    "D_range": [min(c.d for c in cells), max(c.d for c in cells)]},
            "cells": [_cell_report(c, tolerance, coef) for c in cells],
            "backtest": {**tests[form], "batch_form": form,
                         "candidates": {f: {k: t.get(k) for k in ("mean_gap", "max_gap",
                                                                  "batch_rms_log_error",
                                                                  "skipped") if k in t}
                                        for f, t in tests.items()}},
            "tolerance": tolerance,
            "predict": predictions(coef, boot, list(at), cells, form)}
  return report, cells, coef, boot


# ---------------------------------------------------------------- text

def _iv(block: dict, k: str) -> str:
  iv = (block.get("interval_95") or {}).get(k)
  return f" [{iv[0]:.3g}, {iv[1]:.3g}]" if iv else ""


def summary_text(report: dict) -> str:
  law = report["law"]
  lr, bt = law["lr"], law["batch"]
  points = "optimum" if law["fit_on"] == "optimum" else "near-optimal runs"
  n_only = law.get("varies") == "N"
  f = f" N^{bt['f']:.3g}{_iv(bt, 'f')}" if "f" in bt and bt["form"] != BATCH_FORMS["const"] \
      else ""
  lr_d = "" if n_only else f" D^{lr['c']:.3g}{_iv(lr, 'c')}"
  bt_d = "" if n_only else f" D^{bt['e']:.3g}{_iv(bt, 'e')}"
  lines = [f"hparams: {len(report['cells'])} cells, N {law['N_range'][0]:.3g}-"
           f"{law['N_range'][1]:.3g}, D {law['D_range'][0]:.3g}-{law['D_range'][1]:.3g}; laws "
           f"fitted to each cell's {points} ({law['replicates']} bootstrap resamples, 95% "
           "intervals)",
           f"  lr_opt    = {lr['a']:.3g}{_iv(lr, 'a')} N^{lr['b']:.3g}{_iv(lr, 'b')}{lr_d}",
           f"  batch_opt = {bt['d']:.3g}{_iv(bt, 'd')}{f}{bt_d}",
           *([f"  N-only form: {law['why_N_only']}"] if n_only else []),
           f"  batch form: {law['chosen_by']}",
           f"cells (near-optimal: loss within {report['tolerance']:.2%} of the cell's best):",
           f"  {'N':>9} {'D':>9} {'runs':>4} {'best lr':>9} {'best B':>8} {'best loss':>9} "
           f"{'near':>4} {'opt lr':>9} {'opt B':>8} {'method':<9} {'law gap':>8}"]
  for c in report["cells"]:
    o = c["optimum"]
    lines.append(f"  {c['N']:>9.3g} {c['D']:>9.3g} {c['runs']:>4} {c['best']['lr']:>9.3g} "
                 f"{c['best']['batch']:>8.3g} {c['best']['loss']:>9.4f} "
                 f"{len(c['near_optimal']):>4} {o['lr']:>9.3g} {o['batch']:>8.3g} "
                 f"{o['method']:<9} {c['law']['gap']:>8.3%}")
  bt_ = report["backtest"]
  if "skipped" in bt_:
    lines.append(f"backtest: skipped: {bt_['skipped']}")
  else:
    lines.append(f"backtest (refit without N = {bt_['held_out_N']:.3g}): loss of the run nearest "
                 f"the predicted optimum is {bt_['mean_gap']:.3%} above the cell's best on "
                 f"average (max {bt_['max_gap']:.3%})")
  for p in report["predict"]:
    x = p["extrapolation"]
    beyond = (f"; extrapolates {x['N_factor']:.3g}x in N, {x['D_factor']:.3g}x in D"
              if x["beyond_fitted_range"] else "")
    li, bi = p["lr_interval"], p["batch_interval"]
    lines.append(f"at N={p['N']:.3g}, D={p['D']:.3g}: lr {p['lr']:.3g}"
                 + (f" [{li[0]:.3g}, {li[1]:.3g}]" if li else "")
                 + f", batch {p['batch']:.3g}" + (f" [{bi[0]:.3g}, {bi[1]:.3g}]" if bi else "")
                 + beyond)
  if "sensitivity" in report:
    from analysis import sensitivity
    lines.append(sensitivity.summary_text(report["sensitivity"]))
  lines += [f"plot: {path}" for path in report.get("plots", [])]
  return "\n".join(lines)


# ---------------------------------------------------------------- plots

def plot(report: dict, cells: list[Cell], coef: dict, boot: list[dict], out_dir: str) -> list[str]:
  """hparams_cells.png (per cell: loss over lr x batch, the cell's optimum and the law's
  prediction) and hparams_laws.png (lr_opt, batch_opt against N and D with the fitted
  lines and their 95% bands)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from analysis.plots import _save
  cols = min(4, len(cells))
  rows = -(-len(cells) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.2 * rows), squeeze=False)
  for ax, c, rep in zip(axes.flat, cells, report["cells"]):
    lrs, bss = np.unique(c.lr), np.unique(c.batch)
    grid = np.full((len(bss), len(lrs)), np.nan)
    grid[np.searchsorted(bss, c.batch), np.searchsorted(lrs, c.lr)] = c.loss
    im = ax.imshow(grid, origin="lower", aspect="auto", cmap="viridis")
    fig.colorbar(im, ax=ax, shrink=0.8)
    pos = lambda v, axis: float(np.interp(np.log(v), np.log(axis), np.arange(len(axis))))
    near = c.near_optimal(report["tolerance"])
    ax.scatter(np.searchsorted(lrs, c.lr[near]), np.searchsorted(bss, c.batch[near]),
               facecolors="none", edgecolors="w", s=60, label="near-optimal")
    ax.plot(pos(c.opt_lr, lrs), pos(c.opt_batch, bss), "rx", ms=9, label=f"optimum ({c.method})")
    ax.plot(pos(rep["law"]["lr"], lrs), pos(rep["law"]["batch"], bss), "r*", ms=11,
            mfc="none", label="law")
    ax.set_xticks(range(len(lrs)), [f"{v:.2g}" for v in lrs], rotation=45, fontsize=7)
    ax.set_yticks(range(len(bss)), [f"{v:.3g}" for v in bss], fontsize=7)
    ax.set_xlabel("lr")
    ax.set_ylabel("batch")
    ax.set_title(f"N={c.n:.3g}, D={c.d:.3g}", fontsize=9)
  axes.flat[0].legend(fontsize=6, loc="upper right")
  for ax in list(axes.flat)[len(cells):]:
    ax.axis("off")
  paths = [_save(fig, f"{out_dir}/hparams_cells.png")]

  # Each panel shows one input's effect: the points moved to the other input's reference
  # value (its geometric mean over the cells) along the fitted law, so one line fits all.
  # At one D (the N-only form) only the N panels are drawn.
  n = np.array([c.n for c in cells])
  d = np.array([c.d for c in cells])
  n_only = report["law"].get("varies") == "N"
  panels = [("N", n, "D", d)] + ([] if n_only else [("D", d, "N", n)])
  fig, axes = plt.subplots(2, len(panels), figsize=(5 * len(panels), 8), squeeze=False)
  ref = {"N": float(np.exp(np.log(n).mean())), "D": float(np.exp(np.log(d).mean()))}
  measured = {0: np.array([c.opt_lr for c in cells]), 1: np.array([c.opt_batch for c in cells])}
  fitted = predict(coef, n, d)
  for row, what in enumerate(("lr", "batch")):
    for col, (x_name, x, other_name, other) in enumerate(panels):
      ax = axes[row, col]
      grid = np.geomspace(x.min() / 1.5, x.max() * 1.5, 60)
      fixed = np.full_like(grid, ref[other_name])
      at = (grid, fixed) if x_name == "N" else (fixed, grid)
      at_pts = (n, np.full_like(n, ref["D"])) if x_name == "N" else (np.full_like(d, ref["N"]), d)
      moved = measured[row] * predict(coef, *at_pts)[row] / fitted[row]
      if n_only:
        ax.scatter(x, moved, color="C0", zorder=3, label="cell optimum")
      else:
        sc = ax.scatter(x, moved, c=np.log10(other), cmap="viridis", zorder=3)
        fig.colorbar(sc, ax=ax, label=f"log10 {other_name}")
      ax.plot(grid, predict(coef, *at)[row], "k-", label="law")
      if boot:
        sample = np.array([predict(b, *at)[row] for b in boot])
        lo, hi = np.percentile(sample, [2.5, 97.5], axis=0)
        ax.fill_between(grid, lo, hi, color="k", alpha=0.15, label="95% band (bootstrap)")
      ax.set_xscale("log")
      ax.set_yscale("log")
      ax.set_xlabel(x_name)
      ax.set_ylabel(f"{what}_opt at {other_name} = {ref[other_name]:.3g}")
      ax.legend(fontsize=7)
  if n_only:
    f = f" N^{coef['f']:.3g}" if report["law"]["batch_form"] == "N" else ""
    fig.suptitle(f"at D = {d[0]:.3g}: lr_opt = {coef['a']:.3g} N^{coef['b']:.3g};   "
                 f"batch_opt = {coef['d']:.3g}{f}", fontsize=10)
  else:
    f = f" N^{coef['f']:.3g}" if "f" in coef else ""
    fig.suptitle(f"lr_opt = {coef['a']:.3g} N^{coef['b']:.3g} D^{coef['c']:.3g};   "
                 f"batch_opt = {coef['d']:.3g}{f} D^{coef['e']:.3g}", fontsize=10)
  paths.append(_save(fig, f"{out_dir}/hparams_laws.png"))
  return paths


# ---------------------------------------------------------------- command line

def registry_peak_lr(table: pd.DataFrame) -> pd.Series:
  """A registry run's peak lr: sweep.json's peak_lr, else config.json's optim.peak_lr, else
  VAR's rule optim.base_lr x global_batch_size / 256 (varjax.config.var_peak_lr)."""
  def col(name):
    return (pd.to_numeric(table[name], errors="coerce") if name in table.columns
            else pd.Series(np.nan, index=table.index))
  rule = col("config.optim.base_lr") * col("config.data.global_batch_size") / 256
  return col("sweep.peak_lr").fillna(col("config.optim.peak_lr")).fillna(rule)


def add_parser(sub) -> None:
  """`python -m analysis hparams`: its arguments, on the `analysis` subparsers."""
  from analysis.arguments import at_point, count, positive_number, replicates
  p = sub.add_parser("hparams", help="optimal lr and batch size against N and D from "
                                     "lr x batch sweeps (Step Law's laws), with a backtest")
  p.add_argument("--csv", help="a CSV with one row per run")
  p.add_argument("--runs", help="a run registry directory")
  p.add_argument("--n-col", default="params", help="parameters N (default params)")
  p.add_argument("--d-col", default="tokens", help="training tokens D (default tokens)")
  p.add_argument("--lr-col", default="peak_lr",
                 help="peak learning rate (default peak_lr; a registry's is sweep.peak_lr, "
                      "else config optim.peak_lr, else base_lr x batch / 256)")
  p.add_argument("--batch-col", default="global_batch_size",
                 help="batch size (default global_batch_size, images per step)")
  p.add_argument("--loss-col", default="loss", help="final loss (default loss)")
  p.add_argument("--tolerance", type=positive_number, default=TOLERANCE,
                 help="near-optimal: loss within this fraction of the cell's best (0.0025)")
  p.add_argument("--fit-on", choices=FIT_ON, default="optimum",
                 help="regress each cell's optimum (default) or every near-optimal run "
                      "(Step Law's procedure)")
  p.add_argument("--bootstrap", type=replicates, default=REPLICATES, metavar="K",
                 help=f"bootstrap resamples of the cells (default {REPLICATES}; 0: none)")
  p.add_argument("--seed", type=count, default=0)
  p.add_argument("--at", action="append", type=at_point, default=[], metavar="N=..,D=..",
                 help="predict lr_opt and batch_opt here (repeatable)")
  p.add_argument("--l0", type=positive_number, default=None,
                 help="lr sensitivity: the loss at initialisation (default ln V from "
                      "--vocab-col: uniform logits; analysis/sensitivity.py)")
  p.add_argument("--vocab-col", default="config.model.vocab_size",
                 help="the codebook size V for L0 = ln V (default config.model.vocab_size, "
                      "a registry's)")
  p.add_argument("--plot-dir", default=None)
  p.add_argument("--json", action="store_true", help="print JSON")
  p.set_defaults(func=run_command, c_col=None)


def lr_sensitivity(table: pd.DataFrame, values: list[np.ndarray], args) -> dict:
  """The sensitivity report (analysis/sensitivity.py) of the runs, or {"skipped_all": why}
  when there is no L0 (no --l0, no vocabulary column) or no group sweeps 2+ lrs."""
  from analysis import sensitivity
  n, d, lr, batch, loss = values
  if args.l0 is not None:
    l0, source = args.l0, f"--l0 {args.l0:g}"
  elif args.vocab_col in table.columns:
    vocab = pd.to_numeric(table[args.vocab_col], errors="coerce").to_numpy(np.float64)
    l0 = sensitivity.uniform_l0(vocab)
    sizes = ", ".join(f"{v:g}" for v in np.unique(vocab))
    source = f"ln V (uniform logits), V = {sizes} ({args.vocab_col})"
  else:
    return {"skipped_all": f"no L0: give --l0 (the loss at initialisation) or a vocabulary "
                           f"column --vocab-col (no {args.vocab_col!r} column) for L0 = ln V"}
  try:
    return sensitivity.analyse(n, d, batch, lr, loss, l0, source)
  except AnalysisError as e:
    if "no (N, D, batch) group" in str(e):
      return {"skipped_all": str(e)}
    raise


def run_command(args) -> dict:
  from analysis.pipeline import data_column
  if bool(args.csv) == bool(args.runs):
    raise AnalysisError("give exactly one of --csv FILE or --runs DIR")
  if args.csv:
    from analysis.pipeline import read_table
    args.drop_top_loss = 0
    table = read_table(args)
  else:
    from analysis.runs import load_runs
    table = load_runs(args.runs)
    if table.empty:
      raise AnalysisError(f"no finished runs (summary.json) under {args.runs}")
    if args.lr_col == "peak_lr" and "peak_lr" not in table.columns:
      table = table.assign(peak_lr=registry_peak_lr(table))
  values = [data_column(table, getattr(args, f"{k}_col"), f"--{k}-col")
            for k in ("n", "d", "lr", "batch", "loss")]
  report, cells, coef, boot = analyse(*values, tolerance=args.tolerance,
                                      replicates=args.bootstrap, seed=args.seed, at=args.at,
                                      fit_on=args.fit_on)
  # What the laws' N, D and batch are (a next sweep's `rule: fitted` reads them: the
  # registry's global_batch_size counts images per step, Step Law's B tokens)
  report["columns"] = {k: getattr(args, f"{k}_col") for k in ("n", "d", "lr", "batch", "loss")}
  report["sensitivity"] = lr_sensitivity(table, values, args)
  if args.plot_dir:
    report["plots"] = plot(report, cells, coef, boot, args.plot_dir)
    if "skipped_all" not in report["sensitivity"]:
      from analysis import sensitivity
      report["plots"].append(sensitivity.plot(report["sensitivity"], args.plot_dir))
  report["text"] = summary_text(report)
  return report
