"""`python -m analysis hparams`: Step Law's published law, the per-cell optimum, coverage of
the bootstrap intervals on synthetic sweeps with a known optimum law, the CLI contract,
registries and bad input."""

import json
import os

import numpy as np
import pandas as pd
import pytest

from analysis import hparams
from test_analysis_cli import run_cli

# The truth of the synthetic sweeps: Step Law's coefficients (f = 0: batch_opt = d D^e).
TRUTH = dict(hparams.STEP_LAW, f=0.0)


def sweep(seed=0, noise=0.001, sizes=(1e7, 4.64e7, 2.15e8, 1e9), ratios=(20, 60, 180, 540)):
  """Runs of an lr x batch grid (5 x 5, factor 2, offset at random) per (N, D) cell; loss
  a bowl in (log lr, log batch) around Step Law's optimum, relative Gaussian noise:
  columns params, tokens, peak_lr, global_batch_size, loss."""
  rng = np.random.default_rng(seed)
  rows = []
  for n in sizes:
    for r in ratios:
      d = n * r
      lr0 = hparams.lr_law(n, d, TRUTH["a"], TRUTH["b"], TRUTH["c"])
      b0 = hparams.batch_law(n, d, TRUTH["d"], TRUTH["e"])
      rows += cell_rows(rng, n, d, lr0, b0, noise)
  return pd.DataFrame(rows, columns=COLUMNS)


COLUMNS = ["params", "tokens", "peak_lr", "global_batch_size", "loss"]


def cell_rows(rng, n, d, lr0, b0, noise) -> list[tuple]:
  """One (N, D) cell's runs: a 5 x 5 lr x batch grid (factor 2, offset at random) around
  (lr0, b0), loss a bowl in (log lr, log batch) with relative Gaussian noise."""
  lrs = lr0 * 2.0 ** np.arange(-2, 3) * np.exp(rng.uniform(-0.3, 0.3))
  batches = b0 * 2.0 ** np.arange(-2, 3) * np.exp(rng.uniform(-0.3, 0.3))
  return [(n, d, lr, b, (3 + 0.02 * np.log(lr / lr0) ** 2 + 0.01 * np.log(b / b0) ** 2)
           * (1 + rng.normal(0, noise))) for lr in lrs for b in batches]


def arrays(table):
  return [table[c].to_numpy(np.float64) for c in COLUMNS]


def test_step_law_reference_point():
  """Li et al. 2025 (Step Law): lr_opt = 1.79 N^-0.713 D^0.307 and B_opt = 0.58 D^0.571
  tokens give lr 9.2e-4 and B 5.0e6 tokens at N = 7e9, D = 1.4e12."""
  s = hparams.STEP_LAW
  lr = float(hparams.lr_law(7e9, 1.4e12, s["a"], s["b"], s["c"]))
  batch = float(hparams.batch_law(7e9, 1.4e12, s["d"], s["e"]))
  assert float(f"{lr:.2g}") == 9.2e-4
  assert float(f"{batch:.2g}") == 5.0e6


def test_quadratic_optimum_and_grid_fallback():
  lr = np.repeat(1e-3 * 2.0 ** np.arange(-2, 3), 5)
  batch = np.tile(256 * 2.0 ** np.arange(-2, 3), 5)
  lr0, b0 = 1.3e-3, 300.0
  loss = 3 + 0.02 * np.log(lr / lr0) ** 2 + 0.01 * np.log(batch / b0) ** 2 \
      + 0.005 * np.log(lr / lr0) * np.log(batch / b0)
  cell = hparams.smooth_optimum(hparams.Cell(1e8, 1e10, lr, batch, loss, np.ones(25, int)))
  assert cell.method == "quadratic" and cell.reason == ""
  assert cell.opt_lr == pytest.approx(lr0, rel=1e-9)
  assert cell.opt_batch == pytest.approx(b0, rel=1e-9)
  assert cell.opt_loss == pytest.approx(3.0, abs=1e-12)
  # The optimum beyond the largest lr swept: the grid's best, and why.
  edge = 3 + 0.02 * np.log(lr / 0.1) ** 2 + 0.01 * np.log(batch / b0) ** 2
  cell = hparams.smooth_optimum(hparams.Cell(1e8, 1e10, lr, batch, edge, np.ones(25, int)))
  assert cell.method == "grid" and "outside" in cell.reason
  assert cell.opt_lr == lr.max()
  # Too few lrs near the best for a quadratic.
  few = lr < 1.5e-3
  cell = hparams.smooth_optimum(hparams.Cell(1e8, 1e10, lr[few][:10], batch[few][:10],
                                             loss[few][:10], np.ones(10, int)))
  assert cell.method == "grid" and "a quadratic needs" in cell.reason


def test_intervals_cover_a_known_law():
  """40 seeded synthetic sweeps (16 cells, 5 x 5 grids, 0.1% noise): each coefficient's
  95% interval holds the truth in 85-100% of them, and the backtest reports a small gap."""
  covered = {k: 0 for k in "abcde"}
  gaps = []
  reps = 40
  for seed in range(reps):
    report, *_ = hparams.analyse(*arrays(sweep(seed)), replicates=50, seed=seed)
    for block in ("lr", "batch"):
      for k, (lo, hi) in report["law"][block]["interval_95"].items():
        if k in covered:
          covered[k] += lo <= TRUTH[k] <= hi
    gaps.append(report["backtest"]["mean_gap"])
    assert all(c["optimum"]["method"] == "quadratic" for c in report["cells"])
  rates = {k: v / reps for k, v in covered.items()}
  assert all(r >= 0.85 for r in rates.values()), rates
  assert 0.85 <= np.mean(list(rates.values())) <= 1.0, rates
  assert 0 <= np.mean(gaps) < 0.002 and np.isfinite(gaps).all()


def test_near_optimal_fit_on_step_law_procedure():
  report, *_ = hparams.analyse(*arrays(sweep(1)), replicates=20, fit_on="near-optimal")
  lr = report["law"]["lr"]
  assert report["law"]["fit_on"] == "near-optimal"
  assert lr["b"] == pytest.approx(TRUTH["b"], abs=0.05)
  assert lr["c"] == pytest.approx(TRUTH["c"], abs=0.05)
  for cell in report["cells"]:
    best = cell["best"]["loss"]
    assert all(r["loss"] <= best * 1.0025 for r in cell["near_optimal"])


def test_cli_json_text_and_plots(tmp_path, capsys):
  csv = tmp_path / "sweep.csv"
  sweep(2, sizes=(1e7, 1e8, 1e9), ratios=(20, 200)).to_csv(csv, index=False)
  rc, out, err = run_cli(capsys, "hparams", "--csv", csv, "--bootstrap", "30", "--json",
                         "--at", "N=7e9,D=1.4e12", "--at", "N=1e8,D=1e10",
                         "--plot-dir", tmp_path / "plots")
  assert rc == 0, err
  report = json.loads(out)
  assert set(report) >= {"law", "cells", "backtest", "predict", "plots"}
  law = report["law"]
  for k in ("a", "b", "c"):
    lo, hi = law["lr"]["interval_95"][k]
    assert lo <= law["lr"][k] <= hi
  assert law["batch_form"] in ("D", "ND")
  assert len(report["cells"]) == 6
  cell = report["cells"][0]
  assert {"N", "D", "best", "near_optimal", "optimum", "law"} <= set(cell)
  assert cell["optimum"]["method"] in ("quadratic", "grid")
  bt = report["backtest"]
  assert bt["held_out_N"] == pytest.approx(1e9) and len(bt["cells"]) == 2
  assert set(bt["candidates"]) == {"D", "ND"}
  far, near = report["predict"]
  assert {"N", "D", "lr", "batch", "lr_interval", "batch_interval",
          "extrapolation"} <= set(far)
  assert far["lr_interval"][0] <= far["lr"] <= far["lr_interval"][1]
  assert far["extrapolation"]["beyond_fitted_range"]
  assert far["extrapolation"]["N_factor"] == pytest.approx(7.0)
  assert not near["extrapolation"]["beyond_fitted_range"]
  assert far["lr"] == pytest.approx(9.2e-4, rel=0.1)  # the truth is Step Law
  for path in report["plots"]:
    assert os.path.getsize(path) > 10_000
  rc, out, err = run_cli(capsys, "hparams", "--csv", csv, "--bootstrap", "20")
  assert rc == 0, err
  assert "lr_opt    =" in out and "backtest (refit without N = 1e+09)" in out
  rc, out, err = run_cli(capsys, "hparams", "--csv", csv, "--bootstrap", "0", "--json",
                         "--at", "N=1e8,D=1e10")
  assert rc == 0 and err == "", err
  report = json.loads(out)
  assert report["law"]["lr"]["interval_95"] is None
  assert report["predict"][0]["lr_interval"] is None


def test_registry_peak_lr(tmp_path, capsys):
  """A registry: N, D, batch and loss from summary.json; the lr from sweep.json's peak_lr,
  else config.json's optim.base_lr x global_batch_size / 256 (VAR's rule)."""
  table = sweep(3, sizes=(1e7, 1e8), ratios=(20, 200))
  for i, row in table.iterrows():
    run = tmp_path / "reg" / f"r{i:03d}"
    run.mkdir(parents=True)
    base_lr = row["peak_lr"] * 256 / row["global_batch_size"]
    (run / "config.json").write_text(json.dumps({"optim": {"base_lr": base_lr},
                                                 "data": {"global_batch_size": 1}}))
    if i % 2:
      (run / "sweep.json").write_text(json.dumps({"peak_lr": row["peak_lr"]}))
    else:  # the rule needs the run's batch in config.json
      (run / "config.json").write_text(json.dumps(
          {"optim": {"base_lr": base_lr},
           "data": {"global_batch_size": row["global_batch_size"]}}))
    (run / "summary.json").write_text(json.dumps(
        {"params": row["params"], "tokens": row["tokens"],
         "global_batch_size": row["global_batch_size"], "loss": row["loss"]}))
  rc, out, err = run_cli(capsys, "hparams", "--runs", tmp_path / "reg", "--bootstrap", "20",
                         "--json")
  assert rc == 0, err
  report = json.loads(out)
  assert len(report["cells"]) == 4
  expected = table.loc[table.groupby(["params", "tokens"])["loss"].idxmin()]
  lrs = sorted(c["best"]["lr"] for c in report["cells"])
  assert lrs == pytest.approx(sorted(expected["peak_lr"]), rel=1e-9)


@pytest.mark.parametrize("case, message", [
    ("one_cell", "one (N, D) cell only"),
    ("single_lr", "has a single learning rate"),
    ("nan", "is missing or not a number (NaN)"),
    ("missing", "--batch-col 'global_batch_size' is not a column"),
    ("three_cells", "(N, D) cells: lr_opt = a N^b D^c (3 coefficients) needs at least 4"),
    ("collinear", "do not vary independently"),
])
def test_bad_input_is_one_line(tmp_path, capsys, case, message):
  table = sweep(4, sizes=(1e7, 1e8), ratios=(20, 200))
  if case == "one_cell":
    table = table[(table["params"] == 1e7) & (table["tokens"] == 2e8)]
  elif case == "single_lr":
    first = table.groupby(["params", "tokens"])["peak_lr"].transform("min")
    table = table[table["peak_lr"] == first]
  elif case == "nan":
    table.loc[3, "loss"] = np.nan
  elif case == "missing":
    table = table.drop(columns="global_batch_size")
  elif case == "three_cells":
    table = table[~((table["params"] == 1e8) & (table["tokens"] == 2e10))]
  elif case == "collinear":  # D = 20 N at every N: b and c cannot be told apart
    table = sweep(4, sizes=(1e7, 1e8, 1e9, 1e10), ratios=(20,))
  csv = tmp_path / "bad.csv"
  table.to_csv(csv, index=False)
  rc, out, err = run_cli(capsys, "hparams", "--csv", csv, "--bootstrap", "10")
  assert rc == 2, (out, err)
  assert message in err and len(err.strip().splitlines()) == 1, err
