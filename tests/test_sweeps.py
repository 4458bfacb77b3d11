"""Sweep specs, expansion, the run registry and the local backend (sweeps/)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

import train_fixtures as tf
from analysis import load_runs
from sweeps import cli, launch, registry, spec as spec_lib
from varjax import config as config_lib
from varjax.errors import ConfigError
from varjax.train import flops as flops_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKENS_PER_STEP = 16 * sum(p * p for p in tf.PATCH_NUMS)  # tiny_config: batch 16, L = 30
ONE_MODEL = {"depths": [1], "width_per_depth": 32, "head_dim": 32}


def write_spec(directory, setup=None, base_run=None, **fields) -> str:
  """A spec over the tests' tiny setup: base.yaml + spec.yaml in `directory`."""
  os.makedirs(directory, exist_ok=True)
  setup = setup or {"tokens": "/nonexistent/tokens", "tokenizer": "/nonexistent"}
  base = tf.tiny_config(setup, "unused", run=dict({"checkpoint_every": 2}, **(base_run or {})))
  del base["model"]["depth"], base["model"]["width"], base["model"]["heads"]
  del base["run"]["name"], base["run"]["out_dir"], base["run"]["steps"]
  tf.write_config(base, os.path.join(directory, "base.yaml"))
  spec = {"name": "t", "base": "base.yaml", "out_dir": os.path.join(directory, "runs"),
          "models": {"depths": [1, 2], "width_per_depth": 32, "head_dim": 32},
          "budgets": {"tokens": [4 * TOKENS_PER_STEP, 8 * TOKENS_PER_STEP]}}
  spec.update(fields)
  path = os.path.join(directory, "spec.yaml")
  with open(path, "w") as f:
    yaml.safe_dump(spec, f)
  return path


# ---------------------------------------------------------------- specs and expansion

def test_expansion_names_configs_and_budgets(tmp_path):
  sweep = spec_lib.load(write_spec(tmp_path, seeds=[0, 3]))
  names = [r.name for r in sweep.runs]
  assert names == ["d1w32-D1.92e3-s0", "d1w32-D1.92e3-s3", "d1w32-D3.84e3-s0",
                   "d1w32-D3.84e3-s3", "d2w64-D1.92e3-s0", "d2w64-D1.92e3-s3",
                   "d2w64-D3.84e3-s0", "d2w64-D3.84e3-s3"]
  assert names == [r.name for r in spec_lib.load(write_spec(tmp_path, seeds=[0, 3])).runs]
  run = sweep.runs[-1]
  assert run.directory == os.path.join(tmp_path, "runs", "d2w64-D3.84e3-s3")
  cfg = run.config
  assert (cfg.model.depth, cfg.model.width, cfg.model.heads) == (2, 64, 2)
  assert (cfg.run.steps, cfg.run.seed, cfg.run.name) == (8, 3, run.name)
  assert cfg.model.vocab_size == tf.VOCAB  # from the base config
  assert run.info["tokens"] == 8 * TOKENS_PER_STEP


def test_isoflop_grid_matches_brute_force(tmp_path):
  budgets, tolerance, min_steps = [2e10, 6e10], 0.03, 3
  sweep = spec_lib.load(write_spec(
      tmp_path, models={"depths": [1, 2, 3, 4], "width_per_depth": 32, "head_dim": 32},
      budgets={"flops": budgets, "tolerance": tolerance, "min_steps": min_steps}))
  expected = set()
  for depth in (1, 2, 3, 4):
    model = config_lib.ModelConfig(depth=depth, width=32 * depth, heads=depth,
                                   vocab_size=tf.VOCAB, latent_channels=tf.LATENT,
                                   num_classes=tf.CLASSES, patch_nums=tf.PATCH_NUMS)
    per_step = flops_lib.training_flops(model)["total"] * 16
    for c in budgets:
      fits = [s for s in range(min_steps, int(2 * c / per_step) + 2)
              if abs(s * per_step - c) <= tolerance * c]
      if fits:
        expected.add((depth, c, min(fits, key=lambda s: abs(s * per_step - c))))
  got = {(r.config.model.depth, r.info["budget"], r.config.run.steps) for r in sweep.runs}
  assert got == expected and len(got) >= 3
  for r in sweep.runs:
    assert abs(r.info["flops_exact"] - r.info["budget"]) <= tolerance * r.info["budget"]


def test_learning_rate_and_batch_rules(tmp_path):
  sweep = spec_lib.load(write_spec(tmp_path, lr={"rule": "var", "base_lr": 2e-4}))
  assert {r.config.optim.peak_lr for r in sweep.runs} == {2e-4 * 16 / 256}
  sweep = spec_lib.load(write_spec(
      tmp_path, lr={"rule": "power", "lr0": 1e-3, "n0": 1e5, "exponent": -0.5,
                    "scales": [0.5, 2]},
      batch={"rule": "power", "b0": 32, "n0": 1e5, "exponent": 0.5, "multiple_of": 8}))
  assert len(sweep.runs) == 8 and sweep.runs[1].name.endswith("-lr" + spec_lib.short_number(
      sweep.runs[1].info["peak_lr"]))
  for r in sweep.runs:
    n = r.info["params"]
    assert r.config.optim.peak_lr == pytest.approx(1e-3 * (n / 1e5) ** -0.5 * r.info["lr_scale"])
    assert r.config.data.global_batch_size == max(8, round(32 * (n / 1e5) ** 0.5 / 8) * 8)


@pytest.mark.parametrize("fields, key", [
    ({"models": {"depths": [1], "widht_per_depth": 32}}, "models.widht_per_depth"),
    ({"budgets": {"tokens": [1e6, -5]}}, "budgets.tokens[1]"),
    ({"budgets": {"flops": [1e10], "tolerance": 0}}, "budgets.tolerance"),
    ({"budgets": {"flops": [1e10, 1e3], "tolerance": 0.01}}, "budgets.flops[1]"),
    ({"seeds": [0, 0]}, "seeds"),
    ({"unique_images": [64, 0]}, "unique_images"),
    ({"lr": {"rule": "power"}}, "lr.lr0"),
    ({"config": {"model": {"depht": 3}}}, "config.model.depht"),
    ({"budget": {"tokens": [1e6]}}, "budget"),
])
def test_malformed_spec_names_the_field_before_training(tmp_path, capsys, fields, key):
  path = write_spec(tmp_path, **fields)
  with pytest.raises(ConfigError) as e:
    spec_lib.load(path)
  assert e.value.key == key
  assert cli.main(["run", path]) == 2
  err = capsys.readouterr().err
  assert err.startswith(f"sweeps: error: {key}:") and "Traceback" not in err
  assert not os.path.exists(os.path.join(tmp_path, "runs"))  # nothing started


def test_limit_takes_the_first_k_runs_and_refuses_k_below_one(tmp_path, capsys):
  path = write_spec(tmp_path)  # 4 runs
  names = [r.name for r in spec_lib.load(path).runs]
  assert cli.main(["run", path, "--dry-run", "--limit", "3"]) == 0
  listed = capsys.readouterr().out
  assert listed.startswith("dry run: 3 runs") and names[2] in listed and names[3] not in listed
  for bad in (["--limit", "0"], ["--limit=-1"], ["--max-lanes", "0"]):
    assert cli.main(["run", path, "--dry-run", *bad]) == 2, bad
    out = capsys.readouterr()
    option = bad[0].split("=")[0]
    assert out.out == "" and out.err.splitlines() == [
        f"sweeps: error: {option}: must be a positive integer, got {bad[-1].split('=')[-1]}"]
  assert cli.main(["list", path, "--limit", "0"]) == 2
  assert not os.path.exists(os.path.join(tmp_path, "runs"))  # nothing started


# ---------------------------------------------------------------- registry

APPENDER = """
import sys
from sweeps import registry
for i in range(int(sys.argv[2])):
  registry.append_event(sys.argv[1], f"w{sys.argv[3]}", "tick", i=i, pad="x" * 3000)
"""


def test_two_processes_append_to_one_registry_without_loss(tmp_path):
  n = 400
  procs = [subprocess.Popen([sys.executable, "-c", APPENDER, str(tmp_path), str(n), str(w)],
                            cwd=REPO) for w in (0, 1)]
  assert [p.wait(timeout=120) for p in procs] == [0, 0]
  events = registry.events(str(tmp_path))  # every line parses: no interleaved writes
  for w in (0, 1):
    assert [e["i"] for e in events if e["run"] == f"w{w}"] == list(range(n))


def test_run_lock_is_exclusive_and_released(tmp_path):
  with registry.run_lock(str(tmp_path)):
    code = ("import sys; from sweeps import registry\ntry:\n  with registry.run_lock(sys.argv[1]):"
            "\n    sys.exit(0)\nexcept registry.Busy:\n  sys.exit(3)")
    assert subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO).returncode == 3
  assert subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO).returncode == 0


# ---------------------------------------------------------------- local backend

def _eval_losses(out_dir: str) -> dict[str, float]:
  table = load_runs(out_dir)
  return dict(zip(table["run"], table["loss"]))


@pytest.mark.slow  # ~95 s on 2 cores: make test-slow
def test_local_sweep_registry_failures_and_retry(tmp_path, capsys):
  setup = tf.make_token_setup(str(tmp_path / "data"))
  broken = dict(setup, tokens=str(tmp_path / "missing"))
  path = write_spec(tmp_path / "s", broken)
  assert cli.main(["run", path, "--progress", "off"]) == 1
  out = capsys.readouterr()
  assert "4 run(s) failed" in out.err and "RUNS=" in out.err
  sweep = spec_lib.load(path)
  first = sweep.runs[0]
  failure = registry.read_failure(first.directory)
  assert "data.tokens" in failure["error"] or "missing" in failure["error"]
  assert registry.status(first.directory) == "failed"

  os.symlink(setup["tokens"], str(tmp_path / "missing"))  # the cause fixed: retry one alone
  assert cli.main(["run", path, "--runs", first.name, "--progress", "off"]) == 0
  assert registry.status(first.directory) == "finished"
  assert registry.read_failure(first.directory) is None
  assert [registry.status(r.directory) for r in sweep.runs[1:]] == ["failed"] * 3

  assert cli.main(["run", path, "--progress", "off"]) == 0  # the rest; the first is skipped
  table = load_runs(sweep.out_dir)
  assert sorted(table["run"]) == sorted(r.name for r in sweep.runs)
  row = table.set_index("run").loc[first.name]
  assert row["sweep.budget"] == 4 * TOKENS_PER_STEP and row["tokens"] == 4 * TOKENS_PER_STEP
  for key in ("params", "params_no_head", "flops_exact", "flops_6nd", "wall_time_s",
              "hardware.platform", "hardware.device_kind", "loss_per_scale"):
    assert key in table.columns, key
  events = registry.events(sweep.out_dir)
  started = [e["run"] for e in events if e["event"] == "started"]
  assert started.count(first.name) == 2 and all(started.count(r.name) == 2 for r in sweep.runs)
  assert sum(e["event"] == "finished" for e in events) == 4
  capsys.readouterr()
  assert cli.main(["list", path]) == 0
  assert capsys.readouterr().out.count("finished") == 4


def _wait_for(predicate, timeout: float, proc=None) -> None:
  end = time.time() + timeout
  while time.time() < end:
    if predicate():
      return
    if proc is not None and proc.poll() is not None:
      raise AssertionError(f"the sweep exited early ({proc.returncode})")
    time.sleep(0.02)
  raise AssertionError("timed out")


@pytest.mark.slow  # ~45 s on 2 cores: make test-slow
def test_killed_sweep_resumes_to_the_uninterrupted_result(tmp_path):
  setup = tf.make_token_setup(str(tmp_path / "data"))
  budgets = {"tokens": [2 * TOKENS_PER_STEP, 24 * TOKENS_PER_STEP]}
  reference = spec_lib.load(write_spec(tmp_path / "ref", setup, budgets=budgets,
                                       models=ONE_MODEL))
  launch.run_local(list(reference.runs), progress=False, log=lambda s: None)

  path = write_spec(tmp_path / "killed", setup, budgets=budgets, models=ONE_MODEL)
  sweep = spec_lib.load(path)
  first, second = sweep.runs[0], sweep.runs[1]
  proc = subprocess.Popen([sys.executable, "-m", "sweeps", "run", path, "--progress", "off"],
                          cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          start_new_session=True)
  try:
    ckpts = os.path.join(second.directory, "checkpoints")
    _wait_for(lambda: registry.status(first.directory) == "finished" and os.path.isdir(ckpts)
              and any(d.isdigit() for d in os.listdir(ckpts)), 240, proc)
  finally:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
  assert registry.status(second.directory) == "interrupted"
  first_summary = os.path.getmtime(os.path.join(first.directory, "summary.json"))

  assert cli.main(["run", path, "--progress", "off"]) == 0
  assert os.path.getmtime(os.path.join(first.directory, "summary.json")) == first_summary
  events = registry.events(sweep.out_dir)
  assert [e["run"] for e in events if e["event"] == "started"].count(first.name) == 1
  resumed = [e for e in events if e["event"] == "started" and e["run"] == second.name]
  assert resumed[-1]["resumed"] is True
  with open(os.path.join(second.directory, "summary.json")) as f:
    assert json.load(f)["resumed_at_step"] > 0
  got, want = _eval_losses(sweep.out_dir), _eval_losses(reference.out_dir)
  assert got.keys() == want.keys() and len(got) == 2
  np.testing.assert_allclose([got[k] for k in sorted(got)], [want[k] for k in sorted(want)],
                             rtol=0, atol=1e-6)
  for r in sweep.runs:  # every logged training loss, not only the last
    ref = tf.train_losses(os.path.join(reference.out_dir, r.name))
    mine = tf.train_losses(r.directory)
    assert [s for s, _ in mine] == [s for s, _ in ref]
    np.testing.assert_allclose([v for _, v in mine], [v for _, v in ref], rtol=0, atol=1e-6)


@pytest.mark.slow
def test_two_sweep_processes_share_the_registry(tmp_path):
  setup = tf.make_token_setup(str(tmp_path / "data"))
  path = write_spec(tmp_path / "s", setup, seeds=[0, 1], models=ONE_MODEL)
  procs = [subprocess.Popen([sys.executable, "-m", "sweeps", "run", path, "--progress", "off"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for _ in range(2)]
  outputs = [p.communicate(timeout=600)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outputs
  sweep = spec_lib.load(path)
  events = registry.events(sweep.out_dir)
  for r in sweep.runs:  # each run trained by exactly one of the two
    assert [e["event"] for e in events if e["run"] == r.name] == ["started", "finished"]
  assert len(load_runs(sweep.out_dir)) == len(sweep.runs) == 4


# ---------------------------------------------------------------- WSD cool-downs

def test_cooldown_branches_equal_runs_trained_from_scratch(tmp_path):
  setup = tf.make_token_setup(str(tmp_path / "data"))
  path = write_spec(tmp_path / "s", setup, models=ONE_MODEL, cooldowns={"decay_fraction": 0.25},
                    budgets={"tokens": [10 * TOKENS_PER_STEP, 20 * TOKENS_PER_STEP]})
  sweep = spec_lib.load(path)
  trunk, branch = sweep.runs  # the longest run first
  assert (trunk.config.run.steps, branch.config.run.steps) == (20, 10)
  # warmup 2, then 8 steps of which the last round(0.25 x 8) = 2 decay: branch at step 8
  assert trunk.config.run.keep_steps == (8,)
  assert branch.config.run.warm_start == f"{trunk.directory}@8"
  assert {r.config.optim.schedule for r in sweep.runs} == {"wsd"}
  assert cli.main(["run", path, "--progress", "off"]) == 0
  with open(os.path.join(branch.directory, "summary.json")) as f:
    assert json.load(f)["resumed_at_step"] == 8

  # The reference: the branch's config trained from step 0, alone.
  from varjax.train import loop
  alone = config_lib.replace(branch.config, run={"warm_start": None,
                                                 "out_dir": str(tmp_path / "alone")})
  reference = loop.train(alone, progress=False, log=lambda s: None)
  got = load_runs(sweep.out_dir).set_index("run").loc[branch.name, "loss"]
  assert got == pytest.approx(reference["loss"], abs=1e-6)
  mine, ref = tf.train_losses(branch.directory), tf.train_losses(alone.run.out_dir + "/" + branch.name)
  assert [s for s, _ in mine] == list(range(1, 11)) == [s for s, _ in ref]
  np.testing.assert_allclose([v for _, v in mine], [v for _, v in ref], rtol=0, atol=1e-6)


def test_warm_start_refuses_a_run_that_trains_differently(tmp_path):
  from varjax.errors import VarjaxError
  from varjax.train import loop
  setup = tf.make_token_setup(str(tmp_path / "data"))
  donor = config_lib.from_dict(tf.tiny_config(setup, str(tmp_path), run={"name": "donor",
                                                                          "steps": 20}))
  config_lib.save_config(config_lib.replace(donor, model={"depth": 3}),
                         str(tmp_path / "donor.json"))
  os.makedirs(tmp_path / "donor")
  os.replace(tmp_path / "donor.json", tmp_path / "donor" / "config.json")
  me = config_lib.replace(donor, run={"name": "me", "steps": 10,
                                      "warm_start": f"{tmp_path / 'donor'}@8"})
  with pytest.raises(VarjaxError, match="differs from this run in model.depth"):
    loop.train(me, progress=False, log=lambda s: None)
  config_lib.save_config(config_lib.replace(donor, optim={"schedule": "linear"}),
                         str(tmp_path / "donor" / "config.json"))
  with pytest.raises(VarjaxError, match="learning rates"):
    loop.train(config_lib.replace(me, optim={"schedule": "linear"}, run={"name": "me2"}),
               progress=False,
               log=lambda s: None)
  config_lib.save_config(config_lib.replace(donor, optim={"schedule": "wsd"}),
                         str(tmp_path / "donor" / "config.json"))
  with pytest.raises(VarjaxError, match="no checkpoint of step 8"):
    loop.train(config_lib.replace(me, optim={"schedule": "wsd"}, run={"name": "me3"}),
               progress=False,
               log=lambda s: None)


def test_unique_images_is_an_axis_with_its_own_trunks(tmp_path):
  """unique_images: [K1, K2]: every (model, budget, seed) runs once per K, names say K,
  configs set data.unique_images, and cool-downs branch only off a trunk of the same K."""
  path = write_spec(tmp_path, unique_images=[32, 64], cooldowns={"decay_fraction": 0.5})
  runs = spec_lib.load(path).runs
  assert len(runs) == 2 * 2 * 2  # models x budgets x K
  for run in runs:
    k = run.config.data.unique_images
    assert run.name.endswith(f"-U{k}") and run.info["unique_images"] == k
    if "warm_start" in run.info:
      trunk = next(r for r in runs if r.name == run.info["warm_start"])
      assert trunk.config.data.unique_images == k and trunk.info["model"] == run.info["model"]
  assert {r.config.data.unique_images for r in spec_lib.load(write_spec(
      tmp_path / "plain")).runs} == {0}
