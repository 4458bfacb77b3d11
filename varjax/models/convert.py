"""Converters from PyTorch VAR checkpoints (FoundationVision/VAR `state_dict`s) to our params.

A state dict is read into NumPy (`load_state_dict`: `.npz` always; `.pth`/`.pt`/`.bin`
through torch, `.safetensors` through safetensors — the optional `convert` extra), then
renamed and re-laid-out: torch Linear weights are [out, in] and ours [in, *out]; conv
weights OIHW become HWIO. Buffers the reference keeps in its state dict (the zero k-bias,
the level ids, the attention mask) carry no information and are checked, not copied.

    varjax convert var --checkpoint var_d16.pth --out params_d16.msgpack
"""

from __future__ import annotations

import os
import re
from typing import Mapping

import numpy as np

from varjax import config as config_lib
from varjax.errors import VarjaxError

StateDict = Mapping[str, np.ndarray]


class ConvertError(VarjaxError):
  """The checkpoint does not have the layout the converter expects."""


def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """Name -> float32/int NumPy array from a torch, safetensors or npz file."""
  if not os.path.isfile(path):
    raise ConvertError(f"checkpoint not found: {path}")
  if path.endswith(".npz"):
    with np.load(path) as data:
      return {k: np.asarray(data[k]) for k in data.files}
  if path.endswith(".safetensors"):
    try:
      from safetensors.numpy import load_file
    except ImportError:
      raise ConvertError("reading .safetensors needs the `convert` extra: "
                         "pip install -e '.[convert]'") from None
    return dict(load_file(path))
  try:
    import torch
  except ImportError:
    raise ConvertError("reading a PyTorch checkpoint needs the `convert` extra: "
                       "pip install -e '.[convert]' (or save the state dict as .npz)") from None
  state = torch.load(path, map_location="cpu", weights_only=True)
  if "model" in state and isinstance(state["model"], Mapping):
    state = state["model"]
  return {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in state.items()}


def _linear(sd: StateDict, name: str, out_shape: tuple[int, ...] | None = None,
            bias: bool = True) -> dict:
  """torch Linear [out, in] -> {"kernel": [in, *out_shape], "bias": out_shape}."""
  w = np.asarray(sd[f"{name}.weight"], np.float32)
  out_shape = out_shape or (w.shape[0],)
  kernel = w.T.reshape((w.shape[1],) + tuple(out_shape))
  tree = {"kernel": kernel}
  if bias:
    tree["bias"] = np.asarray(sd[f"{name}.bias"], np.float32).reshape(out_shape)
  return tree


def var_config_from_state_dict(sd: StateDict, patch_nums=config_lib.VAR_256_PATCH_NUMS
                               ) -> config_lib.ModelConfig:
  """The ModelConfig a VAR state dict was trained with (the schedule must be given: it is
  not recoverable from the shapes alone, only checked against them)."""
  try:
    width, latent = sd["word_embed.weight"].shape
    depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k)))
    heads = int(np.prod(sd["blocks.0.attn.scale_mul_1H11"].shape))
    vocab = sd["head.weight"].shape[0]
    classes = sd["class_emb.weight"].shape[0] - 1
    mlp = sd["blocks.0.ffn.fc1.weight"].shape[0]
  except (KeyError, ValueError) as e:
    raise ConvertError(f"not a VAR state dict (missing {e})") from None
  cfg = config_lib.ModelConfig(
      depth=depth, width=width, heads=heads, mlp_ratio=mlp / width, vocab_size=vocab,
      latent_channels=latent, num_classes=classes, patch_nums=tuple(patch_nums),
      shared_aln="shared_ada_lin.1.weight" in sd)
  length = sd["pos_1LC"].shape[1]
  if length != cfg.num_tokens:
    raise ConvertError(f"checkpoint has {length} positions; schedule {list(patch_nums)} has "
                       f"{cfg.num_tokens} tokens")
  return cfg


def convert_var(sd: StateDict, patch_nums=config_lib.VAR_256_PATCH_NUMS):
  """(ModelConfig, params) for varjax.models.var.VAR from a PyTorch VAR state dict."""
  cfg = var_config_from_state_dict(sd, patch_nums)
  c = cfg.resolved_width
  f32 = lambda k: np.asarray(sd[k], np.float32)
  params = {
      "word_embed": _linear(sd, "word_embed"),
      "class_emb": f32("class_emb.weight"),
      "pos_start": f32("pos_start").reshape(cfg.first_tokens, c),
      "pos_1LC": f32("pos_1LC").reshape(cfg.num_tokens, c),
      "lvl_embed": f32("lvl_embed.weight"),
      "head_nm": _linear(sd, "head_nm.ada_lin.1", (2, c)),
      "head": _linear(sd, "head"),
  }
  if cfg.shared_aln:
    params["shared_ada_lin"] = _linear(sd, "shared_ada_lin.1", (6, c))
  for i in range(cfg.depth):
    p = f"blocks.{i}."
    if np.any(sd.get(p + "attn.zero_k_bias", 0.0)):
      raise ConvertError(f"{p}attn.zero_k_bias is not zero: not VAR's attention")
    block = {
        "attn": {
            "mat_qkv": _linear(sd, p + "attn.mat_qkv", (3, c), bias=False),
            "q_bias": f32(p + "attn.q_bias"),
            "v_bias": f32(p + "attn.v_bias"),
            "scale_mul": f32(p + "attn.scale_mul_1H11").reshape(cfg.resolved_heads),
            "proj": _linear(sd, p + "attn.proj"),
        },
        "ffn": {"fc1": _linear(sd, p + "ffn.fc1"), "fc2": _linear(sd, p + "ffn.fc2")},
    }
    if cfg.shared_aln:
      block["ada_gss"] = f32(p + "ada_gss").reshape(6, c)
    else:
      block["ada_lin"] = _linear(sd, p + "ada_lin.1", (6, c))
    params[f"blocks_{i}"] = block
  return cfg, {"params": params}
