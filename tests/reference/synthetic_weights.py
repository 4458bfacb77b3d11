"""Deterministic synthetic weights for the reference tokenizer, reproducible without torch.

The tiny official VQVAE (ch 32, the hard-coded ch_mult (1, 1, 2, 2, 4)) has 4.4 M
parameters, 17 MB as float32: too big for a test fixture. So its weights are not stored:
both `make_var_reference.py` (loading them into the official torch model) and
`tests/test_reference_parity.py` (converting them to ours) rebuild them here from the
parameter name and shape alone. `np.random.RandomState.random_sample` is frozen by NumPy's
compatibility policy (NEP 19) and is integer arithmetic plus one IEEE multiply, and the
rest is exact float64 arithmetic rounded once to float32, so the values are bit-identical
on any platform and NumPy version; the fixture stores per-tensor float64 sums to prove it.
"""

from __future__ import annotations

import math
import zlib

import numpy as np

# Stored explicitly in the fixture instead (chosen from the encoder's output statistics).
STORED = ("quantize.embedding.weight",)


def vae_weight(name: str, shape: tuple[int, ...]) -> np.ndarray:
  """float32 array for state-dict entry `name` of the official VQVAE.

  conv weights (OIHW): U(-a, a) with a = sqrt(6 / fan_in) (He variance); GroupNorm scales
  1 + U(-0.25, 0.25); biases U(-0.1, 0.1); the EMA hit-counter buffer zeros."""
  shape = tuple(int(s) for s in shape)
  if name.endswith("ema_vocab_hit_SV"):
    return np.zeros(shape, np.float32)
  u = np.random.RandomState(zlib.crc32(name.encode())).random_sample(shape) * 2.0 - 1.0
  if len(shape) == 4:
    fan_in = shape[1] * shape[2] * shape[3]
    return (u * math.sqrt(6.0 / fan_in)).astype(np.float32)
  if len(shape) == 1 and name.endswith(".weight"):
    return (1.0 + 0.25 * u).astype(np.float32)
  if len(shape) == 1 and name.endswith(".bias"):
    return (0.1 * u).astype(np.float32)
  raise ValueError(f"no synthetic rule for {name} {shape}")
