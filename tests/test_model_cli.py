"""The user path for official weights: convert a VAR and a VQVAE checkpoint (here random
weights in the reference layout, as .npz), then sample a grid from the two directories."""

import json

import numpy as np
import pytest
from PIL import Image

from conftest import run_varjax
from test_convert import torch_layout_state_dict, torch_layout_vqvae
from varjax.config import TokenizerConfig
from varjax.errors import VarjaxError

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


# ------------------------------------------------ mistakes: one line, exit 2, no traceback

def _one_line_error(capsys, argv) -> str:
  from varjax import cli
  assert cli.main(argv) == 2, argv
  out = capsys.readouterr()
  assert out.out == "" and len(out.err.splitlines()) == 1, out.err
  assert out.err.startswith("varjax: error: ")
  return out.err


def test_absurd_depths_are_refused_before_counting(capsys):
  err = _one_line_error(capsys, ["params", "--model", "var-d100000"])  # hung before
  assert "model.depth: 100000 is over the limit of 1024" in err
  err = _one_line_error(capsys, ["flops", "--model", "var-d4", "--model.depth=1025"])
  assert "model.depth: 1025 is over the limit of 1024" in err


@pytest.mark.parametrize("argv", [
    ["data", "preview", "--dataset", "embedded32"],
    ["sample", "--var", "no-var", "--tokenizer", "no-tok"],
    ["tokenizer", "preview", "--tokenizer", "no-tok"],
])
def test_unwritable_out_is_one_line_before_any_work(tmp_path, capsys, argv):
  blocker = tmp_path / "a-file"
  blocker.write_text("")  # a folder that is a regular file: unwritable even for root
  for out in (blocker / "grid.png", blocker / "sub" / "grid.png"):
    err = _one_line_error(capsys, [*argv, "--out", str(out)])
    assert f"cannot write {out}: {blocker} is a file, not a folder" in err
  out = tmp_path / "grid.txt"
  err = _one_line_error(capsys, [*argv, "--out", str(out)])
  assert f"cannot write {out}: not an image file name" in err
  err = _one_line_error(capsys, [*argv, "--out", str(tmp_path)])
  assert f"cannot write {tmp_path}: it is a folder" in err


def test_cudnn_attention_without_a_gpu_is_one_line_at_start(capsys):
  import jax
  import jax.numpy as jnp
  from varjax.kernels import attention
  assert jax.default_backend() == "cpu"
  for argv in (["train", "--model", "var-d1", "--model.attn_impl=cudnn",
                "--model.dtype=bfloat16"],
               ["bench", "train", "--attn-impl", "cudnn", "--dtype", "bfloat16"]):
    err = _one_line_error(capsys, argv)
    assert "attention cudnn needs a GPU; this process has cpu" in err
  with pytest.raises(VarjaxError, match="cudnn needs bfloat16 or float16"):
    attention.resolve_impl("cudnn", jnp.float32, "gpu")
  assert attention.resolve_impl("cudnn", jnp.bfloat16, "gpu") == "cudnn"
