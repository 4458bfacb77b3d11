"""Our Pallas kernels lower for the accelerators they target, from this CPU-only machine.

JAX lowers for an abstract device (`jax.sharding.use_abstract_mesh`): the Pallas TPU
lowering emits the Mosaic module and checks block shapes against the (8, 128) tiling
rule, SMEM/VMEM placement and the ops Mosaic accepts; the GPU lowering emits Triton IR for
the device's compute capability. The GPU kernels are then built with the official Triton
and its bundled ptxas for sm_90 (`varjax.aot.gpu`), which checks registers,
spills, shared memory and the tensor-core instructions. The TPU kernels are compiled for
real by libtpu for compile-only TPU devices (`varjax.aot.tpu`), Mosaic included.
What this cannot check is XLA's own Triton build and speed: those need the hardware.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import AbstractDevice, AbstractMesh

from varjax import scales
from varjax.aot import gpu as gpu_aot
from varjax.kernels.block_sparse import GPU_TUNING, block_sparse_attention
from varjax.kernels.block_sparse_tpu import block_sparse_attention_tpu
from varjax.kernels.splash import splash_attention

PN = scales.SCHEDULES["256"]  # L = 680, padded to 768


def _lower(fn, platform, device_kind, num_cores, dtype):
  device = AbstractDevice(device_kind=device_kind, num_cores=num_cores,
                          platform="tpu" if platform == "tpu" else "gpu")
  x = jax.ShapeDtypeStruct((2, 680, 16, 64), dtype)
  loss = lambda q, k, v: jnp.sum(fn(q, k, v).astype(jnp.float32))
  with jax.sharding.use_abstract_mesh(AbstractMesh((1,), ("x",), abstract_device=device)):
    return jax.jit(jax.grad(loss, (0, 1, 2))).trace(x, x, x).lower(
        lowering_platforms=(platform,)).as_text()


@pytest.mark.parametrize("kind", ["TPU v4", "TPU v5 lite", "TPU v5p", "TPU v6 lite"])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_tpu_kernel_lowers_to_mosaic(kind, dtype):
  fn = lambda q, k, v: block_sparse_attention_tpu(q, k, v, PN, interpret=False)
  text = _lower(fn, "tpu", kind, 1, dtype)
  # forward, dq and dk/dv kernels, each a Mosaic custom call
  assert text.count("tpu_custom_call") >= 3


def test_gpu_layout_kernel_is_rejected_by_mosaic(monkeypatch):
  """Why there are two layouts: the loop-over-refs kernel breaks Mosaic's tiling rule.
  (Its Triton launch settings are dropped here; Pallas would refuse those first.)"""
  from varjax.kernels.block_sparse import TritonTuning
  monkeypatch.setattr(TritonTuning, "compiler_params", lambda *_: None)
  fn = lambda q, k, v: block_sparse_attention(q, k, v, PN, interpret=False)
  with pytest.raises(ValueError, match="divisible by 8 and 128"):
    _lower(fn, "tpu", "TPU v5 lite", 1, jnp.bfloat16)


def _gpu_gradient(patch_nums, dtype, tuning=GPU_TUNING, block=128):
  """Forward + backward of our GPU-layout kernel lowered for an abstract H100."""
  return gpu_aot.lower_attention_gradient(
      patch_nums, (2, scales.num_tokens(patch_nums), 16, 64), dtype, block, tuning)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_gpu_kernel_lowers_to_triton_for_h100(dtype):
  """With the launch settings `attention(impl="pallas")` uses on a GPU (GPU_TUNING)."""
  kernels = gpu_aot.triton_kernels(_gpu_gradient(PN, dtype))
  assert [k["name"] for k in kernels] == ["_fwd_kernel", "_dq_kernel", "_dkv_kernel"]
  assert {(k["num_warps"], k["num_stages"]) for k in kernels} == {(8, 2)}
  # (B, H, blocks): forward over 768 / 128 query blocks, backward over 768 / 64 blocks
  assert [k["grid"] for k in kernels] == [(2, 16, 6), (2, 16, 12), (2, 16, 12)]
  assert all(k["ttir"].startswith("module @") and "tt.func" in k["ttir"] for k in kernels)


@pytest.mark.parametrize("schedule", ["256", "512"])
def test_gpu_kernels_build_for_sm90_on_bf16_tensor_cores_without_spills(schedule):
  """Triton -> PTX -> cubin (ptxas) for sm_90: every matmul of the three kernels is a
  Hopper wgmma on bf16, nothing spills, and shared memory fits what a block may use."""
  builds = gpu_aot.compile_kernels(_gpu_gradient(scales.SCHEDULES[schedule], jnp.bfloat16))
  assert len(builds) == 3
  for build in builds:
    assert build.stack_bytes == 0, build.summary()
    assert 0 < build.shared_bytes <= gpu_aot.MAX_SHARED_BYTES_SM90, build.summary()
    assert build.mma and all(k.startswith("wgmma.mma_async") and k.endswith(".bf16.bf16")
                             for k in build.mma), build.summary()
    assert build.registers <= 255 and ".target sm_90" in build.ptx


def test_the_build_check_flags_spills_and_fp32_matmuls():
  """What the build test guards against: 4 warps at 128 x 128 forward blocks (JAX's GPU
  attention default for head dim 64) spill in our forward kernel, and fp32 inputs give
  tf32 tensor-core matmuls."""
  from varjax.kernels.block_sparse import TritonTuning
  four_warps = gpu_aot.compile_kernels(_gpu_gradient(PN, jnp.bfloat16,
                                                     TritonTuning(64, 64, 4, 2)))
  assert four_warps[0].name == "_fwd_kernel" and four_warps[0].stack_bytes > 0
  fp32 = gpu_aot.compile_kernels(_gpu_gradient(PN, jnp.float32))
  assert all(".tf32.tf32" in k for build in fp32 for k in build.mma)


def test_splash_lowers_to_mosaic():
  fn = lambda q, k, v: splash_attention(q, k, v, PN, block=128, interpret=False)
  assert "tpu_custom_call" in _lower(fn, "tpu", "TPU v5 lite", 1, jnp.bfloat16)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIBTPU = os.environ.get("VARJAX_LIBTPU_DIR", os.path.join(ROOT, ".venv", "libtpu"))


def _tpu_aot(*args):
  """`python -m varjax.aot.tpu --json ...` with libtpu on the path (a subprocess:
  libtpu stays out of this one)."""
  if not os.path.isdir(os.path.join(LIBTPU, "libtpu")):
    message = f"libtpu not installed in {LIBTPU}; `make test` installs it"
    pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "PYTHONPATH": os.pathsep.join(filter(None, [LIBTPU, os.environ.get("PYTHONPATH")]))}
  out = subprocess.run([sys.executable, "-m", "varjax.aot.tpu", "--json", *args],
                       capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
  assert out.stdout.strip(), out.stderr
  return out.returncode, json.loads(out.stdout)


def test_kernels_compile_for_tpu_v4_v5e_v5p_v6e_with_libtpu():
  """Forward + backward of our Mosaic layout and of splash, bf16 on the 512 px schedule
  (L = 2240 -> 2304), compiled by libtpu (XLA's TPU pipeline with Mosaic) for one device
  of each generation."""
  status, rows = _tpu_aot()
  assert status == 0, rows
  assert {(r["topology"], r["impl"]) for r in rows} == {
      (t, i) for t in ("v4:2x2x1", "v5e:1x1", "v5p:2x2x1", "v6e:1x1") for i in ("pallas", "splash")}
  assert {r["device_kind"] for r in rows} == {"TPU v4", "TPU v5 lite", "TPU v5", "TPU v6 lite"}
  assert all(r["code_bytes"] > 0 for r in rows)


@pytest.mark.slow
def test_the_tpu_compile_refuses_a_kernel_that_overflows_vmem():
  """What Pallas's lowering cannot see and the libtpu compile does: one 2304-wide block
  makes score tiles of 2304 x 2304 fp32, over the scoped VMEM."""
  status, rows = _tpu_aot("--topologies", "v5e:1x1", "--impls", "pallas", "--block", "2304")
  assert status == 1 and "CompileTimeScopedVmemOom" in rows[0]["error"]


@pytest.mark.slow
def test_the_sharded_train_step_compiles_for_a_tpu_v5e_2x2_with_per_device_kernels():
  """The whole var-d2 training step (forward, backward, AdamW) on a 4-chip v5e mesh with
  fsdp 2 x tensor 2, batch 16: every attention kernel (forward, dq, dk/dv per block) runs
  on its device's 8 batch rows and 1 of the 2 heads. Without `attention.per_device` this
  step does not compile: XLA cannot partition a Mosaic kernel."""
  status, rows = _tpu_aot("--train-step", "--depth", "2", "--batch", "16", "--mesh", "1,2,2",
                          "--topologies", "v5e:2x2")
  assert status == 0, rows
  for row in rows:
    assert row["kernel_calls"] == 6, row  # 2 blocks x (forward, dq, dk/dv)
    assert row["kernel_shapes"] == ["bf16[8,1,768,64]"], row  # [B/2, H/2, Lp, K]
    assert 0 < row["hbm_bytes"] < 2**30
