"""analysis.validity: each check against designs whose answer is known in closed form.

The bracketing design is built from a known Chinchilla law (Hoffmann et al.'s fit,
E = 1.69, A = 406.4, B = 410.7, alpha = 0.34, beta = 0.28) with C = 6 N D: at each of 3
FLOP budgets, 5 sizes spaced evenly in log N over 0.1-10x the closed-form N_opt(C), so the
middle size is the optimum. The demo grid is issue 16's: 5 sizes (38k-2.4M) x 3 token
budgets (2.5e5, 5e5, 1e6).
"""

import numpy as np
import pytest

from analysis import validity
from analysis.compute_optimal import Allocation

LAW = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
BUDGETS = np.array([1e18, 1e19, 1e20])


def chinchilla_loss(n, d):
  return LAW["E"] + LAW["A"] / n ** LAW["alpha"] + LAW["B"] / d ** LAW["beta"]


def n_opt(c):
  # Independent of analysis.compute_optimal: minimise A N^-alpha + B (6N/C)^beta over N.
  alpha, beta = LAW["alpha"], LAW["beta"]
  return ((alpha * LAW["A"]) / (beta * LAW["B"])) ** (1 / (alpha + beta)) * \
      (c / 6) ** (beta / (alpha + beta))


def isoflop_design(spread):
  """3 budgets x 5 sizes at n_opt(C) x 10^spread; returns n, d, flops, loss."""
  n = np.concatenate([n_opt(c) * 10.0 ** np.asarray(spread) for c in BUDGETS])
  flops = np.repeat(BUDGETS, len(spread)) * (1 + 0.01 * np.tile(np.arange(len(spread)),
                                                                len(BUDGETS)))
  d = flops / (6 * n)
  return n, d, flops, chinchilla_loss(n, d)


def demo_grid():
  n = np.repeat([3.8e4, 1.1e5, 3.2e5, 9.0e5, 2.4e6], 3)
  d = np.tile([2.5e5, 5e5, 1e6], 5)
  return n, d, 6 * n * d


def test_closed_form_optimum_is_the_loss_minimum():
  # The reference N_opt really is the minimum of the law along C = 6 N D.
  c = 1e19
  grid = n_opt(c) * np.geomspace(0.5, 2, 2001)
  assert grid[np.argmin(chinchilla_loss(grid, c / (6 * grid)))] == pytest.approx(
      n_opt(c), rel=2e-3)


def test_bracketing_design_passes_bracketing_and_support():
  n, d, flops, loss = isoflop_design(np.linspace(-1, 1, 5))
  rec = validity.check_bracketing(n, flops, loss)
  assert rec["status"] == "pass" and rec["value"] == 3, rec
  assert "all 3 FLOP budgets" in rec["detail"]
  for params in (LAW, Allocation(a=0.28 / 0.62, b=0.34 / 0.62,
                                 G=(0.34 * 406.4 / (0.28 * 410.7)) ** (1 / 0.62))):
    sup = validity.check_support(params, BUDGETS, n, d)
    # N_opt(C) is the middle size of each budget: inside the trained N; D likewise.
    assert sup["status"] == "pass" and sup["value"] == pytest.approx(1.0), sup
  assert validity.plan_verdict(n_opt(1e20), 1e20 / (6 * n_opt(1e20)), n, d) == \
      "inside the trained N and D ranges: supported by these runs"


def test_bracketing_with_explicit_budget_column_and_seeds():
  n, d, flops, loss = isoflop_design(np.linspace(-1, 1, 5))
  budget = np.repeat(["small", "mid", "large"], 5)
  # Two seeds per run: the mean over seeds decides the minimum.
  rec = validity.check_bracketing(np.tile(n, 2), np.tile(flops, 2),
                                  np.concatenate([loss, loss + 1e-4]),
                                  budget=np.tile(budget, 2))
  assert rec["status"] == "pass" and rec["value"] == 3, rec


def test_one_sided_grid_warns_on_bracketing_and_support():
  n, d, flops, loss = isoflop_design(np.linspace(-3, -1, 5))  # all below the optimum
  rec = validity.check_bracketing(n, flops, loss)
  assert rec["status"] == "warn" and rec["value"] == 0, rec
  assert "0 of 3" in rec["detail"] and "largest N" in rec["detail"]
  sup = validity.check_support(LAW, BUDGETS, n, d)
  # N_opt(1e20) is 10x the largest trained N. The smallest trained D is the largest size
  # at 1e18 FLOPs (jittered +4%): 1.04e18 / (6 x 0.1 N_opt) = 10.4 D_opt(1e18) below it.
  assert sup["status"] == "warn" and sup["value"] == pytest.approx(10.4, rel=1e-9), sup
  assert "N_opt lies 10x beyond" in sup["detail"] and "D_opt lies 10.4x below" in sup["detail"]


def test_demo_grid_has_no_isoflop_budget():
  n, d, flops = demo_grid()
  rec = validity.check_bracketing(n, flops, chinchilla_loss(n, d))
  assert rec["status"] == "warn" and rec["value"] == 0
  assert "no FLOP budget has three or more model sizes" in rec["detail"]


def test_support_factor_in_closed_form():
  # An allocation with N_opt = D_opt = sqrt(C/6).
  alloc = Allocation(a=0.5, b=0.5, G=1.0)
  # Trained N and D in [1e5, 1e6]; C from 6e10 (N_opt = D_opt = 1e5) to 6e16 (1e8): 100x.
  sup = validity.check_support(alloc, [6e10, 6e16], [1e5, 1e6], [1e5, 1e6])
  assert sup["status"] == "warn" and sup["value"] == pytest.approx(100.0)
  assert "100x beyond the trained N (1e+05-1e+06)" in sup["detail"]
  # Up to 5.4e13 FLOPs (N_opt = D_opt = 3e6): 3x outside, at the limit: pass.
  sup = validity.check_support((alloc.n_opt, alloc.d_opt), [6e10, 5.4e13],
                               [1e5, 1e6], [1e5, 1e6])
  assert sup["status"] == "pass" and sup["value"] == pytest.approx(3.0)


def test_plan_verdict_states_the_closed_form_factor():
  n, d, _ = demo_grid()
  # Issue 16's demo plan: 211k parameters on 7.88e8 tokens; the largest D trained is 1e6.
  assert validity.plan_verdict(2.11e5, 7.88e8, n, d) == \
      "extrapolates 788x beyond the trained D: not supported by these runs"
  # A plan below the smallest N: 3.8e4 / 1.9e3 = 20x.
  assert validity.plan_verdict(1.9e3, 5e5, n, d) == \
      "extrapolates 20x below the trained N: not supported by these runs"
  # 2x beyond the largest N and inside D.
  assert validity.plan_verdict(4.8e6, 5e5, n, d) == \
      "within 3x of the trained N and D (at most 2x outside): supported by these runs"


def test_floor_identifiability():
  rec = validity.check_floor(2e-11, 3.1)
  assert rec["status"] == "warn" and rec["value"] == pytest.approx(2e-11 / 3.1)
  assert "no floor" in rec["detail"]
  rec = validity.check_floor(1.69, 2.0, (1.60, 1.80))
  assert rec["status"] == "pass" and rec["value"] == pytest.approx(0.845)
  rec = validity.check_floor(1.69, 2.0, (0.5, 2.0))  # 1.5 wide = 89% of E
  assert rec["status"] == "warn" and "89% of E" in rec["detail"]
  assert validity.check_floor(None, 2.0)["status"] == "skip"


def test_backtest():
  rec = validity.check_backtest([0.002, 0.004, 0.03], coverage=2 / 3)
  assert rec["status"] == "pass" and rec["value"] == pytest.approx(0.004)
  assert "median error 0.40%" in rec["detail"] and "covers 67%" in rec["detail"]
  rec = validity.check_backtest([-0.02, 0.03])
  assert rec["status"] == "warn" and rec["value"] == pytest.approx(0.025)
  assert validity.check_backtest(None)["status"] == "skip"


def test_repetition():
  # Issue 16's demo: about 2.5e5 unique tokens an epoch.
  rec = validity.check_repetition([2.5e5, 5e5, 1.05e6], 2.5e5)
  assert rec["status"] == "warn" and rec["value"] == pytest.approx(4.2)
  assert "1 of 3 runs" in rec["detail"]
  rec = validity.check_repetition([2.5e5, 5e5, 1e6], 2.5e5)  # exactly 4 epochs: allowed
  assert rec["status"] == "pass" and rec["value"] == pytest.approx(4.0)
  rec = validity.check_repetition([1e6, 2e6], [1e6, 1e6])  # per-run unique tokens
  assert rec["status"] == "pass" and rec["value"] == pytest.approx(2.0)
  assert validity.check_repetition([1e6], None)["status"] == "skip"


def test_repetition_with_unknown_runs():
  # A registry's unique_tokens column, missing (NaN) for one run.
  rec = validity.check_repetition([1e6, 5e6, 2e6], [1e6, 1e6, np.nan])
  assert rec["status"] == "warn" and rec["value"] == pytest.approx(5.0)
  assert "1 of 2 runs" in rec["detail"] and "unknown for 1 runs" in rec["detail"]
  assert validity.check_repetition([1e6], [np.nan])["status"] == "skip"


def test_agreement_of_approaches_2_and_3():
  # Intervals for both: overlap decides, however far apart the points are.
  rec = validity.check_agreement(0.50, 0.46, a2_interval=(0.47, 0.53),
                                 a3_interval=(0.44, 0.48), num_budgets=4)
  assert rec["status"] == "pass" and rec["number"] == "d"
  assert rec["value"] == pytest.approx(0.04)
  assert "from 4 budgets" in rec["detail"] and "intervals overlap" in rec["detail"]
  rec = validity.check_agreement(0.50, 0.46, a2_interval=(0.49, 0.51),
                                 a3_interval=(0.45, 0.47))
  assert rec["status"] == "warn" and "do not overlap" in rec["detail"]
  # Without both intervals: |a2 - a3| <= 0.1.
  assert validity.check_agreement(0.55, 0.46)["status"] == "pass"
  rec = validity.check_agreement(0.60, 0.46, a3_interval=(0.45, 0.47))
  assert rec["status"] == "warn" and rec["value"] == pytest.approx(0.14)
  assert "differ by 0.14 (over 0.1)" in rec["detail"]
  rec = validity.check_agreement(None, 0.46, skipped="Approach 2 needs two budgets")
  assert rec["status"] == "skip" and rec["value"] is None
  assert "Approach 2 needs two budgets" in rec["detail"]


def test_agreement_on_the_bracketing_design():
  # Approach 2 on the exact law's IsoFLOP design: a2 = a3 = beta / (alpha + beta) closely,
  # inside both bootstrap intervals (within-budget resampling of exact points moves little).
  from analysis.compute_optimal import approach2, approach2_exponents
  n, d, flops, loss = isoflop_design(np.linspace(-1, 1, 5))
  a3 = LAW["beta"] / (LAW["alpha"] + LAW["beta"])
  minima = approach2(n, flops, loss)
  assert minima.allocation.a == pytest.approx(a3, abs=0.01)
  samples = approach2_exponents(n, flops, loss, 50, seed=0)
  assert len(samples) > 25
  iv = np.percentile(samples, [2.5, 97.5])
  rec = validity.check_agreement(minima.allocation.a, a3, a2_interval=iv,
                                 a3_interval=(a3 - 0.01, a3 + 0.01))
  assert rec["status"] == "pass", rec
  # An allocation exponent 0.2 off (a law whose optimum moves differently) warns.
  assert validity.check_agreement(minima.allocation.a, a3 + 0.2)["status"] == "warn"


def test_budgets_from_a_sweep_column_group_runs_the_tolerance_would_split():
  # IsoFLOP runs land within the sweep's tolerance of their budget, here +-8%: grouping by
  # FLOPs within 5% splits a budget, the sweep's budget column does not.
  from analysis.compute_optimal import approach2, budget_groups
  n, d, _, loss = isoflop_design(np.linspace(-1, 1, 5))
  jitter = np.tile([0.92, 0.96, 1.0, 1.04, 1.08], 3)
  flops = np.repeat(BUDGETS, 5) * jitter
  budget = np.repeat(BUDGETS, 5)
  assert len(budget_groups(flops, 0.05)) > 3
  groups = budget_groups(flops, budget=budget)
  assert [list(g) for g in groups] == [list(range(5)), list(range(5, 10)), list(range(10, 15))]
  assert validity.check_bracketing(n, flops, loss, budget=budget)["value"] == 3
  assert len(approach2(n, flops, loss, budget=budget).flops) == 3


def test_checklist_lines():
  recs = [validity.check_repetition([1e6], None), validity.check_floor(2e-11, 3.1)]
  lines = validity.checklist(recs).splitlines()
  assert lines[0].startswith("[skip] (f) repetition: ")
  assert lines[1].startswith("[warn] (c) floor: ")


def test_analysis_validity_imports_no_varjax():
  import ast
  import inspect
  tree = ast.parse(inspect.getsource(validity))
  names = [a.name for node in ast.walk(tree) if isinstance(node, ast.Import)
           for a in node.names]
  names += [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
  assert not any(name.split(".")[0] == "varjax" for name in names)


def test_fit_reports_validity_in_json_and_as_a_checklist(capsys, tmp_path):
  import json
  from analysis import cli
  from test_analysis_cli import isoflop_table, run_cli
  path = tmp_path / "iso.csv"
  table = isoflop_table()
  table.to_csv(path, index=False)
  # 2.5e8 unique tokens an epoch: the most tokens any run sees, over it, in epochs.
  unique = 2.5e8
  rc, out, err = run_cli(capsys, "fit", "--csv", path, "--d-col", "tokens",
                         "--unique-tokens", unique, "--json")
  assert rc == 0, err
  records = {r["check"]: r for r in json.loads(out)["validity"]}
  assert list(records) == ["bracketing", "support", "floor", "agreement", "backtest",
                           "repetition"]
  assert [r["number"] for r in records.values()] == list("abcdef")
  # 4 budgets x 7 sizes at 1/8-8x the true N_opt: every minimum interior.
  assert records["bracketing"]["status"] == "pass" and records["bracketing"]["value"] == 4
  assert records["support"]["status"] == "pass"
  assert records["floor"]["status"] == "pass"
  # Without --bootstrap neither approach has an interval: |a2 - a3| <= 0.1 decides.
  assert records["agreement"]["status"] == "pass" and records["agreement"]["value"] < 0.02
  assert records["backtest"]["status"] == "pass" and records["backtest"]["value"] < 0.01
  assert records["repetition"]["status"] == "warn"
  assert records["repetition"]["value"] == pytest.approx(table["tokens"].max() / unique)
  cli._print({"validity": list(records.values())}, as_json=False)
  lines = capsys.readouterr().out.splitlines()
  assert [line.split(":")[0].strip() for line in lines] == [
      "[pass] (a) bracketing", "[pass] (b) support", "[pass] (c) floor",
      "[pass] (d) agreement", "[pass] (e) backtest", "[warn] (f) repetition"]


def test_plan_states_its_verdict(capsys, tmp_path):
  import json
  from test_analysis_cli import isoflop_table, run_cli
  path = tmp_path / "iso.csv"
  table = isoflop_table()
  table.to_csv(path, index=False)
  verdicts = {}
  for flops in (6.4e18, 1e25):  # inside the IsoFLOP budgets; 2e5x beyond the largest
    rc, out, err = run_cli(capsys, "plan", "--csv", path, "--d-col", "tokens", "--flops",
                           flops, "--bootstrap", "5", "--json")
    assert rc == 0, err
    plan = json.loads(out)
    assert plan["verdict"] == validity.plan_verdict(plan["N_opt"], plan["D_opt"],
                                                    table["params"], table["tokens"])
    verdicts[flops] = plan["verdict"]
  assert verdicts[6.4e18] == "inside the trained N and D ranges: supported by these runs"
  assert verdicts[1e25].startswith("extrapolates ")
  assert verdicts[1e25].endswith(": not supported by these runs")


def test_fd_signal_passes_a_monotone_map_and_warns_on_noise():
  loss = np.array([4.71, 4.64, 4.58, 4.49, 4.40, 4.33, 4.31])
  fd = 20 + np.exp(2.0 * (loss - 4.0))  # fd rises with loss: the map is identified
  rec = validity.check_fd_signal(loss, fd, "fd_x")
  assert rec["status"] == "pass" and rec["number"] == "g" and rec["value"] == pytest.approx(1.0)
  # The demo's six fd measurements, which do not move with the loss (issue 16's runs).
  demo_loss = [4.578, 4.354, 4.306, 4.328, 4.360, 4.401]
  demo_fd = [23.53, 23.31, 23.71, 23.65, 22.94, 23.46]
  rec = validity.check_fd_signal(demo_loss, demo_fd, "fd_embed32cnn")
  assert rec["status"] == "warn" and "does not track the loss" in rec["detail"]
  assert "22.9-23.7" in rec["detail"]
  assert validity.check_fd_signal(loss[:3], fd[:3])["status"] == "skip"


def test_plan_verdict_flags_compute_beyond_the_runs_with_n_and_d_inside():
  # Two runs of 6e10 FLOPs each; the plan pairs the larger N with the larger D.
  n, d = np.array([1e4, 1e5]), np.array([1e6, 1e5])
  assert validity.plan_verdict(1e5, 1e6, n, d) == (
      "inside the trained N and D ranges, but at 10x the largest trained compute: an "
      "extrapolation in compute, not supported by these runs")
  assert validity.plan_verdict(3e4, 3e5, n, d).endswith(": supported by these runs")
