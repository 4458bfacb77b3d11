"""Multi-host start and per-process data.

`initialize` wraps `jax.distributed.initialize`: on TPU pods (and SLURM / Open MPI) JAX
reads the coordinator, process count and id from the environment, so no flags are needed;
elsewhere pass them (`varjax train --coordinator HOST:PORT --num-processes N
--process-id I`) or set VARJAX_COORDINATOR / VARJAX_NUM_PROCESSES / VARJAX_PROCESS_ID.

Each process reads only its own rows of every global batch (`process_rows`) and
`global_batch` assembles the global jax.Array with `jax.make_array_from_process_local_data`.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh

from varjax.errors import VarjaxError
from varjax.parallel import rules

TPU_ENV = ("TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS", "CLOUD_TPU_TASK_ID")


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
  """Starts multi-process JAX when asked to (flags, VARJAX_* variables or a TPU pod
  environment); returns whether it did. Single-process runs skip it."""
  coordinator = coordinator or os.environ.get("VARJAX_COORDINATOR")
  if num_processes is None and os.environ.get("VARJAX_NUM_PROCESSES"):
    num_processes = int(os.environ["VARJAX_NUM_PROCESSES"])
  if process_id is None and os.environ.get("VARJAX_PROCESS_ID"):
    process_id = int(os.environ["VARJAX_PROCESS_ID"])
  if coordinator is None and num_processes is None and process_id is None:
    if any(k in os.environ for k in TPU_ENV):
      jax.distributed.initialize()  # JAX reads the pod's own environment
      return True
    return False
  if coordinator is None or num_processes is None or process_id is None:
    raise VarjaxError("multi-process training needs all three of --coordinator, "
                      "--num-processes and --process-id (or VARJAX_COORDINATOR, "
                      "VARJAX_NUM_PROCESSES, VARJAX_PROCESS_ID)")
  if not 0 <= process_id < num_processes:
    raise VarjaxError(f"--process-id {process_id} is not in 0..{num_processes - 1}")
  jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                             process_id=process_id)
  return True


def process_rows(global_batch_size: int) -> slice:
  """The rows of a global batch this process feeds: its devices' share of the batch axes.

  With the batch over (data, fsdp) and processes owning contiguous device blocks, process
  p holds rows [p * B / P, (p + 1) * B / P)."""
  count, index = jax.process_count(), jax.process_index()
  if global_batch_size % count:
    raise VarjaxError(f"data.global_batch_size {global_batch_size} is not divisible by the "
                      f"{count} processes")
  per = global_batch_size // count
  return slice(index * per, (index + 1) * per)


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Global arrays (batch over data x fsdp) from this process's rows of each field."""
  count = jax.process_count()
  out = {}
  for key, value in local.items():
    value = np.asarray(value)
    sharding = rules.batch_sharding(mesh, value.ndim)
    out[key] = jax.make_array_from_process_local_data(
        sharding, value, (value.shape[0] * count, *value.shape[1:]))
  return out
