"""Our Pallas kernel for TPU (Mosaic): block-sparse scale-causal flash attention.

Same algorithm and plan as `block_sparse.py` (query block i needs key blocks
[0, n_kv[i]); key block j is needed by query blocks [first_q[j], nq)), laid out the way
Mosaic pipelines work: the key blocks are a grid axis, so each block is a DMA into VMEM.
The per-block counts are scalar-prefetched into SMEM and the index maps clamp past them,
so a fully masked block repeats the previous block index and Pallas issues no copy for it:
masked blocks are never loaded, and `pl.when` skips their compute.

Grids: forward and dq (B, H, nq, nk), dk/dv (B, H, nk, nq), the reduction axis last. Running
max, sum and accumulators live in VMEM scratch across the reduction axis. Row vectors
(ends, log-sum-exp, delta) are [.., Lp, 1] so that every block's last two dims satisfy
Mosaic's (8, 128)-or-full rule. Blocks must be multiples of 128 on a real TPU; off TPU it
runs in interpret mode (`interpret=True`, or `pltpu.InterpretParams()` for the TPU
interpreter, which follows Mosaic's DMA and memory semantics). Inputs bf16 or fp32;
softmax statistics and accumulation in fp32.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from varjax.kernels import block_sparse

NEG_INF = block_sparse.NEG_INF
_NT = (((1,), (1,)), ((), ()))  # a @ b.T
_TN = (((0,), (0,)), ((), ()))  # a.T @ b


def _scores(q, k, key0, ends, scale):
  """s [bq, bk] fp32 with the scale-causal mask (key < end of the query's scale)."""
  s = jax.lax.dot_general(q, k, _NT, preferred_element_type=jnp.float32) * scale
  keys = key0 + jax.lax.broadcasted_iota(jnp.int32, s.shape, 1)
  ok = keys < ends
  return jnp.where(ok, s, NEG_INF), ok


def _fwd_kernel(n_kv_ref, first_q_ref, ends_ref, q_ref, k_ref, v_ref, o_ref, lse_ref,
                m_scr, l_scr, acc_scr, *, scale):
  del first_q_ref
  qi, j = pl.program_id(2), pl.program_id(3)
  block_k = k_ref.shape[0]

  @pl.when(j == 0)
  def _init():
    m_scr[...] = jnp.full(m_scr.shape, NEG_INF, jnp.float32)
    l_scr[...] = jnp.zeros(l_scr.shape, jnp.float32)
    acc_scr[...] = jnp.zeros(acc_scr.shape, jnp.float32)

  @pl.when(j < n_kv_ref[qi])
  def _step():
    v = v_ref[...]
    s, ok = _scores(q_ref[...], k_ref[...], j * block_k, ends_ref[...], scale)
    m_prev = m_scr[...]
    m_new = jnp.maximum(m_prev, s.max(axis=1, keepdims=True))
    p = jnp.where(ok, jnp.exp(s - m_new), 0.0)
    corr = jnp.exp(m_prev - m_new)
    l_scr[...] = l_scr[...] * corr + p.sum(axis=1, keepdims=True)
    acc_scr[...] = acc_scr[...] * corr + jnp.dot(p.astype(v.dtype), v,
                                                 preferred_element_type=jnp.float32)
    m_scr[...] = m_new

  @pl.when(j == pl.num_programs(3) - 1)
  def _finish():
    l = l_scr[...]
    seen = l > 0  # padded queries see nothing: output 0, lse 0
    safe_l = jnp.where(seen, l, 1.0)
    o_ref[...] = (acc_scr[...] / safe_l).astype(o_ref.dtype)
    lse_ref[...] = jnp.where(seen, m_scr[...] + jnp.log(safe_l), 0.0)


def _probs_and_ds(q, k, v, do, lse, delta, key0, ends, scale):
  s, ok = _scores(q, k, key0, ends, scale)
  p = jnp.where(ok, jnp.exp(s - lse), 0.0)
  dp = jax.lax.dot_general(do, v, _NT, preferred_element_type=jnp.float32)
  return p, p * (dp - delta)


def _dq_kernel(n_kv_ref, first_q_ref, ends_ref, q_ref, k_ref, v_ref, do_ref, lse_ref,
               delta_ref, dq_ref, dq_scr, *, scale):
  del first_q_ref
  qi, j = pl.program_id(2), pl.program_id(3)
  k = k_ref[...]

  @pl.when(j == 0)
  def _init():
    dq_scr[...] = jnp.zeros(dq_scr.shape, jnp.float32)

  @pl.when(j < n_kv_ref[qi])
  def _step():
    _, ds = _probs_and_ds(q_ref[...], k, v_ref[...], do_ref[...], lse_ref[...],
                          delta_ref[...], j * k.shape[0], ends_ref[...], scale)
    dq_scr[...] += jnp.dot(ds.astype(k.dtype), k, preferred_element_type=jnp.float32) * scale

  @pl.when(j == pl.num_programs(3) - 1)
  def _finish():
    dq_ref[...] = dq_scr[...].astype(dq_ref.dtype)


def _dkv_kernel(n_kv_ref, first_q_ref, ends_ref, q_ref, k_ref, v_ref, do_ref, lse_ref,
                delta_ref, dk_ref, dv_ref, dk_scr, dv_scr, *, scale):
  del n_kv_ref
  kb, i = pl.program_id(2), pl.program_id(3)
  q, do = q_ref[...], do_ref[...]

  @pl.when(i == 0)
  def _init():
    dk_scr[...] = jnp.zeros(dk_scr.shape, jnp.float32)
    dv_scr[...] = jnp.zeros(dv_scr.shape, jnp.float32)

  @pl.when(i >= first_q_ref[kb])
  def _step():
    k = k_ref[...]
    p, ds = _probs_and_ds(q, k, v_ref[...], do, lse_ref[...], delta_ref[...],
                          kb * k.shape[0], ends_ref[...], scale)
    dv_scr[...] += jax.lax.dot_general(p.astype(do.dtype), do, _TN,
                                       preferred_element_type=jnp.float32)
    dk_scr[...] += jax.lax.dot_general(ds.astype(q.dtype), q, _TN,
                                       preferred_element_type=jnp.float32) * scale

  @pl.when(i == pl.num_programs(3) - 1)
  def _finish():
    dk_ref[...] = dk_scr[...].astype(dk_ref.dtype)
    dv_ref[...] = dv_scr[...].astype(dv_ref.dtype)


# Index maps take the grid indices, then the scalar-prefetch refs (n_kv, first_q).
def _row_block(b, h, i, j, n_kv, first_q):
  return b, h, i, 0


def _visited_key_block(b, h, i, j, n_kv, first_q):
  """Key block j while query block i needs it, then the last needed one (no new DMA)."""
  return b, h, jnp.minimum(j, jnp.maximum(n_kv[i] - 1, 0)), 0


def _visiting_query_block(num_q_blocks):
  def index_map(b, h, kb, i, n_kv, first_q):
    """Query block i once it sees key block kb; before that the first one that does (a
    padding key block is seen by none: first_q = nq, clamped to the last block)."""
    return b, h, jnp.minimum(jnp.maximum(i, first_q[kb]), num_q_blocks - 1), 0
  return index_map


def _key_row_block(b, h, kb, i, n_kv, first_q):
  return b, h, kb, 0


def _ends_for_rows(index_map):
  return lambda *idx: (index_map(*idx)[2], 0)


def _run(kernel, grid, in_specs, out_specs, out_shape, scratch, plan_arrays, interpret,
         *operands):
  """pallas_call with the plan (n_kv, first_q) scalar-prefetched ahead of `operands`."""
  return pl.pallas_call(
      kernel,
      grid_spec=pltpu.PrefetchScalarGridSpec(num_scalar_prefetch=2, grid=grid,
                                             in_specs=in_specs, out_specs=out_specs,
                                             scratch_shapes=scratch),
      out_shape=out_shape,
      # The last grid axis carries the scratch accumulators; the others may be split
      # across TensorCores (megacore on v4 / v5p).
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")),
      interpret=interpret,
  )(*(jnp.asarray(a) for a in plan_arrays), *operands)


def _query_major_specs(block_q, block_k, head_dim):
  """Forward and dq (grid over query blocks, key blocks innermost): ends, a query-row block,
  a visited key/value block, a row vector."""
  return (pl.BlockSpec((block_q, 1), _ends_for_rows(_row_block)),
          pl.BlockSpec((None, None, block_q, head_dim), _row_block),
          pl.BlockSpec((None, None, block_k, head_dim), _visited_key_block),
          pl.BlockSpec((None, None, block_q, 1), _row_block))


def _forward(q, k, v, patch_nums, scale, block_q, block_k, interpret, tuning):
  del tuning  # the GPU layout's launch settings; Mosaic's come from the block specs
  B, H, Lp, K = q.shape
  _, _, ends, n_kv, first_q = block_sparse.plan(patch_nums, block_q, block_k)
  ends_spec, q_spec, kv_spec, row_vec = _query_major_specs(block_q, block_k, K)
  return _run(
      functools.partial(_fwd_kernel, scale=scale), (B, H, Lp // block_q, max(int(n_kv.max()), 1)),
      [ends_spec, q_spec, kv_spec, kv_spec], [q_spec, row_vec],
      [jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((B, H, Lp, 1), jnp.float32)],
      [pltpu.VMEM((block_q, 1), jnp.float32), pltpu.VMEM((block_q, 1), jnp.float32),
       pltpu.VMEM((block_q, K), jnp.float32)],
      (n_kv, first_q), interpret, jnp.asarray(ends).reshape(Lp, 1), q, k, v)


def _bwd_rule(patch_nums, scale, block_q, block_k, interpret, tuning, res, do):
  del tuning
  q, k, v, o, lse = res
  B, H, Lp, K = q.shape
  _, _, ends, n_kv, first_q = block_sparse.plan(patch_nums, block_q, block_k)
  nq, nk = Lp // block_q, Lp // block_k
  delta = jnp.sum(do.astype(jnp.float32) * o.astype(jnp.float32), axis=-1, keepdims=True)
  operands = (jnp.asarray(ends).reshape(Lp, 1), q, k, v, do, lse, delta)

  ends_spec, q_spec, kv_spec, row_vec = _query_major_specs(block_q, block_k, K)
  dq = _run(
      functools.partial(_dq_kernel, scale=scale), (B, H, nq, max(int(n_kv.max()), 1)),
      [ends_spec, q_spec, kv_spec, kv_spec, q_spec, row_vec, row_vec],
      q_spec, jax.ShapeDtypeStruct(q.shape, q.dtype),
      [pltpu.VMEM((block_q, K), jnp.float32)], (n_kv, first_q), interpret, *operands)

  visiting = _visiting_query_block(nq)
  q_seen = pl.BlockSpec((None, None, block_q, K), visiting)
  vec_seen = pl.BlockSpec((None, None, block_q, 1), visiting)
  k_own = pl.BlockSpec((None, None, block_k, K), _key_row_block)
  dk, dv = _run(
      functools.partial(_dkv_kernel, scale=scale), (B, H, nk, nq),
      [pl.BlockSpec((block_q, 1), _ends_for_rows(visiting)), q_seen, k_own,
       k_own, q_seen, vec_seen, vec_seen],
      [k_own, k_own],
      [jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
      [pltpu.VMEM((block_k, K), jnp.float32), pltpu.VMEM((block_k, K), jnp.float32)],
      (n_kv, first_q), interpret, *operands)
  return dq, dk, dv


_attention_bhlk = block_sparse.differentiable(_forward, _bwd_rule)


def block_sparse_attention_tpu(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, patch_nums, *,
                               scale: float = 1.0, block_q: int = 128, block_k: int = 128,
                               interpret=None):
  """Scale-causal attention with the Mosaic-layout kernels; pads L to the block size.

  `interpret`: None (compile on TPU, interpret elsewhere), a bool, or
  `pltpu.InterpretParams()`."""
  if interpret is None:
    interpret = jax.default_backend() != "tpu"
  return block_sparse.run_padded(_attention_bhlk, q_BxLxHxK, k_BxLxHxK, v_BxLxHxK,
                                 patch_nums, scale, block_q, block_k, interpret)
