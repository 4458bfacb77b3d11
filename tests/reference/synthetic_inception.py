"""Deterministic synthetic weights for the FID Inception, reproducible without torch.

The real weights (pt_inception-2015-12-05-6726825d.pth, 91 MB) cannot be fetched here, and
21.8 M random parameters are too big for a fixture, so `make_fid_inception_reference.py`
(torch + pytorch-fid) and `tests/test_eval_inception.py` (NumPy + ours) both rebuild them
from each state-dict entry's name and shape. `np.random.RandomState.random_sample` is frozen
by NumPy's compatibility policy (NEP 19), so the values are the same on any platform and
NumPy version; the fixture stores per-tensor float64 sums to prove it.
"""

from __future__ import annotations

import math
import zlib

import numpy as np


def inception_weight(name: str, shape: tuple[int, ...]) -> np.ndarray:
  """conv weights (OIHW): U(-a, a), a = sqrt(6 / fan_in) (He variance); BatchNorm: gamma
  1 + U(-1/4, 1/4), beta and running mean U(-1/10, 1/10), running var 1 + U(-1/2, 1/2);
  the classifier small; BatchNorm counters 0."""
  if name.endswith("num_batches_tracked"):
    return np.zeros(shape, np.int64)
  u = np.random.RandomState(zlib.crc32(name.encode())).random_sample(shape) * 2.0 - 1.0
  if len(shape) == 4:
    return (u * math.sqrt(6.0 / (shape[1] * shape[2] * shape[3]))).astype(np.float32)
  rule = {"bn.weight": 1.0 + 0.25 * u, "bn.bias": 0.1 * u, "bn.running_mean": 0.1 * u,
          "bn.running_var": 1.0 + 0.5 * u, "fc.weight": 0.01 * u, "fc.bias": 0.01 * u}
  for suffix, value in rule.items():
    if name.endswith(suffix):
      return value.astype(np.float32)
  raise ValueError(f"no synthetic rule for {name} {shape}")
