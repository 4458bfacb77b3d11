"""Farseer (2025): a loss surface whose D-exponent, D-coefficient and floor all move with N.

    L(N, D) = exp(a3 N^gamma + b3) + exp(a2 N^beta + b2) D^-exp(a1 N^alpha + b1)

Each of the three N-functions g(N) = a N^p + b is a power law in N plus a constant, taken
through exp so that the floor, the coefficient B(N) and the exponent kappa(N) stay positive.
The published fit (English, loss in bits per character, N non-embedding parameters, D
tokens) is `PUBLISHED`.

The paper fits by differencing along D (`fit_differencing`): at one N, L(N, D_i) -
L(N, D_{i+1}) = B(N) (D_i^-kappa - D_{i+1}^-kappa) has no floor term, so each N's B and
kappa come from its differences alone; then log kappa(N) and log B(N) are fitted as
a N^p + b, then the remainder L - B(N) D^-kappa(N) gives the floor's g. On a sqrt(2)-spaced
D grid the differences are straight lines in log D, as in the paper; any grid with three or
more D per N works here (a 1-D search in kappa per N).

`--law farseer` fits jointly instead: the Huber multi-start fit every law uses, from
starts that include the differencing fit when the design allows it (`starts`). Starting
at the differencing optimum, the joint fit can only lower the objective, and it works on
designs the differencing cannot use (fewer than three D per N, as in an IsoFLOP grid).
docs/analysis.md has the comparison.

The law object is `analysis.laws.FARSEER`; this module holds its formula, starts and
compute-optimal allocation (no closed form: a numerical optimum per budget).
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Mapping

import jax.numpy as jnp
import numpy as np
from scipy import optimize

from analysis.compute_optimal import Allocation
from analysis.validate import AnalysisError

THETA_NAMES = ("a1", "alpha", "b1", "a2", "beta", "b2", "a3", "gamma", "b3")
FORMULA = "L = exp(a3 N^gamma + b3) + exp(a2 N^beta + b2) D^-exp(a1 N^alpha + b1)"
# Farseer's published fit (English BPC): exponent, coefficient, floor.
PUBLISHED = {"a1": -0.124, "alpha": 0.123, "b1": 0.424, "a2": 88.01, "beta": -0.1,
             "b2": -6.287, "a3": -0.021, "gamma": 0.169, "b3": -0.091}


def features(inputs: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
  return (np.log(np.asarray(inputs["N"], np.float64)),
          np.log(np.asarray(inputs["D"], np.float64)))


def log_predict(t, f):
  """log L: the two terms added in log space (logaddexp), as the other laws do."""
  log_n, log_d = f
  g = lambda a, p, b: a * jnp.exp(p * log_n) + b
  floor = g(t[6], t[7], t[8])
  reducible = g(t[3], t[4], t[5]) - jnp.exp(g(t[0], t[1], t[2])) * log_d
  return jnp.logaddexp(floor, reducible)


def log_predict_np(theta, log_n, log_d) -> np.ndarray:
  """log_predict in numpy (the allocation's search evaluates it on large grids)."""
  a1, alpha, b1, a2, beta, b2, a3, gamma, b3 = theta
  with np.errstate(over="ignore"):
    kappa = np.exp(a1 * np.exp(alpha * log_n) + b1)
    return np.logaddexp(a3 * np.exp(gamma * log_n) + b3,
                        a2 * np.exp(beta * log_n) + b2 - kappa * log_d)


def floor_limit(a3: float, gamma: float, b3: float) -> float:
  """E: the loss as N and D grow without bound, exp(lim a3 N^gamma + b3). 0 for the
  published fit (a3 < 0 < gamma): Farseer's floor falls with N and has no positive limit."""
  if gamma > 0:
    return 0.0 if a3 < 0 else (float(np.exp(b3)) if a3 == 0 else float("inf"))
  return float(np.exp(b3 + (a3 if gamma == 0 else 0.0)))


def public(theta) -> dict[str, float]:
  out = {k: float(v) for k, v in zip(THETA_NAMES, np.asarray(theta, np.float64))}
  out["E"] = floor_limit(out["a3"], out["gamma"], out["b3"])
  return out


def published_theta() -> np.ndarray:
  return np.array([PUBLISHED[k] for k in THETA_NAMES], np.float64)


def d_term(params: Mapping[str, float], n, d) -> np.ndarray:
  """B(N) D^-kappa(N), the part of the loss that more tokens remove."""
  t = np.array([params[k] for k in THETA_NAMES[:6]])
  log_n, log_d = np.log(np.asarray(n, np.float64)), np.log(np.asarray(d, np.float64))
  kappa = np.exp(t[0] * np.exp(t[1] * log_n) + t[2])
  return np.exp(t[3] * np.exp(t[4] * log_n) + t[5] - kappa * log_d)


# ---------------------------------------------------------------- differencing fit

def _power_plus_constant_at(log_x: np.ndarray, y: np.ndarray, p: float):
  """((a, b), SSR) of a x^p + b - y by least squares at a fixed p."""
  centre = float(np.mean(log_x))  # x^p = exp(p centre) (x / x_centre)^p: no overflow
  basis = np.stack([np.exp(p * (log_x - centre)), np.ones_like(y)], 1)
  coef, *_ = np.linalg.lstsq(basis, y, rcond=None)
  return (coef[0] * np.exp(-p * centre), coef[1]), float(np.sum((basis @ coef - y) ** 2))


def power_plus_constant(log_x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
  """(a, p, b) minimising sum (a x^p + b - y)^2: linear in (a, b) for each p, so a 1-D
  search over p (a grid, then Brent's method around the best grid point)."""
  log_x, y = np.asarray(log_x, np.float64), np.asarray(y, np.float64)
  if len(np.unique(log_x)) < 3:
    raise AnalysisError("a N^p + b needs three or more distinct N")
  solve = lambda p: _power_plus_constant_at(log_x, y, p)

  grid = np.linspace(-3.0, 3.0, 601)
  grid = grid[np.abs(grid) > 1e-4]  # p = 0 makes a and b one constant
  ssr = np.array([solve(p)[1] for p in grid])
  i = int(np.argmin(ssr))
  lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
  p = float(optimize.minimize_scalar(lambda q: solve(q)[1], bounds=(lo, hi), method="bounded",
                                     options={"xatol": 1e-12}).x)
  (a, b), _ = solve(p)
  return float(a), p, float(b)


def _kappa_and_b(log_d: np.ndarray, loss: np.ndarray) -> tuple[float, float] | None:
  """(kappa, log B) at one N from its consecutive differences along D (sorted), or None
  when fewer than two differences are positive. log dL_i = log B - kappa log D_i +
  log(1 - (D_i / D_{i+1})^kappa): on a constant ratio a line in log D."""
  dl = loss[:-1] - loss[1:]
  ok = dl > 0
  if ok.sum() < 2:
    return None
  lo, step, y = log_d[:-1][ok], (log_d[1:] - log_d[:-1])[ok], np.log(dl[ok])

  def log_b_and_ssr(log_kappa):
    kappa = np.exp(log_kappa)
    r = y + kappa * lo - np.log(-np.expm1(-kappa * step))
    return float(np.mean(r)), float(np.sum((r - np.mean(r)) ** 2))

  grid = np.linspace(np.log(1e-3), np.log(5.0), 400)
  i = int(np.argmin([log_b_and_ssr(g)[1] for g in grid]))
  lk = float(optimize.minimize_scalar(lambda g: log_b_and_ssr(g)[1], method="bounded",
                                      bounds=(grid[max(i - 1, 0)], grid[min(i + 1, 399)]),
                                      options={"xatol": 1e-12}).x)
  return float(np.exp(lk)), log_b_and_ssr(lk)[0]


@dataclasses.dataclass
class Differencing:
  theta: np.ndarray  # float64[9], THETA_NAMES order
  n: np.ndarray  # the N whose differences were usable
  kappa: np.ndarray  # per N: the D-exponent from that N's differences
  log_b: np.ndarray  # per N: log B
  remainder: tuple[np.ndarray, np.ndarray]  # (N, L - B(N) D^-kappa(N)) where positive


def fit_differencing(n, d, loss) -> Differencing:
  """Farseer's staged fit: per N (>= 3 distinct D), kappa and B from differences along D;
  then log kappa(N) = a1 N^alpha + b1 and log B(N) = a2 N^beta + b2; then the remainder
  log(L - B(N) D^-kappa(N)) = a3 N^gamma + b3. Repeated (N, D) points are averaged."""
  n, d, loss = (np.asarray(v, np.float64) for v in (n, d, loss))
  used, kappas, log_bs = [], [], []
  for value in np.unique(n):
    at = n == value
    ds, inverse = np.unique(d[at], return_inverse=True)
    if len(ds) < 3:
      continue
    mean_loss = np.bincount(inverse, weights=loss[at]) / np.bincount(inverse)
    found = _kappa_and_b(np.log(ds), mean_loss)
    if found is not None:
      used.append(value)
      kappas.append(found[0])
      log_bs.append(found[1])
  if len(used) < 3:
    raise AnalysisError(f"the differencing fit needs three or more N with three or more D "
                        f"each (losses falling with D); these runs have {len(used)}")
  log_n = np.log(used)
  a1, alpha, b1 = power_plus_constant(log_n, np.log(kappas))
  a2, beta, b2 = power_plus_constant(log_n, np.array(log_bs))
  partial = np.array([a1, alpha, b1, a2, beta, b2])
  remainder = loss - d_term(dict(zip(THETA_NAMES, partial)), n, d)
  ok = remainder > 0
  if len(np.unique(n[ok])) < 3:
    raise AnalysisError("the differencing fit left no positive remainder (floor) at three "
                        "or more N")
  a3, gamma, b3 = power_plus_constant(np.log(n[ok]), np.log(remainder[ok]))
  theta = np.concatenate([partial, [a3, gamma, b3]])
  return Differencing(theta, np.array(used), np.array(kappas), np.array(log_bs),
                      (n[ok], remainder[ok]))


# Exponent shifts around the differencing fit's: a N^p + b with a small p is nearly a line
# in log N, so (a, p) trade off along a ridge and the joint fit needs starts along it.
EXPONENT_SHIFTS = (-0.3, -0.1, 0.0, 0.1, 0.3)


def ridge_starts(diff: Differencing) -> np.ndarray:
  """float64[125, 9]: the differencing fit with each exponent shifted by EXPONENT_SHIFTS,
  its a and b refitted by least squares at the shifted exponent (stage 2 and 3 data)."""
  stages = [(np.log(diff.n), np.log(diff.kappa)), (np.log(diff.n), diff.log_b),
            (np.log(diff.remainder[0]), np.log(diff.remainder[1]))]
  options = []
  for j, (log_x, y) in enumerate(stages):
    best = diff.theta[3 * j + 1]
    row = []
    for shift in EXPONENT_SHIFTS:
      p = best + shift if abs(best + shift) > 1e-4 else best + shift + 1e-3
      (a, b), _ = _power_plus_constant_at(log_x, y, p)
      row.append((a, p, b))
    options.append(row)
  return np.array([sum(combo, ()) for combo in itertools.product(*options)], np.float64)


# ---------------------------------------------------------------- starts for the joint fit

def grid_starts(n, d, loss) -> np.ndarray:
  """float64[S, 9]: starts scaled to the data, for designs the differencing cannot use.
  Each g(N) = a N^p + b starts nearly flat (a N^p = +-0.1 at the middle N) at exponents
  p in {-0.5, 0.3}; the flat surface E0 + B0 D^-kappa0 takes kappa0 in {0.15, 0.5} and a
  floor E0 of 50% or 90% of the lowest loss, B0 from the mean of (L - E0) D^kappa0."""
  log_n, log_d = np.log(np.asarray(n, np.float64)), np.log(np.asarray(d, np.float64))
  loss = np.asarray(loss, np.float64)
  centre = float(np.mean(log_n))
  rows = []
  for kappa0, share in itertools.product((0.15, 0.5), (0.5, 0.9)):
    e0 = share * float(loss.min())
    log_b0 = float(np.log(np.mean((loss - e0) * np.exp(kappa0 * log_d))))
    flat = (np.log(kappa0), log_b0, np.log(e0))
    for p, s in itertools.product(itertools.product((-0.5, 0.3), repeat=3),
                                  itertools.product((-0.1, 0.1), repeat=3)):
      row = []
      for j in range(3):
        row += [s[j] * np.exp(-p[j] * centre), p[j], flat[j] - s[j]]
      rows.append(row)
  return np.array(rows, np.float64)


def starts(inputs: Mapping[str, np.ndarray], y: np.ndarray) -> np.ndarray:
  """The joint fit's starts: the differencing fit and its `ridge_starts` (when the design
  allows it) first, then `grid_starts`."""
  n, d = inputs["N"], inputs["D"]
  out = [grid_starts(n, d, y)]
  try:
    diff = fit_differencing(n, d, y)
    out.insert(0, ridge_starts(diff))
    out.insert(0, diff.theta[None])
  except AnalysisError:
    pass
  return np.concatenate(out)


# ---------------------------------------------------------------- compute-optimal allocation

def optimal_n(theta, flops, flops_per_param_token: float = 6.0) -> np.ndarray:
  """float64[len(flops)]: for each C the N of the first local minimum of L(N, C / (k N)),
  coming from small N (a grid over log N in [0, log(C/k)], then golden section inside its
  cell); NaN where there is none. The first, not the lowest: far beyond its data the law can
  fall again toward N = C/k (kappa(N) -> 0 leaves no D-dependence, and the floor -> 0), as
  the published fit does past N ~ 3e10."""
  log_c = np.log(np.atleast_1d(np.asarray(flops, np.float64)) / flops_per_param_token)
  u = np.linspace(0.01, 0.99, 800)  # log N as a fraction of log(C/k): N and D both >= 1
  log_n = log_c[:, None] * u[None, :]
  loss = log_predict_np(theta, log_n, log_c[:, None] - log_n)
  loss = np.where(np.isfinite(loss), loss, np.inf)
  is_min = (loss[:, 1:-1] <= loss[:, :-2]) & (loss[:, 1:-1] <= loss[:, 2:])
  found = is_min.any(axis=1)
  i = np.argmax(is_min, axis=1) + 1
  lo, hi = log_c * u[i - 1], log_c * u[i + 1]
  golden = (np.sqrt(5.0) - 1) / 2
  for _ in range(60):
    x1, x2 = hi - golden * (hi - lo), lo + golden * (hi - lo)
    left = log_predict_np(theta, x1, log_c - x1) <= log_predict_np(theta, x2, log_c - x2)
    hi, lo = np.where(left, x2, hi), np.where(left, lo, x1)
  return np.where(found, np.exp((lo + hi) / 2), np.nan)


@dataclasses.dataclass(frozen=True)
class FarseerAllocation(Allocation):
  """N_opt(C) and D_opt(C) of a Farseer fit, computed per budget; a, b and G are the power
  law through those optima over `flops_range` (Farseer's optimum is not a power law in C,
  so the exponent is local to that range)."""
  theta: tuple = ()
  flops_range: tuple = ()

  def n_opt(self, flops):
    flops = np.asarray(flops, np.float64)
    return optimal_n(self.theta, flops.ravel(), self.flops_per_param_token).reshape(flops.shape)

  def d_opt(self, flops):
    return np.asarray(flops, np.float64) / (self.flops_per_param_token * self.n_opt(flops))

  def to_dict(self) -> dict:
    return {**super().to_dict(), "local_to_flops": list(self.flops_range)}


# Without a compute range, the local exponent is taken over these budgets.
DEFAULT_FLOPS_RANGE = (1e18, 1e24)


def allocation(params: Mapping[str, float], flops_per_param_token: float = 6.0,
               flops_range=None) -> FarseerAllocation:
  theta = tuple(float(params[k]) for k in THETA_NAMES)
  lo, hi = (float(v) for v in (flops_range or DEFAULT_FLOPS_RANGE))
  grid = np.geomspace(lo, hi if hi > lo else lo * 10, 16)
  n = optimal_n(theta, grid, flops_per_param_token)
  if not np.all(np.isfinite(n)):
    raise AnalysisError("farseer: no interior compute-optimal N over "
                        f"{lo:.3g}-{hi:.3g} FLOPs (the loss keeps falling with N)")
  slope, intercept = np.polyfit(np.log(grid / flops_per_param_token), np.log(n), 1)
  return FarseerAllocation(a=float(slope), b=float(1 - slope), G=float(np.exp(intercept)),
                           flops_per_param_token=flops_per_param_token, theta=theta,
                           flops_range=(lo, hi))
