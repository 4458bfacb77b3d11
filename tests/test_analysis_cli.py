"""`python -m analysis`: the fit contract, forecasts, plans, registries and bad data."""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from analysis import fit_law, bootstrap, load_runs, saturating_power_law, wall_time_hours
from analysis.compute_optimal import PEAK_FLOPS
from test_analysis_fit import CHINCHILLA_CSV

TRUE = {"E": 1.9, "A": 420.0, "B": 1700.0, "alpha": 0.33, "beta": 0.30}


def analysis(*args, timeout=600):
  return subprocess.run([sys.executable, "-m", "analysis", *args], capture_output=True,
                        text=True, timeout=timeout)


def run_cli(capsys, *argv) -> tuple[int, str, str]:
  """`python -m analysis ARGV` in-process (a subprocess costs seconds of imports):
  (exit code, stdout, stderr)."""
  from analysis.cli import main
  try:
    rc = main([str(a) for a in argv])
  except SystemExit as e:  # argparse
    rc = e.code
  out, err = capsys.readouterr()
  return rc, out, err


def synthetic_table(seed=0, noise=0.003):
  rng = np.random.default_rng(seed)
  n = np.repeat(np.geomspace(1e7, 1e9, 6), 5)
  d = n * np.tile(np.geomspace(5, 80, 5), 6)
  loss = TRUE["E"] + TRUE["A"] * n ** -TRUE["alpha"] + TRUE["B"] * d ** -TRUE["beta"]
  return pd.DataFrame({"params": n, "tokens": d, "flops": 6 * n * d,
                       "loss": loss * np.exp(rng.normal(0, noise, n.shape))})


def isoflop_table(noise=0.002):
  """An IsoFLOP grid: 4 budgets x 7 model sizes around the true optimum, log-normal noise."""
  from analysis import chinchilla_allocation
  flops = np.repeat([1e17, 8e17, 6.4e18, 5.12e19], 7)
  n = chinchilla_allocation(TRUE).n_opt(flops) * np.tile(np.geomspace(1 / 8, 8, 7), 4)
  d = flops / (6 * n)
  loss = TRUE["E"] + TRUE["A"] * n ** -TRUE["alpha"] + TRUE["B"] * d ** -TRUE["beta"]
  loss = loss * np.exp(np.random.default_rng(0).normal(0, noise, n.shape))
  return pd.DataFrame({"params": n, "tokens": d, "flops": flops, "loss": loss})


def write_registry(root, table, unfinished=1):
  for i, row in table.reset_index(drop=True).iterrows():
    run = os.path.join(root, f"r{i:03d}")
    os.makedirs(run)
    with open(os.path.join(run, "config.json"), "w") as f:
      json.dump({"model": {"depth": 2}, "run": {"seed": 0}}, f)
    with open(os.path.join(run, "metrics.jsonl"), "w") as f:
      f.write(json.dumps({"step": 1, "loss": float(row["loss"]) + 1}) + "\n")
    with open(os.path.join(run, "summary.json"), "w") as f:
      json.dump({"params": row["params"], "tokens": row["tokens"],
                 "flops_6nd": row["flops"], "loss": row["loss"]}, f)
  for j in range(unfinished):
    run = os.path.join(root, f"unfinished{j}")
    os.makedirs(run)
    with open(os.path.join(run, "config.json"), "w") as f:
      json.dump({}, f)


def test_fit_contract_on_chinchilla_csv():
  out = analysis("fit", "--law", "chinchilla", "--csv", CHINCHILLA_CSV, "--n-col",
                 "Model Size", "--c-col", "Training FLOP", "--loss-col", "loss",
                 "--drop-top-loss", "5", "--bootstrap", "20", "--json",
                 "--at", "N=7e10,D=1.4e12")
  assert out.returncode == 0, out.stderr
  report = json.loads(out.stdout)
  assert {"E", "A", "B", "alpha", "beta"} <= set(report)
  assert report["num_points"] == 240
  assert "warnings" not in report  # E = 1.82 is a floor
  assert report["allocation"]["a"] == pytest.approx(0.513, abs=0.01)
  lo, hi = report["intervals_95"]["alpha"]
  assert lo < report["alpha"] < hi
  assert report["backtest"]["num_held_out"] >= 1
  (pred,) = report["predict"]
  assert pred["extrapolation"]["beyond_fitted_range"]
  assert pred["interval_95"][0] < pred["loss"] < pred["interval_95"][1]


@pytest.mark.slow
def test_auto_law_reports_its_choice_and_each_candidates_backtest(tmp_path):
  path = tmp_path / "runs.csv"
  synthetic_table().to_csv(path, index=False)
  out = analysis("fit", "--law", "auto", "--csv", str(path), "--n-col", "params",
                 "--d-col", "tokens", "--json", "--at", "N=1e10,D=2e11", "--at",
                 "N=1e8,C=1e19")
  assert out.returncode == 0, out.stderr
  report = json.loads(out.stdout)
  assert set(report["candidates"]) == {"chinchilla", "overtrain", "farseer"}
  errors = {k: v["backtest"]["mean_relative_error"] for k, v in report["candidates"].items()}
  assert report["law"] == min(errors, key=errors.get)
  assert len(report["predict"]) == 2
  assert report["predict"][1]["D"] == pytest.approx(1e19 / 6e8)


def test_registry_fit_recovers_the_true_law_and_skips_unfinished(tmp_path):
  write_registry(str(tmp_path), synthetic_table(noise=0.0005))
  with pytest.warns(UserWarning, match="1 unfinished run"):
    table = load_runs(str(tmp_path))
  assert len(table) == 30 and table["config.model.depth"].eq(2).all()
  out = analysis("fit", "--runs", str(tmp_path), "--d-col", "tokens", "--json",
                 "--no-backtest")
  assert out.returncode == 0, out.stderr
  report = json.loads(out.stdout)
  for key in ("alpha", "beta"):
    assert report[key] == pytest.approx(TRUE[key], abs=0.03)


def test_plan_allocates_the_budget_and_times_it(tmp_path):
  path = tmp_path / "runs.csv"
  synthetic_table().to_csv(path, index=False)
  out = analysis("plan", "--flops", "1e21", "--csv", str(path), "--d-col", "tokens",
                 "--accelerator", "tpu-v5p", "--mfu", "0.5", "--chips", "64",
                 "--bootstrap", "50", "--json")
  assert out.returncode == 0, out.stderr
  plan = json.loads(out.stdout)
  assert 6 * plan["N_opt"] * plan["D_opt"] == pytest.approx(1e21)
  assert plan["wall_time_hours"] == pytest.approx(1e21 / (PEAK_FLOPS["tpu-v5p"] * 0.5 * 64) / 3600)
  assert plan["extrapolation"]["beyond_fitted_range"]
  largest = synthetic_table()["flops"].max()
  assert plan["extrapolation"]["C"] == pytest.approx(1e21 / largest)
  lo, hi = plan["loss_interval_95"]
  assert lo < plan["loss"] < hi


def test_report_writes_plots_and_both_allocation_estimates(tmp_path):
  write_registry(str(tmp_path / "runs"), isoflop_table(), unfinished=0)
  out = analysis("report", "--runs", str(tmp_path / "runs"), "--d-col", "tokens",
                 "--bootstrap", "50", "--out", str(tmp_path / "report"))
  assert out.returncode == 0, out.stderr
  report = json.loads((tmp_path / "report" / "report.json").read_text())
  expected_a = TRUE["beta"] / (TRUE["alpha"] + TRUE["beta"])
  assert report["allocation"]["a"] == pytest.approx(expected_a, abs=0.05)
  assert report["approach2"]["a"] == pytest.approx(expected_a, abs=0.05)
  assert len(report["plots"]) == 5 and all(os.path.getsize(p) > 10_000 for p in report["plots"])


@pytest.mark.parametrize("mutate, message", [
    (lambda t: t.assign(loss=t["loss"].where(t.index != 3)), "NaN"),
    (lambda t: t.assign(tokens=t["tokens"].where(t.index != 0, -5.0)), "must be positive"),
    (lambda t: t.iloc[:5], "only 5 points"),
    (lambda t: t.assign(params=1e8), "two distinct values of N"),
    (lambda t: t.drop(columns="tokens"), "'tokens' is not a column"),
])
def test_bad_data_is_one_clear_line(tmp_path, capsys, mutate, message):
  path = tmp_path / "bad.csv"
  mutate(synthetic_table()).to_csv(path, index=False)
  rc, _, err = run_cli(capsys, "fit", "--csv", path, "--d-col", "tokens", "--no-backtest")
  assert rc == 2
  assert "Traceback" not in err
  assert err.count("\n") == 1 and message in err


def test_missing_inputs_are_one_clear_line(tmp_path, capsys):
  rc, _, err = run_cli(capsys, "fit", "--csv", tmp_path / "nope.csv", "--d-col", "tokens")
  assert rc == 2 and "CSV file not found" in err
  rc, _, err = run_cli(capsys, "plan", "--flops", "1e20", "--runs", tmp_path / "none")
  assert rc == 2 and "does not exist" in err


@pytest.mark.slow  # 19 s; the missing-floor check stays in test_analysis_validity::test_floor_identifiability
def test_a_fit_without_a_floor_is_flagged_and_the_floor_can_be_fixed(tmp_path, capsys):
  """Runs with no floor (pure power laws, as on tiny runs) fit E ~ 0: a warning says so
  (runs with a floor get none: the Chinchilla contract test). Fixing E at the truth
  recovers the exponents."""
  table = synthetic_table()
  path = tmp_path / "floor.csv"
  table.to_csv(path, index=False)
  (tmp_path / "nofloor.csv").write_text(
      table.assign(loss=table["loss"] - TRUE["E"]).to_csv(index=False))
  args = ("--d-col", "tokens", "--no-backtest", "--json")
  out = analysis("fit", "--csv", str(tmp_path / "nofloor.csv"), *args)
  assert out.returncode == 0, out.stderr
  report = json.loads(out.stdout)
  assert report["E"] < 1e-2 * table["loss"].min()
  assert len(report["warnings"]) == 1 and "show no floor" in report["warnings"][0]
  from analysis.cli import _print
  _print(report, as_json=False)
  assert "warning: chinchilla: E fitted to" in capsys.readouterr().out
  fixed = json.loads(analysis("fit", "--csv", str(path), "--fix-e", "1.9", *args).stdout)
  assert fixed["E"] == pytest.approx(1.9) and "E = 1.9 fixed" in fixed["formula"]
  assert abs(fixed["alpha"] - TRUE["alpha"]) <= 0.01 and abs(fixed["beta"] - TRUE["beta"]) <= 0.01
  bad = analysis("forecast", "--csv", str(path), "--d-col", "tokens", "--fix-e", "9",
                 "--at", "N=1e10,D=1e11")
  assert bad.returncode == 2 and bad.stderr.count("\n") == 1
  assert "E must be positive and below the lowest observed loss" in bad.stderr


def test_wall_time_rejects_bad_settings():
  from analysis import AnalysisError
  with pytest.raises(AnalysisError, match="unknown accelerator"):
    wall_time_hours(1e20, "tpu-v9", 0.5)
  with pytest.raises(AnalysisError, match="mfu"):
    wall_time_hours(1e20, "h100", 1.5)


@pytest.mark.slow
def test_synthetic_truth_is_covered_at_the_nominal_rate():
  """Known saturating law + log-normal noise: 95% intervals cover the truth ~95% of the time."""
  law = saturating_power_law("C")
  theta = np.array([np.log(200.0), np.log(2.0), 0.2])
  truth = {"E": 2.0, "alpha": 0.2}
  rng = np.random.default_rng(0)
  c = np.geomspace(1e15, 1e19, 30)
  c_new = np.geomspace(1e15, 1e19, 10)
  param_hits, pred_hits, pred_total, reps = {k: 0 for k in truth}, 0, 0, 30
  for r in range(reps):
    y = law.predict(theta, {"C": c}) * np.exp(rng.normal(0, 0.01, c.shape))
    boot = bootstrap(fit_law(law, {"C": c}, y), 100, seed=r)
    for key, (lo, hi) in boot.intervals().items():
      if key in truth:
        param_hits[key] += lo <= truth[key] <= hi
    y_new = law.predict(theta, {"C": c_new}) * np.exp(rng.normal(0, 0.01, c_new.shape))
    lo, hi = boot.predict_interval({"C": c_new})
    pred_hits += int(np.sum((y_new >= lo) & (y_new <= hi)))
    pred_total += len(c_new)
  assert abs(pred_hits / pred_total - 0.95) <= 0.10
  for key in truth:
    assert abs(param_hits[key] / reps - 0.95) <= 0.10
