"""Compute-optimal allocation: Chinchilla Approaches 1, 2 and 3.

With C = k N D (k = 6 in the 6ND convention; pass the measured FLOPs per parameter-token
for the exact convention):
  Approach 3 (closed form from L = E + A/N^alpha + B/D^beta):
    N_opt = G (C/k)^a,  D_opt = (C/k)^b / G,  G = (alpha A / (beta B))^(1/(alpha+beta)),
    a = beta / (alpha + beta),  b = alpha / (alpha + beta).
  Approach 2: per compute budget, a parabola in log N through the IsoFLOP losses; its
    minimum is N_opt(C); then log N_opt = log G' + a log C by least squares.
  Approach 1: the lower envelope of loss over compute across runs; the run on the
    envelope at each compute gives N_opt(C); then the same power-law fit.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from analysis.validate import AnalysisError


@dataclasses.dataclass(frozen=True)
class Allocation:
  a: float  # N_opt ~ C^a
  b: float  # D_opt ~ C^b
  G: float
  flops_per_param_token: float = 6.0

  def n_opt(self, flops):
    return self.G * (np.asarray(flops, np.float64) / self.flops_per_param_token) ** self.a

  def d_opt(self, flops):
    return (np.asarray(flops, np.float64) / self.flops_per_param_token) ** self.b / self.G

  def tokens_per_param(self, flops):
    return self.d_opt(flops) / self.n_opt(flops)

  def to_dict(self) -> dict:
    return {"a": self.a, "b": self.b, "G": self.G,
            "flops_per_param_token": self.flops_per_param_token}


def chinchilla_allocation(params: dict, flops_per_param_token: float = 6.0) -> Allocation:
  """Approach 3: the closed-form optimum of a fitted Chinchilla law."""
  A, B, alpha, beta = params["A"], params["B"], params["alpha"], params["beta"]
  if alpha <= 0 or beta <= 0:
    raise AnalysisError(f"no compute-optimal allocation: exponents must be positive "
                        f"(alpha={alpha:.3g}, beta={beta:.3g})")
  G = (alpha * A / (beta * B)) ** (1.0 / (alpha + beta))
  return Allocation(a=beta / (alpha + beta), b=alpha / (alpha + beta), G=G,
                    flops_per_param_token=flops_per_param_token)


def trained_flops(inputs) -> tuple[float, float]:
  """(min, max) of 6ND over the runs a law was fitted to."""
  c = 6 * np.asarray(inputs["N"], np.float64) * np.asarray(inputs["D"], np.float64)
  return float(c.min()), float(c.max())


def allocation_for(law_name: str, params: dict, flops_per_param_token: float = 6.0,
                   flops_range=None) -> Allocation:
  """Approach 3 for a fitted L(N, D) law: Chinchilla directly; the over-training form
  through its Chinchilla equivalent (alpha = beta = 2 eta, A = a 6^-eta, B = b 6^-eta);
  Farseer numerically per budget, its a, b, G local to `flops_range` (farseer.allocation)."""
  if law_name == "farseer":
    from analysis import farseer  # farseer imports this module
    return farseer.allocation(params, flops_per_param_token, flops_range)
  if law_name == "overtrain":
    eta = params["eta"]
    params = {"A": params["a"] * 6 ** -eta, "B": params["b"] * 6 ** -eta,
              "alpha": 2 * eta, "beta": 2 * eta}
  return chinchilla_allocation(params, flops_per_param_token)


def _power_fit(flops: np.ndarray, n_opt: np.ndarray, k: float) -> Allocation:
  if len(flops) < 2:
    raise AnalysisError("need compute-optimal points at two or more budgets")
  slope, intercept = np.polyfit(np.log(flops / k), np.log(n_opt), 1)
  # N_opt = G (C/k)^a and D_opt = C / (k N_opt) = (C/k)^(1-a) / G.
  return Allocation(a=float(slope), b=float(1 - slope), G=float(np.exp(intercept)),
                    flops_per_param_token=k)


def budget_groups(flops, rel_tol: float = 0.1, budget=None) -> list[np.ndarray]:
  """Indices of runs that share a FLOP budget: an explicit `budget` column if given (equal
  values: a sweep's IsoFLOP budget), else runs whose FLOPs agree within `rel_tol` in log
  space (|log C - log C0| <= log(1 + rel_tol), C0 the smallest C of the group); groups in
  increasing order of C."""
  flops = np.asarray(flops, np.float64)
  if budget is not None:
    budget = np.asarray(budget)
    keys = list(dict.fromkeys(budget.tolist()))
    groups = [np.flatnonzero(budget == k) for k in keys]
    return sorted(groups, key=lambda g: float(np.mean(np.log(flops[g]))))
  log_c = np.log(flops)
  groups: list[list[int]] = []
  for i in np.argsort(log_c, kind="stable"):
    if groups and log_c[i] - log_c[groups[-1][0]] <= np.log1p(rel_tol):
      groups[-1].append(int(i))
    else:
      groups.append([int(i)])
  return [np.array(g) for g in groups]


@dataclasses.dataclass(frozen=True)
class IsoFlopMinima:
  flops: np.ndarray  # one per budget
  n_opt: np.ndarray
  loss_opt: np.ndarray
  parabolas: list  # np.poly1d in log N, one per budget
  allocation: Allocation
  groups: list  # int arrays: the runs of each budget


def approach2(n: np.ndarray, flops: np.ndarray, loss: np.ndarray, *, budget=None,
              flops_per_param_token: float = 6.0, rel_tol: float = 0.05) -> IsoFlopMinima:
  """IsoFLOP parabolas. Runs of one `budget` value (a sweep's IsoFLOP budget) form one
  budget; without it, runs whose FLOPs agree within `rel_tol`."""
  n, flops, loss = (np.asarray(v, np.float64) for v in (n, flops, loss))
  budgets, n_opts, l_opts, parabolas, kept = [], [], [], [], []
  for g in budget_groups(flops, rel_tol, budget):
    if len(np.unique(n[g])) < 3:
      continue  # a parabola needs three model sizes
    x = np.log(n[g])
    p = np.poly1d(np.polyfit(x, loss[g], 2))
    if p.coeffs[0] <= 0:
      continue  # no interior minimum: the budget did not bracket the optimum
    x_min = -p.coeffs[1] / (2 * p.coeffs[0])
    budgets.append(float(np.exp(np.mean(np.log(flops[g])))))
    n_opts.append(float(np.exp(x_min)))
    l_opts.append(float(p(x_min)))
    parabolas.append(p)
    kept.append(g)
  if len(budgets) < 2:
    raise AnalysisError("Approach 2 needs at least two FLOP budgets with three or more model "
                        "sizes each and a loss minimum between them")
  budgets, n_opts = np.array(budgets), np.array(n_opts)
  return IsoFlopMinima(budgets, n_opts, np.array(l_opts), parabolas,
                       _power_fit(budgets, n_opts, flops_per_param_token), kept)


def approach2_exponents(n, flops, loss, num_replicates: int, *, budget=None, seed: int = 0,
                        rel_tol: float = 0.05) -> np.ndarray:
  """Bootstrap of Approach 2's allocation exponent a: runs resampled with replacement
  within each budget, parabolas and the power law refitted (numpy, milliseconds).
  Replicates without two usable budgets are dropped. float64[<= num_replicates]."""
  n, flops, loss = (np.asarray(v, np.float64) for v in (n, flops, loss))
  groups = budget_groups(flops, rel_tol, budget)
  keys = np.zeros(len(n), np.int64)
  for k, g in enumerate(groups):
    keys[g] = k
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(num_replicates):
    idx = np.concatenate([rng.choice(g, len(g)) for g in groups])
    try:
      out.append(approach2(n[idx], flops[idx], loss[idx], budget=keys[idx]).allocation.a)
    except AnalysisError:
      pass
  return np.array(out, np.float64)


def approach1(run: np.ndarray, n: np.ndarray, flops: np.ndarray, loss: np.ndarray, *,
              num_bins: int = 20, flops_per_param_token: float = 6.0) -> Allocation:
  """Lower envelope of training curves: `run` labels points (step logs) of each run."""
  run, n, flops, loss = (np.asarray(v) for v in (run, n, flops, loss))
  if len(np.unique(run)) < 2:
    raise AnalysisError("Approach 1 needs training curves of at least two runs")
  edges = np.geomspace(flops.min(), flops.max(), num_bins + 1)
  budgets, n_opts = [], []
  for lo, hi in zip(edges[:-1], edges[1:]):
    sel = (flops >= lo) & (flops <= hi)
    if sel.sum() == 0:
      continue
    best = np.argmin(np.where(sel, loss, np.inf))
    budgets.append(flops[best])
    n_opts.append(n[best])
  return _power_fit(np.array(budgets, np.float64), np.array(n_opts, np.float64),
                    flops_per_param_token)


# Dense bf16 peak FLOP/s per chip (vendor figures, no sparsity).
PEAK_FLOPS = {
    "tpu-v4": 275e12,
    "tpu-v5e": 197e12,
    "tpu-v5p": 459e12,
    "tpu-v6e": 918e12,
    "h100": 989e12,
    "h200": 989e12,
}


def wall_time_hours(flops: float, accelerator: str, mfu: float, chips: int = 1) -> float:
  if accelerator not in PEAK_FLOPS:
    raise AnalysisError(f"unknown accelerator {accelerator!r}; known: {', '.join(PEAK_FLOPS)}")
  if not 0 < mfu <= 1:
    raise AnalysisError(f"--mfu must be in (0, 1], got {mfu}")
  if chips < 1:
    raise AnalysisError("--chips must be >= 1")
  return flops / (PEAK_FLOPS[accelerator] * mfu * chips) / 3600.0
