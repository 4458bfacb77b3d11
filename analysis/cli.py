"""`python -m analysis`: fit, forecast, plan and report from a CSV or a run registry.

Data come from `--csv FILE` or `--runs DIR` (a registry read by `load_runs`); columns are
chosen by role: `--n-col` (parameters N), `--d-col` (tokens D) or `--c-col` (FLOPs C, with
D = C / (6 N)), `--loss-col`, `--fid-col`. Every user mistake exits 2 with one line, checked
before any fit; a file that cannot be read or written exits 1 with one line. Warnings print
as one `analysis: warning: ...` line each. What the commands compute is in pipeline.py;
`forecast --heldout DIR` and `report --heldout DIR` compare forecasts of runs the fit
never saw with their measurements (heldout.py); `report` writes report.json and report.md
(report.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

from analysis import compute_optimal, pipeline
from analysis.arguments import (at_point, check_output_dir, check_output_file, count,
                                fraction, law_params, pairs, positive_int, positive_number,
                                replicates)
from analysis.pipeline import jsonable
from analysis.validate import AnalysisError

LND = ("chinchilla", "overtrain")
# `fit` also takes Farseer (analysis/farseer.py); it has no constant floor for --fix-e.
FIT_LAWS = (*LND, "farseer")
# Laws of N, D and the unique tokens U (Muennighoff et al.; analysis/constrained.py).
U_LAWS = ("data_constrained",)


def cmd_fit(args) -> dict:
  data = pipeline.load_data(args)
  names = [n for n in FIT_LAWS if n != "farseer" or args.fix_e is None] \
      if args.law == "auto" else [args.law]
  names = pipeline.law_names(args, data, names)  # auto: + data_constrained when U is known
  results = {name: pipeline.fit_report(name, data, args, replicates=args.bootstrap,
                                       backtest=not args.no_backtest) for name in names}
  if args.law == "auto":
    chosen = min(names, key=lambda n: results[n].report["backtest"]["mean_relative_error"])
  else:
    chosen = names[0]
  fitted = results[chosen]
  report = fitted.report
  if args.law == "auto":
    report["candidates"] = {n: {"backtest": results[n].report["backtest"],
                                "objective": results[n].report["objective"]} for n in names}
  report["validity"] = pipeline.validity_checks(fitted, data, args)
  if args.at:
    report["predict"] = pipeline.predictions(fitted.fit, fitted.boot, args.at)
  if args.plot_dir:
    from analysis import plots
    marks = [(6 * p["N"] * p["D"], p["loss"], p.get("interval_95"),
              f"N={p['N']:.3g}, D={p['D']:.3g}") for p in report.get("predict", [])]
    report["plots"] = report.get("plots", []) + plots.fit_plots(fitted.fit, fitted.boot,
                                                                args.plot_dir, marks)
  if args.save:  # the chosen fit, its bootstrap and runs, for forecast/plan --law-file
    from analysis import lawfile
    report["saved"] = lawfile.save(args.save, fitted, data, args)
  return report


def cmd_forecast(args) -> dict:
  return pipeline.forecast(args)[0]


def cmd_plan(args) -> dict:
  if args.images is not None:  # a quality target for M images: analysis/sampling.py
    from analysis import sampling
    return sampling.plan(args)
  return pipeline.plan(args)


def cmd_predict(args) -> dict:
  from analysis import lawfile
  return lawfile.predict(args)


def cmd_report(args) -> dict:
  from analysis import report
  return report.build(args)


# ---------------------------------------------------------------- arguments

def check_args(args) -> None:
  """What one argument's type cannot check: combinations, output directories."""
  if args.command == "predict":  # no data: its checks need the law (lawfile.predict)
    return
  if args.d_col and args.c_col:
    raise AnalysisError("give --d-col or --c-col, not both")
  if args.command == "fit" and args.law == "farseer" and args.fix_e is not None:
    raise AnalysisError("--fix-e: farseer has no constant floor to fix (exp(a3 N^gamma + b3) "
                        "varies with N)")
  if args.command == "fit" and args.law == "auto" and args.no_backtest:
    raise AnalysisError("--law auto chooses by backtest; drop --no-backtest")
  if args.command == "plan":
    _check_plan_args(args)
  if args.command == "forecast" and not args.at and not args.flops and not args.heldout:
    raise AnalysisError("give --at N=...,D=..., --flops C and/or --heldout DIR")
  if getattr(args, "heldout", None) and not os.path.isdir(args.heldout):
    raise AnalysisError(f"--heldout {args.heldout}: no such directory")
  if getattr(args, "plot_dir", None):
    check_output_dir(args.plot_dir, "--plot-dir")
  if getattr(args, "out", None):
    check_output_dir(args.out, "--out")
  if getattr(args, "save", None):
    check_output_file(args.save, "--save")
  if getattr(args, "law_file", None) and not os.path.isfile(args.law_file):
    raise AnalysisError(f"--law-file {args.law_file}: no such file")


def _check_plan_args(args) -> None:
  """plan: a training budget (--flops), or M images at a quality target."""
  target = args.target_fd is not None or args.target_fid is not None
  if args.images is None:
    if target or args.sampling_table:
      raise AnalysisError("--target-fd/--target-fid/--sampling-table plan M images: add "
                          "--images M")
    if args.plan_flops is None:
      raise AnalysisError("give --flops C (a training budget) or --images M with --target-fd "
                          "X or --target-fid F")
    return
  if args.plan_flops is not None:
    raise AnalysisError("give --flops C (a training budget) or --images M (a quality target), "
                        "not both")
  if not target:
    raise AnalysisError("--images M needs a target: --target-fd X or --target-fid F")
  if not args.sampling_table and not args.runs:
    raise AnalysisError("--images M chooses among --sampling-table FILE (`varjax eval "
                        "sampling`) and/or the --runs registry; give one")
  if args.csv:
    raise AnalysisError("--images M reads --sampling-table and --runs, not --csv")


# ---------------------------------------------------------------- parser

def _unique_tokens_arg(p):
  p.add_argument("--unique-tokens", type=positive_number, default=None, metavar="T",
                 help="distinct tokens in one epoch of the training data: the validity "
                      "checks then report epochs per run (warn above 4); overrides a "
                      "registry's unique_tokens / epochs columns; data_constrained: each run "
                      "sees min(T, D) unique tokens, and forecasts and plans assume T")
  p.add_argument("--u-col", default=None, metavar="COL",
                 help="data_constrained: the unique tokens each run trained on (<= D); "
                      "default: min(D, the registry's unique_tokens or --unique-tokens)")


def _law_file_arg(p):
  p.add_argument("--law-file", default=None, metavar="FILE",
                 help="reuse the fit saved by `fit --save FILE` (law, bootstrap, runs) "
                      "instead of fitting; no --csv/--runs")


def _heldout_arg(p):
  p.add_argument("--heldout", default=None, metavar="DIR",
                 help="a registry of runs the fit does not see (e.g. a larger budget): each "
                      "is forecast from the fit and compared with its measured loss (and "
                      "--fid-col); same columns and flags as --runs")


def _hardware_args(p):
  p.add_argument("--accelerator", default="h100", choices=sorted(compute_optimal.PEAK_FLOPS))
  p.add_argument("--mfu", type=fraction, default=0.4)
  p.add_argument("--chips", type=positive_int, default=1)


def _data_args(p, registry_defaults: bool = False):
  p.add_argument("--csv", help="a CSV with one row per run")
  p.add_argument("--runs", help="a run registry directory (see docs/analysis.md)")
  p.add_argument("--include-stopped-early", action="store_true",
                 help="--runs: also the runs an early-stop sweep stopped, with the loss of "
                      "their last eval before the stop (left out by default)")
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
  fit.add_argument("--law", choices=[*FIT_LAWS, *U_LAWS, "auto"], default="chinchilla")
  fit.add_argument("--at", action="append", type=at_point, default=[], metavar="N=..,D=..",
                   help="predict at this point (repeatable)")
  fit.add_argument("--no-backtest", action="store_true")
  fit.add_argument("--plot-dir", default=None)
  fit.add_argument("--save", default=None, metavar="FILE",
                   help="write the fit (with its bootstrap and runs) to FILE, a law file for "
                        "forecast/plan --law-file")
  _unique_tokens_arg(fit)
  fit.set_defaults(func=cmd_fit)
  fc = sub.add_parser("forecast", help="loss (and FID) with intervals at new N, D or C")
  _data_args(fc)
  fc.add_argument("--law", choices=[*LND, *U_LAWS], default="chinchilla")
  _law_file_arg(fc)
  fc.add_argument("--at", action="append", type=at_point, default=[], metavar="N=..,D=..")
  fc.add_argument("--flops", action="append", type=positive_number, default=[],
                  help="compute-optimal forecast at this FLOP budget (repeatable)")
  _heldout_arg(fc)
  _unique_tokens_arg(fc)
  fc.set_defaults(func=cmd_forecast, no_backtest=True)
  plan = sub.add_parser("plan", help="N_opt, D_opt, loss/FID and wall time for a budget; "
                                     "or the model and sampler for M images at a target")
  _data_args(plan)
  plan.add_argument("--flops", dest="plan_flops", type=positive_number, default=None,
                    help="the training budget to split into N_opt, D_opt")
  plan.add_argument("--images", type=positive_number, default=None, metavar="M",
                    help="instead of --flops: the (model, sampler) reaching --target-fd/"
                         "--target-fid for M images at the least training + sampling FLOPs")
  target = plan.add_mutually_exclusive_group()
  target.add_argument("--target-fd", type=positive_number, default=None, metavar="X",
                      help="--images: the fd_<network> to reach (<= X)")
  target.add_argument("--target-fid", type=positive_number, default=None, metavar="F",
                      help="--images: the FID to reach (<= F)")
  plan.add_argument("--sampling-table", default=None, metavar="FILE",
                    help="--images: the candidates measured by `varjax eval sampling`")
  plan.add_argument("--law", choices=[*LND, *U_LAWS], default="chinchilla")
  _law_file_arg(plan)
  _hardware_args(plan)
  _unique_tokens_arg(plan)
  plan.set_defaults(func=cmd_plan, no_backtest=True)
  rep = sub.add_parser("report", help="fit, checks, forecasts, plan and plots into --out: "
                                      "report.json and report.md")
  _data_args(rep)
  rep.add_argument("--law", choices=LND, default="chinchilla")
  rep.add_argument("--out", default="reports/analysis")
  rep.add_argument("--at", action="append", type=at_point, default=[], metavar="N=..,D=..",
                   help="forecast loss (and --fid-col) at this point (repeatable)")
  rep.add_argument("--flops", type=positive_number, default=None, metavar="C",
                   help="plan: the compute-optimal split of this FLOP budget")
  rep.add_argument("--question", default=None, metavar="TEXT",
                   help="the question the report answers (default: made from --at, --flops "
                        "and --fid-col)")
  _heldout_arg(rep)
  rep.add_argument("--repeated", default=None, metavar="DIR",
                   help="a registry of runs on fixed subsets of the data (data.unique_images): "
                        "each is set against the fresh-data forecast, and the data-constrained "
                        "law is fitted to them and the --runs together (analysis/repeated.py)")
  rep.add_argument("--curve-backtest", default=None, metavar="FILE",
                   help="a learning-curve backtest (`extrapolate --backtest DIR --json > "
                        "FILE`): its MAPE table and what it says, in the report")
  rep.add_argument("--sampling-table", default=None, metavar="FILE",
                   help="a sampling table (`varjax eval sampling --out FILE`): the sampling "
                        "frontier, quality against sampling FLOPs (analysis/frontier.py)")
  _hardware_args(rep)
  _unique_tokens_arg(rep)
  rep.set_defaults(func=cmd_report, no_backtest=False)
  pred = sub.add_parser("predict", help="evaluate a law at given parameters (a published "
                                        "law, say) at N, D[, U] points; no data, no fit")
  pred.add_argument("--law", required=True, help="chinchilla, overtrain, data_constrained, ...")
  pred.add_argument("--params", type=law_params, required=True, metavar="K=V,...",
                    help="every parameter of the law by name (E=..,A=..; e^X for exp(X))")
  pred.add_argument("--at", action="append", type=pairs, required=True,
                    metavar="N=..,D=..[,U=..]", help="a point (repeatable)")
  pred.add_argument("--json", action="store_true", help="print JSON")
  pred.set_defaults(func=cmd_predict)
  from analysis import critical_batch, extrapolate, hparams
  extrapolate.add_parser(sub)
  hparams.add_parser(sub)
  critical_batch.add_parser(sub)
  return parser


def _print(report: dict, as_json: bool) -> None:
  report = jsonable(report)
  if as_json:
    print(json.dumps({k: v for k, v in report.items() if k not in ("report_md", "text")},
                     indent=2, allow_nan=False))
    return
  if "text" in report:  # a command that formats its own table (extrapolate)
    print(report["text"])
    return
  if "report_md" in report:  # `report`: a summary; the rest is in report.md
    from analysis import report_md
    print(report_md.summary(report, report["report_md"]))
    return
  for key, value in report.items():
    if key == "warnings":
      for note in value:
        print(f"{'warning':>22}: {note}")
    elif key == "heldout":
      from analysis import report_md
      print(f"{'heldout':>22}:")
      print("\n".join(report_md.heldout_section({key: value})))
    elif key == "validity":
      for r in value:
        print(f"{'[' + r['status'] + '] (' + r['number'] + ') ' + r['check']:>22}: "
              f"{r['detail']}")
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
