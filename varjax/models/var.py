"""The VAR transformer (Tian et al. 2024, FoundationVision/VAR): next-scale prediction.

Conventions. B batch, L tokens of the whole pyramid (sum of side^2 over the scales), S tokens
of one scale, T tokens in a KV cache, C width (64 * depth), H heads, K head dim (C / H),
F MLP width (4 C), V codebook size, Cv latent channels of the tokenizer.
Logical axes (varjax.parallel maps them to the mesh): batch, length, embed, heads, mlp,
vocab, adaln (AdaLN outputs, acting once per image), latent, classes. Parameters carry
them through `nn.with_logical_partitioning`; activations get `with_logical_constraint`,
a no-op outside a mesh.

Sequence: token 0 is the class embedding plus a start position; tokens of scale k >= 1
are `word_embed` of the teacher-forced input (the running reconstruction f_hat after
scale k - 1, area-resized to the grid of scale k; varjax.models.vqvae builds it). Every
token adds a level embedding (its scale) and a learned absolute position.

Block: affine-free LayerNorm modulated by AdaLN from the class embedding (per block, or
one shared Linear plus a per-block offset); attention with L2-normalised q and k, q scaled
by exp(min(s_h, log 100)) per head, softmax scale 1, scale-causal mask (model.attn_l2_norm;
false gives standard 1 / sqrt(head_dim) attention, optionally with qk-layernorm); residual
branches multiplied by gamma (no +1); drop-path rates spread linearly over the blocks.

Parameter names and init follow the reference so that converted weights (models/convert.py)
land one to one; `varjax params --model var-d16` gives the published 310,283,520.
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from varjax import scales
from varjax.config import ModelConfig
from varjax.kernels import attention as attention_lib
from varjax.kernels import mask as mask_lib

LN_EPS = 1e-6
MAX_LOG_SCALE = math.log(100.0)  # q scale exp(s) is clamped at 100
INIT_ADALN = 0.5  # AdaLN scale/shift outputs start small ...
INIT_ADALN_GAMMA = 1e-5  # ... and residual gates start almost closed
INIT_HEAD = 0.02

# Every logical axis name the model uses (parameters and activations).
LOGICAL_AXES = ("batch", "length", "embed", "heads", "kv", "mlp", "vocab", "adaln", "latent",
                "classes")
# The residual stream [B, L, C] and the per-head tensors [B, L, H, K].
BLC = ("batch", "length", "embed")
BLHK = ("batch", "length", "heads", "kv")


def _dtype(name: str):
  return jnp.bfloat16 if name == "bfloat16" else jnp.float32


def init_std(width: int) -> float:
  """VAR's init_std = sqrt(1 / (3 C)) for every Linear and embedding.

  The reference uses torch's trunc_normal_ with absolute bounds +-2, i.e. more than 100
  standard deviations at these widths: a plain normal is the same distribution."""
  return math.sqrt(1.0 / width / 3.0)


def _param(module: nn.Module, name: str, init, shape: Sequence[int], axes: tuple):
  return module.param(name, nn.with_logical_partitioning(init, axes), tuple(shape), jnp.float32)


def _scaled_normal(std: float, row_scales: Sequence[float], axis: int = 1):
  """Normal(std) with slice i of `axis` multiplied by row_scales[i] (AdaLN gates)."""
  def init(key, shape, dtype=jnp.float32):
    factors = jnp.asarray(row_scales, dtype).reshape(
        (1,) * axis + (-1,) + (1,) * (len(shape) - axis - 1))
    return jax.random.normal(key, shape, dtype) * std * factors
  return init


class Linear(nn.Module):
  """y = x @ kernel + bias over the last axis of x; kernel [in, *out_shape].

  `axes` names the kernel's axes (input first). The matmul runs in `dtype`, params are fp32."""
  out_shape: tuple[int, ...]
  axes: tuple
  std: float
  use_bias: bool = True
  dtype: str = "float32"
  kernel_init: object = None  # overrides Normal(std)

  @nn.compact
  def __call__(self, x):
    init = self.kernel_init or nn.initializers.normal(self.std)
    kernel = _param(self, "kernel", init, (x.shape[-1], *self.out_shape), self.axes)
    dt = _dtype(self.dtype)
    y = jnp.tensordot(x.astype(dt), kernel.astype(dt), axes=1)
    if self.use_bias:
      bias = _param(self, "bias", nn.initializers.zeros, self.out_shape, self.axes[1:])
      y = y + bias.astype(dt)
    return y


def layer_norm(x):
  """Affine-free LayerNorm in fp32 (the AdaLN modulation supplies scale and shift)."""
  x = x.astype(jnp.float32)
  mean = x.mean(-1, keepdims=True)
  var = jnp.square(x - mean).mean(-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + LN_EPS)


def l2_normalize(x, eps: float = 1e-12):
  """torch.nn.functional.normalize: x / max(||x||, eps)."""
  norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True))
  return x / jnp.maximum(norm, eps)


def drop_path(module: nn.Module, x_BxLxC, rate: float, train: bool):
  """Stochastic depth: drop the whole residual branch per sample with probability `rate`."""
  if not train or rate == 0.0:
    return x_BxLxC
  keep = jax.random.bernoulli(module.make_rng("dropout"), 1.0 - rate, (x_BxLxC.shape[0], 1, 1))
  return jnp.where(keep, x_BxLxC / (1.0 - rate), 0.0).astype(x_BxLxC.dtype)


class Attention(nn.Module):
  """Scale-causal self-attention. VAR's (cfg.attn_l2_norm): L2-normalised q, k and a learned
  per-head scale on q, softmax scale 1. Otherwise standard attention, softmax scale
  1 / sqrt(head_dim), with LayerNorm on q and k per head if cfg.qk_norm.

  Under `mutable=["intermediates"]` a full pass sows `attn_logit_max`: the largest
  pre-softmax logit (scale included, masked entries excluded) of the first example of the
  batch, a monitor of attention-logit growth (Wortsman et al. 2023); gradients do not flow
  through it and plain `apply` does not compute it."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BxLxC, kv_cache=None):
    """Full pass (kv_cache None): returns o_BxLxC, None.

    Sampling (kv_cache = (k_BxTxHxK, v_BxTxHxK) of the earlier scales, T may be 0): x holds
    the S tokens of one scale; returns o_BxSxC and the cache extended by them."""
    cfg = self.cfg
    c, h = cfg.resolved_width, cfg.resolved_heads
    k_dim = c // h
    std = init_std(c)
    qkv = Linear((3, c), ("embed", None, "heads"), std, use_bias=False, dtype=cfg.dtype,
                 name="mat_qkv")(x_BxLxC)
    q_bias = _param(self, "q_bias", nn.initializers.zeros, (c,), ("heads",))
    v_bias = _param(self, "v_bias", nn.initializers.zeros, (c,), ("heads",))
    b, length = x_BxLxC.shape[:2]
    split = lambda t: t.astype(jnp.float32).reshape(b, length, h, k_dim)
    q_BxLxHxK = split(qkv[:, :, 0] + q_bias.astype(qkv.dtype))
    k_BxLxHxK = split(qkv[:, :, 1])
    v_BxLxHxK = split(qkv[:, :, 2] + v_bias.astype(qkv.dtype))
    dt = _dtype(cfg.dtype)
    if cfg.attn_l2_norm:
      log_scale = _param(self, "scale_mul", nn.initializers.constant(math.log(4.0)), (h,),
                         ("heads",))
      scale_H = jnp.exp(jnp.minimum(log_scale, MAX_LOG_SCALE))
      q_BxLxHxK = l2_normalize(q_BxLxHxK) * scale_H[:, None]
      k_BxLxHxK = l2_normalize(k_BxLxHxK)
      softmax_scale = 1.0
    else:
      if cfg.qk_norm:
        q_BxLxHxK = self._head_norm("q_norm", q_BxLxHxK)
        k_BxLxHxK = self._head_norm("k_norm", k_BxLxHxK)
      softmax_scale = 1.0 / math.sqrt(k_dim)
    q_BxLxHxK = q_BxLxHxK.astype(dt)
    k_BxLxHxK = k_BxLxHxK.astype(dt)
    v_BxLxHxK = v_BxLxHxK.astype(dt)
    q_BxLxHxK, k_BxLxHxK, v_BxLxHxK = (nn.with_logical_constraint(t, BLHK)
                                       for t in (q_BxLxHxK, k_BxLxHxK, v_BxLxHxK))
    if kv_cache is None and self.is_mutable_collection("intermediates"):
      self.sow("intermediates", "attn_logit_max",
               max_attention_logit(q_BxLxHxK[:1], k_BxLxHxK[:1], cfg.patch_nums, softmax_scale))
    if kv_cache is None:
      o_BxLxHxK = attention_lib.attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, cfg.patch_nums,
                                          scale=softmax_scale, impl=cfg.attn_impl)
      new_cache = None
    else:
      # The S queries of one scale see every earlier scale and their own: the whole cache.
      k_BxTxHxK = jnp.concatenate([kv_cache[0], k_BxLxHxK], axis=1)
      v_BxTxHxK = jnp.concatenate([kv_cache[1], v_BxLxHxK], axis=1)
      o_BxLxHxK = attention_lib.cached_attention(q_BxLxHxK, k_BxTxHxK, v_BxTxHxK,
                                                 k_BxTxHxK.shape[1], scale=softmax_scale)
      new_cache = (k_BxTxHxK, v_BxTxHxK)
    o_BxLxC = o_BxLxHxK.reshape(b, length, c)
    proj = Linear((c,), ("heads", "embed"), std / math.sqrt(2 * cfg.depth), dtype=cfg.dtype,
                  name="proj")
    return proj(o_BxLxC), new_cache

  def _head_norm(self, name: str, x_BxLxHxK):
    """LayerNorm over the head dim with a learned scale and bias shared by the heads
    (qk-layernorm, Dehghani et al. 2023; Wortsman et al. 2023), in fp32."""
    k_dim = x_BxLxHxK.shape[-1]
    scale_K = _param(self, f"{name}_scale", nn.initializers.ones, (k_dim,), ("kv",))
    bias_K = _param(self, f"{name}_bias", nn.initializers.zeros, (k_dim,), ("kv",))
    return layer_norm(x_BxLxHxK) * scale_K + bias_K


def max_attention_logit(q_BxLxHxK, k_BxLxHxK, patch_nums, scale: float):
  """The largest allowed pre-softmax logit q.k * scale over batch, heads and positions (no
  gradient). The model calls it on one example: a [1, H, L, L] product per layer."""
  allowed_LxL = jnp.asarray(mask_lib.dense_mask(patch_nums))
  q, k = (jax.lax.stop_gradient(t).astype(jnp.float32) for t in (q_BxLxHxK, k_BxLxHxK))
  s_BxHxLxL = jnp.einsum("bqhk,bthk->bhqt", q, k) * scale
  return jnp.max(jnp.where(allowed_LxL, s_BxHxLxL, -jnp.inf))


class FFN(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BxLxC):
    cfg = self.cfg
    c = cfg.resolved_width
    f = int(round(c * cfg.mlp_ratio))
    std = init_std(c)
    h_BxLxF = Linear((f,), ("embed", "mlp"), std, dtype=cfg.dtype, name="fc1")(x_BxLxC)
    h_BxLxF = nn.gelu(h_BxLxF, approximate=True)
    h_BxLxF = nn.with_logical_constraint(h_BxLxF, ("batch", "length", "mlp"))
    return Linear((c,), ("mlp", "embed"), std / math.sqrt(2 * cfg.depth), dtype=cfg.dtype,
                  name="fc2")(h_BxLxF)


class Block(nn.Module):
  """AdaLN self-attention block; `drop_path_rate` is this block's share of the schedule."""
  cfg: ModelConfig
  drop_path_rate: float

  @nn.compact
  def __call__(self, x_BxLxC, cond_BxC, train: bool, kv_cache=None):
    """cond_BxC is the class embedding; with shared AdaLN it is the shared Linear's output
    cond_Bx6xC instead. Returns (x_BxLxC, kv_cache)."""
    cfg = self.cfg
    c = cfg.resolved_width
    gates = (INIT_ADALN_GAMMA,) * 2 + (INIT_ADALN,) * 4
    if cfg.shared_aln:
      offset_6xC = _param(self, "ada_gss", _scaled_normal(1.0 / math.sqrt(c), gates, axis=0), (6, c),
                          (None, "adaln"))
      ada_Bx6xC = cond_BxC + offset_6xC
    else:
      ada_Bx6xC = Linear((6, c), ("embed", None, "adaln"), init_std(c), dtype="float32",
                         kernel_init=_scaled_normal(init_std(c), gates),
                         name="ada_lin")(nn.silu(cond_BxC.astype(jnp.float32)))
    gamma1, gamma2, scale1, scale2, shift1, shift2 = (
        ada_Bx6xC[:, i][:, None, :] for i in range(6))
    dt = _dtype(cfg.dtype)
    h = (layer_norm(x_BxLxC) * (1 + scale1) + shift1).astype(dt)
    a_BxLxC, kv_cache = Attention(cfg, name="attn")(h, kv_cache)
    x_BxLxC = x_BxLxC + drop_path(self, a_BxLxC * gamma1, self.drop_path_rate, train)
    h = (layer_norm(x_BxLxC) * (1 + scale2) + shift2).astype(dt)
    x_BxLxC = x_BxLxC + drop_path(self, FFN(cfg, name="ffn")(h) * gamma2, self.drop_path_rate,
                                  train)
    return nn.with_logical_constraint(x_BxLxC.astype(jnp.float32), BLC), kv_cache


class VAR(nn.Module):
  """`var-d{depth}` over `cfg.patch_nums`. Call: logits_BxLxV = VAR(cfg).apply(params,
  labels_B, x_BxLrxCv, train=..., rngs={"dropout": key}) where x holds the teacher-forced
  inputs of scales 1.. (Lr = L - first_tokens; VAR's `x_BLCv_wo_first_l`)."""
  cfg: ModelConfig

  def setup(self):
    cfg = self.cfg
    c = cfg.resolved_width
    std = init_std(c)
    normal = nn.initializers.normal(std)
    self.word_embed = Linear((c,), ("latent", "embed"), std, name="word_embed")
    self.class_emb = _param(self, "class_emb", normal, (cfg.num_classes + 1, c),
                            ("classes", "embed"))
    self.pos_start = _param(self, "pos_start", normal, (cfg.first_tokens, c), (None, "embed"))
    self.pos_1LC = _param(self, "pos_1LC", normal, (cfg.num_tokens, c), ("length", "embed"))
    self.lvl_embed = _param(self, "lvl_embed", normal, (len(cfg.patch_nums), c),
                            (None, "embed"))
    if cfg.shared_aln:
      self.shared_ada_lin = Linear((6, c), ("embed", None, "adaln"), std, name="shared_ada_lin")
    rates = np.linspace(0.0, cfg.resolved_drop_path_rate, cfg.depth)
    self.blocks = [Block(cfg, float(rates[i]), name=f"blocks_{i}") for i in range(cfg.depth)]
    self.head_nm = Linear((2, c), ("embed", None, "adaln"), std, name="head_nm",
                          kernel_init=nn.initializers.normal(std * INIT_ADALN))
    self.head = Linear((cfg.vocab_size,), ("embed", "vocab"), std, name="head",
                       kernel_init=nn.initializers.normal(std * INIT_HEAD))

  # ---------------------------------------------------------------- pieces
  def condition(self, labels_B, train: bool = False):
    """Class embedding cond_BxC; in training a label becomes the null class (index
    num_classes) with probability cond_drop_prob, for classifier-free guidance."""
    cfg = self.cfg
    labels_B = jnp.asarray(labels_B, jnp.int32)
    if train and cfg.cond_drop_prob > 0:
      drop = jax.random.uniform(self.make_rng("dropout"), labels_B.shape) < cfg.cond_drop_prob
      labels_B = jnp.where(drop, cfg.num_classes, labels_B)
    return jnp.take(self.class_emb, labels_B, axis=0)

  def _position(self, lo: int, hi: int):
    """Level + absolute position embeddings of tokens [lo, hi): [hi - lo, C]."""
    ids = scales.scale_ids(self.cfg.patch_nums)[lo:hi]
    return jnp.take(self.lvl_embed, jnp.asarray(ids), axis=0) + self.pos_1LC[lo:hi]

  def embed_scale(self, index: int, cond_BxC, x_BxSxCv=None):
    """Input tokens of scale `index`: the start token (index 0, from the class embedding
    cond_BxC) or word_embed of the teacher-forced / sampled input x_BxSxCv."""
    bounds = scales.boundaries(self.cfg.patch_nums)
    lo, hi = int(bounds[index]), int(bounds[index + 1])
    if index == 0:
      h = cond_BxC[:, None, :] + self.pos_start
    else:
      h = self.word_embed(x_BxSxCv.astype(jnp.float32))
    return h + self._position(lo, hi)

  def blocks_and_head(self, h_BxLxC, cond_BxC, train: bool = False, kv_caches=None):
    """Runs every block then the AdaLN head; returns (logits_BxLxV in fp32, kv_caches)."""
    cfg = self.cfg
    block_cond = self.shared_ada_lin(nn.silu(cond_BxC)) if cfg.shared_aln else cond_BxC
    h_BxLxC = nn.with_logical_constraint(h_BxLxC.astype(jnp.float32), BLC)
    new_caches = []
    for i, block in enumerate(self.blocks):
      h_BxLxC, cache = block(h_BxLxC, block_cond, train,
                             None if kv_caches is None else kv_caches[i])
      new_caches.append(cache)
    scale_shift = self.head_nm(nn.silu(cond_BxC))
    h_BxLxC = layer_norm(h_BxLxC) * (1 + scale_shift[:, None, 0]) + scale_shift[:, None, 1]
    logits_BxLxV = self.head(h_BxLxC)
    logits_BxLxV = nn.with_logical_constraint(logits_BxLxV, ("batch", "length", "vocab"))
    return logits_BxLxV, (None if kv_caches is None else new_caches)

  def __call__(self, labels_B, x_BxLrxCv, train: bool = False):
    cfg = self.cfg
    check_input_shapes(cfg, labels_B, x_BxLrxCv)
    cond_BxC = self.condition(labels_B, train)
    bounds = scales.boundaries(cfg.patch_nums)
    h = [self.embed_scale(0, cond_BxC)]
    if cfg.num_tokens > cfg.first_tokens:
      h.append(self.word_embed(x_BxLrxCv.astype(jnp.float32))
               + self._position(int(bounds[1]), cfg.num_tokens))
    logits_BxLxV, _ = self.blocks_and_head(jnp.concatenate(h, axis=1), cond_BxC, train)
    return logits_BxLxV


def attention_monitors(intermediates, depth: int) -> dict[str, jax.Array]:
  """attn_logit_max (over layers) and attn_logit_max_per_layer [depth] from the
  `intermediates` collection of a full pass (see Attention)."""
  per_layer = jnp.stack([intermediates[f"blocks_{i}"]["attn"]["attn_logit_max"][0]
                         for i in range(depth)])
  return {"attn_logit_max": per_layer.max(), "attn_logit_max_per_layer": per_layer}


def check_input_shapes(cfg: ModelConfig, labels_B, x_BxLrxCv) -> None:
  """Shape errors name what was expected (static, so they work under jit)."""
  want = (cfg.num_tokens - cfg.first_tokens, cfg.latent_channels)
  if x_BxLrxCv.ndim != 3 or tuple(x_BxLrxCv.shape[1:]) != want:
    raise ValueError(
        f"teacher-forced input has shape {tuple(x_BxLrxCv.shape)}; schedule "
        f"{list(cfg.patch_nums)} with {cfg.latent_channels} latent channels needs "
        f"[batch, {want[0]}, {want[1]}]")
  if jnp.ndim(labels_B) != 1 or jnp.shape(labels_B)[0] != x_BxLrxCv.shape[0]:
    raise ValueError(f"labels have shape {jnp.shape(labels_B)}; expected [{x_BxLrxCv.shape[0]}]")


def check_labels(labels_B, num_classes: int, allow_null: bool = False) -> np.ndarray:
  """Host-side check of concrete labels (values cannot be checked inside jit)."""
  from varjax.errors import VarjaxError
  labels = np.asarray(labels_B)
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise VarjaxError(f"labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
  top = num_classes + (1 if allow_null else 0)
  bad = labels[(labels < 0) | (labels >= top)]
  if bad.size:
    raise VarjaxError(f"label {int(bad[0])} is out of range: the model has {num_classes} "
                      f"classes (0..{num_classes - 1})")
  return labels.astype(np.int32)


def param_shapes(cfg: ModelConfig):
  """Parameter shapes (no memory allocated), as an unboxed tree."""
  model = VAR(cfg)
  labels = jnp.zeros((1,), jnp.int32)
  x = jnp.zeros((1, cfg.num_tokens - cfg.first_tokens, cfg.latent_channels), jnp.float32)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), labels, x))
  return nn.unbox(shapes)["params"]


def count_params(cfg: ModelConfig) -> dict[str, int]:
  """Parameter counts by group, for the two conventions scaling-law papers use.

  total: every parameter (VAR's published counts); embedding: class, start, position and
  level embeddings plus word_embed; adaln: AdaLN Linears (per block, shared, before the
  head), which act once per image, not per token; head: the Linear C -> V;
  attention / mlp: the blocks' attention and MLP; non_embedding: total - embedding;
  per_token: the parameters multiplied per token (word_embed, attention, MLP, head)."""
  tree = param_shapes(cfg)
  size = lambda t: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(t))
  blocks = [tree[f"blocks_{i}"] for i in range(cfg.depth)]
  counts = {
      "total": size(tree),
      "embedding": size([tree[k] for k in ("word_embed", "class_emb", "pos_start", "pos_1LC",
                                            "lvl_embed")]),
      "attention": size([b["attn"] for b in blocks]),
      "mlp": size([b["ffn"] for b in blocks]),
      "adaln": size([tree["head_nm"], tree.get("shared_ada_lin", {})]
                    + [{k: v for k, v in b.items() if k.startswith("ada_")} for b in blocks]),
      "head": size(tree["head"]),
  }
  counts["non_embedding"] = counts["total"] - counts["embedding"]
  counts["per_token"] = (size(tree["word_embed"]) + counts["attention"] + counts["mlp"]
                         + counts["head"])
  return counts
