"""The VAR attention mask, defined once: token i may attend to token j iff
scale(j) <= scale(i) (causal across scales, bidirectional within a scale).

Every attention implementation and the FLOP counter derive their masks from here.
Block kernels pad L up to a multiple of the block size; pad keys are never attended and
pad query rows are dropped.
"""

from __future__ import annotations

import numpy as np

from varjax import scales


def padded_length(length: int, block: int) -> int:
  return -(-length // block) * block


def dense_mask(patch_nums, padded_to: int | None = None) -> np.ndarray:
  """bool[Lp, Lp]: allowed[i, j]. Pad rows and columns (beyond L) are all False."""
  ids = scales.scale_ids(patch_nums)
  length = len(ids)
  lp = padded_to or length
  if lp < length:
    raise ValueError(f"cannot pad {length} tokens to {lp}")
  allowed = np.zeros((lp, lp), bool)
  allowed[:length, :length] = ids[None, :] <= ids[:, None]
  return allowed


def key_prefix_end(patch_nums) -> np.ndarray:
  """int32[L]: query i attends exactly to keys [0, end[i]) = up to the end of its scale."""
  bounds = scales.boundaries(patch_nums)
  return bounds[1:][scales.scale_ids(patch_nums)]


def block_key_end(patch_nums, block_q: int, block_k: int,
                  padded_to: int | None = None) -> np.ndarray:
  """int32[Lp // block_q]: number of key blocks each query block must visit, Lp being
  `padded_to` (default: L padded to block_q). The block kernels' plan uses it.

  A query block spans queries [q0, q0 + block_q); its keys are the prefix ending at the
  largest key_prefix_end in the block. Key blocks past that are fully masked: never loaded.
  A block of pad queries only visits none.
  """
  ends = key_prefix_end(patch_nums)
  length = len(ends)
  lp = padded_to or padded_length(length, block_q)
  out = []
  for q0 in range(0, lp, block_q):
    rows = ends[q0:min(q0 + block_q, length)]
    last = int(rows.max()) if len(rows) else 0
    out.append(-(-last // block_k))
  return np.asarray(out, np.int32)


def allowed_fraction(patch_nums) -> float:
  """Fraction of the L x L score matrix that is not masked (0.619 for VAR's 256 px)."""
  ends = key_prefix_end(patch_nums)
  return float(ends.sum()) / float(len(ends)) ** 2
