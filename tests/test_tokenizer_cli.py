"""`varjax tokenizer train` and `varjax tokenize` on the embedded dataset; token cache resume."""

import json
import os

import jax
import numpy as np
import pytest

from conftest import run_varjax
from varjax.errors import DataError, VarjaxError

# 8 px crops and a two-level tokenizer (2x downsampling -> 4 x 4 latent): the same
# schedule (1, 2, 3, 4) as the preset, at a fraction of its compile time.
TINY_TRAIN = ["--run.steps=4", "--run.log_every=2", "--run.checkpoint_every=2",
              "--data.global_batch_size=16", "--run.name=tiny", "--data.resolution=8",
              "--tokenizer.ch_mult=1,2", "--tokenizer.using_mid_sa=false"]


@pytest.fixture(scope="module")
def tokenizer_run(embedded_data_dir, tmp_path_factory):
  """(run dir, CLI stdout) of a 4-step training run of the default preset."""
  out = str(tmp_path_factory.mktemp("runs"))
  result = run_varjax("tokenizer", "train", "--data-dir", embedded_data_dir, "--out-dir", out,
                      *TINY_TRAIN)
  assert result.returncode == 0, result.stderr
  return os.path.join(out, "tiny"), result.stdout


def test_train_prints_reconstruction_and_usage_and_writes_the_run(tokenizer_run):
  run_dir, stdout = tokenizer_run
  assert "validation reconstruction: MSE" in stdout and "mean-image baseline MSE" in stdout
  assert "codebook usage per scale: 1x1" in stdout and "4x4" in stdout
  for name in ("config.json", "metrics.jsonl", "params.msgpack", "summary.json"):
    assert os.path.isfile(os.path.join(run_dir, name)), name
  assert os.path.isdir(os.path.join(run_dir, "checkpoints", "2"))  # orbax, one dir a step
  with open(os.path.join(run_dir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  assert [r["step"] for r in records if "loss" in r] == [2, 4]
  assert len(records[0]["usage"]) == 4
  with open(os.path.join(run_dir, "summary.json")) as f:
    summary = json.load(f)
  assert summary["eval/num_images"] == 1024 and len(summary["eval/usage"]) == 4
  assert not any(name.endswith(".tmp") for name in os.listdir(run_dir))


def test_tokenize_resumes_to_the_same_bytes(tokenizer_run, embedded_data_dir, tmp_path):
  from varjax.data import tokens
  from varjax.data.pipeline import resize_and_crop
  from varjax.data.sources import open_split
  from varjax.models.vqvae import VQVAE
  from varjax.models.store import load_tokenizer

  run_dir, _ = tokenizer_run
  full = str(tmp_path / "full")
  result = run_varjax("tokenize", "--tokenizer", run_dir, "--split", "validation", "--out",
                      full, "--chunk-size", "256", "--batch-size", "128")
  assert result.returncode == 0, result.stderr
  assert "1024 token pyramids [1, 2, 3, 4]" in result.stdout

  part = str(tmp_path / "part")
  kw = dict(chunk_size=256, batch_size=128, log=lambda _: None, progress=False)
  meta = tokens.tokenize_split(run_dir, "validation", part, max_chunks=2, **kw)
  assert not meta["complete"]
  with pytest.raises(DataError, match="interrupted"):
    tokens.TokenPyramids(part)
  meta = tokens.tokenize_split(run_dir, "validation", part, **kw)
  assert meta["complete"] and meta["dtype"] == "int16"
  for name in ("labels.npy", *(f"scale_{k}.npy" for k in range(4))):
    with open(os.path.join(full, name), "rb") as a, open(os.path.join(part, name), "rb") as b:
      assert a.read() == b.read(), name

  # The reader gives the tokens the model computes for those images, and the labels.
  pyramids = tokens.TokenPyramids(full)
  assert len(pyramids) == 1024 and pyramids.patch_nums == (1, 2, 3, 4)
  batch = pyramids.batch([0, 1, 1000])
  assert [t.shape for t in batch["tokens"]] == [(3, p, p) for p in (1, 2, 3, 4)]
  assert pyramids.flat([0, 1]).shape == (2, 30)
  source = open_split("embedded32", "validation", embedded_data_dir)
  examples = [source[i] for i in (0, 1, 1000)]
  np.testing.assert_array_equal(batch["label"], [e["label"] for e in examples])
  model, params, _ = load_tokenizer(run_dir)
  images = np.stack([resize_and_crop(e["image"], 8, "center") for e in examples])
  images = images.astype(np.float32) / 127.5 - 1
  expected = jax.jit(lambda x: model.apply({"params": params}, x,
                                           method=VQVAE.img_to_indices))(images)
  for got, want in zip(batch["tokens"], expected):
    np.testing.assert_array_equal(got, want)


def test_user_mistakes_are_one_line_errors(embedded_data_dir, tmp_path):
  result = run_varjax("tokenizer", "train", "--data-dir", embedded_data_dir, "--out-dir",
                      str(tmp_path), "--data.resolution=64")
  assert result.returncode == 2
  assert "wrong image size for the schedule: 64x64 px" in result.stderr
  assert "8x downsampling give a 8x8 latent" in result.stderr
  assert "needs 32 px" in result.stderr and len(result.stderr.strip().splitlines()) == 1
  result = run_varjax("tokenize", "--tokenizer", str(tmp_path / "nope"), "--out",
                      str(tmp_path / "tokens"))
  assert result.returncode == 2
  assert "is not a finished tokenizer run directory: config.json is missing" in result.stderr


@pytest.mark.slow
def test_default_tokenizer_beats_the_mean_image(embedded_data_dir, tmp_path):
  """The demo tokenizer (500 steps of 64 images). Its training time (~5 min on 2 CPU
  cores) is printed by the command and by `make demo`, not asserted here."""
  result = run_varjax("tokenizer", "train", "--data-dir", embedded_data_dir, "--out-dir",
                      str(tmp_path), timeout=900)
  assert result.returncode == 0, result.stderr
  with open(tmp_path / "tokenizer-tiny32" / "summary.json") as f:
    summary = json.load(f)
  assert summary["eval/mse"] < 0.4 * summary["eval/baseline_mse"]
  assert summary["eval/usage"][-1] > 0.5  # finest scale uses most of the vocabulary


def test_preview_draws_reconstructions_scale_by_scale(tokenizer_run, embedded_data_dir,
                                                      tmp_path):
  import dataclasses
  from PIL import Image
  from varjax.data.pipeline import pipeline_from_config
  from varjax.models.store import load_tokenizer
  from varjax.models.vqvae import VQVAE

  run_dir, _ = tokenizer_run
  out = tmp_path / "recon.png"
  result = run_varjax("tokenizer", "preview", "--tokenizer", run_dir, "--num", "5",
                      "--data-dir", embedded_data_dir, "--out", str(out))
  assert result.returncode == 0, result.stderr
  assert Image.open(out).size == ((5 * 10 + 2) * 2, (5 * 10 + 2) * 2)  # 5 x (1 + 4 scales)
  mses = [float(line.rsplit("MSE ", 1)[1]) for line in result.stdout.splitlines()
          if "MSE" in line]
  assert len(mses) == 4
  # The last row is the full reconstruction: check its error independently.
  model, params, cfg = load_tokenizer(run_dir)
  data = dataclasses.replace(cfg.data, global_batch_size=5, data_dir=embedded_data_dir)
  images = pipeline_from_config(data, "validation", 0, crop="center").batch(0)["image"]
  idx = model.apply({"params": params}, images, method=VQVAE.img_to_indices)
  recon = model.apply({"params": params}, idx, method=VQVAE.indices_to_img)
  assert mses[-1] == pytest.approx(float(np.mean((np.asarray(recon) - images) ** 2)), abs=2e-5)


@pytest.mark.slow  # ~32 s on 2 cores: make test-slow (resume of the shared step loop: test_train)
def test_crashed_training_resumes_to_the_same_parameters(embedded_data_dir, tmp_path):
  """A run that dies after step 5 (last checkpoint: step 4) and is started again ends with
  exactly the parameters and loss curve of an uninterrupted run."""
  from varjax import config
  from varjax.models.store import load_tokenizer
  from varjax.train import tokenizer

  def cfg_for(name):
    overrides = [a for a in TINY_TRAIN if not a.startswith(("--run.steps", "--run.name"))]
    return config.load_config(None, overrides + [
        "--run.steps=8", f"--run.name={name}", f"--run.out_dir={tmp_path}",
        f"--data.data_dir={embedded_data_dir}", "--run.log_every=1"],
        base=tokenizer.base_config())

  quiet = lambda _: None
  tokenizer.train_tokenizer(cfg_for("whole"), log=quiet)

  def crash(step):
    if step == 5:
      raise RuntimeError("preempted")
  with pytest.raises(RuntimeError, match="preempted"):
    tokenizer.train_tokenizer(cfg_for("crashed"), log=quiet, on_step=crash)
  assert not os.path.exists(tmp_path / "crashed" / "params.msgpack")
  lines = []
  summary = tokenizer.train_tokenizer(cfg_for("crashed"), log=lines.append)
  assert summary["resumed_at_step"] == 4 and "resumed at step 4" in lines[0]

  _, whole, _ = load_tokenizer(str(tmp_path / "whole"))
  _, resumed, _ = load_tokenizer(str(tmp_path / "crashed"))
  for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(a, b)
  curve = lambda name: [(r["step"], r.get("loss")) for r in map(
      json.loads, open(tmp_path / name / "metrics.jsonl"))]
  assert curve("crashed") == curve("whole")

  # Finished: a second start trains nothing; another config in the same dir is refused.
  assert tokenizer.train_tokenizer(cfg_for("whole"), log=quiet)["resumed_at_step"] == 0
  other = config.replace(cfg_for("whole"), optim={"peak_lr": 1e-3})
  with pytest.raises(VarjaxError, match=r"holds a finished run of another config \(optim.peak_lr"):
    tokenizer.train_tokenizer(other, log=quiet)


@pytest.mark.slow  # the shared Checkpoints / PreemptionFlag are tested by test_train too
def test_unreadable_checkpoint_is_skipped_with_a_warning(embedded_data_dir, tmp_path):
  from varjax import config
  from varjax.train import tokenizer
  overrides = [a for a in TINY_TRAIN if not a.startswith("--run.steps")]
  cfg = config.load_config(None, overrides + [
      "--run.steps=6", f"--run.out_dir={tmp_path}", f"--data.data_dir={embedded_data_dir}"],
      base=tokenizer.base_config())

  def crash(step):
    if step == 5:
      raise RuntimeError("preempted")
  with pytest.raises(RuntimeError):
    tokenizer.train_tokenizer(cfg, log=lambda _: None, on_step=crash)
  newest = tmp_path / "tiny" / "checkpoints" / "4"
  for path in newest.rglob("*"):  # damaged by a dying disk
    if path.is_file() and "state" in str(path.relative_to(newest)):
      path.write_bytes(path.read_bytes()[:10])
  lines = []
  with pytest.warns(UserWarning, match="checkpoint .*/4 is unreadable"):
    summary = tokenizer.train_tokenizer(cfg, log=lines.append)
  assert summary["resumed_at_step"] == 2


@pytest.mark.slow  # the shared Checkpoints / PreemptionFlag are tested by test_train too
def test_sigterm_saves_and_the_same_command_resumes(embedded_data_dir, tmp_path):
  import signal
  import subprocess
  import sys
  import time
  exe = os.path.join(os.path.dirname(sys.executable), "varjax")
  overrides = [a for a in TINY_TRAIN if not a.startswith(("--run.steps", "--run.checkpoint"))]
  args = ["tokenizer", "train", "--data-dir", embedded_data_dir, "--out-dir", str(tmp_path),
          *overrides, "--run.steps=100", "--run.checkpoint_every=1000"]
  proc = subprocess.Popen([exe, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
  metrics = tmp_path / "tiny" / "metrics.jsonl"
  deadline = time.time() + 300
  while time.time() < deadline and not (metrics.exists() and metrics.read_text().strip()):
    assert proc.poll() is None, proc.stderr.read()
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 143, err
  step = int(err.split("saved step ")[1].split()[0])
  assert 2 <= step < 100
  assert sorted(os.listdir(tmp_path / "tiny" / "checkpoints")) == [str(step)]
  resumed = run_varjax(*args)
  assert resumed.returncode == 0, resumed.stderr
  with open(tmp_path / "tiny" / "summary.json") as f:
    assert json.load(f)["resumed_at_step"] == step


def test_tokenize_a_prefix_of_the_stream(tokenizer_run, tmp_path):
  """The `stream` split: --num-examples K encodes its first K crops, and a longer prefix
  starts with the same tokens (crop i does not depend on K)."""
  from varjax.data import tokens

  run_dir, _ = tokenizer_run
  result = run_varjax("tokenize", "--tokenizer", run_dir, "--split", "stream", "--out",
                      str(tmp_path / "none"))
  assert result.returncode == 2 and "--num-examples" in result.stderr
  assert len(result.stderr.strip().splitlines()) == 1
  for k in (200, 300):
    result = run_varjax("tokenize", "--tokenizer", run_dir, "--split", "stream", "--out",
                        str(tmp_path / f"s{k}"), "--num-examples", str(k),
                        "--batch-size", "64")
    assert result.returncode == 0, result.stderr
    assert f"[stream]: {k} token pyramids" in result.stdout
  short, long = (tokens.TokenPyramids(str(tmp_path / f"s{k}")) for k in (200, 300))
  assert len(short) == 200 and len(long) == 300
  np.testing.assert_array_equal(short.flat(np.arange(200)), long.flat(np.arange(200)))
  np.testing.assert_array_equal(short.labels, long.labels[:200])
  assert len(set(long.labels.tolist())) == 16  # every photograph is drawn
