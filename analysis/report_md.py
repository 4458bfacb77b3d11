"""report.md and the report's text summary: pure functions of the report.json dict.

Sections: Question; Runs; Fitted law; Validity checklist; Forecasts; Held-out runs (only
with --heldout); Compute-optimal plan; Per-scale laws (VAR's form; when report.json has
`per_scale`, as `report` always writes it); Repeated data (only with --repeated);
Learning-curve extrapolation (only with --curve-backtest); Sampling frontier (only with
--sampling-table); Figures; What the numbers say. Every number comes
from the dict (3 significant figures), and every sentence is made from those numbers, so
the text cannot drift from report.json.
"""

from __future__ import annotations

import math
import os
import re
from typing import Sequence

from analysis import per_scale
from analysis.per_scale import MAIN as PER_SCALE_MAIN

SECTIONS = ("Question", "Runs", "Fitted law", "Validity checklist", "Forecasts",
            "Compute-optimal plan", "Figures", "What the numbers say")
# Sections shown only when report.json has their key, each after the section named.
PER_SCALE = "Per-scale laws (VAR's form)"
REPEATED = "Repeated data (epochs)"
CURVES = "Learning-curve extrapolation (backtest)"
FRONTIER = "Sampling frontier"
# Each is inserted right after the section named, so among those after one section the
# last listed comes first.
OPTIONAL = {"Held-out runs": ("heldout", "Forecasts"),
            FRONTIER: ("sampling_frontier", "Compute-optimal plan"),
            CURVES: ("curve_backtest", "Compute-optimal plan"),
            REPEATED: ("repeated", "Compute-optimal plan"),
            PER_SCALE: ("per_scale", "Compute-optimal plan")}
STATUS = {"pass": "✅ pass", "warn": "⚠️ warn", "skip": "➖ skip"}


def num(x) -> str:
  """3 significant figures; powers of ten as 2.5e7 outside [1e-3, 1e4); '–' for none."""
  if x is None or (isinstance(x, float) and not math.isfinite(x)):
    return "–"
  x = float(f"{float(x):.3g}")  # rounded first: 999.6 -> 1000
  if x == 0 or 1e-3 <= abs(x) < 1e3:
    return f"{x:.3g}"
  if 1e3 <= abs(x) < 1e4:  # 1840, not 1.84e+03
    return f"{x:.0f}"
  mantissa, exponent = f"{x:.2e}".split("e")
  mantissa = mantissa.rstrip("0").rstrip(".")
  return f"{mantissa}e{int(exponent)}"


def interval(iv) -> str:
  return "" if not iv else f"[{num(iv[0])}, {num(iv[1])}]"


def with_interval(x, iv) -> str:
  return f"{num(x)} {interval(iv)}".strip()


def point_name(point: dict) -> str:
  return f"N={num(point['N'])}, D={num(point['D'])}"


def default_question(points: Sequence[dict], flops: float | None, fid_col: str | None,
                     model: str = "a model") -> str:
  """The question the report answers, from what it was asked to forecast and plan."""
  target = "loss" + (f" and {fid_col}" if fid_col else "")
  parts = []
  if points:
    where = " and ".join(f"N={num(p['N'])} parameters on D={num(p['D'])} tokens"
                         for p in points)
    parts.append(f"What {target} will {model} of {where} reach")
  if flops:
    verb = "how should" if parts else "How should"
    parts.append(f"{verb} {num(flops)} FLOPs be split between parameters and tokens")
  if not parts:
    return (f"What scaling law do these runs follow, and can its {target} forecasts be "
            f"trusted?")
  return ", and ".join(parts) + "?"


# ---------------------------------------------------------------- sections

def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
  return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] +
          ["| " + " | ".join(r) + " |" for r in rows])


def runs_section(report: dict) -> list[str]:
  runs, fd = report.get("runs", []), report.get("fid_col")
  if not runs:
    return ["No runs."]
  ns, ds, cs = ([r[k] for r in runs] for k in ("N", "D", "flops"))
  lines = [f"{len(runs)} runs: N {num(min(ns))}-{num(max(ns))}, D {num(min(ds))}-"
           f"{num(max(ds))} tokens, C {num(min(cs))}-{num(max(cs))} FLOPs (6ND).", ""]
  header = ["run", "N", "D", "D/N", "epochs", "FLOPs", "loss"] + ([fd] if fd else [])
  rows = [[str(r["run"]), num(r["N"]), num(r["D"]), num(r["tokens_per_param"]),
           num(r.get("epochs")), num(r["flops"]), num(r["loss"])] +
          ([num(r.get("fid"))] if fd else []) for r in runs]
  return lines + _table(header, rows)


def _substituted(formula: str, params: dict) -> str:
  """The formula with each parameter's value in place of its name."""
  names = sorted((k for k in params if isinstance(params[k], (int, float))), key=len,
                 reverse=True)
  if not names:
    return formula
  pattern = re.compile(r"\b(" + "|".join(map(re.escape, names)) + r")\b")
  return pattern.sub(lambda m: num(params[m.group(1)]), formula)


LAW_PARAMS = {"chinchilla": ("E", "A", "B", "alpha", "beta"), "overtrain": ("E", "a", "b", "eta")}


def law_section(report: dict) -> list[str]:
  names = [k for k in LAW_PARAMS.get(report["law"], ()) if k in report]
  params = {k: report[k] for k in names}
  formula = report["formula"].split(",  E = ")[0]  # a fixed floor is stated below
  plain = formula.replace("L = ", "L(N, D) = ", 1)
  iv = report.get("intervals_95", {})
  lines = [f"`{plain}`", "", f"`{_substituted(plain, params)}`", ""]
  lines += _table(["parameter", "value", "95% interval"],
                  [[k, num(report[k]), interval(iv.get(k)) or "–"] for k in names])
  fixed = report["formula"].split(",  E = ")[1:]
  lines += ["", f"Fitted to {report['num_points']} runs ({report['law']} law, "
                f"{report['num_starts']} starts)" +
            (f"; E = {fixed[0]}" if fixed else "") +
            (f"; intervals from {report['bootstrap']} bootstrap refits over runs"
             if report.get("bootstrap") else "") + "."]
  alloc = report.get("allocation")
  if alloc:
    lines += ["", f"Compute-optimal allocation (Approach 3, from the law): N_opt ∝ C^a, "
                  f"D_opt ∝ C^b with a = {with_interval(alloc['a'], iv.get('allocation_a'))}, "
                  f"b = {num(alloc['b'])}."]
  a2 = report.get("approach2")
  if a2 and "a" in a2:
    lines.append(f"Approach 2 (IsoFLOP parabola minima of {a2['num_budgets']} budgets, grouped "
                 f"by {a2['grouped_by']}): a = {with_interval(a2['a'], a2.get('interval_95_a'))}.")
  elif a2:
    lines.append(f"Approach 2 (IsoFLOP minima) did not run: {a2['skipped']}")
  fm = report.get("fid_map")
  if fm and "map" in fm:
    fiv = fm.get("intervals_95", {})
    ps = ", ".join(f"{k} = {with_interval(fm[k], fiv.get(k))}" for k in ("F_inf", "k", "s"))
    lines += ["", f"{fm['column']} from loss, fitted on {fm['num_points']} runs: "
                  f"`{fm['map'].replace('fid', fm['column'], 1)}` with {ps}."]
  elif fm:
    lines += ["", f"{fm['column']} from loss: not fitted ({fm['skipped']})."]
  for note in report.get("warnings", []):
    lines += ["", f"> ⚠️ {note}"]
  return lines


def validity_section(report: dict) -> list[str]:
  return [f"- {STATUS[r['status']]} ({r['number']}) **{r['check']}**: {r['detail']}"
          for r in report.get("validity", [])]


def _outside(row: dict, role: str) -> str:
  factor, side = row["vs_trained"][role]
  return "inside" if side == "inside" else f"{num(factor)}× {side}"


def forecasts_section(report: dict) -> list[str]:
  rows, fd = report.get("forecasts", []), report.get("fid_col")
  if not rows:
    return ["No forecast was asked (`--at N=..,D=..`)."]
  header = ["point", "C", "loss [95%]"] + ([f"{fd} [95%]"] if fd else []) + \
      ["N vs trained", "D vs trained", "C vs trained"]
  body = [[point_name(r), num(6 * r["N"] * r["D"]),
           with_interval(r["loss"], r.get("interval_95"))] +
          ([with_interval(r.get("fid"), r.get("fid_interval_95"))] if fd else []) +
          [_outside(r, "N"), _outside(r, "D"),
           _outside(r, "C") if "C" in r["vs_trained"] else "–"] for r in rows]
  return _table(header, body)


def _pct(x) -> str:
  return "–" if x is None else f"{x:+.2%}"


def _yes(inside) -> str:
  return "–" if inside is None else ("yes" if inside else "**no**")


def heldout_sentences(block: dict) -> list[str]:
  """The held-out comparison in words: median and max |error|, coverage, for loss and FID."""
  n, fd = block["num_runs"], block.get("fid_col")
  level = f"{block.get('level', 0.95):.0%}"
  out = []
  for key, what in (("loss", "loss"), ("fid", fd)):
    s = block["summary"].get(key)
    if not s or not s["num_runs"]:
      continue
    k, via = s["num_runs"], "" if key == "loss" else f" (through the loss -> {fd} map)"
    if k == n:
      owner = "the held-out run's" if k == 1 else f"the {k} held-out runs'"
      subject = f"{owner} {what}{via}"
    else:
      subject = f"{what}{via} of the {k} held-out " + \
          ("run that reports it" if k == 1 else "runs that report it")
    how = (f"within {s['max_abs_relative_error']:.2%}" if k == 1 else
           f"within {s['median_abs_relative_error']:.2%} (median), max "
           f"{s['max_abs_relative_error']:.2%}")
    values = "losses" if key == "loss" else f"{what} values"
    lie = (f"the measured {what} lies {'inside' if s['num_inside'] else 'outside'} its {level} "
           f"interval" if k == 1 else
           f"{s['num_inside']} of {k} measured {values} lie in their {level} intervals")
    out.append(f"The fit forecasts {subject} {how}; {lie}.")
  if block.get("fid_skipped"):
    out.append(f"{fd} was not forecast for the held-out runs: {block['fid_skipped']}.")
  return out


def heldout_section(report: dict) -> list[str]:
  """The held-out runs (--heldout DIR): forecasts from the fit alone against measurements."""
  block = report["heldout"]
  rows, fd = block["runs"], block.get("fid_col")
  if not rows:
    return ["No held-out runs."]
  top = block["fitted_max"]
  reach = max(r["vs_fitted_max"]["C"] for r in rows)
  lines = [f"{len(rows)} runs from `{block['source']}`, forecast by the law fitted to "
           f"{block['num_fitted']} other runs, none of these. The fitted runs reach "
           f"N = {num(top['N'])}, D = {num(top['D'])} and C = {num(top['C'])} FLOPs; the held-out runs go up to "
           f"{num(reach)}× that C. Error = (forecast - measured) / measured.", ""]
  with_fd = fd and any("fid_forecast" in r for r in rows)
  header = ["run", "N", "D", "C", "× fitted max N, D, C", "loss", "forecast [95%]", "error",
            "inside"] + ([fd, f"{fd} forecast [95%]", "error", "inside"] if with_fd else [])
  body = []
  for r in rows:
    v = r["vs_fitted_max"]
    row = [str(r["run"]), num(r["N"]), num(r["D"]), num(r["flops"]),
           f"{num(v['N'])}×, {num(v['D'])}×, {num(v['C'])}×", num(r["loss"]),
           with_interval(r["loss_forecast"], r["loss_interval_95"]),
           _pct(r["loss_relative_error"]), _yes(r["loss_inside"])]
    if with_fd:
      row += [num(r.get("fid")), with_interval(r.get("fid_forecast"), r.get("fid_interval_95")),
              _pct(r.get("fid_relative_error")), _yes(r.get("fid_inside"))]
    body.append(row)
  return lines + _table(header, body) + ["", " ".join(heldout_sentences(block))]


def plan_section(report: dict) -> list[str]:
  p, fd = report.get("plan"), report.get("fid_col")
  if not p:
    return ["No budget was asked (`--flops C`)."]
  header = ["budget C", "N_opt", "D_opt", "D/N", "loss [95%]"] + \
      ([f"{fd} [95%]"] if fd else []) + ["wall time"]
  row = [num(p["flops"]), num(p["N_opt"]), num(p["D_opt"]), num(p["tokens_per_param"]),
         with_interval(p["loss"], p.get("loss_interval_95"))] + \
      ([with_interval(p.get("fid"), p.get("fid_interval_95"))] if fd else []) + \
      [f"{num(p['wall_time_hours'])} h on {p['chips']} {p['accelerator']} at "
       f"{p['mfu']:.0%} MFU"]
  verdict = p["verdict"][:1].upper() + p["verdict"][1:]
  return _table(header, [row]) + ["", f"**Verdict:** {verdict}."]


def _law(f: dict) -> str:
  return f"`{f['metric']} = ({num(f['beta'])} {f['x']})^{num(f['alpha'])}`"


def per_scale_section(report: dict) -> list[str]:
  """VAR's laws (analysis/per_scale.py): the four main metrics against N and C, then the
  per-scale losses' exponents, the fits skipped, and the figure."""
  block = report["per_scale"]
  if "skipped" in block:
    return [block["skipped"]]
  pub = block.get("published", {})
  lines = [
      f"Pure power laws `{block['form']}` as Tian et al. (2024) fit them to VAR, e.g. " +
      ", ".join(f"`{m} = ({num(p['beta'])} N)^{num(p['alpha'])}`" for m, p in pub.items()) +
      f". X: N = {block['x_units']['N']}; C = {block['x_units']['C']}. Runs: vs N, "
      f"{block['selection']['N']}; vs C, {block['selection']['C']}. Intervals: "
      f"{block['intervals']}; r: Pearson in log space. Error rates are fractions.", ""]
  fits = [f for f in block["fits"] if "alpha" in f]
  main = [f for f in fits if f["metric"] in PER_SCALE_MAIN]
  if main:
    lines += _table(["metric", "X", "alpha [95%]", "beta [95%]", "r", "runs", "law"],
                    [[f["metric"], f["x"], with_interval(f["alpha"], f["alpha_interval_95"]),
                      with_interval(f["beta"], f["beta_interval_95"]), num(f["r"]),
                      str(f["num_runs"]), _law(f)] for f in main])
  scales = {}
  for f in fits:
    if f["metric"].startswith("loss_s"):
      scales.setdefault(f["metric"], {})[f["x"]] = f
  if scales:
    cell = lambda f: ("–" if f is None else
                      f"{with_interval(f['alpha'], f['alpha_interval_95'])}, r {num(f['r'])}")
    lines += ["", "Per-scale losses (scale 0 is the coarsest):", ""]
    lines += _table(["scale", "alpha vs N [95%], r", "alpha vs C [95%], r"],
                    [[m.removeprefix("loss_s"), cell(by.get("N")), cell(by.get("C"))]
                     for m, by in scales.items()])
  return lines + notes_and_figure(block, "per scale", note_end=".")


def notes_and_figure(block: dict, alt: str, note_end: str = "") -> list[str]:
  """A section's closing lines: its `notes` as bullets, then its `plot` as an image."""
  lines = []
  if block.get("notes"):
    lines += [""] + [f"- {note}{note_end}" for note in block["notes"]]
  if block.get("plot"):
    lines += ["", f"![{alt}]({os.path.basename(block['plot'])})"]
  return lines


def repeated_section(report: dict) -> list[str]:
  """Runs on fixed data subsets (analysis/repeated.py): each against the fresh-data forecast,
  the data-constrained law fitted to all runs, the verdict and the figure."""
  block = report["repeated"]
  iv = block.get("intervals_95", {})
  p = block["params"]
  lines = [f"{block['num_repeated']} runs on fixed subsets of the data ({block['source']}), "
           "each set against the main law's forecast at its N and D, which assumes every "
           "token is fresh: the excess is what repetition cost, and the forecast's 95% "
           "interval is the yardstick.", ""]
  lines += _table(["run", "N", "D", "U", "epochs", "loss", "fresh-data forecast [95%]",
                   "excess", "data-constrained fit", "effective epochs"],
                  [[r["run"], num(r["N"]), num(r["D"]), num(r["U"]), num(r["epochs"]),
                    num(r["loss"]), with_interval(r["fresh_forecast"], r["fresh_interval_95"]),
                    f"{r['excess']:+.3g}", num(r["data_constrained"]),
                    num(r["effective_epochs"])] for r in block["runs"]])
  lines += ["", f"`{block['formula']}` (Muennighoff et al. 2023), fitted to the "
            f"{block['num_fresh']} fresh-data runs and these {block['num_repeated']} together "
            f"({block['num_points']} points):", ""]
  lines += _table(["parameter", "value", "95% interval"],
                  [[k, num(v), interval(iv[k]) if k in iv else "–"] for k, v in p.items()])
  worth = with_interval(block["four_epochs_worth"], block.get("four_epochs_worth_interval_95"))
  lines += ["", f"Four epochs are worth {worth} unique ones under this fit "
            f"(published: {num(block['published_four_epochs_worth'])}, with R_D* = "
            f"{num(block['published_rd_star'])}).", "", f"**Verdict:** {block['verdict']}"]
  return lines + notes_and_figure(block, "repeated data")


def curves_section(report: dict) -> list[str]:
  """The learning-curve backtest (analysis/extrapolate.py): each run's final loss forecast
  from the first part of its curve, MAPE per method, and what that says."""
  block = report["curve_backtest"]
  methods = block["methods"]
  lines = [f"Every run of {block['registry']} ({block['num_runs']} runs) forecast from the "
           "first part of its curve (`python -m analysis extrapolate --backtest`), against its "
           "measured final loss: mean absolute percentage error per method, over the runs "
           "every method could forecast (a run needs points before the cut).", ""]
  lines += _table(["fraction", "split", "runs", *methods],
                  [[f"{r['fraction']:.0%}", r["split"], str(r["num_runs"]),
                    *("–" if r.get(m) is None else f"{100 * r[m]:.2f}%" for m in methods)]
                   for r in block["mape"]])
  if block["findings"]:
    lines += [""] + [f"- {f[0].upper()}{f[1:]}." for f in block["findings"]]
  return lines


def figures_section(report: dict) -> list[str]:
  plots = report.get("plots", [])
  if not plots:
    return ["No figures."]
  out = []
  for path in plots:
    name = os.path.basename(path)
    out += [f"![{os.path.splitext(name)[0].replace('_', ' ')}]({name})", ""]
  return out[:-1]


def findings(report: dict) -> list[str]:
  """Short sentences made from the numbers: spread, allocation, backtest, checks that
  warn and why, extrapolations, the plan."""
  out = []
  runs = report.get("runs", [])
  if runs:
    span = lambda k: max(r[k] for r in runs) / min(r[k] for r in runs)
    out.append(f"The {len(runs)} runs span {num(span('N'))}x in N, {num(span('D'))}x in D and "
               f"{num(span('flops'))}x in compute.")
  alloc, iv = report.get("allocation"), report.get("intervals_95", {})
  if alloc:
    out.append(f"The law gives N_opt ∝ C^a with a = "
               f"{with_interval(alloc['a'], iv.get('allocation_a'))}: ten times the compute "
               f"should buy {num(10 ** alloc['a'])}x the parameters and "
               f"{num(10 ** alloc['b'])}x the tokens.")
  bt = report.get("backtest")
  if bt:
    out.append(f"Refitted without its {bt['num_held_out']} largest-{bt['holdout_by']} runs, "
               f"the law predicted them with a mean error of "
               f"{bt['mean_relative_error']:.2%} (max {bt['max_relative_error']:.2%}); "
               f"{bt['interval_coverage']:.0%} fell inside their 95% intervals.")
  checks = report.get("validity", [])
  warned = [r for r in checks if r["status"] == "warn"]
  passed = sum(r["status"] == "pass" for r in checks)
  if checks:
    out.append(f"{passed} of {len(checks)} validity checks pass" +
               (f" and {len(warned)} warn." if warned else "."))
  for r in warned:
    out.append(f"Check ({r['number']}) {r['check']} warns: {r['detail']}.")
  for r in report.get("forecasts", []):
    roles = [role for role in ("N", "D", "C") if role in r["vs_trained"]]
    outside = [f"{'compute' if role == 'C' else role} {_outside(r, role)} the trained range"
               for role in roles if r["vs_trained"][role][1] != "inside"]
    where = ("an extrapolation: " + " and ".join(outside)) if outside else \
        "inside the trained N, D and compute ranges"
    out.append(f"The forecast at {point_name(r)} (loss "
               f"{with_interval(r['loss'], r.get('interval_95'))}) is {where}.")
  if report.get("heldout", {}).get("runs"):
    out += heldout_sentences(report["heldout"])[:1]
  out += per_scale_findings(report.get("per_scale", {}))
  if "repeated" in report:
    out.append(f"Repeated data: {report['repeated']['verdict']}")
  p = report.get("plan")
  if p:
    out.append(f"Spending {num(p['flops'])} FLOPs compute-optimally means N_opt = "
               f"{num(p['N_opt'])} on D_opt = {num(p['D_opt'])} tokens "
               f"({num(p['tokens_per_param'])} tokens per parameter), for a loss of "
               f"{with_interval(p['loss'], p.get('loss_interval_95'))}. Verdict: "
               f"{p['verdict']}.")
  return out


def per_scale_findings(block: dict) -> list[str]:
  """The last-scale and all-token loss exponents against N, beside VAR's."""
  fits = {f["metric"]: f for f in block.get("fits", []) if f["x"] == "N" and "alpha" in f}
  pub = block.get("published", {})
  shown = [(m, what) for m, what in (("loss_last", "the last scale's loss"),
                                     ("loss_avg", "the mean loss")) if m in fits]
  said = [f"{what} goes as N^{with_interval(fits[m]['alpha'], fits[m]['alpha_interval_95'])}"
          + (f" (VAR: {num(pub[m]['alpha'])})" if m in pub else "") for m, what in shown]
  if not said:
    return []
  flat = [what for m, what in shown if not per_scale.resolved(fits[m])]
  verdict = ("" if not flat else
             f"; the interval of {' and of '.join(flat)} includes 0: these runs resolve no "
             "trend in N (the per-scale section says why)")
  return [f"In VAR's form, over the final run of each size, {' and '.join(said)}{verdict}."]


def sections(report: dict) -> list[str]:
  """The section names of this report: SECTIONS, with each OPTIONAL one it has data for."""
  out = list(SECTIONS)
  for name, (key, after) in OPTIONAL.items():
    if key in report:
      out.insert(out.index(after) + 1, name)
  return out


def _frontier_section(report: dict) -> list[str]:
  if "sampling_frontier" not in report:
    return []
  from analysis import frontier
  return frontier.section(report["sampling_frontier"])


def render(report: dict, title: str = "Scaling-law report") -> str:
  """report.md from report.json's dict: every section of `sections(report)`, in order."""
  body = {
      "Question": [report.get("question", "")],
      "Runs": runs_section(report),
      "Fitted law": law_section(report),
      "Validity checklist": validity_section(report),
      "Forecasts": forecasts_section(report),
      "Held-out runs": heldout_section(report) if "heldout" in report else [],
      "Compute-optimal plan": plan_section(report),
      PER_SCALE: per_scale_section(report) if "per_scale" in report else [],
      REPEATED: repeated_section(report) if "repeated" in report else [],
      CURVES: curves_section(report) if "curve_backtest" in report else [],
      FRONTIER: _frontier_section(report),
      "Figures": figures_section(report),
      "What the numbers say": [" ".join(findings(report))],
  }
  lines = [f"# {title}", ""]
  for name in sections(report):
    lines += [f"## {name}", "", *body[name], ""]
  return "\n".join(lines)


def summary(report: dict, md_path: str) -> str:
  """The report command's text output: the law, the checklist, forecasts and the plan."""
  iv = report.get("intervals_95", {})
  names = [k for k in LAW_PARAMS.get(report["law"], ()) if k in report]
  lines = [f"question: {report.get('question', '')}",
           f"law: {report['formula']}: " +
           ", ".join(f"{k} = {with_interval(report[k], iv.get(k))}" for k in names)]
  alloc, a2 = report.get("allocation"), report.get("approach2", {})
  if alloc:
    lines.append(f"allocation: a = {with_interval(alloc['a'], iv.get('allocation_a'))} "
                 f"(Approach 3)" + (f", {with_interval(a2['a'], a2.get('interval_95_a'))} "
                                    f"(Approach 2)" if "a" in a2 else ""))
  lines += [f"[{r['status']}] ({r['number']}) {r['check']}: {r['detail']}"
            for r in report.get("validity", [])]
  fd = report.get("fid_col")
  for r in report.get("forecasts", []):
    lines.append(f"forecast {point_name(r)}: loss {with_interval(r['loss'], r.get('interval_95'))}"
                 + (f", {fd} {with_interval(r.get('fid'), r.get('fid_interval_95'))}"
                    if fd else "") + f" (N {_outside(r, 'N')}, D {_outside(r, 'D')}"
                 + (f", C {_outside(r, 'C')})" if "C" in r["vs_trained"] else ")"))
  for r in report.get("heldout", {}).get("runs", []):
    lines.append(f"held-out {r['run']} ({point_name(r)}): loss {num(r['loss'])}, forecast "
                 f"{with_interval(r['loss_forecast'], r['loss_interval_95'])} "
                 f"({_pct(r['loss_relative_error'])}, "
                 f"{'inside' if r['loss_inside'] else 'outside'})")
  if "heldout" in report:
    lines += heldout_sentences(report["heldout"])
  p = report.get("plan")
  if p:
    lines.append(f"plan {num(p['flops'])} FLOPs: N_opt = {num(p['N_opt'])}, D_opt = "
                 f"{num(p['D_opt'])}, loss {with_interval(p['loss'], p.get('loss_interval_95'))}"
                 f": {p['verdict']}")
  for f in report.get("per_scale", {}).get("fits", []):
    if f["metric"] in PER_SCALE_MAIN and "alpha" in f:
      lines.append(f"per-scale law {f['metric']} vs {f['x']}: ({num(f['beta'])} {f['x']})^"
                   f"{num(f['alpha'])}, alpha {interval(f['alpha_interval_95'])}, "
                   f"r = {num(f['r'])}" +
                   ("" if per_scale.resolved(f) else " (includes 0: no trend resolved)"))
  if "repeated" in report:
    lines.append(f"repeated data: {report['repeated']['verdict']}")
  lines += [f"curve backtest: {f}" for f in report.get("curve_backtest", {}).get("findings", [])]
  if "sampling_frontier" in report:
    from analysis import frontier
    lines += frontier.summary_lines(report["sampling_frontier"])
  lines += [f"warning: {note}" for note in report.get("warnings", [])]
  lines.append(f"report: {md_path}")
  return "\n".join(lines)
