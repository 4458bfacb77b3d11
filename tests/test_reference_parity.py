"""Our Flax VAR and VQ-VAE equal the OFFICIAL PyTorch code (FoundationVision/VAR).

tests/data/var_reference.{npz,json} hold outputs of the official models on tiny configs
(and the official state dicts / weight recipe), made by tests/reference/make_var_reference.py
(see its docstring for the commit and torch version). Here, without torch, the official
state dicts go through our converters and our models must reproduce those outputs:
token indices exactly, everything else to fp32 rounding.
"""

import importlib.util
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from varjax import config as config_lib, scales
from varjax.models import convert, resize, vqvae
from varjax.models import var as var_lib

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data", "var_reference")
PATCH_NUMS = (1, 2, 3, 4)
TOKENIZER = config_lib.TokenizerConfig(ch=32, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2,
                                       vocab_size=37, latent_channels=8)
TOL = 1e-4  # max |ours - official| / max |official|


def _load_synthetic_weights():
  spec = importlib.util.spec_from_file_location(
      "synthetic_weights", os.path.join(HERE, "reference", "synthetic_weights.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def ref():
  with np.load(DATA + ".npz") as data:
    arrays = {k: data[k] for k in data.files}
  with open(DATA + ".json") as fh:
    meta = json.load(fh)
  return arrays, meta


def _state_dict(arrays, prefix):
  p = prefix + "/"
  return {k[len(p):]: v for k, v in arrays.items() if k.startswith(p)}


def nhwc(x_NCHW):
  return np.transpose(x_NCHW, (0, 2, 3, 1))


def rel_err(ours, official):
  ours, official = np.asarray(ours, np.float64), np.asarray(official, np.float64)
  assert ours.shape == official.shape, (ours.shape, official.shape)
  return float(np.max(np.abs(ours - official)) / np.max(np.abs(official)))


@pytest.fixture(scope="module")
def tokenizer(ref):
  """(model, params) from the official VQVAE state dict (rebuilt from the weight recipe)."""
  arrays, _ = ref
  synth = _load_synthetic_weights()
  sd = _state_dict(arrays, "vae")
  for name, shape, total in zip(arrays["vae_names"], arrays["vae_shapes"], arrays["vae_sums"]):
    sd[str(name)] = synth.vae_weight(str(name), tuple(json.loads(str(shape))))
    np.testing.assert_allclose(sd[str(name)].astype(np.float64).sum(), total, rtol=0,
                               atol=1e-9 * max(1.0, abs(total)),
                               err_msg=f"weight recipe no longer reproduces {name}")
  params = convert.convert_vqvae(sd, TOKENIZER, PATCH_NUMS)
  return vqvae.build(TOKENIZER, PATCH_NUMS), {"params": params}


def _apply(tokenizer, method, *args):
  model, params = tokenizer
  return model.apply(params, *args, method=getattr(vqvae.VQVAE, method))


def test_vqvae_encoder_and_tokens(ref, tokenizer):
  arrays, meta = ref
  img = nhwc(arrays["img_NCHW"])
  f = _apply(tokenizer, "encode", img)
  assert rel_err(f, nhwc(arrays["f_NCHW"])) < TOL
  indices = _apply(tokenizer, "img_to_indices", img)
  assert len(indices) == len(PATCH_NUMS)
  distinct = set()
  for si, (idx, pn) in enumerate(zip(indices, PATCH_NUMS)):
    official = arrays[f"idx_{si}"]
    np.testing.assert_array_equal(np.asarray(idx).reshape(-1, pn * pn), official,
                                  err_msg=f"scale {si} ({pn}x{pn})")
    distinct |= set(official.ravel().tolist())
  assert len(distinct) >= 10  # the fixture exercises many codes, not one
  # The official nearest-code decisions are not near-ties (so fp32 rounding cannot flip them).
  assert min(meta["tokenizer"]["token_margin_min_rel_per_scale"]) > 1e-4


def test_vqvae_fhat_var_input_decode(ref, tokenizer):
  arrays, _ = ref
  indices = [jnp.asarray(arrays[f"idx_{si}"]).reshape(-1, pn, pn)
             for si, pn in enumerate(PATCH_NUMS)]
  for si in range(len(PATCH_NUMS)):  # f_hat after each scale
    f_hat = _apply(tokenizer, "indices_to_fhat", indices[:si + 1])
    assert rel_err(f_hat, nhwc(arrays[f"fhat_{si}_NCHW"])) < TOL, si
  var_in = _apply(tokenizer, "indices_to_var_input", indices)
  assert rel_err(var_in, arrays["var_input"]) < TOL
  f_hat = nhwc(arrays[f"fhat_{len(PATCH_NUMS) - 1}_NCHW"])
  assert rel_err(_apply(tokenizer, "decode", f_hat), nhwc(arrays["decoded_NCHW"])) < TOL
  assert rel_err(_apply(tokenizer, "fhat_to_img", f_hat), nhwc(arrays["fhat_to_img_NCHW"])) < TOL


@pytest.mark.parametrize("prefix,shared", [("var", False), ("var_shared", True)])
def test_var_logits(ref, prefix, shared):
  arrays, _ = ref
  cfg, params = convert.convert_var(_state_dict(arrays, prefix), PATCH_NUMS)
  assert cfg.shared_aln is shared
  assert (cfg.depth, cfg.resolved_width, cfg.resolved_heads, cfg.vocab_size,
          cfg.latent_channels, cfg.num_classes) == (2, 64, 2, 37, 8, 5)
  logits = var_lib.VAR(cfg).apply(params, arrays["labels"], arrays["var_input"])
  assert logits.dtype == jnp.float32
  assert rel_err(logits, arrays[f"{prefix}_logits"]) < TOL


@pytest.mark.parametrize("mode", ["area", "bicubic"])
def test_resize_matches_f_interpolate(ref, mode):
  arrays, _ = ref
  fn = {"area": resize.area_resize, "bicubic": resize.bicubic_resize}[mode]
  i = 0
  while f"resize_{i}_in_NCHW" in arrays:
    size = tuple(int(s) for s in arrays[f"resize_{i}_size"])
    ours = fn(jnp.asarray(nhwc(arrays[f"resize_{i}_in_NCHW"])), size)
    np.testing.assert_allclose(np.asarray(ours), nhwc(arrays[f"resize_{i}_{mode}"]),
                               rtol=0, atol=1e-5, err_msg=f"case {i}: -> {size}")
    i += 1
  assert i >= 5


def test_param_counts_equal_official(ref):
  _, meta = ref
  counts = meta["official_param_counts"]
  assert var_lib.count_params(config_lib.ModelConfig(depth=16))["total"] == counts["var_d16"]
  assert var_lib.count_params(config_lib.ModelConfig(depth=20))["total"] == counts["var_d20"]
  # The released tokenizer: 256 px, the 10-scale schedule (all 4 Phi convs in use).
  model = vqvae.build(config_lib.TokenizerConfig(), scales.SCHEDULES["256"])
  image = jax.ShapeDtypeStruct((1, 256, 256, 3), jnp.float32)
  shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), image)["params"]
  assert vqvae.count_params(shapes) == counts["vqvae_ch160v4096z32"]
  assert meta["official_commit"] == "78b95394fc5896192e3a003e4b295f8ea743c48f"
