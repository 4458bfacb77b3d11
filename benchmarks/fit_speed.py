"""Chinchilla Approach 3 fit speed: our batched L-BFGS vs scipy's L-BFGS-B, side by side.

Same data (Epoch's 240 points), same objective (Huber 1e-3 on log residuals, summed), same
4500-start grid. scipy runs one start at a time with a jitted float64 value-and-gradient;
it is timed on every k-th start (--scipy-every) and scaled to the whole grid, which the
output says. Usage: python benchmarks/fit_speed.py [--json] [--scipy-every 10]
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import scipy.optimize

from analysis import CHINCHILLA, bootstrap, fit_law, reference_data
from analysis.fitting import huber

CSV = reference_data("chinchilla_epoch_points.csv")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--csv", default=CSV)
  parser.add_argument("--scipy-every", type=int, default=10)
  parser.add_argument("--bootstrap", type=int, default=200)
  parser.add_argument("--json", action="store_true")
  args = parser.parse_args()
  df = pd.read_csv(args.csv).sort_values("loss").iloc[:-5]
  n = df["Model Size"].to_numpy()
  inputs = {"N": n, "D": df["Training FLOP"].to_numpy() / (6 * n)}
  loss = df["loss"].to_numpy()

  t = time.perf_counter()
  fit_law(CHINCHILLA, inputs, loss)
  cold = time.perf_counter() - t
  t = time.perf_counter()
  fit = fit_law(CHINCHILLA, inputs, loss)
  warm = time.perf_counter() - t
  bootstrap(fit, 4, seed=1)  # compile the bootstrap shape once
  t = time.perf_counter()
  boot = bootstrap(fit, args.bootstrap, seed=0)
  boot_time = time.perf_counter() - t

  grid = CHINCHILLA.start_grid()
  subset = grid[::args.scipy_every]
  with jax.enable_x64(True):
    feats = tuple(jnp.asarray(f) for f in CHINCHILLA.features(inputs))
    log_y = jnp.asarray(np.log(loss))
    value_and_grad = jax.jit(jax.value_and_grad(
        lambda th: jnp.sum(huber(CHINCHILLA.log_predict(th, feats) - log_y, 1e-3))))
    fun = lambda x: tuple(np.asarray(v, np.float64) for v in value_and_grad(jnp.asarray(x)))
    fun(grid[0])
    t = time.perf_counter()
    best = None
    for x0 in subset:
      res = scipy.optimize.minimize(fun, x0, jac=True, method="L-BFGS-B",
                                    options={"ftol": 1e-15, "gtol": 1e-10, "maxiter": 10000,
                                             "maxfun": 20000})
      if best is None or res.fun < best.fun:
        best = res
    scipy_subset = time.perf_counter() - t
  scipy_full = scipy_subset * len(grid) / len(subset)
  result = {
      "starts": len(grid),
      "ours_grid_fit_s": warm, "ours_grid_fit_with_compile_s": cold,
      "ours_bootstrap_s": boot_time, "bootstrap_replicates": args.bootstrap,
      "scipy_starts_timed": len(subset), "scipy_timed_s": scipy_subset,
      "scipy_full_grid_s_extrapolated": scipy_full,
      "speedup_vs_scipy": scipy_full / warm,
      "ours_objective": fit.objective, "scipy_best_objective_on_subset": float(best.fun),
      "params": fit.params,
      "alpha_interval_95": boot.intervals()["alpha"],
  }
  if args.json:
    print(json.dumps(result, indent=2))
    return
  print(f"Chinchilla Approach 3, {len(grid)} starts, 240 points, Huber 1e-3 summed")
  print(f"  ours  grid fit            {warm:8.2f} s  ({cold:.2f} s with compilation)")
  print(f"  ours  {args.bootstrap} bootstrap refits  {boot_time:8.2f} s")
  print(f"  scipy L-BFGS-B            {scipy_full:8.2f} s  (timed {scipy_subset:.2f} s on "
        f"{len(subset)} starts, scaled to {len(grid)})")
  print(f"  speed-up over scipy       {scipy_full / warm:8.1f} x")
  print(f"  best objective: ours {fit.objective:.10g}, scipy (subset) {best.fun:.10g}")


if __name__ == "__main__":
  main()
