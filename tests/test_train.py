"""The VAR trainer: FLOP counts, the optimizer recipe, resume after kill -9 / SIGTERM / a
damaged checkpoint, clear stops, and two processes reproducing one."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import train_fixtures as fx
from conftest import run_varjax
from varjax import config as config_lib
from varjax.config import MeshConfig, ModelConfig, OptimConfig
from varjax.errors import VarjaxError
from varjax.models import store
from varjax.models.var import VAR
from varjax.parallel import mesh as mesh_lib
from varjax.train import flops, loop, optimizer, step as step_lib


# ---------------------------------------------------------------- FLOPs

@pytest.mark.parametrize("cfg", [
    ModelConfig(depth=2, patch_nums=(1, 2, 3, 4, 5, 6, 8), vocab_size=4096, num_classes=10,
                attn_impl="xla"),
    ModelConfig(depth=3, width=192, heads=3, patch_nums=(1, 2, 3, 4, 6, 8), vocab_size=1024,
                num_classes=10, shared_aln=True, attn_impl="xla"),
], ids=["d2-V4096", "d3-shared-aln"])
def test_flop_count_agrees_with_the_compiled_step(cfg):
  """The dense attention kernel executes all L^2 pairs, so compare that count with XLA's
  cost analysis of the real train step (which also counts elementwise work: within 5%)."""
  batch = 8
  model, optim = VAR(cfg), OptimConfig()
  tx = optimizer.adamw(optim, 10, batch)
  mesh = mesh_lib.make_mesh(MeshConfig())
  abstract, shardings = step_lib.state_shardings(model, tx, 0, mesh)
  train_step = step_lib.make_train_step(model, tx, optimizer.lr_schedule(optim, 10, batch),
                                        mesh, shardings)
  shapes = {"label": jax.ShapeDtypeStruct((batch,), np.int32),
            "x": jax.ShapeDtypeStruct((batch, cfg.num_tokens - 1, cfg.latent_channels),
                                      np.float32),
            "target": jax.ShapeDtypeStruct((batch, cfg.num_tokens), np.int32)}
  state = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), abstract)
  cost = train_step.jitted.lower(state, shapes).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  counted = flops.training_flops(cfg, dense_attention=True)["total"] * batch
  assert abs(cost["flops"] / counted - 1) < 0.05, (cost["flops"], counted)


def test_flops_cli_reports_exact_and_6nd():
  result = run_varjax("flops", "--model", "var-d16", "--json")
  assert result.returncode == 0, result.stderr
  per_image = json.loads(result.stdout)["per_image"]
  # The published fact: 0.619 of the 680 x 680 attention matrix is allowed (causal: 0.5).
  assert per_image["attention_density"] == pytest.approx(0.619, abs=5e-4)
  parts = ("word_embed", "blocks_matmul", "attention", "head", "adaln")
  assert per_image["total"] == pytest.approx(sum(per_image[k] for k in parts))
  # Closed form of the per-token matmuls of var-d16 (C 1024, F 4096, V 4096, 680 tokens).
  c, length = 1024, 680
  assert per_image["blocks_matmul"] == 3 * 16 * 2 * length * (4 * c * c + 2 * c * 4 * c)
  assert per_image["head"] == 3 * 2 * length * c * 4096
  # 6ND from the published total (310,283,520) less the embeddings (word_embed 32 -> C,
  # 1001 class rows, start token, 680 positions, 10 levels), and without the head C -> V.
  non_embedding = 310_283_520 - (32 * c + c + 1001 * c + c + length * c + 10 * c)
  assert per_image["6nd"] == 6 * non_embedding * length
  assert per_image["6nd_no_head"] == 6 * (non_embedding - (c * 4096 + 4096)) * length


# ---------------------------------------------------------------- optimizer

def test_lr_schedules_follow_their_closed_forms():
  peak, low = 1e-3, 1e-4
  base = dict(peak_lr=peak, warmup_steps=10, min_lr_ratio=0.1)
  linear = optimizer.lr_schedule(OptimConfig(**base, schedule="linear"), 110, 256)
  assert float(linear(0)) == pytest.approx(peak * optimizer.WARMUP_START, rel=1e-5)
  assert float(linear(10)) == pytest.approx(peak, rel=1e-5)
  assert float(linear(60)) == pytest.approx((peak + low) / 2, rel=1e-5)
  assert float(linear(110)) == pytest.approx(low, rel=1e-5)
  cosine = optimizer.lr_schedule(OptimConfig(**base, schedule="cosine"), 110, 256)
  assert float(cosine(60)) == pytest.approx(low + (peak - low) * 0.5 * (1 + np.cos(np.pi / 2)), rel=1e-5)
  wsd = optimizer.lr_schedule(OptimConfig(**base, schedule="wsd", decay_fraction=0.2), 110, 256)
  assert float(wsd(89)) == pytest.approx(peak, rel=1e-5) and float(wsd(110)) == pytest.approx(low, rel=1e-5)
  assert float(wsd(100)) == pytest.approx((peak + low) / 2, rel=1e-5)
  # VAR's rule: peak = base_lr x batch / 256.
  default = optimizer.lr_schedule(OptimConfig(base_lr=1e-4), 100, 512)
  assert float(default(0)) == pytest.approx(2e-4, rel=1e-5)


def test_weight_decay_skips_vars_exclusions():
  cfg = ModelConfig(depth=2, width=64, heads=2, patch_nums=(1, 2), vocab_size=16,
                    latent_channels=4, num_classes=3, shared_aln=True)
  from varjax.models.var import param_shapes
  mask = optimizer.var_decay_mask(param_shapes(cfg))
  assert mask["head"]["kernel"] and mask["blocks_0"]["ffn"]["fc1"]["kernel"]
  assert mask["class_emb"] and mask["word_embed"]["kernel"]
  for leaf in (mask["pos_1LC"], mask["pos_start"], mask["lvl_embed"], mask["head"]["bias"],
               mask["blocks_0"]["ada_gss"], mask["blocks_0"]["attn"]["scale_mul"],
               mask["blocks_0"]["attn"]["q_bias"]):
    assert not leaf


# ---------------------------------------------------------------- runs

@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  return fx.make_token_setup(str(tmp_path_factory.mktemp("tokens")))


def _cli_train(config_path, env=None, **popen):
  exe = os.path.join(os.path.dirname(sys.executable), "varjax")
  return subprocess.Popen([exe, "train", "--config", config_path, "--progress", "off"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, **(env or {})}, **popen)


def _params(run_dir):
  _, params, _ = store.load_var(run_dir)
  return jax.tree.leaves(params)


def test_kill_9_then_resume_equals_an_uninterrupted_run(setup, tmp_path):
  values = fx.tiny_config(setup, str(tmp_path / "a"))
  ref = _cli_train(fx.write_config(values, str(tmp_path / "a.yaml")))
  assert ref.wait(timeout=600) == 0, ref.stderr.read()
  ref_dir = str(tmp_path / "a" / "tiny")

  values = fx.tiny_config(setup, str(tmp_path / "b"))
  path = fx.write_config(values, str(tmp_path / "b.yaml"))
  run_dir = str(tmp_path / "b" / "tiny")
  victim = _cli_train(path)
  metrics = os.path.join(run_dir, "metrics.jsonl")
  deadline = time.time() + 600
  while time.time() < deadline:  # kill after step 5 is logged (checkpoint 4 exists)
    if os.path.exists(metrics) and len(fx.train_losses(run_dir)) >= 5:
      break
    assert victim.poll() is None, victim.stderr.read()
    time.sleep(0.05)
  victim.send_signal(signal.SIGKILL)
  victim.wait()
  assert not os.path.exists(os.path.join(run_dir, "summary.json"))
  steps_logged = len(fx.train_losses(run_dir))
  assert 5 <= steps_logged < 8
  resumed = _cli_train(path)
  assert resumed.wait(timeout=600) == 0, resumed.stderr.read()
  summary = json.load(open(os.path.join(run_dir, "summary.json")))
  assert summary["resumed_at_step"] in (4, 6)
  # Repetition accounting against the token set on disk.
  from varjax.data.tokens import TokenPyramids
  train = TokenPyramids(os.path.join(setup["tokens"], "train"))
  assert summary["train_examples"] == len(train)
  assert summary["unique_tokens"] == len(train) * train.flat([0]).shape[1]
  assert summary["epochs"] == pytest.approx(summary["tokens"] / summary["unique_tokens"])
  assert fx.train_losses(run_dir) == fx.train_losses(ref_dir)  # bitwise, step by step
  for a, b in zip(_params(run_dir), _params(ref_dir)):
    np.testing.assert_array_equal(a, b)


def test_damaged_checkpoint_is_skipped_and_sigterm_saves(setup, tmp_path):
  values = fx.tiny_config(setup, str(tmp_path), run={"name": "t", "steps": 40,
                                                     "checkpoint_every": 4, "log_every": 1})
  path = fx.write_config(values, str(tmp_path / "t.yaml"))
  run_dir = str(tmp_path / "t")
  proc = _cli_train(path)
  deadline = time.time() + 600
  while time.time() < deadline:
    ckpt = os.path.join(run_dir, "checkpoints")
    if os.path.isdir(ckpt) and len([d for d in os.listdir(ckpt) if d.isdigit()]) >= 2:
      break
    assert proc.poll() is None, proc.stderr.read()
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 143, err
  assert "SIGTERM: saved step" in err
  saved = sorted(int(d) for d in os.listdir(os.path.join(run_dir, "checkpoints")) if d.isdigit())
  last = int(err.split("saved step ")[1].split()[0])
  assert last == saved[-1]
  # Damage the newest checkpoint: the run must fall back to the one before, with a warning.
  newest = os.path.join(run_dir, "checkpoints", str(saved[-1]))
  for root, _, names in os.walk(newest):
    for name in names:
      if "state" in root:
        with open(os.path.join(root, name), "wb") as f:
          f.write(b"garbage")
  cfg = config_lib.load_config(path, ["--run.steps=40"])
  with pytest.warns(UserWarning, match="unreadable") as caught:
    summary = loop.train(cfg, progress=False, log=lambda m: None)
  assert len(caught) == 1
  assert summary["resumed_at_step"] == saved[-2]
  assert [s for s, _ in fx.train_losses(run_dir)] == list(range(1, 41))


def test_finished_run_is_not_retrained_and_other_configs_are_refused(setup, tmp_path):
  values = fx.tiny_config(setup, str(tmp_path), run={"name": "f", "steps": 2,
                                                     "checkpoint_every": 10})
  cfg = config_lib.from_dict(values)
  first = loop.train(cfg, progress=False, log=lambda m: None)
  messages = []
  assert loop.train(cfg, progress=False, log=messages.append) == first
  assert "finished run" in messages[0]
  other = config_lib.replace(cfg, optim={"peak_lr": 1e-2})
  with pytest.raises(VarjaxError, match=r"another config \(optim.peak_lr: 0.003 -> 0.01\).*"
                                        r"start over by deleting .*checkpoints"):
    loop.train(other, progress=False, log=lambda m: None)


def test_user_mistakes_are_one_line_errors(setup, tmp_path):
  values = fx.tiny_config(setup, str(tmp_path))
  bad_classes = fx.write_config(dict(values, model=dict(values["model"], num_classes=2)),
                                str(tmp_path / "c.yaml"))
  result = run_varjax("train", "--config", bad_classes)
  assert result.returncode == 2 and "model.num_classes" in result.stderr
  assert "Traceback" not in result.stderr
  no_tokens = fx.write_config(dict(values, data={"global_batch_size": 16}),
                              str(tmp_path / "n.yaml"))
  result = run_varjax("train", "--config", no_tokens, "--run.name=n")
  assert result.returncode == 2 and "data.tokens is not set" in result.stderr


def test_nan_loss_stops_with_a_clear_message(tmp_path):
  setup = fx.make_token_setup(str(tmp_path / "nan"), nan_tokenizer=True)
  values = fx.tiny_config(setup, str(tmp_path))
  result = run_varjax("train", "--config", fx.write_config(values, str(tmp_path / "n.yaml")))
  assert result.returncode == 2, result.stderr
  assert "training loss is not finite (nan or inf) at step 1;" in result.stderr
  assert "No checkpoint was written yet" in result.stderr
  assert not os.path.exists(str(tmp_path / "tiny" / "summary.json"))


def _two_processes(config_path):
  """`varjax train` as 2 processes x 4 CPU devices, coordinator on a free local port."""
  import socket
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  exe = os.path.join(os.path.dirname(sys.executable), "varjax")
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  return [subprocess.Popen([exe, "train", "--config", config_path, "--progress", "off",
                            "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
                            "--process-id", str(i)], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env=env) for i in range(2)]


@pytest.mark.slow
def test_two_processes_reproduce_one(setup, tmp_path):
  """2 processes x 4 CPU devices (coordinator on 127.0.0.1) against 1 process x 8."""
  values = fx.tiny_config(setup, str(tmp_path / "one"), run={"steps": 4, "name": "mp"},
                          mesh={"data": -1})
  one = _cli_train(fx.write_config(values, str(tmp_path / "one.yaml")),
                   env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
  assert one.wait(timeout=600) == 0, one.stderr.read()
  values["run"]["out_dir"] = str(tmp_path / "two")
  path = fx.write_config(values, str(tmp_path / "two.yaml"))
  procs = _two_processes(path)
  for p in procs:
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
  one_dir, two_dir = str(tmp_path / "one" / "mp"), str(tmp_path / "two" / "mp")
  np.testing.assert_allclose([l for _, l in fx.train_losses(two_dir)],
                             [l for _, l in fx.train_losses(one_dir)], rtol=1e-6)
  assert json.load(open(os.path.join(two_dir, "summary.json")))["processes"] == 2
  for a, b in zip(_params(two_dir), _params(one_dir)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_sigterm_to_one_of_two_processes_saves_the_same_step_on_both(setup, tmp_path):
  """Preemption may signal one host only; both must save one checkpoint and stop."""
  values = fx.tiny_config(setup, str(tmp_path), run={"steps": 400, "name": "pre",
                                                     "checkpoint_every": 1000, "log_every": 1},
                          mesh={"data": -1})
  path = fx.write_config(values, str(tmp_path / "pre.yaml"))
  run_dir = str(tmp_path / "pre")
  procs = _two_processes(path)
  deadline = time.time() + 600
  while time.time() < deadline:
    if os.path.exists(os.path.join(run_dir, "metrics.jsonl")) and \
        len(fx.train_losses(run_dir)) >= 3:
      break
    assert all(p.poll() is None for p in procs), procs[0].stderr.read()[-3000:]
    time.sleep(0.05)
  procs[1].send_signal(signal.SIGTERM)  # not the process that writes metrics
  try:  # without agreement the other process waits in the collective save forever
    errs = [p.communicate(timeout=180)[1] for p in procs]
  finally:
    for p in procs:
      p.kill()
  assert [p.returncode for p in procs] == [143, 143], errs[0][-2000:] + errs[1][-2000:]
  saved = [int(e.split("saved step ")[1].split()[0]) for e in errs]
  assert saved[0] == saved[1] >= 3
  assert sorted(int(d) for d in os.listdir(os.path.join(run_dir, "checkpoints"))
                if d.isdigit()) == [saved[0]]


def test_finished_run_measures_its_samples_with_the_configured_protocol(setup, tmp_path,
                                                                        monkeypatch):
  """eval.feature_net set: the run ends with fd_<name> and its protocol in summary.json."""
  import jax.numpy as jnp
  from test_eval_fid import numpy_params
  from varjax.eval import features, reference
  model = features.FeatureCNN((8, 16), num_classes=3)
  template = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
  features.save_cnn(str(tmp_path / "fnet"), {"name": "toy32cnn", "widths": [8, 16],
                                             "num_classes": 3, "resolution": 32,
                                             "dataset": "synthetic"},
                    numpy_params(template["params"], 0))
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (64, 32, 32, 3)).astype(np.uint8)
  monkeypatch.setattr(reference, "load_split_images",
                      lambda *a, **k: (images, np.zeros(64, np.int64)))
  values = fx.tiny_config(setup, str(tmp_path / "runs"), run={"steps": 2, "name": "e"})
  values["data"].update(dataset="embedded32", data_dir=str(tmp_path / "data"))
  values["eval"] = {"feature_net": str(tmp_path / "fnet"), "num_samples": 16,
                    "batch_size": 8, "top_k": 20, "seed": 3}
  summary = loop.train(config_lib.from_dict(values), progress=False, log=lambda m: None)
  assert np.isfinite(summary["fd_toy32cnn"]) and summary["fd_toy32cnn"] > 0
  protocol = summary["sample_protocol"]
  assert (protocol["num_samples"], protocol["top_k"], protocol["seed"], protocol["cfg"]) == \
      (16, 20, 3, 1.5)
  assert summary["loss"] > 0 and summary["steps"] == 2


def test_unique_images_trains_on_a_fixed_nested_subset(setup, tmp_path):
  """data.unique_images = K: every epoch reads exactly the K examples of one subset, the
  same for every seed, nested in K; the summary counts K images an epoch."""
  from varjax.data import pipeline
  from varjax.data.tokens import TokenPyramids
  train_dir = os.path.join(setup["tokens"], "train")
  n = len(TokenPyramids(train_dir))
  k = n // 4
  subset = loop.unique_subset(n, k)
  assert len(set(subset.tolist())) == k and set(subset) <= set(loop.unique_subset(n, 2 * k))
  np.testing.assert_array_equal(subset, loop.unique_subset(n, k))  # a pure function
  cfg = config_lib.from_dict(fx.tiny_config(setup, str(tmp_path), data={"unique_images": k}))
  for seed in (0, 1):
    data = loop.TokenData(train_dir, cfg, None, shuffle_seed=seed, unique_images=k)
    read = []
    data.pyramids.batch = lambda indices, f=data.pyramids.batch: read.append(indices) or f(indices)
    assert len(data) == k and k % data.batch_size == 0
    for step in range(2 * k // data.batch_size):  # two epochs
      data.local(pipeline.sample_positions(step, data.batch_size))
    order = np.concatenate(read)
    first, second = np.sort(order[:k]), np.sort(order[k:])
    np.testing.assert_array_equal(first, subset)  # each epoch: the subset, once each
    np.testing.assert_array_equal(second, subset)
  summary = loop.train(config_lib.replace(cfg, run={"name": "u", "steps": 2}), progress=False,
                       log=lambda m: None)
  tokens_per_image = TokenPyramids(train_dir).flat([0]).shape[1]
  assert summary["train_examples"] == k
  assert summary["unique_tokens"] == k * tokens_per_image
  with pytest.raises(VarjaxError, match="more than the"):
    loop.TokenData(train_dir, cfg, None, shuffle_seed=0, unique_images=n + 1)
