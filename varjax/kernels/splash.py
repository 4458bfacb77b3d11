"""JAX's TPU splash attention with the VAR mask (head-sharded by `attention.per_device`).

Splash takes a per-head block mask and skips fully masked blocks. The mask comes from
`varjax.kernels.mask`; L is padded to the block size. Splash applies no softmax scale, so
q is multiplied by `scale` first (VAR's scale is 1: q is already L2-normalised and scaled).
Pad query rows are given key 0 so that no row is empty; their outputs are dropped and
their cotangents are zero, so they change no gradient. On CPU it runs with interpret=True.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

from varjax.kernels import mask as mask_lib


@functools.lru_cache(maxsize=32)
def _mask(patch_nums: tuple[int, ...], heads: int, block: int):
  """(splash's multi-head mask, padded length): numpy only, so safe to cache across traces;
  the same mask object also hits splash's own cache of the processed block masks."""
  length = int(mask_lib.key_prefix_end(patch_nums).shape[0])
  lp = mask_lib.padded_length(length, block)
  allowed = mask_lib.dense_mask(patch_nums, padded_to=lp)
  allowed[length:, 0] = True
  return sm.MultiHeadMask([sm.NumpyMask(allowed) for _ in range(heads)]), lp


def _kernel(patch_nums: tuple[int, ...], heads: int, block: int, interpret: bool):
  """A splash kernel, built per call: it holds its mask info as jax arrays, which inside
  a trace (jit, shard_map) belong to that trace and must not be reused by another."""
  mask, lp = _mask(patch_nums, heads, block)
  sizes = sk.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                        block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
                        block_q_dq=block, block_kv_dq=block)
  return sk.make_splash_mha(mask, head_shards=1, q_seq_shards=1, block_sizes=sizes,
                            interpret=interpret), lp


def _local(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, patch_nums, scale, block, interpret):
  _, length, heads, _ = q_BxLxHxK.shape
  kernel, lp = _kernel(patch_nums, heads, block, interpret)
  pad = lambda x: jnp.pad(x, ((0, 0), (0, lp - length), (0, 0), (0, 0))).transpose(0, 2, 1, 3)
  o = jax.vmap(kernel)(pad(q_BxLxHxK * scale), pad(k_BxLxHxK), pad(v_BxLxHxK))
  return o.transpose(0, 2, 1, 3)[:, :length]


def splash_attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, patch_nums, *, scale: float = 1.0,
                     block: int = 128, interpret: bool | None = None):
  """Scale-causal splash attention on one device's arrays (`attention.per_device` shards
  it over a mesh). `interpret`: None interprets off TPU."""
  if interpret is None:
    interpret = jax.default_backend() != "tpu"
  return _local(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, tuple(patch_nums), scale, block,
                bool(interpret))
