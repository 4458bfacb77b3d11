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
                 label_smoothing: float = 0.0) -> dict[str, jax.Array]:
  """Scalars: loss (the objective), token_error, loss_tail, token_error_tail; and
  loss_per_scale / token_error_per_scale of shape [num_scales]. Errors are in percent."""
  v = logits_BxLxV.shape[-1]
  logits = logits_BxLxV.astype(jnp.float32)
  if label_smoothing:
    labels_BxLxV = optax.smooth_labels(jax.nn.one_hot(targets_BxL, v), label_smoothing)
    ce_BxL = optax.softmax_cross_entropy(logits, labels_BxLxV)
    wrong_BxL = (jnp.argmax(logits, -1) != targets_BxL).astype(jnp.float32) * 100.0
  else:
    # Written out (no [B, L, V] one-hot, no separate argmax pass): the row max serves both
    # the log-sum-exp and the error, since argmax misses the target exactly when some logit
    # exceeds the target's (a tie at the max counts as right). Saves two passes over the
    # logits, a tenth of a CPU training step at V = 4096.
    max_BxL = jax.lax.stop_gradient(jnp.max(logits, axis=-1))
    shifted_BxLxV = logits - max_BxL[..., None]
    target_BxL = jnp.take_along_axis(shifted_BxLxV, targets_BxL[..., None], axis=-1)[..., 0]
    ce_BxL = jnp.log(jnp.sum(jnp.exp(shifted_BxLxV), axis=-1)) - target_BxL
    wrong_BxL = (target_BxL < 0).astype(jnp.float32) * 100.0
  ids = scales.scale_ids(patch_nums)
  num_scales = len(tuple(patch_nums))
  per_scale = lambda x_BxL: jax.ops.segment_sum(x_BxL.mean(0), ids, num_scales) / jnp.asarray(
      [p * p for p in patch_nums], jnp.float32)
  loss_S, err_S = per_scale(ce_BxL), per_scale(wrong_BxL)
  return {
      "loss": ce_BxL.mean(),
      "token_error": wrong_BxL.mean(),
      "loss_tail": loss_S[-1],
      "token_error_tail": err_S[-1],
      "loss_per_scale": loss_S,
      "token_error_per_scale": err_S,
  }
