"""Ahead-of-time compile of the attention kernels for TPU, on a machine without one.

libtpu can describe a TPU topology and compile for its devices without the chips
(`jax.experimental.topologies.get_topology_desc`: compile-only devices). The compile is
the real one: XLA's TPU pipeline with Mosaic compiling each Pallas kernel, so it catches
what Pallas's lowering cannot: an unsupported op in Mosaic, or a kernel that runs out of
VMEM (`CompileTimeScopedVmemOom`). It does not run anything, so it says nothing of speed.

libtpu is kept out of `.venv` (importing it makes every JAX start probe for TPUs): `make
test` installs the version `jax[tpu]` pins into `.venv/libtpu`, and this module is run
with that directory on PYTHONPATH:

    PYTHONPATH=.venv/libtpu .venv/bin/python -m varjax.aot.tpu \
        [--topologies v4:2x2x1,v5e:1x1,v5p:2x2x1,v6e:1x1] [--schedule 512] [--block 128]

It compiles forward + backward of `pallas` (our Mosaic layout) and `splash`, bf16, head
dim 64, d16 heads, for each topology and prints one line each; exit status 1 if any fails.
With `--train-step` it compiles the whole sharded training step instead:

    ... -m varjax.aot.tpu --train-step --depth 16 --batch 64 --mesh 1,2,2 \
        --topologies v5e:2x2 [--schedule 256]

and reports per device the attention kernels' shapes (each device's own batch rows and
heads), and the HBM the step needs (arguments + outputs + temporaries - donated aliases),
which says before any TPU time whether a model, batch and mesh fit.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time

# Before libtpu loads: no GCE metadata queries, no guessing of the host's TPU type, and no
# lockfile (it guards chips; compile-only processes have none, so several may run at once).
for _key, _value in (("TPU_SKIP_MDS_QUERY", "1"), ("TPU_ACCELERATOR_TYPE", "v5litepod-1"),
                     ("TPU_WORKER_HOSTNAMES", "localhost"), ("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")):
  os.environ.setdefault(_key, _value)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from varjax import scales  # noqa: E402

TOPOLOGIES = ("v4:2x2x1", "v5e:1x1", "v5p:2x2x1", "v6e:1x1")


def have_libtpu() -> bool:
  import importlib.util
  return importlib.util.find_spec("libtpu") is not None


def topology_devices(topology: str) -> list:
  """libtpu's compile-only devices of a topology such as "v5e:1x1" or "v5p:2x2x1"."""
  from jax.experimental import topologies
  return topologies.get_topology_desc(topology, "tpu").devices


def compile_for_tpu(fn, *args, topology: str = "v5e:1x1"):
  """jit(fn) compiled for one device of `topology` (args: shapes/dtypes, replicated)."""
  from jax.sharding import Mesh, NamedSharding, PartitionSpec
  devices = topology_devices(topology)
  replicated = NamedSharding(Mesh(np.array(devices[:1]), ("x",)), PartitionSpec())
  args = [jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated) for a in args]
  return jax.jit(fn).trace(*args).lower().compile()


def attention_gradient(impl: str, patch_nums, block: int):
  """Forward + backward of one attention implementation, compiled (not interpreted)."""
  from varjax.kernels.block_sparse_tpu import block_sparse_attention_tpu
  from varjax.kernels.splash import splash_attention
  if impl == "pallas":
    fn = lambda q, k, v: block_sparse_attention_tpu(q, k, v, patch_nums, block_q=block,
                                                    block_k=block, interpret=False)
  else:
    fn = lambda q, k, v: splash_attention(q, k, v, patch_nums, block=block, interpret=False)
  return jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v).astype(jnp.float32)), (0, 1, 2))


def compile_train_step(depth: int, batch: int, topology: str, mesh_shape=(1, -1, 1),
                       attn_impl: str = "splash", schedule: str = "256",
                       dtype: str = "bfloat16"):
  """The real sharded training step of var-d{depth} (forward, backward, AdamW) at global
  batch `batch`, compiled for every device of `topology` on a (data, fsdp, tensor) mesh.
  Returns the compiled step; its memory_analysis() is per device."""
  from varjax.config import MeshConfig, ModelConfig, OptimConfig
  from varjax.models.var import VAR
  from varjax.parallel import mesh as mesh_lib, rules
  from varjax.train import optimizer, step as step_lib
  data, fsdp, tensor = mesh_shape
  mesh = mesh_lib.make_mesh(MeshConfig(data=data, fsdp=fsdp, tensor=tensor),
                            topology_devices(topology))
  cfg = ModelConfig(depth=depth, attn_impl=attn_impl, dtype=dtype,
                    patch_nums=scales.SCHEDULES[schedule])
  model, optim = VAR(cfg), OptimConfig()
  tx = optimizer.adamw(optim, 1000, batch)
  abstract, shardings = step_lib.state_shardings(model, tx, 0, mesh)
  state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                       abstract, shardings)
  batch_sh = step_lib.batch_shardings(mesh)
  inputs = {"label": jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=batch_sh["label"]),
            "x": jax.ShapeDtypeStruct((batch, cfg.num_tokens - cfg.first_tokens,
                                       cfg.latent_channels), jnp.float32,
                                      sharding=batch_sh["x"]),
            "target": jax.ShapeDtypeStruct((batch, cfg.num_tokens), jnp.int32,
                                           sharding=batch_sh["target"])}
  train_step = step_lib.make_train_step(model, tx, optimizer.lr_schedule(optim, 1000, batch),
                                        mesh, shardings)
  with jax.set_mesh(mesh), rules.rules_context():
    return train_step.jitted.trace(state, inputs).lower().compile()


def step_report(compiled) -> dict:
  """Per-device facts of a compiled step: HBM bytes and the Mosaic kernels' result shapes."""
  memory = compiled.memory_analysis()
  calls = [line for line in compiled.as_text().splitlines()
           if 'custom_call_target="tpu_custom_call"' in line]
  shapes = sorted({m.group(1) for line in calls
                   if (m := re.search(r"= \(?(\w+\[[0-9,]+\])", line))})
  return {"kernel_calls": len(calls), "kernel_shapes": shapes,
          "argument_bytes": memory.argument_size_in_bytes,
          "output_bytes": memory.output_size_in_bytes,
          "temp_bytes": memory.temp_size_in_bytes,
          "hbm_bytes": (memory.argument_size_in_bytes + memory.output_size_in_bytes
                        + memory.temp_size_in_bytes - memory.alias_size_in_bytes)}


def _compile_each(args, fields: dict, compile_one, report) -> list[dict]:
  """One row per (topology, impl): `fields`, then report(compiled, topology) and the
  compile seconds, or the error of one that does not compile (the rest still run)."""
  rows = []
  for topology in args.topologies.split(","):
    for impl in args.impls.split(","):
      row = {"topology": topology, "impl": impl, **fields}
      start = time.perf_counter()
      try:
        compiled = compile_one(topology, impl)
      except Exception as e:  # noqa: BLE001 -- reported in the row and the exit status
        row["error"] = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
      else:
        row.update(seconds=round(time.perf_counter() - start, 2), **report(compiled, topology))
      rows.append(row)
  return rows


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m varjax.aot.tpu",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("--topologies", default=None,
                      help=f"default {','.join(TOPOLOGIES)}; v5e:2x2 with --train-step")
  parser.add_argument("--schedule", default=None, choices=sorted(scales.SCHEDULES),
                      help="default 512; 256 with --train-step")
  parser.add_argument("--block", type=int, default=128)
  parser.add_argument("--impls", default="pallas,splash")
  parser.add_argument("--heads", type=int, default=16)
  parser.add_argument("--train-step", action="store_true",
                      help="compile the sharded training step of var-d{--depth}")
  parser.add_argument("--depth", type=int, default=2)
  parser.add_argument("--batch", type=int, default=16, help="global batch")
  parser.add_argument("--mesh", default="1,-1,1", help="data,fsdp,tensor (-1: the rest)")
  parser.add_argument("--json", action="store_true")
  args = parser.parse_args(argv)
  if not have_libtpu():
    print("varjax.aot.tpu: error: libtpu is not importable; `make test` installs it into "
          ".venv/libtpu: run with PYTHONPATH=.venv/libtpu", file=sys.stderr)
    return 2
  if args.train_step:
    args.topologies = args.topologies or "v5e:2x2"
    args.schedule = args.schedule or "256"
    mesh = tuple(int(v) for v in args.mesh.split(","))
    rows = _compile_each(
        args, {"depth": args.depth, "batch": args.batch, "mesh": args.mesh,
               "schedule": args.schedule},
        lambda topology, impl: compile_train_step(args.depth, args.batch, topology, mesh,
                                                  impl, args.schedule),
        lambda compiled, topology: step_report(compiled))
    print(json.dumps(rows, indent=2) if args.json else "\n".join(
        f"{r['topology']} var-d{r['depth']} batch {r['batch']} mesh {r['mesh']} {r['impl']}: "
        + (f"FAILED {r['error']}" if "error" in r else
           f"compiled in {r['seconds']} s; per device {r['hbm_bytes'] / 2**30:.2f} GiB HBM, "
           f"{r['kernel_calls']} kernels on {', '.join(r['kernel_shapes'])}") for r in rows))
    return 1 if any("error" in r for r in rows) else 0
  args.topologies = args.topologies or ",".join(TOPOLOGIES)
  args.schedule = args.schedule or "512"
  pn = scales.SCHEDULES[args.schedule]
  x = jax.ShapeDtypeStruct((1, scales.num_tokens(pn), args.heads, 64), jnp.bfloat16)
  rows = _compile_each(
      args, {"schedule": args.schedule, "block": args.block},
      lambda topology, impl: compile_for_tpu(attention_gradient(impl, pn, args.block),
                                             x, x, x, topology=topology),
      lambda compiled, topology: {
          "device_kind": topology_devices(topology)[0].device_kind,
          "code_bytes": compiled.memory_analysis().generated_code_size_in_bytes})
  if args.json:
    print(json.dumps(rows, indent=2))
  for r in rows if not args.json else []:
    what = (f"compiled in {r['seconds']} s, {r['code_bytes']} B of code" if "error" not in r
            else f"FAILED {r['error']}")
    print(f"{r['topology']:10} {r.get('device_kind', ''):12} {r['impl']:7} "
          f"{r['schedule']} px block {r['block']}: {what}")
  return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
  sys.exit(main())
