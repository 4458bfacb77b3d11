"""The scale mask against its definition, and attention paths against a NumPy reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from varjax import scales
from varjax.kernels import attention as attn
from varjax.kernels import mask as mask_lib

schedules = st.lists(st.integers(1, 12), min_size=1, max_size=7, unique=True).map(
    lambda xs: tuple(sorted(xs)))


@settings(max_examples=60, deadline=None)
@given(schedules, st.sampled_from([8, 16, 128]))
def test_mask_is_the_scale_causal_definition(pn, block):
  # Definition written out token by token, independent of scale_ids / boundaries.
  owner = [k for k, p in enumerate(pn) for _ in range(p * p)]
  length = len(owner)
  expected = np.array([[owner[j] <= owner[i] for j in range(length)] for i in range(length)])
  np.testing.assert_array_equal(mask_lib.dense_mask(pn), expected)
  lp = mask_lib.padded_length(length, block)
  padded = mask_lib.dense_mask(pn, padded_to=lp)
  np.testing.assert_array_equal(padded[:length, :length], expected)
  assert not padded[length:].any() and not padded[:, length:].any()
  ends = mask_lib.block_key_end(pn, block, block)
  for qb, n_kb in enumerate(ends):  # skipped key blocks are fully masked
    rows = padded[qb * block:(qb + 1) * block]
    assert not rows[:, n_kb * block:].any()
    if rows.any():
      assert rows[:, (n_kb - 1) * block:n_kb * block].any()


def test_the_kernels_plan_visits_the_key_blocks_of_the_mask():
  """The block kernels' plan takes its key blocks from the mask module, also for the
  backward's 64-wide blocks on the forward's padding. By hand from the 256 px scale ends
  1, 5, 14, 30, 55, 91, 155, 255, 424, 680: a block sees keys up to the end of the scale
  of its last query, e.g. queries 0-127 up to 155 -> 2 key blocks of 128."""
  from varjax.kernels import block_sparse
  pn = scales.SCHEDULES["256"]
  assert list(mask_lib.block_key_end(pn, 128, 128)) == [2, 4, 4, 6, 6, 6]
  _, lp, _, n_kv, _ = block_sparse.plan(pn, 128, 128)
  assert (lp, list(n_kv)) == (768, [2, 4, 4, 6, 6, 6])
  _, _, _, n_kv, _ = block_sparse.plan(pn, 64, 64, padded_length=768)
  assert list(n_kv) == [2, 3, 4, 7, 7, 7, 11, 11, 11, 11, 11, 0]  # the last: pad queries only


def test_schedules_and_allowed_fraction():
  assert scales.num_tokens(scales.SCHEDULES["256"]) == 680
  assert scales.num_tokens(scales.SCHEDULES["512"]) == 2240
  assert mask_lib.allowed_fraction(scales.SCHEDULES["256"]) == pytest.approx(0.619, abs=5e-4)
  assert mask_lib.padded_length(680, 128) == 768
  with pytest.raises(ValueError, match="increase strictly"):
    scales.validate((1, 3, 2))


def _reference(q, k, v, allowed):
  s = np.einsum("bqhk,bthk->bhqt", q, k)
  s = np.where(allowed[None, None], s, -np.inf)
  p = np.exp(s - s.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  return np.einsum("bhqt,bthk->bqhk", p, v)


@pytest.mark.parametrize("pn, heads", [((1, 2, 3, 4), 2), ((1, 2, 4, 6), 3)])
def test_xla_attention_matches_numpy(pn, heads):
  length = scales.num_tokens(pn)
  q, k, v = (np.random.default_rng(i).normal(size=(2, length, heads, 16)).astype(np.float32)
             for i in range(3))
  out = attn.attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), pn, impl="xla")
  np.testing.assert_allclose(out, _reference(q, k, v, mask_lib.dense_mask(pn)), atol=1e-5)


def test_cached_attention_equals_full_masked_attention_scale_by_scale():
  pn = (1, 2, 3, 4)
  bounds = scales.boundaries(pn)
  length = bounds[-1]
  q, k, v = (jax.random.normal(jax.random.key(i), (2, length, 2, 8)) for i in range(3))
  full = attn.attention(q, k, v, pn, impl="xla")
  cache_k = jnp.zeros_like(k)
  cache_v = jnp.zeros_like(v)
  for s in range(len(pn)):
    lo, hi = bounds[s], bounds[s + 1]
    cache_k = cache_k.at[:, lo:hi].set(k[:, lo:hi])
    cache_v = cache_v.at[:, lo:hi].set(v[:, lo:hi])
    out = attn.cached_attention(q[:, lo:hi], cache_k, cache_v, hi)
    np.testing.assert_allclose(out, full[:, lo:hi], atol=1e-5)


def test_bad_impl_and_shape_are_clear():
  q = jnp.zeros((1, 5, 1, 8))
  with pytest.raises(ValueError, match="unknown attention impl"):
    attn.attention(q, q, q, (1, 2), impl="flash")
  with pytest.raises(ValueError, match="has 14"):
    attn.attention(q, q, q, (1, 2, 3), impl="xla")


def _max_rel_err(a, b):
  a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
  return float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b)))))


CASES = [((1, 2, 3, 4), 1, 2, jnp.float32), ((1, 2, 3, 4, 5, 6, 8), 2, 3, jnp.float32),
         ((1, 2, 3, 4, 5, 6, 8), 2, 4, jnp.bfloat16)]


@pytest.mark.parametrize("impl", ["pallas", "splash"])
@pytest.mark.parametrize("pn, batch, heads, dtype", CASES)
def test_kernels_match_xla_forward_and_gradients(pn, batch, heads, dtype, impl):
  length = scales.num_tokens(pn)
  q, k, v = (jax.random.normal(jax.random.key(i), (batch, length, heads, 16), dtype)
             for i in range(3))
  ct = jax.random.normal(jax.random.key(7), (batch, length, heads, 16))
  up = lambda x: x.astype(jnp.float32)
  loss = lambda impl: lambda q, k, v: jnp.sum(up(attn.attention(q, k, v, pn, impl=impl)) * ct)
  # The oracle sees the same (rounded) inputs in fp32.
  ref_loss = lambda q, k, v: loss("xla")(up(q), up(k), up(v))
  tol = 1e-5 if dtype == jnp.float32 else 2e-2
  out = attn.attention(q, k, v, pn, impl=impl)
  assert out.dtype == dtype
  assert _max_rel_err(out, attn.attention(up(q), up(k), up(v), pn, impl="xla")) <= tol
  grads = jax.grad(loss(impl), (0, 1, 2))(q, k, v)
  ref = jax.grad(ref_loss, (0, 1, 2))(q, k, v)
  for g, r in zip(grads, ref):
    assert _max_rel_err(g, r) <= tol


@pytest.mark.parametrize("impl", ["pallas", "splash"])
@pytest.mark.parametrize("heads, dtype", [(2, jnp.float32), (3, jnp.bfloat16)])
def test_kernels_match_xla_on_the_256px_schedule(heads, dtype, impl):
  pn = scales.SCHEDULES["256"]  # L = 680, padded to 768 with 128-wide blocks
  q, k, v = (jax.random.normal(jax.random.key(i), (1, 680, heads, 64), dtype)
             for i in range(3))
  ct = jax.random.normal(jax.random.key(7), (1, 680, heads, 64))
  up = lambda x: x.astype(jnp.float32)
  tol = 1e-5 if dtype == jnp.float32 else 2e-2
  f = lambda impl: lambda q, k, v: jnp.sum(up(attn.attention(up(q) if impl == "xla" else q,
                                                             up(k) if impl == "xla" else k,
                                                             up(v) if impl == "xla" else v,
                                                             pn, impl=impl)) * ct)
  for g, r in zip(jax.grad(f(impl), (0, 1, 2))(q, k, v), jax.grad(f("xla"), (0, 1, 2))(q, k, v)):
    assert _max_rel_err(g, r) <= tol


@settings(max_examples=5, deadline=None)
@given(schedules, st.sampled_from(["pallas", "splash"]))
def test_kernels_match_xla_on_random_schedules(pn, impl):
  length = scales.num_tokens(pn)
  q, k, v = (jax.random.normal(jax.random.key(i), (1, length, 2, 8)) for i in range(3))
  assert _max_rel_err(attn.attention(q, k, v, pn, impl=impl),
                      attn.attention(q, k, v, pn, impl="xla")) <= 1e-5


def test_splash_under_shard_map_on_a_mesh():
  mesh = jax.make_mesh((1, 1, 1), ("data", "fsdp", "tensor"),
                       axis_types=(jax.sharding.AxisType.Explicit,) * 3)
  pn = (1, 2, 3, 4)
  q, k, v = (jax.random.normal(jax.random.key(i), (2, 30, 2, 8)) for i in range(3))
  out = attn.attention(q, k, v, pn, impl="splash", mesh=mesh, scale=0.5)
  assert _max_rel_err(out, attn.attention(q, k, v, pn, impl="xla", scale=0.5)) <= 1e-5


_SHARDED = """
import jax, jax.numpy as jnp, numpy as np
from varjax.kernels import attention as attn
assert jax.device_count() == 8
mesh = jax.make_mesh((2, 1, 4), ("data", "fsdp", "tensor"),
                     axis_types=(jax.sharding.AxisType.Explicit,) * 3)
pn = (1, 2, 3, 4, 5)
q, k, v = (jax.random.normal(jax.random.key(i), (2, 55, 4, 8)) for i in range(3))
f = lambda impl, **kw: lambda q, k, v: jnp.sum(attn.attention(q, k, v, pn, impl=impl, **kw) ** 2)
ref = jax.grad(f("xla"), (0, 1, 2))(q, k, v)
with jax.set_mesh(mesh):  # as in training: the step runs under the mesh
  got = jax.grad(f("splash", mesh=mesh), (0, 1, 2))(q, k, v)
  out = attn.attention(q, k, v, pn, impl="splash", mesh=mesh)
for g, r in zip(got, ref):
  assert float(jnp.max(jnp.abs(g - r)) / jnp.max(jnp.abs(r))) < 1e-5
assert out.sharding.spec[2] == "tensor", out.sharding
print("ok")
"""


def test_splash_head_sharded_on_8_devices_matches_xla():
  import os
  import subprocess
  import sys
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
         "JAX_PLATFORMS": "cpu"}
  out = subprocess.run([sys.executable, "-c", _SHARDED], capture_output=True, text=True,
                       env=env, timeout=300)
  assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-3000:]


def _tpu_kernel(interpret=True, block=None):
  from varjax.kernels.block_sparse_tpu import block_sparse_attention_tpu

  def run(q, k, v, pn):
    b = block or attn.pallas_block(q.shape[1])
    return block_sparse_attention_tpu(q, k, v, pn, block_q=b, block_k=b, interpret=interpret)
  return run


@pytest.mark.parametrize("pn, batch, heads, dtype", CASES)
def test_tpu_layout_kernel_matches_xla_forward_and_gradients(pn, batch, heads, dtype):
  length = scales.num_tokens(pn)
  q, k, v = (jax.random.normal(jax.random.key(i), (batch, length, heads, 16), dtype)
             for i in range(3))
  ct = jax.random.normal(jax.random.key(7), (batch, length, heads, 16))
  up = lambda x: x.astype(jnp.float32)
  run = _tpu_kernel()
  tol = 1e-5 if dtype == jnp.float32 else 2e-2
  out = run(q, k, v, pn)
  assert out.dtype == dtype
  assert _max_rel_err(out, attn.attention(up(q), up(k), up(v), pn, impl="xla")) <= tol
  grads = jax.grad(lambda q, k, v: jnp.sum(up(run(q, k, v, pn)) * ct), (0, 1, 2))(q, k, v)
  ref = jax.grad(lambda q, k, v: jnp.sum(attn.attention(up(q), up(k), up(v), pn, impl="xla")
                                         * ct), (0, 1, 2))(q, k, v)
  for g, r in zip(grads, ref):
    assert _max_rel_err(g, r) <= tol


@pytest.mark.parametrize("variant", ["gpu", "tpu"])
def test_pallas_kernels_under_the_tpu_interpreter(variant):
  """JAX's TPU interpreter follows Mosaic's memory model (DMAs, VMEM, SMEM scalars)."""
  from jax.experimental.pallas import tpu as pltpu
  from varjax.kernels.block_sparse import block_sparse_attention
  pn = (1, 2, 3, 4, 5, 6, 8)
  q, k, v = (jax.random.normal(jax.random.key(i), (1, 155, 2, 64)) for i in range(3))
  if variant == "tpu":
    run = lambda q, k, v: _tpu_kernel(pltpu.InterpretParams(), 128)(q, k, v, pn)
  else:
    run = lambda q, k, v: block_sparse_attention(q, k, v, pn, block_q=128, block_k=128,
                                                 interpret=pltpu.InterpretParams())
  loss = lambda fn: lambda q, k, v: jnp.sum(fn(q, k, v) ** 2)
  ref = lambda q, k, v: attn.attention(q, k, v, pn, impl="xla")
  assert _max_rel_err(run(q, k, v), ref(q, k, v)) <= 1e-5
  for g, r in zip(jax.grad(loss(run), (0, 1, 2))(q, k, v), jax.grad(loss(ref), (0, 1, 2))(q, k, v)):
    assert _max_rel_err(g, r) <= 1e-5


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_tpu_layout_kernel_on_the_256px_schedule(dtype):
  pn = scales.SCHEDULES["256"]
  q, k, v = (jax.random.normal(jax.random.key(i), (1, 680, 2, 64), dtype) for i in range(3))
  ct = jax.random.normal(jax.random.key(7), (1, 680, 2, 64))
  up = lambda x: x.astype(jnp.float32)
  run = _tpu_kernel(block=128)
  tol = 1e-5 if dtype == jnp.float32 else 2e-2
  got = jax.grad(lambda q, k, v: jnp.sum(up(run(q, k, v, pn)) * ct), (0, 1, 2))(q, k, v)
  ref = jax.grad(lambda q, k, v: jnp.sum(attn.attention(up(q), up(k), up(v), pn, impl="xla")
                                         * ct), (0, 1, 2))(q, k, v)
  for g, r in zip(got, ref):
    assert _max_rel_err(g, r) <= tol


def test_tpu_layout_fetches_only_the_key_blocks_the_mask_allows():
  """Pallas copies a block only when its index changes between consecutive grid steps, so
  the blocks the index maps produce are exactly the DMAs. Checked against the dense mask:
  a block pair is fetched iff some query in the one may see some key in the other."""
  from varjax.kernels import block_sparse, block_sparse_tpu as tpu
  pn, block = scales.SCHEDULES["256"], 128
  _, lp, _, n_kv, first_q = block_sparse.plan(pn, block, block)
  nq = nk = lp // block
  allowed = mask_lib.dense_mask(pn, padded_to=lp).reshape(nq, block, nk, block).any((1, 3))

  def fetched(index_map, outer, inner):
    pairs, last = set(), None
    for o in range(outer):
      for i in range(inner):
        idx = tuple(int(x) for x in index_map(0, 0, o, i, n_kv, first_q))
        if idx != last:
          pairs.add((o, idx[2]))
        last = idx
    return pairs

  want = {(i, j) for i in range(nq) for j in range(nk) if allowed[i, j]}
  # Forward / dq: query block i (grid axis 2) over key blocks (axis 3).
  kv_pairs = fetched(tpu._visited_key_block, nq, int(n_kv.max()))
  # The grid cannot fetch nothing: a query block of pure padding keeps block 0 resident.
  assert kv_pairs - want <= {(i, 0) for i in range(nq) if n_kv[i] == 0}
  assert want <= kv_pairs
  # dk/dv: key block j (axis 2) over query blocks (axis 3).
  q_pairs = {(i, j) for j, i in fetched(tpu._visiting_query_block(nq), nk, nq)}
  assert q_pairs - want <= {(nq - 1, j) for j in range(nk) if first_q[j] == nq}
  assert want <= q_pairs
  assert (len(want), nq * nk) == (28, 36)  # the figure in the kernels' docstrings


def _kernel_matmuls(jaxpr, inside=False):
  """(operand dtypes, result dtype) of every dot_general inside a pallas_call, walking
  nested jaxprs (custom VJP, jit, the kernels' loops)."""
  from jax.extend import core as jcore
  for eqn in jaxpr.eqns:
    if inside and eqn.primitive.name == "dot_general":
      yield tuple(str(v.aval.dtype) for v in eqn.invars), str(eqn.outvars[0].aval.dtype)
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        sub = sub.jaxpr if isinstance(sub, jcore.ClosedJaxpr) else sub
        if isinstance(sub, jcore.Jaxpr):
          yield from _kernel_matmuls(sub, inside or eqn.primitive.name == "pallas_call")


@pytest.mark.parametrize("layout", ["gpu", "tpu"])
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_kernel_matmuls_take_the_input_dtype_and_accumulate_in_fp32(layout, dtype):
  """bf16 inputs must reach the tensor cores / MXU as bf16: an upcast before a matmul
  would still pass the accuracy tests but run the kernel at fp32 matmul speed."""
  from varjax.kernels.block_sparse import block_sparse_attention
  from varjax.kernels.block_sparse_tpu import block_sparse_attention_tpu
  fn = {"gpu": block_sparse_attention, "tpu": block_sparse_attention_tpu}[layout]
  x = jax.ShapeDtypeStruct((1, 30, 2, 16), jnp.dtype(dtype))
  loss = lambda q, k, v: jnp.sum(fn(q, k, v, (1, 2, 3, 4), block_q=8, block_k=8,
                                    interpret=True).astype(jnp.float32))
  matmuls = list(_kernel_matmuls(jax.make_jaxpr(jax.grad(loss, (0, 1, 2)))(x, x, x).jaxpr))
  # forward: q k^T, p v; dq: q k^T, do v^T, ds k; dk/dv: q k^T, p^T do, do v^T, ds^T q
  assert len(matmuls) == 9
  assert set(matmuls) == {((dtype, dtype), "float32")}


@pytest.mark.parametrize("pn, block, tuning_blocks, dtype", [
    ((1, 2, 3, 4, 5, 6, 8), 16, (8, 8), jnp.float32),
    ((1, 2, 3, 4, 5, 6, 8), 16, (8, 16), jnp.bfloat16),
    (scales.SCHEDULES["256"], 128, (64, 64), jnp.float32),  # GPU_TUNING's, L = 680 -> 768
])
def test_gpu_layout_with_smaller_backward_blocks_matches_xla(pn, block, tuning_blocks, dtype):
  """The backward plans its own (smaller) blocks on the forward's padding."""
  from varjax.kernels.block_sparse import TritonTuning, block_sparse_attention
  tuning = TritonTuning(*tuning_blocks)
  length = scales.num_tokens(pn)
  q, k, v = (jax.random.normal(jax.random.key(i), (2, length, 2, 64), dtype) for i in range(3))
  ct = jax.random.normal(jax.random.key(7), (2, length, 2, 64))
  up = lambda x: x.astype(jnp.float32)
  run = lambda q, k, v: block_sparse_attention(q, k, v, pn, block_q=block, block_k=block,
                                               tuning=tuning)
  ref = lambda q, k, v: attn.attention(up(q), up(k), up(v), pn, impl="xla")
  tol = 1e-5 if dtype == jnp.float32 else 2e-2
  loss = lambda fn: lambda q, k, v: jnp.sum(up(fn(q, k, v)) * ct)
  for g, r in zip(jax.grad(loss(run), (0, 1, 2))(q, k, v), jax.grad(loss(ref), (0, 1, 2))(q, k, v)):
    assert _max_rel_err(g, r) <= tol


def test_backward_blocks_that_do_not_divide_the_padding_are_refused():
  from varjax.kernels.block_sparse import TritonTuning, block_sparse_attention
  pn = (1, 2, 3, 4)
  x = jnp.ones((1, 30, 2, 16))
  run = lambda q: block_sparse_attention(q, x, x, pn, block_q=16, block_k=16,
                                         tuning=TritonTuning(12, 12))
  with pytest.raises(ValueError, match=r"blocks \(12, 12\) must divide the padded length 32"):
    jax.grad(lambda q: jnp.sum(run(q)))(x)
