"""`python -m analysis critical-batch`: McCandlish et al.'s S-E trade-off, Kaplan et al.'s
B_crit(L), recovery of a known B_crit from synthetic batch sweeps, registries, bad input."""

import json
import os

import numpy as np
import pandas as pd
import pytest

from analysis import critical_batch as cb
from test_analysis_cli import run_cli

BATCHES = 2.0 ** np.arange(14, 23)  # tokens per step, 16k to 4M


def s_min(loss):
  """The synthetic sweep's fewest steps to reach `loss`: decreasing in the loss."""
  return 1e3 * ((np.asarray(loss) - 1.0) / 2) ** -3


def sweep_table(every=25, last=60_000):
  """One eval curve per batch size, logged every `every` steps: the loss at step s is the
  L with S_min(L) (1 + B_crit(L) / B) = s, B_crit(L) Kaplan's (B* = 2e8, alpha_B = 0.21)."""
  dense = np.linspace(6.0, 2.8, 4000)
  rows = []
  for b in BATCHES:
    steps_needed = cb.steps_to_reach(s_min(dense), cb.b_crit_of_loss(dense), b)  # increasing
    steps = np.arange(every, last + 1, every, dtype=np.float64)
    steps = steps[steps <= steps_needed.max()]
    loss = np.interp(steps, steps_needed, dense)
    rows += [(b, s, l) for s, l in zip(steps, loss)]
  return pd.DataFrame(rows, columns=["batch", "step", "loss"])


def test_mccandlish_tradeoff():
  """S = S_min (1 + B_crit/B) and E = E_min (1 + B/B_crit) with E_min = S_min B_crit: E = S B
  and (S/S_min - 1)(E/E_min - 1) = 1 at every B."""
  b = np.geomspace(1, 1e6, 20)
  s = cb.steps_to_reach(500.0, 3e3, b)
  e = cb.examples_to_reach(500.0 * 3e3, 3e3, b)
  np.testing.assert_allclose(e, s * b, rtol=1e-12)
  np.testing.assert_allclose((s / 500 - 1) * (e / 1.5e6 - 1), 1.0, rtol=1e-9)
  fit = cb.fit_hyperbola(b, s)
  assert fit["S_min"] == pytest.approx(500.0, rel=1e-9)
  assert fit["B_crit"] == pytest.approx(3e3, rel=1e-9)
  assert fit["E_min"] == pytest.approx(1.5e6, rel=1e-9)


def test_kaplan_b_crit_at_loss_3():
  """Kaplan et al. 2020: B_crit(L) = 2e8 tokens / L^(1/0.21): 1.07e6 tokens at L = 3."""
  assert float(cb.b_crit_of_loss(3.0)) == pytest.approx(1.07e6, rel=5e-3)


def test_first_reach_interpolates_in_steps():
  curve = cb.Curve("r", 8.0, np.array([100.0, 200, 300]), np.array([5.0, 4.0, 3.5]))
  assert cb.first_reach(curve, 4.5) == pytest.approx(150.0)
  assert cb.first_reach(curve, 4.0) == pytest.approx(200.0)
  assert cb.first_reach(curve, 3.0) is None  # never
  assert cb.first_reach(curve, 5.0) is None  # at the first point: no bracket


def test_recovers_known_b_crit():
  """Curves generated from known S_min(L), B_crit(L), logged every 25 steps: B_crit within
  2% at each target, and Kaplan's B* and alpha_B from B_crit(L)."""
  curves = cb.curves_from_csv_frame(sweep_table())
  targets = [3.0, 3.4, 3.8, 4.2, 4.6]
  report = cb.analyse(curves, targets)
  for row in report["targets"]:
    assert row["B_crit"] == pytest.approx(float(cb.b_crit_of_loss(row["loss"])), rel=0.02)
    assert row["S_min"] == pytest.approx(float(s_min(row["loss"])), rel=0.02)
  law = report["b_crit_law"]
  assert law["alpha_B"] == pytest.approx(0.21, rel=0.02)
  assert law["B_star"] == pytest.approx(2e8, rel=0.1)
  # Eval points 0.75 S_min apart: B_crit 10% low, and the target says why.
  coarse = cb.analyse(cb.curves_from_csv_frame(sweep_table(every=200)), [4.2, 3.0])
  assert "note" in coarse["targets"][0] and "B_crit is low" in coarse["notes"][0]
  assert coarse["targets"][0]["B_crit"] < 0.95 * float(cb.b_crit_of_loss(4.2))
  assert "note" not in coarse["targets"][1]
  # Default targets: every run brackets each of them.
  report = cb.analyse(curves)
  assert report["targets_chosen"] == "default" and len(report["targets"]) == cb.NUM_TARGETS
  assert all(not r["left_out"] and "B_crit" in r for r in report["targets"])


def test_cli_registry_json_text_plot(tmp_path, capsys):
  table = sweep_table(every=50, last=20_000)
  for i, (b, rows) in enumerate(table.groupby("batch")):
    run = tmp_path / "reg" / f"b{i}"
    run.mkdir(parents=True)
    (run / "config.json").write_text("{}")
    (run / "summary.json").write_text(json.dumps({"global_batch_size": b,
                                                  "loss": rows["loss"].iloc[-1]}))
    with open(run / "metrics.jsonl", "w") as f:
      for s, l in zip(rows["step"], rows["loss"]):
        f.write(json.dumps({"step": int(s), "split": "train", "loss": l + 0.5}) + "\n")
        f.write(json.dumps({"step": int(s), "split": "eval", "loss": l}) + "\n")
  rc, out, err = run_cli(capsys, "critical-batch", "--runs", tmp_path / "reg", "--json",
                         "--targets", "3.2,3.6,4.0", "--plot-dir", tmp_path / "plots")
  assert rc == 0, err
  report = json.loads(out)
  assert [r["loss"] for r in report["targets"]] == [4.0, 3.6, 3.2]
  for row in report["targets"]:
    assert row["B_crit"] == pytest.approx(float(cb.b_crit_of_loss(row["loss"])), rel=0.05)
    assert {"run", "batch", "steps", "examples"} <= set(row["points"][0])
  assert report["b_crit_law"]["targets"] == 3
  assert "linear in steps" in report["interpolation"]
  assert os.path.getsize(report["plots"][0]) > 10_000
  rc, out, err = run_cli(capsys, "critical-batch", "--runs", tmp_path / "reg")
  assert rc == 0, err
  assert "B_crit(L) = " in out and "S_min" in out


@pytest.mark.parametrize("case, message", [
    ("one_batch", "a batch sweep needs two or more batch sizes"),
    ("missing", "--batch-col 'batch' is not a column"),
    ("nan", "non-numeric step or loss (NaN)"),
    ("unreached", "no target loss could be fitted"),
])
def test_bad_input_is_one_line(tmp_path, capsys, case, message):
  table = sweep_table(every=500, last=10_000)
  extra = []
  if case == "one_batch":
    table = table[table["batch"] == BATCHES[0]]
  elif case == "missing":
    table = table.rename(columns={"batch": "B"})
  elif case == "nan":
    table.loc[5, "loss"] = np.nan
  elif case == "unreached":
    extra = ["--targets", "1.5"]
  csv = tmp_path / "bad.csv"
  table.to_csv(csv, index=False)
  rc, out, err = run_cli(capsys, "critical-batch", "--csv", csv, *extra)
  assert rc == 2, (out, err)
  assert message in err and len(err.strip().splitlines()) == 1, err
