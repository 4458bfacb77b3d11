"""The optimizer recipe: optax AdamW with VAR's learning-rate schedule and decay exclusions.

    peak lr    base_lr x global_batch / 256 unless optim.peak_lr is set (VAR: 1e-4 x B/256)
    warmup     linear from 0.5% of the peak (VAR's wp0 = 0.005) over optim.warmup_steps
    decay      linear (VAR) | cosine | wsd (warmup-stable-decay: constant, then linear over
               the last decay_fraction of the steps) | constant; down to peak x min_lr_ratio
    AdamW      betas (b1, b2), weight decay on matrices only: none on biases, norms, position
               and level embeddings, the start token, AdaLN offsets or attention scales
    clipping   global gradient norm at optim.grad_clip, before the update
"""

from __future__ import annotations

from typing import Callable

import jax
import optax

from varjax.config import OptimConfig

WARMUP_START = 0.005  # VAR's wp0: warmup starts at 0.5% of the peak
# Parameter names VAR keeps out of weight decay besides every 1-D parameter (biases, scales).
NO_DECAY_NAMES = frozenset({"pos_start", "pos_1LC", "lvl_embed", "ada_gss", "scale_mul",
                            "q_bias", "v_bias"})


def lr_schedule(optim: OptimConfig, total_steps: int, global_batch_size: int,
                peak: float | jax.Array | None = None) -> optax.Schedule:
  """`peak` overrides the config's peak lr; it may be a traced value (one per lane when
  varjax.train.lanes vmaps runs that differ in learning rate)."""
  if peak is None:
    peak = optim.resolved_peak_lr(global_batch_size)
  low = peak * optim.min_lr_ratio
  warm = min(optim.warmup_steps, total_steps)
  rest = max(total_steps - warm, 1)
  if optim.schedule == "constant":
    decay = optax.constant_schedule(peak)
  elif optim.schedule == "linear":
    decay = optax.linear_schedule(peak, low, rest)
  elif optim.schedule == "cosine":
    decay = optax.cosine_decay_schedule(peak, rest, alpha=optim.min_lr_ratio)
  else:  # wsd
    stable = wsd_decay_start(optim, total_steps) - warm
    decay = optax.join_schedules([optax.constant_schedule(peak),
                                  optax.linear_schedule(peak, low, rest - stable)], [stable])
  if warm == 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(peak * WARMUP_START, peak, warm), decay],
                              [warm])


def wsd_decay_start(optim: OptimConfig, total_steps: int) -> int:
  """The first step of the WSD decay: after warmup the last `decay_fraction` of the steps
  (at least one) decay linearly. Sweeps branch shorter runs off a longer one here."""
  warm = min(optim.warmup_steps, total_steps)
  rest = max(total_steps - warm, 1)
  return warm + rest - max(int(round(rest * optim.decay_fraction)), 1)


def var_decay_mask(params):
  """True where AdamW decays: matrices, except VAR's embedding/offset exclusions."""
  def decays(path, p) -> bool:
    names = {str(getattr(k, "key", k)) for k in path}
    return p.ndim >= 2 and not names & NO_DECAY_NAMES
  return jax.tree_util.tree_map_with_path(decays, params)


def adamw(optim: OptimConfig, total_steps: int, global_batch_size: int,
          decay_mask: Callable = var_decay_mask,
          peak: float | jax.Array | None = None) -> optax.GradientTransformation:
  return optax.chain(
      optax.clip_by_global_norm(optim.grad_clip),
      optax.adamw(lr_schedule(optim, total_steps, global_batch_size, peak), b1=optim.b1,
                  b2=optim.b2, weight_decay=optim.weight_decay, mask=decay_mask))
