"""Scale-by-scale sampling from a VAR model with a KV cache, CFG, top-k and top-p.

Each scale is one step: its S tokens attend to the cached keys of every earlier scale and
to each other (no mask is needed: everything in the cache is visible), the cache grows by
S, the sampled indices are embedded by the tokenizer and added to the running
reconstruction f_hat, and f_hat area-resized to the next grid is the next step's input.
The Python loop over scales unrolls under jit (shapes differ per scale).

Classifier-free guidance follows VAR: the batch is doubled with the null class and the
logits of scale k are (1 + t) cond - t uncond with t = cfg * k / (num_scales - 1), a ramp
from 0 at the first scale to `cfg` at the last.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from varjax import scales
from varjax.config import ModelConfig
from varjax.models.var import VAR, check_labels


@dataclasses.dataclass(frozen=True)
class SamplingProtocol:
  """What a sample depends on; stored next to every FID-style figure. VAR's ImageNet
  protocol is cfg 1.5, top-k 900, top-p 0.96."""
  cfg: float = 1.5
  top_k: int = 900
  top_p: float = 0.96
  seed: int = 0

  def __post_init__(self):
    from varjax.errors import ConfigError
    if self.cfg < 0:
      raise ConfigError("sampling.cfg", f"must be >= 0, got {self.cfg}")
    if self.top_k < 0:
      raise ConfigError("sampling.top_k", f"must be >= 0 (0 = off), got {self.top_k}")
    if not 0 <= self.top_p < 1:
      raise ConfigError("sampling.top_p", f"must be in [0, 1) (0 = off), got {self.top_p}")


def filter_logits(logits_BxSxV: jax.Array, top_k: int = 0, top_p: float = 0.0) -> jax.Array:
  """Sets to -inf every logit outside the top k (k > 0) and then outside the nucleus:
  sorted ascending, tokens whose cumulative probability is <= 1 - top_p are removed (the
  most likely token always stays). Same rule as VAR's sample_with_top_k_top_p_."""
  v = logits_BxSxV.shape[-1]
  logits = logits_BxSxV.astype(jnp.float32)
  if 0 < top_k < v:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p > 0:
    order = jnp.argsort(logits, axis=-1)  # ascending
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    cumulative = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
    remove_sorted = (cumulative <= 1 - top_p).at[..., -1].set(False)
    remove = jnp.take_along_axis(remove_sorted, jnp.argsort(order, axis=-1), axis=-1)
    logits = jnp.where(remove, -jnp.inf, logits)
  return logits


def empty_caches(model: VAR, batch: int):
  """One (k, v) pair per block with T = 0 cached tokens."""
  cfg = model.cfg
  h = cfg.resolved_heads
  k = cfg.resolved_width // h
  dtype = jnp.bfloat16 if cfg.dtype == "bfloat16" else jnp.float32
  empty = jnp.zeros((batch, 0, h, k), dtype)
  return [(empty, empty) for _ in range(cfg.depth)]


def scale_step(model: VAR, params, index: int, cond_BxC, x_BxSxCv, kv_caches):
  """Logits of scale `index` (fp32 [B, S, V]) given the cache of the scales before it;
  returns (logits, extended caches). x is None for the first scale (the start token)."""
  h = model.apply(params, index, cond_BxC, x_BxSxCv, method=VAR.embed_scale)
  return model.apply(params, h, cond_BxC, False, kv_caches, method=VAR.blocks_and_head)


def check_collaborative(drafter: ModelConfig, refiner: ModelConfig, switch: int) -> None:
  """Two models can share one sample when they read and write the same tokens: same
  schedule, codebook, latent width and classes; the switch k is in 0..num_scales."""
  from varjax.errors import VarjaxError
  for key in ("patch_nums", "vocab_size", "latent_channels", "num_classes"):
    a, b = (np.atleast_1d(getattr(m, key)).tolist() for m in (drafter, refiner))
    if a != b:
      a, b = (v if len(v) > 1 or key == "patch_nums" else v[0] for v in (a, b))
      raise VarjaxError(
          f"the drafter ({drafter.name}) and the refiner ({refiner.name}) disagree on {key}: "
          f"{a} vs {b}; collaborative sampling needs one tokenizer and schedule")
  n = len(drafter.patch_nums)
  if isinstance(switch, bool) or not isinstance(switch, (int, np.integer)) or not 0 <= switch <= n:
    raise VarjaxError(f"switch scale {switch} is outside the schedule: k must be an integer "
                      f"in 0..{n} (the drafter samples the k scales before it; 0 = the "
                      f"refiner alone, {n} = the drafter alone)")


def cfg_ratio(index: int, num_scales: int) -> float:
  return index / (num_scales - 1) if num_scales > 1 else 1.0


def sample_indices(model: VAR, params, tokenizer, tokenizer_params, labels_B, key,
                   protocol: SamplingProtocol = SamplingProtocol()):
  """Samples one token pyramid per label: list of int32 [B, side, side] per scale, and the
  final reconstruction f_hat [B, h, w, Cv]. `tokenizer` is a varjax.models.vqvae.VQVAE."""
  cfg = model.cfg
  labels_B = jnp.asarray(labels_B, jnp.int32)
  b = labels_B.shape[0]
  guided = protocol.cfg > 0
  all_labels = jnp.concatenate([labels_B, jnp.full_like(labels_B, cfg.num_classes)]) \
      if guided else labels_B
  cond = model.apply(params, all_labels, method=VAR.condition)
  caches = empty_caches(model, all_labels.shape[0])
  pn = cfg.patch_nums
  side = pn[-1]
  f_hat = jnp.zeros((b, side, side, cfg.latent_channels), jnp.float32)
  x_in, pyramid = None, []
  for si, p in enumerate(pn):
    logits, caches = scale_step(model, params, si, cond, x_in, caches)
    if guided:
      t = protocol.cfg * cfg_ratio(si, len(pn))
      logits = (1 + t) * logits[:b] - t * logits[b:]
    logits = filter_logits(logits, protocol.top_k, protocol.top_p)
    idx_BxS = jax.random.categorical(jax.random.fold_in(key, si), logits, axis=-1)
    idx_Bxpxp = idx_BxS.reshape(b, p, p).astype(jnp.int32)
    pyramid.append(idx_Bxpxp)
    h_BxpxpxCv = tokenizer.apply(tokenizer_params, idx_Bxpxp, method=type(tokenizer).embed)
    f_hat, nxt = tokenizer.apply(tokenizer_params, si, f_hat, h_BxpxpxCv,
                                 method=type(tokenizer).next_autoregressive_input)
    if si + 1 < len(pn):
      x_in = nxt.reshape(b, -1, cfg.latent_channels)
      if guided:
        x_in = jnp.concatenate([x_in, x_in])
  return pyramid, f_hat


@functools.partial(jax.jit, static_argnums=(0, 2, 6))
def _sample_images(model, params, tokenizer, tokenizer_params, labels_B, key, protocol):
  _, f_hat = sample_indices(model, params, tokenizer, tokenizer_params, labels_B, key, protocol)
  images = tokenizer.apply(tokenizer_params, f_hat, method=type(tokenizer).fhat_to_img)
  return jnp.clip((images + 1) / 2, 0, 1)


def sample_images(model: VAR, params, tokenizer, tokenizer_params, labels_B,
                  protocol: SamplingProtocol = SamplingProtocol(), batch_index: int = 0):
  """Images in [0, 1], [B, H, W, 3], for concrete labels (checked here: out-of-range labels
  raise a VarjaxError). The key is fold_in(seed, batch_index), so batches are reproducible."""
  labels = check_labels(labels_B, model.cfg.num_classes)
  key = jax.random.fold_in(jax.random.key(protocol.seed), batch_index)
  # The seed is in the key; keeping it out of the static protocol means one compile serves
  # every seed (an evaluation draws samples under several).
  return _sample_images(model, params, tokenizer, tokenizer_params, labels, key,
                        dataclasses.replace(protocol, seed=0))


def teacher_forced_cached_logits(model: VAR, params, labels_B, x_BxLrxCv):
  """Logits [B, L, V] computed scale by scale through the KV cache from teacher-forced
  inputs: must equal the full masked forward pass (the cache is exact)."""
  cond = model.apply(params, labels_B, method=VAR.condition)
  caches = empty_caches(model, labels_B.shape[0])
  bounds = scales.boundaries(model.cfg.patch_nums)
  out = []
  for si in range(len(model.cfg.patch_nums)):
    first = bounds[1]
    x = None if si == 0 else x_BxLrxCv[:, bounds[si] - first:bounds[si + 1] - first]
    logits, caches = scale_step(model, params, si, cond, x, caches)
    out.append(logits)
  return jnp.concatenate(out, axis=1)
