"""Gradient noise scale B_simple = tr(Sigma) / |G|^2 (McCandlish et al. 2018): the
two-batch-size estimator against least squares, where both have closed forms; the step's
split of the batch against gradients taken by hand; B_simple logged by a tiny run."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import train_fixtures as fx
from varjax import config as config_lib
from varjax.models.var import VAR
from varjax.train import loop, metrics as metrics_lib, optimizer, step as step_lib


def _least_squares(trials: int, batch: int, seed: int = 0):
  """Per-example gradients [trials, batch, d] of l = (x.w - y)^2 / 2 with x ~ N(0, I_d),
  y = x.w* + eps, eps ~ N(0, s^2), at w = w* + delta; and the closed forms.

  g = x (x.delta - eps), so G = E[g] = delta and, by Isserlis' theorem,
  E[g g^T] = 2 delta delta^T + (|delta|^2 + s^2) I: Sigma = delta delta^T + (|delta|^2 + s^2) I,
  tr(Sigma) = |delta|^2 + d (|delta|^2 + s^2)."""
  d, s = 8, 0.5
  rng = np.random.default_rng(seed)
  w_star = rng.normal(size=d)
  delta = np.full(d, 0.5)
  x = rng.normal(size=(trials, batch, d))
  y = x @ w_star + s * rng.normal(size=(trials, batch))
  loss = lambda w, xi, yi: 0.5 * (xi @ w - yi) ** 2
  grad = jax.vmap(jax.vmap(jax.grad(loss), (None, 0, 0)), (None, 0, 0))
  per_example = np.asarray(grad(jnp.asarray(w_star + delta), jnp.asarray(x), jnp.asarray(y)),
                           np.float64)
  g2 = float(delta @ delta)
  return per_example, g2, g2 + d * (g2 + s * s)


@pytest.mark.parametrize("parts", [2, 4])  # halves (no accumulation) or 4 micro-batches
def test_estimator_recovers_the_closed_forms_of_least_squares(parts):
  batch = 64
  g_TxBxD, g2_true, trace_true = _least_squares(trials=4000, batch=batch)
  parts_TxPxD = g_TxBxD.reshape(len(g_TxBxD), parts, batch // parts, -1).mean(2)
  small_sq = np.square(parts_TxPxD).sum(-1).mean(1)  # mean over parts of |G_small|^2
  big_sq = np.square(g_TxBxD.mean(1)).sum(-1)
  est = step_lib.noise_scale_estimates(jnp.asarray(small_sq), jnp.asarray(big_sq),
                                       batch // parts, batch)
  g2, trace = float(np.mean(est["gns_g2_step"])), float(np.mean(est["gns_trace_step"]))
  assert g2 == pytest.approx(g2_true, rel=0.05)
  assert trace == pytest.approx(trace_true, rel=0.05)
  assert trace / g2 == pytest.approx(trace_true / g2_true, rel=0.05)  # B_simple = 11 here
  # The logged B_simple: EMAs of numerator and denominator, each bias-corrected.
  ema = metrics_lib.NoiseScaleEMA(0.999)
  est = {k: np.asarray(v, np.float32) for k, v in est.items()}
  for t in range(len(small_sq)):
    out = ema.update({"gns_g2_step": est["gns_g2_step"][t],
                      "gns_trace_step": est["gns_trace_step"][t]})
  w = 0.001 * 0.999 ** np.arange(len(small_sq))[::-1]
  np.testing.assert_allclose(float(out["gns_g2"]), np.sum(w * est["gns_g2_step"]) / w.sum(),
                             rtol=1e-4)
  np.testing.assert_allclose(float(out["gns_b_simple"]),
                             float(out["gns_trace"]) / float(out["gns_g2"]), rtol=1e-6)
  assert float(out["gns_b_simple"]) == pytest.approx(trace_true / g2_true, rel=0.1)


@pytest.mark.slow  # two more compiles of a var-d2 step (about 15 s cold)
def test_the_step_splits_the_batch_into_halves_with_their_own_gradients():
  """The step's |G|^2 and tr(Sigma) equal the formula applied to the two halves' gradients
  taken separately (no dropout, so the halves see exactly what they would alone)."""
  cfg = config_lib.from_dict({"model": {
      "depth": 2, "width": 64, "heads": 2, "vocab_size": fx.VOCAB, "latent_channels": fx.LATENT,
      "num_classes": fx.CLASSES, "patch_nums": list(fx.PATCH_NUMS), "drop_path_rate": 0.0,
      "cond_drop_prob": 0.0, "attn_impl": "xla"}})
  model = VAR(cfg.model)
  tx = optimizer.adamw(cfg.optim, 10, 8)
  state = jax.jit(lambda: nn.unbox(step_lib.make_init(model, tx, 0)()))()
  rng = np.random.default_rng(1)
  m = cfg.model
  batch = {"label": jnp.asarray(rng.integers(0, m.num_classes, 8), jnp.int32),
           "x": jnp.asarray(rng.normal(size=(8, m.num_tokens - 1, m.latent_channels)),
                            jnp.float32),
           "target": jnp.asarray(rng.integers(0, m.vocab_size, (8, m.num_tokens)), jnp.int32)}
  step = step_lib.train_step_fn(model, tx, optimizer.lr_schedule(cfg.optim, 10, 8),
                                noise_scale=True)
  _, out = jax.jit(step)(state, batch)

  def grad_of(rows):
    def loss(p):
      logits = model.apply({"params": p}, batch["label"][rows], batch["x"][rows])
      ce = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(
          logits, batch["target"][rows][..., None], -1)[..., 0]
      return ce.mean()
    return jax.jit(jax.grad(loss))(state["params"])

  sq = lambda t: float(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(t)))
  halves = [grad_of(np.arange(i, 8, 2)) for i in range(2)]  # rows i, i + 2, ...
  small_sq = (sq(halves[0]) + sq(halves[1])) / 2
  big_sq = sq(jax.tree.map(lambda a, b: (a + b) / 2, *halves))
  np.testing.assert_allclose(float(out["gns_g2_step"]), 2 * big_sq - small_sq, rtol=1e-3)
  np.testing.assert_allclose(float(out["gns_trace_step"]), 8 * (small_sq - big_sq), rtol=1e-3)
  np.testing.assert_allclose(float(out["grad_norm"]), np.sqrt(big_sq), rtol=1e-4)
  # Two accumulation steps take the same rows per micro-batch: the same estimates.
  accum = step_lib.train_step_fn(model, tx, optimizer.lr_schedule(cfg.optim, 10, 8), 2,
                                 noise_scale=True)
  _, out2 = jax.jit(accum)(state, batch)
  for k in ("gns_g2_step", "gns_trace_step", "loss", "attn_logit_max"):
    np.testing.assert_allclose(out2[k], out[k], rtol=1e-5, atol=1e-7)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  """The fixtures' token sets, with training codes drawn from 4 of the 64: uniform random
  codes leave almost no signal (|G|^2 ~ 0.005 against tr(Sigma) / B ~ 0.1), so that a few
  steps' average of |G|^2 has no reliable sign; a skewed marginal is learnable at once."""
  setup = fx.make_token_setup(str(tmp_path_factory.mktemp("gns")), n_train=64, n_eval=16)
  rng = np.random.default_rng(0)
  train = os.path.join(setup["tokens"], "train")
  for k, pn in enumerate(fx.PATCH_NUMS):
    np.save(os.path.join(train, f"scale_{k}.npy"),
            rng.integers(0, 4, (64, pn, pn)).astype(np.int16))
  return setup


def test_a_tiny_run_logs_a_finite_positive_noise_scale_and_the_monitors(setup, tmp_path):
  values = fx.tiny_config(setup, str(tmp_path), optim={"peak_lr": 3e-3, "warmup_steps": 2,
                                                       "z_loss": 1e-4},
                          run={"name": "gns", "steps": 4, "log_every": 2, "eval_every": 100,
                               "checkpoint_every": 100, "log_noise_scale": True})
  loop.train(config_lib.from_dict(values), progress=False, log=lambda s: None)
  with open(os.path.join(str(tmp_path), "gns", "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f if '"train"' in line]
  assert [r["step"] for r in records] == [2, 4]
  for r in records:
    assert np.isfinite(r["gns_b_simple"]) and r["gns_b_simple"] > 0
    assert r["gns_trace"] > 0 and r["gns_g2"] > 0
    assert r["gns_b_simple"] == pytest.approx(r["gns_trace"] / r["gns_g2"], rel=1e-5)
    assert len(r["attn_logit_max_per_layer"]) == 2
    assert r["attn_logit_max"] == max(r["attn_logit_max_per_layer"])
    assert r["log_z_max"] >= r["log_z_mean"] > 0
    assert r["z_loss"] == pytest.approx(1e-4 * r["log_z_mean"] ** 2, rel=1e-2)
