"""report.md (analysis/report_md.py), `report --at/--flops/--question`, the validity block
of `forecast` and `plan`, and the frontier drawn dashed where it is unsupported.

Rendering is tested on a hand-made report dict (no fit); the CLI on one small IsoFLOP
registry, run in-process so that every command reuses the same compiled fits.
"""

import json

import numpy as np
import pytest

from analysis import plots, report_md, validity
from analysis.compute_optimal import Allocation, chinchilla_allocation
from test_analysis_cli import isoflop_table, run_cli, write_registry

HEADINGS = [f"## {name}" for name in report_md.SECTIONS]


def hand_report():
  """A report.json dict as `report` writes it, with numbers chosen to be recognisable."""
  check = lambda name, status, detail: {"check": name, "number": validity.NUMBERS[name],
                                        "status": status, "value": 1.0, "detail": detail}
  return {
      "question": "What loss will it reach?", "fid_col": "fd_embed32cnn", "bootstrap": 200,
      "law": "chinchilla", "formula": "L = E + A / N^alpha + B / D^beta",
      "E": 1.234, "A": 456.7, "B": 8912.0, "alpha": 0.3456, "beta": 0.2789,
      "num_points": 2, "num_starts": 4500,
      "intervals_95": {"E": [1.1, 1.35], "A": [400.0, 500.0], "B": [8000.0, 9900.0],
                       "alpha": [0.3311, 0.3599], "beta": [0.27, 0.29],
                       "allocation_a": [0.41, 0.47]},
      "allocation": {"a": 0.4466, "b": 0.5534, "G": 0.5, "flops_per_param_token": 6.0},
      "approach2": {"a": 0.4512, "interval_95_a": [0.43, 0.47], "num_budgets": 4,
                    "grouped_by": "sweep.budget"},
      "fid_map": {"column": "fd_embed32cnn", "map": "fid = F_inf + exp(k + s loss)",
                  "F_inf": 3.21, "k": -7.5, "s": 2.5, "num_points": 2,
                  "intervals_95": {"F_inf": [3.0, 3.4], "k": [-8.0, -7.0], "s": [2.4, 2.6]}},
      "backtest": {"holdout_by": "N", "num_held_out": 3, "mean_relative_error": 0.0123,
                   "max_relative_error": 0.0234, "interval_coverage": 2 / 3},
      "validity": [check("bracketing", "warn", "no FLOP budget has three or more sizes"),
                   check("support", "pass", "N_opt stays inside the trained N"),
                   check("floor", "pass", "E = 1.23 is 50% of the lowest loss"),
                   check("agreement", "pass", "the 95% intervals overlap"),
                   check("backtest", "warn", "median error 1.2% (not under 1%)"),
                   check("repetition", "skip", "unique tokens per epoch unknown")],
      "runs": [{"run": "d1-D2.5e5-s0", "N": 38000.0, "D": 250000.0, "tokens_per_param": 6.58,
                "epochs": 1.0, "flops": 5.7e10, "loss": 5.123, "fid": 87.65},
               {"run": "d5-D1e6-s0", "N": 2.4e6, "D": 1e6, "tokens_per_param": 0.4167,
                "epochs": None, "flops": 1.44e13, "loss": 3.987, "fid": None}],
      "forecasts": [{"N": 2.5e7, "D": 1e7, "loss": 3.456, "interval_95": [3.3, 3.6],
                     "fid": 12.34, "fid_interval_95": [10.1, 14.5],
                     "vs_trained": {"N": [10.4, "beyond"], "D": [10.0, "beyond"]},
                     "extrapolation": {"N": 10.4, "D": 10.0}}],
      "plan": {"flops": 1e15, "N_opt": 2.11e5, "D_opt": 7.88e8, "tokens_per_param": 3735.0,
               "loss": 3.21, "loss_interval_95": [3.0, 3.4], "fid": 9.87,
               "fid_interval_95": [8.0, 11.0], "wall_time_hours": 0.7,
               "accelerator": "h100", "mfu": 0.4, "chips": 1,
               "verdict": "extrapolates 788x beyond the trained D: not supported by these runs"},
      "plots": ["/somewhere/reports/x/loss_vs_compute.png", "/somewhere/reports/x/isoflop.png"],
  }


def test_report_md_renders_every_section_from_the_numbers():
  md = report_md.render(hand_report(), "Scaling-law report: x")
  assert md.startswith("# Scaling-law report: x\n")
  positions = [md.index(h + "\n") for h in HEADINGS]
  assert positions == sorted(positions)  # every section, in order
  assert "What loss will it reach?" in md
  # Runs table: 3 significant figures, an unknown epoch count as a dash.
  assert "| run | N | D | D/N | epochs | FLOPs | loss | fd_embed32cnn |" in md
  assert "| d1-D2.5e5-s0 | 3.8e4 | 2.5e5 | 6.58 | 1 | 5.7e10 | 5.12 | 87.7 |" in md
  assert "| d5-D1e6-s0 | 2.4e6 | 1e6 | 0.417 | – | 1.44e13 | 3.99 | – |" in md
  # The law in plain notation, then with the fitted values, each with its interval.
  assert "`L(N, D) = E + A / N^alpha + B / D^beta`" in md
  assert "`L(N, D) = 1.23 + 457 / N^0.346 + 8910 / D^0.279`" in md
  assert "| alpha | 0.346 | [0.331, 0.36] |" in md
  assert "a = 0.447 [0.41, 0.47]" in md
  assert "Approach 2 (IsoFLOP parabola minima of 4 budgets, grouped by sweep.budget): " \
         "a = 0.451 [0.43, 0.47]" in md
  assert "`fd_embed32cnn = F_inf + exp(k + s loss)` with F_inf = 3.21 [3, 3.4]" in md
  # The checklist: one line per check, with its letter.
  assert "- ⚠️ warn (a) **bracketing**: no FLOP budget has three or more sizes" in md
  assert "- ✅ pass (d) **agreement**: the 95% intervals overlap" in md
  assert "- ➖ skip (f) **repetition**: unique tokens per epoch unknown" in md
  # Forecasts and plan.
  assert "| N=2.5e7, D=1e7 | 1.5e15 | 3.46 [3.3, 3.6] | 12.3 [10.1, 14.5] | 10.4× beyond | " \
         "10× beyond |" in md
  assert "| 1e15 | 2.11e5 | 7.88e8 | 3740 | 3.21 [3, 3.4] | 9.87 [8, 11] | 0.7 h on 1 h100 " \
         "at 40% MFU |" in md
  assert "**Verdict:** Extrapolates 788x beyond the trained D: not supported by these runs." in md
  # Figures link the PNGs in the report's own folder.
  assert "![loss vs compute](loss_vs_compute.png)" in md and "![isoflop](isoflop.png)" in md
  # Sentences from the numbers.
  said = md.split("## What the numbers say\n\n")[1]
  assert "The 2 runs span 63.2x in N, 4x in D and 253x in compute." in said
  assert "mean error of 1.23% (max 2.34%); 67% fell inside" in said
  assert "3 of 6 validity checks pass and 2 warn." in said
  assert "Check (a) bracketing warns: no FLOP budget" in said
  assert "Check (e) backtest warns: median error 1.2%" in said
  assert "The forecast at N=2.5e7, D=1e7 (loss 3.46 [3.3, 3.6]) is an extrapolation: " \
         "N 10.4× beyond the trained range and D 10× beyond the trained range." in said
  assert "Spending 1e15 FLOPs compute-optimally means N_opt = 2.11e5" in said


def test_report_md_without_forecasts_plan_or_fd():
  report = hand_report()
  for key in ("forecasts", "plan", "fid_map", "fid_col", "approach2"):
    report.pop(key)
  md = report_md.render(report)
  assert all(h + "\n" in md for h in HEADINGS)
  assert "No forecast was asked (`--at N=..,D=..`)." in md
  assert "No budget was asked (`--flops C`)." in md
  assert "fd_embed32cnn" not in md
  # Optional sections appear only with their data (--heldout DIR: report.json's heldout).
  assert report_md.sections(report) == list(report_md.SECTIONS)
  assert "## Held-out runs" not in md


def test_default_question():
  assert report_md.default_question([{"N": 2.5e7, "D": 1e7}], 1e15, "fd_embed32cnn",
                                    "a VAR model") == (
      "What loss and fd_embed32cnn will a VAR model of N=2.5e7 parameters on D=1e7 tokens "
      "reach, and how should 1e15 FLOPs be split between parameters and tokens?")
  assert report_md.default_question([], 1e21, None) == \
      "How should 1e21 FLOPs be split between parameters and tokens?"
  assert report_md.default_question([], None, None).startswith("What scaling law")


def test_frontier_is_dashed_where_n_opt_or_d_opt_leaves_the_trained_range_by_3x():
  # N_opt = D_opt = sqrt(C/6); trained N and D in [1e5, 1e6]: supported for N_opt in
  # [1e5/3, 3e6], i.e. C in [6 (1e5/3)^2, 6 (3e6)^2] = [6.67e9, 5.4e13].
  alloc = Allocation(a=0.5, b=0.5, G=1.0)
  grid = np.array([1e9, 6.6e9, 6.7e9, 1e12, 5.4e13, 5.5e13, 1e16])
  ok, label = plots.frontier_support(alloc, grid, [1e5, 1e6], [1e5, 1e6])
  assert ok.tolist() == [False, False, True, True, True, False, False]
  assert label == "unsupported: N_opt and D_opt outside trained N and D ×/÷3"
  ok, label = plots.frontier_support(alloc, grid[2:5], [1e5, 1e6], [1e5, 1e6])
  assert ok.all() and label == ""


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
  """The 28-run IsoFLOP registry with what the trainer and sweep now write: unique_tokens
  per epoch in summary.json, an fd column, and sweep.json's FLOP budget."""
  root = tmp_path_factory.mktemp("iso") / "runs"
  table = isoflop_table()
  write_registry(str(root), table, unfinished=0)
  unique = table["tokens"].median()  # half the runs repeat their data
  for i, row in table.iterrows():
    run = root / f"r{i:03d}"
    summary = json.loads((run / "summary.json").read_text())
    summary.update(unique_tokens=unique, epochs=row["tokens"] / unique,
                   fd_test=20 + float(np.exp(2 * (row["loss"] - 3))))
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "sweep.json").write_text(json.dumps({"budget_kind": "flops",
                                                "budget": row["flops"]}))
  return root, table, unique


ARGS = ("--d-col", "tokens", "--bootstrap", "10")


def test_report_writes_report_md_with_forecasts_plan_and_checks(capsys, registry, tmp_path):
  root, table, unique = registry
  out = tmp_path / "report"
  rc, stdout, err = run_cli(capsys, "report", "--runs", root, *ARGS, "--fid-col", "fd_test",
                            "--out", out, "--at", "N=2e8,D=2e10", "--at", "N=1e10,D=1e12",
                            "--flops", "1e21")
  assert rc == 0, err
  report = json.loads((out / "report.json").read_text())
  md = (out / "report.md").read_text()
  assert all(h + "\n" in md for h in HEADINGS)
  assert stdout.rstrip().endswith(f"report: {out / 'report.md'}")
  assert "[pass] (a) bracketing" in stdout and "plan 1e21 FLOPs" in stdout
  assert report["question"] == (
      "What loss and fd_test will a VAR model of N=2e8 parameters on D=2e10 tokens and "
      "N=1e10 parameters on D=1e12 tokens reach, and how should 1e21 FLOPs be split between "
      "parameters and tokens?")
  # Numbers in report.md are report.json's.
  num = report_md.num
  assert f"| alpha | {num(report['alpha'])} | [{num(report['intervals_95']['alpha'][0])}, " \
         f"{num(report['intervals_95']['alpha'][1])}] |" in md
  near, far = report["forecasts"]
  assert f"| N=2e8, D=2e10 | 2.4e19 | {num(near['loss'])} [" in md
  assert near["vs_trained"] == {"N": [1.0, "inside"], "D": [1.0, "inside"],
                                "C": [1.0, "inside"]}
  assert far["vs_trained"]["N"][1] == "beyond"
  # C: beyond the largest trained 6ND by the ratio, even where N and D would be inside.
  trained_c = 6 * table["params"] * table["tokens"]
  assert far["vs_trained"]["C"] == [pytest.approx(6e22 / trained_c.max()), "beyond"]
  assert far["vs_trained"]["N"][0] == pytest.approx(1e10 / table["params"].max())
  assert far["fid_interval_95"][0] <= far["fid"] <= far["fid_interval_95"][1]
  plan = report["plan"]
  assert 6 * plan["N_opt"] * plan["D_opt"] == pytest.approx(1e21)
  assert plan["verdict"] == validity.plan_verdict(plan["N_opt"], plan["D_opt"],
                                                  table["params"], table["tokens"])
  assert f"**Verdict:** {plan['verdict'][0].upper()}" in md
  # The checks: budgets from sweep.json, epochs from summary.json's unique_tokens, support
  # over the trained compute stretched to the largest forecast (6 x 1e10 x 1e12 FLOPs).
  checks = {r["check"]: r for r in report["validity"]}
  assert list(checks) == list(validity.NUMBERS)
  assert report["approach2"]["grouped_by"] == "sweep.budget"
  assert checks["agreement"]["status"] == "pass" and "interval_95_a" in report["approach2"]
  assert checks["repetition"]["value"] == pytest.approx(table["tokens"].max() / unique)
  assert checks["repetition"]["status"] == "warn"
  assert checks["support"]["detail"].startswith("over 1e+17-6e+22 FLOPs")
  runs = {r["run"]: r for r in report["runs"]}
  assert runs["r000"]["epochs"] == pytest.approx(table["tokens"][0] / unique)
  for name in ("loss_vs_compute.png", "allocation.png", "isoflop.png", "fid_vs_compute.png"):
    assert (out / name).stat().st_size > 10_000 and f"]({name})" in md
  # No run reports VAR's per-scale metrics: their section says so in one sentence.
  assert f"## {report_md.PER_SCALE}\n\n{report['per_scale']['skipped']}\n" in md


def test_forecast_and_plan_carry_a_validity_block(capsys, registry):
  root, table, unique = registry
  rc, out, err = run_cli(capsys, "forecast", "--runs", root, *ARGS, "--at", "N=2e8,D=2e10",
                         "--flops", "1e23", "--json")
  assert rc == 0, err
  report = json.loads(out)
  checks = {r["check"]: r for r in report["validity"]}
  assert [r["number"] for r in report["validity"]] == list("abcdef")
  assert checks["backtest"]["status"] == "skip"
  # Support over the forecast's compute range: 2.4e19 (the --at point) to 1e23.
  expect = validity.check_support(chinchilla_allocation(report), [6 * 2e8 * 2e10, 1e23],
                                  table["params"], table["tokens"])
  assert checks["support"] == expect
  rc, out, err = run_cli(capsys, "plan", "--runs", root, *ARGS, "--flops", "1e23",
                         "--unique-tokens", "1e12")
  assert rc == 0, err
  lines = out.splitlines()
  assert any(line.strip().startswith("[pass] (a) bracketing:") for line in lines)
  # --unique-tokens overrides the registry's column: no run repeats 1e12 tokens.
  assert any(line.strip().startswith("[pass] (f) repetition:") for line in lines)
  assert any(line.strip().startswith("[skip] (e) backtest:") for line in lines)
