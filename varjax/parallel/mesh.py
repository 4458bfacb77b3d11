"""The device mesh: axes `data`, `fsdp`, `tensor`, each an ICI size times a DCN size.

ICI sizes are within a slice (or a host), DCN sizes across slices (multi-slice TPU) or, on
CPU/GPU clusters, across processes. One ICI size may be -1: it takes the devices the other
axes leave. Meshes are built with explicit `Auto` axis types: parameters and activations
are laid out by sharding annotations (logical rules) and GSPMD propagates the rest, which
is what `nn.with_logical_constraint` and `jax.jit(in_shardings=...)` expect.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh

from varjax.config import MeshConfig
from varjax.errors import ConfigError

AXES = ("data", "fsdp", "tensor")


def resolve_shape(mesh_cfg: MeshConfig, num_devices: int) -> tuple[tuple[int, ...],
                                                                  tuple[int, ...]]:
  """(ici sizes, dcn sizes) over AXES with the -1 filled in; errors name the mesh keys."""
  dcn = (mesh_cfg.dcn_data, mesh_cfg.dcn_fsdp, mesh_cfg.dcn_tensor)
  if num_devices % math.prod(dcn):
    raise ConfigError("mesh", f"DCN sizes {dcn} do not divide the {num_devices} devices")
  per_slice = num_devices // math.prod(dcn)
  ici = [mesh_cfg.data, mesh_cfg.fsdp, mesh_cfg.tensor]
  known = math.prod(v for v in ici if v != -1)
  if -1 in ici:
    if per_slice % known:
      raise ConfigError("mesh", f"sizes {ici} cannot fill {per_slice} devices per slice: "
                        f"{per_slice} is not a multiple of {known}")
    ici[ici.index(-1)] = per_slice // known
  if math.prod(ici) != per_slice:
    raise ConfigError("mesh", f"data x fsdp x tensor = {' x '.join(map(str, ici))} = "
                      f"{math.prod(ici)}, but there are {per_slice} devices per slice "
                      f"({num_devices} in all); set one axis to -1 to fill it in")
  return tuple(ici), dcn


def make_mesh(mesh_cfg: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
  devices = list(jax.devices() if devices is None else devices)
  ici, dcn = resolve_shape(mesh_cfg, len(devices))
  types = (AxisType.Auto,) * len(AXES)
  if math.prod(dcn) == 1:
    return jax.make_mesh(ici, AXES, axis_types=types, devices=devices)
  # Several slices: the hybrid helper keeps each ICI group inside one slice. Devices
  # without a slice index (CPU/GPU processes) are grouped by process instead.
  granule_by_process = not hasattr(devices[0], "slice_index")
  grid = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices,
                                              process_is_granule=granule_by_process)
  return Mesh(np.asarray(grid), AXES, axis_types=types)


def describe(mesh: Mesh) -> str:
  return " x ".join(f"{name} {size}" for name, size in mesh.shape.items())
