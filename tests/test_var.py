"""The VAR transformer: published parameter counts, the cache against the full pass, the
scale-causal mask seen through the whole model, losses and sampling filters against NumPy."""

import dataclasses
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from conftest import run_varjax
from varjax import scales
from varjax.config import ModelConfig
from varjax.errors import VarjaxError
from varjax.models import losses, sampling
from varjax.models.var import VAR, check_labels, count_params, init_std


def small_cfg(**kw) -> ModelConfig:
  base = dict(depth=2, width=64, heads=4, vocab_size=37, latent_channels=8, num_classes=5,
              patch_nums=(1, 2, 3, 4))
  return ModelConfig(**{**base, **kw})


def random_params(cfg: ModelConfig, seed: int = 0, noise: float = 0.05):
  """Init, then perturb every parameter so that the AdaLN gates (init 1e-5) open and the
  blocks matter: tests on the init alone would barely exercise attention."""
  model = VAR(cfg)
  x = jnp.zeros((1, cfg.num_tokens - cfg.first_tokens, cfg.latent_channels))
  params = nn.unbox(model.init(jax.random.key(seed), jnp.zeros((1,), jnp.int32), x))
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
  leaves = [p + noise * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)]
  return model, jax.tree.unflatten(tree, leaves)


def inputs(cfg: ModelConfig, batch: int, seed: int = 2):
  key = jax.random.key(seed)
  labels = jax.random.randint(key, (batch,), 0, cfg.num_classes)
  x = jax.random.normal(jax.random.fold_in(key, 1), (batch, cfg.num_tokens - cfg.first_tokens,
                                                    cfg.latent_channels))
  return labels, x


@pytest.mark.parametrize("model, expected", [("var-d16", 310_283_520), ("var-d20", 600_917_136)])
def test_params_cli_reports_published_counts(model, expected):
  result = run_varjax("params", "--model", model, "--json")
  assert result.returncode == 0, result.stderr
  counts = json.loads(result.stdout)
  assert counts["total"] == expected
  groups = ("embedding", "attention", "mlp", "adaln", "head")
  assert sum(counts[g] for g in groups) == counts["total"]


def test_param_count_closed_form():
  # Per block 18 C^2 + 14 C + H; outside: word_embed, class (N + 1), start, L positions,
  # levels, head AdaLN (2 C^2 + 2 C) and head (C V + V).
  cfg = ModelConfig(depth=3, patch_nums=(1, 2, 3), vocab_size=100, num_classes=7)
  c, h, length = 192, 3, 14
  expected = 3 * (18 * c * c + 14 * c + h) + (32 * c + c) + 8 * c + c + length * c + 3 * c \
      + (2 * c * c + 2 * c) + (c * 100 + 100)
  assert count_params(cfg)["total"] == expected
  shared = count_params(ModelConfig(depth=3, patch_nums=(1, 2, 3), vocab_size=100,
                                    num_classes=7, shared_aln=True))
  # Shared AdaLN: one Linear (6 C^2 + 6 C) and a (6, C) offset per block instead.
  assert shared["total"] == expected - 3 * (6 * c * c + 6 * c) + (6 * c * c + 6 * c) + 3 * 6 * c


def test_unknown_model_name_is_one_line():
  result = run_varjax("params", "--model", "var-x9")
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
      "varjax: error: model: unknown model name 'var-x9'; models are named var-d<depth>, "
      "e.g. var-d16"]


def test_init_follows_var():
  cfg = ModelConfig(depth=4, patch_nums=(1, 2, 3, 4), vocab_size=512)
  model = VAR(cfg)
  params = nn.unbox(model.init(jax.random.key(0), jnp.zeros((4,), jnp.int32),
                               jnp.zeros((4, 29, 32))))["params"]
  std = init_std(256)
  assert np.std(params["blocks_0"]["attn"]["mat_qkv"]["kernel"]) == pytest.approx(std, rel=0.02)
  assert np.std(params["blocks_0"]["ffn"]["fc2"]["kernel"]) == pytest.approx(
      std / np.sqrt(8), rel=0.02)
  ada = params["blocks_0"]["ada_lin"]["kernel"]  # [C, 6, C]: gamma1, gamma2, scale1, ...
  assert np.std(ada[:, :2]) == pytest.approx(std * 1e-5, rel=0.02)
  assert np.std(ada[:, 2:]) == pytest.approx(std * 0.5, rel=0.02)
  assert np.std(params["head"]["kernel"]) == pytest.approx(std * 0.02, rel=0.02)
  np.testing.assert_allclose(params["blocks_0"]["attn"]["scale_mul"], np.log(4.0))
  assert not np.any(params["blocks_0"]["attn"]["q_bias"])


@pytest.mark.parametrize("kw", [{}, {"shared_aln": True}, {"patch_nums": (1, 2, 3, 4, 6, 8)}])
def test_cached_scale_by_scale_logits_equal_full_pass(kw):
  cfg = small_cfg(**kw)
  model, params = random_params(cfg)
  labels, x = inputs(cfg, batch=3)
  full = model.apply(params, labels, x)
  cached = sampling.teacher_forced_cached_logits(model, params, labels, x)
  assert full.shape == (3, cfg.num_tokens, cfg.vocab_size)
  assert float(jnp.abs(full).max()) > 0.1  # the logits are not all ~0
  np.testing.assert_allclose(cached, full, atol=1e-5, rtol=1e-5)


schedules = st.lists(st.integers(1, 5), min_size=1, max_size=4, unique=True).map(
    lambda xs: tuple(sorted(xs)))


@settings(max_examples=5, deadline=None)
@given(schedules)
def test_model_dependencies_follow_the_scale_causal_mask(pn):
  """d logits_i / d input_j is non-zero exactly when scale(j) <= scale(i): the mask as
  the whole model sees it, compared with the definition written token by token."""
  cfg = small_cfg(patch_nums=pn, depth=1)
  model, params = random_params(cfg, noise=0.2)
  labels, x = inputs(cfg, batch=1)
  if len(pn) == 1:
    return  # no teacher-forced inputs
  jac = jax.jacobian(lambda x_: model.apply(params, labels, x_)[0].sum(-1))(x)  # [L, 1, Lr, Cv]
  depends = np.abs(np.asarray(jac)[:, 0]).sum(-1) > 0  # [L, Lr]
  owner = [k for k, p in enumerate(pn) for _ in range(p * p)]
  first = pn[0] ** 2
  expected = np.array([[owner[j + first] <= owner[i] for j in range(len(owner) - first)]
                       for i in range(len(owner))])
  np.testing.assert_array_equal(depends, expected)


def test_condition_drop_and_drop_path_only_in_training():
  cfg = small_cfg(cond_drop_prob=1.0, drop_path_rate=0.0)
  model, params = random_params(cfg)
  labels, x = inputs(cfg, batch=2)
  null = jnp.full_like(labels, cfg.num_classes)
  dropped = model.apply(params, labels, x, train=True, rngs={"dropout": jax.random.key(0)})
  np.testing.assert_allclose(dropped, model.apply(params, null, x), atol=1e-6)
  assert not np.allclose(model.apply(params, labels, x), dropped, atol=1e-4)
  # Drop-path: random in training (two keys differ), off in evaluation, where the same
  # params give what the model without drop-path gives.
  cfg = small_cfg(cond_drop_prob=0.0, drop_path_rate=0.5, depth=3)
  model, params = random_params(cfg)
  a = model.apply(params, labels, x, train=True, rngs={"dropout": jax.random.key(1)})
  b = model.apply(params, labels, x, train=True, rngs={"dropout": jax.random.key(2)})
  assert not np.allclose(a, b)
  without = VAR(dataclasses.replace(cfg, drop_path_rate=0.0)).apply(
      params, labels, x, train=True, rngs={"dropout": jax.random.key(1)})
  assert not np.allclose(a, without) and not np.allclose(b, without)
  np.testing.assert_allclose(model.apply(params, labels, x), without, rtol=1e-6, atol=1e-6)


def test_token_losses_match_numpy():
  pn = (1, 2, 3)
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(4, 14, 11)).astype(np.float32)
  targets = rng.integers(0, 11, size=(4, 14))
  out = losses.token_losses(jnp.asarray(logits), jnp.asarray(targets), pn)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  ce = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
  wrong = (logits.argmax(-1) != targets) * 100.0
  bounds = scales.boundaries(pn)
  np.testing.assert_allclose(out["loss"], ce.mean(), rtol=1e-6)
  np.testing.assert_allclose(out["token_error"], wrong.mean(), rtol=1e-6)
  for k in range(3):
    sl = slice(bounds[k], bounds[k + 1])
    np.testing.assert_allclose(out["loss_per_scale"][k], ce[:, sl].mean(), rtol=1e-5)
    np.testing.assert_allclose(out["token_error_per_scale"][k], wrong[:, sl].mean(), rtol=1e-5)
  np.testing.assert_allclose(out["loss_tail"], ce[:, bounds[2]:].mean(), rtol=1e-5)


def _numpy_filter(logits, top_k, top_p):
  """VAR's rule written row by row."""
  out = logits.astype(np.float64).copy()
  for row in out.reshape(-1, out.shape[-1]):
    if top_k and top_k < len(row):
      row[row < np.sort(row)[-top_k]] = -np.inf
    if top_p:
      order = np.argsort(row, kind="stable")
      p = np.exp(row[order] - row.max())
      cumulative = np.cumsum(p / p.sum())
      remove = cumulative <= 1 - top_p
      remove[-1] = False
      row[order[remove]] = -np.inf
  return out


@pytest.mark.parametrize("top_k, top_p", [(0, 0.0), (5, 0.0), (0, 0.8), (7, 0.9), (50, 0.5)])
def test_top_k_top_p_match_numpy(top_k, top_p):
  logits = np.random.default_rng(top_k).normal(size=(2, 3, 40)).astype(np.float32) * 3
  got = np.asarray(sampling.filter_logits(jnp.asarray(logits), top_k, top_p))
  want = _numpy_filter(logits, top_k, top_p)
  np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
  np.testing.assert_allclose(got[~np.isinf(got)], want[~np.isinf(want)], rtol=1e-6)


def test_bad_inputs_fail_clearly():
  cfg = small_cfg()
  model, params = random_params(cfg)
  labels, x = inputs(cfg, batch=2)
  with pytest.raises(ValueError, match=r"schedule \[1, 2, 3, 4\] .* needs \[batch, 29, 8\]"):
    model.apply(params, labels, x[:, :20])
  with pytest.raises(VarjaxError, match="label 7 is out of range: the model has 5 classes"):
    check_labels(np.array([1, 7]), cfg.num_classes)
  with pytest.raises(VarjaxError, match="label -1"):
    check_labels(np.array([-1]), cfg.num_classes)


@pytest.mark.slow  # the default run keeps the kernel's forward + gradients at 256 px
# (test_attention) and the sharded training step with pallas (test_parallel)
def test_training_step_with_pallas_equals_xla():
  """One AdamW step of var-d2 on VAR's 256 px schedule (L = 680, padded to 768 inside the
  kernel): the Pallas block-sparse kernel (interpret mode) against dense XLA attention."""
  import optax
  results = {}
  for impl in ("xla", "pallas"):
    cfg = ModelConfig(depth=2, vocab_size=512, num_classes=10, attn_impl=impl,
                      drop_path_rate=0.0)
    model, params = random_params(cfg)
    labels, x = inputs(cfg, batch=2)
    targets = jax.random.randint(jax.random.key(5), (2, cfg.num_tokens), 0, cfg.vocab_size)
    opt = optax.adamw(1e-3, b1=0.9, b2=0.95, weight_decay=0.05)

    @jax.jit
    def step(params, opt_state):
      def loss_fn(p):
        logits = model.apply(p, labels, x, train=True, rngs={"dropout": jax.random.key(0)})
        return losses.token_losses(logits, targets, cfg.patch_nums)["loss"]
      loss, grads = jax.value_and_grad(loss_fn)(params)
      updates, opt_state = opt.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), loss, grads

    results[impl] = step(params, opt.init(params))
  (p_x, loss_x, g_x), (p_p, loss_p, g_p) = results["xla"], results["pallas"]
  np.testing.assert_allclose(loss_p, loss_x, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g_p), jax.tree.leaves(g_x)):
    np.testing.assert_allclose(a, b, atol=1e-5 * float(jnp.abs(b).max()) + 1e-12)
  # Adam's first update is lr * g / (|g| + eps): for the rare gradient near eps, a 1e-5
  # relative gradient difference moves the update by up to ~1e-3 lr. Bound: 5e-3 lr.
  for a, b in zip(jax.tree.leaves(p_p), jax.tree.leaves(p_x)):
    np.testing.assert_allclose(a, b, atol=5e-6)


def test_every_parameter_carries_logical_axis_names():
  """What the training issue relies on to shard without touching model code: each param
  is boxed with one known logical name (or None) per axis, and every matrix over 1 MiB in
  var-d16 has at least one axis a mesh can split."""
  from varjax.models.var import LOGICAL_AXES
  cfg = ModelConfig(depth=16)
  model = VAR(cfg)
  boxed = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1,), jnp.int32),
      jnp.zeros((1, cfg.num_tokens - 1, cfg.latent_channels))))["params"]
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert len(leaves) == len(jax.tree.leaves(nn.unbox(boxed)))
  splittable = {"embed", "heads", "mlp", "vocab", "adaln", "classes"}
  for leaf in leaves:
    assert isinstance(leaf, nn.LogicallyPartitioned)
    assert len(leaf.names) == leaf.value.ndim
    assert set(leaf.names) <= set(LOGICAL_AXES) | {None}
    if leaf.value.size * 4 > 2 ** 20:
      assert splittable & set(leaf.names), leaf.names


def test_bfloat16_compute_tracks_float32():
  """bf16 matmuls with fp32 params, norms and logits stay close to the fp32 model."""
  cfg = small_cfg()
  model, params = random_params(cfg)
  labels, x = inputs(cfg, batch=2)
  full = model.apply(params, labels, x)
  half = VAR(small_cfg(dtype="bfloat16")).apply(params, labels, x)
  assert half.dtype == jnp.float32
  np.testing.assert_allclose(half, full, atol=3e-2 * float(jnp.abs(full).max()))
  assert not np.array_equal(half, full)
