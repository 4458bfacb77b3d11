"""Our Pallas kernel, GPU (Triton) layout: flash attention that visits only the key blocks
a scale pyramid allows.

For VAR's scale-causal mask, query i sees exactly the key prefix [0, end(i)) where end(i)
is the end of its scale. A query block therefore needs key blocks [0, n_kv[block]) and
nothing after them (on the 256 px schedule with 128-wide blocks 8 of 36 block pairs are
skipped). Here K and V stay in global memory and a loop over key blocks reads only the
needed ones; `block_sparse_tpu.py` is the same algorithm with the key blocks as a grid axis,
as Mosaic's pipelining wants. Inside a visited block the element mask is
`key < end(query)`. Online softmax in fp32, inputs bf16 or fp32 (every matmul takes the
input dtype and accumulates in fp32, as on the TPU layout), custom VJP with its own
backward kernels (dq per query block; dk, dv per key block over the query blocks that see
it). Padded queries have end 0: they see nothing and produce 0.

Layout inside the kernels is B H L K; the public function takes B L H K like the rest.
Runs on CPU with `interpret=True` (the test suite); the test suite also lowers it to Triton
for an abstract H100 and builds it to sm_90 cubins (`varjax/aot/gpu.py`). It has not run on a
GPU yet.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from varjax.kernels import mask as mask_lib

NEG_INF = -1e30  # finite, so fully masked rows stay NaN-free


@dataclasses.dataclass(frozen=True)
class TritonTuning:
  """Launch settings of the GPU layout; interpret mode ignores the Triton ones."""
  block_q_bwd: int | None = None  # None: the forward's block sizes
  block_k_bwd: int | None = None
  num_warps: int | None = None  # None: 4 for head dim <= 64, else 8 (JAX's GPU attention)
  num_stages: int = 2

  def compiler_params(self, head_dim: int, interpret) -> plgpu.CompilerParams | None:
    if interpret is not False:  # JAX's TPU interpreter accepts only Mosaic's params
      return None
    warps = self.num_warps or (4 if head_dim <= 64 else 8)
    return plgpu.CompilerParams(num_warps=warps, num_stages=self.num_stages)


# What `attention(impl="pallas")` uses on a GPU, chosen from sm_90 builds (aot/gpu.py,
# bf16, head dim 64; tests/test_kernel_lowering.py keeps them true), not from timings:
# - 8 warps: at 128 x 128 forward blocks 4 warps need 255 registers and spill;
#   8 warps need 185 and spill nothing.
# - 64-wide backward blocks: the dq and dk/dv matmuls become Hopper wgmma (32-wide blocks
#   give the older mma.sync) with no spills and under 60 KB of shared memory; 128-wide
#   ones need 255 registers and 130 KB in dk/dv, and skip fewer masked blocks.
GPU_TUNING = TritonTuning(block_q_bwd=64, block_k_bwd=64, num_warps=8, num_stages=2)


def plan(patch_nums, block_q: int, block_k: int, padded_length: int | None = None):
  """(L, padded Lp, ends int32[Lp] (0 for pad rows), n_kv int32[nq] key blocks each query
  block visits, first_q int32[nk] first query block seeing each key block, nq if none);
  both kernel layouts use it. `padded_length` (a multiple of both blocks) lets the backward
  use smaller blocks on the forward's padding."""
  ends = mask_lib.key_prefix_end(patch_nums)
  length = len(ends)
  lp = padded_length or mask_lib.padded_length(length, max(block_q, block_k))
  if lp % block_q or lp % block_k:
    raise ValueError(f"blocks ({block_q}, {block_k}) must divide the padded length {lp}; "
                     "use equal sizes or powers of two")
  ends_p = np.zeros(lp, np.int32)
  ends_p[:length] = ends
  n_kv = mask_lib.block_key_end(patch_nums, block_q, block_k, lp)
  # First query block that needs each key block (n_kv is non-decreasing in the block index).
  first_q = np.array([int(np.argmax(n_kv > kb)) if (n_kv > kb).any() else len(n_kv)
                      for kb in range(lp // block_k)], np.int32)
  return length, lp, ends_p, n_kv, first_q


def _fwd_kernel(n_kv_ref, ends_ref, q_ref, k_ref, v_ref, o_ref, lse_ref, *, block_k, scale):
  qi = pl.program_id(2)
  q = q_ref[...]  # [bq, K], input dtype: the matmuls run on bf16 tensor cores
  ends = ends_ref[...]  # [bq]
  bq = q.shape[0]

  def body(j, carry):
    m, l, acc = carry
    k = k_ref[pl.ds(j * block_k, block_k), :]
    v = v_ref[pl.ds(j * block_k, block_k), :]
    s = jnp.dot(q, k.T, preferred_element_type=jnp.float32) * scale
    keys = j * block_k + jax.lax.broadcasted_iota(jnp.int32, (bq, block_k), 1)
    s = jnp.where(keys < ends[:, None], s, NEG_INF)
    m_new = jnp.maximum(m, s.max(axis=1))
    p = jnp.where(keys < ends[:, None], jnp.exp(s - m_new[:, None]), 0.0)
    corr = jnp.exp(m - m_new)
    pv = jnp.dot(p.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return m_new, l * corr + p.sum(axis=1), acc * corr[:, None] + pv

  init = (jnp.full((bq,), NEG_INF, jnp.float32), jnp.zeros((bq,), jnp.float32),
          jnp.zeros(q.shape, jnp.float32))
  m, l, acc = jax.lax.fori_loop(0, n_kv_ref[qi], body, init)
  seen = l > 0
  o_ref[...] = (acc / jnp.where(seen, l, 1.0)[:, None]).astype(o_ref.dtype)
  lse_ref[...] = jnp.where(seen, m + jnp.log(jnp.where(seen, l, 1.0)), 0.0)


def _dq_kernel(n_kv_ref, ends_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dq_ref, *,
               block_k, scale):
  qi = pl.program_id(2)
  q, do = q_ref[...], do_ref[...]
  lse, delta, ends = lse_ref[...], delta_ref[...], ends_ref[...]
  bq = q.shape[0]

  def body(j, dq):
    k = k_ref[pl.ds(j * block_k, block_k), :]
    v = v_ref[pl.ds(j * block_k, block_k), :]
    keys = j * block_k + jax.lax.broadcasted_iota(jnp.int32, (bq, block_k), 1)
    ok = keys < ends[:, None]
    s = jnp.dot(q, k.T, preferred_element_type=jnp.float32) * scale
    p = jnp.where(ok, jnp.exp(jnp.where(ok, s, 0.0) - lse[:, None]), 0.0)
    dp = jnp.dot(do, v.T, preferred_element_type=jnp.float32)
    ds = p * (dp - delta[:, None])
    return dq + jnp.dot(ds.astype(k.dtype), k, preferred_element_type=jnp.float32) * scale

  dq = jax.lax.fori_loop(0, n_kv_ref[qi], body, jnp.zeros(q.shape, jnp.float32))
  dq_ref[...] = dq.astype(dq_ref.dtype)


def _dkv_kernel(first_q_ref, ends_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref,
                dk_ref, dv_ref, *, block_q, scale, num_q_blocks):
  kb = pl.program_id(2)
  k, v = k_ref[...], v_ref[...]  # [bk, K]
  bk = k.shape[0]

  def body(i, carry):
    dk, dv = carry
    rows = pl.ds(i * block_q, block_q)
    q, do = q_ref[rows, :], do_ref[rows, :]
    lse, delta, ends = lse_ref[rows], delta_ref[rows], ends_ref[rows]
    keys = kb * bk + jax.lax.broadcasted_iota(jnp.int32, (block_q, bk), 1)
    ok = keys < ends[:, None]
    s = jnp.dot(q, k.T, preferred_element_type=jnp.float32) * scale
    p = jnp.where(ok, jnp.exp(jnp.where(ok, s, 0.0) - lse[:, None]), 0.0)
    dv = dv + jnp.dot(p.astype(do.dtype).T, do, preferred_element_type=jnp.float32)
    dp = jnp.dot(do, v.T, preferred_element_type=jnp.float32)
    ds = p * (dp - delta[:, None])
    return dk + jnp.dot(ds.astype(q.dtype).T, q, preferred_element_type=jnp.float32) * scale, dv

  zeros = jnp.zeros(k.shape, jnp.float32)
  dk, dv = jax.lax.fori_loop(first_q_ref[kb], num_q_blocks, body, (zeros, zeros))
  dk_ref[...] = dk.astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)


def _forward(q, k, v, patch_nums, scale, block_q, block_k, interpret, tuning):
  B, H, Lp, K = q.shape
  _, _, ends, n_kv, _ = plan(patch_nums, block_q, block_k, Lp)
  nq = Lp // block_q
  full = pl.BlockSpec((None, None, Lp, K), lambda b, h, i: (b, h, 0, 0))
  o, lse = pl.pallas_call(
      functools.partial(_fwd_kernel, block_k=block_k, scale=scale),
      grid=(B, H, nq),
      in_specs=[pl.BlockSpec((nq,), lambda b, h, i: (0,)),
                pl.BlockSpec((block_q,), lambda b, h, i: (i,)),
                pl.BlockSpec((None, None, block_q, K), lambda b, h, i: (b, h, i, 0)),
                full, full],
      out_specs=[pl.BlockSpec((None, None, block_q, K), lambda b, h, i: (b, h, i, 0)),
                 pl.BlockSpec((None, None, block_q), lambda b, h, i: (b, h, i))],
      out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                 jax.ShapeDtypeStruct((B, H, Lp), jnp.float32)],
      compiler_params=tuning.compiler_params(K, interpret),
      interpret=interpret,
  )(jnp.asarray(n_kv), jnp.asarray(ends), q, k, v)
  return o, lse


def _bwd_rule(patch_nums, scale, block_q, block_k, interpret, tuning, res, do):
  q, k, v, o, lse = res
  B, H, Lp, K = q.shape
  block_q, block_k = tuning.block_q_bwd or block_q, tuning.block_k_bwd or block_k
  _, _, ends, n_kv, first_q = plan(patch_nums, block_q, block_k, Lp)
  nq, nk = Lp // block_q, Lp // block_k
  delta = jnp.sum(do.astype(jnp.float32) * o.astype(jnp.float32), axis=-1)  # [B, H, Lp]
  full = pl.BlockSpec((None, None, Lp, K), lambda b, h, i: (b, h, 0, 0))
  full_vec = pl.BlockSpec((None, None, Lp), lambda b, h, i: (b, h, 0))
  q_block = pl.BlockSpec((None, None, block_q, K), lambda b, h, i: (b, h, i, 0))
  q_vec = pl.BlockSpec((None, None, block_q), lambda b, h, i: (b, h, i))
  dq = pl.pallas_call(
      functools.partial(_dq_kernel, block_k=block_k, scale=scale),
      grid=(B, H, nq),
      in_specs=[pl.BlockSpec((nq,), lambda b, h, i: (0,)),
                pl.BlockSpec((block_q,), lambda b, h, i: (i,)),
                q_block, full, full, q_block, q_vec, q_vec],
      out_specs=q_block,
      out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
      compiler_params=tuning.compiler_params(K, interpret),
      interpret=interpret,
  )(jnp.asarray(n_kv), jnp.asarray(ends), q, k, v, do, lse, delta)
  k_block = pl.BlockSpec((None, None, block_k, K), lambda b, h, j: (b, h, j, 0))
  dk, dv = pl.pallas_call(
      functools.partial(_dkv_kernel, block_q=block_q, scale=scale, num_q_blocks=nq),
      grid=(B, H, nk),
      in_specs=[pl.BlockSpec((nk,), lambda b, h, j: (0,)),
                pl.BlockSpec((Lp,), lambda b, h, j: (0,)),
                full, k_block, k_block, full, full_vec, full_vec],
      out_specs=[k_block, k_block],
      out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
      compiler_params=tuning.compiler_params(K, interpret),
      interpret=interpret,
  )(jnp.asarray(first_q), jnp.asarray(ends), q, k, v, do, lse, delta)
  return dq, dk, dv


def differentiable(forward, backward):
  """The custom-VJP attention on padded [B, H, Lp, K] arrays from a kernel pair:
  forward(q, k, v, *static) -> (o, lse), backward(*static, (q, k, v, o, lse), do) ->
  (dq, dk, dv); static = (patch_nums, scale, block_q, block_k, interpret, tuning), tuning
  a hashable layout-specific setting (`TritonTuning` here, None on TPU). Shared by both
  layouts."""
  @functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6, 7, 8))
  def attention_bhlk(q, k, v, patch_nums, scale, block_q, block_k, interpret, tuning):
    return forward(q, k, v, patch_nums, scale, block_q, block_k, interpret, tuning)[0]

  def forward_with_residuals(q, k, v, *static):
    o, lse = forward(q, k, v, *static)
    return o, (q, k, v, o, lse)

  attention_bhlk.defvjp(forward_with_residuals, backward)
  return attention_bhlk


def run_padded(attention_bhlk, q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, patch_nums, scale: float,
               block_q: int, block_k: int, interpret, tuning=None):
  """Checks the shapes, pads L to the block size, runs [B, H, Lp, K] attention, unpads."""
  B, L, H, K = q_BxLxHxK.shape
  length, lp, _, _, _ = plan(tuple(patch_nums), block_q, block_k)
  if length != L:
    raise ValueError(f"sequence has {L} tokens but the schedule has {length}")
  pad = lambda x: jnp.pad(x, ((0, 0), (0, lp - L), (0, 0), (0, 0))).transpose(0, 2, 1, 3)
  o = attention_bhlk(pad(q_BxLxHxK), pad(k_BxLxHxK), pad(v_BxLxHxK), tuple(patch_nums),
                     float(scale), block_q, block_k, interpret, tuning)
  return o.transpose(0, 2, 1, 3)[:, :L]


_attention_bhlk = differentiable(_forward, _bwd_rule)


def block_sparse_attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, patch_nums, *, scale: float = 1.0,
                           block_q: int = 128, block_k: int = 128,
                           tuning: TritonTuning = TritonTuning(), interpret=None):
  """Scale-causal attention with our Pallas kernels; pads L to the block size internally.

  `tuning`: backward block sizes and Triton launch settings (`GPU_TUNING` is what
  `attention(impl="pallas")` uses on a GPU); the backward blocks must divide the padded
  length. `interpret`: None (interpret on CPU only), a bool, or `pltpu.InterpretParams()`
  to run the kernels in JAX's TPU interpreter, which follows Mosaic's memory semantics."""
  if interpret is None:
    interpret = jax.default_backend() == "cpu"
  return run_padded(_attention_bhlk, q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, patch_nums, scale,
                    block_q, block_k, interpret, tuning)
