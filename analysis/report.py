"""`python -m analysis report`: the fit, its validity checks, forecasts (--at), the plan
(--flops), held-out runs forecast and compared with their measurements (--heldout DIR),
what repeating data cost runs on fixed subsets (--repeated DIR, analysis/repeated.py), the
learning-curve backtest (--curve-backtest FILE), the sampling frontier (--sampling-table
FILE, analysis/frontier.py), VAR's per-scale laws (analysis/per_scale.py) and every plot,
written to --out as report.json (for machines) and report.md (for people, rendered by
report_md from the same dict)."""

from __future__ import annotations

import json
import os

import numpy as np

from analysis import (extrapolate, frontier, heldout, laws, per_scale, pipeline, plots,
                      repeated, report_md, validity)
from analysis.validate import AnalysisError

# Bootstrap refits of the data-constrained law in --repeated (7 parameters: each refit is a
# multi-start fit, so fewer than the main law's --bootstrap).
REPEATED_REPLICATES = 50


def runs_table(data: pipeline.Data, fid_col: str | None) -> list[dict]:
  """One row per run, by N then D: run, N, D, D/N, epochs (None when unknown), FLOPs (6ND),
  loss and the --fid-col value."""
  table = data.table
  names = (table["run"].astype(str).to_numpy() if "run" in table.columns
           else np.array([str(i + 1) for i in range(len(table))]))
  n, d = data.inputs["N"], data.inputs["D"]
  epochs = d / data.unique_tokens if data.unique_tokens is not None else np.full(len(n), np.nan)
  fid = (pipeline.column(table, fid_col, "--fid-col") if fid_col and fid_col in table.columns
         else np.full(len(n), np.nan))
  rows = []
  for i in np.lexsort((d, n)):
    row = {"run": names[i], "N": n[i], "D": d[i], "tokens_per_param": d[i] / n[i],
           "epochs": epochs[i] if np.isfinite(epochs[i]) else None, "flops": 6 * n[i] * d[i],
           "loss": data.y[i]}
    if fid_col:
      row["fid"] = fid[i] if np.isfinite(fid[i]) else None
    rows.append(row)
  return rows


def with_fid(rows: list[dict], fid) -> None:
  """Adds `fid` and `fid_interval_95` to each prediction row through the fitted map."""
  if fid is None or not rows:
    return
  values, intervals = pipeline.fid_at(*fid, [r["loss"] for r in rows])
  for row, v, iv in zip(rows, values, intervals):
    row["fid"], row["fid_interval_95"] = float(v), iv.tolist()


def vs_trained(row: dict, data: pipeline.Data) -> dict:
  """Per input, (factor, 'inside' | 'beyond' | 'below') against the trained range; also
  for the compute 6ND, which can lie beyond the runs' while N and D each lie inside."""
  out = {role: list(validity.extrapolation(row[role], data.inputs[role]))
         for role in ("N", "D")}
  out["C"] = list(validity.extrapolation(6 * row["N"] * row["D"],
                                         6 * data.inputs["N"] * data.inputs["D"]))
  return out


def per_scale_block(data: pipeline.Data, out: str) -> dict:
  """report.json's `per_scale`: VAR's laws of the runs' per-scale metrics against N and C
  (the report's 6ND), and their figure when a main metric was fitted."""
  n, c = data.inputs["N"], data.flops
  block = per_scale.fit_all(data.table, n, c)
  fitted = [f for f in block.get("fits", []) if f["metric"] in per_scale.MAIN and "alpha" in f]
  if fitted:
    block["plot"] = plots.per_scale_plot(data.table, block["fits"], n, c,
                                         os.path.join(out, "per_scale.png"))
  return block


def build(args) -> dict:
  data = pipeline.load_data(args)
  held = heldout.load(args.heldout, args) if args.heldout else None  # before any fit
  repeated_runs = (repeated.load(args.repeated, args)
                   if getattr(args, "repeated", None) else None)
  # Inputs read before any fit, so a bad file costs no time.
  curves = (extrapolate.read_backtest(args.curve_backtest)
            if getattr(args, "curve_backtest", None) else None)
  table = getattr(args, "sampling_table", None)
  sampled = frontier.block(table, args.out) if table else None  # no fit: cheap
  replicates = args.bootstrap or 200
  fitted = pipeline.fit_report(args.law, data, args, replicates=replicates, backtest=True)
  fit, boot = fitted.fit, fitted.boot
  model = "a VAR model" if args.runs else "a model"
  report = {"question": args.question or report_md.default_question(
      args.at, args.flops, args.fid_col, model), "fid_col": args.fid_col,
      "bootstrap": replicates, **fitted.report}

  forecasts = pipeline.predictions(fit, boot, args.at)
  planned = (pipeline.predictions(fit, boot, [pipeline.optimal_point(fit, args.flops)])
             if args.flops else [])
  fid = None
  if args.fid_col:
    try:
      fid = pipeline.fid_map(data, args, replicates)
      report["fid_map"] = {"column": args.fid_col, "map": laws.LOSS_TO_FID.formula,
                           **fid[0].params, "intervals_95": fid[1].intervals(),
                           "num_points": int(len(fid[0].y))}
    except AnalysisError as e:
      report["fid_map"] = {"column": args.fid_col, "skipped": str(e)}
  if held is not None:
    report["heldout"] = heldout.block(args, held, fit, boot, fid,
                                      report.get("fid_map", {}).get("skipped"))
  with_fid(forecasts + planned, fid)
  for row in forecasts:
    row["vs_trained"] = vs_trained(row, data)
  report["forecasts"] = forecasts
  if planned:
    row = planned[0]
    report["plan"] = {**pipeline.plan_of(row, args, data.inputs), "flops": args.flops,
                      **{k: row[k] for k in ("fid", "fid_interval_95") if k in row}}

  asked = [6 * r["N"] * r["D"] for r in forecasts] + ([args.flops] if args.flops else [])
  asked += [r["flops"] for r in report.get("heldout", {}).get("runs", [])]
  report["validity"] = pipeline.validity_checks(fitted, data, args,
                                                np.concatenate([data.flops, asked]))

  os.makedirs(args.out, exist_ok=True)
  marks = [(6 * r["N"] * r["D"], r["loss"], r.get("interval_95"),
            f"forecast {report_md.point_name(r)}") for r in forecasts]
  marks += [(args.flops, r["loss"], r.get("interval_95"), f"plan {report_md.num(args.flops)} "
             f"FLOPs") for r in planned]
  report["plots"] = report.get("plots", []) + plots.fit_plots(fit, boot, args.out, marks)
  if fitted.minima is not None:
    report["plots"].append(plots.isoflop_plot(data.inputs["N"], data.flops, data.y,
                                              fitted.minima,
                                              os.path.join(args.out, "isoflop.png")))
  if args.fid_col and args.fid_col in data.table.columns:
    values = pipeline.column(data.table, args.fid_col, "--fid-col")
    report["plots"].append(plots.fid_plot(data.flops, values, args.fid_col,
                                          os.path.join(args.out, "fid_vs_compute.png")))
  report["runs"] = runs_table(data, args.fid_col)
  if repeated_runs is not None:
    report["repeated"] = repeated.block(args, data, fit, boot, repeated_runs,
                                        REPEATED_REPLICATES, args.out)
  if curves is not None:
    report["curve_backtest"] = curves
  if sampled is not None:
    report["sampling_frontier"] = sampled
  report["per_scale"] = per_scale_block(data, args.out)
  return write(report, args.out)


def write(report: dict, out: str) -> dict:
  """report.json and report.md in `out`; returns the report (as plain JSON values) with
  `report_md` set to the markdown's path."""
  report = pipeline.jsonable(report)
  with open(os.path.join(out, "report.json"), "w") as f:
    json.dump(report, f, indent=2, allow_nan=False)
  md = os.path.join(out, "report.md")
  title = f"Scaling-law report: {os.path.basename(os.path.normpath(out))}"
  with open(md, "w") as f:
    f.write(report_md.render(report, title))
  return {**report, "report_md": md}
