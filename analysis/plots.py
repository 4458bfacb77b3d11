"""Scaling-law plots (matplotlib, Agg): frontier with bands, IsoFLOPs, allocation, residuals."""

from __future__ import annotations

import os

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from analysis import validity  # noqa: E402
from analysis.compute_optimal import IsoFlopMinima, allocation_for, trained_flops  # noqa: E402
from analysis.fitting import Fit  # noqa: E402
from analysis.uncertainty import Backtest, Bootstrap  # noqa: E402


def _compact(v: float) -> str:
  """4.2 inside [1e-2, 1e3), else 2e11: short labels for log axes."""
  if 1e-2 <= abs(v) < 1e3:
    return f"{v:.3g}"
  mantissa, exponent = f"{v:.1e}".split("e")
  return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def _readable_log_ticks(axis) -> None:
  """A log axis spanning under two decades gets ticks at 1, 2 and 5 x 10^k with short
  labels (4.2, 2e11) instead of matplotlib's crowded minor labels (4 x 10^0)."""
  lo, hi = axis.get_view_interval()
  if lo > 0 and hi / lo < 100:
    axis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    if hi / lo < 3:  # under half a decade: 1-2-5 leaves too few ticks
      axis.set_major_locator(matplotlib.ticker.MaxNLocator(6))
    axis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: _compact(v)))
    axis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def _save(fig, path: str) -> str:
  for ax in fig.axes:
    for axis, scale in ((ax.xaxis, ax.get_xscale()), (ax.yaxis, ax.get_yscale())):
      if scale == "log":
        _readable_log_ticks(axis)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def _allocation(fit: Fit):
  return allocation_for(fit.law.name, fit.params, flops_range=trained_flops(fit.inputs))


# Margin around the trained compute range in the default plotted range.
MARGIN = 1.5


def compute_grid(fit: Fit, extra_flops=(), num: int = 160) -> np.ndarray:
  """float64[num]: log-spaced C over the trained compute range (x/ MARGIN), stretched to
  cover any planned or forecast C in `extra_flops`."""
  c = 6 * fit.inputs["N"] * fit.inputs["D"]
  lo, hi = c.min() / MARGIN, c.max() * MARGIN
  if len(extra_flops):
    lo, hi = min(lo, np.min(extra_flops) / 1.2), max(hi, np.max(extra_flops) * 1.2)
  return np.geomspace(lo, hi, num)


def frontier_support(alloc, grid, n, d, max_factor: float = validity.MAX_FACTOR):
  """bool[len(grid)] where N_opt(C) and D_opt(C) are both within `max_factor` of the
  trained N and D ranges, and the label of the rest ('' if none)."""
  fn = validity.outside_factor(alloc.n_opt(grid), n)
  fd = validity.outside_factor(alloc.d_opt(grid), d)
  ok = (fn <= max_factor) & (fd <= max_factor)
  out = [axis for axis, f in (("N", fn), ("D", fd)) if np.any(f[~ok] > max_factor)]
  label = ("unsupported: " + " and ".join(f"{a}_opt" for a in out) + " outside trained "
           + " and ".join(out) + f" \u00d7/\u00f7{max_factor:g}") if out else ""
  return ok, label


def _solid_dashed(ax, x, y, ok, label, unsupported_label, **kw):
  """y solid where `ok`, dashed elsewhere; the two overlap by one point so they join."""
  solid = ok.copy()
  solid[1:] |= ok[:-1]
  solid[:-1] |= ok[1:]
  ax.plot(x, np.where(solid, y, np.nan), "-", label=label, **kw)
  if not ok.all():
    dashed = ~ok
    dashed[1:] |= ~ok[:-1]
    dashed[:-1] |= ~ok[1:]
    ax.plot(x, np.where(dashed, y, np.nan), "--", label=unsupported_label, **kw)


def loss_vs_compute(fit: Fit, boot: Bootstrap | None, path: str, marks=()) -> str:
  """Runs coloured by N; the compute-optimal frontier L(N_opt(C), D_opt(C)) with its band,
  solid where N_opt and D_opt lie within 3x of the trained N and D, dashed beyond. The
  range is the trained compute, stretched to the C of `marks`: (C, loss, interval_95 or
  None, label) of forecasts and plans, drawn as points with their intervals."""
  n, d, y = fit.inputs["N"], fit.inputs["D"], fit.y
  c = 6 * n * d
  fig, ax = plt.subplots(figsize=(6.4, 4.6))
  sc = ax.scatter(c, y, c=np.log10(n), cmap="viridis", s=14, label="runs")
  fig.colorbar(sc, ax=ax, label="log10 N (parameters)")
  grid = compute_grid(fit, [m[0] for m in marks])
  alloc = _allocation(fit)
  frontier = fit.predict({"N": alloc.n_opt(grid), "D": alloc.d_opt(grid)})
  ok, unsupported = frontier_support(alloc, grid, n, d)
  _solid_dashed(ax, grid, frontier, ok, f"{fit.law.name} frontier", unsupported, color="k",
                lw=1.5)
  if boot is not None:
    curves = [fit.law.predict(theta, {"N": a.n_opt(grid), "D": a.d_opt(grid)})
              for theta, a in boot.allocations()]
    if curves:
      lo, hi = np.percentile(np.array(curves), [2.5, 97.5], axis=0)
      ax.fill_between(grid, lo, hi, color="k", alpha=0.15, label="95% band (bootstrap)")
  if grid[-1] > c.max():
    ax.axvspan(c.max(), grid[-1], color="orange", alpha=0.08, label="beyond the runs' C")
  for i, (flops, loss, interval, label) in enumerate(marks):
    err = None if interval is None else [[loss - interval[0]], [interval[1] - loss]]
    ax.errorbar([flops], [loss], yerr=err, fmt="D", ms=6, mfc="none", capsize=3,
                color=f"C{(i + 1) % 10}", label=label)
  ax.set(xscale="log", yscale="log", xlabel="training FLOPs C = 6ND", ylabel="loss",
         title="Loss vs compute")
  ax.legend(fontsize=7)
  return _save(fig, path)


def allocation_plot(fit: Fit, boot: Bootstrap | None, path: str, extra_flops=()) -> str:
  """N_opt(C) and D_opt(C) with bands, solid where both lie within 3x of the trained N and
  D, dashed beyond; the trained N and D ranges shaded."""
  n, d = fit.inputs["N"], fit.inputs["D"]
  grid = compute_grid(fit, extra_flops)
  alloc = _allocation(fit)
  ok, unsupported = frontier_support(alloc, grid, n, d)
  fig, ax = plt.subplots(figsize=(6.4, 4.6))
  for fn, trained, label, color in ((alloc.n_opt, n, f"N_opt ~ C^{alloc.a:.3f}", "C0"),
                                    (alloc.d_opt, d, f"D_opt ~ C^{alloc.b:.3f}", "C1")):
    _solid_dashed(ax, grid, fn(grid), ok, label, None, color=color)
    ax.axhspan(trained.min(), trained.max(), color=color, alpha=0.07)
  if not ok.all():
    ax.plot([], [], "k--", label=unsupported)
  if boot is not None:
    samples = [(a.n_opt(grid), a.d_opt(grid)) for _, a in boot.allocations()]
    if samples:
      arr = np.array(samples)
      for i, color in ((0, "C0"), (1, "C1")):
        lo, hi = np.percentile(arr[:, i], [2.5, 97.5], axis=0)
        ax.fill_between(grid, lo, hi, color=color, alpha=0.2)
  ax.set(xscale="log", yscale="log", xlabel="training FLOPs C", ylabel="N_opt, D_opt",
         title="Compute-optimal allocation (shaded: trained N, D)")
  ax.legend(fontsize=8)
  return _save(fig, path)


def residuals_plot(fit: Fit, path: str) -> str:
  c = 6 * fit.inputs["N"] * fit.inputs["D"]
  fig, ax = plt.subplots(figsize=(6.4, 3.6))
  ax.scatter(c, fit.log_residuals, c=np.log10(fit.inputs["N"]), cmap="viridis", s=12)
  ax.axhline(0, color="k", lw=0.8)
  ax.set(xscale="log", xlabel="training FLOPs C", ylabel="log loss - log fit",
         title=f"Residuals ({fit.law.name})")
  return _save(fig, path)


def isoflop_plot(n, flops, loss, minima: IsoFlopMinima, path: str) -> str:
  fig, ax = plt.subplots(figsize=(6.4, 4.6))
  cmap = plt.get_cmap("plasma")
  for i, (budget, p, sel) in enumerate(zip(minima.flops, minima.parabolas, minima.groups)):
    color = cmap(i / max(1, len(minima.flops) - 1))
    ax.scatter(n[sel], loss[sel], color=color, s=14)
    x = np.linspace(np.log(n[sel].min()), np.log(n[sel].max()), 50)
    ax.plot(np.exp(x), p(x), color=color, lw=1, label=f"C = {budget:.2g}")
  ax.scatter(minima.n_opt, minima.loss_opt, marker="*", s=120, color="k", zorder=3,
             label="minima")
  ax.set(xscale="log", xlabel="parameters N", ylabel="loss", title="IsoFLOP curves")
  ax.legend(fontsize=7)
  return _save(fig, path)


def backtest_plot(bt: Backtest, path: str) -> str:
  """Held-out largest runs: predicted (with 95% interval) against actual."""
  fig, ax = plt.subplots(figsize=(5.2, 4.8))
  err = np.abs(bt.interval_95 - bt.predicted[None, :])
  colors = np.where(bt.inside_interval, "C0", "C3")
  ax.errorbar(bt.actual, bt.predicted, yerr=err, fmt="none", ecolor="0.6", lw=1)
  ax.scatter(bt.actual, bt.predicted, c=colors, s=18, zorder=3)
  lo = min(bt.actual.min(), bt.interval_95.min())
  hi = max(bt.actual.max(), bt.interval_95.max())
  ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
  ax.set(xlabel="actual loss (held out)", ylabel="predicted loss",
         title=f"Leave-largest-{bt.holdout_by}-out: {100 * bt.mean_relative_error:.2f}% mean "
               f"error, {100 * bt.coverage:.0f}% inside 95%")
  ax.title.set_fontsize(9)
  return _save(fig, path)


def fid_plot(flops, fid, name: str, path: str) -> str:
  ok = np.isfinite(fid)
  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  ax.scatter(flops[ok], fid[ok], s=14)
  ax.set(xscale="log", yscale="log", xlabel="training FLOPs C", ylabel=name,
         title=f"{name} vs compute")
  return _save(fig, path)


def fit_plots(fit: Fit, boot: Bootstrap | None, out_dir: str, marks=()) -> list[str]:
  """The loss-vs-compute, allocation and residual plots; `marks` as in loss_vs_compute."""
  return [loss_vs_compute(fit, boot, os.path.join(out_dir, "loss_vs_compute.png"), marks),
          allocation_plot(fit, boot, os.path.join(out_dir, "allocation.png"),
                          [m[0] for m in marks]),
          residuals_plot(fit, os.path.join(out_dir, "residuals.png"))]


def per_scale_plot(table, fits: list[dict], n, c, path: str) -> str:
  """VAR's per-scale laws: loss (top) and token error rate (bottom) of the last scale and
  of all tokens against N in billions (left) and C (right), log-log; every run faint, the
  runs each law was fitted to solid, the law over their range with its text as label."""
  from analysis import per_scale
  fig, axes = plt.subplots(2, 2, figsize=(10.5, 7.6))
  rows = (("loss", ("loss_last", "loss_avg")), ("token error rate", ("err_last", "err_avg")))
  by_key = {(f["metric"], f["x"]): f for f in fits}
  for r, (ylabel, metrics) in enumerate(rows):
    for col, role in enumerate(("N", "C")):
      ax = axes[r, col]
      for i, metric in enumerate(metrics):
        if metric not in table.columns:
          continue
        color = f"C{i}"
        x, y = per_scale.points(table, metric, role, n, c)
        ax.scatter(x, y, s=10, color=color, alpha=0.25)
        fit = by_key.get((metric, role), {})
        if "alpha" not in fit:
          ax.plot([], [], "o", color=color, label=f"{metric}: not fitted")
          continue
        chosen = np.isin(table["run"].astype(str).to_numpy(), fit["runs"]) \
            if "run" in table.columns else None
        if chosen is not None:
          cx, cy = per_scale.points(table[chosen], metric, role, np.asarray(n)[chosen],
                                    np.asarray(c)[chosen])
          ax.scatter(cx, cy, s=18, color=color)
        grid = np.geomspace(fit["x_range"][0] / 1.2, fit["x_range"][1] * 1.2, 50)
        ax.plot(grid, per_scale.power_law(grid, fit["alpha"], fit["beta"]), color=color,
                lw=1.3, label=f"{per_scale.law_text(fit)} (r = {fit['r']:.3f})")
      ax.set(xscale="log", yscale="log", ylabel=ylabel,
             xlabel="N (billions of parameters)" if role == "N" else "training FLOPs C")
      ax.set_title(f"{ylabel} vs {role}: " +
                   ("final run of each size" if role == "N" else "compute-efficient frontier"),
                   fontsize=9)
      if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
  fig.suptitle("VAR's per-scale laws: y = (beta X)^alpha (faint: all runs; solid: fitted)",
               fontsize=10)
  return _save(fig, path)


def repeated_plot(rows: list[dict], dc: Fit, path: str) -> str:
  """Repeated data (analysis/repeated.py): each repeated run's loss above the fresh-data
  forecast at its N and D (error bar: that forecast's 95% interval) against its epochs D/U,
  one colour per N; lines: the same excess under the fitted data-constrained law, L(N, D, U)
  - L(N, D, D), at each run's N and D as U shrinks."""
  fig, ax = plt.subplots(figsize=(6.4, 4.4))
  sizes = sorted({r["N"] for r in rows})
  for k, size in enumerate(sizes):
    mine = [r for r in rows if r["N"] == size]
    color = f"C{k}"
    epochs = np.array([r["epochs"] for r in mine])
    excess = np.array([r["excess"] for r in mine])
    iv = np.array([r["fresh_interval_95"] for r in mine])
    pred = np.array([r["fresh_forecast"] for r in mine])
    yerr = (np.abs(np.stack([pred - iv[:, 1], pred - iv[:, 0]]))
            if np.isfinite(iv).all() else None)
    ax.errorbar(epochs, excess, yerr=yerr, fmt="o", color=color, capsize=3,
                label=f"N = {_compact(size)} (measured)")
    d = mine[0]["D"]
    grid = np.geomspace(1.0, max(2.0, 1.5 * epochs.max()), 80)
    n_g, d_g = np.full_like(grid, size), np.full_like(grid, d)
    curve = (dc.predict({"N": n_g, "D": d_g, "U": d_g / grid})
             - dc.predict({"N": n_g, "D": d_g, "U": d_g}))
    ax.plot(grid, curve, "-", color=color, lw=1,
            label=f"N = {_compact(size)} (data-constrained fit)")
  ax.axhline(0.0, color="k", lw=0.8, ls="--")
  ax.set(xscale="log", xlabel="epochs D / U", ylabel="loss - fresh-data forecast (nats)",
         title="What repeating data cost (error bars: the fresh-data forecast's 95% interval)")
  ax.title.set_fontsize(9)
  ax.legend(fontsize=7)
  return _save(fig, path)
