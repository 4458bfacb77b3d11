"""A tiny, fully real VAR training setup on disk: a randomly initialised tokenizer saved as a
model directory and token pyramids of random codes in the `varjax tokenize` layout.

Used by the trainer tests; the tokenizer only has to turn codes into teacher-forced
inputs, so random weights exercise exactly the code path of a trained one."""

from __future__ import annotations

import json
import os

import numpy as np
import yaml

from varjax import config as config_lib
from varjax.models import store, vqvae

PATCH_NUMS = (1, 2, 3, 4)
VOCAB, LATENT, CLASSES = 64, 8, 4


def make_token_setup(root: str, n_train: int = 128, n_eval: int = 32, seed: int = 0,
                     nan_tokenizer: bool = False) -> dict[str, str]:
  tok_cfg = config_lib.from_dict({
      "tokenizer": {"ch": 8, "ch_mult": [1, 1, 1, 1], "num_res_blocks": 1,
                    "vocab_size": VOCAB, "latent_channels": LATENT, "using_sa": False,
                    "using_mid_sa": False},
      "model": {"patch_nums": list(PATCH_NUMS), "vocab_size": VOCAB, "latent_channels": LATENT},
      "data": {"resolution": 32}})
  model = vqvae.build(tok_cfg.tokenizer, PATCH_NUMS)
  params = vqvae.init_params(model, seed, 32)
  if nan_tokenizer:
    params = dict(params, quantize=dict(params["quantize"], embedding=np.full_like(
        np.asarray(params["quantize"]["embedding"]), np.nan)))
  tok_dir = os.path.join(root, "tokenizer")
  store.save_model_dir(tok_dir, tok_cfg, params)
  rng = np.random.default_rng(seed)
  tokens = os.path.join(root, "tokens")
  for split, n in (("train", n_train), ("validation", n_eval)):
    out = os.path.join(tokens, split)
    os.makedirs(out, exist_ok=True)
    for k, pn in enumerate(PATCH_NUMS):
      np.save(os.path.join(out, f"scale_{k}.npy"),
              rng.integers(0, VOCAB, (n, pn, pn)).astype(np.int16))
    np.save(os.path.join(out, "labels.npy"), rng.integers(0, CLASSES, n).astype(np.int32))
    with open(os.path.join(out, "meta.json"), "w") as f:
      json.dump({"patch_nums": list(PATCH_NUMS), "vocab_size": VOCAB, "tokenizer": tok_dir,
                 "dataset": "random", "split": split, "num_examples": n, "dtype": "int16",
                 "complete": True}, f)
  return {"tokens": tokens, "tokenizer": tok_dir}


def tiny_config(setup: dict[str, str], out_dir: str, **sections) -> dict:
  """Nested config dict of a 2-block VAR on the setup; `sections` update it per key."""
  values = {
      "model": {"depth": 2, "width": 64, "heads": 2, "vocab_size": VOCAB,
                "latent_channels": LATENT, "num_classes": CLASSES,
                "patch_nums": list(PATCH_NUMS)},
      "data": {"tokens": setup["tokens"], "global_batch_size": 16},
      "optim": {"peak_lr": 3e-3, "warmup_steps": 2},
      "run": {"out_dir": out_dir, "name": "tiny", "steps": 8, "log_every": 1,
              "eval_every": 100, "checkpoint_every": 2, "keep_checkpoints": 3},
  }
  for section, updates in sections.items():
    values.setdefault(section, {}).update(updates)
  return values


def write_config(values: dict, path: str) -> str:
  with open(path, "w") as f:
    yaml.safe_dump(values, f)
  return path


def train_losses(run_dir: str) -> list[tuple[int, float]]:
  with open(os.path.join(run_dir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  return [(r["step"], r["loss"]) for r in records if r["split"] == "train"]
