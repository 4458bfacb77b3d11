"""Evaluating a run directory: samples of a tiny random VAR through a tiny tokenizer, a tiny
feature CNN, reference statistics from a stand-in split (the TFDS read is replaced), and
the result merged into summary.json; the CLI's one-line errors."""

import dataclasses
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import run_varjax
from varjax import config
from varjax.config import ModelConfig, TokenizerConfig
from varjax.errors import VarjaxError
from varjax.eval import features, fid, reference
from varjax.models import sampling, store, var, vqvae

PN = (1, 2, 3, 4)
TOK = TokenizerConfig(ch=16, ch_mult=(1, 2), num_res_blocks=1, vocab_size=23, latent_channels=8,
                      using_sa=False)
MODEL = ModelConfig(depth=2, width=64, heads=4, vocab_size=23, latent_channels=8, num_classes=5,
                    patch_nums=PN)
SIDE = 8  # 4x4 latent, 2x downsampling


def numpy_params(template, seed: int):
  """Random parameters shaped like `template` without compiling an initialiser (XLA:CPU
  takes seconds for each): kernels N(0, 1 / fan_in), scales 1 + N(0, 0.1), rest N(0, 0.3)."""
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = str(path[-1].key)
    if leaf.ndim >= 2 and name in ("kernel", "embedding"):
      std = 1 / np.sqrt(np.prod(leaf.shape[:-1]))
    elif name == "scale":
      return (1 + 0.1 * rng.standard_normal(leaf.shape)).astype(np.float32)
    else:
      std = 0.3
    return (std * rng.standard_normal(leaf.shape)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, template)


def save_tokenizer(directory, vocab_size=23):
  tok = TokenizerConfig(**{**config.to_dict(TOK), "vocab_size": vocab_size})
  model = vqvae.build(tok, PN)
  cfg = config.replace(config.Config(), tokenizer=config.to_dict(tok),
                       model={"patch_nums": list(PN), "vocab_size": vocab_size,
                              "latent_channels": 8},
                       data={"resolution": SIDE})
  template = jax.eval_shape(lambda: vqvae.init_params(model, 0, SIDE))
  store.save_model_dir(str(directory), cfg, numpy_params(template, 0))


def save_run(directory, seed=0):
  data = {"dataset": "embedded32", "resolution": SIDE}
  cfg = config.replace(config.Config(), model=config.to_dict(MODEL), data=data)
  store.save_model_dir(str(directory), cfg, numpy_params(var.param_shapes(MODEL), seed))


def save_feature_net(directory, name="tiny8cnn", seed=0):
  model = features.FeatureCNN((8, 16), num_classes=3)
  template = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, SIDE, SIDE, 3))))
  params = numpy_params(template["params"], seed)
  features.save_cnn(str(directory), {"name": name, "widths": [8, 16], "num_classes": 3,
                                     "resolution": SIDE, "dataset": "synthetic"}, params)


def fake_split(*args, **kwargs):
  """Stands in for reading a TFDS split: 300 smooth random 8x8 images."""
  rng = np.random.default_rng(0)
  base = rng.uniform(0, 255, (300, 2, 2, 3))
  images = np.repeat(np.repeat(base, 4, axis=1), 4, axis=2)
  return images.astype(np.uint8), np.zeros(300, np.int64)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
  root = tmp_path_factory.mktemp("eval")
  save_tokenizer(root / "tok")
  save_feature_net(root / "fnet")
  save_run(root / "run")
  return root


def copy_run(dirs, tmp_path):
  return shutil.copytree(dirs / "run", tmp_path / "run")


def test_balanced_labels():
  labels = fid.balanced_labels(23, 5, seed=3)
  assert sorted(np.bincount(labels, minlength=5)) == [4, 4, 5, 5, 5]
  np.testing.assert_array_equal(labels, fid.balanced_labels(23, 5, seed=3))
  assert not np.array_equal(labels, fid.balanced_labels(23, 5, seed=4))


def test_feature_network_naming_and_checks(dirs):
  net = features.load_feature_network(feature_net=str(dirs / "fnet"))
  assert (net.name, net.metric, net.dim, net.resolution) == ("tiny8cnn", "fd_tiny8cnn", 16, SIDE)
  images = fake_split()[0][:70]
  feats = net.features(images)  # 64 + 6: the padded last batch
  assert feats.shape == (70, 16) and feats.dtype == np.float32
  np.testing.assert_allclose(feats[64:], net.features(images[64:]), rtol=1e-5, atol=1e-6)
  with pytest.raises(VarjaxError, match="trained on 8x8 images; these are 16x16"):
    net.features(np.zeros((2, 16, 16, 3), np.uint8))
  with pytest.raises(VarjaxError, match="uint8"):
    net.features(np.zeros((2, SIDE, SIDE, 3), np.float32))
  inception_like = features.FeatureNetwork("inception", 2048, None, "x", "p", lambda x: x)
  assert inception_like.metric == "fid"  # only the Inception is ever called FID
  with pytest.raises(VarjaxError, match="exactly one of"):
    features.load_feature_network()
  with pytest.raises(VarjaxError, match="is not a feature-network directory"):
    features.load_feature_network(feature_net=str(dirs / "tok"))


def test_reference_stats_are_cached_by_network_weights(dirs, monkeypatch, tmp_path):
  calls = []
  monkeypatch.setattr(reference, "load_split_images",
                      lambda *a, **k: calls.append(a) or fake_split())
  net = features.load_feature_network(feature_net=str(dirs / "fnet"))
  stats, path, cached = reference.reference_stats(net, "embedded32", "train", SIDE,
                                                  cache_dir=str(tmp_path), progress=False)
  assert not cached and stats.count == 300 and len(calls) == 1
  assert os.path.basename(path) == f"embedded32-train-8px-tiny8cnn-{net.fingerprint}.npz"
  assert stats.meta["network"] == "tiny8cnn" and stats.meta["split"] == "train"
  again, _, cached = reference.reference_stats(net, "embedded32", "train", SIDE,
                                               cache_dir=str(tmp_path), progress=False)
  assert cached and len(calls) == 1
  np.testing.assert_array_equal(again.sigma, stats.sigma)
  np.testing.assert_allclose(
      stats.sigma, np.cov(net.features(fake_split()[0]).astype(np.float64), rowvar=False),
      rtol=1e-6, atol=1e-12)
  # other weights under the same name: their own file, never the stale one
  save_feature_net(tmp_path / "fnet2", seed=1)
  other = features.load_feature_network(feature_net=str(tmp_path / "fnet2"))
  assert other.name == net.name and other.fingerprint != net.fingerprint
  _, other_path, cached = reference.reference_stats(other, "embedded32", "train", SIDE,
                                                    cache_dir=str(tmp_path), progress=False)
  assert other_path != path and not cached and len(calls) == 2


def test_evaluate_run_writes_summary_and_is_reproducible(dirs, monkeypatch, tmp_path):
  monkeypatch.setattr(reference, "load_split_images", lambda *a, **k: fake_split())
  run = copy_run(dirs, tmp_path)
  (run / "summary.json").write_text(json.dumps({"loss": 3.5, "tokenizer": str(dirs / "tok")}))
  net = features.load_feature_network(feature_net=str(dirs / "fnet"))
  protocol = sampling.SamplingProtocol(cfg=1.5, top_k=10, top_p=0.9, seed=1)
  kwargs = dict(num_samples=40, batch_size=16, protocol=protocol, cache_dir=str(tmp_path / "c"),
                progress=False)
  result = fid.evaluate_run(str(run), net, **kwargs)  # tokenizer from summary.json
  summary = json.loads((run / "summary.json").read_text())
  assert summary["loss"] == 3.5  # merged, not replaced
  assert summary["fd_tiny8cnn"] == result["value"] and "fid" not in summary
  assert np.isfinite(result["value"]) and result["value"] > 0
  p = summary["sample_protocol"]
  assert (p["metric"], p["cfg"], p["top_k"], p["top_p"], p["seed"], p["num_samples"]) == \
      ("fd_tiny8cnn", 1.5, 10, 0.9, 1, 40)
  assert p["feature_network"] == "tiny8cnn" and p["reference"]["split"] == "train"
  assert p["reference"]["count"] == 300 and p["tokenizer"] == str(dirs / "tok")
  assert os.path.isfile(run / fid.GRID_FILE)
  again = fid.evaluate_run(str(run), net, tokenizer_dir=str(dirs / "tok"), **kwargs)
  assert again["value"] == result["value"]  # same seed, same samples, same number
  other = fid.evaluate_run(str(run), net, tokenizer_dir=str(dirs / "tok"),
                           **{**kwargs, "protocol": dataclasses.replace(protocol, seed=2)})
  assert other["value"] != result["value"]
  # A second network keeps the first one's protocol next to its number.
  summary = json.loads((run / "summary.json").read_text())
  summary["sample_protocol"]["metric"] = "fid"
  (run / "summary.json").write_text(json.dumps(summary))
  fid.evaluate_run(str(run), net, **kwargs)
  summary = json.loads((run / "summary.json").read_text())
  assert summary["sample_protocol_fid"]["metric"] == "fid"
  assert summary["sample_protocol"]["metric"] == "fd_tiny8cnn"


def test_evaluate_run_user_mistakes(dirs, tmp_path):
  net = features.load_feature_network(feature_net=str(dirs / "fnet"))
  with pytest.raises(VarjaxError, match="run directory not found"):
    fid.evaluate_run(str(tmp_path / "missing"), net)
  run = copy_run(dirs, tmp_path)
  with pytest.raises(VarjaxError, match="does not name its tokenizer"):
    fid.evaluate_run(str(run), net)
  tok29 = config.replace(config.Config(), model={"patch_nums": list(PN), "vocab_size": 29,
                                                 "latent_channels": 8})
  with pytest.raises(VarjaxError, match="disagree on vocab_size: 23 vs 29"):
    store.check_same_tokens(store.read_model_config(str(run), "VAR model"), tok29)
  (run / "checkpoints").mkdir()
  with pytest.raises(VarjaxError, match="the run has not finished"):
    fid.evaluate_run(str(run), net, tokenizer_dir=str(dirs / "tok"))
  (run / "checkpoints").rmdir()
  (run / "params.msgpack").unlink()
  with pytest.raises(VarjaxError, match="is not a VAR model directory"):
    fid.evaluate_run(str(run), net, tokenizer_dir=str(dirs / "tok"))


def test_cli_fid_and_one_line_errors(dirs, tmp_path):
  run = copy_run(dirs, tmp_path)
  net = features.load_feature_network(feature_net=str(dirs / "fnet"))
  # Seed the reference cache so that the command needs no built dataset.
  stats_dir = tmp_path / "stats"
  reference.feature_stats(net, fake_split()[0], progress=False).save(
      reference.stats_path(str(stats_dir), "embedded32", "train", SIDE, net))
  result = run_varjax("eval", "fid", "--run", str(run), "--tokenizer", str(dirs / "tok"),
                      "--feature-net", str(dirs / "fnet"), "--num-samples", "20",
                      "--batch-size", "10", "--top-k", "5", "--stats-dir", str(stats_dir),
                      "--no-grid")
  assert result.returncode == 0, result.stderr
  assert result.stdout.startswith("fd_tiny8cnn = ") and "FID" not in result.stdout
  assert "fd_tiny8cnn" in json.loads((run / "summary.json").read_text())
  for args, message in (
      (["--run", str(tmp_path / "nope"), "--feature-net", str(dirs / "fnet")],
       "run directory not found"),
      (["--run", str(run), "--inception-weights", str(tmp_path / "w.msgpack")],
       "Inception weights not found"),
      (["--run", str(run), "--feature-net", str(dirs / "fnet"), "--num-samples", "1"],
       "at least 2 samples"),
  ):
    result = run_varjax("eval", "fid", *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_a_run_on_the_stream_is_measured_against_the_stored_train_crops():
  """The stream has 4M crops made on read: reference statistics over it would take hours,
  so a run trained on it defaults to the stored train split, and asking for it is refused."""
  from varjax.errors import DataError
  assert reference.default_split("stream") == "train"
  assert reference.default_split("train") == "train"
  assert reference.default_split("validation") == "validation"
  with pytest.raises(DataError, match="--reference-split train"):
    reference.load_split_images("embedded32", "stream", 32)
