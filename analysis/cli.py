"""`python -m analysis`: fit, forecast, plan and report from a CSV or a run registry.

Data come from `--csv FILE` or `--runs DIR` (a registry read by `load_runs`); columns are
chosen by role: `--n-col` (parameters N), `--d-col` (tokens D) or `--c-col` (FLOPs C, with
D = C / (6 N)), `--loss-col`, `--fid-col`. Every user mistake exits 2 with one line, checked
before any fit; a file that cannot be read or written exits 1 with one line. Warnings print
as one `analysis: warning: ...` line each.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import warnings

import numpy as np
import pandas as pd

from analysis import compute_optimal, laws, validity
from analysis.arguments import (at_point, check_output_dir, count, fraction, positive_int,
                                positive_number, replicates)
from analysis.fitting import Fit, fit_law
from analysis.uncertainty import Bootstrap, bootstrap, leave_largest_out
from analysis.validate import AnalysisError

LND = ("chinchilla", "overtrain")


# ---------------------------------------------------------------- data

def read_table(args) -> pd.DataFrame:
  if bool(args.csv) == bool(args.runs):
    raise AnalysisError("give exactly one of --csv FILE or --runs DIR")
  if args.csv:
    if not os.path.isfile(args.csv):
      raise AnalysisError(f"CSV file not found: {args.csv}")
    try:
      table = pd.read_csv(args.csv)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
      raise AnalysisError(f"{args.csv} is not a readable CSV: {str(e).splitlines()[0]}") from None
  else:
    from analysis.runs import load_runs
    table = load_runs(args.runs)
    if table.empty:
      raise AnalysisError(f"no finished runs (summary.json) under {args.runs}")
  if args.drop_top_loss and args.drop_top_loss >= len(table):
    raise AnalysisError(f"--drop-top-loss {args.drop_top_loss} drops all {len(table)} rows")
  if args.drop_top_loss:
    table = table.sort_values(args.loss_col).iloc[:-args.drop_top_loss] \
        if args.loss_col in table else table
  return table


def column(table: pd.DataFrame, name: str, flag: str) -> np.ndarray:
  if name not in table.columns:
    raise AnalysisError(f"{flag} {name!r} is not a column; columns are: "
                        f"{', '.join(map(str, table.columns))}")
  values = pd.to_numeric(table[name], errors="coerce").to_numpy(np.float64)
  return values


def data_column(table: pd.DataFrame, name: str, flag: str) -> np.ndarray:
  """A column every fitted row needs: missing or non-numeric values are refused, naming
  the runs (a registry) or CSV lines that hold them."""
  values = column(table, name, flag)
  bad = np.isnan(values)
  if bad.any():
    if "run_dir" in table.columns:
      where = list(table["run_dir"][bad].astype(str))
      unit = "run"
    else:
      where = [str(i + 2) for i in table.index[bad]]  # line 1 is the header
      unit = "CSV line"
    shown = ", ".join(where[:5]) + (f" and {len(where) - 5} more" if len(where) > 5 else "")
    raise AnalysisError(f"{flag} {name!r} is missing or not a number (NaN) in {len(where)} "
                        f"{unit}(s): {shown}")
  return values


def nd_inputs(table, args) -> dict[str, np.ndarray]:
  n = data_column(table, args.n_col, "--n-col")
  if args.d_col:
    d = data_column(table, args.d_col, "--d-col")
  elif args.c_col:
    d = data_column(table, args.c_col, "--c-col") / (6.0 * n)
  else:
    raise AnalysisError("give --d-col (tokens) or --c-col (training FLOPs)")
  return {"N": n, "D": d}


# ---------------------------------------------------------------- fitting

def allocation_of(fit: Fit) -> compute_optimal.Allocation:
  return compute_optimal.allocation_for(fit.law.name, fit.params)


def extrapolation(fit: Fit, point: dict[str, float]) -> dict:
  """How far outside the fitted range a point is, per input (1 = inside)."""
  values = {role: (fit.inputs[role], point[role]) for role in fit.law.inputs}
  if {"N", "D"} <= set(values):  # compute can be out of range while N and D are not
    values["C"] = (6 * fit.inputs["N"] * fit.inputs["D"], 6 * point["N"] * point["D"])
  out = {}
  for role, (fitted, v) in values.items():
    lo, hi = fitted.min(), fitted.max()
    out[role] = float(v / hi if v > hi else (lo / v if v < lo else 1.0))
  out["beyond_fitted_range"] = any(v > 1.0 for v in out.values())
  return out


def predictions(fit: Fit, boot: Bootstrap | None, points) -> list[dict]:
  out = []
  for point in points:
    inputs = {k: np.array([point[k]]) for k in fit.law.inputs}
    row = {**point, "loss": float(fit.predict(inputs)[0]),
           "extrapolation": extrapolation(fit, point)}
    if boot is not None:
      lo, hi = boot.predict_interval(inputs)
      row["interval_95"] = [float(lo[0]), float(hi[0])]
    out.append(row)
  return out


# A fitted floor under this fraction of the lowest observed loss means the runs show none.
FLOOR_FRACTION = 0.01
# A term under this fraction of the loss at every run is one the runs do not show.
TERM_FRACTION = 1e-3


def unseen_terms(fit: Fit) -> list[str]:
  """Warnings for terms of an L(N, D) law that stay under TERM_FRACTION of the loss at
  every run: the fit then sends their exponents anywhere (alpha = 140 when the loss does
  not depend on N) and nothing that depends on them is determined by the data."""
  p, n, d, y = fit.params, fit.inputs["N"], fit.inputs["D"], fit.y
  with np.errstate(over="ignore", under="ignore"):
    if fit.law.name == "chinchilla":
      terms = [("N", "A / N^alpha", f"alpha = {p['alpha']:.3g}", p["A"] * n ** -p["alpha"]),
               ("D", "B / D^beta", f"beta = {p['beta']:.3g}", p["B"] * d ** -p["beta"])]
    else:
      terms = [("N or D", "L - E", f"eta = {p['eta']:.3g}", fit.predict(fit.inputs) - p["E"])]
  return [f"{fit.law.name}: the runs show no dependence on {role}: {term} is under "
          f"{TERM_FRACTION:.1%} of the loss at every run ({exponent}), so that exponent, the "
          f"allocation and forecasts that vary {role} are not determined by the data. Add runs "
          f"that vary {role}, or check the columns."
          for role, term, exponent, value in terms if np.all(value < TERM_FRACTION * y)]


def fit_lnd(law_name: str, inputs, y, args) -> tuple[Fit, list[str]]:
  """Fits an L(N, D) law, with E fixed when --fix-e is given; returns the fit and warnings
  about what the data cannot tell (reports carry them under `warnings`)."""
  law = laws.LND_LAWS[law_name]
  if args.fix_e is not None:
    lowest = float(np.nanmin(y))
    if not 0 < args.fix_e < lowest:
      raise AnalysisError(f"--fix-e {args.fix_e:g}: E must be positive and below the lowest "
                          f"observed loss ({lowest:.4g})")
    law = laws.with_floor(law, args.fix_e)
  fit = fit_law(law, inputs, y)
  notes = []
  floor, lowest = fit.params["E"], float(np.min(fit.y))
  if args.fix_e is None and floor < FLOOR_FRACTION * lowest:
    notes.append(
        f"{law.name}: E fitted to {floor:.3g}, under {FLOOR_FRACTION:.0%} of the lowest loss "
        f"({lowest:.4g}): these runs show no floor, so the law is a sum of power laws whose "
        f"forecasts fall toward 0 far from the data (optimistic). Add larger or longer runs, "
        f"or fix the floor with --fix-e (from a larger study or the data's entropy).")
  return fit, notes + unseen_terms(fit)


def fit_report(law_name: str, inputs, y, args) -> tuple[Fit, Bootstrap | None, dict]:
  fit, notes = fit_lnd(law_name, inputs, y, args)
  law = fit.law
  report = {"law": law.name, "formula": law.formula, **fit.params,
            "objective": fit.objective, "num_points": int(len(y)),
            "num_starts": fit.num_starts, "converged": fit.converged}
  if notes:
    report["warnings"] = notes
  alloc = allocation_of(fit)
  report["allocation"] = alloc.to_dict()
  boot = None
  if args.bootstrap:
    boot = bootstrap(fit, args.bootstrap, seed=args.seed)
    report["intervals_95"] = {k: list(v) for k, v in boot.intervals().items()}
    a_samples = [alloc.a for _, alloc in boot.allocations()]
    if a_samples:
      report["intervals_95"]["allocation_a"] = [float(np.percentile(a_samples, 2.5)),
                                                float(np.percentile(a_samples, 97.5))]
  backtest = None
  if not args.no_backtest:
    backtest = leave_largest_out(law, inputs, y, seed=args.seed)
    report["backtest"] = backtest.to_dict()
    if getattr(args, "plot_dir", None) or getattr(args, "out", None):
      from analysis import plots
      out = getattr(args, "plot_dir", None) or args.out
      report.setdefault("plots", []).append(
          plots.backtest_plot(backtest, os.path.join(out, f"backtest_{law.name}.png")))
  report["validity"] = validity_checks(fit, alloc, report.get("intervals_95", {}).get("E"),
                                       backtest, args)
  return fit, boot, report


def validity_checks(fit: Fit, alloc, e_interval, backtest, args) -> list[dict]:
  """analysis.validity's checks of an L(N, D) fit; support is over the trained compute."""
  n, d, y = fit.inputs["N"], fit.inputs["D"], fit.y
  flops = 6 * n * d
  return [
      validity.check_bracketing(n, flops, y),
      validity.check_support(alloc, [flops.min(), flops.max()], n, d),
      validity.check_floor(fit.params["E"], float(np.min(y)), e_interval,
                           fixed=args.fix_e is not None),
      validity.check_backtest(None if backtest is None else backtest.relative_errors,
                              None if backtest is None else backtest.coverage),
      validity.check_repetition(d, getattr(args, "unique_tokens", None)),
  ]


def cmd_fit(args) -> dict:
  table = read_table(args)
  inputs = nd_inputs(table, args)
  y = data_column(table, args.loss_col, "--loss-col")
  names = list(LND) if args.law == "auto" else [args.law]
  results = {name: fit_report(name, inputs, y, args) for name in names}
  if args.law == "auto":
    chosen = min(names, key=lambda n: results[n][2]["backtest"]["mean_relative_error"])
  else:
    chosen = names[0]
  fit, boot, report = results[chosen]
  if args.law == "auto":
    report["candidates"] = {n: {"backtest": results[n][2]["backtest"],
                                "objective": results[n][2]["objective"]} for n in names}
  if args.at:
    report["predict"] = predictions(fit, boot, args.at)
  if args.plot_dir:
    from analysis import plots
    report["plots"] = report.get("plots", []) + plots.fit_plots(fit, boot, args.plot_dir)
  return report


def cmd_forecast(args) -> dict:
  return forecast(args)[0]


def forecast(args) -> tuple[dict, dict[str, np.ndarray]]:
  """The forecast report and the fitted runs' N and D."""
  table = read_table(args)
  inputs = nd_inputs(table, args)
  y = data_column(table, args.loss_col, "--loss-col")
  fit, notes = fit_lnd(args.law, inputs, y, args)
  boot = bootstrap(fit, args.bootstrap or 200, seed=args.seed)
  points = list(args.at)
  alloc = allocation_of(fit)
  for c in args.flops or []:
    n = float(alloc.n_opt(c))
    points.append({"N": n, "D": c / (6 * n), "C": c})
  report = {"law": fit.law.name, **fit.params, "predict": predictions(fit, boot, points)}
  if notes:
    report["warnings"] = notes
  if args.fid_col:
    report["fid"] = fid_forecast(table, y, args, [p["loss"] for p in report["predict"]])
  return report, inputs


def fid_forecast(table, loss, args, at_losses) -> dict:
  """FID through the loss -> FID map fitted on the runs that report both."""
  fid = column(table, args.fid_col, "--fid-col")
  ok = np.isfinite(fid) & (fid > 0)
  fit = fit_law(laws.LOSS_TO_FID, {"loss": loss[ok]}, fid[ok])
  boot = bootstrap(fit, args.bootstrap or 200, seed=args.seed)
  x = {"loss": np.asarray(at_losses)}
  lo, hi = boot.predict_interval(x)
  return {"map": laws.LOSS_TO_FID.formula, **fit.params,
          "values": fit.predict(x).tolist(), "interval_95": np.stack([lo, hi], 1).tolist()}


def cmd_plan(args) -> dict:
  args.at = []
  args.flops = [args.plan_flops]
  report, trained = forecast(args)
  row = report["predict"][0]
  hours = compute_optimal.wall_time_hours(args.plan_flops, args.accelerator, args.mfu,
                                          args.chips)
  return {"flops": args.plan_flops, "N_opt": row["N"], "D_opt": row["D"],
          "tokens_per_param": row["D"] / row["N"], "loss": row["loss"],
          "loss_interval_95": row.get("interval_95"), "extrapolation": row["extrapolation"],
          "verdict": validity.plan_verdict(row["N"], row["D"], trained["N"], trained["D"]),
          "fid": report.get("fid"), "accelerator": args.accelerator, "mfu": args.mfu,
          "chips": args.chips, "wall_time_hours": hours, "law": report["law"],
          **({"warnings": report["warnings"]} if "warnings" in report else {})}


def cmd_report(args) -> dict:
  from analysis import plots
  args.at, args.flops = [], []
  table = read_table(args)
  inputs = nd_inputs(table, args)
  y = data_column(table, args.loss_col, "--loss-col")
  fit, boot, report = fit_report(args.law, inputs, y, args)
  os.makedirs(args.out, exist_ok=True)
  report["plots"] = report.get("plots", []) + plots.fit_plots(fit, boot, args.out)
  try:
    minima = compute_optimal.approach2(inputs["N"], 6 * inputs["N"] * inputs["D"], y)
    report["approach2"] = minima.allocation.to_dict()
    report["plots"].append(plots.isoflop_plot(inputs["N"], 6 * inputs["N"] * inputs["D"], y,
                                              minima, os.path.join(args.out, "isoflop.png")))
  except AnalysisError as e:
    report["approach2"] = {"skipped": str(e)}
  if args.fid_col and args.fid_col in table.columns:
    fid = column(table, args.fid_col, "--fid-col")
    report["plots"].append(plots.fid_plot(6 * inputs["N"] * inputs["D"], fid, args.fid_col,
                                          os.path.join(args.out, "fid_vs_compute.png")))
  with open(os.path.join(args.out, "report.json"), "w") as f:
    json.dump(jsonable(report), f, indent=2, allow_nan=False)
  return report


# ---------------------------------------------------------------- arguments

def check_args(args) -> None:
  """What one argument's type cannot check: combinations, output directories."""
  if args.d_col and args.c_col:
    raise AnalysisError("give --d-col or --c-col, not both")
  if args.command == "fit" and args.law == "auto" and args.no_backtest:
    raise AnalysisError("--law auto chooses by backtest; drop --no-backtest")
  if args.command == "forecast" and not args.at and not args.flops:
    raise AnalysisError("give --at N=...,D=... and/or --flops C")
  if getattr(args, "plot_dir", None):
    check_output_dir(args.plot_dir, "--plot-dir")
  if getattr(args, "out", None):
    check_output_dir(args.out, "--out")


# ---------------------------------------------------------------- parser

def _unique_tokens_arg(p):
  p.add_argument("--unique-tokens", type=positive_number, default=None, metavar="T",
                 help="distinct tokens in one epoch of the training data: the validity "
                      "checks then report epochs per run (warn above 4)")


def _data_args(p, registry_defaults: bool = False):
  p.add_argument("--csv", help="a CSV with one row per run")
  p.add_argument("--runs", help="a run registry directory (see docs/analysis.md)")
  p.add_argument("--n-col", default="params", help="parameter count column (default params)")
  p.add_argument("--d-col", default=None, help="token count column")
  p.add_argument("--c-col", default=None, help="training FLOPs column (D = C / 6N)")
  p.add_argument("--loss-col", default="loss")
  p.add_argument("--fid-col", default=None, help="FID (or fd_<net>) column")
  p.add_argument("--drop-top-loss", type=count, default=0, metavar="K",
                 help="drop the K highest-loss rows first (Epoch drops 5 on Chinchilla)")
  p.add_argument("--bootstrap", type=replicates, default=0, metavar="K",
                 help="bootstrap replicates (0: none; forecast and plan then use 200)")
  p.add_argument("--seed", type=count, default=0)
  p.add_argument("--fix-e", type=positive_number, default=None, metavar="E",
                 help="fix the irreducible loss E of an L(N, D) law instead of fitting it")
  p.add_argument("--json", action="store_true", help="print JSON")


class _Parser(argparse.ArgumentParser):
  """argparse that reports a mistake in one line, like every other refusal here."""

  def error(self, message: str):
    self.exit(2, f"analysis: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
  parser = _Parser(prog="python -m analysis", description=__doc__.split("\n")[0])
  sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
  fit = sub.add_parser("fit", help="fit an L(N, D) law")
  _data_args(fit)
  fit.add_argument("--law", choices=[*LND, "auto"], default="chinchilla")
  fit.add_argument("--at", action="append", type=at_point, default=[], metavar="N=..,D=..",
                   help="predict at this point (repeatable)")
  fit.add_argument("--no-backtest", action="store_true")
  fit.add_argument("--plot-dir", default=None)
  _unique_tokens_arg(fit)
  fit.set_defaults(func=cmd_fit)
  fc = sub.add_parser("forecast", help="loss (and FID) with intervals at new N, D or C")
  _data_args(fc)
  fc.add_argument("--law", choices=LND, default="chinchilla")
  fc.add_argument("--at", action="append", type=at_point, default=[], metavar="N=..,D=..")
  fc.add_argument("--flops", action="append", type=positive_number, default=[],
                  help="compute-optimal forecast at this FLOP budget (repeatable)")
  fc.set_defaults(func=cmd_forecast, no_backtest=True)
  plan = sub.add_parser("plan", help="N_opt, D_opt, loss/FID and wall time for a budget")
  _data_args(plan)
  plan.add_argument("--flops", dest="plan_flops", type=positive_number, required=True)
  plan.add_argument("--law", choices=LND, default="chinchilla")
  plan.add_argument("--accelerator", default="h100",
                    choices=sorted(compute_optimal.PEAK_FLOPS))
  plan.add_argument("--mfu", type=fraction, default=0.4)
  plan.add_argument("--chips", type=positive_int, default=1)
  plan.set_defaults(func=cmd_plan, no_backtest=True)
  rep = sub.add_parser("report", help="fit, backtest, Approach 2 and all plots into --out")
  _data_args(rep)
  rep.add_argument("--law", choices=LND, default="chinchilla")
  rep.add_argument("--out", default="reports/analysis")
  _unique_tokens_arg(rep)
  rep.set_defaults(func=cmd_report, no_backtest=False)
  return parser


def jsonable(value):
  """`value` as plain JSON: numpy scalars and arrays as Python ones, NaN and +-inf as null
  (JSON has neither; Python's json would write them anyway)."""
  if isinstance(value, dict):
    return {str(k): jsonable(v) for k, v in value.items()}
  if isinstance(value, np.ndarray):
    value = value.tolist()
  if isinstance(value, (list, tuple)):
    return [jsonable(v) for v in value]
  if isinstance(value, np.generic):
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def _print(report: dict, as_json: bool) -> None:
  report = jsonable(report)
  if as_json:
    print(json.dumps(report, indent=2, allow_nan=False))
    return
  for key, value in report.items():
    if key == "warnings":
      for note in value:
        print(f"{'warning':>22}: {note}")
    elif key == "validity":
      for r in value:
        print(f"{'[' + r['status'] + '] ' + r['check']:>22}: {r['detail']}")
    elif isinstance(value, float):
      print(f"{key:>22}: {value:.6g}")
    else:
      print(f"{key:>22}: {json.dumps(value, allow_nan=False)}")


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
  print(f"analysis: warning: {' '.join(str(message).splitlines())}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
  # Warnings print as one line during the command only: the process-wide format stays.
  with warnings.catch_warnings():
    warnings.showwarning = _show_warning
    args = build_parser().parse_args(argv)
    try:
      check_args(args)
      report = args.func(args)
    except AnalysisError as e:
      print(f"analysis: error: {e}", file=sys.stderr)
      return 2
    except OSError as e:  # a file that cannot be read or written
      where = f"{e.filename}: {e.strerror}" if e.filename and e.strerror else str(e)
      print(f"analysis: error: {where}", file=sys.stderr)
      return 1
  _print(report, args.json)
  return 0
