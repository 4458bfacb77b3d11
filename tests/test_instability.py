"""Instability monitors and remedies (Wortsman et al. 2023): standard attention
(model.attn_l2_norm=false, optional qk-layernorm) against a NumPy reference, the sown max
attention logit, output log Z and z-loss, and attention-logit growth at a high learning rate
without VAR's normalised attention."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import train_fixtures as fx
from varjax import config as config_lib
from varjax.config import ModelConfig
from varjax.errors import ConfigError
from varjax.kernels import attention as attn, mask as mask_lib
from varjax.models import losses
from varjax.models.var import VAR, Attention
from varjax.train import optimizer, step as step_lib

PN = (1, 2, 3)


def test_options_are_checked():
  with pytest.raises(ConfigError, match="model.qk_norm"):
    config_lib.from_dict({"model": {"qk_norm": True}})
  ModelConfig(attn_l2_norm=False, qk_norm=True)
  with pytest.raises(ConfigError, match="optim.z_loss"):
    config_lib.from_dict({"optim": {"z_loss": -1e-4}})


def _layer_norm(x, eps=1e-6):
  mean = x.mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + eps)


def _reference(p, x_BxLxC, heads, l2_norm, qk_norm):
  """Dense NumPy attention from the module's parameters (float64)."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
  b, length, c = x_BxLxC.shape
  kd = c // heads
  qkv = np.einsum("blc,cjd->bljd", x_BxLxC, p["mat_qkv"]["kernel"])
  split = lambda t: t.reshape(b, length, heads, kd)
  q, k = split(qkv[:, :, 0] + p["q_bias"]), split(qkv[:, :, 1])
  v = split(qkv[:, :, 2] + p["v_bias"])
  if l2_norm:
    q = q / np.linalg.norm(q, axis=-1, keepdims=True) * np.exp(p["scale_mul"])[:, None]
    k = k / np.linalg.norm(k, axis=-1, keepdims=True)
    scale = 1.0
  else:
    if qk_norm:
      q = _layer_norm(q) * p["q_norm_scale"] + p["q_norm_bias"]
      k = _layer_norm(k) * p["k_norm_scale"] + p["k_norm_bias"]
    scale = 1.0 / math.sqrt(kd)
  s = np.einsum("bqhk,bthk->bhqt", q, k) * scale
  allowed = mask_lib.dense_mask(PN)
  s_masked = np.where(allowed, s, -np.inf)
  w = np.exp(s_masked - s_masked.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  o = np.einsum("bhqt,bthk->bqhk", w, v).reshape(b, length, c)
  return o @ p["proj"]["kernel"] + p["proj"]["bias"], s_masked[0].max()


@pytest.mark.parametrize("l2_norm, qk_norm", [(False, False), (False, True), (True, False)])
def test_attention_equals_a_dense_numpy_reference(l2_norm, qk_norm):
  cfg = ModelConfig(depth=2, width=32, heads=2, patch_nums=PN, attn_impl="xla",
                    attn_l2_norm=l2_norm, qk_norm=qk_norm)
  x = jax.random.normal(jax.random.key(0), (2, 14, 32))
  module = Attention(cfg)
  params = nn.unbox(module.init(jax.random.key(1), x)["params"])
  # Non-trivial biases and norm parameters, so every term is checked.
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(2), len(leaves))
  params = jax.tree.unflatten(tree, [a + 0.3 * jax.random.normal(k, a.shape)
                                     for a, k in zip(leaves, keys)])
  assert ("scale_mul" in params) == l2_norm and ("q_norm_scale" in params) == qk_norm
  (out, _), inter = module.apply({"params": params}, x, mutable=["intermediates"])
  ref, ref_max = _reference(params, np.asarray(x, np.float64), 2, l2_norm, qk_norm)
  np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(inter["intermediates"]["attn_logit_max"][0], ref_max, rtol=1e-5)
  out_plain, _ = module.apply({"params": params}, x)  # no monitor without `intermediates`
  np.testing.assert_array_equal(out, out_plain)


def test_kernels_take_the_standard_scale():
  """The Pallas kernel (interpreted here) with 1 / sqrt(head_dim) equals the xla path."""
  q, k, v = (jax.random.normal(jax.random.key(i), (1, 14, 2, 16)) for i in range(3))
  scale = 1 / math.sqrt(16)
  out = attn.attention(q, k, v, PN, impl="pallas", scale=scale)
  np.testing.assert_allclose(out, attn.attention(q, k, v, PN, impl="xla", scale=scale),
                             atol=1e-5)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_log_z_and_z_loss_terms(smoothing):
  logits = 3 * jax.random.normal(jax.random.key(0), (2, 14, 16))
  targets = jax.random.randint(jax.random.key(1), (2, 14), 0, 16)
  out = losses.token_losses(logits, targets, PN, label_smoothing=smoothing, log_z=True)
  log_z = np.log(np.exp(np.asarray(logits, np.float64)).sum(-1))
  np.testing.assert_allclose(out["log_z_mean"], log_z.mean(), rtol=1e-5)
  np.testing.assert_allclose(out["log_z_max"], log_z.max(), rtol=1e-5)
  np.testing.assert_allclose(out["log_z_sq"], (log_z ** 2).mean(), rtol=1e-5)
  # d mean(log^2 Z) / d logits = 2 log Z softmax / N: the stopped max does not bias it.
  g = jax.grad(lambda l: losses.token_losses(l, targets, PN, smoothing, log_z=True)["log_z_sq"])(
      logits)
  soft = np.exp(np.asarray(logits, np.float64) - log_z[..., None])
  np.testing.assert_allclose(g, 2 * log_z[..., None] * soft / log_z.size, rtol=1e-4, atol=1e-7)
  assert "log_z_mean" not in losses.token_losses(logits, targets, PN)  # eval: unchanged


def _max_logit_after_training(l2_norm: bool, lr: float, steps: int = 8) -> float:
  cfg = ModelConfig(depth=2, width=64, heads=2, vocab_size=fx.VOCAB,
                    latent_channels=fx.LATENT, num_classes=fx.CLASSES, patch_nums=fx.PATCH_NUMS,
                    attn_impl="xla", attn_l2_norm=l2_norm)
  optim = config_lib.OptimConfig(peak_lr=lr, warmup_steps=0, schedule="constant")
  model = VAR(cfg)
  tx = optimizer.adamw(optim, steps, 16)
  step = jax.jit(step_lib.train_step_fn(model, tx, optimizer.lr_schedule(optim, steps, 16)))
  state = jax.jit(lambda: nn.unbox(step_lib.make_init(model, tx, 0)()))()
  rng = np.random.default_rng(0)
  batch = {"label": jnp.asarray(rng.integers(0, fx.CLASSES, 16), jnp.int32),
           "x": jnp.asarray(rng.normal(size=(16, cfg.num_tokens - 1, fx.LATENT)), jnp.float32),
           "target": jnp.asarray(rng.integers(0, fx.VOCAB, (16, cfg.num_tokens)), jnp.int32)}
  top = []
  for _ in range(steps):
    state, m = step(state, batch)
    top.append(m["attn_logit_max"])
  return float(np.max(jax.device_get(top)))


def test_standard_attention_logits_grow_at_a_high_learning_rate():
  """Wortsman et al. 2023: at a high learning rate attention logits grow without bound in
  standard attention; VAR's normalised attention caps them at its learned scale (<= 100).
  10x the tiny runs' peak lr of 3e-3 (tests/train_fixtures.py). Measured over 8 steps: 11.4
  against 3.7 (at 3e-3: 2.3 against 2.9)."""
  standard = _max_logit_after_training(l2_norm=False, lr=3e-2)
  normalised = _max_logit_after_training(l2_norm=True, lr=3e-2)
  assert standard > 2 * normalised, (standard, normalised)


@pytest.mark.parametrize("qk_norm", [False, True])
def test_standard_attention_kv_cache_equals_the_full_pass(qk_norm):
  """Sampling's KV-cache path takes the same 1 / sqrt(head_dim) scale as the full pass."""
  cfg = ModelConfig(depth=2, width=32, heads=2, patch_nums=PN, attn_impl="xla",
                    attn_l2_norm=False, qk_norm=qk_norm)
  x = jax.random.normal(jax.random.key(0), (2, 14, 32))
  module = Attention(cfg)
  params = {"params": nn.unbox(module.init(jax.random.key(1), x)["params"])}
  full, _ = module.apply(params, x)
  cache = (jnp.zeros((2, 0, 2, 16)), jnp.zeros((2, 0, 2, 16)))
  bounds = np.cumsum([0] + [p * p for p in PN])
  for lo, hi in zip(bounds[:-1], bounds[1:]):
    out, cache = module.apply(params, x[:, lo:hi], cache)
    np.testing.assert_allclose(out, full[:, lo:hi], rtol=1e-5, atol=1e-6)
