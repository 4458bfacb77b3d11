"""Scaling-law plots (matplotlib, Agg): frontier with bands, IsoFLOPs, allocation, residuals."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from analysis.compute_optimal import IsoFlopMinima, allocation_for  # noqa: E402
from analysis.fitting import Fit  # noqa: E402
from analysis.uncertainty import Backtest, Bootstrap  # noqa: E402


def _save(fig, path: str) -> str:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def _allocation(fit: Fit):
  return allocation_for(fit.law.name, fit.params)


def loss_vs_compute(fit: Fit, boot: Bootstrap | None, path: str, extend: float = 100.0) -> str:
  """Runs coloured by N; the compute-optimal frontier L(N_opt(C), D_opt(C)) with its band."""
  n, d, y = fit.inputs["N"], fit.inputs["D"], fit.y
  c = 6 * n * d
  fig, ax = plt.subplots(figsize=(6.4, 4.6))
  sc = ax.scatter(c, y, c=np.log10(n), cmap="viridis", s=14, label="runs")
  fig.colorbar(sc, ax=ax, label="log10 N (parameters)")
  grid = np.geomspace(c.min(), c.max() * extend, 100)
  alloc = _allocation(fit)
  frontier = fit.predict({"N": alloc.n_opt(grid), "D": alloc.d_opt(grid)})
  ax.plot(grid, frontier, "k-", lw=1.5, label=f"{fit.law.name} frontier")
  if boot is not None:
    curves = [fit.law.predict(theta, {"N": a.n_opt(grid), "D": a.d_opt(grid)})
              for theta, a in boot.allocations()]
    if curves:
      lo, hi = np.percentile(np.array(curves), [2.5, 97.5], axis=0)
      ax.fill_between(grid, lo, hi, color="k", alpha=0.15, label="95% band (bootstrap)")
  ax.axvspan(c.max(), grid[-1], color="orange", alpha=0.08, label="extrapolation")
  ax.set(xscale="log", yscale="log", xlabel="training FLOPs C = 6ND", ylabel="loss",
         title="Loss vs compute")
  ax.legend(fontsize=8)
  return _save(fig, path)


def allocation_plot(fit: Fit, boot: Bootstrap | None, path: str, extend: float = 100.0) -> str:
  c = 6 * fit.inputs["N"] * fit.inputs["D"]
  grid = np.geomspace(c.min(), c.max() * extend, 100)
  alloc = _allocation(fit)
  fig, ax = plt.subplots(figsize=(6.4, 4.6))
  for fn, label, color in ((alloc.n_opt, f"N_opt ~ C^{alloc.a:.3f}", "C0"),
                           (alloc.d_opt, f"D_opt ~ C^{alloc.b:.3f}", "C1")):
    ax.plot(grid, fn(grid), color=color, label=label)
  if boot is not None:
    samples = [(a.n_opt(grid), a.d_opt(grid)) for _, a in boot.allocations()]
    if samples:
      arr = np.array(samples)
      for i, color in ((0, "C0"), (1, "C1")):
        lo, hi = np.percentile(arr[:, i], [2.5, 97.5], axis=0)
        ax.fill_between(grid, lo, hi, color=color, alpha=0.2)
  ax.set(xscale="log", yscale="log", xlabel="training FLOPs C", ylabel="N_opt, D_opt",
         title="Compute-optimal allocation")
  ax.legend()
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
  for i, (budget, p) in enumerate(zip(minima.flops, minima.parabolas)):
    color = cmap(i / max(1, len(minima.flops) - 1))
    sel = np.abs(np.log(flops / budget)) < 0.05
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


def fit_plots(fit: Fit, boot: Bootstrap | None, out_dir: str) -> list[str]:
  return [loss_vs_compute(fit, boot, os.path.join(out_dir, "loss_vs_compute.png")),
          allocation_plot(fit, boot, os.path.join(out_dir, "allocation.png")),
          residuals_plot(fit, os.path.join(out_dir, "residuals.png"))]
