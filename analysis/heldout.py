"""Held-out validation: forecast runs the fit never saw and compare with what they measured.

A study trains its fitted runs into one registry and, separately, runs at a larger budget
or model into another (`--heldout DIR`). Each held-out run is forecast from the fit alone
(loss with its 95% prediction interval from the bootstrap, and --fid-col through the
loss -> FID map) and set against its measured values: relative error (pred - measured) /
measured and whether the measurement lies inside the interval. The FID interval carries
the loss forecast's uncertainty too: each bootstrap loss sample goes through one replicate
of the map, with one of the map's residuals.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from analysis import pipeline
from analysis.fitting import Fit
from analysis.uncertainty import Bootstrap
from analysis.validate import AnalysisError, check_positive_finite


def load(path: str, args) -> pd.DataFrame:
  """The finished runs under `path`, by role: columns run, N, D, loss and (when --fid-col
  is given and the registry has it) fid, NaN where a run lacks it. The same loader and
  column flags as --runs; --drop-top-loss does not apply. Mistakes are one line."""
  from analysis.runs import load_runs
  try:
    if not os.path.isdir(path):
      raise AnalysisError("no such directory")
    table = load_runs(path)
    if table.empty:
      raise AnalysisError("no finished runs (summary.json) there")
    inputs = pipeline.nd_inputs(table, args)
    loss = pipeline.data_column(table, args.loss_col, "--loss-col")
    for role, values in (*inputs.items(), ("the loss", loss)):
      check_positive_finite(role, values)
  except AnalysisError as e:
    raise AnalysisError(f"--heldout {path}: {e}") from None
  out = pd.DataFrame({"run": table["run"].astype(str), "N": inputs["N"], "D": inputs["D"],
                      "loss": loss})
  if args.fid_col and args.fid_col in table.columns:
    out["fid"] = pipeline.column(table, args.fid_col, "--fid-col")
  return out.reset_index(drop=True)


def _fid_samples(loss_KxR: np.ndarray, fid: tuple[Fit, Bootstrap]) -> np.ndarray:
  """float64[K, runs]: FID forecasts with the loss's and the map's uncertainty: bootstrap
  loss sample k (residual included) through map replicate k (cycled), plus a map residual."""
  fid_fit, fid_boot = fid
  thetas = fid_boot.thetas_KxP
  log_fid = np.log(np.stack([fid_fit.law.predict(thetas[i % len(thetas)], {"loss": loss})
                             for i, loss in enumerate(loss_KxR)]))
  rng = np.random.default_rng([fid_boot.seed, 2])
  return np.exp(log_fid + rng.choice(fid_fit.log_residuals, size=log_fid.shape))


def _summary(errors: np.ndarray, inside: np.ndarray) -> dict:
  if not len(errors):
    return {"num_runs": 0}
  return {"num_runs": int(len(errors)),
          "median_abs_relative_error": float(np.median(np.abs(errors))),
          "max_abs_relative_error": float(np.max(np.abs(errors))),
          "num_inside": int(np.sum(inside)), "coverage": float(np.mean(inside))}


def evaluate(fit: Fit, boot: Bootstrap, fid: tuple[Fit, Bootstrap] | None,
             heldout: pd.DataFrame, level: float = 0.95) -> dict:
  """Forecasts of the `heldout` runs (a frame as `load` returns) from `fit`, intervals
  from `boot`, FID through the map `fid` (its fit and bootstrap; None: no FID), against
  their measured values. Rows by N then D; `vs_fitted_max` is each of N, D and C = 6ND
  over the largest the fit saw (> 1: beyond)."""
  rows = heldout.iloc[np.lexsort((heldout["D"], heldout["N"]))].reset_index(drop=True)
  x = {"N": rows["N"].to_numpy(np.float64), "D": rows["D"].to_numpy(np.float64)}
  flops = 6 * x["N"] * x["D"]
  fitted_max = {"N": float(fit.inputs["N"].max()), "D": float(fit.inputs["D"].max()),
                "C": float(np.max(6 * fit.inputs["N"] * fit.inputs["D"]))}
  loss = rows["loss"].to_numpy(np.float64)
  pred = fit.predict(x)
  samples = boot.predict_samples(x)
  lo, hi = (np.percentile(samples, q, axis=0) for q in (50 * (1 - level), 50 * (1 + level)))
  loss_err = (pred - loss) / loss
  loss_in = (loss >= lo) & (loss <= hi)

  has_fid = fid is not None and "fid" in rows.columns
  if has_fid:
    measured = rows["fid"].to_numpy(np.float64)
    fid_pred = fid[0].predict({"loss": pred})
    f_samples = _fid_samples(samples, fid)
    f_lo, f_hi = (np.percentile(f_samples, q, axis=0)
                  for q in (50 * (1 - level), 50 * (1 + level)))
    fid_err = (fid_pred - measured) / measured
    fid_in = (measured >= f_lo) & (measured <= f_hi)
    known = np.isfinite(measured) & (measured > 0)

  out_rows = []
  for i, name in enumerate(rows["run"]):
    row = {"run": str(name), "N": x["N"][i], "D": x["D"][i], "flops": flops[i],
           "vs_fitted_max": {"N": x["N"][i] / fitted_max["N"], "D": x["D"][i] / fitted_max["D"],
                             "C": flops[i] / fitted_max["C"]},
           "loss": loss[i], "loss_forecast": pred[i], "loss_interval_95": [lo[i], hi[i]],
           "loss_relative_error": loss_err[i], "loss_inside": bool(loss_in[i])}
    if has_fid:
      row.update(fid=measured[i] if known[i] else None, fid_forecast=fid_pred[i],
                 fid_interval_95=[f_lo[i], f_hi[i]])
      if known[i]:
        row.update(fid_relative_error=fid_err[i], fid_inside=bool(fid_in[i]))
    out_rows.append(row)

  summary = {"loss": _summary(loss_err, loss_in)}
  if has_fid:
    summary["fid"] = _summary(fid_err[known], fid_in[known])
  return {"num_runs": len(out_rows), "level": level, "num_fitted": int(len(fit.y)),
          "fitted_max": fitted_max, "runs": out_rows, "summary": summary}


def block(args, table: pd.DataFrame, fit: Fit, boot: Bootstrap,
          fid: tuple[Fit, Bootstrap] | None, fid_skipped: str | None = None) -> dict:
  """report.json's and forecast's `heldout`: the runs of `table` (`load(args.heldout)`)
  evaluated, with where they came from and the FID column (or why FID was not forecast)."""
  out = {"source": args.heldout, "fid_col": args.fid_col, **evaluate(fit, boot, fid, table)}
  if args.fid_col and "fid" not in table.columns:
    out["fid_skipped"] = f"the held-out runs have no {args.fid_col!r} column"
  elif args.fid_col and fid is None:
    out["fid_skipped"] = fid_skipped or "no loss -> FID map"
  return out
