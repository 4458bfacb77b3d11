"""Scale schedules ("patch_nums"): the grid sizes of VAR's token pyramid.

A schedule (1, 2, 3, 4) means scale k is a k_side x k_side token grid; the sequence is the
scales concatenated coarse to fine, L = sum(side^2) tokens. Scale ids and boundaries are
computed here once; the config's default schedule, the attention mask (varjax.kernels.mask),
the models and the FLOP counter use them. Only NumPy, so every layer of varjax may import it.
"""

from __future__ import annotations

import numpy as np

# VAR (Tian et al. 2024), FoundationVision/VAR: 256 px -> 16 x 16 latent, L = 680;
# 512 px -> 32 x 32 latent, L = 2240.
SCHEDULES: dict[str, tuple[int, ...]] = {
    "256": (1, 2, 3, 4, 5, 6, 8, 10, 13, 16),
    "512": (1, 2, 3, 4, 6, 9, 13, 18, 24, 32),
    # Embedded dataset (32 / 64 px images, 8x downsampling tokenizer): 4 x 4 and 8 x 8 latents.
    "32": (1, 2, 3, 4),
    "64": (1, 2, 3, 4, 6, 8),
}


def validate(patch_nums) -> tuple[int, ...]:
  """The schedule as a tuple, or ValueError saying what is wrong with it."""
  pn = tuple(int(p) for p in patch_nums)
  if not pn:
    raise ValueError("a scale schedule needs at least one scale")
  if any(p < 1 for p in pn):
    raise ValueError(f"scale sides must be >= 1, got {list(pn)}")
  if any(b <= a for a, b in zip(pn, pn[1:])):
    raise ValueError(f"scale sides must increase strictly, got {list(pn)}")
  return pn


def num_tokens(patch_nums) -> int:
  return sum(p * p for p in validate(patch_nums))


def boundaries(patch_nums) -> np.ndarray:
  """int32[num_scales + 1]: scale k occupies tokens [b[k], b[k + 1])."""
  sizes = [p * p for p in validate(patch_nums)]
  return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int32)


def scale_ids(patch_nums) -> np.ndarray:
  """int32[L]: the scale index of every token."""
  pn = validate(patch_nums)
  return np.repeat(np.arange(len(pn), dtype=np.int32), [p * p for p in pn])
