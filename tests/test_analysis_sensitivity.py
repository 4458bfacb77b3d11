"""lr sensitivity per model size (Wortsman et al. 2023; analysis/sensitivity.py): a table
worked by hand, seeds averaged, the L0 cap, skipped groups, and its place in
`python -m analysis hparams` (JSON, text, plot, one-line errors)."""

import json
import math
import os

import numpy as np
import pandas as pd
import pytest

from analysis import sensitivity
from analysis.validate import AnalysisError
from test_analysis_cli import run_cli

LN_512 = 6.238324625039508  # ln 512: uniform logits over the demo tokenizer's codebook

# (N, D, batch, lr, final loss); the hand-worked sensitivities below.
TABLE = [
    # N 1e4, batch 8: seeds 5.1 and 4.9 at lr 1e-3 average to 5.0; 7.0 > L0 counts as L0.
    (1e4, 1e6, 8, 1e-3, 5.1), (1e4, 1e6, 8, 1e-3, 4.9), (1e4, 1e6, 8, 2e-3, 4.6),
    (1e4, 1e6, 8, 4e-3, 4.5), (1e4, 1e6, 8, 8e-3, 7.0),
    # N 1e5, batch 8 and batch 16
    (1e5, 1e6, 8, 1e-3, 4.4), (1e5, 1e6, 8, 2e-3, 4.2), (1e5, 1e6, 8, 4e-3, 4.3),
    (1e5, 1e6, 8, 8e-3, 4.8),
    (1e5, 1e6, 16, 1e-3, 4.5), (1e5, 1e6, 16, 2e-3, 4.3), (1e5, 1e6, 16, 4e-3, 4.3),
    (1e5, 1e6, 16, 8e-3, 5.1),
    # N 1e6: one lr only (skipped)
    (1e6, 1e6, 8, 1e-3, 4.0),
]
# mean over the lrs of min(L, L0) - L*:
SENS_1E4 = (0.5 + 0.1 + 0.0 + (LN_512 - 4.5)) / 4  # 0.58458...
SENS_1E5_B8 = (0.2 + 0.0 + 0.1 + 0.6) / 4  # 0.225
SENS_1E5_B16 = (0.2 + 0.0 + 0.0 + 0.8) / 4  # 0.25


def columns(rows=TABLE):
  return [np.array(c, np.float64) for c in zip(*rows)]


def test_hand_worked_table():
  assert sensitivity.uniform_l0(512) == pytest.approx(LN_512, rel=1e-15)
  n, d, b, lr, loss = columns()
  report = sensitivity.analyse(n, d, b, lr, loss, LN_512)
  groups = {(round(g["N"]), g["batch"]): g for g in report["groups"]}  # N: geometric mean
  assert set(groups) == {(1e4, 8), (1e5, 8), (1e5, 16)}
  g = groups[(1e4, 8)]
  assert g["sensitivity"] == pytest.approx(SENS_1E4, rel=1e-12)
  assert g["losses"] == pytest.approx([5.0, 4.6, 4.5, 7.0]) and g["runs"] == 5
  assert g["L_star"] == 4.5 and g["best_lr"] == 4e-3 and g["above_L0"] == 1
  assert groups[(1e5, 8)]["sensitivity"] == pytest.approx(SENS_1E5_B8, rel=1e-12)
  assert groups[(1e5, 16)]["sensitivity"] == pytest.approx(SENS_1E5_B16, rel=1e-12)
  by_n = {round(r["N"]): r for r in report["by_N"]}
  assert by_n[1e4]["sensitivity"] == pytest.approx(SENS_1E4, rel=1e-12)
  assert by_n[1e5]["sensitivity"] == pytest.approx((SENS_1E5_B8 + SENS_1E5_B16) / 2, rel=1e-12)
  assert (by_n[1e5]["min"], by_n[1e5]["max"], by_n[1e5]["groups"]) == \
      (pytest.approx(0.225), pytest.approx(0.25), 2)
  assert [round(s["N"]) for s in report["skipped"]] == [1e6] and 1e6 not in by_n
  # Every lr above L0: nothing learned, sensitivity 0 and a note.
  flat = sensitivity.analyse([1e4] * 2, [1e6] * 2, [8] * 2, [1e-3, 2e-3], [7.0, 8.0], LN_512)
  assert flat["groups"][0]["sensitivity"] == 0 and "note" in flat["groups"][0]
  text = sensitivity.summary_text(report)
  assert "N=1e+04: sensitivity 0.5846" in text and "skipped N=1e+06" in text


@pytest.mark.parametrize("change, message", [
    (lambda c: c[4].__setitem__(2, np.nan), "loss has 1 NaN value(s)"),
    (lambda c: c[3].__setitem__(0, -1e-3), "lr must be positive"),
])
def test_bad_input(change, message):
  cols = columns()
  change(cols)
  with pytest.raises(AnalysisError, match=message.replace("(", r"\(").replace(")", r"\)")):
    sensitivity.analyse(*cols, LN_512)


def test_no_sweep_bad_l0():
  with pytest.raises(AnalysisError, match="needs an lr sweep"):
    sensitivity.analyse(*columns(TABLE[-1:]), LN_512)
  with pytest.raises(AnalysisError, match="must be a positive number"):
    sensitivity.analyse(*columns(), math.nan)
  with pytest.raises(AnalysisError, match="different L0"):
    sensitivity.analyse(*columns(), [5.0] + [LN_512] * (len(TABLE) - 1))


def one_budget_sweep(sizes=(1e4, 3e4, 1e5), seed=0):
  """An lr x batch grid (5 x 3) per size at one D, loss a bowl around lr_opt = 0.5 N^-0.4,
  batch_opt 16, plus a vocabulary column: what a one-budget registry looks like."""
  rng = np.random.default_rng(seed)
  rows = []
  for n in sizes:
    lr0 = 0.5 * n ** -0.4
    for lr in lr0 * 2.0 ** np.arange(-2, 3):
      for b in (8, 16, 32):
        loss = 4 + 0.05 * math.log(lr / lr0) ** 2 + 0.02 * math.log(b / 16) ** 2
        rows.append((n, 1e6, lr, b, loss * (1 + rng.normal(0, 1e-4)), 512))
  return pd.DataFrame(rows, columns=["params", "tokens", "peak_lr", "global_batch_size", "loss",
                                     "config.model.vocab_size"])


def test_in_hparams_cli(tmp_path, capsys):
  table = one_budget_sweep()
  csv = tmp_path / "sweep.csv"
  table.to_csv(csv, index=False)
  rc, out, err = run_cli(capsys, "hparams", "--csv", csv, "--bootstrap", "0", "--json",
                         "--plot-dir", tmp_path / "plots")
  assert rc == 0, err
  sens = json.loads(out)["sensitivity"]
  assert sens["L0_source"].startswith("ln V") and "512" in sens["L0_source"]
  assert len(sens["groups"]) == 9 and len(sens["by_N"]) == 3
  # Each group's sensitivity from its own rows, by the definition (no cap reached here).
  for g in sens["groups"]:
    rows = table[np.isclose(table["params"], g["N"]) & (table["global_batch_size"] == g["batch"])]
    expected = (rows["loss"] - rows["loss"].min()).mean()
    assert g["sensitivity"] == pytest.approx(expected, rel=1e-9)
  plots = json.loads(out)["plots"]
  assert any(p.endswith("lr_sensitivity.png") and os.path.getsize(p) > 10_000 for p in plots)
  rc, out, err = run_cli(capsys, "hparams", "--csv", csv, "--bootstrap", "0", "--l0", "4.05")
  assert rc == 0, err
  assert "lr sensitivity (" in out and "L0: --l0 4.05" in out
  # A 4.05 cap: the far lrs (loss 4 + 0.05 x ln(4)^2 = 4.096) count as 4.05.
  no_vocab = tmp_path / "no_vocab.csv"
  table.drop(columns="config.model.vocab_size").to_csv(no_vocab, index=False)
  rc, out, err = run_cli(capsys, "hparams", "--csv", no_vocab, "--bootstrap", "0", "--json")
  assert rc == 0, err
  assert "give --l0" in json.loads(out)["sensitivity"]["skipped_all"]


@pytest.mark.parametrize("args, message", [
    (["--l0", "-1"], "--l0"),
    (["--vocab-col", "bad_vocab"], "vocabulary size must be a whole number >= 2"),
])
def test_hparams_cli_bad_l0_is_one_line(tmp_path, capsys, args, message):
  table = one_budget_sweep()
  table["bad_vocab"] = 512.0
  table.loc[4, "bad_vocab"] = np.nan
  csv = tmp_path / "sweep.csv"
  table.to_csv(csv, index=False)
  rc, out, err = run_cli(capsys, "hparams", "--csv", csv, "--bootstrap", "0", *args)
  assert rc == 2, (out, err)
  assert message in err and len(err.strip().splitlines()) == 1, err
