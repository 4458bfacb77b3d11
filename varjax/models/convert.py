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

from varjax import config as config_lib, scales
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


def var_config_from_state_dict(sd: StateDict, patch_nums=scales.SCHEDULES["256"]
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


def convert_var(sd: StateDict, patch_nums=scales.SCHEDULES["256"]):
  """(ModelConfig, params) for varjax.models.var.VAR from a PyTorch VAR state dict. Every
  weight of the checkpoint must find a place (as in convert_vqvae)."""
  cfg = var_config_from_state_dict(sd, patch_nums)
  sd = _ReadRecorder(sd)
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
    if p + "attn.zero_k_bias" in sd and np.any(sd[p + "attn.zero_k_bias"]):
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
  unused = sorted(k for k in sd if k not in sd.read and not _VAR_BUFFERS.fullmatch(k))
  if unused:
    raise ConvertError(f"{len(unused)} checkpoint weights have no place in this VAR config, "
                       f"e.g. {unused[0]}")
  return cfg, {"params": params}


# Buffers of the reference that carry no information (checked or recomputed, not copied).
_VAR_BUFFERS = re.compile(r"lvl_1L|attn_bias_for_masking|blocks\.\d+\.attn\.zero_k_bias")


class _ReadRecorder(dict):
  """A state dict that records the keys read from it, so that leftovers can be refused; a
  missing key is a ConvertError naming it."""

  def __init__(self, sd: StateDict):
    super().__init__(sd)
    self.read: set[str] = set()

  def __getitem__(self, key: str) -> np.ndarray:
    if key not in self:
      raise ConvertError(f"checkpoint has no {key}; is it a complete VAR state dict?")
    self.read.add(key)
    return super().__getitem__(key)


# ------------------------------------------------------------------ tokenizer

def _vqvae_module_name(part: str) -> str:
  """One level of our VQVAE param path -> the reference's module path."""
  if m := re.fullmatch(r"(down|up)(\d+)_(block|attn)(\d+)", part):
    return f"{m[1]}.{m[2]}.{m[3]}.{m[4]}"
  if m := re.fullmatch(r"(down|up)(\d+)_(downsample|upsample)", part):
    return f"{m[1]}.{m[2]}.{m[3]}"
  if m := re.fullmatch(r"phi(\d+)", part):
    return f"quant_resi.qresi_ls.{m[1]}"
  return {"mid_block1": "mid.block_1", "mid_block2": "mid.block_2", "mid_attn": "mid.attn_1",
          # inside a ResnetBlock / AttnBlock (flax's automatic names, in call order)
          "GroupNorm_0": "norm1", "Conv_0": "conv1", "GroupNorm_1": "norm2",
          "Conv_1": "conv2"}.get(part, part)


def _vqvae_torch_key(path: tuple[str, ...]) -> str:
  *modules, leaf = path
  if modules[-1] == "conv" and modules[-2].startswith("phi"):
    modules = modules[:-1]  # our Phi wraps its conv; the reference's Phi is the conv
  names = [_vqvae_module_name(m) for m in modules]
  if len(modules) >= 2 and re.fullmatch(r"(down|up)\d+_attn\d+|mid_attn", modules[-2]) \
      and modules[-1] == "GroupNorm_0":
    names[-1] = "norm"  # an AttnBlock's only norm
  if path == ("quantize", "embedding"):
    return "quantize.embedding.weight"
  return ".".join(names) + "." + {"kernel": "weight", "scale": "weight"}.get(leaf, leaf)


def convert_vqvae(sd: StateDict, cfg: config_lib.TokenizerConfig, patch_nums):
  """params for varjax.models.vqvae.VQVAE(cfg, patch_nums) from a PyTorch VAR VQVAE state
  dict (`vae_ch160v4096z32.pth` with cfg = TokenizerConfig() and the 256 px schedule).

  Every parameter of ours is looked up by name and shape-checked; every weight of the
  checkpoint must find a place."""
  import jax
  from flax import traverse_util
  from varjax.models import vqvae
  model = vqvae.build(cfg, patch_nums)
  side = patch_nums[-1] * cfg.downsample
  image = jax.ShapeDtypeStruct((1, side, side, 3), np.float32)
  shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), image)["params"]
  flat = traverse_util.flatten_dict(shapes)
  out, used = {}, set()
  for path, want in flat.items():
    key = _vqvae_torch_key(path)
    if key not in sd:
      raise ConvertError(f"checkpoint has no {key} (for {'/'.join(path)}); is the tokenizer "
                         f"config right? {cfg}")
    value = np.asarray(sd[key], np.float32)
    if value.ndim == 4:
      value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    if value.shape != tuple(want.shape):
      raise ConvertError(f"{key} has shape {value.shape} after conversion; "
                         f"{'/'.join(path)} needs {tuple(want.shape)}")
    out[path] = value
    used.add(key)
  # Skipped: the EMA hit counter (a buffer) and Phi convs that no scale of this schedule
  # picks (flax creates only the ones used; with 10 scales all 4 are).
  unused = sorted(k for k in sd if k not in used and not k.endswith("ema_vocab_hit_SV")
                  and ".qresi_ls." not in k)
  if unused:
    raise ConvertError(f"{len(unused)} checkpoint weights have no place in this tokenizer "
                       f"config, e.g. {unused[0]}")
  return traverse_util.unflatten_dict(out)
