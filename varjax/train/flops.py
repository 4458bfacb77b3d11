"""Training FLOPs of a VAR model, counted exactly, beside the 6ND convention; and MFU.

Exact count (one multiply-add = 2 FLOPs, training = forward + backward):
  per token     word_embed (Cv x C, tokens after the first scale), per block qkv 3C^2,
                proj C^2, fc1 C F, fc2 F C, and the head C V
  per image     AdaLN: per block C -> 6C (or one shared Linear) and the head's C -> 2C,
                applied once to the class embedding, not per token
  attention     per block 2 C A for q k^T and 2 C A for p v, A = allowed (query, key) pairs
                of the scale-causal mask (0.619 L^2 at 256 px); `dense_attention=True`
                counts A = L^2, which is what a dense kernel executes
  backward      2 x forward, except word_embed (its input is data: weight gradient only)

6ND convention: 6 x N x L per image, N = non-embedding parameters with and without the
head. It overcounts AdaLN (per image, not per token) and ignores attention.

Sampling FLOPs and KV-cache bytes are counted beside the sampler
(varjax/models/sampling_cost.py, re-exported here); `collaborative_table` sets CoDe's
drafter/refiner split against its parameter-proportional bound.

MFU = achieved model FLOPs per second / peak. Peaks: published dense bf16 figures per chip
for accelerators; on CPU the peak is measured at start-up by `measure_cpu_peak` (the best
of a few large fp32 matmuls under the same XLA settings as the training step).
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp

from varjax import scales
from varjax.config import ModelConfig
from varjax.kernels import mask as mask_lib
from varjax.models import var
from varjax.models.sampling_cost import (kv_cache_bytes, sampling_cost,  # noqa: F401
                                         scale_step_flops)

# Dense bf16 peak FLOP/s per chip (vendor figures; H100/H200 SXM without sparsity).
PEAK_FLOPS: dict[str, float] = {
    "tpu v4": 275e12,
    "tpu v5 lite": 197e12,  # v5e reports its device_kind as "TPU v5 lite"
    "tpu v5e": 197e12,
    "tpu v5p": 459e12,
    "tpu v5": 459e12,
    "tpu v6 lite": 918e12,  # v6e (Trillium)
    "tpu v6e": 918e12,
    "h100": 989e12,
    "h200": 989e12,
}


def allowed_pairs(patch_nums) -> int:
  """Number of (query, key) pairs the scale-causal mask allows."""
  return int(round(mask_lib.allowed_fraction(patch_nums) * scales.num_tokens(patch_nums)
                   ** 2))


def training_flops(cfg: ModelConfig, dense_attention: bool = False) -> dict[str, float]:
  """FLOPs per image of one training step (forward + backward), by part, and 6ND."""
  c, v, cv = cfg.resolved_width, cfg.vocab_size, cfg.latent_channels
  f = int(round(c * cfg.mlp_ratio))
  length, first = cfg.num_tokens, cfg.first_tokens
  pairs = length * length if dense_attention else allowed_pairs(cfg.patch_nums)
  fwd = {
      "word_embed": 2 * (length - first) * cv * c,
      "blocks_matmul": cfg.depth * 2 * length * (3 * c * c + c * c + 2 * c * f),
      "attention": cfg.depth * 4 * c * pairs,
      "head": 2 * length * c * v,
      "adaln": 2 * (c * 6 * c * (1 if cfg.shared_aln else cfg.depth) + c * 2 * c),
  }
  train = {k: (2 if k == "word_embed" else 3) * x for k, x in fwd.items()}
  counts = var.count_params(cfg)
  out = {f"{k}": float(x) for k, x in train.items()}
  out["total"] = float(sum(train.values()))
  out["forward"] = float(sum(fwd.values()))
  out["6nd"] = 6.0 * counts["non_embedding"] * length
  out["6nd_no_head"] = 6.0 * (counts["non_embedding"] - counts["head"]) * length
  out["tokens_per_image"] = float(length)
  out["attention_density"] = pairs / (length * length)
  return out


def device_peak_flops(device: jax.Device | None = None) -> float | None:
  """Published per-chip peak for TPUs and H100/H200, None when unknown (e.g. CPU)."""
  kind = (device or jax.devices()[0]).device_kind.lower()
  for key in sorted(PEAK_FLOPS, key=len, reverse=True):
    if key in kind:
      return PEAK_FLOPS[key]
  return None


@functools.lru_cache(maxsize=None)
def measure_cpu_peak(size: int = 2048, repeats: int = 3, rounds: int = 4) -> float:
  """FLOP/s of the best round of `repeats` fp32 size^3 matmuls on the default device: the
  matmul peak this machine actually reaches (all cores, same XLA flags as training);
  measured once per process (about 1 s)."""
  a = jnp.ones((size, size), jnp.float32)
  b = jnp.full((size, size), 0.5, jnp.float32)
  mm = jax.jit(lambda x, y: x @ y)
  mm(a, b).block_until_ready()
  best = 0.0
  for _ in range(rounds):
    start = time.perf_counter()
    for _ in range(repeats):
      out = mm(a, b)
    out.block_until_ready()
    best = max(best, 2 * size ** 3 * repeats / (time.perf_counter() - start))
  return best


def peak_flops(measure_if_unknown: bool = True) -> tuple[float | None, str]:
  """(peak FLOP/s per device, where it comes from)."""
  peak = device_peak_flops()
  if peak is not None:
    return peak, f"published bf16 peak of {jax.devices()[0].device_kind}"
  if not measure_if_unknown:
    return None, "unknown"
  return measure_cpu_peak(), "fp32 matmul peak measured at start-up"


# ------------------------------------------------------------------------------ sampling
# The per-step counts live beside the sampler (varjax/models/sampling_cost.py), so that
# search and collaborative sampling report their own cost; here, the comparison with
# CoDe's parameter-proportional bound.


@functools.lru_cache(maxsize=16)
def _total_params(cfg: ModelConfig) -> int:
  return var.count_params(cfg)["total"]  # var-d30: a few seconds of tracing


def collaborative_table(drafter: ModelConfig, refiner: ModelConfig, guided: bool = False,
                        switches=None) -> list[dict]:
  """For each switch k: exact sampling FLOPs, the speed-up over the drafter alone (with and
  without the refiner's prefill), and the parameter-proportional bound
  N_A L / (N_A T_k + N_B (L - T_k)) with T_k the drafted tokens and N total parameters."""
  n_a, n_b = _total_params(drafter), _total_params(refiner)
  alone = sampling_cost(drafter, guided=guided)["total"]
  length = scales.num_tokens(drafter.patch_nums)
  out = []
  for k in (range(len(drafter.patch_nums) + 1) if switches is None else switches):
    cost = sampling_cost(drafter, refiner, k, guided)
    t = cost["drafted_tokens"]
    out.append({"switch": k, "drafted_tokens": t, "flops": cost["total"],
                "prefill_flops": cost["prefill_flops"], "speedup": alone / cost["total"],
                "speedup_without_prefill": alone / (cost["total"] - cost["prefill_flops"]),
                "parameter_bound": n_a * length / (n_a * t + n_b * (length - t)),
                "kv_cache_peak_bytes": cost["kv_cache_peak_bytes"]})
  return out
