"""One attention entry point for the VAR model; `impl` picks the implementation.

Layout B L H K (batch, length, heads, head dim), as `jax.nn.dot_product_attention`. VAR's
q and k are L2-normalised and q carries a learned per-head scale, so the softmax scale is
1 there; `scale` stays an argument for generality.

Implementations: `xla` (dense, with the scale mask: the CPU path and the test oracle),
`cudnn` (`jax.nn.dot_product_attention(implementation="cudnn")`, GPU, bf16/fp16),
`pallas` (our block-sparse kernel: `block_sparse_tpu.py` on TPU, `block_sparse.py` on GPU
and, interpreted, on CPU) and `splash` (JAX's TPU splash attention with the VAR mask,
`splash.py`); the kernels run in interpret mode off their target.

Sharding: XLA cannot partition a Pallas kernel (a custom call), so on a mesh the kernels
run under `jax.shard_map`, each device on its own batch rows (over `data`, `fsdp`) and
heads (over `tensor`); without it the partitioner would gather q, k and v whole onto every
device. The mesh is the `mesh` argument or the one `jax.set_mesh` put in context (the
train and eval steps do), and its platform, not the process's default backend, decides
compiled or interpreted kernels and what `auto` picks (so a step compiled ahead of time
for a TPU topology on a CPU host gets TPU kernels).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from varjax.config import ATTN_IMPLS
from varjax.errors import VarjaxError
from varjax.kernels import mask as mask_lib

IMPLEMENTATIONS = ATTN_IMPLS  # the values of the config's model.attn_impl


def resolve_impl(impl: str, dtype=jnp.float32, platform: str | None = None) -> str:
  """`auto` -> splash on TPU, cudnn on GPU for bf16/fp16, xla otherwise. An impl that cannot
  run on `platform` (default: the default backend's) raises VarjaxError."""
  if impl not in IMPLEMENTATIONS:
    raise ValueError(f"unknown attention impl {impl!r}; choose from {', '.join(IMPLEMENTATIONS)}")
  backend = platform or jax.default_backend()
  if impl == "cudnn":
    if backend != "gpu":
      raise VarjaxError(
          f"attention cudnn needs a GPU; this process has {', '.join(sorted(_platforms()))} "
          f"(the target is {backend}): use model.attn_impl=auto, xla or pallas")
    if jnp.dtype(dtype) not in (jnp.bfloat16, jnp.float16):
      raise VarjaxError(f"attention cudnn needs bfloat16 or float16, got {jnp.dtype(dtype)}: "
                        "set model.dtype=bfloat16 or use model.attn_impl=auto")
  if impl == "auto":
    if backend == "tpu":
      return "splash"
    gpu = backend == "gpu"
    return "cudnn" if gpu and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) else "xla"
  return impl


def _platforms() -> list[str]:
  """The platforms this process can use (cpu, gpu, tpu)."""
  import jax.extend.backend
  return list(jax.extend.backend.backends())


def attention(q_BxLxHxK: jax.Array, k_BxLxHxK: jax.Array, v_BxLxHxK: jax.Array,
              patch_nums, *, scale: float = 1.0, impl: str = "auto",
              mesh: jax.sharding.Mesh | None = None) -> jax.Array:
  """Scale-causal attention over a full token pyramid; returns o_BxLxHxK.

  `mesh`: where the kernel impls run per device (default: the context mesh, if any)."""
  length = q_BxLxHxK.shape[1]
  allowed_LxL = mask_lib.dense_mask(patch_nums)
  if allowed_LxL.shape[0] != length:
    raise ValueError(f"sequence has {length} tokens but schedule {tuple(patch_nums)} has "
                     f"{allowed_LxL.shape[0]}")
  if mesh is None:
    context = jax.sharding.get_abstract_mesh()
    mesh = None if context.empty else context
  platform = target_platform(mesh)
  impl = resolve_impl(impl, q_BxLxHxK.dtype, platform)
  if impl in ("splash", "pallas"):
    kernel = functools.partial(_kernel, impl=impl, patch_nums=tuple(patch_nums), scale=scale,
                               platform=platform)
    return per_device(kernel, mesh, q_BxLxHxK, k_BxLxHxK, v_BxLxHxK)
  if impl == "cudnn":
    return jax.nn.dot_product_attention(
        q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, mask=jnp.asarray(allowed_LxL)[None, None],
        scale=scale, implementation="cudnn")
  return dense_attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, allowed_LxL, scale)


def target_platform(mesh) -> str:
  """The platform of a mesh's devices (a concrete or abstract mesh), else the default
  backend's."""
  if mesh is not None:
    device = getattr(mesh.abstract_mesh, "abstract_device", None)
    if device is not None and device.platform:
      return device.platform
  return jax.default_backend()


def per_device(kernel, mesh, q_BxLxHxK, k_BxLxHxK, v_BxLxHxK):
  """kernel(q, k, v) on each device's batch rows (data, fsdp) and heads (tensor). A dim the
  axes do not divide (model init's batch of 1, say) is replicated over them instead."""
  if mesh is None or mesh.size == 1:
    return kernel(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK)
  sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))
  batch, _, heads, _ = q_BxLxHxK.shape
  batch_axes = tuple(a for a in ("data", "fsdp") if a in sizes)
  if batch % math.prod(sizes[a] for a in batch_axes):
    batch_axes = ()
  head_axis = "tensor" if "tensor" in sizes and heads % sizes["tensor"] == 0 else None
  spec = P(batch_axes or None, None, head_axis, None)
  q, k, v = q_BxLxHxK, k_BxLxHxK, v_BxLxHxK
  if jax.sharding.AxisType.Explicit in mesh.axis_types:
    # Explicit axes: the arrays carry their sharding in their type and must match in_specs
    # (Auto axes, as the training mesh has, are resharded by shard_map itself).
    sharding = jax.sharding.NamedSharding(mesh, spec)
    q, k, v = (jax.reshard(x, sharding) for x in (q, k, v))
  return jax.shard_map(kernel, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec,
                       check_vma=False)(q, k, v)


def _kernel(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, *, impl, patch_nums, scale, platform):
  """One device's splash or Pallas attention, compiled on its target, else interpreted."""
  if impl == "splash":
    from varjax.kernels.splash import splash_attention
    # Splash's key blocks must be multiples of the 128 TPU lanes.
    return splash_attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, patch_nums, scale=scale,
                            block=128, interpret=platform != "tpu")
  if platform == "tpu":
    from varjax.kernels.block_sparse_tpu import block_sparse_attention_tpu
    # Mosaic wants key blocks of whole 128-lane vregs.
    return block_sparse_attention_tpu(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, patch_nums,
                                      scale=scale, block_q=128, block_k=128, interpret=False)
  from varjax.kernels.block_sparse import GPU_TUNING, TritonTuning, block_sparse_attention
  block = pallas_block(q_BxLxHxK.shape[1])
  # Interpret mode keeps the forward's blocks: smaller backward blocks would only
  # multiply the interpreter's steps.
  tuning = GPU_TUNING if platform == "gpu" else TritonTuning()
  return block_sparse_attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, patch_nums, scale=scale,
                                block_q=block, block_k=block, tuning=tuning,
                                interpret=platform != "gpu")


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
