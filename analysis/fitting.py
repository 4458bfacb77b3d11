"""Robust multi-start fits of a law: Huber loss on log residuals, summed, batched L-BFGS.

The objective is sum_i w_i huber_delta(log f(x_i; theta) - log y_i) with delta = 1e-3,
summed and not averaged (averaging shrinks the gradient 240-fold on the Chinchilla data
and a tolerance-based stop then ends far from the optimum: docs/analysis.md, Design notes).

All starts of the grid run at once (`optimize.minimize_batched`). To keep the 4500-start
Chinchilla grid within seconds, every start first gets `screen_iter` L-BFGS iterations;
the `keep` best are then run to convergence. A slow test checks that the screened fit
equals the fit that runs every one of the 4500 starts to convergence (which takes 2 min).

On a terminal, each batched minimisation shows a progress bar on stderr (iterations, and
how many starts are still active); elsewhere (logs, CI, notebooks) it stays silent.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from analysis.laws import Law
from analysis.optimize import minimize_batched
from analysis.validate import AnalysisError, check_fit_data

HUBER_DELTA = 1e-3


def huber(r, delta):
  a = jnp.abs(r)
  return jnp.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


@dataclasses.dataclass
class Fit:
  law: Law
  theta: np.ndarray  # float64[P], internal parameters
  objective: float
  inputs: dict[str, np.ndarray]  # the data the law was fitted on, by role
  y: np.ndarray
  converged: bool
  num_starts: int
  top_thetas: np.ndarray  # float64[k, P]: best distinct local optima, to seed refits
  delta: float = HUBER_DELTA

  @property
  def params(self) -> dict[str, float]:
    return self.law.public(self.theta)

  def predict(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
    return self.law.predict(self.theta, inputs)

  @property
  def log_residuals(self) -> np.ndarray:
    """log y - log prediction, per fitted point."""
    return np.log(self.y) - np.log(self.predict(self.inputs))


def _objective(law: Law, feats, log_y, delta):
  def fun(theta, weights):
    r = law.log_predict(theta, feats) - log_y
    return jnp.sum(weights * huber(r, delta))
  return fun


# The bar that the compiled minimiser's host callback advances: the callback is compiled
# into a cached program, so it cannot close over a bar of its own. It is compiled in
# whether or not a bar shows, because its presence changes XLA's fusion and so the last
# bits of the result: a fit in a terminal equals the same fit in a log.
_bars: list = []


def _advance_bar(iteration, active) -> None:
  if _bars and not _bars[-1].disable:
    bar = _bars[-1]
    bar.set_postfix(active=int(active), refresh=False)
    bar.update(int(iteration) - bar.n)


@functools.lru_cache(maxsize=64)
def _compiled(law: Law, n: int, delta: float, max_iter: int):
  """One jitted minimiser per (law, data size, budget); data are arguments, not constants."""
  def run(feats, log_y, x0, weights):
    return minimize_batched(_objective(law, feats, log_y, delta), x0, (weights,),
                            max_iter=max_iter, on_iteration=_advance_bar)
  return jax.jit(run)


def minimize_law(law: Law, feats, log_y: np.ndarray, x0_SxP: np.ndarray,
                 weights_SxN: np.ndarray, *, delta: float, max_iter: int, desc: str = ""):
  from tqdm import tqdm
  # disable=None: a bar only when stderr is a terminal.
  bar = tqdm(total=max_iter, desc=desc or law.name, unit="it", file=sys.stderr, disable=None,
             leave=False, dynamic_ncols=True)
  _bars.append(bar)
  try:
    with jax.enable_x64(True):
      run = _compiled(law, len(log_y), float(delta), int(max_iter))
      out = run(tuple(jnp.asarray(f) for f in feats), jnp.asarray(log_y),
                jnp.asarray(x0_SxP, jnp.float64), jnp.asarray(weights_SxN, jnp.float64))
      out = jax.tree.map(np.asarray, out)
    bar.refresh()
    return out
  finally:
    _bars.pop()
    bar.close()


def _distinct_best(x_SxP: np.ndarray, f_S: np.ndarray, k: int) -> np.ndarray:
  order = np.argsort(np.where(np.isfinite(f_S), f_S, np.inf))
  picked: list[np.ndarray] = []
  for i in order:
    if not np.isfinite(f_S[i]):
      break
    if all(np.max(np.abs(x_SxP[i] - p)) > 1e-3 for p in picked):
      picked.append(x_SxP[i])
    if len(picked) == k:
      break
  return np.array(picked)


def fit_law(law: Law, inputs: Mapping[str, np.ndarray], y: np.ndarray, *,
            delta: float = HUBER_DELTA, starts: np.ndarray | None = None,
            screen_iter: int = 60, keep: int = 256, max_iter: int = 3000,
            weights: np.ndarray | None = None) -> Fit:
  """Fits `law` to y (positive) at `inputs` from every start (default: the law's
  data-dependent starts, if it has them, then its grid). `weights` (float64[n], default 1)
  multiply each point's Huber term: zero-weight copies pad data to a size whose program is
  already compiled (analysis/extrapolate.py)."""
  inputs = {k: np.asarray(inputs[k], np.float64) for k in law.inputs}
  y = np.asarray(y, np.float64)
  check_fit_data(law, inputs, y)
  feats = law.features(inputs)
  log_y = np.log(y)
  x0 = law.start_grid() if starts is None else np.atleast_2d(np.asarray(starts, np.float64))
  if starts is None and law.data_starts is not None:
    x0 = np.concatenate([law.data_starts(inputs, y), x0])
  n = len(y)
  w = np.ones(n) if weights is None else np.asarray(weights, np.float64)
  if len(x0) > keep:
    screened = minimize_law(law, feats, log_y, x0, np.tile(w, (len(x0), 1)), delta=delta,
                            max_iter=screen_iter, desc=f"{law.name}: screen {len(x0)} starts")
    x_keep = screened.x_SxP[np.argsort(np.where(np.isfinite(screened.f_S),
                                                screened.f_S, np.inf))[:keep]]
  else:
    x_keep = x0
  final = minimize_law(law, feats, log_y, x_keep, np.tile(w, (len(x_keep), 1)), delta=delta,
                       max_iter=max_iter, desc=f"{law.name}: fit {len(x_keep)} starts")
  f = np.where(np.isfinite(final.f_S), final.f_S, np.inf)
  best = int(np.argmin(f))
  if not np.isfinite(f[best]):
    raise AnalysisError(f"{law.name}: no start reached a finite objective; check the data")
  return Fit(law=law, theta=final.x_SxP[best], objective=float(f[best]), inputs=inputs, y=y,
             converged=bool(final.converged_S[best]), num_starts=len(x0),
             top_thetas=_distinct_best(final.x_SxP, f, 8), delta=delta)
