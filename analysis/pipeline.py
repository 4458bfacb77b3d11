"""What `python -m analysis` computes: runs by role, fits with their uncertainty, both
allocation estimates, validity checks, forecasts and plans, as plain dicts (the JSON the
commands print). cli.py reads the arguments and prints; report.py writes report.md.

Data come from `--csv FILE` or `--runs DIR` (a registry read by `load_runs`); columns are
chosen by role: `--n-col` (parameters N), `--d-col` (tokens D) or `--c-col` (FLOPs C, with
D = C / (6 N)), `--loss-col`, `--fid-col`. A registry's `sweep.budget` groups IsoFLOP runs
by budget, and its `unique_tokens` / `epochs` columns give the data repetition (or `--u-col`,
or `--unique-tokens T`): the data-constrained law takes U = the unique tokens a run saw.
"""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np
import pandas as pd

from analysis import compute_optimal, constrained, farseer, laws, validity
from analysis.fitting import Fit, fit_law
from analysis.uncertainty import Backtest, Bootstrap, bootstrap, leave_largest_out
from analysis.validate import AnalysisError


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
    # Runs an early-stop sweep stopped are never mixed in silently (analysis.runs).
    table = load_runs(args.runs,
                      include_stopped_early=getattr(args, "include_stopped_early", False))
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
  return pd.to_numeric(table[name], errors="coerce").to_numpy(np.float64)


def data_column(table: pd.DataFrame, name: str, flag: str) -> np.ndarray:
  """A column every fitted row needs: missing or non-numeric values are refused, naming
  the runs (a registry) or CSV lines that hold them."""
  values = column(table, name, flag)
  bad = np.isnan(values)
  if bad.any():
    raise AnalysisError(f"{flag} {name!r} is missing or not a number (NaN) in "
                        f"{rows_named(table, bad)}")
  return values


def rows_named(table: pd.DataFrame, bad: np.ndarray) -> str:
  """'3 run(s): a, b, c' (a registry) or '2 CSV line(s): 4, 9': the rows where `bad`."""
  if "run_dir" in table.columns:
    where = list(table["run_dir"][bad].astype(str))
    unit = "run"
  else:
    where = [str(i + 2) for i in table.index[bad]]  # line 1 is the header
    unit = "CSV line"
  shown = ", ".join(where[:5]) + (f" and {len(where) - 5} more" if len(where) > 5 else "")
  return f"{len(where)} {unit}(s): {shown}"


def nd_inputs(table, args) -> dict[str, np.ndarray]:
  n = data_column(table, args.n_col, "--n-col")
  if args.d_col:
    d = data_column(table, args.d_col, "--d-col")
  elif args.c_col:
    d = data_column(table, args.c_col, "--c-col") / (6.0 * n)
  else:
    raise AnalysisError("give --d-col (tokens) or --c-col (training FLOPs)")
  return {"N": n, "D": d}


def sweep_budgets(table: pd.DataFrame) -> np.ndarray | None:
  """float64[runs]: each run's IsoFLOP budget when every run comes from an IsoFLOP sweep
  (sweep.json: budget_kind 'flops'); None otherwise (budgets are then runs whose FLOPs
  agree within a tolerance)."""
  if not {"sweep.budget_kind", "sweep.budget"} <= set(table.columns):
    return None
  if not (table["sweep.budget_kind"] == "flops").all():
    return None
  budget = pd.to_numeric(table["sweep.budget"], errors="coerce").to_numpy(np.float64)
  return budget if np.isfinite(budget).all() else None


def unique_tokens(table: pd.DataFrame, tokens: np.ndarray, override=None) -> np.ndarray | None:
  """float64[runs]: distinct training tokens per epoch, NaN where unknown: `override`
  (--unique-tokens T) for every run, else the registry's `unique_tokens` column, else
  D / its `epochs` column; None when none of them is there."""
  if override is not None:
    return np.full(len(tokens), float(override))
  for name, to_unique in (("unique_tokens", lambda u: u), ("epochs", lambda e: tokens / e)):
    if name in table.columns:
      values = pd.to_numeric(table[name], errors="coerce").to_numpy(np.float64)
      values = np.where(values > 0, values, np.nan)
      if np.isfinite(values).any():
        return to_unique(values)
  return None


@dataclasses.dataclass
class Data:
  """The runs by role; arrays are float64[runs] in table order."""
  table: pd.DataFrame
  inputs: dict[str, np.ndarray]  # N, D
  y: np.ndarray  # loss
  budget: np.ndarray | None  # a sweep's IsoFLOP budget per run
  unique_tokens: np.ndarray | None  # per run, NaN where unknown

  @property
  def flops(self) -> np.ndarray:
    return 6 * self.inputs["N"] * self.inputs["D"]


def load_data(args) -> Data:
  table = read_table(args)
  inputs = nd_inputs(table, args)
  y = data_column(table, args.loss_col, "--loss-col")
  if getattr(args, "u_col", None):  # the unique tokens each run saw: at most its D
    unique = data_column(table, args.u_col, "--u-col")
    over = unique > inputs["D"] * (1 + 1e-9)
    if over.any():
      raise AnalysisError(f"--u-col {args.u_col!r} exceeds the tokens D in "
                          f"{rows_named(table, over)}: U counts the unique tokens among the D a "
                          "run trained on (for a data set's distinct tokens an epoch, use the "
                          "registry's unique_tokens or --unique-tokens T)")
  else:
    unique = unique_tokens(table, inputs["D"], getattr(args, "unique_tokens", None))
  return Data(table, inputs, y, sweep_budgets(table), unique)


# ---------------------------------------------------------------- laws with U

def needs_unique(law_name: str) -> bool:
  return law_name in laws.LNDU_LAWS


def unique_known(data: Data) -> bool:
  return data.unique_tokens is not None and bool(np.isfinite(data.unique_tokens).all())


def law_inputs(law: laws.Law, data: Data) -> dict[str, np.ndarray]:
  """The runs' N, D and, for a law of U, the unique tokens each saw: min(U, D)."""
  if "U" not in law.inputs:
    return dict(data.inputs)
  if not unique_known(data):
    missing = ("" if data.unique_tokens is None else
               f" (unknown for {rows_named(data.table, ~np.isfinite(data.unique_tokens))})")
    raise AnalysisError(f"--law {law.name} needs each run's unique tokens U{missing}: give "
                        "--u-col COL, --unique-tokens T (distinct tokens an epoch, every run) "
                        "or a registry whose summary.json has unique_tokens or epochs")
  return {**data.inputs, "U": np.minimum(data.unique_tokens, data.inputs["D"])}


def law_names(args, data: Data, names: list[str]) -> list[str]:
  """The laws `fit` fits: `names` (--law, or the L(N, D) laws for auto), and for auto the
  laws of U too when every run's U is known. Points (--at) get U from --unique-tokens T
  (min(T, D)) when one of those laws needs it, and are refused without it, before any fit."""
  if args.law == "auto" and unique_known(data):
    names = [*names, *laws.LNDU_LAWS]
  args.at = with_unique(args.at, args, any(needs_unique(n) for n in names))
  return names


def with_unique(points: list[dict], args, needed: bool) -> list[dict]:
  if not needed:
    return points
  out = []
  for p in points:
    if "U" not in p:
      if getattr(args, "unique_tokens", None) is None:
        raise AnalysisError(f"--at N={p['N']:g},D={p['D']:g}: the data_constrained law needs "
                            "the unique tokens U a run trains on: add U=... (at most D) or "
                            "give --unique-tokens T")
      p = {**p, "U": min(args.unique_tokens, p["D"])}
    out.append(p)
  return out


# ---------------------------------------------------------------- fits

def allocation_of(fit: Fit) -> compute_optimal.Allocation:
  return compute_optimal.allocation_for(fit.law.name, fit.params,
                                        flops_range=compute_optimal.trained_flops(fit.inputs))


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
  """Loss (and its 95% interval) at each point; under a law of U, also what repetition
  costs there (`repetition`: epochs, effective epochs, the loss were every token unique)."""
  out = []
  for point in points:
    if not set(fit.law.inputs) <= set(point):
      raise AnalysisError(f"{fit.law.name} needs {', '.join(fit.law.inputs)} at every point; "
                          f"got {', '.join(k for k in point if k in 'NDCU')}")
    inputs = {k: np.array([point[k]]) for k in fit.law.inputs}
    row = {**point, "loss": float(fit.predict(inputs)[0]),
           "extrapolation": extrapolation(fit, point)}
    if boot is not None:
      lo, hi = boot.predict_interval(inputs)
      row["interval_95"] = [float(lo[0]), float(hi[0])]
    if "U" in fit.law.inputs:
      rep = {k: float(v) for k, v in constrained.repetition(
          fit.params, point["N"], point["D"], point["U"]).items()}
      rep["loss_if_unique"] = float(fit.predict({**inputs, "U": inputs["D"]})[0])
      rep["gain_if_unique"] = row["loss"] - rep["loss_if_unique"]
      row["repetition"] = rep
    out.append(row)
  return out


def optimal_point(fit: Fit, flops: float, unique: float | None = None) -> dict:
  """The compute-optimal (N, D) of a budget under the fitted law. Under a law of U with
  `unique` tokens available: the best split when data repeat, and `budget`, what more
  epochs and more data are worth there (constrained.budget_choice); without `unique`, the
  split with unlimited unique data."""
  if "U" in fit.law.inputs:
    if unique is None:
      best = constrained.best_split(fit.params, flops, None)
      return {"N": best["N"], "D": best["D"], "U": best["U"], "C": flops}
    choice = constrained.budget_choice(fit.params, flops, unique)
    best = choice["best"]
    return {"N": best["N"], "D": best["D"], "U": best["U"], "C": flops, "budget": choice}
  n = float(allocation_of(fit).n_opt(flops))
  return {"N": n, "D": flops / (6 * n), "C": flops}


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
    if fit.law.name in ("chinchilla", "data_constrained"):
      terms = [("N", "A / N^alpha", f"alpha = {p['alpha']:.3g}", p["A"] * n ** -p["alpha"]),
               ("D", "B / D^beta", f"beta = {p['beta']:.3g}", p["B"] * d ** -p["beta"])]
    elif fit.law.name == "farseer":
      kappa = np.exp(p["a1"] * n ** p["alpha"] + p["b1"])
      terms = [("D", "B(N) D^-kappa(N)", f"kappa(N) = {kappa.min():.3g}-{kappa.max():.3g}",
                farseer.d_term(p, n, d))]
    else:
      terms = [("N or D", "L - E", f"eta = {p['eta']:.3g}", fit.predict(fit.inputs) - p["E"])]
  return [f"{fit.law.name}: the runs show no dependence on {role}: {term} is under "
          f"{TERM_FRACTION:.1%} of the loss at every run ({exponent}), so that exponent, the "
          f"allocation and forecasts that vary {role} are not determined by the data. Add runs "
          f"that vary {role}, or check the columns."
          for role, term, exponent, value in terms if np.all(value < TERM_FRACTION * y)] + \
      unseen_repetition(fit)


def unseen_repetition(fit: Fit) -> list[str]:
  """Warnings for a law of U whose runs never repeat data (R_D* then stays where its start
  put it) or never exceed N_opt(U) (R_N* likewise)."""
  if "U" not in fit.law.inputs:
    return []
  p, n, d, u = fit.params, fit.inputs["N"], fit.inputs["D"], fit.inputs["U"]
  out = []
  if np.all(d <= u * (1 + 1e-9)):
    out.append(f"{fit.law.name}: no run repeats data (D <= U at every run), so R_D* = "
               f"{p['rd_star']:.3g} is not determined by the data, nor are forecasts that "
               "repeat it. Add runs of several epochs.")
  if np.all(n <= constrained.n_opt_for_unique(p, u)):
    out.append(f"{fit.law.name}: no run has more parameters than N_opt(U), the compute-optimal "
               f"size for its unique tokens, so R_N* = {p['rn_star']:.3g} is not determined by "
               "the data. Add larger models on few unique tokens.")
  return out


def fit_lnd(law_name: str, inputs, y, args) -> tuple[Fit, list[str]]:
  """Fits an L(N, D) law, with E fixed when --fix-e is given; returns the fit and warnings
  about what the data cannot tell (reports carry them under `warnings`)."""
  law = laws.law_by_name(law_name)
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


def approach2_report(data: Data, replicates: int, seed: int):
  """Approach 2 on the runs' IsoFLOP budgets: (IsoFlopMinima or None, its JSON), with a
  95% interval of a from a within-budget bootstrap when `replicates` > 0."""
  try:
    minima = compute_optimal.approach2(data.inputs["N"], data.flops, data.y,
                                       budget=data.budget)
  except AnalysisError as e:
    return None, {"skipped": str(e)}
  out = {**minima.allocation.to_dict(), "num_budgets": len(minima.flops),
         "budgets": minima.flops.tolist(), "n_opt": minima.n_opt.tolist(),
         "grouped_by": "sweep.budget" if data.budget is not None else "FLOPs within 5%"}
  if replicates:
    a = compute_optimal.approach2_exponents(data.inputs["N"], data.flops, data.y, replicates,
                                            budget=data.budget, seed=seed)
    if len(a) >= 2:
      out["interval_95_a"] = [float(np.percentile(a, 2.5)), float(np.percentile(a, 97.5))]
  return minima, out


@dataclasses.dataclass
class Fitted:
  fit: Fit
  boot: Bootstrap | None
  backtest: Backtest | None
  minima: compute_optimal.IsoFlopMinima | None  # Approach 2, when the runs allow it
  report: dict  # the JSON of all the above


def fit_report(law_name: str, data: Data, args, *, replicates: int,
               backtest: bool) -> Fitted:
  """The fit with `replicates` bootstrap refits (0: none), both allocation estimates and,
  if `backtest`, the leave-largest-out backtest (its plot goes to --plot-dir or --out)."""
  inputs = law_inputs(laws.law_by_name(law_name), data)
  fit, notes = fit_lnd(law_name, inputs, data.y, args)
  law = fit.law
  report = {"law": law.name, "formula": law.formula, **fit.params,
            "objective": fit.objective, "num_points": int(len(data.y)),
            "num_starts": fit.num_starts, "converged": fit.converged}
  if notes:
    report["warnings"] = notes
  report["allocation"] = allocation_of(fit).to_dict()
  boot = None
  if replicates:
    boot = bootstrap(fit, replicates, seed=args.seed)
    report["intervals_95"] = {k: list(v) for k, v in boot.intervals().items()}
    a_samples = [alloc.a for _, alloc in boot.allocations()]
    if a_samples:
      report["intervals_95"]["allocation_a"] = [float(np.percentile(a_samples, 2.5)),
                                                float(np.percentile(a_samples, 97.5))]
  minima, report["approach2"] = approach2_report(data, replicates, args.seed)
  bt = None
  if backtest:
    bt = leave_largest_out(law, inputs, data.y, seed=args.seed)
    report["backtest"] = bt.to_dict()
    out = getattr(args, "plot_dir", None) or getattr(args, "out", None)
    if out:
      from analysis import plots
      report.setdefault("plots", []).append(
          plots.backtest_plot(bt, os.path.join(out, f"backtest_{law.name}.png")))
  return Fitted(fit, boot, bt, minima, report)


def repetition_check(fit: Fit, d, unique) -> dict:
  """Check (f). A law of U models repeated data (D', R_D*), so many epochs are what it is
  for: they pass, and the detail says so."""
  record = validity.check_repetition(d, unique)
  if "U" in fit.law.inputs and record["status"] == "warn":
    record = {**record, "status": "pass",
              "detail": f"{record['detail']}; {fit.law.name} models the repetition (D', R_D*)"}
  return record


def validity_checks(fitted: Fitted, data: Data, args, flops=None) -> list[dict]:
  """analysis.validity's checks of an L(N, D) fit, and of the loss -> fd map when --fid-col
  is given. Support is over the compute range of `flops` (forecast or planned C; default:
  the trained compute range)."""
  fit, report = fitted.fit, fitted.report
  n, d, y = data.inputs["N"], data.inputs["D"], data.y
  if flops is None or not len(flops):
    flops = data.flops
  alloc = allocation_of(fit)
  intervals = report.get("intervals_95", {})
  a2 = report["approach2"]
  bt = fitted.backtest
  no_backtest = ("--no-backtest was given" if args.command == "fit" else
                 f"`{args.command}` does not run one (`fit` and `report` do)")
  return [
      validity.check_bracketing(n, data.flops, y, budget=data.budget),
      validity.check_support(alloc, [np.min(flops), np.max(flops)], n, d),
      validity.check_floor(fit.params["E"], float(np.min(y)), intervals.get("E"),
                           fixed=args.fix_e is not None),
      validity.check_agreement(a2.get("a"), alloc.a, a2_interval=a2.get("interval_95_a"),
                               a3_interval=intervals.get("allocation_a"),
                               skipped=a2.get("skipped"), num_budgets=a2.get("num_budgets")),
      validity.check_backtest(None if bt is None else bt.relative_errors,
                              None if bt is None else bt.coverage, skipped=no_backtest),
      repetition_check(fit, d, data.unique_tokens),
  ] + ([validity.check_fd_signal(y, column(data.table, args.fid_col, "--fid-col"),
                                 args.fid_col)] if getattr(args, "fid_col", None) else [])


# ---------------------------------------------------------------- FID

def fid_map(data: Data, args, replicates: int) -> tuple[Fit, Bootstrap]:
  """The loss -> FID map fitted on the runs that report both, and its bootstrap."""
  fid = column(data.table, args.fid_col, "--fid-col")
  ok = np.isfinite(fid) & (fid > 0)
  fit = fit_law(laws.LOSS_TO_FID, {"loss": data.y[ok]}, fid[ok])
  return fit, bootstrap(fit, replicates, seed=args.seed)


def fid_at(fit: Fit, boot: Bootstrap, losses) -> tuple[np.ndarray, np.ndarray]:
  """FID at `losses` through the map: values float64[k] and 95% intervals float64[k, 2]."""
  x = {"loss": np.asarray(losses, np.float64)}
  lo, hi = boot.predict_interval(x)
  return fit.predict(x), np.stack([lo, hi], 1)


def fid_forecast(fid: tuple[Fit, Bootstrap], losses) -> dict:
  fit, boot = fid
  values, intervals = fid_at(fit, boot, losses)
  return {"map": laws.LOSS_TO_FID.formula, **fit.params, "values": values.tolist(),
          "interval_95": intervals.tolist()}


# ---------------------------------------------------------------- forecasts and plans

def forecast(args) -> tuple[dict, Data]:
  """Loss (and FID) with 95% intervals at --at points and compute-optimal --flops budgets;
  validity checks with support over the compute range forecast; with --heldout DIR, the
  runs there forecast and compared with what they measured (analysis/heldout.py).
  With --law-file FILE the fit, its bootstrap and its runs come from FILE (`fit --save`):
  nothing is refitted."""
  from analysis import heldout
  law_file = getattr(args, "law_file", None)
  if law_file:
    from analysis import lawfile
    check_law_file_args(args)
    data, fitted = lawfile.load(law_file, args)
    law_name = fitted.fit.law.name
  else:
    data, fitted, law_name = load_data(args), None, args.law
  args.at = with_unique(list(args.at), args, needs_unique(law_name))
  held_dir = getattr(args, "heldout", None)
  if held_dir and needs_unique(law_name):
    raise AnalysisError(f"--heldout with --law {law_name} is not supported yet (the held-out "
                        "runs' U is not read); use --law chinchilla or overtrain")
  held = heldout.load(held_dir, args) if held_dir else None  # a mistake costs no fit
  replicates = args.bootstrap or 200
  if fitted is None:
    fitted = fit_report(law_name, data, args, replicates=replicates, backtest=False)
  fit = fitted.fit
  unique = getattr(args, "unique_tokens", None)
  points = list(args.at) + [optimal_point(fit, c, unique) for c in args.flops or []]
  report = {"law": fit.law.name, **fit.params, "predict": predictions(fit, fitted.boot, points)}
  if law_file:
    report["law_file"] = law_file
  if "warnings" in fitted.report:
    report["warnings"] = fitted.report["warnings"]
  fid = fid_map(data, args, replicates) if args.fid_col else None
  if fid and points:
    report["fid"] = fid_forecast(fid, [p["loss"] for p in report["predict"]])
  asked = [6 * p["N"] * p["D"] for p in points]
  if held is not None:
    report["heldout"] = heldout.block(args, held, fit, fitted.boot, fid)
    asked += [r["flops"] for r in report["heldout"]["runs"]]
  report["validity"] = validity_checks(fitted, data, args, asked)
  return report, data


def check_law_file_args(args) -> None:
  """--law-file brings its own fit and runs: flags that would choose others are mistakes."""
  clash = [flag for flag, given in (("--csv", args.csv), ("--runs", args.runs),
                                    ("--fid-col", args.fid_col),
                                    ("--fix-e", args.fix_e is not None),
                                    ("--u-col", getattr(args, "u_col", None)),
                                    ("--drop-top-loss", args.drop_top_loss)) if given]
  if clash:
    raise AnalysisError(f"--law-file {args.law_file} reuses a saved fit and its runs: drop "
                        f"{', '.join(clash)} (or fit again without --law-file)")


def plan_of(row: dict, args, trained: dict[str, np.ndarray]) -> dict:
  """A budget's plan from its compute-optimal prediction `row`: N_opt, D_opt, loss, the
  verdict against the `trained` N and D, and wall time on --accelerator."""
  flops = 6 * row["N"] * row["D"]
  hours = compute_optimal.wall_time_hours(flops, args.accelerator, args.mfu, args.chips)
  return {"flops": flops, "N_opt": row["N"], "D_opt": row["D"],
          "tokens_per_param": row["D"] / row["N"], "loss": row["loss"],
          "loss_interval_95": row.get("interval_95"), "extrapolation": row["extrapolation"],
          "verdict": validity.plan_verdict(row["N"], row["D"], trained["N"], trained["D"]),
          "accelerator": args.accelerator, "mfu": args.mfu, "chips": args.chips,
          "wall_time_hours": hours}


def plan(args) -> dict:
  args.at, args.flops = [], [args.plan_flops]
  report, data = forecast(args)
  out = plan_of(report["predict"][0], args, data.inputs)
  out["flops"] = args.plan_flops
  row = report["predict"][0]
  if "U" in row:  # a law of U: the plan's unique tokens, epochs, more data vs more epochs
    out.update(U=row["U"], repetition=row["repetition"])
    if "budget" in row:
      out["data_limit"] = row["budget"]
  out.update({"fid": report.get("fid"), "law": report["law"],
              "validity": report["validity"]})
  if "law_file" in report:
    out["law_file"] = report["law_file"]
  if "warnings" in report:
    out["warnings"] = report["warnings"]
  return out


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
