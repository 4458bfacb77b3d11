"""Scale-by-scale sampling from a VAR model with a KV cache, CFG, top-k and top-p.

Each scale is one step: its S tokens attend to the cached keys of every earlier scale and
to each other (no mask is needed: everything in the cache is visible), the cache grows by
S, the sampled indices are embedded by the tokenizer and added to the running
reconstruction f_hat, and f_hat area-resized to the next grid is the next step's input.
The Python loop over scales unrolls under jit (shapes differ per scale).

Classifier-free guidance follows VAR: the batch is doubled with the null class and the
logits of scale k are (1 + t) cond - t uncond with t = cfg * k / (num_scales - 1), a ramp
from 0 at the first scale to `cfg` at the last.

Collaborative decoding (CoDe): a drafter samples the first k scales, then a refiner that
shares the tokenizer and schedule builds its own KV cache from the drafted tokens (a
prefill: one cached step per drafted scale, logits discarded) and samples the rest. The
draws use the same keys as one model's sampling, so a model paired with itself samples
exactly what it samples alone.
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


def with_null_rows(labels_B, num_classes: int, guided: bool):
  """The labels the transformer runs on: under guidance the batch is doubled with the null
  class (rows [0, B) conditional, [B, 2B) unconditional)."""
  labels_B = jnp.asarray(labels_B, jnp.int32)
  return jnp.concatenate([labels_B, jnp.full_like(labels_B, num_classes)]) if guided else labels_B


def sample_scale(model: VAR, params, tokenizer, tokenizer_params, index: int, cond, x_in,
                 caches, f_hat_Bxhxwx, key, protocol: SamplingProtocol):
  """Samples scale `index` for B images (cond, x_in and caches have 2B rows under guidance):
  logits through the cache, guidance, top-k/top-p, one draw with fold_in(key, index), the
  tokens embedded and added to f_hat. Returns (int32 [B, side, side], caches, f_hat, the
  next scale's input [rows, S', Cv] or None after the last scale)."""
  cfg = model.cfg
  pn = cfg.patch_nums
  b, p = f_hat_Bxhxwx.shape[0], pn[index]
  logits, caches = scale_step(model, params, index, cond, x_in, caches)
  if protocol.cfg > 0:
    t = protocol.cfg * cfg_ratio(index, len(pn))
    logits = (1 + t) * logits[:b] - t * logits[b:]
  logits = filter_logits(logits, protocol.top_k, protocol.top_p)
  idx_BxS = jax.random.categorical(jax.random.fold_in(key, index), logits, axis=-1)
  idx_Bxpxp = idx_BxS.reshape(b, p, p).astype(jnp.int32)
  h_BxpxpxCv = tokenizer.apply(tokenizer_params, idx_Bxpxp, method=type(tokenizer).embed)
  f_hat, nxt = tokenizer.apply(tokenizer_params, index, f_hat_Bxhxwx, h_BxpxpxCv,
                               method=type(tokenizer).next_autoregressive_input)
  if index + 1 == len(pn):
    return idx_Bxpxp, caches, f_hat, None
  x_in = nxt.reshape(b, -1, cfg.latent_channels)
  return idx_Bxpxp, caches, f_hat, (jnp.concatenate([x_in, x_in]) if protocol.cfg > 0 else x_in)


def prefill(model: VAR, params, cond, inputs, caches):
  """The KV cache of `model` over scales it did not sample: one cached step per scale of
  `inputs` (None for scale 0, then the teacher-forced input of each), logits discarded."""
  for si, x in enumerate(inputs):
    _, caches = scale_step(model, params, si, cond, x, caches)
  return caches


def sample_indices(model: VAR, params, tokenizer, tokenizer_params, labels_B, key,
                   protocol: SamplingProtocol = SamplingProtocol(), refiner=None,
                   switch: int | None = None):
  """Samples one token pyramid per label: list of int32 [B, side, side] per scale, and the
  final reconstruction f_hat [B, h, w, Cv]. `tokenizer` is a varjax.models.vqvae.VQVAE.

  Collaborative decoding (refiner = (VAR, params), CoDe): `model` drafts scales
  [0, switch), then the refiner builds its own KV cache from the drafted tokens (a prefill
  over those scales) and samples [switch, num_scales). switch 0 is the refiner alone,
  num_scales the model alone; the random draws are those of a single model's sampling."""
  cfg = model.cfg
  n = len(cfg.patch_nums)
  stages = [(model, params, 0, n)]
  if refiner is not None:
    check_collaborative(cfg, refiner[0].cfg, switch)
    stages = [(model, params, 0, switch), (refiner[0], refiner[1], switch, n)]
  labels_B = jnp.asarray(labels_B, jnp.int32)
  b = labels_B.shape[0]
  rows = with_null_rows(labels_B, cfg.num_classes, protocol.cfg > 0)
  side = cfg.patch_nums[-1]
  f_hat = jnp.zeros((b, side, side, cfg.latent_channels), jnp.float32)
  inputs, pyramid = [None], []  # inputs[k]: the input of scale k, shared by both models
  for stage_model, stage_params, lo, hi in stages:
    if lo == hi:
      continue
    cond = stage_model.apply(stage_params, rows, method=VAR.condition)
    caches = prefill(stage_model, stage_params, cond, inputs[:lo],
                     empty_caches(stage_model, rows.shape[0]))
    for si in range(lo, hi):
      idx, caches, f_hat, x_in = sample_scale(stage_model, stage_params, tokenizer,
                                              tokenizer_params, si, cond, inputs[si], caches,
                                              f_hat, key, protocol)
      pyramid.append(idx)
      inputs.append(x_in)
  return pyramid, f_hat


@functools.partial(jax.jit, static_argnums=(0, 2, 6, 7, 9))
def _sample_images(model, params, tokenizer, tokenizer_params, labels_B, key, protocol,
                   refiner_model, refiner_params, switch):
  refiner = None if refiner_model is None else (refiner_model, refiner_params)
  _, f_hat = sample_indices(model, params, tokenizer, tokenizer_params, labels_B, key, protocol,
                            refiner, switch)
  images = tokenizer.apply(tokenizer_params, f_hat, method=type(tokenizer).fhat_to_img)
  return jnp.clip((images + 1) / 2, 0, 1)


def sample_images(model: VAR, params, tokenizer, tokenizer_params, labels_B,
                  protocol: SamplingProtocol = SamplingProtocol(), batch_index: int = 0,
                  refiner=None, switch: int | None = None, candidate: int = 0):
  """Images in [0, 1], [B, H, W, 3], for concrete labels (checked here: out-of-range labels
  raise a VarjaxError). The key is fold_in(seed, batch_index), so batches are reproducible;
  candidate j > 0 (search: further samples of the same batch) folds j into it as well.
  refiner = (VAR, params) and switch: collaborative decoding (see sample_indices)."""
  labels = check_labels(labels_B, model.cfg.num_classes)
  refiner_model, refiner_params = refiner if refiner is not None else (None, None)
  if refiner is not None:
    check_collaborative(model.cfg, refiner_model.cfg, switch)
    switch = int(switch)
  else:
    switch = None
  key = jax.random.fold_in(jax.random.key(protocol.seed), batch_index)
  if candidate:
    key = jax.random.fold_in(key, candidate)
  # The seed is in the key; keeping it out of the static protocol means one compile serves
  # every seed (an evaluation draws samples under several).
  return _sample_images(model, params, tokenizer, tokenizer_params, labels, key,
                        dataclasses.replace(protocol, seed=0), refiner_model, refiner_params,
                        switch)


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
