"""IsoFLOP designs that bracket a prior D/N (sweeps/design.py, budgets.bracket, `sweeps
design`) and the D/N and epochs columns of `sweeps list`."""

from __future__ import annotations

import json
import math
import os

import pytest
import yaml

import train_fixtures as tf
from analysis.compute_optimal import Allocation
from sweeps import cli, design, spec as spec_lib
from varjax.errors import ConfigError

FAMILY = {"depths": list(range(1, 9)), "width_per_depth": 32, "head_dim": 32}
FLOPS = [1e10, 1e11, 1e12]
TOKENS_PER_IMAGE = sum(p * p for p in tf.PATCH_NUMS)  # 30


def write_base(directory, tokens="/nonexistent/tokens") -> str:
  """The tests' tiny VAR config without the fields a sweep sets; returns its path."""
  os.makedirs(directory, exist_ok=True)
  base = tf.tiny_config({"tokens": tokens, "tokenizer": "/nonexistent"}, "unused")
  del base["model"]["depth"], base["model"]["width"], base["model"]["heads"]
  del base["run"]["name"], base["run"]["out_dir"], base["run"]["steps"]
  return tf.write_config(base, os.path.join(directory, "base.yaml"))


def write_spec(directory, budgets, models=FAMILY, **fields) -> str:
  write_base(directory)
  spec = {"base": "base.yaml", "out_dir": os.path.join(directory, "runs"), "models": models,
          "budgets": budgets, **fields}
  path = os.path.join(directory, "spec.yaml")
  with open(path, "w") as f:
    yaml.safe_dump(spec, f)
  return path


def expected_window(ratios, ratio, factor):
  """For D/N falling with N: from the last size with D/N >= r x f to the first with
  D/N <= r / f (the family's end where no size gets there)."""
  above = [k for k, x in enumerate(ratios) if x >= ratio * factor]
  below = [k for k, x in enumerate(ratios) if x <= ratio / factor]
  return (above[-1] if above else 0), (below[0] + 1 if below else len(ratios))


# ---------------------------------------------------------------- selection

@pytest.mark.parametrize("ratio", [0.3, 2.0, 20.0, 150.0])
def test_selection_on_a_closed_form_family_is_minimal_and_brackets(ratio):
  # C = 6 N D exactly: D/N = C / (6 N^2), so D/N falls 4x per doubling of N.
  flops, factor = 1e15, 8.0
  n = [int(1e5 * 2 ** k) for k in range(12)]
  candidates = [design.Candidate(f"m{k}", nk, round(flops / (6 * nk)), 100)
                for k, nk in reversed(list(enumerate(n)))]  # any order: sorted by N
  plan = design.plan_budget("C1e15", flops, candidates, ratio, factor)
  dn = [flops / (6 * nk * nk) for nk in n]
  assert [c.params for c in plan.candidates] == n
  assert (plan.first, plan.stop) == expected_window(dn, ratio, factor)
  chosen = [c.tokens_per_param for c in plan.candidates[plan.first:plan.stop]]
  assert max(chosen) >= ratio * factor and min(chosen) <= ratio / factor
  assert max(chosen[1:]) < ratio * factor and min(chosen[:-1]) > ratio / factor  # minimal
  # D/N spans 64x at least, so N spans 8x at least at fixed C
  assert max(chosen) / min(chosen) >= factor ** 2 and plan.warnings == ()


def test_a_family_too_small_keeps_its_side_and_warns():
  flops = 1e15
  candidates = [design.Candidate(f"m{k}", n, round(flops / (6 * n)), 100)
                for k, n in enumerate([1e7, 2e7, 4e7, 8e7])]  # D/N 1.67, 0.417, 0.104, 0.026
  plan = design.plan_budget("C1e15", flops, candidates, 1.0, 8.0)
  assert (plan.first, plan.stop) == (0, 3)  # every size above the prior, down to <= 1/8
  (warning,) = plan.warnings
  assert warning.startswith("budget C1e15: cannot bracket D/N = 1 from above: the family "
                            "reaches at most D/N = 1.67 (m0), it needs >= 8 (x 8)")
  assert warning.endswith("add smaller models")
  plan = design.plan_budget("C1e15", flops, candidates, 0.01, 8.0)
  assert (plan.first, plan.stop) == (2, 4) and len(plan.warnings) == 1  # from 0.104 >= 0.08
  assert "from below" in plan.warnings[0] and "add larger models" in plan.warnings[0]
  plan = design.plan_budget("C1e15", flops, candidates[1:3], 0.2, 8.0)
  assert (plan.first, plan.stop) == (0, 2) and len(plan.warnings) == 2


# ---------------------------------------------------------------- specs

def test_spec_bracket_keeps_the_bracketing_sizes_and_branches_cooldowns(tmp_path):
  ratio = 0.1
  plain = spec_lib.load(write_spec(tmp_path / "plain", {"flops": FLOPS, "min_steps": 3}))
  sweep = spec_lib.load(write_spec(
      tmp_path / "bracket", {"flops": FLOPS, "min_steps": 3,
                             "bracket": {"tokens_per_param": ratio}},
      cooldowns={"decay_fraction": 0.5}))
  expected = set()
  for c in FLOPS:
    runs = sorted((r for r in plain.runs if r.info["budget"] == c),
                  key=lambda r: r.info["params"])
    first, stop = expected_window([r.info["tokens"] / r.info["params"] for r in runs], ratio, 8)
    assert 0 < stop - first < len(runs)  # a real choice at each budget
    expected |= {r.name for r in runs[first:stop]}
  assert {r.name for r in sweep.runs} == expected and sweep.warnings == []
  assert [p.chosen_labels for p in sweep.plans] == [
      ["d1w32", "d2w64", "d3w96"], ["d2w64", "d3w96", "d4w128", "d5w160"],
      ["d3w96", "d4w128", "d5w160", "d6w192", "d7w224"]]
  # each model's shorter budgets branch off its longest run
  by_name = {r.name: r for r in sweep.runs}
  for run in sweep.runs:
    if "warm_start" in run.info:
      trunk = by_name[run.info["warm_start"]]
      assert trunk.info["model"] == run.info["model"] and trunk.info.get("cooldown_trunk")
      assert run.info["warm_start_step"] in trunk.config.run.keep_steps
      assert trunk.info["steps"] == max(r.info["steps"] for r in sweep.runs
                                        if r.info["model"] == run.info["model"])
  assert by_name["d3w96-C1e11-s0"].info["warm_start"] == "d3w96-C1e12-s0"


def test_spec_warns_when_the_family_cannot_bracket(tmp_path):
  small = {"depths": [1, 2], "width_per_depth": 32, "head_dim": 32}
  sweep = spec_lib.load(write_spec(tmp_path, {"flops": [1e12], "bracket": {
      "tokens_per_param": 5}}, models=small))  # D/N 448 and 9.37
  assert [r.name for r in sweep.runs] == ["d1w32-C1e12-s0", "d2w64-C1e12-s0"]
  (warning,) = sweep.warnings
  assert warning.startswith("budget C1e12: cannot bracket D/N = 5 from below: the family "
                            "reaches at least D/N = 9.37 (d2w64), it needs <= 0.625")


@pytest.mark.parametrize("bracket, key", [
    ({"tokens_per_param": 0}, "budgets.bracket.tokens_per_param"),
    ({"tokens_per_param": -20}, "budgets.bracket.tokens_per_param"),
    ({"tokens_per_param": [20, -1]}, "budgets.bracket.tokens_per_param[1]"),
    ({"tokens_per_param": [20, 20, 20]}, "budgets.bracket.tokens_per_param"),
    ({"tokens_per_param": 20, "factor": 0.5}, "budgets.bracket.factor"),
    ({"factor": 4}, "budgets.bracket.tokens_per_param"),
    ({"tokens_per_param": 20, "fator": 4}, "budgets.bracket.fator"),
    ({"tokens_per_param": "many"}, "budgets.bracket.tokens_per_param"),
])
def test_bad_bracket_values_name_the_field(tmp_path, bracket, key):
  with pytest.raises(ConfigError) as e:
    spec_lib.load(write_spec(tmp_path, {"flops": [1e11, 1e12], "bracket": bracket}))
  assert e.value.key == key


def test_bracket_needs_flops_budgets(tmp_path):
  with pytest.raises(ConfigError) as e:
    spec_lib.load(write_spec(tmp_path, {"tokens": [1e5], "bracket": {"tokens_per_param": 20}}))
  assert e.value.key == "budgets.bracket"


# ---------------------------------------------------------------- commands

def test_design_writes_a_spec_that_list_expands(tmp_path, capsys):
  base = write_base(tmp_path)
  out = str(tmp_path / "specs" / "new.yaml")
  args = ["design", "--flops", ",".join(map(str, FLOPS)), "--tokens-per-param", "0.1",
          "--base", base, "--depths", "1-8", "--width-per-depth", "32", "--head-dim", "32",
          "--min-steps", "3", "--out", out]
  assert cli.main(args) == 0
  printed = capsys.readouterr().out
  assert "budget C1e11 FLOPs: prior D/N 0.1, bracket from 0.0125 to 0.8 (factor 8)" in printed
  assert "  * d2w64 " in printed and "    d1w32 " in printed  # chosen / not chosen at 1e11
  with open(out) as f:
    text = f.read()
  assert "#   python -m sweeps design --flops" in text
  values = yaml.safe_load(text)
  assert values["base"] == "../base.yaml"
  assert values["budgets"] == {"flops": FLOPS, "min_steps": 3,
                               "bracket": {"tokens_per_param": 0.1, "factor": 8.0}}
  assert cli.main(["list", out]) == 0
  listed = capsys.readouterr().out.splitlines()
  assert listed[0].startswith(f"sweep new: {3 + 4 + 5} runs") and len(listed) == 2 + 12
  chosen = {1e10: [1, 2, 3], 1e11: [2, 3, 4, 5], 1e12: [3, 4, 5, 6, 7]}  # as in the spec test
  assert sorted(line.split()[0] for line in listed[2:]) == sorted(
      f"d{d}w{32 * d}-C{spec_lib.short_number(c)}-s0" for c, ds in chosen.items() for d in ds)
  assert cli.main(args) == 2  # never overwrites a spec unless asked
  assert capsys.readouterr().err.startswith(f"sweeps: error: --out: {out} exists")

  # the prior from a fit: D_opt / N_opt of its allocation at each budget
  alloc = Allocation(a=0.6, b=0.4, G=0.5)
  report = tmp_path / "report.json"
  report.write_text(json.dumps({"law": "chinchilla", "allocation": alloc.to_dict()}))
  assert cli.main(["design", "--flops", "1e11,1e12", "--from-fit", str(report), "--spec", out,
                   "--depths", "1-3", "--factor", "4", "--out", str(tmp_path / "fit.yaml")]) == 0
  printed = capsys.readouterr().out
  values = yaml.safe_load((tmp_path / "fit.yaml").read_text())
  ratios = values["budgets"]["bracket"]["tokens_per_param"]
  assert ratios == pytest.approx([float(alloc.tokens_per_param(c)) for c in (1e11, 1e12)],
                                 rel=1e-2)
  assert f"budget C1e12 FLOPs: prior D/N {ratios[1]:.3g}" in printed
  assert values["models"] == dict(FAMILY, depths=[1, 2, 3]) and values["base"] == "base.yaml"


@pytest.mark.parametrize("extra, message", [
    (["--tokens-per-param", "20", "--from-fit", "r.json"], "--tokens-per-param: give the prior"),
    (["--tokens-per-param", "20", "--factor", "0.5"], "budgets.bracket.factor: must be >= 1"),
    (["--tokens-per-param", "20", "--depths", "one-8"], "--depths: expected comma-separated"),
    (["--from-fit", "/nonexistent.json"], "--from-fit: cannot read /nonexistent.json"),
])
def test_design_mistakes_are_one_line(tmp_path, capsys, extra, message):
  base = write_base(tmp_path)
  argv = ["design", "--flops", "1e11", "--base", base, "--depths", "1-2", "--width-per-depth",
          "32", "--head-dim", "32", *extra]
  assert cli.main(argv) == 2
  err = capsys.readouterr().err
  assert err.splitlines() == [err.strip()] and err.startswith(f"sweeps: error: {message}")


def test_list_shows_epochs_from_the_token_split_and_warns_over_four(tmp_path, capsys):
  tokens = tmp_path / "tokens"
  (tokens / "train").mkdir(parents=True)
  (tokens / "train" / "meta.json").write_text(json.dumps({"num_examples": 96}))
  write_base(tmp_path, tokens=str(tokens))
  unique = 96 * TOKENS_PER_IMAGE  # 6 steps of 16 images
  spec = {"base": "base.yaml", "out_dir": str(tmp_path / "runs"),
          "models": {"depths": [1], "width_per_depth": 32, "head_dim": 32},
          "budgets": {"tokens": [2 * unique, 6 * unique]}}
  path = tmp_path / "spec.yaml"
  path.write_text(yaml.safe_dump(spec))
  sweep = spec_lib.load(str(path))
  assert design.unique_tokens_per_epoch(sweep.runs[0].config) == unique
  assert cli.main(["list", str(path)]) == 0
  lines = capsys.readouterr().out.splitlines()
  header = lines[1].split()
  assert header[:6] == ["run", "N", "tokens", "D/N", "epochs", "FLOPs"]
  for line, run in zip(lines[2:4], sweep.runs):
    cells = line.split()
    assert cells[0] == run.name
    assert float(cells[3]) == pytest.approx(run.info["tokens"] / run.info["params"], rel=1e-2)
    assert float(cells[4]) == pytest.approx(run.info["tokens"] / unique, rel=1e-2)
  assert lines[4:] == [f"warning: 1 run(s) train more than 4 epochs (up to 6): "
                       f"{sweep.runs[1].name}; their loss measures repetition, not scale"]
  (tokens / "train" / "meta.json").unlink()  # not built: "?" and no warning
  assert design.unique_tokens_per_epoch(sweep.runs[0].config) is None
  assert cli.main(["list", str(path)]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert [line.split()[4] for line in lines[2:]] == ["?", "?"]
  assert sweep.runs[1].info["tokens"] == 6 * unique
