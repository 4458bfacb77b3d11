"""One table from the model's logical axes to mesh axes, and the shardings built from it.

Parameters carry logical names (varjax.models.var.LOGICAL_AXES); activations get
`nn.with_logical_constraint`. The same table serves both: flax skips a mesh axis already
used by an earlier dimension, so the residual stream [batch, length, embed] is split over
(data, fsdp) on batch only, while a weight [embed, mlp] is split fsdp x tensor.

    batch  -> data, fsdp     data parallel and fully-sharded data parallel share the batch
    embed  -> fsdp           weights are gathered per layer (ZeRO-3 / FSDP)
    heads, mlp, vocab -> tensor    Megatron-style tensor parallelism
    adaln, length, kv, latent, classes -> replicated

AdaLN outputs (gamma, scale, shift: [B, 6, C]) are computed once per image, so splitting
them over `tensor` saves no compute; their weights [C, 6, C] are still split over fsdp.
Keeping them whole also avoids a miscompile we hit: with the head's AdaLN output split over
`tensor` on a (2, 2, 2) mesh, XLA (jax 0.12, CPU) returned wrong gradients for every block
while the forward pass was right (tests/test_parallel.py checks that mesh against one
device).

A mesh axis that does not divide a dimension is dropped for that array (it is
replicated along that axis) instead of failing: small test models have odd sizes.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv", None),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("adaln", None),
    ("latent", None),
    ("classes", None),
)
BATCH_AXES = ("data", "fsdp")


def rules_context():
  """`with rules_context():` makes the model's activation constraints use RULES."""
  return nn.logical_axis_rules(RULES)


def _fit(spec: P, shape: tuple[int, ...], mesh: Mesh) -> P:
  """Drops mesh axes that do not divide their dimension."""
  out = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    names = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    kept = []
    for name in names:
      size = int(np.prod([mesh.shape[n] for n in kept + [name]]))
      if dim % size == 0:
        kept.append(name)
    out.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
  return P(*out)


def logical_sharding(logical_axes: tuple, shape: tuple[int, ...], mesh: Mesh) -> NamedSharding:
  spec = nn.logical_to_mesh_axes(logical_axes, RULES)
  return NamedSharding(mesh, _fit(spec, shape, mesh))


def param_shardings(boxed_tree, mesh: Mesh):
  """NamedShardings for a tree of `nn.Partitioned` (or plain) abstract parameters; plain
  leaves (no logical names) are replicated. Returns the unboxed tree structure."""
  def one(leaf):
    if isinstance(leaf, nn.Partitioned):
      return logical_sharding(leaf.names, leaf.value.shape, mesh)
    return NamedSharding(mesh, P())
  return jax.tree.map(one, boxed_tree, is_leaf=lambda x: isinstance(x, nn.Partitioned))


def optimizer_shardings(tx, opt_state_shapes, param_sharding_tree, mesh: Mesh):
  """Shardings for an optax state: every parameter-shaped leaf (Adam's mu and nu) takes its
  parameter's sharding, the rest (step counts) is replicated."""
  import optax
  return optax.tree_map_params(tx, lambda _, sharding: sharding, opt_state_shapes,
                               param_sharding_tree,
                               transform_non_params=lambda _: NamedSharding(mesh, P()))


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  """Leading (batch) dimension over (data, fsdp), the rest replicated."""
  return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def sharding_report(params, shardings, min_bytes: int = 1 << 20) -> list[dict]:
  """Per parameter: path, shape, MiB, partition spec, and whether it is sharded; the
  acceptance check is that no matrix above `min_bytes` is left replicated."""
  rows = []
  flat_p = jax.tree_util.tree_flatten_with_path(params)[0]
  for (path, p), s in zip(flat_p, jax.tree.leaves(shardings)):
    nbytes = int(np.prod(np.shape(p))) * np.dtype(p.dtype).itemsize
    spec = s.spec
    rows.append({"name": "/".join(str(getattr(k, "key", k)) for k in path),
                 "shape": list(np.shape(p)), "mib": nbytes / 2**20, "spec": str(spec),
                 "sharded": any(a is not None for a in spec), "large": nbytes > min_bytes})
  return rows
