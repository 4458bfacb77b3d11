"""Validity checks: is a scaling-law fit one a researcher can trust?

Pure functions of numbers (numpy only; no fitting here). Each check returns a record
  {"check": name, "status": "pass" | "warn" | "skip", "value": number, "detail": sentence}
with the sentence made from the numbers, so a report can print it as is:
  (a) bracketing  per FLOP budget with >= 3 model sizes, is the loss minimum interior?
  (b) support     how far N_opt(C), D_opt(C) lie outside the trained N and D ranges
  (c) floor       is the irreducible loss E identified (not ~0, interval not wider than E/2)?
  (d) agreement   do Approach 2 (IsoFLOP minima) and 3 (the law) give the same exponent a?
  (e) backtest    median |pred - actual| / actual on the held-out largest runs, and coverage
  (f) repetition  epochs per run, D / unique tokens per epoch
  (g) fd signal   does the sample-quality distance track the loss across the measured runs?
Each record also carries its letter as "number". `plan_verdict` states in one sentence
whether a planned (N, D) is supported by the runs.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from analysis.compute_optimal import budget_groups, chinchilla_allocation

PASS, WARN, SKIP = "pass", "warn", "skip"
# Issue 16's numbering of the checks.
NUMBERS = {"bracketing": "a", "support": "b", "floor": "c", "agreement": "d",
           "backtest": "e", "repetition": "f", "fd signal": "g"}
# A planned or frontier N or D within this factor of the trained range is supported.
MAX_FACTOR = 3.0
# A planned budget beyond this factor of the largest trained run's compute is an
# extrapolation: docs/study.md measured 1.2-3.2% misses on held-out runs at 1.85-2.04x,
# against 0.47% for the backtest inside the fitted range.
MAX_COMPUTE_FACTOR = 1.5


def _record(check: str, status: str, value, detail: str) -> dict:
  value = None if value is None else float(value)
  return {"check": check, "number": NUMBERS[check], "status": status, "value": value,
          "detail": detail}


def _g(x: float) -> str:
  return f"{x:.3g}"


def check_bracketing(n, flops, loss, *, budget=None, rel_tol: float = 0.1) -> dict:
  """For each FLOP budget with three or more model sizes: is the lowest loss (mean over
  seeds at a size) at a size strictly between the smallest and the largest? value = the
  number of budgets that bracket; pass when every such budget does."""
  n, flops, loss = (np.asarray(v, np.float64) for v in (n, flops, loss))
  eligible, bracketed, edges = 0, 0, []
  for g in budget_groups(flops, rel_tol, budget):
    sizes = np.unique(n[g])
    if len(sizes) < 3:
      continue
    eligible += 1
    mean_loss = np.array([loss[g][n[g] == s].mean() for s in sizes])
    k = int(np.argmin(mean_loss))
    if 0 < k < len(sizes) - 1:
      bracketed += 1
    else:
      c = float(np.exp(np.mean(np.log(flops[g]))))
      edges.append(f"{_g(c)} FLOPs ({'smallest' if k == 0 else 'largest'} N)")
  if eligible == 0:
    return _record("bracketing", WARN, 0,
                   f"no FLOP budget has three or more model sizes (of {len(n)} runs), so no "
                   f"loss minimum over N is located")
  if bracketed == eligible:
    return _record("bracketing", PASS, bracketed,
                   f"the loss minimum is interior in all {eligible} FLOP budgets with three "
                   f"or more sizes")
  return _record("bracketing", WARN, bracketed,
                 f"the loss minimum is interior in {bracketed} of {eligible} FLOP budgets "
                 f"with three or more sizes; at the edge in " + ", ".join(edges))


def outside_factor(values, trained) -> np.ndarray:
  """Per value, the factor by which it lies outside [min(trained), max(trained)]: 1.0
  inside, lo / v below, v / hi beyond. float64, the shape of `values`."""
  values = np.asarray(values, np.float64)
  lo, hi = float(np.min(trained)), float(np.max(trained))
  return np.maximum(1.0, np.maximum(lo / values, values / hi))


def extrapolation(values, trained) -> tuple[float, str]:
  """The largest factor by which `values` lie outside [min(trained), max(trained)] (1.0
  inside) and the side ('below' or 'beyond')."""
  values = np.atleast_1d(np.asarray(values, np.float64))
  lo, hi = float(np.min(trained)), float(np.max(trained))
  below, above = float(np.max(lo / values)), float(np.max(values / hi))
  if max(below, above) <= 1.0:
    return 1.0, "inside"
  return (below, "below") if below > above else (above, "beyond")


def _allocation_fns(allocation) -> tuple[Callable, Callable]:
  if isinstance(allocation, dict):
    allocation = chinchilla_allocation(allocation)
  if isinstance(allocation, (tuple, list)):
    return allocation[0], allocation[1]
  return allocation.n_opt, allocation.d_opt


def check_support(allocation, flops_range: Sequence[float], n_trained, d_trained, *,
                  max_factor: float = MAX_FACTOR, num: int = 64) -> dict:
  """How far N_opt(C) and D_opt(C) over `flops_range` (its min to max, log-spaced) lie
  outside the trained N and D ranges. `allocation`: an Allocation, a (n_opt, d_opt) pair
  of callables, or Chinchilla law params {A, B, alpha, beta}. value = the largest factor;
  pass when it is at most `max_factor`."""
  n_opt, d_opt = _allocation_fns(allocation)
  c0, c1 = float(np.min(flops_range)), float(np.max(flops_range))
  flops = np.geomspace(c0, c1, num) if c1 > c0 else np.array([c0])
  fn, sn = extrapolation(n_opt(flops), n_trained)
  fd, sd = extrapolation(d_opt(flops), d_trained)
  factor = max(fn, fd)
  span = f"over {_g(c0)}-{_g(c1)} FLOPs" if c1 > c0 else f"at {_g(c0)} FLOPs"
  parts = [f"N_opt lies {_g(fn)}x {sn} the trained N ({_g(np.min(n_trained))}-"
           f"{_g(np.max(n_trained))})" if fn > 1 else "N_opt stays inside the trained N",
           f"D_opt lies {_g(fd)}x {sd} the trained D ({_g(np.min(d_trained))}-"
           f"{_g(np.max(d_trained))})" if fd > 1 else "D_opt stays inside the trained D"]
  status = PASS if factor <= max_factor else WARN
  return _record("support", status, factor,
                 f"{span}, " + " and ".join(parts) + f" (limit {max_factor:g}x)")


def plan_verdict(n_plan, d_plan, n_trained, d_trained, *, max_factor: float = MAX_FACTOR,
                 max_compute_factor: float = MAX_COMPUTE_FACTOR) -> str:
  """One sentence: does the planned N and D lie within `max_factor` of the trained ranges,
  and its compute 6ND within `max_compute_factor` of the largest trained run's? (N and D
  can each lie inside while their product lies beyond every run.) `n_trained`,
  `d_trained`: per run, paired."""
  fn, sn = extrapolation(n_plan, n_trained)
  fd, sd = extrapolation(d_plan, d_trained)
  c_max = float(np.max(6 * np.asarray(n_trained, np.float64) * np.asarray(d_trained, np.float64)))
  fc = 6 * float(n_plan) * float(d_plan) / c_max
  if max(fn, fd) > max_factor:
    f, side, axis = (fd, sd, "D") if fd >= fn else (fn, sn, "N")
    return f"extrapolates {f:.3g}x {side} the trained {axis}: not supported by these runs"
  where = ("inside the trained N and D ranges" if max(fn, fd) <= 1.0 else
           f"within {max_factor:g}x of the trained N and D (at most {max(fn, fd):.3g}x outside)")
  if fc > max_compute_factor:
    return (f"{where}, but at {fc:.3g}x the largest trained compute: an extrapolation in "
            "compute, not supported by these runs")
  return f"{where}: supported by these runs"


def check_floor(E, lowest_loss: float, interval: Sequence[float] | None = None, *,
                fixed: bool = False, min_fraction: float = 0.01,
                max_rel_width: float = 0.5) -> dict:
  """The irreducible loss E is identified when it is at least `min_fraction` of the lowest
  observed loss and its interval (if given) is no wider than `max_rel_width` x E.
  value = E / lowest loss; skip when the law has no E or E was fixed, not fitted."""
  if E is None:
    return _record("floor", SKIP, None, "the law has no irreducible loss E")
  if fixed:
    return _record("floor", SKIP, float(E) / float(lowest_loss),
                   f"E fixed at {_g(float(E))}, not fitted: the runs do not test it")
  E, lowest_loss = float(E), float(lowest_loss)
  ratio = E / lowest_loss
  if ratio < min_fraction:
    return _record("floor", WARN, ratio,
                   f"E = {_g(E)} is {ratio:.2g} of the lowest loss {_g(lowest_loss)} (under "
                   f"{min_fraction:.0%}): the runs show no floor, so E is not identified")
  if interval is not None:
    lo, hi = float(interval[0]), float(interval[1])
    width = (hi - lo) / E
    if width > max_rel_width:
      return _record("floor", WARN, ratio,
                     f"E = {_g(E)} but its interval {_g(lo)}-{_g(hi)} is {width:.0%} of E "
                     f"wide (over {max_rel_width:.0%}): E is poorly identified")
    return _record("floor", PASS, ratio,
                   f"E = {_g(E)} ({_g(lo)}-{_g(hi)}, {width:.0%} of E wide) is {ratio:.0%} "
                   f"of the lowest loss {_g(lowest_loss)}")
  return _record("floor", PASS, ratio,
                 f"E = {_g(E)} is {ratio:.0%} of the lowest loss {_g(lowest_loss)} (no "
                 f"interval given)")


def check_backtest(relative_errors, coverage: float | None = None, *,
                   max_error: float = 0.01, skipped: str | None = None) -> dict:
  """Leave-largest-out: pass when the median |pred - actual| / actual is under `max_error`.
  value = that median; the interval coverage (fraction of held-out runs inside their 95%
  interval) is stated. Skip when no backtest was run (`skipped`: why)."""
  if relative_errors is None or len(np.atleast_1d(relative_errors)) == 0:
    return _record("backtest", SKIP, None,
                   "no backtest was run" + (f": {skipped}" if skipped else ""))
  err = np.abs(np.atleast_1d(np.asarray(relative_errors, np.float64)))
  med = float(np.median(err))
  ok = med < max_error
  cov = "" if coverage is None else f"; the 95% interval covers {coverage:.0%} of them"
  detail = (f"median error {med:.2%} ({'' if ok else 'not '}under {max_error:.0%}; max "
            f"{err.max():.2%}) on {len(err)} held-out largest runs{cov}")
  return _record("backtest", PASS if ok else WARN, med, detail)


def check_repetition(tokens, unique_tokens=None, *, max_epochs: float = 4.0) -> dict:
  """epochs = D / unique tokens per epoch (a scalar or one per run, NaN where unknown);
  warn above `max_epochs`. value = the most epochs of any run; skip when unique_tokens is
  None or unknown for every run."""
  epochs = None
  if unique_tokens is not None:
    epochs = np.atleast_1d(np.asarray(tokens, np.float64) /
                           np.asarray(unique_tokens, np.float64))
  if epochs is None or not np.isfinite(epochs).any():
    return _record("repetition", SKIP, None,
                   "unique tokens per epoch unknown: repetition not checked")
  known = np.isfinite(epochs)
  unknown = "" if known.all() else f"; unknown for {int((~known).sum())} runs"
  epochs = epochs[known]
  top, over = float(epochs.max()), int((epochs > max_epochs).sum())
  if over:
    return _record("repetition", WARN, top,
                   f"{over} of {len(epochs)} runs repeat their data more than {max_epochs:g} "
                   f"times (up to {top:.3g} epochs): D is not unique data{unknown}")
  return _record("repetition", PASS, top,
                 f"every run sees at most {top:.3g} epochs (limit {max_epochs:g}){unknown}")


def check_agreement(a2: float | None, a3: float, *, a2_interval=None, a3_interval=None,
                    skipped: str | None = None, num_budgets: int | None = None,
                    tol: float = 0.1) -> dict:
  """Approach 2's allocation exponent a (N_opt ~ C^a from the IsoFLOP minima) against
  Approach 3's a = beta / (alpha + beta) from the fitted law. With a bootstrap interval
  for both: pass when the intervals overlap; otherwise pass when |a2 - a3| <= `tol`.
  value = |a2 - a3|; skip (with `skipped`, the reason) when Approach 2 did not run."""
  if a2 is None:
    return _record("agreement", SKIP, None,
                   f"{skipped or 'Approach 2 did not run'}; the law's a = {_g(a3)} is not "
                   f"cross-checked")
  a2, a3 = float(a2), float(a3)
  diff = abs(a2 - a3)
  span = lambda iv: "" if iv is None else f" ({_g(iv[0])}-{_g(iv[1])})"
  budgets = "" if num_budgets is None else f" from {num_budgets} budgets"
  head = (f"Approach 2 (IsoFLOP minima{budgets}) gives a = {_g(a2)}{span(a2_interval)}, "
          f"Approach 3 (the law) a = {_g(a3)}{span(a3_interval)}")
  if a2_interval is not None and a3_interval is not None:
    overlap = a2_interval[0] <= a3_interval[1] and a3_interval[0] <= a2_interval[1]
    if overlap:
      return _record("agreement", PASS, diff,
                     f"{head}: the 95% intervals overlap (difference {diff:.2g})")
    return _record("agreement", WARN, diff,
                   f"{head}: the 95% intervals do not overlap (difference {diff:.2g}), so "
                   f"the law's form and the IsoFLOP minima disagree on how to split compute")
  if diff <= tol:
    return _record("agreement", PASS, diff,
                   f"{head}: they differ by {diff:.2g} (limit {tol:g}; no intervals)")
  return _record("agreement", WARN, diff,
                 f"{head}: they differ by {diff:.2g} (over {tol:g}), so the law's form and "
                 f"the IsoFLOP minima disagree on how to split compute")


def checklist(records: Sequence[dict]) -> str:
  """The records as text lines, one per check: '[warn] (c) floor: E = ...'."""
  return "\n".join(f"[{r['status']}] ({r['number']}) {r['check']}: {r['detail']}"
                   for r in records)


def check_fd_signal(loss, fd, name: str = "fd", *, min_runs: int = 4,
                    alpha: float = 0.05) -> dict:
  """Does `name` (an FID-like distance, lower is better) rise with the loss across the runs
  that measured it? A loss -> fd map fitted to points where fd does not move with the loss
  forecasts fd's mean, whatever the loss, so its fd forecasts are no scaling forecasts.
  value = Spearman's rho; pass when rho > 0 with a one-sided p < `alpha` (exact
  permutation test for up to 9 runs: scipy), skip under `min_runs` runs."""
  from scipy import stats
  loss, fd = np.asarray(loss, np.float64), np.asarray(fd, np.float64)
  ok = np.isfinite(loss) & np.isfinite(fd)
  loss, fd = loss[ok], fd[ok]
  if len(fd) < min_runs:
    return _record("fd signal", SKIP, None, f"{len(fd)} run(s) measured {name}; the check "
                   f"needs {min_runs}")
  res = stats.spearmanr(loss, fd, alternative="greater")
  rho, p = float(res.statistic), float(res.pvalue)
  spread = (f"{name} {_g(fd.min())}-{_g(fd.max())} over loss {_g(loss.min())}-"
            f"{_g(loss.max())}, {len(fd)} runs")
  if rho > 0 and p < alpha:
    return _record("fd signal", PASS, rho, f"{name} rises with the loss (Spearman rho = "
                   f"{rho:.2f}, p = {p:.2g}; {spread})")
  return _record("fd signal", WARN, rho, f"{name} does not track the loss (Spearman rho = "
                 f"{rho:.2f}, p = {p:.2g}; {spread}): its forecasts are about its mean, "
                 "not a scaling forecast; measure runs further apart in loss")
