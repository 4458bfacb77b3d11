"""Sampling compute: quality against sampling FLOPs, verifier coverage against K, and the
plan that buys a quality target for M images at the lowest training + sampling cost.

Data: a sampling table (`varjax eval sampling --out FILE`, one row per model and sampler
configuration; columns in docs/eval.md) and/or a run registry, whose runs with the target's
metric are plain-sampling candidates (their sampling FLOPs per image from config.json by
varjax/models/sampling_cost.py, guided unless the recorded sample_protocol says cfg 0).

Quality: q(F) = q_inf + A (F / F0)^-alpha, F sampling FLOPs per image, F0 the geometric
mean of the fitted F (A is the excess over the floor at F0). Least squares of relative
residuals fit / q - 1 (fd spans orders of magnitude), bounds 0 <= q_inf <= min q, A >= 0,
1e-3 <= alpha <= 5: at fixed alpha the problem is linear in (q_inf, A) and solved exactly
on its box, so the fit profiles alpha from a grid of 41 starts refined by a bounded scalar
search; 95% percentile intervals from a bootstrap over points. `fit_quality` fits any set
of points: the planner fits across every candidate of the target's metric (models and
sampler configurations together: the frontier of quality against sampling cost); pass one
run's rows for a per-model law.

Coverage: c(K) = exp(a K^b) (Brown et al. 2024, "Large Language Monkeys": coverage of
repeated sampling with a verifier as a function of the samples K), fitted as the line
log(-log c) = log(-a) + b log K over points with 0 < c < 1 (a < 0; b < 0 when coverage
grows with K); 95% intervals from the line's OLS standard errors (Student t, n - 2 dof).
Here c is the table's `coverage`: the fraction of images whose chosen best-of-K score
reaches the table's coverage_threshold.

Plan (`python -m analysis plan --images M --target-fd X`): a candidate (model, sampler)
reaches the target when its measured quality is <= X; among those, the one of least
training FLOPs + M x sampling FLOPs per image is chosen (a collaborative sampler pays for
both models' training; best-of-K counts K samples and, where known, K verifier calls).
Wall time: FLOPs / (peak x MFU x chips) on --accelerator for both parts (the same ordering
as FLOPs), and the sampling time at the table's measured images/s on the device it was
measured on. Intervals: each candidate's quality interval is its 95% bootstrap interval
over its samples where the table recorded one (source "samples"), else the quality fit's
relative 95% bootstrap prediction interval at its F (replicate curves times a resampled
residual, divided by the fit at F) times its measurement (source "fit"); the cost interval
runs from the cheapest candidate whose interval reaches the target at its low end to the
cheapest that reaches it at its high end.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

import numpy as np
import pandas as pd
import scipy.optimize
import scipy.stats

from analysis.validate import AnalysisError

LEVEL = 0.95
MIN_QUALITY_POINTS = 4  # three parameters and one degree of freedom
ALPHA_GRID = np.geomspace(1e-3, 5.0, 41)  # starts of the profile over alpha
REQUIRED = ("config", "sampler", "run", "k", "train_flops", "metric", "quality",
            "sampling_flops_per_image")


# ---------------------------------------------------------------- quality vs sampling FLOPs

@dataclasses.dataclass
class QualityFit:
  q_inf: float
  A: float  # excess over the floor at F0
  alpha: float
  F0: float
  residuals: np.ndarray  # log q - log fit, per point
  replicates: np.ndarray  # [B, 3]: q_inf, A, alpha per bootstrap replicate
  n: int

  def predict(self, flops, params=None):
    q_inf, a, alpha = (self.q_inf, self.A, self.alpha) if params is None else params
    return q_inf + a * (np.asarray(flops, float) / self.F0) ** -alpha

  def intervals(self) -> dict:
    if not len(self.replicates):
      return {}
    lo, hi = np.percentile(self.replicates, [2.5, 97.5], axis=0)
    return {k: [float(lo[i]), float(hi[i])] for i, k in enumerate(("q_inf", "A", "alpha"))}

  def prediction_interval(self, flops: float, seed: int = 0) -> list[float] | None:
    """95% interval of a quality measured at `flops`: replicate curves times a resampled
    residual (in log q)."""
    if not len(self.replicates):
      return None
    rng = np.random.default_rng(seed)
    curves = np.array([self.predict(flops, p) for p in self.replicates])
    draws = curves * np.exp(rng.choice(self.residuals, len(curves)))
    lo, hi = np.percentile(draws, [2.5, 97.5])
    return [float(lo), float(hi)]

  def report(self) -> dict:
    return {"form": "q(F) = q_inf + A (F / F0)^-alpha", "q_inf": self.q_inf, "A": self.A,
            "alpha": self.alpha, "F0": self.F0, "points": self.n,
            "rms_log_residual": float(np.sqrt(np.mean(self.residuals ** 2))),
            "interval_95": self.intervals(), "bootstrap": len(self.replicates)}


def _floor_and_scale(x, q, alpha):
  """The best (q_inf, A, cost) at a fixed alpha: least squares of relative residuals
  (fit / q - 1) is linear in q_inf and A; the box 0 <= q_inf <= min q, A >= 0 is searched
  exactly (interior, else the best of its edges, each a clipped 1-d solution)."""
  w = 1 / q
  g = x ** -alpha
  design = np.stack([w, w * g], 1)  # columns: q_inf, A (weighted)
  target = np.ones_like(q)
  cost = lambda p: float(np.sum((design @ p - target) ** 2))  # noqa: E731
  q_min = float(q.min())
  options = []
  p, *_ = np.linalg.lstsq(design, target, rcond=None)
  if 0 <= p[0] <= q_min and p[1] >= 0:
    options.append(p)
  for floor in (0.0, q_min):  # q_inf on an edge: A by 1-d least squares, A >= 0
    rest = target - design[:, 0] * floor
    options.append(np.array([floor, max(0.0, design[:, 1] @ rest / (design[:, 1] @ design[:, 1]))]))
  options.append(np.array([min(max(design[:, 0] @ target / (design[:, 0] @ design[:, 0]), 0.0),
                               q_min), 0.0]))  # A = 0: a constant
  best = min(options, key=cost)
  return float(best[0]), float(best[1]), cost(best)


def _fit_once(x, q):
  """(q_inf, A, alpha) on x = F / F0: the separable problem profiled over alpha, a grid of
  starts (ALPHA_GRID) refined by a bounded scalar search around the best."""
  costs = [_floor_and_scale(x, q, a)[2] for a in ALPHA_GRID]
  i = int(np.argmin(costs))
  lo, hi = np.log(ALPHA_GRID[max(i - 1, 0)]), np.log(ALPHA_GRID[min(i + 1, len(ALPHA_GRID) - 1)])
  r = scipy.optimize.minimize_scalar(lambda la: _floor_and_scale(x, q, np.exp(la))[2],
                                     bounds=(lo, hi), method="bounded",
                                     options={"xatol": 1e-6})
  alpha = float(np.exp(r.x)) if r.fun <= costs[i] else float(ALPHA_GRID[i])
  q_inf, a, _ = _floor_and_scale(x, q, alpha)
  return q_inf, a, alpha


def fit_quality(flops, quality, bootstrap: int = 200, seed: int = 0) -> QualityFit:
  """q = q_inf + A (F / F0)^-alpha through (flops, quality) (module docstring)."""
  f, q = np.asarray(flops, float), np.asarray(quality, float)
  if f.shape != q.shape or f.ndim != 1:
    raise AnalysisError("flops and quality must be 1-d arrays of one length")
  ok = np.isfinite(f) & np.isfinite(q) & (f > 0) & (q > 0)
  f, q = f[ok], q[ok]
  if len(f) < MIN_QUALITY_POINTS or len(np.unique(f)) < 3:
    raise AnalysisError(f"the quality law needs >= {MIN_QUALITY_POINTS} points at >= 3 "
                        f"sampling costs, got {len(f)} at {len(np.unique(f))}")
  f0 = float(np.exp(np.mean(np.log(f))))
  x = f / f0
  q_inf, a, alpha = _fit_once(x, q)
  residuals = np.log(q) - np.log(q_inf + a * x ** -alpha)
  rng = np.random.default_rng(seed)
  reps = []
  for _ in range(bootstrap):
    idx = rng.integers(0, len(f), len(f))
    if len(np.unique(f[idx])) < 3:
      continue  # a resample at two costs cannot pin three parameters
    reps.append(_fit_once(x[idx], q[idx]))
  return QualityFit(q_inf, a, alpha, f0, residuals, np.array(reps).reshape(-1, 3), len(f))


# ---------------------------------------------------------------- coverage vs K

@dataclasses.dataclass
class CoverageFit:
  a: float
  b: float
  n: int
  interval_a: list | None
  interval_b: list | None
  dropped: int  # points with c = 0 or c = 1, outside the log-log line

  def predict(self, k):
    return np.exp(self.a * np.asarray(k, float) ** self.b)

  def samples_for(self, coverage: float) -> float:
    """K with c(K) = coverage (inf when the law never gets there)."""
    ratio = math.log(coverage) / self.a
    return ratio ** (1 / self.b) if ratio > 0 and self.b != 0 else math.inf

  def report(self) -> dict:
    return {"form": "c(K) = exp(a K^b) (Large Language Monkeys, 2024)", "a": self.a,
            "b": self.b, "points": self.n, "dropped_c_0_or_1": self.dropped,
            "interval_95": {"a": self.interval_a, "b": self.interval_b}}


def fit_coverage(k, coverage) -> CoverageFit:
  """c(K) = exp(a K^b) by least squares of log(-log c) on log K (module docstring)."""
  k, c = np.asarray(k, float), np.asarray(coverage, float)
  if np.any(k < 1):
    raise AnalysisError(f"K must be >= 1 (samples per image), got {k[k < 1][0]:g}")
  inside = np.isfinite(c) & (c > 0) & (c < 1)
  x, y = np.log(k[inside]), np.log(-np.log(c[inside]))
  if len(np.unique(x)) < 2:
    raise AnalysisError(f"the coverage law needs 0 < c < 1 at >= 2 values of K, got "
                        f"{len(np.unique(x))}")
  n = len(x)
  slope, intercept = np.polyfit(x, y, 1)
  ia = ib = None
  if n > 2:
    resid = y - (intercept + slope * x)
    s2 = resid @ resid / (n - 2)
    sxx = np.sum((x - x.mean()) ** 2)
    se_b = math.sqrt(s2 / sxx)
    se_i = math.sqrt(s2 * (1 / n + x.mean() ** 2 / sxx))
    t = scipy.stats.t.ppf(0.5 + LEVEL / 2, n - 2)
    ib = [float(slope - t * se_b), float(slope + t * se_b)]
    ia = sorted([-math.exp(intercept - t * se_i), -math.exp(intercept + t * se_i)])
  return CoverageFit(-math.exp(intercept), float(slope), n, ia, ib, int((~inside).sum()))


# ---------------------------------------------------------------- candidates

def read_table(path: str) -> pd.DataFrame:
  """A sampling table (CSV or JSONL) with its required columns checked."""
  if not os.path.isfile(path):
    raise AnalysisError(f"--sampling-table {path}: no such file")
  try:
    if path.endswith(".jsonl"):
      with open(path) as f:
        table = pd.DataFrame([json.loads(line) for line in f if line.strip()])
    else:
      table = pd.read_csv(path)
  except (ValueError, pd.errors.ParserError) as e:
    raise AnalysisError(f"--sampling-table {path}: not a sampling table "
                        f"({str(e).splitlines()[0]})") from None
  missing = [c for c in REQUIRED if c not in table.columns]
  if missing or table.empty:
    raise AnalysisError(f"--sampling-table {path}: not a sampling table (`varjax eval "
                        f"sampling`): {'no rows' if table.empty else 'no column ' + missing[0]}")
  k = pd.to_numeric(table["k"], errors="coerce")
  if (~(k >= 1)).any():
    raise AnalysisError(f"--sampling-table {path}: K must be >= 1 (samples per image), got "
                        f"{table['k'][~(k >= 1)].iloc[0]} in row {int(np.argmax(~(k >= 1))) + 1}")
  return table


def _registry_candidates(args, metric_kind: str) -> pd.DataFrame:
  """The registry's runs with the metric as plain-sampling candidates."""
  from analysis.runs import load_runs
  runs = load_runs(args.runs)
  if args.fid_col:
    column = args.fid_col
  else:
    wanted = (lambda c: c == "fid") if metric_kind == "fid" else (lambda c: c.startswith("fd_"))
    names = sorted(c for c in runs.columns if wanted(c))
    if len(names) > 1:
      raise AnalysisError(f"the registry has several {metric_kind} columns ({', '.join(names)}); "
                          "pick one with --fid-col")
    column = names[0] if names else None
  if column is None or column not in runs.columns:
    return pd.DataFrame()
  runs = runs[np.isfinite(pd.to_numeric(runs[column], errors="coerce"))]
  c_col = args.c_col or "flops_exact"
  if c_col not in runs.columns:
    raise AnalysisError(f"the registry has no training FLOPs column {c_col!r}; pass --c-col")
  from varjax.errors import VarjaxError
  from varjax.models import store
  from varjax.models.sampling_cost import sampling_cost
  rows = []
  for _, r in runs.iterrows():
    try:
      model = store.read_model_config(r["run_dir"], "VAR model").model
    except VarjaxError as e:
      raise AnalysisError(str(e)) from None
    cfg = r.get("sample_protocol.cfg", np.nan)
    guided = not (isinstance(cfg, (int, float)) and cfg == 0)
    rows.append({"config": r["run"], "sampler": "plain", "run": r["run_dir"], "k": 1,
                 "train_flops": float(r[c_col]), "params": float(r.get(args.n_col, np.nan)),
                 "metric": column, "quality": float(r[column]),
                 "sampling_flops_per_image": float(sampling_cost(model, guided=guided)["total"]),
                 "source": "registry"})
  return pd.DataFrame(rows)


def candidates(args, metric_kind: str) -> tuple[pd.DataFrame, str]:
  """Table rows and registry runs of one metric (fid, or one fd_<network>); a registry run
  already in the table as a plain row is the table's."""
  parts = []
  if args.sampling_table:
    table = read_table(args.sampling_table).copy()
    table["source"] = "table"
    parts.append(table)
  if args.runs:
    reg = _registry_candidates(args, metric_kind)
    if args.sampling_table and not reg.empty:
      plain = {os.path.realpath(str(r)) for r, s in zip(parts[0]["run"], parts[0]["sampler"])
               if s == "plain"}
      reg = reg[[os.path.realpath(r) not in plain for r in reg["run"]]]
    parts.append(reg)
  data = pd.concat([p for p in parts if not p.empty], ignore_index=True) if any(
      not p.empty for p in parts) else pd.DataFrame()
  want = (lambda m: m == "fid") if metric_kind == "fid" else (lambda m: str(m).startswith("fd_"))
  if data.empty or not data["metric"].map(want).any():
    where = " and ".join(x for x in ("the sampling table" if args.sampling_table else "",
                                     "the registry" if args.runs else "") if x)
    raise AnalysisError(f"no candidate has a {metric_kind} measurement in {where}")
  data = data[data["metric"].map(want)].reset_index(drop=True)
  metrics = sorted(set(data["metric"]))
  if len(metrics) > 1:
    raise AnalysisError(f"candidates measure different distances ({', '.join(metrics)}); "
                        "--fid-col picks the registry's, the table must hold one network")
  for col in ("quality", "train_flops", "sampling_flops_per_image"):
    data[col] = pd.to_numeric(data[col], errors="coerce")
  total = pd.to_numeric(data.get("total_flops_per_image"), errors="coerce") \
      if "total_flops_per_image" in data else pd.Series(np.nan, index=data.index)
  data["flops_per_image"] = total.fillna(data["sampling_flops_per_image"])
  data["verifier_counted"] = total.notna() | (data["sampler"] != "best_of_k")
  bad = data[~np.isfinite(data["train_flops"])]
  if len(bad):
    raise AnalysisError(f"candidate {bad['config'].iloc[0]} has no training FLOPs (its "
                        "summary.json records no flops_exact)")
  return data, metrics[0]


# ---------------------------------------------------------------- the plan

def plan(args) -> dict:
  """The cheapest (model, sampler) that reaches the target for --images M images."""
  from analysis import compute_optimal
  kind = "fid" if args.target_fid is not None else "fd"
  target = args.target_fid if kind == "fid" else args.target_fd
  data, metric = candidates(args, kind)
  m = args.images
  data["sampling_flops"] = m * data["flops_per_image"]
  data["cost"] = data["train_flops"] + data["sampling_flops"]
  fit = None
  notes = []
  try:
    fit = fit_quality(data["flops_per_image"], data["quality"],
                      bootstrap=args.bootstrap or 200, seed=args.seed)
  except AnalysisError as e:
    notes.append(f"no quality fit: {e}")
  low, high, source = [], [], []
  for i, r in data.iterrows():
    ql, qh = (pd.to_numeric(pd.Series([r.get("quality_low"), r.get("quality_high")]),
                            errors="coerce").tolist())
    if np.isfinite(ql) and np.isfinite(qh):
      low.append(ql), high.append(qh), source.append("samples")
    elif fit is not None:
      # the interval of a measurement at this cost, centred on this one's measurement
      pi = fit.prediction_interval(r["flops_per_image"], seed=args.seed + i)
      scale = r["quality"] / fit.predict(r["flops_per_image"])
      low.append(pi[0] * scale), high.append(pi[1] * scale), source.append("fit")
    else:
      low.append(np.nan), high.append(np.nan), source.append("none")
  data["quality_low"], data["quality_high"], data["interval_source"] = low, high, source

  def cheapest(mask):
    rows = data[mask]
    return None if rows.empty else rows.loc[rows["cost"].idxmin()]

  chosen = cheapest(data["quality"] <= target)
  optimistic = cheapest(data["quality_low"] <= target)
  conservative = cheapest(data["quality_high"] <= target)
  best = data.loc[data["quality"].idxmin()]
  report = {"metric": metric, "target": target, "images": m, "candidates": len(data)}
  if fit is not None:
    report["quality_fit"] = fit.report()
  cov = _coverage(data, args)
  if cov is not None:
    report["coverage_fit"] = cov
  report["notes"] = notes
  if chosen is None:
    floor = ""
    if fit is not None:
      iv = fit.intervals().get("q_inf")
      floor = f"; the fitted floor q_inf is {fit.q_inf:.4g}" + (
          f" [{iv[0]:.4g}, {iv[1]:.4g}]" if iv else "")
    reach = ("" if not np.isfinite(best["quality_low"]) else
             f" (95% interval [{best['quality_low']:.4g}, {best['quality_high']:.4g}])")
    report.update(reachable=False, text=(
        f"unreachable: no candidate reaches {metric} <= {target:g}; the best is {best['config']} "
        f"at {best['quality']:.4g}{reach}{floor}"))
    return report
  hours = lambda flops: compute_optimal.wall_time_hours(  # noqa: E731
      flops, args.accelerator, args.mfu, args.chips)
  ips = pd.to_numeric(pd.Series([chosen.get("images_per_s")]), errors="coerce").iloc[0]
  choice = {
      "config": chosen["config"], "sampler": chosen["sampler"], "run": chosen["run"],
      "refiner": _text(chosen.get("refiner")), "switch_scale": _num(chosen.get("switch_scale")),
      "k": int(float(chosen["k"])), "source": chosen["source"],
      "quality": float(chosen["quality"]),
      "quality_interval_95": _pair(chosen["quality_low"], chosen["quality_high"]),
      "interval_source": chosen["interval_source"],
      "flops_per_image": float(chosen["flops_per_image"]),
      "verifier_counted": bool(chosen["verifier_counted"])}
  cost = {"training_flops": float(chosen["train_flops"]),
          "sampling_flops": float(chosen["sampling_flops"]), "total_flops": float(chosen["cost"]),
          "sampling_share": float(chosen["sampling_flops"] / chosen["cost"]),
          "accelerator": args.accelerator, "mfu": args.mfu, "chips": args.chips,
          "training_hours": hours(chosen["train_flops"]),
          "sampling_hours": hours(chosen["sampling_flops"])}
  cost["total_hours"] = cost["training_hours"] + cost["sampling_hours"]
  if np.isfinite(ips) and ips > 0:
    cost["sampling_hours_measured"] = m / ips / 3600
    cost["measured_on"] = _text(chosen.get("device"))
  report.update(reachable=True, choice=choice, cost=cost, cost_interval_95={
      "low": None if optimistic is None else {"config": optimistic["config"],
                                              "total_flops": float(optimistic["cost"])},
      "high": None if conservative is None else {"config": conservative["config"],
                                                 "total_flops": float(conservative["cost"])}})
  report["table"] = [{"config": r["config"], "quality": r["quality"],
                      "interval": _pair(r["quality_low"], r["quality_high"]),
                      "training_flops": r["train_flops"], "sampling_flops": r["sampling_flops"],
                      "total_flops": r["cost"], "reaches": bool(r["quality"] <= target)}
                     for _, r in data.sort_values("cost").iterrows()]
  report["text"] = format_plan(report)
  return report


def _coverage(data: pd.DataFrame, args) -> dict | None:
  """c(K) of the run with the most best-of-K rows (one verifier, one model)."""
  if "coverage" not in data:
    return None
  c = pd.to_numeric(data["coverage"], errors="coerce")
  ok = c.notna() & (data["sampler"] == "best_of_k")
  if ok.sum() < 2:
    return None
  run = data[ok]["run"].value_counts().index[0]
  ok &= data["run"] == run
  try:
    return {"run": run, **fit_coverage(pd.to_numeric(data["k"][ok]), c[ok]).report()}
  except AnalysisError as e:
    return {"run": run, "note": str(e)}


def _text(v):
  return None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)


def _num(v):
  v = pd.to_numeric(pd.Series([v]), errors="coerce").iloc[0]
  return None if pd.isna(v) else int(v)


def _pair(lo, hi):
  return [float(lo), float(hi)] if np.isfinite(lo) and np.isfinite(hi) else None


def format_plan(r: dict) -> str:
  c, cost, ci = r["choice"], r["cost"], r["cost_interval_95"]
  iv = c["quality_interval_95"]
  lines = [
      f"target: {r['metric']} <= {r['target']:g} for {r['images']:.4g} images "
      f"({r['candidates']} candidates)",
      f"choice: {c['config']} ({c['sampler']}" + (f", K {c['k']}" if c["k"] > 1 else "")
      + f"): {r['metric']} {c['quality']:.4g}"
      + (f" [{iv[0]:.4g}, {iv[1]:.4g}] (95%, from the {c['interval_source']})" if iv else
         " (no interval)"),
      f"cost: training {cost['training_flops']:.4g} + sampling {cost['sampling_flops']:.4g} "
      f"({c['flops_per_image']:.4g} FLOPs/image"
      + ("" if c["verifier_counted"] else ", verifier not counted")
      + f") = {cost['total_flops']:.4g} FLOPs; sampling is {cost['sampling_share']:.1%}",
      f"wall time on {cost['chips']} x {cost['accelerator']} at MFU {cost['mfu']:g}: training "
      f"{cost['training_hours']:.3g} h + sampling {cost['sampling_hours']:.3g} h"
      + (f"; sampling at the measured {r['images'] / cost['sampling_hours_measured'] / 3600:.4g}"
         f" images/s on {cost['measured_on']}: {cost['sampling_hours_measured']:.3g} h"
         if "sampling_hours_measured" in cost else ""),
      "cost interval (95%, the cheapest candidate reaching the target at the low / high end "
      "of its quality interval): "
      + " to ".join("none" if x is None else f"{x['total_flops']:.4g} ({x['config']})"
                    for x in (ci["low"], ci["high"]))]
  if "quality_fit" in r:
    q = r["quality_fit"]
    ivs = q["interval_95"]

    def fmt(k):
      return f"{q[k]:.4g}" + (f" [{ivs[k][0]:.4g}, {ivs[k][1]:.4g}]" if k in ivs else "")

    lines.append(f"quality fit over {q['points']} candidates: q_inf {fmt('q_inf')}, alpha "
                 f"{fmt('alpha')}, A {fmt('A')} at F0 {q['F0']:.4g} FLOPs/image")
  if "coverage_fit" in r and "a" in r["coverage_fit"]:
    v = r["coverage_fit"]
    lines.append(f"coverage fit c(K) = exp(a K^b) of {v['run']}: a {v['a']:.4g}, b "
                 f"{v['b']:.4g} over {v['points']} best-of-K rows")
  lines += [f"note: {n}" for n in r["notes"]]
  return "\n".join(lines)
