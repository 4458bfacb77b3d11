"""critical-batch on an lr x batch sweep of several model sizes: --group-col (a fit per
size), --best-of-batch (per target the fewest steps among a batch size's runs: the lr
tuned per target), the logged noise scale B_simple at each crossing, and the note when
B_crit lies beyond the batch sizes swept."""

import json
import math

import numpy as np
import pytest

from analysis import critical_batch as cb
from test_analysis_cli import run_cli

BATCHES = (8, 16, 32, 64)
TRUTH = {1000: 20.0, 2000: 50.0}  # params -> B_crit (images), the same at every loss
DETUNED = (1.0, 1.3, 2.0)  # an lr sweep: the tuned run and two slower ones per batch


def s_min(loss):
  return 200.0 * ((np.asarray(loss) - 3.0) / 2) ** -2


def b_simple(step):
  """The synthetic logged noise scale: linear in steps (interpolation is exact)."""
  return 10.0 + np.asarray(step, np.float64) / 10


def write_registry(root, every=5):
  """One run per (size, batch, slowdown k): eval loss every `every` steps from
  S(L) = k S_min(L) (1 + B_crit / B) + (k - 1) 300; train records carry gns_b_simple."""
  dense = np.linspace(5.5, 3.6, 3000)
  for params, b_crit in TRUTH.items():
    for b in BATCHES:
      for k, slow in enumerate(DETUNED):
        name = f"n{params}-b{b}-lr{k}"
        run = root / name
        run.mkdir(parents=True)
        needed = slow * cb.steps_to_reach(s_min(dense), b_crit, b) + (slow - 1) * 300
        steps = np.arange(every, needed.max(), every)
        loss = np.interp(steps, needed, dense)
        lines = [{"step": int(s), "split": "train", "loss": float(v), "gns_b_simple":
                  float(b_simple(s))} for s, v in zip(steps, loss)]
        lines += [{"step": int(s), "split": "eval", "loss": float(v)} for s, v in zip(steps, loss)]
        (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
        (run / "config.json").write_text(json.dumps({"data": {"global_batch_size": b}}))
        (run / "summary.json").write_text(json.dumps(
            {"params": params, "global_batch_size": b, "loss": float(loss[-1])}))
  return root


def test_groups_best_of_batch_and_noise_scale(tmp_path, capsys):
  reg = write_registry(tmp_path / "reg")
  targets = "4.6,4.2,3.9"
  rc, out, err = run_cli(capsys, "critical-batch", "--runs", reg, "--group-col", "params",
                         "--best-of-batch", "--targets", targets, "--json",
                         "--plot-dir", tmp_path / "plots")
  assert rc == 0, err
  report = json.loads(out)
  assert [g["group"] for g in report["groups"]] == ["1000", "2000"]
  for g in report["groups"]:
    b_crit = TRUTH[int(g["group"])]
    assert g["plots"][0].endswith(f"critical_batch-params{g['group']}.png")
    for row in g["targets"]:
      assert row["B_crit"] == pytest.approx(b_crit, rel=0.02)
      assert row["S_min"] == pytest.approx(float(s_min(row["loss"])), rel=0.02)
      assert [p["run"].endswith("-lr0") for p in row["points"]] == [True] * len(BATCHES)
      for p in row["points"]:  # the noise scale at the crossing step
        assert p["B_simple"] == pytest.approx(float(b_simple(p["steps"])), rel=1e-6)
      geo = math.exp(np.mean([math.log(p["B_simple"]) for p in row["points"]]))
      assert row["B_simple"] == pytest.approx(geo, rel=1e-9)
      assert "note" not in row
  rc, out, err = run_cli(capsys, "critical-batch", "--runs", reg, "--group-col", "params",
                         "--best-of-batch", "--targets", targets)
  assert rc == 0, err
  assert "[params = 1000] critical-batch" in out and "B_simple" in out
  # Every run as its own point: the detuned runs' extra steps bias B_crit.
  rc, out, err = run_cli(capsys, "critical-batch", "--runs", reg, "--group-col", "params",
                         "--targets", targets, "--json")
  assert rc == 0, err
  mixed = json.loads(out)["groups"][0]["targets"][0]
  assert len(mixed["points"]) == len(BATCHES) * len(DETUNED)
  assert mixed["B_crit"] != pytest.approx(TRUTH[1000], rel=0.02)


def test_b_crit_beyond_the_sweep_is_a_bound():
  """S exactly 1/B over batches 8-32 with B_crit 1e4: the note says it is a bound."""
  curves = []
  for b in (8.0, 16.0, 32.0):
    steps = np.arange(10.0, 3000.0, 10.0)
    needed = cb.steps_to_reach(s_min(np.linspace(5.5, 3.6, 500)), 1e4, b) / 100
    loss = np.interp(steps, needed, np.linspace(5.5, 3.6, 500))
    curves.append(cb.Curve(f"b{b:g}", b, steps, loss))
  row = cb.analyse(curves, [4.5])["targets"][0]
  assert row["B_crit"] > 4 * 32 and row["beyond_swept"]
  assert "is a bound, not a measurement" in row["note"]


def test_group_col_needs_a_registry_and_a_column(tmp_path, capsys):
  reg = write_registry(tmp_path / "reg")
  rc, out, err = run_cli(capsys, "critical-batch", "--runs", reg, "--group-col", "nope")
  assert rc == 2 and "--group-col 'nope' is not a column of the registry" in err
  csv = tmp_path / "c.csv"
  csv.write_text("batch,step,loss\n8,1,5\n8,2,4\n16,1,5\n16,2,4\n")
  rc, out, err = run_cli(capsys, "critical-batch", "--csv", csv, "--group-col", "params")
  assert rc == 2 and "--group-col reads a registry column" in err
  assert len(err.strip().splitlines()) == 1
