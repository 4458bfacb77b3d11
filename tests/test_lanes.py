"""Lanes (varjax/train/lanes.py, BACKEND=lanes): runs of one shape trained as one vmapped
program end where their separate runs end -- the reference is `loop.train`, one run at a
time."""

from __future__ import annotations

import os

import numpy as np
import pytest

import train_fixtures as tf
from analysis import load_runs
from sweeps import cli, registry, spec as spec_lib
from test_sweeps import write_spec
from varjax import config as config_lib
from varjax.models import store
from varjax.train import lanes, loop

quiet = lambda message: None


def _configs(setup, out_dir, k, steps=4, lr_for=lambda i: 1e-3 * (1 + i % 3), **run):
  return [config_lib.from_dict(tf.tiny_config(
      setup, out_dir,
      optim={"peak_lr": lr_for(i)},
      run=dict({"name": f"r{i}", "seed": i, "steps": steps, "log_every": 1,
                "eval_every": 3, "checkpoint_every": 2, "eval_examples": 16}, **run)))
      for i in range(k)]


def _assert_same_runs(dir_a: str, dir_b: str, names, atol: float) -> None:
  for name in names:
    a, b = os.path.join(dir_a, name), os.path.join(dir_b, name)
    la, lb = tf.train_losses(a), tf.train_losses(b)
    assert [s for s, _ in la] == [s for s, _ in lb]
    np.testing.assert_allclose([v for _, v in la], [v for _, v in lb], rtol=0, atol=atol)
    pa, pb = store.load_var(a)[1], store.load_var(b)[1]
    for x, y in zip(jax_leaves(pa), jax_leaves(pb)):
      np.testing.assert_allclose(x, y, rtol=0, atol=atol)
  ta, tb = load_runs(dir_a).set_index("run"), load_runs(dir_b).set_index("run")
  np.testing.assert_allclose(ta.loc[list(names), "loss"], tb.loc[list(names), "loss"],
                             rtol=0, atol=atol)


def jax_leaves(tree):
  import jax
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_lanes_match_separate_runs_and_resume(tmp_path):
  setup = tf.make_token_setup(str(tmp_path / "data"))
  separate = _configs(setup, str(tmp_path / "separate"), 2)
  for cfg in separate:
    loop.train(cfg, log=quiet, progress=False)

  # Interrupted after step 3 (checkpoint at 2), then resumed: still the separate runs' result.
  def stop(step):
    if step == 3:
      raise KeyboardInterrupt
  together = _configs(setup, str(tmp_path / "lanes"), 2)
  with pytest.raises(KeyboardInterrupt):
    lanes.train_lanes(together, log=quiet, progress=False, on_step=stop)
  results = lanes.train_lanes(together, log=quiet, progress=False)
  assert [r["resumed_at_step"] for r in results] == [2, 2]
  assert all(r["lanes"] == 2 for r in results)
  _assert_same_runs(str(tmp_path / "separate"), str(tmp_path / "lanes"),
                    [c.run.name for c in separate], atol=1e-5)


@pytest.mark.slow
def test_a_diverging_lane_fails_alone(tmp_path):
  setup = tf.make_token_setup(str(tmp_path / "data"))
  cfgs = _configs(setup, str(tmp_path / "lanes"), 2, steps=3,
                  lr_for=lambda i: 1e-3 if i == 0 else 1e30, checkpoint_every=100)
  results = lanes.train_lanes(cfgs, log=quiet, progress=False)
  assert "error" in results[1] and "r1" not in results[1]["error"]
  assert np.isfinite(results[0]["loss"])
  assert os.path.exists(os.path.join(tmp_path, "lanes", "r0", "summary.json"))
  assert not os.path.exists(os.path.join(tmp_path, "lanes", "r1", "summary.json"))


def test_lanes_refuse_runs_of_different_shapes(tmp_path):
  setup = tf.make_token_setup(str(tmp_path / "data"))
  a, b = _configs(setup, str(tmp_path / "lanes"), 2)
  b = config_lib.replace(b, model={"depth": 3})
  with pytest.raises(lanes.VarjaxError, match="differ only in"):
    lanes.train_lanes([a, b], log=quiet, progress=False)


@pytest.mark.slow
def test_backend_lanes_8_var_d2_equal_8_separate_runs(tmp_path):
  """The acceptance: 8 lanes of var-d2 (seeds x learning rates) vs BACKEND=local, fp32."""
  setup = tf.make_token_setup(str(tmp_path / "data"))
  fields = dict(models={"depths": [2]}, budgets={"tokens": [10 * tf_tokens_per_step()]},
                seeds=[0, 1, 2, 3], lr={"rule": "config", "scales": [1.0, 3.0]})
  spec_local = write_spec(tmp_path / "local", setup, base_run={"checkpoint_every": 5}, **fields)
  spec_lanes = write_spec(tmp_path / "lanes", setup, base_run={"checkpoint_every": 5}, **fields)
  assert cli.main(["run", spec_local, "--backend", "local", "--progress", "off"]) == 0
  assert cli.main(["run", spec_lanes, "--backend", "lanes", "--progress", "off"]) == 0
  runs = spec_lib.load(spec_lanes).runs
  assert len(runs) == 8 and runs[0].config.model.name == "var-d2"
  table = load_runs(os.path.join(tmp_path, "lanes", "runs"))
  assert (table["lanes"] == 8).all()
  events = registry.events(os.path.join(tmp_path, "lanes", "runs"))
  assert {e["lanes"] for e in events if e["event"] == "started"} == {8}
  _assert_same_runs(os.path.join(tmp_path, "local", "runs"),
                    os.path.join(tmp_path, "lanes", "runs"), [r.name for r in runs], atol=1e-5)


def tf_tokens_per_step() -> int:
  return 16 * sum(p * p for p in tf.PATCH_NUMS)


def test_a_run_finished_by_another_process_meanwhile_is_not_retrained(tmp_path, monkeypatch):
  """The statuses run_lanes reads at start-up go stale when another process trains the same
  spec: a run finished since then is reported finished, not handed to train_lanes (which
  refuses finished runs and would record them as failed)."""
  from sweeps import lanes as sweep_lanes
  from sweeps.spec import Run
  runs = []
  for i in range(3):
    cfg = config_lib.from_dict({"run": {"name": f"r{i}", "out_dir": str(tmp_path)}})
    os.makedirs(os.path.join(tmp_path, f"r{i}"))
    runs.append(Run(f"r{i}", cfg, {}))
  trained = []

  def fake_train_lanes(configs, **kwargs):
    trained.extend(c.run.name for c in configs)
    return [{"loss": 1.0} for _ in configs]
  monkeypatch.setattr(lanes, "train_lanes", fake_train_lanes)
  monkeypatch.setattr(sweep_lanes.launch, "begin", lambda *a, **k: None)
  with open(os.path.join(tmp_path, "r1", "summary.json"), "w") as f:
    f.write("{}")  # r1 finished after the sweep read its status
  outcomes = {o["run"]: o["status"]
              for o in sweep_lanes._train_group(runs, progress=False, log=lambda m: None)}
  assert outcomes == {"r0": "trained", "r1": "finished", "r2": "trained"}
  assert trained == ["r0", "r2"]
  assert not os.path.exists(os.path.join(tmp_path, "r1", registry.ERROR_FILE))
