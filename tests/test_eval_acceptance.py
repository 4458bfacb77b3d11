"""Acceptance for issue 8: the Fréchet distance falls as a VAR model on the embedded data
trains -- samples of an untrained model are farther from the data than samples after
training. Everything real: the embedded dataset, the default tokenizer (vqvae-tiny32,
500 steps), its token pyramids, the fd_embed32cnn feature network, the VAR trainer
(`varjax.train.loop.train`) and `varjax eval fid`. About 10 minutes on 2 CPU cores, most
of it the tokenizer.

Why the full default tokenizer: samples can get no closer to the data than the tokenizer's
own reconstructions (fd_embed32cnn about 17 for vqvae-tiny32, against 27 for an untrained
d2 and 0.06 between the two data splits). A tokenizer trained for only 120 steps
reconstructs so badly that decoded random tokens score better than a trained model's
(docs/eval.md), and the test would measure the tokenizer, not the VAR.
"""

import json
import os

import pytest

from conftest import run_varjax

pytestmark = pytest.mark.slow

try:
  from varjax.train import loop
except ImportError:  # the trainer is issue 4's; without it there is nothing to train
  loop = None


def _run(*args):
  result = run_varjax(*args, timeout=1800)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


@pytest.mark.skipif(loop is None, reason="varjax.train.loop (the VAR trainer) is missing")
def test_distance_falls_as_var_trains(embedded_data_dir, tmp_path):
  data = embedded_data_dir
  _run("tokenizer", "train", "--preset", "vqvae-tiny32", "--data-dir", data,
       "--out-dir", str(tmp_path))
  tokenizer = str(tmp_path / "tokenizer-tiny32")
  for split in ("train", "validation"):
    _run("tokenize", "--tokenizer", tokenizer, "--split", split, "--data-dir", data,
         "--out", str(tmp_path / "tokens" / split))
  fnet = str(tmp_path / "embed32cnn")
  print(_run("eval", "features", "train", "--out", fnet, "--data-dir", data, "--epochs", "3"))

  from varjax import config
  values = {
      "model": {"depth": 2, "width": 64, "heads": 2, "vocab_size": 512, "latent_channels": 32,
                "num_classes": 16, "patch_nums": [1, 2, 3, 4]},
      "data": {"tokens": str(tmp_path / "tokens"), "data_dir": data, "global_batch_size": 64},
      "optim": {"peak_lr": 2e-3, "warmup_steps": 20},
      "run": {"out_dir": str(tmp_path / "runs"), "steps": 0, "log_every": 50,
              "eval_every": 10_000, "checkpoint_every": 10_000},
  }
  distances = {}
  for name, steps in (("untrained", 0), ("trained", 300)):
    values["run"].update(name=name, steps=steps)
    summary = loop.train(config.from_dict(values), progress=False, log=lambda line: None)
    run = str(tmp_path / "runs" / name)
    # no --tokenizer: the run's summary names the one its token pyramids record
    out = _run("eval", "fid", "--run", run, "--feature-net", fnet, "--num-samples", "512",
               "--top-k", "0", "--top-p", "0", "--stats-dir", str(tmp_path / "stats"))
    with open(os.path.join(run, "summary.json")) as f:
      saved = json.load(f)
    assert "fid" not in saved and saved["sample_protocol"]["num_samples"] == 512
    distances[name] = saved["fd_embed32cnn"]
    print(f"{name}: {steps} steps, eval loss {summary['loss']:.3f}; {out.splitlines()[0]}")
  # Seed-to-seed spread at 512 samples is about +-1; measured: 38.4 -> 20.7 here (27 -> 22
  # with the 5-epoch feature net of docs/eval.md).
  assert distances["trained"] < 0.9 * distances["untrained"], distances
