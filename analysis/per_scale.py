"""VAR's per-scale laws: pure power laws metric = (beta X)^alpha of the final evaluation's
last-scale and all-token loss and token error rate, against N and against compute C, the
form in which Tian et al. (2024, "Visual Autoregressive Modeling", Fig. 5) report them,
e.g. L_last = (2.0 N)^-0.23 and L_avg = (2.5 N)^-0.20 with N in billions.

Metrics (registry columns, analysis/runs.py): loss_last, loss_avg, err_last, err_avg (error
rates as fractions), and the per-scale losses loss_s0, loss_s1, ... X: N in billions of
parameters (the --n-col column / 1e9, VAR's unit), C in FLOPs (the report's compute: the
--c-col column, or 6 N D).

Which runs (the final model of each size, as VAR fits its final models):
  vs N: for each N, the runs at its largest compute (within SAME_COMPUTE); seeds there all
        count. In an IsoFLOP sweep these are the largest budget's runs, whose largest
        models are under-trained: the law then describes the sweep, not a size limit.
  vs C: the compute-efficient frontier (Kaplan et al.'s C_min): the runs whose metric is
        lower than that of every run of less compute, so a law of C is the best loss
        a budget bought, not the spread of sizes at one budget.

Fit: least squares of log y = alpha log beta + alpha log X (a line in log-log space);
95% intervals from the OLS standard errors (Student t, k - 2 degrees of freedom), beta's
by the delta method on log beta = intercept / alpha (wide when alpha is near 0, as for
error rates); r is Pearson's in log space. Fewer than MIN_RUNS runs: a one-line note.
"""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
import pandas as pd

MAIN = ("loss_last", "loss_avg", "err_last", "err_avg")
N_UNIT = 1e9  # N in billions of parameters, as VAR writes its laws
MIN_RUNS = 3
SAME_COMPUTE = 0.05  # runs of one size within 5% of its largest compute are its final runs
ISOFLOP_SPREAD = 1.5  # runs whose compute spans at most this factor: one IsoFLOP budget
LEVEL = 0.95
FORM = "y = (beta X)^alpha"
X_UNITS = {"N": "parameters in billions (--n-col / 1e9)",
           "C": "training FLOPs (--c-col, or 6 N D)"}
SELECTION = {"N": "per model size, the runs at its largest compute (its final model)",
             "C": "the compute-efficient frontier: runs with a lower value than every run "
                  "of less compute"}
# Tian et al. 2024 (Fig. 5), N in billions: metric -> (beta, alpha).
VAR_PUBLISHED_VS_N = {"loss_last": (2.0, -0.23), "loss_avg": (2.5, -0.20)}


def power_law(x, alpha: float, beta: float) -> np.ndarray:
  """(beta x)^alpha, elementwise."""
  return (beta * np.asarray(x, np.float64)) ** alpha


@dataclasses.dataclass(frozen=True)
class PowerFit:
  alpha: float
  beta: float
  alpha_interval_95: tuple[float, float]
  beta_interval_95: tuple[float, float]
  r: float  # Pearson correlation of log X and log y
  num_runs: int

  def predict(self, x) -> np.ndarray:
    return power_law(x, self.alpha, self.beta)


def fit_power_law(x, y) -> PowerFit:
  """The least-squares line through (log x, log y) as (beta x)^alpha, with 95% intervals
  from its standard errors. x, y: positive float64[k], k >= 3, at least two distinct x."""
  from scipy import stats
  lx, ly = np.log(np.asarray(x, np.float64)), np.log(np.asarray(y, np.float64))
  k = len(lx)
  m = lx.mean()
  sxx = float(np.sum((lx - m) ** 2))
  alpha = float(np.sum((lx - m) * (ly - ly.mean())) / sxx)
  intercept = float(ly.mean() - alpha * m)  # = alpha log beta
  resid = ly - (intercept + alpha * lx)
  s2 = float(resid @ resid) / (k - 2)
  var_alpha, var_b0, cov = s2 / sxx, s2 * (1.0 / k + m * m / sxx), -m * s2 / sxx
  t = float(stats.t.ppf(0.5 + LEVEL / 2, k - 2))
  alpha_iv = (alpha - t * math.sqrt(var_alpha), alpha + t * math.sqrt(var_alpha))
  beta, beta_iv = math.nan, (math.nan, math.nan)
  if alpha:  # delta method: d log beta / d (intercept, alpha) = (1 / alpha, -log beta / alpha)
    log_beta = intercept / alpha
    g_b0, g_alpha = 1.0 / alpha, -log_beta / alpha
    se = math.sqrt(max(g_b0 ** 2 * var_b0 + g_alpha ** 2 * var_alpha
                       + 2 * g_b0 * g_alpha * cov, 0.0))
    with np.errstate(over="ignore", under="ignore"):  # inf / 0 become null / 0 in JSON
      beta = float(np.exp(log_beta))
      beta_iv = (float(np.exp(log_beta - t * se)), float(np.exp(log_beta + t * se)))
  r = float(np.corrcoef(lx, ly)[0, 1]) if np.std(ly) > 0 else math.nan
  return PowerFit(alpha, beta, alpha_iv, beta_iv, r, k)


def final_runs(n: np.ndarray, c: np.ndarray) -> np.ndarray:
  """bool[runs]: the runs at their size's largest compute (within SAME_COMPUTE)."""
  top = pd.Series(c).groupby(n).transform("max").to_numpy()
  return c >= (1 - SAME_COMPUTE) * top


def compute_frontier(c: np.ndarray, y: np.ndarray) -> np.ndarray:
  """bool[runs]: runs whose y is lower than that of every run of less compute (ties in C:
  the lowest y)."""
  keep = np.zeros(len(c), bool)
  best = math.inf
  for i in np.lexsort((y, c)):
    if y[i] < best:
      keep[i], best = True, y[i]
  return keep


def scale_index(metric: str) -> int | None:
  m = re.fullmatch(r"loss_s(\d+)", metric)
  return int(m.group(1)) if m else None


def metrics_in(table: pd.DataFrame) -> list[str]:
  """The per-scale metrics some run of `table` reports: MAIN's, then loss_s<k> by k."""
  def reported(name):
    return name in table.columns and pd.to_numeric(table[name], errors="coerce").notna().any()
  scales = sorted((c for c in table.columns if scale_index(str(c)) is not None),
                  key=lambda c: scale_index(str(c)))
  return [m for m in (*MAIN, *scales) if reported(m)]


def fit_metric(metric: str, role: str, x: np.ndarray, y: np.ndarray, names: np.ndarray,
               n: np.ndarray, c: np.ndarray) -> dict:
  """One law: y against X = x (role N or C) over the runs the role selects; a dict with
  the fit, or with `skipped` (one line) when too few runs remain."""
  ok = np.isfinite(x) & (x > 0) & np.isfinite(y) & (y > 0)
  chosen = np.zeros(len(y), bool)
  if ok.any():
    sub = final_runs(n[ok], c[ok]) if role == "N" else compute_frontier(c[ok], y[ok])
    chosen[np.flatnonzero(ok)[sub]] = True
  out = {"metric": metric, "x": role, "num_runs": int(chosen.sum())}
  if chosen.sum() < MIN_RUNS or len(np.unique(x[chosen])) < 2:
    out["skipped"] = (f"{metric} vs {role}: {int(chosen.sum())} run(s) with "
                      f"{len(np.unique(x[chosen]))} distinct {role} selected (needs "
                      f"{MIN_RUNS} runs and 2 values of {role}); not fitted")
    return out
  fit = fit_power_law(x[chosen], y[chosen])
  return {**out, **dataclasses.asdict(fit), "runs": [str(s) for s in names[chosen]],
          "x_range": [float(x[chosen].min()), float(x[chosen].max())],
          "compute_range": [float(c[chosen].min()), float(c[chosen].max())]}


def fit_all(table: pd.DataFrame, n: np.ndarray, c: np.ndarray) -> dict:
  """The `per_scale` block of report.json: every reported metric against N (in billions)
  and against C; {"skipped": sentence} when no run reports any of them."""
  metrics = metrics_in(table)
  if not metrics:
    return {"skipped": "The runs report none of VAR's per-scale metrics (loss_last, "
                       "loss_avg, err_last, err_avg, loss_s<k>: summary.json's loss_tail, "
                       "token_error and loss_per_scale), so no per-scale law is fitted."}
  names = (table["run"].astype(str).to_numpy() if "run" in table.columns
           else np.array([str(i + 1) for i in range(len(table))]))
  fits = []
  for metric in metrics:
    y = pd.to_numeric(table[metric], errors="coerce").to_numpy(np.float64)
    for role, x in (("N", n / N_UNIT), ("C", c)):
      fits.append(fit_metric(metric, role, x, y, names, n, c))
  return {"form": FORM, "x_units": X_UNITS, "selection": SELECTION,
          "intervals": "95%, from the OLS standard errors of the log-log line (Student t, "
                       "runs - 2 degrees of freedom); beta's by the delta method",
          "published": {m: {"x": "N", "beta": b, "alpha": a}
                        for m, (b, a) in VAR_PUBLISHED_VS_N.items()},
          "fits": fits,
          "notes": [f["skipped"] for f in fits if "skipped" in f] + unresolved_notes(fits)}


def resolved(fit: dict) -> bool:
  """Whether alpha's 95% interval excludes 0: the runs resolve a trend in X."""
  lo, hi = fit["alpha_interval_95"]
  return not lo <= 0 <= hi


def unresolved_notes(fits: list[dict]) -> list[str]:
  """One sentence naming the fitted laws whose alpha interval includes 0."""
  flat = [f for f in fits if "alpha" in f and not resolved(f)]
  if not flat:
    return []
  note = (f"alpha's 95% interval includes 0 for "
          f"{', '.join(f['metric'] + ' vs ' + f['x'] for f in flat)}: these runs resolve no "
          "trend there, so those laws are no forecast (beta then runs to extremes such as "
          "1e-44, since beta^alpha must stay near the metric's mean)")
  iso = [f for f in flat if f["x"] == "N" and "compute_range" in f
         and f["compute_range"][1] <= ISOFLOP_SPREAD * f["compute_range"][0]]
  if iso:
    note += (f". The runs vs N had one compute (within {ISOFLOP_SPREAD}x): an IsoFLOP "
             "budget, where a larger model saw fewer tokens and the loss is U-shaped in N, "
             "not a power law; VAR's laws vs N compare sizes trained on the same data")
  return [note]



def points(table: pd.DataFrame, metric: str, role: str, n, c) -> tuple[np.ndarray, np.ndarray]:
  """(X, y) of every run reporting `metric` (X: N in billions or C), for plots."""
  y = pd.to_numeric(table[metric], errors="coerce").to_numpy(np.float64)
  x = n / N_UNIT if role == "N" else c
  ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
  return x[ok], y[ok]


def law_text(fit: dict, num=lambda v: f"{v:.3g}") -> str:
  """'loss_last = (2 N)^-0.23' from a fit dict (N in billions, C in FLOPs)."""
  return f"{fit['metric']} = ({num(fit['beta'])} {fit['x']})^{num(fit['alpha'])}"
