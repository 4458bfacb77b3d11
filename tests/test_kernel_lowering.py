"""Our Pallas kernels lower for the accelerators they target, from this CPU-only machine.

JAX lowers for an abstract device (`jax.sharding.use_abstract_mesh`): the Pallas TPU
lowering emits the Mosaic module and checks block shapes against the (8, 128) tiling
rule, SMEM/VMEM placement and the ops Mosaic accepts; the GPU lowering emits Triton IR for
the device's compute capability. What this cannot check is the backend compile itself
(libtpu's Mosaic passes, ptxas): that needs the hardware.
"""

import jax
import jax.numpy as jnp
import pytest
from jax._src.mesh import AbstractDevice, AbstractMesh  # no public constructor yet

from varjax.kernels.block_sparse import GPU_TUNING, block_sparse_attention
from varjax.kernels.block_sparse_tpu import block_sparse_attention_tpu
from varjax.kernels.splash import splash_attention
from varjax.models import scales

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


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_gpu_kernel_lowers_to_triton_for_h100(dtype):
  """With the launch settings `attention(impl="pallas")` uses on a GPU: 128-wide forward
  blocks, 32-wide backward blocks, 4 warps, 2 stages."""
  fn = lambda q, k, v: block_sparse_attention(q, k, v, PN, interpret=False, tuning=GPU_TUNING)
  text = _lower(fn, "cuda", "NVIDIA H100 80GB HBM3", 132, dtype)
  assert text.count("__gpu$xla.gpu.triton") == 3
  assert text.count("num_warps = 4") == 3 and text.count("num_stages = 2") == 3
  # forward grid (B, H, 768 / 128); dq (B, H, 768 / 32); dk/dv likewise over key blocks
  assert "grid_z = 6" in text and text.count("grid_z = 24") == 2


def test_splash_lowers_to_mosaic():
  fn = lambda q, k, v: splash_attention(q, k, v, PN, block=128, interpret=False)
  assert "tpu_custom_call" in _lower(fn, "tpu", "TPU v5 lite", 1, jnp.bfloat16)
