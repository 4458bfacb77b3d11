"""Held-out validation (analysis/heldout.py, `report --heldout`, `forecast --heldout`).

Truth: L(N, D) = E + A / N^alpha + B / D^beta (test_analysis_cli.TRUE) with 0.2% log-normal
noise and fd = 20 + exp(2 (loss - 3)). The fitted registry is the 28-run IsoFLOP grid of
test_analysis_cli (4 budgets up to 5.12e19 FLOPs); the held-out registry has 3 runs at 4x
the largest budget, at 1/2, 1 and 2 times the true N_opt.
"""

import json
import os
import types

import numpy as np
import pandas as pd
import pytest

from analysis import CHINCHILLA, LOSS_TO_FID, bootstrap, chinchilla_allocation, fit_law
from analysis import heldout, report_md
from test_analysis_cli import TRUE, isoflop_table, run_cli

HELDOUT_FLOPS = 4 * 5.12e19


def true_loss(n, d):
  return TRUE["E"] + TRUE["A"] * n ** -TRUE["alpha"] + TRUE["B"] * d ** -TRUE["beta"]


def true_fd(loss):
  return 20 + np.exp(2 * (loss - 3))


def heldout_table(noise=0.002) -> pd.DataFrame:
  n = chinchilla_allocation(TRUE).n_opt(HELDOUT_FLOPS) * np.array([0.5, 1.0, 2.0])
  d = HELDOUT_FLOPS / (6 * n)
  rng = np.random.default_rng(1)
  loss = true_loss(n, d) * np.exp(rng.normal(0, noise, n.shape))
  return pd.DataFrame({"run": [f"h{i}" for i in range(3)], "params": n, "tokens": d,
                       "flops": 6 * n * d, "loss": loss,
                       "fd_test": true_fd(loss) * np.exp(rng.normal(0, noise, n.shape))})


def write_runs(root, table, sweep=False, drop=()):
  """A registry: one run per row, named by its `run` column (else r000...)."""
  for i, row in table.reset_index(drop=True).iterrows():
    run = os.path.join(root, str(row["run"]) if "run" in row else f"r{i:03d}")
    os.makedirs(run)
    with open(os.path.join(run, "config.json"), "w") as f:
      json.dump({"model": {"depth": 2}}, f)
    summary = {k: float(row[k]) for k in ("params", "tokens", "flops", "loss", "fd_test")
               if k in row and k not in drop}
    with open(os.path.join(run, "summary.json"), "w") as f:
      json.dump(summary, f)
    if sweep:
      with open(os.path.join(run, "sweep.json"), "w") as f:
        json.dump({"budget_kind": "flops", "budget": float(row["flops"])}, f)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
  root = tmp_path_factory.mktemp("study")
  fitted = isoflop_table()
  fitted["fd_test"] = true_fd(fitted["loss"]) * np.exp(
      np.random.default_rng(2).normal(0, 0.002, len(fitted)))
  held = heldout_table()
  write_runs(str(root / "study"), fitted, sweep=True)
  write_runs(str(root / "study-heldout"), held)
  return root, fitted, held


@pytest.fixture(scope="module")
def fits(study):
  """The law, its bootstrap and the loss -> fd map fitted on the study registry's runs."""
  _, fitted, _ = study
  fit = fit_law(CHINCHILLA, {"N": fitted["params"].to_numpy(), "D": fitted["tokens"].to_numpy()},
                fitted["loss"].to_numpy())
  fid_fit = fit_law(LOSS_TO_FID, {"loss": fitted["loss"].to_numpy()},
                    fitted["fd_test"].to_numpy())
  return fit, bootstrap(fit, 100), (fid_fit, bootstrap(fid_fit, 20))


def frame(held: pd.DataFrame) -> pd.DataFrame:
  """`held` by role, as heldout.load returns it."""
  return pd.DataFrame({"run": held["run"], "N": held["params"], "D": held["tokens"],
                       "loss": held["loss"], "fid": held["fd_test"]})


def test_heldout_forecasts_are_within_1pct_and_inside_their_intervals(study, fits):
  _, fitted, held = study
  fit, boot, fid = fits
  out = heldout.evaluate(fit, boot, fid, frame(held))
  assert out["num_runs"] == 3 and out["num_fitted"] == 28
  assert out["fitted_max"]["C"] == pytest.approx(fitted["flops"].max())
  rows = out["runs"]
  assert [r["run"] for r in rows] == ["h0", "h1", "h2"]  # by N
  for r, (_, h) in zip(rows, held.iterrows()):
    assert r["vs_fitted_max"]["C"] == pytest.approx(4.0)
    assert r["vs_fitted_max"]["N"] == pytest.approx(h["params"] / fitted["params"].max())
    assert r["loss_relative_error"] == pytest.approx((r["loss_forecast"] - h["loss"]) / h["loss"])
    assert abs(r["loss_relative_error"]) < 0.01
    lo, hi = r["loss_interval_95"]
    assert lo < r["loss_forecast"] < hi and hi / lo - 1 < 0.05
    assert r["loss_inside"] == (lo <= h["loss"] <= hi)
    # fd through the map at the forecast loss.
    assert r["fid_forecast"] == pytest.approx(fid[0].predict({"loss": [r["loss_forecast"]]})[0])
    assert abs(r["fid_relative_error"]) < 0.01
    f_lo, f_hi = r["fid_interval_95"]
    assert f_lo < r["fid_forecast"] < f_hi
    assert r["fid_inside"] == (f_lo <= h["fd_test"] <= f_hi)
  s = out["summary"]["loss"]
  errors = np.abs([r["loss_relative_error"] for r in rows])
  assert s["median_abs_relative_error"] == pytest.approx(np.median(errors))
  assert s["max_abs_relative_error"] == pytest.approx(errors.max()) and errors.max() < 0.01
  assert s["num_inside"] == sum(r["loss_inside"] for r in rows) == 3
  assert s["coverage"] == pytest.approx(1.0)
  assert out["summary"]["fid"]["num_runs"] == 3
  assert out["summary"]["fid"]["max_abs_relative_error"] < 0.01


def test_a_shifted_measurement_is_flagged_outside_with_its_error(study, fits):
  _, _, held = study
  fit, boot, fid = fits
  shifted = frame(held)
  shifted.loc[1, "loss"] *= 1.05
  out = heldout.evaluate(fit, boot, None, shifted)
  r = out["runs"][1]
  assert r["run"] == "h1" and not r["loss_inside"]
  # (forecast - measured) / measured with measured 5% high: about 1 / 1.05 - 1 = -4.8%.
  assert r["loss_relative_error"] == pytest.approx(1 / 1.05 - 1, abs=0.01)
  s = out["summary"]["loss"]
  assert s["num_inside"] == 2 and s["coverage"] == pytest.approx(2 / 3)
  assert s["max_abs_relative_error"] == pytest.approx(abs(r["loss_relative_error"]))
  assert s["median_abs_relative_error"] < 0.01
  assert "fid" not in out["summary"] and "fid_forecast" not in r
  block = {"source": "runs/x", "fid_col": None, **out}
  md = "\n".join(report_md.heldout_section({"heldout": block}))
  assert f"| h1 | {report_md.num(r['N'])} |" in md
  assert f"| {r['loss_relative_error']:+.2%} | **no** |" in md
  assert (f"The fit forecasts the 3 held-out runs' loss within "
          f"{s['median_abs_relative_error']:.2%} (median), max "
          f"{s['max_abs_relative_error']:.2%}; 2 of 3 measured losses lie in their 95% "
          f"intervals.") in md


def test_runs_without_fd_are_left_out_of_the_fd_summary(study, fits):
  _, _, held = study
  fit, boot, fid = fits
  table = frame(held)
  table.loc[0, "fid"] = np.nan
  out = heldout.evaluate(fit, boot, fid, table)
  first = out["runs"][0]
  assert first["fid"] is None and "fid_relative_error" not in first and "fid_forecast" in first
  assert out["summary"]["fid"]["num_runs"] == 2
  said = report_md.heldout_sentences({"fid_col": "fd_test", **out})
  assert said[1].startswith("The fit forecasts fd_test (through the loss -> fd_test map) of "
                            "the 2 held-out runs that report it within ")
  # A held-out registry without the column: loss only, and the report says why.
  args = types.SimpleNamespace(heldout="runs/x-heldout", fid_col="fd_test")
  block = heldout.block(args, table.drop(columns="fid"), fit, boot, fid)
  assert "fid" not in block["summary"] and "fid_forecast" not in block["runs"][0]
  said = report_md.heldout_sentences(block)
  assert said[-1] == ("fd_test was not forecast for the held-out runs: the held-out runs have "
                      "no 'fd_test' column.")


@pytest.mark.slow  # 18 s; the held-out logic has its own fast tests in this file
def test_report_heldout_section_and_forecast_table(capsys, study, tmp_path):
  root, _, held = study
  out = tmp_path / "report"
  rc, stdout, err = run_cli(capsys, "report", "--runs", root / "study", "--d-col", "tokens",
                            "--bootstrap", "20", "--fid-col", "fd_test", "--out", out,
                            "--heldout", root / "study-heldout")
  assert rc == 0, err
  report = json.loads((out / "report.json").read_text())
  block = report["heldout"]
  assert block["source"] == str(root / "study-heldout") and block["fid_col"] == "fd_test"
  assert [r["run"] for r in block["runs"]] == ["h0", "h1", "h2"]
  assert block["summary"]["loss"]["max_abs_relative_error"] < 0.01
  assert block["summary"]["fid"]["max_abs_relative_error"] < 0.01
  md = (out / "report.md").read_text()
  names = report_md.sections(report)
  assert names == ["Question", "Runs", "Fitted law", "Validity checklist", "Forecasts",
                   "Held-out runs", "Compute-optimal plan", report_md.PER_SCALE, "Figures",
                   "What the numbers say"]
  positions = [md.index(f"## {name}\n") for name in names]
  assert positions == sorted(positions)
  section = md.split("## Held-out runs\n")[1].split("## Compute-optimal plan")[0]
  num = report_md.num
  assert ("| run | N | D | C | × fitted max N, D, C | loss | forecast [95%] | error | inside "
          "| fd_test | fd_test forecast [95%] | error | inside |") in section
  r = block["runs"][0]
  assert (f"| h0 | {num(r['N'])} | {num(r['D'])} | {num(HELDOUT_FLOPS)} | "
          f"{num(r['vs_fitted_max']['N'])}×, {num(r['vs_fitted_max']['D'])}×, 4× | "
          f"{num(r['loss'])} | {num(r['loss_forecast'])} [") in section
  s = block["summary"]["loss"]
  sentence = (f"The fit forecasts the 3 held-out runs' loss within "
              f"{s['median_abs_relative_error']:.2%} (median), max "
              f"{s['max_abs_relative_error']:.2%}; {s['num_inside']} of 3 measured losses lie "
              f"in their 95% intervals.")
  assert sentence in section
  assert sentence in md.split("## What the numbers say\n")[1]
  assert "the held-out runs go up to 4× that C" in section
  assert "held-out h0 (N=" in stdout and sentence in stdout
  # Support (b) spans the held-out compute as it does the forecasts'.
  support = next(c for c in report["validity"] if c["check"] == "support")
  assert support["detail"].startswith(f"over 1e+17-{HELDOUT_FLOPS:.3g} FLOPs")

  rc, stdout, err = run_cli(capsys, "forecast", "--runs", root / "study", "--d-col", "tokens",
                            "--bootstrap", "20", "--fid-col", "fd_test",
                            "--heldout", root / "study-heldout", "--json")
  assert rc == 0, err
  forecast = json.loads(stdout)
  assert forecast["predict"] == [] and "fid" not in forecast
  assert forecast["heldout"]["runs"] == block["runs"]  # same fit, seed and bootstrap
  from analysis.cli import _print
  _print(forecast, as_json=False)
  text = capsys.readouterr().out
  assert "heldout:" in text and "| h2 |" in text and sentence in text


def test_heldout_mistakes_are_one_line(capsys, study, tmp_path):
  root, _, held = study
  base = ("--runs", root / "study", "--d-col", "tokens", "--bootstrap", "10")
  rc, _, err = run_cli(capsys, "report", *base, "--out", tmp_path / "r", "--heldout",
                       tmp_path / "nowhere")
  assert rc == 2 and err == f"analysis: error: --heldout {tmp_path / 'nowhere'}: no such " \
                            "directory\n"
  empty = tmp_path / "empty"
  os.makedirs(empty / "unfinished")
  (empty / "unfinished" / "config.json").write_text("{}")
  rc, _, err = run_cli(capsys, "forecast", *base, "--heldout", empty)
  assert rc == 2 and err.splitlines()[-1] == \
      f"analysis: error: --heldout {empty}: no finished runs (summary.json) there"
  no_loss = tmp_path / "no-loss"
  write_runs(str(no_loss), held, drop=("loss",))
  rc, _, err = run_cli(capsys, "forecast", *base, "--heldout", no_loss)
  assert rc == 2 and err.count("\n") == 1
  assert err.startswith(f"analysis: error: --heldout {no_loss}: --loss-col 'loss' is not a "
                        "column; columns are: run, run_dir, params, tokens, flops, fd_test")
  rc, _, err = run_cli(capsys, "forecast", *base)
  assert rc == 2 and "--heldout DIR" in err
