"""Progress bars: one helper for every long loop (training, tokenising, sampling, features).

A bar shows with ETA when `enabled` is True, or when it is None (the default everywhere)
and stderr is a terminal; in logs and CI it stays silent. Only process 0 of a multi-host
run draws one. A disabled bar is tqdm's no-op, so callers never branch on it.
"""

from __future__ import annotations

import sys
from typing import Iterable


def bar(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
        unit: str = "it", initial: int = 0, enabled: bool | None = None):
  from tqdm import tqdm
  if enabled is None:
    enabled = sys.stderr.isatty()
  jax = sys.modules.get("jax")  # only ask JAX when it is loaded already
  if enabled and jax is not None and jax.process_index() != 0:
    enabled = False
  return tqdm(iterable, total=total, initial=initial, desc=desc, unit=unit,
              dynamic_ncols=True, disable=not enabled)
