"""The user path for official weights: convert a VAR and a VQVAE checkpoint (here random
weights in the reference layout, as .npz), then sample a grid from the two directories."""

import json

import numpy as np
from PIL import Image

from conftest import run_varjax
from test_convert import torch_layout_state_dict, torch_layout_vqvae
from varjax.config import TokenizerConfig

TOK = dict(ch=16, ch_mult=(1, 2), num_res_blocks=1, vocab_size=29, latent_channels=8,
           using_sa=False)


def test_convert_then_sample(tmp_path):
  np.savez(tmp_path / "var.npz", **torch_layout_state_dict(pn=(1, 2, 4)))
  np.savez(tmp_path / "vae.npz", **torch_layout_vqvae(TokenizerConfig(**TOK)))
  result = run_varjax("convert", "var", "--checkpoint", str(tmp_path / "var.npz"),
                      "--out", str(tmp_path / "var"), "--patch-nums", "1,2,4")
  assert result.returncode == 0, result.stderr
  overrides = [f"--tokenizer.{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}"
               for k, v in TOK.items()]
  result = run_varjax("convert", "vqvae", "--checkpoint", str(tmp_path / "vae.npz"),
                      "--out", str(tmp_path / "vae"), "--patch-nums", "1,2,4", *overrides)
  assert result.returncode == 0, result.stderr
  out = tmp_path / "grid.png"
  result = run_varjax("sample", "--var", str(tmp_path / "var"), "--tokenizer",
                      str(tmp_path / "vae"), "--labels", "0,5", "--per-label", "3",
                      "--top-k", "5", "--out", str(out))
  assert result.returncode == 0, result.stderr
  grid = Image.open(out)
  assert grid.size == ((3 * (8 + 2) + 2) * 2, (2 * (8 + 2) + 2) * 2)  # 2 rows of 3, 8 px
  protocol = json.loads((tmp_path / "grid.json").read_text())
  assert protocol["labels"] == [0, 0, 0, 5, 5, 5] and protocol["top_k"] == 5
  # A label the model does not have, and a directory that is not a model: one line each.
  result = run_varjax("sample", "--var", str(tmp_path / "var"), "--tokenizer",
                      str(tmp_path / "vae"), "--labels", "6", "--out", str(out))
  assert result.returncode == 2
  assert result.stderr.strip() == ("varjax: error: label 6 is out of range: the model has 6 "
                                   "classes (0..5)")
  result = run_varjax("sample", "--var", str(tmp_path), "--tokenizer", str(tmp_path / "vae"))
  assert result.returncode == 2 and "config.json is missing" in result.stderr
  assert len(result.stderr.strip().splitlines()) == 1
