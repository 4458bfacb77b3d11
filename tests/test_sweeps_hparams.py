"""lr x batch sweeps and fitted hparams rules (issue 17, items 1 and 3): the batch axis
(`batch.scales`), a token budget kept across batch sizes, lanes grouping, `rule: fitted`
against a hand evaluation of an `analysis hparams --json` fit, rounding to the mesh's
multiple, and bad fit files (one line, exit 2)."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

import train_fixtures as tf
from sweeps import cli, fitted, lanes, spec as spec_lib
from test_analysis_cli import run_cli
from test_analysis_hparams import sweep as hparams_sweep
from test_sweeps import ONE_MODEL, TOKENS_PER_STEP, write_spec
from varjax.errors import ConfigError

L = TOKENS_PER_STEP // 16  # tokens per image of the tiny config (its batch is 16)
GRID = {"lr": {"rule": "config", "scales": [0.5, 2]}, "batch": {"scales": [0.5, 1, 2]}}


def test_lr_by_batch_grid_names_and_fixed_token_budget(tmp_path):
  budgets = [8 * TOKENS_PER_STEP, 5 * TOKENS_PER_STEP]  # the second does not divide evenly
  sweep = spec_lib.load(write_spec(tmp_path, models=ONE_MODEL,
                                   budgets={"tokens": budgets}, **GRID))
  assert len(sweep.runs) == 2 * 6  # 2 budgets x (2 lrs x 3 batches)
  names = [r.name for r in sweep.runs]
  assert len(set(names)) == len(names)
  assert names[:6] == ["d1w32-D3.84e3-s0-lr0.0015-b8", "d1w32-D3.84e3-s0-lr0.006-b8",
                       "d1w32-D3.84e3-s0-lr0.0015-b16", "d1w32-D3.84e3-s0-lr0.006-b16",
                       "d1w32-D3.84e3-s0-lr0.0015-b32", "d1w32-D3.84e3-s0-lr0.006-b32"]
  for r in sweep.runs:
    batch, steps = r.config.data.global_batch_size, r.config.run.steps
    assert r.info["global_batch_size"] == batch == 16 * r.info["batch_scale"]
    # the config rule's peak (optim.peak_lr 3e-3) x the lr scale, whatever the batch
    assert r.config.optim.peak_lr == pytest.approx(3e-3 * r.info["lr_scale"])
    assert r.info["tokens"] == steps * batch * L
    # D stays the budget's: within half a step of it at every batch
    assert abs(r.info["tokens"] - r.info["budget"]) <= batch * L / 2
  first = {r.info["tokens"] for r in sweep.runs if r.info["budget"] == budgets[0]}
  assert first == {budgets[0]}  # 32, 16 and 8 steps of 8, 16 and 32 images
  # one batch size: the names of before (no -b), whatever the scale list says
  one = spec_lib.load(write_spec(tmp_path, models=ONE_MODEL, batch={"scales": [1]}))
  assert [r.name for r in one.runs] == ["d1w32-D1.92e3-s0", "d1w32-D3.84e3-s0"]


def test_lanes_group_lr_variants_and_split_batch_variants(tmp_path):
  sweep = spec_lib.load(write_spec(tmp_path, models=ONE_MODEL, seeds=[0, 1],
                                   budgets={"tokens": [8 * TOKENS_PER_STEP]}, **GRID))
  groups = lanes.groups(list(sweep.runs), max_lanes=8)
  assert len(groups) == 3  # one program per batch size: 2 seeds x 2 lrs as its lanes
  for group in groups:
    assert len(group) == 4
    assert len({r.config.data.global_batch_size for r in group}) == 1
    assert len({r.config.optim.peak_lr for r in group}) == 2


def test_var_rule_follows_the_batch(tmp_path):
  sweep = spec_lib.load(write_spec(tmp_path, models=ONE_MODEL, lr={"rule": "var",
                                                                   "base_lr": 2e-4},
                                   batch={"scales": [1, 4]}))
  for r in sweep.runs:
    assert r.config.optim.peak_lr == pytest.approx(2e-4 * r.config.data.global_batch_size / 256)
  assert {r.config.data.global_batch_size for r in sweep.runs} == {16, 64}


@pytest.fixture(scope="module")
def fit_file(tmp_path_factory):
  """(CSV of a synthetic lr x batch sweep, where its fit goes): `_write_fit` runs `python -m
  analysis hparams --json` on it once (capsys is per test)."""
  directory = tmp_path_factory.mktemp("fit")
  csv = directory / "runs.csv"
  hparams_sweep(seed=1).to_csv(csv, index=False)
  return str(csv), str(directory / "fit.json")


def _write_fit(capsys, fit_file) -> dict:
  csv, path = fit_file
  if not os.path.exists(path):
    rc, out, err = run_cli(capsys, "hparams", "--csv", csv, "--bootstrap", "0", "--json")
    assert rc == 0, err
    with open(path, "w") as f:
      f.write(out)
  with open(path) as f:
    return json.load(f)


def test_fitted_rules_match_a_hand_evaluation(tmp_path, capsys, fit_file):
  fit = _write_fit(capsys, fit_file)
  assert fit["columns"]["batch"] == "global_batch_size"
  lr_c, b_c = fit["law"]["lr"], fit["law"]["batch"]
  # the spec names the fit relative to itself, as `base`
  rel = os.path.relpath(fit_file[1], tmp_path)
  budgets = [8 * TOKENS_PER_STEP, 32 * TOKENS_PER_STEP]
  path = write_spec(tmp_path, budgets={"tokens": budgets},
                    lr={"rule": "fitted", "from": rel, "scales": [0.5, 1]},
                    batch={"rule": "fitted", "from": rel})
  sweep = spec_lib.load(path)
  assert len(sweep.runs) == 2 * 2 * 2
  sha = hashlib.sha256(open(fit_file[1], "rb").read()).hexdigest()
  for r in sweep.runs:
    n, budget = r.info["params"], r.info["budget"]
    b_opt = b_c["d"] * n ** b_c.get("f", 0.0) * budget ** b_c["e"]  # images, at the budget's D
    batch = max(8, round(b_opt / 8) * 8)
    assert r.config.data.global_batch_size == batch
    assert r.config.run.steps == max(1, round(budget / (batch * L)))
    d = r.config.run.steps * batch * L  # the run's own D
    lr_opt = lr_c["a"] * n ** lr_c["b"] * d ** lr_c["c"]
    assert r.config.optim.peak_lr == pytest.approx(lr_opt * r.info["lr_scale"], rel=1e-12)
    for what, value in (("lr", lr_opt), ("batch", b_opt)):
      record = r.info[f"{what}_fit"]
      assert record["from"] == fit_file[1] and record["sha256"] == sha
      assert record["law"] == fit["law"][what]["form"]
      assert record["value"] == pytest.approx(value, rel=1e-12)
    assert r.info["batch_fit"]["unit"] == "images"
  assert len({r.config.data.global_batch_size for r in sweep.runs}) == 2  # moves with D
  assert cli.main(["list", path]) == 0
  out = capsys.readouterr().out
  assert f"lr: fitted from {fit_file[1]} (sha256 {sha[:12]})" in out
  assert "batch in images, rounded to a multiple of 8" in out


def test_fitted_batch_rounds_to_the_mesh_and_converts_tokens(tmp_path, capsys, fit_file):
  fit = _write_fit(capsys, fit_file)
  b_c = fit["law"]["batch"]
  budget = 8 * TOKENS_PER_STEP
  # a mesh of data 3 (explicit): every batch a multiple of lcm(8, 3) = 24, at least 24
  path = write_spec(tmp_path, models=ONE_MODEL, budgets={"tokens": [budget]},
                    config={"mesh": {"data": 3}},
                    batch={"rule": "fitted", "from": fit_file[1], "scales": [0.1, 1]})
  runs = spec_lib.load(path).runs
  b_opt = b_c["d"] * runs[0].info["params"] ** b_c.get("f", 0.0) * budget ** b_c["e"]
  assert [r.config.data.global_batch_size for r in runs] == [
      24, max(24, round(b_opt / 24) * 24)]
  assert [r.name[-4:] for r in runs] == ["-b24", f"-b{runs[1].config.data.global_batch_size}"]
  # a fit whose batch column counted tokens: images = tokens / L
  tokens_fit = dict(fit, columns=dict(fit["columns"], batch="batch_tokens"))
  other = tmp_path / "tokens_fit.json"
  other.write_text(json.dumps(tokens_fit))
  with pytest.raises(ConfigError, match="batch.unit"):
    spec_lib.load(write_spec(tmp_path, models=ONE_MODEL, budgets={"tokens": [budget]},
                             batch={"rule": "fitted", "from": str(other)}))
  runs = spec_lib.load(write_spec(tmp_path, models=ONE_MODEL, budgets={"tokens": [budget]},
                                  batch={"rule": "fitted", "from": str(other),
                                         "unit": "tokens"})).runs
  assert runs[0].config.data.global_batch_size == max(8, round(b_opt / L / 8) * 8)
  assert runs[0].info["batch_fit"]["unit"] == "tokens"


@pytest.mark.parametrize("content, expected", [
    (None, "lr.from: fit file not found: "),
    ("{not json", " is not JSON (line 1: "),
    (json.dumps({"law": {"form": "L = E + A / N^alpha", "E": 1.0}}),
     " is not an hparams fit (the output of `python -m analysis hparams --json`): it has no "
     "law.lr with numbers a, b, c"),
    (json.dumps({"law": {"lr": {"a": 1.0, "b": "x", "c": 0.3}}}), "no law.lr with numbers"),
    (json.dumps([1, 2]), "is not an hparams fit"),
])
def test_bad_fit_file_is_one_line_and_exit_2(tmp_path, capsys, content, expected):
  fit = tmp_path / "fit.json"
  if content is not None:
    fit.write_text(content)
  path = write_spec(tmp_path, models=ONE_MODEL, lr={"rule": "fitted", "from": "fit.json"})
  for command in (["list", path], ["run", path, "--dry-run"]):
    assert cli.main(command) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err, err
    assert err.startswith("sweeps: error: lr.from: ")


@pytest.mark.parametrize("fields, message", [
    ({"lr": {"rule": "fitted"}}, "lr.from: the fitted rule needs `from: FILE`"),
    ({"batch": {"rule": "power", "from": "x.json"}}, "batch.from: is the fit file of rule: "
                                                     "fitted"),
    ({"batch": {"unit": "tokens"}}, "batch.unit: is the unit of a fitted batch law"),
    ({"batch": {"scales": [1, 1]}}, "batch.scales: must be a non-empty list of distinct"),
    ({"batch": {"scales": [1, 1.1]}}, "batch.scales: d1w32 at D1.92e3: scales 1, 1.1 of "
                                       "batch 16 give batches 16, 16"),
    ({"batch": {"form": "x"}}, "batch.form: unknown key; valid keys are b0, exponent, from, "),
])
def test_bad_rule_fields(tmp_path, capsys, fields, message):
  assert cli.main(["list", write_spec(tmp_path, models=ONE_MODEL, **fields)]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and message in err, err


def test_design_keeps_the_fit_file_of_a_spec(tmp_path):
  """`sweeps design --spec` writes the new spec elsewhere: `from` moves with it, as `base`."""
  from sweeps import design
  spec = write_spec(tmp_path / "old", lr={"rule": "fitted", "from": "fit.json"},
                    batch={"rule": "fitted", "from": "../fits/fit.json", "scales": [1, 2]})
  values = design.spec_values(flops=[1e9], ratio=20, factor=8, models=None, spec=spec,
                              out=str(tmp_path / "new" / "next.yaml"))
  assert values["lr"]["from"] == os.path.join("..", "old", "fit.json")
  assert values["batch"] == {"rule": "fitted", "from": os.path.join("..", "fits", "fit.json"),
                             "scales": [1, 2]}


@pytest.mark.slow
def test_lr_by_batch_grid_trains_with_lanes(tmp_path):
  """A 2 x 2 lr x batch grid with BACKEND=lanes: one program per batch (2 lanes each), and
  every run trains the budget's tokens."""
  setup = tf.make_token_setup(str(tmp_path / "data"))
  budget = 8 * TOKENS_PER_STEP
  path = write_spec(tmp_path / "s", setup, models=ONE_MODEL, budgets={"tokens": [budget]},
                    lr={"rule": "config", "scales": [0.5, 2]}, batch={"scales": [0.5, 1]})
  assert cli.main(["run", path, "--backend", "lanes", "--progress", "off"]) == 0
  sweep = spec_lib.load(path)
  for r in sweep.runs:
    with open(os.path.join(r.directory, "summary.json")) as f:
      summary = json.load(f)
    assert summary["tokens"] == budget and summary["lanes"] == 2
    assert summary["global_batch_size"] == r.info["global_batch_size"]
    with open(os.path.join(r.directory, spec_lib.SWEEP_FILE)) as f:
      assert json.load(f)["batch_scale"] == r.info["batch_scale"]


def test_an_n_only_fit_used_at_another_d_is_recorded_and_warned(tmp_path, capsys, fit_file):
  """A fit at one token budget (analysis hparams' N-only form: law.varies N, law.D_fixed)
  holds at that D only: runs at another D record the ratio and `sweeps list` says so."""
  fit = _write_fit(capsys, fit_file)
  d_fixed = 8 * TOKENS_PER_STEP
  law = {**fit["law"], "varies": "N", "D_fixed": d_fixed,
         "lr": {**fit["law"]["lr"], "c": 0.0}}
  n_only = tmp_path / "n_only.json"
  n_only.write_text(json.dumps({**fit, "law": law}))
  path = write_spec(tmp_path, models=ONE_MODEL, batch={"scales": [1]},
                    budgets={"tokens": [d_fixed, 4 * d_fixed]},
                    lr={"rule": "fitted", "from": str(n_only)})
  sweep = spec_lib.load(path)
  ratios = sorted(r.info["lr_fit"]["D_ratio"] for r in sweep.runs)
  assert ratios[0] == pytest.approx(1.0, rel=0.02) and ratios[1] == pytest.approx(4.0, rel=0.02)
  (warning,) = sweep.warnings
  assert warning.startswith(f"lr.from {n_only} is an N-only fit at D = {d_fixed:.3g} tokens; "
                            "1 run(s) train at 4")
  assert cli.main(["list", path]) == 0
  printed = capsys.readouterr()
  assert "is an N-only fit" in printed.out + printed.err
