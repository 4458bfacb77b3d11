"""Repeated data in a report (`report --repeated DIR`): what epochs cost the runs that repeat.

A study fits L(N, D) on runs that never repeat a token and trains a few extra runs on fixed
subsets of the data (sweeps/demo-repeat.yaml: two sizes x two subset sizes, `-U<images>`
names) into another registry. This block sets each repeated run against

- the main law's forecast at its N and D, which assumes every token is fresh: the excess
  (measured - forecast, with the forecast's 95% interval) is what repetition cost it, as far
  as the law's own error allows one to tell (the interval is the yardstick);
- the data-constrained law (Muennighoff et al. 2023; laws.DATA_CONSTRAINED) fitted to the
  unique-data runs and the repeated ones together (U = min(unique tokens, D) per run), with
  bootstrap intervals: R_D*, the effective epochs of each run and what four epochs are worth
  (published: 3.73 with R_D* = 15.4).

The verdict says plainly what a handful of runs at one budget can and cannot pin down: an
R_D* whose interval spans orders of magnitude is "not determined", and R_N* is never
determined unless some run is larger than the compute-optimal size of its unique tokens.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from analysis import constrained, pipeline
from analysis.fitting import Fit
from analysis.uncertainty import Bootstrap, bootstrap
from analysis.validate import AnalysisError

LAW = "data_constrained"
# Published (Muennighoff et al. 2023): R_D* = 15.387756, so four epochs are worth
# 1 + R_D* (1 - exp(-3 / R_D*)) = 3.73 unique ones.
PUBLISHED_RD_STAR = 15.387756
# R_D* counts as determined when its 95% interval is narrower than this factor.
DETERMINED_FACTOR = 10.0


def load(path: str, args) -> pipeline.Data:
  """The finished runs under `path` as pipeline.Data, with the same column flags as --runs;
  every run must know its unique tokens (summary.json's unique_tokens). One line otherwise."""
  if not os.path.isdir(path):
    raise AnalysisError(f"--repeated {path}: no such directory")
  sub = argparse.Namespace(**{**vars(args), "runs": path, "csv": None, "drop_top_loss": 0,
                              "u_col": None, "unique_tokens": None})
  try:
    data = pipeline.load_data(sub)
  except AnalysisError as e:
    raise AnalysisError(f"--repeated {path}: {e}") from None
  if not pipeline.unique_known(data):
    raise AnalysisError(f"--repeated {path}: the runs do not record unique_tokens (train them "
                        "with data.unique_images, as sweeps/demo-repeat.yaml does)")
  return data


def _union(a: pipeline.Data, b: pipeline.Data) -> tuple[dict, np.ndarray]:
  """The law inputs (N, D, U = min(U, D)) and losses of both sets of runs."""
  u_a = a.unique_tokens if pipeline.unique_known(a) else a.inputs["D"]  # fresh: U = D
  inputs = {k: np.concatenate([a.inputs[k], b.inputs[k]]) for k in ("N", "D")}
  inputs["U"] = np.minimum(np.concatenate([u_a, b.unique_tokens]), inputs["D"])
  return inputs, np.concatenate([a.y, b.y])


def _interval_factor(iv) -> float:
  lo, hi = iv
  return float(hi / lo) if lo > 0 else float("inf")


def block(args, main: pipeline.Data, fit: Fit, boot: Bootstrap | None,
          repeated: pipeline.Data, replicates: int, out_dir: str | None = None) -> dict:
  """report.json's `repeated`: every repeated run against the main law's fresh-data forecast,
  the data-constrained law fitted to all runs (with `replicates` bootstrap refits), the
  verdict and, with `out_dir`, the figure repeated_data.png."""
  n, d = repeated.inputs["N"], repeated.inputs["D"]
  u = np.minimum(repeated.unique_tokens, d)
  order = np.lexsort((d / u, n))
  pred = fit.predict({"N": n, "D": d})
  if boot is not None:
    lo, hi = boot.predict_interval({"N": n, "D": d})
  else:
    lo = hi = np.full(len(n), np.nan)

  inputs, y = _union(main, repeated)
  sub = argparse.Namespace(**{**vars(args), "fix_e": None})
  dc, notes = pipeline.fit_lnd(LAW, inputs, y, sub)
  dc_boot = bootstrap(dc, replicates, seed=args.seed) if replicates else None
  params = dc.params
  rep = constrained.repetition(params, n, d, u)
  dc_pred = dc.predict({"N": n, "D": d, "U": u})

  rows = []
  names = repeated.table["run"].astype(str).to_numpy() if "run" in repeated.table else \
      np.array([f"run {i}" for i in range(len(n))])
  for i in order:
    rows.append({"run": str(names[i]), "N": float(n[i]), "D": float(d[i]), "U": float(u[i]),
                 "epochs": float(d[i] / u[i]), "loss": float(repeated.y[i]),
                 "fresh_forecast": float(pred[i]),
                 "fresh_interval_95": [float(lo[i]), float(hi[i])],
                 "excess": float(repeated.y[i] - pred[i]),
                 "beyond_interval": bool(repeated.y[i] > hi[i]),
                 "data_constrained": float(dc_pred[i]),
                 "effective_epochs": float(rep["effective_epochs"][i])})

  out = {"source": getattr(args, "repeated", None), "law": dc.law.name,
         "formula": dc.law.formula, "params": params, "num_points": int(len(y)),
         "num_repeated": int(len(n)), "num_fresh": int(len(main.y)), "runs": rows,
         "published_rd_star": PUBLISHED_RD_STAR,
         "published_four_epochs_worth": float(constrained.effective_epochs(4.0,
                                                                           PUBLISHED_RD_STAR)),
         "four_epochs_worth": float(constrained.effective_epochs(4.0, params["rd_star"]))}
  if notes:
    out["notes"] = notes
  if dc_boot is not None:
    ivs = {k: [float(a), float(b)] for k, (a, b) in dc_boot.intervals().items()}
    out["intervals_95"] = ivs
    rd = ivs.get("rd_star")
    if rd:
      worth = constrained.effective_epochs(4.0, dc_boot.param_samples()["rd_star"])
      out["four_epochs_worth_interval_95"] = [float(np.percentile(worth, 2.5)),
                                              float(np.percentile(worth, 97.5))]
      out["rd_star_determined"] = bool(_interval_factor(rd) < DETERMINED_FACTOR)
    if ivs.get("rn_star"):
      out["rn_star_determined"] = bool(_interval_factor(ivs["rn_star"]) < DETERMINED_FACTOR)
  out["verdict"] = verdict(out)
  if out_dir:
    from analysis import plots
    out["plot"] = plots.repeated_plot(rows, dc, os.path.join(out_dir, "repeated_data.png"))
  return out


def verdict(block: dict) -> str:
  """One plain sentence: did these runs measure a cost of repetition, and is R_D* pinned?"""
  runs = block["runs"]
  beyond = [r for r in runs if r["beyond_interval"]]
  most = max(runs, key=lambda r: r["epochs"])
  said = (f"{len(beyond)} of {len(runs)} repeated runs ended above the fresh-data forecast's "
          f"95% interval (the most repeated, {most['epochs']:.3g} epochs, by "
          f"{most['excess']:+.3g} nats)")
  if "rd_star_determined" not in block:
    return said + "; no bootstrap, so R_D* has no interval."
  rd, iv = block["params"]["rd_star"], block["intervals_95"]["rd_star"]
  rn = ("" if block.get("rn_star_determined", True) else
        "; R_N* (excess parameters) is not determined either")
  if block["rd_star_determined"]:
    return (said + f"; R_D* = {rd:.3g} [{iv[0]:.3g}, {iv[1]:.3g}] is determined by these "
            f"runs within a factor of {_interval_factor(iv):.3g}{rn}.")
  return (said + f"; R_D* = {rd:.3g} [{iv[0]:.3g}, {iv[1]:.3g}] is not determined by these "
          f"runs (its interval spans more than a factor of {DETERMINED_FACTOR:g}){rn}: do not "
          "plan repeated-data budgets from this fit; train more epochs, more sizes or another "
          "budget on small subsets.")
