"""The hparams demo's report (`make demo-hparams`): one lr x batch sweep at one token
budget -> report.json, report.md, summary.txt and the figures in one directory.

    python -m analysis.hparams_report --runs runs/demo-hparams --out reports/demo-hparams

It runs `analysis hparams` (lr_opt(N), batch_opt(N) in the N-only form at one D, the
leave-largest-out backtest, the lr sensitivity per size) and `analysis critical-batch`
per model size (`--group-col params --best-of-batch`: per target loss the fewest steps
among each batch size's lrs), reads the logged gradient noise scale B_simple of every
run, and writes every number from those reports into the text, so the prose cannot drift
from report.json. Bad input is one line and exit code 2, as in `python -m analysis`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np

from analysis.validate import AnalysisError


def num(x, digits: int = 3) -> str:
  if x is None or (isinstance(x, float) and not math.isfinite(x)):
    return "–"
  return f"{float(x):.{digits}g}"


def _sub(argv: list[str]) -> dict:
  """An `analysis` subcommand's report dict, in process."""
  from analysis.cli import build_parser
  args = build_parser().parse_args(argv)
  return args.func(args)


# ---------------------------------------------------------------- the numbers

def sweep_seconds(runs_dir: str) -> float | None:
  """Wall time of the sweep from its registry: first start to last finish."""
  from sweeps.registry import events
  times = {"started": [], "finished": []}
  for event in events(runs_dir):
    if event.get("event") in times:
      times[event["event"]].append(float(event["time"]))
  if not times["started"] or not times["finished"]:
    return None
  return max(times["finished"]) - min(times["started"])


def final_noise_scale(runs_dir: str) -> list[dict]:
  """Per (N, batch): the run with the lowest final loss (the batch's best lr) and its last
  logged B_simple before the WSD decay (gns_b_simple at the last train record whose lr is
  still the peak; the last record when none is)."""
  from analysis.extrapolate import read_metrics
  from analysis.runs import load_runs
  table = load_runs(runs_dir)
  rows = []
  for (n, batch), runs in table.groupby(["params", "global_batch_size"], sort=True):
    best = runs.loc[runs["loss"].idxmin()]
    frame = read_metrics(os.path.join(best["run_dir"], "metrics.jsonl"))
    if "gns_b_simple" not in frame.columns:
      continue
    train = frame[(frame["split"] == "train") & np.isfinite(frame["gns_b_simple"])]
    if train.empty:
      continue
    peak = train[train["lr"] >= 0.999 * train["lr"].max()] if "lr" in train.columns else train
    last = (peak if not peak.empty else train).iloc[-1]
    rows.append({"N": float(n), "batch": float(batch), "run": best["run"],
                 "step": int(last["step"]), "loss": float(last["loss"]),
                 "B_simple": float(last["gns_b_simple"])})
  return rows


def build(runs_dir: str, out_dir: str, bootstrap: int = 200) -> dict:
  hp = _sub(["hparams", "--runs", runs_dir, "--bootstrap", str(bootstrap),
             "--plot-dir", out_dir])
  try:
    cb = _sub(["critical-batch", "--runs", runs_dir, "--group-col", "params",
               "--best-of-batch", "--plot-dir", out_dir])
  except AnalysisError as e:  # reported, not fatal: the rest of the report stands
    cb = {"skipped": str(e)}
  return {"runs": runs_dir, "sweep_seconds": sweep_seconds(runs_dir), "hparams": hp,
          "critical_batch": cb, "noise_scale": final_noise_scale(runs_dir)}


# ---------------------------------------------------------------- the text

def _loss_table(hp: dict) -> list[str]:
  """Final loss per (N, batch) x lr, from the sensitivity groups (every lr of the sweep)."""
  lrs = sorted({lr for g in hp["sensitivity"].get("groups", []) for lr in g["lrs"]})
  lines = ["| N | batch | " + " | ".join(f"lr {num(lr)}" for lr in lrs) + " |",
           "|---|---|" + "---|" * len(lrs)]
  for g in hp["sensitivity"].get("groups", []):
    best = min(g["losses"])
    by_lr = dict(zip(g["lrs"], g["losses"]))
    row = [f"**{by_lr[lr]:.4f}**" if by_lr.get(lr) == best else
           (f"{by_lr[lr]:.4f}" if lr in by_lr else "–") for lr in lrs]
    lines.append(f"| {g['N']:,.0f} | {g['batch']:g} | " + " | ".join(row) + " |")
  return lines


def _law_lines(hp: dict) -> list[str]:
  law = hp["law"]
  lr, bt = law["lr"], law["batch"]
  def iv(block, k):
    v = (block.get("interval_95") or {}).get(k)
    return f" [{num(v[0])}, {num(v[1])}]" if v else ""
  n_only = law.get("varies") == "N"
  d_part = "" if n_only else f" D^{num(lr['c'])}{iv(lr, 'c')}"
  f_part = f" N^{num(bt['f'])}{iv(bt, 'f')}" if law["batch_form"] in ("N", "ND") else ""
  e_part = "" if n_only else f" D^{num(bt['e'])}{iv(bt, 'e')}"
  lines = [f"- **lr_opt = {num(lr['a'])}{iv(lr, 'a')} N^{num(lr['b'])}{iv(lr, 'b')}{d_part}**",
           f"- **batch_opt = {num(bt['d'])}{iv(bt, 'd')}{f_part}{e_part}** images per step",
           f"- 95% intervals from {law['replicates']} bootstrap resamples of the "
           f"{len(hp['cells'])} cells (Student's t with cells - coefficients degrees of "
           "freedom: with 3 sizes and 2 coefficients, one)."]
  if n_only:
    lines.append(f"- Form: {law['why_N_only']}.")
  lines.append(f"- Batch form: {law['chosen_by']}.")
  return lines


def _backtest_lines(hp: dict) -> list[str]:
  bt = hp["backtest"]
  if "skipped" in bt:
    return [f"Backtest skipped: {bt['skipped']}."]
  lines = [f"Refit without the largest size (N = {bt['held_out_N']:,.0f}) on "
           f"{bt['fitted_cells']} cells, predict its optimum, take the grid run nearest the "
           "prediction (in log lr, log batch):", "",
           "| N | predicted lr | predicted batch | nearest run (lr, batch) | its loss | "
           "best loss | gap |", "|---|---|---|---|---|---|---|"]
  for r in bt["cells"]:
    lines.append(f"| {r['N']:,.0f} | {num(r['lr'])} | {num(r['batch'])} | "
                 f"{num(r['nearest_lr'])}, {r['nearest_batch']:g} | {r['loss']:.4f} | "
                 f"{r['best_loss']:.4f} | {r['gap']:.2%} |")
  lines += ["", f"**Backtest gap: {bt['mean_gap']:.2%}** (the loss of the run the law "
                "picks, above the size's best run)."]
  return lines


def _cells_lines(hp: dict) -> list[str]:
  lines = ["| N | best run (lr, batch) | best loss | optimum lr | optimum batch | method | "
           "law lr | law batch |", "|---|---|---|---|---|---|---|---|"]
  for c in hp["cells"]:
    o = c["optimum"]
    lines.append(f"| {c['N']:,.0f} | {num(c['best']['lr'])}, {c['best']['batch']:g} | "
                 f"{c['best']['loss']:.4f} | {num(o['lr'])} | {num(o['batch'])} | "
                 f"{o['method']} | {num(c['law']['lr'])} | {num(c['law']['batch'])} |")
  reasons = {o["reason"] for c in hp["cells"] if (o := c["optimum"]).get("reason")}
  lines += [f"- grid fallback: {r}" for r in sorted(reasons)]
  return lines


def _sensitivity_lines(sens: dict) -> list[str]:
  if "skipped_all" in sens:
    return [f"Skipped: {sens['skipped_all']}."]
  lines = [f"Sensitivity: {sens['definition']}. L0 = {sens['L0_source']}: "
           "metrics.jsonl logs its first loss after `run.log_every` steps, so the loss at "
           "initialisation is the closed form (analysis/sensitivity.py).", "",
           "| N | sensitivity (mean over batch sizes) | per batch size | best lr per batch |",
           "|---|---|---|---|"]
  for r in sens["by_N"]:
    groups = [g for g in sens["groups"] if g["N"] == r["N"]]
    per = ", ".join(f"b{g['batch']:g}: {g['sensitivity']:.3f}" for g in groups)
    best = ", ".join(f"b{g['batch']:g}: {num(g['best_lr'])}" for g in groups)
    lines.append(f"| {r['N']:,.0f} | **{r['sensitivity']:.3f}** nats | {per} | {best} |")
  first, last = sens["by_N"][0], sens["by_N"][-1]
  change = last["sensitivity"] / first["sensitivity"] - 1 if first["sensitivity"] else math.inf
  trend = ("stays within 10%" if abs(change) < 0.1 else "falls" if change < 0 else "rises")
  lines += ["", f"Over the same lr grid the sensitivity {trend} from "
                f"{first['sensitivity']:.3f} at N = {first['N']:,.0f} to "
                f"{last['sensitivity']:.3f} at N = {last['N']:,.0f} ({change:+.0%})."]
  return lines


def _critical_lines(cb: dict, noise: list[dict]) -> list[str]:
  if "skipped" in cb:
    return [f"**Not fitted**: {cb['skipped']}."]
  lines = ["Per size, for target losses every batch size reaches with its best lr, S = the "
           "fewest steps among the lrs of each batch size (eval points linearly interpolated), "
           "fitted as S = S_min (1 + B_crit / B) over the 3 batch sizes (least squares in 1/B, "
           "rows divided by S). B_simple: the logged gradient noise scale at each crossing "
           "(geometric mean over the batch sizes). Batches and B in images per step.", ""]
  for g in cb["groups"]:
    lines.append(f"**N = {float(g['group']):,.0f}**")
    lines.append("")
    if "skipped" in g:
      lines += [f"Not fitted: {g['skipped']}.", ""]
      continue
    lines += ["| target loss | S_min | B_crit | rms rel. residual | B_simple at the crossings | "
              "B_simple / B_crit | note |", "|---|---|---|---|---|---|---|"]
    for r in g["targets"]:
      if "B_crit" in r:
        flag = ("bound only (beyond the swept batches)" if r.get("beyond_swept")
                else "coarse eval brackets" if "note" in r else "")
        ratio = r["B_simple"] / r["B_crit"] if "B_simple" in r else None
        lines.append(f"| {r['loss']:.4f} | {num(r['S_min'])} | {num(r['B_crit'])} | "
                     f"{r['rms_relative_residual']:.1%} | {num(r.get('B_simple'))} | "
                     f"{num(ratio, 2)} | {flag} |")
      else:
        lines.append(f"| {r['loss']:.4f} | – | – | – | {num(r.get('B_simple'))} | – | "
                     f"not fitted: {r['skipped']} |")
    measured = [r for r in g["targets"] if "B_crit" in r and not r.get("beyond_swept")]
    if measured:
      lines += ["", f"B_crit within 4x of the swept batch sizes (a measurement, not a bound) "
                    f"at {len(measured)} of {len(g['targets'])} targets: "
                    + ", ".join(f"{num(r['B_crit'])} at L = {r['loss']:.3f}" for r in measured)
                    + "."]
    else:
      lines += ["", "No target gives a B_crit within 4x of the swept batch sizes (8-32): "
                    "with 3 batch sizes this sweep bounds B_crit but does not measure it."]
    lines.append("")
  rows = [r for g in cb["groups"] for r in g.get("targets", [])]
  measured = [r for r in rows if "B_crit" in r and not r.get("beyond_swept")]
  bounds = [r for r in rows if r.get("beyond_swept")]
  unfitted = [r for r in rows if "B_crit" not in r]
  ratios = [r["B_simple"] / r["B_crit"] for r in measured if "B_simple" in r]
  lines += [f"In all: B_crit measured at {len(measured)} of {len(rows)} (size, target) pairs"
            + (f" ({num(min(r['B_crit'] for r in measured))} to "
               f"{num(max(r['B_crit'] for r in measured))} images)" if measured else "")
            + f", a bound only at {len(bounds)}, not fitted at {len(unfitted)} (S falling "
              "faster than 1/B across the three batch sizes gives a negative S_min)"
            + (f"; where measured, B_simple is {num(min(ratios), 2)} to {num(max(ratios), 2)} "
               "x B_crit" if ratios else "") + ".", ""]
  if noise:
    lines += ["Logged B_simple (`gns_b_simple`, EMA over about 50 steps) at the end of the "
              "constant-lr phase of each batch size's best run:", "",
              "| N | batch | run | step | train loss | B_simple |", "|---|---|---|---|---|---|"]
    for r in noise:
      lines.append(f"| {r['N']:,.0f} | {r['batch']:g} | {r['run']} | {r['step']} | "
                   f"{r['loss']:.3f} | {num(r['B_simple'])} |")
  return lines


def markdown(report: dict, out_dir: str) -> str:
  hp, cb = report["hparams"], report["critical_batch"]
  sens = hp["sensitivity"]
  ns = sorted({c["N"] for c in hp["cells"]})
  d = hp["law"]["D_range"]
  seconds = report["sweep_seconds"]
  figures = [os.path.relpath(p, out_dir) for p in hp.get("plots", [])]
  if "groups" in cb:
    figures += [os.path.relpath(p, out_dir) for g in cb["groups"] for p in g.get("plots", [])]
  lines = ["# Hyperparameters across model sizes (make demo-hparams)", "",
           f"Runs: `{report['runs']}` ({sum(c['runs'] for c in hp['cells'])} runs: "
           f"{len(ns)} sizes N = {', '.join(f'{n:,.0f}' for n in ns)} x "
           f"{len(sens.get('groups', [{}])[0].get('lrs', []))} learning rates x "
           f"{len({g['batch'] for g in sens.get('groups', [])})} batch sizes at one token "
           f"budget D = {num(d[0])}), spec `sweeps/demo-hparams.yaml`"
           + (f"; the sweep took {seconds:.0f} s (registry, first start to last finish)."
              if seconds else "."), "",
           "## Final loss per run", "", *_loss_table(hp), "",
           "Bold: the best lr of each (N, batch).", "",
           "## lr_opt(N) and batch_opt(N)", "", *_law_lines(hp), "",
           "Per size (cell):", "", *_cells_lines(hp), "",
           "### Backtest (leave the largest N out)", "", *_backtest_lines(hp), "",
           "## lr sensitivity per size", "", *_sensitivity_lines(sens), "",
           "## Critical batch size", "", *_critical_lines(cb, report["noise_scale"]), "",
           "## Figures", ""]
  lines += [f"![{f}]({f})" for f in figures]
  lines += ["", "## Caveats", "",
            f"- One token budget: the laws are the N-only form, valid at D = {num(d[0])} "
            "only (a `rule: fitted` sweep at another D would extrapolate).",
            "- Three sizes: the backtest refits on two (an exact line), and the bootstrap "
            "intervals have one degree of freedom; read the exponent as a direction, not a "
            "measurement.",
            "- One seed per (N, lr, batch); the final loss is the eval loss on 256 validation "
            "crops (the same crops for every run), so differences of a few thousandths of a "
            "nat are within noise.",
            "- Critical batch: S is read from eval points 50 steps apart, and the lowest "
            "targets fall in or near the WSD decay, whose start differs per batch size."]
  return "\n".join(lines) + "\n"


def summary(report: dict) -> str:
  hp, cb = report["hparams"], report["critical_batch"]
  law, bt, sens = hp["law"], hp["backtest"], hp["sensitivity"]
  f = f" N^{law['batch']['f']:.3g}" if law["batch_form"] in ("N", "ND") else ""
  lines = [f"lr_opt(N) = {law['lr']['a']:.3g} N^{law['lr']['b']:.3g} (D = "
           f"{num(law['D_range'][0])}); batch_opt = {law['batch']['d']:.3g}{f}"]
  lines.append("backtest gap: " + (f"{bt['mean_gap']:.2%} (held out N = {bt['held_out_N']:,.0f})"
                                   if "mean_gap" in bt else f"skipped: {bt['skipped']}"))
  if "by_N" in sens:
    lines.append("lr sensitivity: " + ", ".join(f"N={r['N']:,.0f}: {r['sensitivity']:.3f}"
                                                for r in sens["by_N"]))
  if "groups" in cb:
    parts = []
    for g in cb["groups"]:
      fitted = [r for r in g.get("targets", []) if "B_crit" in r and not r.get("beyond_swept")]
      parts.append(f"N={float(g['group']):,.0f}: " + (
          ", ".join(f"{num(r['B_crit'])} at L={r['loss']:.3f}" for r in fitted)
          if fitted else "not measured in the swept range"))
    lines.append("B_crit (images): " + "; ".join(parts))
  else:
    lines.append(f"B_crit: not fitted: {cb['skipped']}")
  if report["noise_scale"]:
    lines.append("B_simple at the end of the constant lr (best lr per batch): " + ", ".join(
        f"N={r['N']:,.0f} b{r['batch']:g}: {num(r['B_simple'])}" for r in report["noise_scale"]))
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog="python -m analysis.hparams_report",
                              description=__doc__.split("\n")[0])
  p.add_argument("--runs", required=True, help="the sweep's registry directory")
  p.add_argument("--out", required=True, help="the report directory")
  p.add_argument("--bootstrap", type=int, default=200)
  args = p.parse_args(argv)
  from analysis.pipeline import jsonable
  start = time.time()
  try:
    if not os.path.isdir(args.runs):
      raise AnalysisError(f"--runs {args.runs}: no such directory")
    os.makedirs(args.out, exist_ok=True)
    report = build(args.runs, args.out, args.bootstrap)
  except AnalysisError as e:
    print(f"analysis: error: {e}", file=sys.stderr)
    return 2
  report = jsonable(report)
  with open(os.path.join(args.out, "report.json"), "w") as f:
    json.dump(report, f, indent=2, allow_nan=False)
  with open(os.path.join(args.out, "report.md"), "w") as f:
    f.write(markdown(report, args.out))
  text = summary(report)
  with open(os.path.join(args.out, "summary.txt"), "w") as f:
    f.write(text + "\n")
  print(f"{text}\nreport: {os.path.join(args.out, 'report.md')} "
        f"({time.time() - start:.0f} s)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
