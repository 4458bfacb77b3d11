"""`python -m analysis` refuses bad arguments and bad data in one line, before any fit;
long fits show progress on a terminal.

The CLI runs in-process (`analysis.cli.main`): a subprocess costs seconds of imports.
Where a refusal must come before fitting, the fit is replaced by one that fails the test.
"""

import io
import json
import os
import sys
import warnings

import numpy as np
import pytest

from analysis import bootstrap, cli, load_runs, pipeline
from analysis.fitting import fit_law
from analysis.laws import CHINCHILLA
from test_analysis_cli import run_cli, synthetic_table, write_registry


def strict_json(text: str):
  """json.loads that refuses NaN and Infinity (Python writes them; JSON has none)."""
  def refuse(name):
    raise ValueError(f"not JSON: {name}")
  return json.loads(text, parse_constant=refuse)


def assert_one_line_refusal(rc, err, message, code=2):
  assert rc == code, err
  assert "Traceback" not in err
  assert err.count("\n") == 1 and err.startswith("analysis: error: "), err
  assert message in err, err


@pytest.fixture
def csv(tmp_path):
  path = tmp_path / "runs.csv"
  synthetic_table().to_csv(path, index=False)
  return str(path)


@pytest.fixture
def no_fit(monkeypatch):
  """Refusals must come before the (possibly minutes-long) fit."""
  def fail(*args, **kwargs):
    raise AssertionError("the fit ran before the arguments were checked")
  monkeypatch.setattr(pipeline, "fit_lnd", fail)
  monkeypatch.setattr(pipeline, "fit_law", fail)


FORECAST = ("forecast", "--d-col", "tokens")
PLAN = ("plan", "--flops", "1e21", "--d-col", "tokens")


@pytest.mark.parametrize("argv, message", [
    (("forecast", "--d-col", "tokens", "--flops=-1e20"), "--flops: must be a positive"),
    (("forecast", "--d-col", "tokens", "--flops", "nan"), "--flops: must be a positive"),
    (("forecast", "--d-col", "tokens", "--flops", "inf"), "--flops: must be a positive"),
    (("forecast", "--d-col", "tokens", "--flops", "0"), "--flops: must be a positive"),
    (("plan", "--d-col", "tokens", "--flops=-1e20"), "--flops: must be a positive"),
    (("plan", "--d-col", "tokens", "--flops", "nan"), "--flops: must be a positive"),
    (("plan", "--d-col", "tokens", "--flops", "0"), "--flops: must be a positive"),
    ((*FORECAST, "--at", "N=-1e9,D=1e10"), "N must be a positive finite number"),
    ((*FORECAST, "--at", "N=0,D=1e10"), "N must be a positive finite number"),
    ((*FORECAST, "--at", "N=nan,D=1e10"), "N must be a positive finite number"),
    ((*FORECAST, "--at", "N=1e9,D=inf"), "D must be a positive finite number"),
    ((*FORECAST, "--at", "N=1e9,C=-1e20"), "C must be a positive finite number"),
    ((*FORECAST, "--at", "M=1e9,D=1e10"), "expected N=...,D=..."),
    ((*FORECAST, "--at", "N=1e9,D"), "expected N=...,D=..."),
    ((*FORECAST, "--at", "N=1e9,D=1e1O"), "'1e1O' is not a number"),
    ((*FORECAST, "--at", "N=1e9,N=2e9"), "N given twice"),
    ((*FORECAST, "--at", "N=1e9"), "needs N and D (or N and C)"),
    ((*FORECAST, "--at", "N=1e9,D=1e10,C=1e20"), "not all three"),
    (("fit", "--d-col", "tokens", "--at", "N=0,D=1e10"), "N must be a positive finite number"),
    ((*PLAN, "--mfu", "0"), "--mfu: must be in (0, 1]"),
    ((*PLAN, "--mfu", "1.5"), "--mfu: must be in (0, 1]"),
    ((*PLAN, "--mfu", "nan"), "--mfu: must be in (0, 1]"),
    ((*PLAN, "--mfu=-0.4"), "--mfu: must be in (0, 1]"),
    ((*PLAN, "--chips", "0"), "--chips: must be a positive integer"),
    ((*PLAN, "--chips=-8"), "--chips: must be a positive integer"),
    ((*PLAN, "--chips", "1.5"), "--chips: must be a positive integer"),
    ((*PLAN, "--bootstrap=-1"), "--bootstrap: must be 0 (none) or at least 2"),
    ((*PLAN, "--bootstrap", "1"), "--bootstrap: must be 0 (none) or at least 2"),
    ((*FORECAST, "--flops", "1e21", "--drop-top-loss=-3"), "--drop-top-loss: must be an integer >= 0"),
    ((*FORECAST, "--flops", "1e21", "--seed=-1"), "--seed: must be an integer >= 0"),
    ((*FORECAST, "--flops", "1e21", "--fix-e", "nan"), "--fix-e: must be a positive"),
    ((*FORECAST, "--flops", "1e21", "--fix-e", "0"), "--fix-e: must be a positive"),
    ((*FORECAST, "--flops", "1e21", "--c-col", "flops"), "--d-col or --c-col, not both"),
    ((*FORECAST, "--flops", "1e21", "--drop-top-loss", "30"), "--drop-top-loss 30 drops all 30"),
])
def test_bad_arguments_are_one_line_before_fitting(capsys, csv, no_fit, argv, message):
  rc, out, err = run_cli(capsys, *argv, "--csv", csv)
  assert_one_line_refusal(rc, err, message)
  assert out == ""


def test_unwritable_output_directories_are_one_line_before_fitting(capsys, csv, tmp_path,
                                                                   no_fit):
  # Tests run as root, which ignores permission bits: a regular file stands in the path.
  blocker = tmp_path / "file.txt"
  blocker.write_text("not a directory")
  rc, _, err = run_cli(capsys, "fit", "--csv", csv, "--d-col", "tokens", "--plot-dir",
                       blocker / "plots")
  assert_one_line_refusal(rc, err, f"--plot-dir {blocker / 'plots'}: {blocker} is not a "
                                   "directory")
  rc, _, err = run_cli(capsys, "report", "--csv", csv, "--d-col", "tokens", "--out", blocker)
  assert_one_line_refusal(rc, err, f"--out {blocker}: {blocker} is not a directory")


def test_environment_errors_are_one_line(capsys, csv, monkeypatch):
  def unreadable(args):
    raise PermissionError(13, "Permission denied", "/data/runs.csv")
  monkeypatch.setattr(pipeline, "read_table", unreadable)
  rc, out, err = run_cli(capsys, "fit", "--csv", csv, "--d-col", "tokens")
  assert_one_line_refusal(rc, err, "/data/runs.csv: Permission denied", code=1)


def test_json_output_is_strict_json(capsys):
  report = {"loss": float("nan"), "interval_95": [np.float64(1.0), float("inf")],
            "n": np.int64(3), "values": np.array([2.0, -np.inf])}
  cli._print(report, as_json=True)
  assert strict_json(capsys.readouterr().out) == {
      "loss": None, "interval_95": [1.0, None], "n": 3, "values": [2.0, None]}
  cli._print(report, as_json=False)
  assert "NaN" not in capsys.readouterr().out


def test_a_constant_loss_column_is_refused(capsys, tmp_path):
  path = tmp_path / "flat.csv"
  synthetic_table().assign(loss=3.0).to_csv(path, index=False)
  rc, out, err = run_cli(capsys, "fit", "--csv", path, "--d-col", "tokens", "--no-backtest")
  assert_one_line_refusal(rc, err, "the target is constant (3 at all 30 points)")


def test_a_term_the_data_do_not_show_is_flagged(capsys, tmp_path):
  """Loss that does not depend on N: the N term vanishes (alpha ~ 140) and a warning says
  the data cannot determine alpha or the allocation, instead of reporting them silently."""
  table = synthetic_table()
  path = tmp_path / "d_only.csv"
  table.assign(loss=1.9 + 1700 * table["tokens"] ** -0.3).to_csv(path, index=False)
  rc, out, err = run_cli(capsys, "fit", "--csv", path, "--d-col", "tokens", "--no-backtest",
                         "--json")
  assert rc == 0, err
  report = strict_json(out)
  assert report["alpha"] > 10
  (note,) = report["warnings"]
  assert "no dependence on N" in note and "alpha" in note


def test_a_bad_summary_names_its_file_and_bad_values_name_their_runs(capsys, tmp_path):
  root = tmp_path / "runs"
  write_registry(str(root), synthetic_table(), unfinished=0)
  (root / "r003" / "summary.json").write_text('{"loss": 3.1,')
  (root / "r004" / "summary.json").write_bytes(b"\xff\xfe{}")
  (root / "r005" / "summary.json").write_text("[1, 2]")
  (root / "r006" / "summary.json").write_text(
      '{"params": 1e8, "tokens": 1e9, "flops_6nd": 6e17, "loss": "diverged"}')
  with pytest.warns(UserWarning) as record:
    table = load_runs(str(root))
  (warning,) = [str(w.message) for w in record]
  assert "\n" not in warning and warning.startswith("3 run(s) with unreadable files skipped")
  for run in ("r003", "r004", "r005"):
    assert os.path.join(str(root), run, "summary.json") in warning
  assert "not valid UTF-8" in warning and "not a JSON object" in warning
  assert len(table) == 27
  rc, _, err = run_cli(capsys, "fit", "--runs", root, "--d-col", "tokens")
  lines = err.splitlines()
  assert rc == 2 and len(lines) == 2 and lines[0].startswith("analysis: warning: 3 run(s)")
  assert lines[1] == (f"analysis: error: --loss-col 'loss' is missing or not a number (NaN) in 1 "
                      f"run(s): {root / 'r006'}")


def test_warnings_print_as_one_line_without_changing_the_process_wide_format(
    capsys, tmp_path, monkeypatch):
  write_registry(str(tmp_path), synthetic_table(), unfinished=2)
  before = (warnings.formatwarning, warnings.showwarning)
  def stop(*args, **kwargs):
    raise cli.AnalysisError("stopped before the fit")
  monkeypatch.setattr(pipeline, "fit_lnd", stop)
  rc, _, err = run_cli(capsys, "forecast", "--runs", tmp_path, "--d-col", "tokens",
                       "--flops", "1e21")
  assert rc == 2
  assert err.splitlines() == [
      f"analysis: warning: 2 unfinished run(s) under {tmp_path} skipped (no summary.json)",
      "analysis: error: stopped before the fit"]
  assert (warnings.formatwarning, warnings.showwarning) == before


class Terminal(io.StringIO):
  def isatty(self):
    return True


def test_fits_and_bootstraps_show_progress_on_a_terminal_only(capsys, monkeypatch):
  """A bar per batched minimisation, on a terminal only; the fit is the same either way
  (the host callback is compiled in both cases). 300 starts, 16 kept: small programs."""
  table = synthetic_table()
  inputs = {"N": table["params"].to_numpy(), "D": table["tokens"].to_numpy()}
  y = table["loss"].to_numpy()
  grid = dict(starts=CHINCHILLA.start_grid()[::15], keep=16)
  quiet = fit_law(CHINCHILLA, inputs, y, **grid)
  assert capsys.readouterr().err == ""  # not a terminal: no bar
  terminal = Terminal()
  monkeypatch.setattr(sys, "stderr", terminal)
  shown = fit_law(CHINCHILLA, inputs, y, **grid)
  k = len(shown.top_thetas)
  replicates = max(2, 16 // k)  # 16 starts when k divides 16: the fit's program, no compile
  bootstrap(shown, replicates)
  text = terminal.getvalue()
  assert "chinchilla: screen 300 starts" in text and "chinchilla: fit 16 starts" in text
  assert f"chinchilla: bootstrap {replicates} x {k} starts" in text
  assert "active=" in text
  np.testing.assert_array_equal(shown.theta, quiet.theta)
  assert shown.objective == quiet.objective
