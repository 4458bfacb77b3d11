"""One attention entry point for the VAR model; `impl` picks the implementation.

Layout B L H K (batch, length, heads, head dim), as `jax.nn.dot_product_attention`. VAR's
q and k are L2-normalised and q carries a learned per-head scale, so the softmax scale is
1 there; `scale` stays an argument for generality.

Implementations: `xla` (dense, with the scale mask: the CPU path and the test oracle),
`cudnn` (`jax.nn.dot_product_attention(implementation="cudnn")`, GPU, bf16/fp16),
`pallas` (our block-sparse kernel: `block_sparse_tpu.py` on TPU, `block_sparse.py` on GPU
and, interpreted, on CPU) and `splash` (JAX's TPU splash attention with the VAR mask,
`splash.py`); the kernels run in interpret mode off their target.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from varjax.kernels import mask as mask_lib

IMPLEMENTATIONS = ("auto", "xla", "cudnn", "splash", "pallas")


def resolve_impl(impl: str, dtype=jnp.float32) -> str:
  if impl not in IMPLEMENTATIONS:
    raise ValueError(f"unknown attention impl {impl!r}; choose from {', '.join(IMPLEMENTATIONS)}")
  if impl == "auto":
    backend = jax.default_backend()
    if backend == "tpu":
      return "splash"
    gpu = backend == "gpu"
    return "cudnn" if gpu and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) else "xla"
  return impl


def attention(q_BxLxHxK: jax.Array, k_BxLxHxK: jax.Array, v_BxLxHxK: jax.Array,
              patch_nums, *, scale: float = 1.0, impl: str = "auto",
              mesh: jax.sharding.Mesh | None = None) -> jax.Array:
  """Scale-causal attention over a full token pyramid; returns o_BxLxHxK.

  `mesh` is used by `splash`, which runs under shard_map with heads over `tensor`."""
  length = q_BxLxHxK.shape[1]
  allowed_LxL = mask_lib.dense_mask(patch_nums)
  if allowed_LxL.shape[0] != length:
    raise ValueError(f"sequence has {length} tokens but schedule {tuple(patch_nums)} has "
                     f"{allowed_LxL.shape[0]}")
  impl = resolve_impl(impl, q_BxLxHxK.dtype)
  if impl == "splash":
    from varjax.kernels.splash import splash_attention
    # Splash's key blocks must be multiples of the 128 TPU lanes.
    return splash_attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, patch_nums, scale=scale,
                            block=128, mesh=mesh)
  if impl == "pallas" and jax.default_backend() == "tpu":
    from varjax.kernels.block_sparse_tpu import block_sparse_attention_tpu
    # Mosaic wants key blocks of whole 128-lane vregs.
    return block_sparse_attention_tpu(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, patch_nums,
                                      scale=scale, block_q=128, block_k=128)
  if impl == "pallas":
    from varjax.kernels.block_sparse import block_sparse_attention
    block = pallas_block(length)
    from varjax.kernels.block_sparse import GPU_TUNING, TritonTuning
    # Interpret mode (CPU) keeps the forward's blocks: smaller backward blocks would only
    # multiply the interpreter's steps.
    tuning = GPU_TUNING if jax.default_backend() == "gpu" else TritonTuning()
    return block_sparse_attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, patch_nums, scale=scale,
                                  block_q=block, block_k=block, tuning=tuning)
  if impl == "cudnn":
    return jax.nn.dot_product_attention(
        q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, mask=jnp.asarray(allowed_LxL)[None, None],
        scale=scale, implementation="cudnn")
  return dense_attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, allowed_LxL, scale)


def pallas_block(length: int) -> int:
  """Block size of the Triton / interpreted kernel: 128 for the real schedules, smaller for
  toy ones so that interpret-mode tests do not compute mostly padding."""
  return 128 if length >= 512 else 32 if length >= 64 else 8


def dense_attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, allowed_LxL, scale: float = 1.0):
  """The `xla` path: softmax(q k^T * scale + bias) v with bias 0 where allowed, -1e30 not.

  Written out instead of `jax.nn.dot_product_attention(implementation="xla")`: an additive
  bias and heads as a dot batch dimension make forward + backward about 25% faster on
  CPU (no boolean select over [B, H, L, L]); scores and softmax are fp32 for any input
  dtype. Every row has at least its own scale, so no row is fully masked."""
  bias_LxL = jnp.where(jnp.asarray(allowed_LxL), 0.0, -1e30).astype(jnp.float32)
  s_BxHxLxL = jnp.einsum("bqhk,bthk->bhqt", q_BxLxHxK, k_BxLxHxK,
                         preferred_element_type=jnp.float32) * scale + bias_LxL
  p_BxHxLxL = jax.nn.softmax(s_BxHxLxL, axis=-1).astype(v_BxLxHxK.dtype)
  return jnp.einsum("bhqt,bthk->bqhk", p_BxHxLxL, v_BxLxHxK).astype(q_BxLxHxK.dtype)


def cached_attention(q_BxSxHxK: jax.Array, k_cache_BxTxHxK: jax.Array,
                     v_cache_BxTxHxK: jax.Array, valid_length: int | jax.Array, *,
                     scale: float = 1.0) -> jax.Array:
  """Sampling step: the S queries of one scale against a KV cache holding the keys of all
  scales up to and including theirs in its first `valid_length` slots (the rest unused).

  Within a scale attention is bidirectional and earlier scales are all visible, so the
  mask is just `key index < valid_length`; returns o_BxSxHxK.
  """
  t = k_cache_BxTxHxK.shape[1]
  keep_T = jnp.arange(t) < valid_length
  return jax.nn.dot_product_attention(
      q_BxSxHxK, k_cache_BxTxHxK, v_cache_BxTxHxK, mask=keep_T[None, None, None, :],
      scale=scale, implementation="xla")
