"""Uncertainty of a fit: bootstrap over runs, residual resampling, backtests, coverage.

- Parameter intervals: pairs bootstrap (resample runs with replacement, refit). Each
  replicate is a weighted refit (weight = how often a run was drawn), so all replicates
  and their starts run in one batch. Replicates start from the original fit's best
  distinct optima, not the 4500-start grid: a resample moves the optimum a little, and the
  test suite checks that the full grid gives the same replicate optima.
- Prediction intervals: parameter spread alone under-covers new runs (docs/analysis.md), so each
  bootstrap prediction also gets a log residual of the original fit drawn at random.
- Backtest: refit without the largest runs and predict them (leave-largest-out), reporting
  |predicted - actual| / actual and whether each held-out run fell inside its interval.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import numpy as np

from analysis.compute_optimal import Allocation, allocation_for, trained_flops
from analysis.fitting import Fit, fit_law, minimize_law
from analysis.validate import AnalysisError


@dataclasses.dataclass
class Bootstrap:
  fit: Fit
  thetas_KxP: np.ndarray
  seed: int

  def param_samples(self) -> dict[str, np.ndarray]:
    rows = [self.fit.law.public(t) for t in self.thetas_KxP]
    return {k: np.array([r[k] for r in rows]) for k in rows[0]}

  def intervals(self, level: float = 0.95) -> dict[str, tuple[float, float]]:
    lo, hi = 50 * (1 - level), 50 * (1 + level)
    return {k: (float(np.percentile(v, lo)), float(np.percentile(v, hi)))
            for k, v in self.param_samples().items()}

  def allocations(self) -> list[tuple[np.ndarray, Allocation]]:
    """(theta, compute-optimal allocation) of every replicate that has one."""
    out = []
    for theta in self.thetas_KxP:
      try:
        out.append((theta, allocation_for(self.fit.law.name, self.fit.law.public(theta),
                                          flops_range=trained_flops(self.fit.inputs))))
      except AnalysisError:  # a replicate with a non-positive exponent has no optimum
        pass
    return out

  def predict_samples(self, inputs: Mapping[str, np.ndarray], with_residuals: bool = True
                      ) -> np.ndarray:
    """float64[K, n]: predictions of every replicate (+ a resampled residual each)."""
    law = self.fit.law
    log_pred = np.log(np.stack([law.predict(t, inputs) for t in self.thetas_KxP]))
    if with_residuals:
      rng = np.random.default_rng([self.seed, 1])
      res = self.fit.log_residuals
      log_pred = log_pred + rng.choice(res, size=log_pred.shape, replace=True)
    return np.exp(log_pred)

  def predict_interval(self, inputs: Mapping[str, np.ndarray], level: float = 0.95,
                       with_residuals: bool = True) -> tuple[np.ndarray, np.ndarray]:
    samples = self.predict_samples(inputs, with_residuals)
    return (np.percentile(samples, 50 * (1 - level), axis=0),
            np.percentile(samples, 50 * (1 + level), axis=0))


def bootstrap(fit: Fit, num_replicates: int = 200, seed: int = 0,
              max_iter: int = 3000) -> Bootstrap:
  """Pairs bootstrap of `fit`: all replicates x starts refitted in one batched run."""
  if num_replicates < 2:
    raise AnalysisError("--bootstrap needs at least 2 replicates")
  n = len(fit.y)
  rng = np.random.default_rng(seed)
  counts_KxN = rng.multinomial(n, np.full(n, 1.0 / n), size=num_replicates).astype(np.float64)
  starts = fit.top_thetas
  k = len(starts)
  x0 = np.tile(starts, (num_replicates, 1))
  weights = np.repeat(counts_KxN, k, axis=0)
  law = fit.law
  out = minimize_law(law, law.features(fit.inputs), np.log(fit.y), x0, weights,
                     delta=fit.delta, max_iter=max_iter,
                     desc=f"{law.name}: bootstrap {num_replicates} x {k} starts")
  f = np.where(np.isfinite(out.f_S), out.f_S, np.inf).reshape(num_replicates, k)
  best = np.argmin(f, axis=1)
  thetas = out.x_SxP.reshape(num_replicates, k, -1)[np.arange(num_replicates), best]
  return Bootstrap(fit=fit, thetas_KxP=thetas, seed=seed)


@dataclasses.dataclass
class Backtest:
  holdout_by: str
  num_held_out: int
  relative_errors: np.ndarray  # |pred - actual| / actual per held-out run
  inside_interval: np.ndarray  # bool per held-out run (95% prediction interval)
  actual: np.ndarray
  predicted: np.ndarray
  interval_95: np.ndarray  # float64[2, held-out runs]
  fit: Fit  # the refit without the held-out runs

  @property
  def mean_relative_error(self) -> float:
    return float(np.mean(self.relative_errors))

  @property
  def max_relative_error(self) -> float:
    return float(np.max(self.relative_errors))

  @property
  def coverage(self) -> float:
    return float(np.mean(self.inside_interval))

  def to_dict(self) -> dict:
    return {"holdout_by": self.holdout_by, "num_held_out": self.num_held_out,
            "mean_relative_error": self.mean_relative_error,
            "max_relative_error": self.max_relative_error,
            "interval_coverage": self.coverage}


def largest_mask(values: np.ndarray, fraction: float = 0.1) -> np.ndarray:
  """The runs at the largest distinct values of `values` covering >= `fraction` of runs."""
  values = np.asarray(values)
  mask = np.zeros(len(values), bool)
  for v in np.unique(values)[::-1]:
    mask |= values == v
    if mask.mean() >= fraction:
      break
  return mask


def leave_largest_out(law, inputs: Mapping[str, np.ndarray], y: np.ndarray, *,
                      by: str | None = None, fraction: float = 0.1,
                      num_replicates: int = 100, seed: int = 0, **fit_kwargs) -> Backtest:
  """Refits without the largest runs (by input `by`, default the first input) and
  predicts them."""
  by = by or law.inputs[0]
  held = largest_mask(np.asarray(inputs[by]), fraction)
  if held.all() or (~held).sum() <= law.num_params:
    raise AnalysisError(f"too few runs to hold out the largest {by} and still fit {law.name}")
  train = {k: np.asarray(v)[~held] for k, v in inputs.items()}
  test = {k: np.asarray(v)[held] for k, v in inputs.items()}
  fit = fit_law(law, train, np.asarray(y)[~held], **fit_kwargs)
  actual = np.asarray(y)[held]
  pred = fit.predict(test)
  boot = bootstrap(fit, num_replicates, seed)
  lo, hi = boot.predict_interval(test)
  return Backtest(holdout_by=by, num_held_out=int(held.sum()),
                  relative_errors=np.abs(pred - actual) / actual,
                  inside_interval=(actual >= lo) & (actual <= hi), actual=actual,
                  predicted=pred, interval_95=np.stack([lo, hi]), fit=fit)
