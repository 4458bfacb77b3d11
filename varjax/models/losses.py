"""VAR's training objective and the metrics it reports, per scale.

Cross-entropy over all L tokens (each token weighted 1 / L, as the reference), plus per
scale: mean loss and token error (% of argmax predictions that miss). VAR reports "Lmean"
/ "acc_mean" over all tokens and "Ltail" / "acc_tail" over the last scale.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from varjax import scales


def token_losses(logits_BxLxV: jax.Array, targets_BxL: jax.Array, patch_nums,
                 label_smoothing: float = 0.0, log_z: bool = False) -> dict[str, jax.Array]:
  """Scalars: loss (the objective), token_error, loss_tail, token_error_tail; and
  loss_per_scale / token_error_per_scale of shape [num_scales]. Errors are in percent.

  log_z: also log_z_mean and log_z_max, the mean and largest log Z = logsumexp of a
  token's output logits (no gradient: monitors of output-logit divergence), and log_z_sq,
  mean(log^2 Z) with its gradient, the z-loss term (Wortsman et al. 2023)."""
  v = logits_BxLxV.shape[-1]
  logits = logits_BxLxV.astype(jnp.float32)
  if label_smoothing:
    labels_BxLxV = optax.smooth_labels(jax.nn.one_hot(targets_BxL, v), label_smoothing)
    ce_BxL = optax.softmax_cross_entropy(logits, labels_BxLxV)
    wrong_BxL = (jnp.argmax(logits, -1) != targets_BxL).astype(jnp.float32) * 100.0
    log_z_BxL = jax.nn.logsumexp(logits, axis=-1) if log_z else None
  else:
    # Written out (no [B, L, V] one-hot, no separate argmax pass): the row max serves both
    # the log-sum-exp and the error, since argmax misses the target exactly when some logit
    # exceeds the target's (a tie at the max counts as right). Saves two passes over the
    # logits, a tenth of a CPU training step at V = 4096.
    max_BxL = jax.lax.stop_gradient(jnp.max(logits, axis=-1))
    shifted_BxLxV = logits - max_BxL[..., None]
    target_BxL = jnp.take_along_axis(shifted_BxLxV, targets_BxL[..., None], axis=-1)[..., 0]
    log_z_shifted_BxL = jnp.log(jnp.sum(jnp.exp(shifted_BxLxV), axis=-1))
    ce_BxL = log_z_shifted_BxL - target_BxL
    wrong_BxL = (target_BxL < 0).astype(jnp.float32) * 100.0
    # log Z = max + log sum exp(logits - max); the max is gradient-free, d log Z / d logits
    # is still the softmax (the max's own derivative cancels), so z-loss gradients are exact.
    log_z_BxL = max_BxL + log_z_shifted_BxL if log_z else None
  ids = scales.scale_ids(patch_nums)
  num_scales = len(tuple(patch_nums))
  per_scale = lambda x_BxL: jax.ops.segment_sum(x_BxL.mean(0), ids, num_scales) / jnp.asarray(
      [p * p for p in patch_nums], jnp.float32)
  loss_S, err_S = per_scale(ce_BxL), per_scale(wrong_BxL)
  extra = {}
  if log_z:
    watched_BxL = jax.lax.stop_gradient(log_z_BxL)
    extra = {"log_z_mean": watched_BxL.mean(), "log_z_max": watched_BxL.max(),
             "log_z_sq": jnp.square(log_z_BxL).mean()}
  return extra | {
      "loss": ce_BxL.mean(),
      "token_error": wrong_BxL.mean(),
      "loss_tail": loss_S[-1],
      "token_error_tail": err_S[-1],
      "loss_per_scale": loss_S,
      "token_error_per_scale": err_S,
  }
