"""Ahead-of-time build of our Pallas GPU kernels for an NVIDIA target, on a machine with no GPU.

JAX lowers a Pallas kernel for GPU into a Triton IR module embedded in the StableHLO (the
`__gpu$xla.gpu.triton` custom call, with its launch settings); XLA compiles that module
with its own Triton when a GPU runs it. Here each embedded module is compiled with the
official `triton` package (the `dev` extra pins it) for a chosen compute capability
(default 90: H100) through TTGIR, LLVM IR and PTX to a cubin with the `ptxas` that package
bundles, and the cubin's resource usage is read back with the bundled `cuobjdump`:
registers per thread, spill stack, dynamic shared memory, and which tensor-core
instructions the matmuls became.

What this is not: XLA's own build (its Triton is a fork at another version, so register
counts can differ somewhat), nor a run: it says whether the kernel compiles, spills or
over-uses shared memory, not how fast it is.

    lowered = lower_for_gpu(fn, *shapes)          # any jax function of abstract arrays
    for build in compile_kernels(lowered): print(build.summary())
"""

from __future__ import annotations

import collections
import dataclasses
import os
import re
import subprocess
import tempfile

import jax
import jax.numpy as jnp

H100 = "NVIDIA H100 80GB HBM3"
# Dynamic shared memory one block may use on sm_90 (227 KiB).
MAX_SHARED_BYTES_SM90 = 232448


@dataclasses.dataclass(frozen=True)
class KernelBuild:
  name: str
  num_warps: int
  num_stages: int
  grid: tuple[int, int, int]
  registers: int  # per thread
  stack_bytes: int  # spill stack per thread; 0 when nothing spills
  shared_bytes: int  # dynamic shared memory per block
  mma: dict[str, int]  # tensor-core instruction shape and types -> count in the PTX
  ptx: str = dataclasses.field(repr=False)

  def summary(self) -> str:
    mma = ", ".join(f"{k} x{v}" for k, v in sorted(self.mma.items())) or "no tensor cores"
    return (f"{self.name}: {self.num_warps} warps, {self.num_stages} stages, grid "
            f"{self.grid}, {self.registers} registers, {self.stack_bytes} B spill stack, "
            f"{self.shared_bytes} B shared; {mma}")


def lower_for_gpu(fn, *args, device_kind: str = H100, num_cores: int = 132):
  """jit(fn) lowered for CUDA on an abstract GPU (`args`: arrays or ShapeDtypeStructs)."""
  from jax.sharding import AbstractDevice, AbstractMesh
  device = AbstractDevice(device_kind=device_kind, num_cores=num_cores, platform="gpu")
  with jax.sharding.use_abstract_mesh(AbstractMesh((1,), ("x",), abstract_device=device)):
    return jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",))


def lower_attention_gradient(patch_nums, shape_BxLxHxK, dtype, block: int, tuning):
  """Forward + backward of our GPU-layout kernel (`block_sparse`), `block`-wide forward
  blocks and `tuning`'s launch settings, lowered for an abstract H100."""
  from varjax.kernels.block_sparse import block_sparse_attention
  x = jax.ShapeDtypeStruct(shape_BxLxHxK, dtype)
  fn = lambda q, k, v: block_sparse_attention(q, k, v, patch_nums, block_q=block,
                                              block_k=block, interpret=False, tuning=tuning)
  loss = lambda q, k, v: jnp.sum(fn(q, k, v).astype(jnp.float32))
  return lower_for_gpu(jax.grad(loss, (0, 1, 2)), x, x, x)


def triton_kernels(lowered) -> list[dict]:
  """The Triton modules embedded in a lowered computation, in order: name, TTIR text,
  num_warps, num_stages, grid."""
  from jaxlib.mlir import ir
  from jaxlib.triton import dialect as tt_dialect
  module = lowered.compiler_ir("stablehlo")
  tt_dialect.register_dialect(module.context)
  kernels = []

  def visit(op):
    for region in op.regions:
      for block in region.blocks:
        for child in block.operations:
          if (child.operation.name == "stablehlo.custom_call" and "triton" in
              ir.StringAttr(child.attributes["call_target_name"]).value):
            config = child.attributes["mhlo.backend_config"]
            integer = lambda key: ir.IntegerAttr(config[key]).value
            kernel = ir.Module.parse(ir.StringAttr(config["ir"]).value_bytes,
                                     context=module.context)
            kernels.append({
                "name": ir.StringAttr(config["name"]).value,
                "ttir": kernel.operation.get_asm(enable_debug_info=False),
                "num_warps": integer("num_warps"), "num_stages": integer("num_stages"),
                "grid": (integer("grid_x"), integer("grid_y"), integer("grid_z"))})
          visit(child.operation)

  visit(module.operation)
  return kernels


def _tool(name: str) -> str:
  import triton.backends.nvidia as nvidia
  return os.path.join(os.path.dirname(nvidia.__file__), "bin", name)


def _resource_usage(cubin: bytes) -> dict[str, int]:
  with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
    f.write(cubin)
    f.flush()
    out = subprocess.run([_tool("cuobjdump"), "-res-usage", f.name], capture_output=True,
                         text=True, check=True).stdout
  usage = dict(re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", out))
  return {k: int(v) for k, v in usage.items()}


def compile_kernels(lowered, capability: int = 90) -> list[KernelBuild]:
  """Builds every Triton kernel of `lowered` for sm_<capability> with its own launch
  settings; raises what Triton or ptxas raise when one does not compile."""
  import triton
  from triton.backends.compiler import GPUTarget
  target = GPUTarget("cuda", capability, 32)
  builds = []
  with tempfile.TemporaryDirectory() as tmp:
    for i, kernel in enumerate(triton_kernels(lowered)):
      path = os.path.join(tmp, f"k{i}.ttir")  # triton.compile reads TTIR from a file
      with open(path, "w") as f:
        f.write(kernel["ttir"])
      compiled = triton.compile(path, target=target, options={
          "num_warps": kernel["num_warps"], "num_stages": kernel["num_stages"]})
      usage = _resource_usage(compiled.asm["cubin"])
      ptx = compiled.asm["ptx"]
      mma = collections.Counter(re.findall(r"\b(wgmma\.mma_async\S*|mma\.sync\S*)", ptx))
      builds.append(KernelBuild(
          name=kernel["name"], num_warps=kernel["num_warps"],
          num_stages=kernel["num_stages"], grid=kernel["grid"], registers=usage["REG"],
          stack_bytes=usage["STACK"] + usage.get("LOCAL", 0),
          shared_bytes=int(compiled.metadata.shared), mma=dict(mma), ptx=ptx))
  return builds
