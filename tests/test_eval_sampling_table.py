"""`varjax eval sampling`: one row per sampler configuration of tiny random runs (tiny
tokenizer and feature CNN of test_eval_fid, reference statistics seeded in the cache), the
plain row's distance equal to `varjax eval fid`'s, FLOPs equal to sampling_cost's, and the
one-line refusals."""

import csv
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from test_eval_fid import MODEL, SIDE, fake_split, numpy_params, save_run, save_tokenizer
from varjax import config
from varjax.eval import features, fid, reference, sampling_table
from varjax.models import sampling
from varjax.models.sampling_cost import sampling_cost


def save_verifier_net(directory):
  """A feature CNN that knows the model's 5 classes: it measures fd and verifies."""
  model = features.FeatureCNN((8, 16), num_classes=MODEL.num_classes)
  template = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, SIDE, SIDE, 3))))
  features.save_cnn(str(directory), {"name": "tiny8cnn", "widths": [8, 16],
                                     "num_classes": MODEL.num_classes, "resolution": SIDE,
                                     "dataset": "synthetic"}, numpy_params(template["params"], 3))


def save_model(directory, tokenizer, seed, flops):
  save_run(directory, seed)
  path = directory / "config.json"
  cfg = json.loads(path.read_text())
  cfg["data"]["tokenizer"] = str(tokenizer)
  path.write_text(json.dumps(cfg))
  (directory / "summary.json").write_text(json.dumps({"params": 1000.0 * (seed + 1),
                                                      "flops_exact": flops}))


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
  root = tmp_path_factory.mktemp("sampling_table")
  save_tokenizer(root / "tok")
  save_verifier_net(root / "fnet")
  save_model(root / "a", root / "tok", 0, 1e9)
  save_model(root / "b", root / "tok", 1, 3e9)
  net = features.load_feature_network(feature_net=str(root / "fnet"))
  reference.feature_stats(net, fake_split()[0], progress=False).save(
      reference.stats_path(str(root / "stats"), "embedded32", "train", SIDE, net))
  return root


def _cli(capsys, *argv):
  from varjax import cli
  rc = cli.main([str(a) for a in argv])
  out = capsys.readouterr()
  return rc, out.out, out.err


def common(dirs):
  return ("eval", "sampling", "--feature-net", dirs / "fnet", "--stats-dir", dirs / "stats",
          "--num-images", "12", "--batch-size", "8", "--top-k", "5", "--fd-bootstrap", "5")


def read_rows(path):
  rows = list(csv.DictReader(path.open()))
  assert list(rows[0]) == list(sampling_table.COLUMNS)
  return rows


def test_table_rows(dirs, tmp_path, capsys):
  out = tmp_path / "t.csv"
  rc, text, err = _cli(capsys, *common(dirs), "--runs", dirs / "a", "--best-of", "2",
                       "--verifier", dirs / "fnet", "--out", out)
  assert rc == 0, err
  rows = read_rows(out)
  assert [r["sampler"] for r in rows] == ["plain", "best_of_k"]
  assert [r["config"] for r in rows] == ["a", "a best-of-2"]
  plain, best = rows
  assert float(plain["train_flops"]) == 1e9 and float(plain["params"]) == 1000
  one = sampling_cost(MODEL, guided=True)["total"]
  assert float(plain["sampling_flops_per_image"]) == one
  assert float(best["sampling_flops_per_image"]) == 2 * one
  assert float(best["verifier_flops_per_image"]) > 0
  assert float(plain["verifier_flops_per_image"]) == 0
  assert float(best["total_flops_per_image"]) == pytest.approx(
      2 * one + float(best["verifier_flops_per_image"]))
  assert best["k"] == "2" and 0 <= float(best["coverage"]) <= 1
  assert float(best["verifier_mean_score"]) >= float(best["candidate_mean_score"])
  assert plain["verifier_mean_score"] == "" and plain["coverage"] == ""
  for r in rows:
    assert r["metric"] == "fd_tiny8cnn" and float(r["quality"]) > 0
    assert float(r["quality_low"]) <= float(r["quality_high"])
    assert float(r["images_per_s"]) > 0 and float(r["wall_s"]) > 0
    assert int(r["peak_memory_bytes"]) > 0 and r["peak_memory_kind"] == "host_max_rss"
    assert (r["num_images"], r["top_k"], r["seed"], r["reference_count"]) == ("12", "5", "0", "300")
  assert len(text.strip().splitlines()) == 3
  # The plain row is `varjax eval fid`'s number under the same protocol.
  run = shutil.copytree(dirs / "a", tmp_path / "a")
  net = features.load_feature_network(feature_net=str(dirs / "fnet"))
  result = fid.evaluate_run(str(run), net, num_samples=12, batch_size=8, grid_size=0,
                            protocol=sampling.SamplingProtocol(top_k=5),
                            cache_dir=str(dirs / "stats"), progress=False)
  assert float(plain["quality"]) == pytest.approx(result["value"], rel=1e-9)
  # JSONL: the same columns, null where CSV is empty
  rc, _, err = _cli(capsys, *common(dirs), "--runs", dirs / "b", "--out", tmp_path / "t.jsonl")
  assert rc == 0, err
  (row,) = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text().splitlines()]
  assert list(row) == list(sampling_table.COLUMNS) and row["refiner"] is None
  assert row["train_flops"] == 3e9


@pytest.mark.slow  # a second sampler to compile (~15 s on 2 cores without the cache)
def test_collaborative_row(dirs, tmp_path, capsys):
  out = tmp_path / "t.csv"
  rc, _, err = _cli(capsys, *common(dirs), "--runs", dirs / "a", "--refiner", dirs / "b",
                    "--switch-scale", "2", "--out", out)
  assert rc == 0, err
  plain, collab = read_rows(out)
  assert collab["config"] == "a>b@2" and collab["switch_scale"] == "2"
  # training FLOPs of both models; N of the drafter and of the refiner
  assert float(collab["train_flops"]) == 4e9
  assert float(collab["params"]) == 1000 and float(collab["refiner_params"]) == 2000
  assert float(collab["sampling_flops_per_image"]) == sampling_cost(
      MODEL, MODEL, 2, guided=True)["total"]  # b has a's shape: the prefill is the extra
  assert float(collab["quality"]) != float(plain["quality"])


def test_mistakes_are_one_line(dirs, tmp_path, capsys):
  other_tok = tmp_path / "tok2"
  shutil.copytree(dirs / "tok", other_tok)
  params = other_tok / "params.msgpack"
  params.write_bytes(params.read_bytes()[:-4] + b"\x00\x00\x00\x01")
  save_model(tmp_path / "c", other_tok, 2, 1e9)
  cfg = config.load_config(str(dirs / "a" / "config.json"))
  short = tmp_path / "short"
  shutil.copytree(dirs / "a", short)
  cfg_d = json.loads((short / "config.json").read_text())
  cfg_d["model"]["patch_nums"] = [1, 2, 4]
  (short / "config.json").write_text(json.dumps(cfg_d))
  assert tuple(cfg.model.patch_nums) == (1, 2, 3, 4)
  a, b = dirs / "a", dirs / "b"
  for extra, message in (
      (("--runs", a, "--best-of", "0"), "--best-of must be >= 1"),
      (("--runs", a, "--best-of", "2"), "--best-of needs --verifier DIR"),
      (("--runs", a, "--refiner", b, "--switch-scale", "5"), "switch scale 5 is outside"),
      (("--runs", a, "--refiner", b), "each --refiner needs its --switch-scale"),
      (("--runs", a, "--refiner", tmp_path / "c", "--switch-scale", "1"), "needs one tokenizer"),
      (("--runs", a, "--refiner", short, "--switch-scale", "1"), "disagree on patch_nums"),
      (("--runs", tmp_path / "missing"), "run directory not found"),
      (("--runs", a, "--out", tmp_path / "t.txt"), "written as .csv or .jsonl"),
  ):
    argv = [*common(dirs), *extra]
    if "--out" not in extra:
      argv += ["--out", tmp_path / "t.csv"]
    rc, _, err = _cli(capsys, *argv)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and message in err, (extra, err)
  assert not (tmp_path / "t.csv").exists()


def test_configurations(tmp_path):
  a, b = str(tmp_path / "a"), str(tmp_path / "b")
  configs = sampling_table.configurations([a, b], [b], [2], [1, 4])
  assert [(c.sampler, c.name) for c in configs] == [
      ("plain", "a"), ("plain", "b"), ("collaborative", "a>b@2"),  # b>b@2 is b alone
      ("best_of_k", "a best-of-1"), ("best_of_k", "a best-of-4"),
      ("best_of_k", "b best-of-1"), ("best_of_k", "b best-of-4")]
