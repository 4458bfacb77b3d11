"""Attention implementations side by side on VAR shapes: time, useful TFLOP/s, ratio to xla.

Shapes: VAR-256 (L = 680) and VAR-512 (L = 2240) at the head counts of d16, d24, d30
(head dim 64). Useful FLOPs count only the unmasked part of the score matrix:
4 B H K sum_i end(i) for the forward pass (QK^T and PV), 2.5x that for forward + backward.

On CPU, `pallas` and `splash` run in interpret mode: those timings measure the interpreter,
not the kernels, and are printed only with --interpret (they are slow). On GPU/TPU every
available implementation is timed.

--tune (GPU) times our Pallas kernel, forward + backward, at VAR-512 d16 (VAR-256 with
--quick) under a grid of Triton launch settings (forward block, backward block, warps) and
prints them fastest first next to the default `GPU_TUNING` (chosen from sm_90 builds, not
from timings). --builds (any machine, no GPU) builds the same grid for sm_90 with Triton
and ptxas (`varjax.aot.gpu`) and prints each kernel's registers, spills, shared
memory and tensor-core instructions.

Usage: python benchmarks/attention.py [--json] [--batch 1] [--repeats 3] [--quick]
         [--backward] [--interpret] [--impls xla,pallas] [--tune | --builds]
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from varjax import scales
from varjax.kernels import attention as attn
from varjax.kernels import block_sparse
from varjax.kernels import mask as mask_lib

SHAPES = {"VAR-256": scales.SCHEDULES["256"], "VAR-512": scales.SCHEDULES["512"]}
HEADS = {"d16": 16, "d24": 24, "d30": 30}


def available(interpret: bool) -> list[str]:
  backend = jax.default_backend()
  impls = ["xla"]
  if backend == "gpu":
    impls += ["cudnn", "pallas"]
  elif backend == "tpu":
    impls += ["splash", "pallas"]
  elif interpret:
    impls += ["pallas", "splash"]
  return impls


def useful_flops(patch_nums, batch: int, heads: int, head_dim: int, backward: bool) -> float:
  pairs = float(mask_lib.key_prefix_end(patch_nums).sum())
  forward = 4.0 * batch * heads * head_dim * pairs
  return forward * (3.5 if backward else 1.0)  # backward ~ 2.5x the forward matmuls


def time_impl(impl, patch_nums, batch, heads, dtype, backward, repeats) -> float:
  run = lambda q, k, v: attn.attention(q, k, v, patch_nums, impl=impl)
  return time_fn(run, patch_nums, batch, heads, dtype, backward, repeats)


def time_fn(run, patch_nums, batch, heads, dtype, backward, repeats) -> float:
  """Median seconds of jitted run(q, k, v) (or its gradient) after one compiling call."""
  length = scales.num_tokens(patch_nums)
  q, k, v = (jax.random.normal(jax.random.key(i), (batch, length, heads, 64), dtype)
             for i in range(3))
  if backward:
    fn = jax.jit(jax.grad(lambda q, k, v: jnp.sum(run(q, k, v).astype(jnp.float32)),
                          (0, 1, 2)))
  else:
    fn = jax.jit(run)
  jax.block_until_ready(fn(q, k, v))  # compile
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(q, k, v))
    times.append(time.perf_counter() - start)
  return float(np.median(times))


# (forward block, backward block, warps); 2 pipeline stages throughout.
TUNING_GRID = [(f, b, w) for f in (64, 128) for b in (32, 64, 128) if b <= f for w in (4, 8)]


def _grid_tuning(bwd: int, warps: int) -> block_sparse.TritonTuning:
  return block_sparse.TritonTuning(bwd, bwd, warps, block_sparse.GPU_TUNING.num_stages)


def tune(args, dtype) -> list[dict]:
  """Our GPU-layout kernel, forward + backward, under each launch setting of TUNING_GRID."""
  shape, model = ("VAR-256", "d16") if args.quick else ("VAR-512", "d16")
  pn, heads = SHAPES[shape], HEADS[model]
  flops = useful_flops(pn, args.batch, heads, 64, backward=True)
  rows = []
  for fwd, bwd, warps in TUNING_GRID:
    tuning = _grid_tuning(bwd, warps)
    run = lambda q, k, v: block_sparse.block_sparse_attention(
        q, k, v, pn, block_q=fwd, block_k=fwd, tuning=tuning)
    seconds = time_fn(run, pn, args.batch, heads, dtype, True, args.repeats)
    rows.append({"shape": shape, "model": model, "block": fwd, "block_bwd": bwd,
                 "num_warps": warps, "num_stages": tuning.num_stages, "ms": 1e3 * seconds,
                 "useful_tflops": flops / seconds / 1e12,
                 "default": _is_default(fwd, bwd, warps, pn)})
  return sorted(rows, key=lambda r: r["ms"])


def _is_default(fwd, bwd, warps, patch_nums) -> bool:
  default = block_sparse.GPU_TUNING
  return (fwd, bwd, warps) == (attn.pallas_block(scales.num_tokens(patch_nums)),
                               default.block_q_bwd, default.num_warps)


def builds(args) -> list[dict]:
  """sm_90 builds of forward + backward (bf16, head dim 64) for each TUNING_GRID setting."""
  from varjax.aot import gpu as gpu_aot
  shape = "VAR-256" if args.quick else "VAR-512"
  pn = SHAPES[shape]
  x_shape = (args.batch, scales.num_tokens(pn), HEADS["d16"], 64)
  rows = []
  for fwd, bwd, warps in TUNING_GRID:
    lowered = gpu_aot.lower_attention_gradient(pn, x_shape, jnp.bfloat16, fwd,
                                               _grid_tuning(bwd, warps))
    for build in gpu_aot.compile_kernels(lowered):
      rows.append({"shape": shape, "block": fwd, "block_bwd": bwd, "num_warps": warps,
                   "kernel": build.name.strip("_"), "registers": build.registers,
                   "spill_bytes": build.stack_bytes, "shared_bytes": build.shared_bytes,
                   "mma": sorted(build.mma), "default": _is_default(fwd, bwd, warps, pn)})
  return rows


def cases(args, parser) -> list[tuple[str, str, int]]:
  """(shape, model, batch) to time: --cases, else --quick's one, else all at --batch."""
  if not args.cases:
    return [(shape, model, args.batch) for shape in SHAPES for model in HEADS
            if not args.quick or (shape, model) == ("VAR-256", "d16")]
  out = []
  for item in args.cases.split(","):
    parts = item.split(":")
    if len(parts) not in (2, 3) or parts[0] not in SHAPES or parts[1] not in HEADS:
      parser.error(f"--cases: {item!r} is not SHAPE:MODEL[:BATCH] with SHAPE in "
                   f"{', '.join(SHAPES)} and MODEL in {', '.join(HEADS)}")
    try:
      batch = int(parts[2]) if len(parts) == 3 else args.batch
    except ValueError:
      parser.error(f"--cases: batch {parts[2]!r} in {item!r} is not an integer")
    if batch < 1:
      parser.error(f"--cases: batch must be >= 1 in {item!r}")
    out.append((parts[0], parts[1], batch))
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--dtype", default=None, help="default bf16 on accelerators, fp32 on CPU")
  parser.add_argument("--backward", action="store_true", help="time forward + backward")
  parser.add_argument("--interpret", action="store_true",
                      help="on CPU also time the Pallas kernels in interpret mode")
  parser.add_argument("--quick", action="store_true", help="VAR-256 at d16 only")
  parser.add_argument("--impls", default=None, help="comma-separated subset")
  parser.add_argument("--cases", default=None,
                      help="SHAPE:MODEL[:BATCH],... e.g. VAR-256:d16:32,VAR-512:d30:4 "
                           "(default: every shape x model at --batch)")
  parser.add_argument("--tune", action="store_true",
                      help="time the Pallas kernel's Triton launch settings (GPU)")
  parser.add_argument("--builds", action="store_true",
                      help="build those settings for sm_90 and print registers and spills")
  parser.add_argument("--json", action="store_true")
  args = parser.parse_args()
  backend = jax.default_backend()
  dtype = jnp.dtype(args.dtype or ("float32" if backend == "cpu" else "bfloat16"))
  if args.builds:
    rows = builds(args)
    if args.json:
      print(json.dumps({"target": "sm_90", "batch": args.batch, "rows": rows}, indent=2))
      return
    print(f"pallas kernels built for sm_90 (triton + ptxas, no GPU), bf16, batch "
          f"{args.batch}, {rows[0]['shape']} d16")
    print(f"{'block':>5} {'bwd':>4} {'warps':>5} {'kernel':10} {'regs':>5} {'spill B':>8} "
          f"{'shared B':>9}  tensor-core instructions")
    for r in rows:
      mma = ", ".join(m.replace(".sync.aligned", "") for m in r["mma"]) or "none"
      print(f"{r['block']:5d} {r['block_bwd']:4d} {r['num_warps']:5d} {r['kernel']:10} "
            f"{r['registers']:5d} {r['spill_bytes']:8d} {r['shared_bytes']:9d}  {mma}"
            f"{'  <- default' if r['default'] else ''}")
    return
  if args.tune:
    if backend != "gpu" and not args.interpret:
      parser.error("--tune times Triton launch settings: run it on a GPU (or add "
                   "--interpret to check the code path on CPU)")
    rows = tune(args, dtype)
    if args.json:
      print(json.dumps({"device": jax.devices()[0].device_kind, "dtype": str(dtype),
                        "batch": args.batch, "rows": rows}, indent=2))
      return
    print(f"pallas launch settings on {jax.devices()[0].device_kind}, {dtype}, batch "
          f"{args.batch}, forward+backward, {rows[0]['shape']} {rows[0]['model']}")
    print(f"{'block':>5} {'bwd':>4} {'warps':>5} {'ms':>10} {'TFLOP/s':>9}")
    for r in rows:
      print(f"{r['block']:5d} {r['block_bwd']:4d} {r['num_warps']:5d} {r['ms']:10.2f} "
            f"{r['useful_tflops']:9.4f}{'  <- default' if r['default'] else ''}")
    if backend != "gpu":
      print("note: interpret mode; these are not kernel speeds")
    return
  impls = args.impls.split(",") if args.impls else available(args.interpret)
  rows = []
  for shape, model, batch in cases(args, parser):
    pn, heads = SHAPES[shape], HEADS[model]
    flops = useful_flops(pn, batch, heads, 64, args.backward)
    base = None
    for impl in impls:
      try:
        seconds = time_impl(impl, pn, batch, heads, dtype, args.backward, args.repeats)
      except Exception as e:  # an impl this backend cannot run: report, keep going
        rows.append({"shape": shape, "model": model, "impl": impl,
                     "error": f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"})
        continue
      base = seconds if impl == "xla" else base
      rows.append({"shape": shape, "L": scales.num_tokens(pn), "model": model,
                   "heads": heads, "batch": batch, "impl": impl, "ms": 1e3 * seconds,
                   "useful_tflops": flops / seconds / 1e12,
                   "speedup_vs_xla": (base / seconds) if base else None})
  device = jax.devices()[0].device_kind
  if args.json:
    print(json.dumps({"device": device, "backend": backend, "dtype": str(dtype),
                      "batch": args.batch, "backward": args.backward, "rows": rows}, indent=2))
    return
  print(f"attention on {device} ({backend}), {dtype}, batch {args.batch}, "
        f"{'forward+backward' if args.backward else 'forward'}")
  print(f"{'shape':8} {'model':5} {'impl':7} {'ms':>10} {'TFLOP/s':>9} {'vs xla':>7}")
  for r in rows:
    if "error" in r:
      print(f"{r['shape']:8} {r['model']:5} {r['impl']:7} unavailable: {r['error']}")
      continue
    ratio = f"{r['speedup_vs_xla']:.2f}x" if r["speedup_vs_xla"] else "-"
    print(f"{r['shape']:8} {r['model']:5} {r['impl']:7} {r['ms']:10.2f} "
          f"{r['useful_tflops']:9.4f} {ratio:>7}")
  if backend == "cpu" and any(r["impl"] != "xla" for r in rows):
    print("note: pallas/splash ran in interpret mode; these are not kernel speeds")


if __name__ == "__main__":
  main()
