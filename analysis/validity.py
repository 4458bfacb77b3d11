"""Validity checks: is a scaling-law fit one a researcher can trust?

Pure functions of numbers (numpy only; no fitting here). Each check returns a record
  {"check": name, "status": "pass" | "warn" | "skip", "value": number, "detail": sentence}
with the sentence made from the numbers, so a report can print it as is:
  bracketing  per FLOP budget with >= 3 model sizes, is the loss minimum interior?
  support     how far N_opt(C), D_opt(C) lie outside the trained N and D ranges
  floor       is the irreducible loss E identified (not ~0, interval not wider than E/2)?
  backtest    median |pred - actual| / actual on the held-out largest runs, and coverage
  repetition  epochs per run, D / unique tokens per epoch
`plan_verdict` states in one sentence whether a planned (N, D) is supported by the runs.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from analysis.compute_optimal import chinchilla_allocation

PASS, WARN, SKIP = "pass", "warn", "skip"


def _record(check: str, status: str, value, detail: str) -> dict:
  value = None if value is None else float(value)
  return {"check": check, "status": status, "value": value, "detail": detail}


def _g(x: float) -> str:
  return f"{x:.3g}"


def budget_groups(flops, rel_tol: float = 0.1, budget=None) -> list[np.ndarray]:
  """Indices of runs that share a FLOP budget: an explicit `budget` column if given (equal
  values), else runs whose FLOPs agree within `rel_tol` in log space (|log C - log C0| <=
  log(1 + rel_tol), C0 the smallest C of the group), in increasing order of C."""
  if budget is not None:
    budget = np.asarray(budget)
    keys = np.unique(budget)
    order = np.argsort([np.mean(np.asarray(flops, np.float64)[budget == k]) for k in keys])
    return [np.flatnonzero(budget == keys[i]) for i in order]
  log_c = np.log(np.asarray(flops, np.float64))
  groups: list[list[int]] = []
  for i in np.argsort(log_c, kind="stable"):
    if groups and log_c[i] - log_c[groups[-1][0]] <= np.log1p(rel_tol):
      groups[-1].append(int(i))
    else:
      groups.append([int(i)])
  return [np.array(g) for g in groups]


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
                  max_factor: float = 3.0, num: int = 64) -> dict:
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


def plan_verdict(n_plan, d_plan, n_trained, d_trained, *, max_factor: float = 3.0) -> str:
  """One sentence: does the planned N and D lie within `max_factor` of the trained ranges?"""
  fn, sn = extrapolation(n_plan, n_trained)
  fd, sd = extrapolation(d_plan, d_trained)
  if max(fn, fd) > max_factor:
    f, side, axis = (fd, sd, "D") if fd >= fn else (fn, sn, "N")
    return f"extrapolates {f:.3g}x {side} the trained {axis}: not supported by these runs"
  if max(fn, fd) <= 1.0:
    return "inside the trained N and D ranges: supported by these runs"
  return (f"within {max_factor:g}x of the trained N and D (at most {max(fn, fd):.3g}x "
          f"outside): supported by these runs")


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
                   max_error: float = 0.01) -> dict:
  """Leave-largest-out: pass when the median |pred - actual| / actual is under `max_error`.
  value = that median; the interval coverage (fraction of held-out runs inside their 95%
  interval) is stated."""
  if relative_errors is None or len(np.atleast_1d(relative_errors)) == 0:
    return _record("backtest", SKIP, None, "no backtest was run")
  err = np.abs(np.atleast_1d(np.asarray(relative_errors, np.float64)))
  med = float(np.median(err))
  ok = med < max_error
  cov = "" if coverage is None else f"; the 95% interval covers {coverage:.0%} of them"
  detail = (f"median error {med:.2%} ({'' if ok else 'not '}under {max_error:.0%}; max "
            f"{err.max():.2%}) on {len(err)} held-out largest runs{cov}")
  return _record("backtest", PASS if ok else WARN, med, detail)


def check_repetition(tokens, unique_tokens=None, *, max_epochs: float = 4.0) -> dict:
  """epochs = D / unique tokens per epoch (a scalar or one per run); warn above
  `max_epochs`. value = the most epochs of any run; skip when unique_tokens is None."""
  if unique_tokens is None:
    return _record("repetition", SKIP, None,
                   "unique tokens per epoch unknown: repetition not checked")
  epochs = np.asarray(tokens, np.float64) / np.asarray(unique_tokens, np.float64)
  epochs = np.atleast_1d(epochs)
  top, over = float(epochs.max()), int((epochs > max_epochs).sum())
  if over:
    return _record("repetition", WARN, top,
                   f"{over} of {len(epochs)} runs repeat their data more than {max_epochs:g} "
                   f"times (up to {top:.3g} epochs): D is not unique data")
  return _record("repetition", PASS, top,
                 f"every run sees at most {top:.3g} epochs (limit {max_epochs:g})")


def checklist(records: Sequence[dict]) -> str:
  """The records as text lines, one per check: '[warn] floor: E = ...'."""
  return "\n".join(f"[{r['status']}] {r['check']}: {r['detail']}" for r in records)
