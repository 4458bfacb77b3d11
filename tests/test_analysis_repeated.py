"""`report --repeated DIR` (analysis/repeated.py) and `report --curve-backtest FILE`
(extrapolate.read_backtest): runs drawn noise-free from the published data-constrained law
(Muennighoff et al. 2023), so the excess over the fresh-data forecast and R_D* have closed
forms; the backtest's findings from a hand-made MAPE table; one-line refusals."""

import argparse
import json

import numpy as np
import pandas as pd
import pytest

from analysis import constrained, extrapolate, laws, pipeline, repeated, report_md
from analysis.validate import AnalysisError
from test_analysis_constrained import PARAMS


def data_of(n, d, u) -> pipeline.Data:
  n, d, u = (np.asarray(v, np.float64) for v in (n, d, u))
  table = pd.DataFrame({"run": [f"n{a:.3g}-d{b:.3g}-u{c:.3g}" for a, b, c in zip(n, d, u)]})
  return pipeline.Data(table, {"N": n, "D": d}, constrained.loss(PARAMS, n, d, u), None, u)


@pytest.fixture(scope="module")
def block():
  """Fresh runs (U = D: the law is Chinchilla's there) on a 4 x 4 grid, and repeated runs of
  two sizes at 2 to 40 epochs; the block fitted with a small bootstrap (two fits and 20
  refits: about 25 s on 2 cores, so the tests that use it are slow)."""
  # N <= N_opt(D) for every fresh run (N_opt(U) = 0.051 U here), so U = D is Chinchilla's.
  n, d = (a.ravel() for a in np.meshgrid(np.geomspace(1e8, 1e9, 4),
                                         np.geomspace(2e10, 2e11, 4), indexing="ij"))
  fresh = data_of(n, d, d)
  rn, repochs = (a.ravel() for a in np.meshgrid([2e8, 6e8], [2, 4, 8, 16, 40], indexing="ij"))
  rd = np.full(rn.shape, 4e10)
  rep = data_of(rn, rd, rd / repochs)
  args = argparse.Namespace(seed=0, fix_e=None, repeated="runs/x")
  fit, _ = pipeline.fit_lnd("chinchilla", fresh.inputs, fresh.y, args)
  boot = pipeline.bootstrap(fit, 10, seed=0)
  return repeated.block(args, fresh, fit, boot, rep, replicates=10), fit


@pytest.mark.slow
def test_excess_is_what_repetition_costs_under_the_true_law(block):
  out, fit = block
  assert out["num_repeated"] == 10 and out["num_fresh"] == 16
  # The fresh-data fit is Chinchilla's law with the published constants (noise-free data).
  for k in ("E", "alpha", "beta"):
    assert fit.params[k] == pytest.approx(PARAMS[k], rel=0.02)
  for r in out["runs"]:
    truth = (constrained.loss(PARAMS, r["N"], r["D"], r["U"])
             - constrained.loss(PARAMS, r["N"], r["D"], r["D"]))
    assert r["excess"] == pytest.approx(float(truth), abs=2e-3)
    assert r["epochs"] == pytest.approx(r["D"] / r["U"])
  by_epochs = sorted((r for r in out["runs"] if r["N"] == 2e8), key=lambda r: r["epochs"])
  assert [r["excess"] for r in by_epochs] == sorted(r["excess"] for r in by_epochs)
  assert by_epochs[-1]["beyond_interval"]  # 40 epochs: far outside a noise-free interval


@pytest.mark.slow
def test_data_constrained_refit_recovers_rd_star(block):
  out, _ = block
  assert out["params"]["rd_star"] == pytest.approx(PARAMS["rd_star"], rel=0.05)
  assert out["four_epochs_worth"] == pytest.approx(3.73, abs=0.03)
  assert out["published_four_epochs_worth"] == pytest.approx(
      float(constrained.effective_epochs(4.0, PARAMS["rd_star"])))
  assert out["rd_star_determined"]
  assert "is determined by these runs" in out["verdict"]
  for r in out["runs"]:
    assert r["data_constrained"] == pytest.approx(r["loss"], rel=1e-3)


def hand_block(determined: bool) -> dict:
  runs = [{"run": f"r{e}", "N": 2e8, "D": 4e10, "U": 4e10 / e, "epochs": float(e),
           "loss": 2.5 + 0.01 * e, "fresh_forecast": 2.5, "fresh_interval_95": [2.45, 2.55],
           "excess": 0.01 * e, "beyond_interval": 0.01 * e > 0.05, "data_constrained": 2.5,
           "effective_epochs": float(e)} for e in (2, 8)]
  params = {**PARAMS, "rd_star": 20.0}
  return {"source": "runs/x", "formula": "L = ...", "params": params, "num_points": 18,
          "num_repeated": 2, "num_fresh": 16, "runs": runs, "published_rd_star": 15.39,
          "published_four_epochs_worth": 3.73, "four_epochs_worth": 3.79,
          "four_epochs_worth_interval_95": [2.0, 3.9],
          "intervals_95": {"rd_star": [15.0, 30.0] if determined else [0.7, 110.0],
                           "rn_star": [1.0, 1e30]},
          "rd_star_determined": determined, "rn_star_determined": False}


def test_verdict_says_what_the_runs_determine():
  loose = repeated.verdict(hand_block(False))
  assert loose.startswith("1 of 2 repeated runs ended above")
  assert "(the most repeated, 8 epochs, by +0.08 nats)" in loose
  assert "R_D* = 20 [0.7, 110] is not determined" in loose and "do not plan" in loose
  assert "R_N* (excess parameters) is not determined either" in loose
  tight = repeated.verdict(hand_block(True))
  assert "R_D* = 20 [15, 30] is determined by these runs within a factor of 2" in tight
  md = "\n".join(report_md.repeated_section({"repeated": {**hand_block(False),
                                                           "verdict": loose}}))
  assert "| rd_star | 20 | [0.7, 110] |" in md and f"**Verdict:** {loose}" in md
  assert "| r8 | 2e8 | 4e10 | 5e9 | 8 | 2.58 | 2.5 [2.45, 2.55] | +0.08 |" in md


def test_load_refusals(tmp_path):
  args = argparse.Namespace(csv=None, runs=None, drop_top_loss=0, u_col=None,
                            unique_tokens=None, n_col="params", d_col="tokens",
                            loss_col="loss", c_col=None, include_stopped_early=False)
  with pytest.raises(AnalysisError, match="--repeated .*: no such directory"):
    repeated.load(str(tmp_path / "missing"), args)


MAPE = {"registry": "runs/demo", "num_runs": 15, "methods": ["lr_annealing", "pow3"],
        "fractions": [0.3],
        "mape": [{"fraction": 0.3, "split": "eval", "num_runs": 3, "lr_annealing": 0.0476,
                  "pow3": 0.0497, "no_decay_seen": 3},
                 {"fraction": 0.3, "split": "train", "num_runs": 7, "lr_annealing": 0.09,
                  "pow3": 0.08}]}


def test_curve_backtest_findings(tmp_path):
  path = tmp_path / "bt.json"
  path.write_text(json.dumps({**MAPE, "runs": [], "unusable": []}))
  block = extrapolate.read_backtest(str(path))
  eval_line, train_line = block["findings"]
  assert "lr_annealing beat pow3 (4.76% vs 4.97%)" in eval_line
  assert "3 runs are too few to rank" in eval_line
  assert "in all of the 3 runs the lr had not begun to fall by the cut" in eval_line
  assert "pow3 forecast the final loss best (MAPE 8.00%)" in train_line
  assert "did not beat" in train_line and "too few" not in train_line
  assert "had not begun to fall" not in train_line  # no count: a backtest before the key
  md = "\n".join(report_md.curves_section({"curve_backtest": block}))
  assert "| 30% | eval | 3 | 4.76% | 4.97% |" in md
  tie = {**MAPE, "mape": [dict(MAPE["mape"][1], lr_annealing=0.014513, pow3=0.014486)]}
  assert "did not beat pow3 (1.451% vs 1.449%)" in extrapolate.backtest_findings(tie)[0]


def test_curve_backtest_refusals(tmp_path):
  with pytest.raises(AnalysisError, match="no such file"):
    extrapolate.read_backtest(str(tmp_path / "none.json"))
  bad = tmp_path / "bad.json"
  bad.write_text("{not json")
  with pytest.raises(AnalysisError, match="not JSON"):
    extrapolate.read_backtest(str(bad))
  other = tmp_path / "other.json"
  other.write_text(json.dumps({"law": "chinchilla"}))
  with pytest.raises(AnalysisError, match="not an `extrapolate --backtest` result"):
    extrapolate.read_backtest(str(other))
