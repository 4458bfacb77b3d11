"""The hparams demo's report writer (analysis/hparams_report.py) on a synthetic one-budget
registry of 3 sizes x 5 lrs x 3 batch sizes: report.md and summary.txt carry the numbers
of report.json (the law, the backtest gap, the sensitivity per size, B_crit, B_simple), and
bad input is one line, exit 2."""

import json
import math

import numpy as np
import pytest

from analysis import critical_batch as cb
from analysis import hparams_report

SIZES = (1e4, 4e4, 1.6e5)
LRS = (2e-3, 4e-3, 8e-3, 1.6e-2, 3.2e-2)
BATCHES = (8, 16, 32)
B_CRIT = 40.0


def lr_opt(n):
  return 0.5 * n ** -0.4


def write_registry(root):
  """Eval curves from S(L) = slow x S_min(L) (1 + B_crit / B), slow growing with the lr's
  distance from lr_opt(N); final loss where the curve ends; B_simple logged as 60."""
  dense = np.linspace(6.0, 3.2, 2000)
  s_min = 50.0 * ((dense - 3.0) / 3) ** -2
  for n in SIZES:
    for b in BATCHES:
      steps_total = int(20_000 / b)
      for lr in LRS:
        slow = 1 + 0.5 * math.log(lr / lr_opt(n)) ** 2
        needed = slow * cb.steps_to_reach(s_min, B_CRIT, b) * (1e4 / n) ** 0.1
        steps = np.arange(25, steps_total + 1, 25, dtype=np.float64)
        loss = np.interp(steps, needed, dense)
        name = f"n{n:g}-b{b}-lr{lr:g}"
        run = root / name
        run.mkdir(parents=True)
        lines = [{"step": int(s), "split": "eval", "loss": float(v)} for s, v in zip(steps, loss)]
        lines += [{"step": int(s), "split": "train", "loss": float(v), "lr": lr,
                   "gns_b_simple": 60.0} for s, v in zip(steps, loss)]
        (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
        (run / "config.json").write_text(json.dumps(
            {"model": {"vocab_size": 512}, "optim": {"peak_lr": lr},
             "data": {"global_batch_size": b}}))
        (run / "summary.json").write_text(json.dumps(
            {"params": n, "tokens": 1e6, "global_batch_size": b, "loss": float(loss[-1])}))
  return root


def test_report_carries_the_numbers(tmp_path, capsys):
  reg = write_registry(tmp_path / "reg")
  out = tmp_path / "report"
  assert hparams_report.main(["--runs", str(reg), "--out", str(out), "--bootstrap", "20"]) == 0
  report = json.loads((out / "report.json").read_text())
  md = (out / "report.md").read_text()
  summary = (out / "summary.txt").read_text()
  hp = report["hparams"]
  assert hp["law"]["varies"] == "N"  # one budget: the N-only form
  # The law falls with N as the synthetic optimum does (a coarse x2 grid: the sign only).
  assert hp["law"]["lr"]["b"] < 0
  lr = hp["law"]["lr"]
  assert f"lr_opt = {lr['a']:.3g}" in md and f"N^{lr['b']:.3g}" in md
  assert f"lr_opt(N) = {lr['a']:.3g} N^{lr['b']:.3g}" in summary
  gap = hp["backtest"]["mean_gap"]
  assert f"Backtest gap: {gap:.2%}" in md and f"backtest gap: {gap:.2%}" in summary
  for row in hp["sensitivity"]["by_N"]:
    assert f"**{row['sensitivity']:.3f}** nats" in md
  groups = report["critical_batch"]["groups"]
  assert len(groups) == 3
  fitted = [r for g in groups for r in g["targets"] if "B_crit" in r and not r.get("beyond_swept")]
  assert fitted, "no B_crit within the swept batch sizes"
  for r in fitted:
    assert r["B_crit"] == pytest.approx(B_CRIT, rel=0.1)
    assert r["B_simple"] == pytest.approx(60.0)
  assert "## Critical batch size" in md and "B_simple / B_crit" in md
  assert len(report["noise_scale"]) == 9 and "B_simple at the end of the constant lr" in summary
  for name in ("hparams_cells.png", "hparams_laws.png", "lr_sensitivity.png",
               "critical_batch-params10000.png"):
    assert (out / name).stat().st_size > 10_000 and f"]({name})" in md
  assert "report:" in capsys.readouterr().out


def test_missing_registry_is_one_line(tmp_path, capsys):
  assert hparams_report.main(["--runs", str(tmp_path / "nope"), "--out", str(tmp_path)]) == 2
  err = capsys.readouterr().err
  assert "no such directory" in err and len(err.strip().splitlines()) == 1
