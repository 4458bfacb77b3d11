"""The training state and the jitted, sharded train and eval steps.

State (a plain dict pytree, what orbax saves):
    params   fp32 master weights, sharded by the logical rules (varjax.parallel.rules)
    opt      optax AdamW state, each moment sharded like its parameter
    step     int32 scalar: optimizer steps taken = the next batch to read
    rng      uint32 key data; step k draws its dropout/drop-path/label-drop key as
             fold_in(rng, k), so a resumed run draws exactly the same randomness

Batch (global arrays, batch dimension over data x fsdp):
    label    int32 [B]
    x        float32 [B, L - first, Cv]  teacher-forced inputs (tokenizer.indices_to_var_input)
    target   int32 [B, L]                the token pyramid, coarse to fine

`jax.jit` with in/out shardings and the state donated is the modern pjit: XLA's SPMD
partitioner inserts the FSDP all-gathers, tensor-parallel reductions and gradient
reduce-scatters from the shardings alone.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from varjax.config import ModelConfig
from varjax.errors import VarjaxError
from varjax.models import losses
from varjax.models.var import VAR, attention_monitors
from varjax.parallel import rules


def dummy_inputs(cfg: ModelConfig, batch: int = 1):
  labels = jnp.zeros((batch,), jnp.int32)
  x = jnp.zeros((batch, cfg.num_tokens - cfg.first_tokens, cfg.latent_channels), jnp.float32)
  return labels, x


def make_init(model: VAR, tx: optax.GradientTransformation, seed: int,
              param_key_impl: str | None = None) -> Callable[[], Any]:
  """A function () -> boxed state (params keep their nn.Partitioned logical names).
  param_key_impl="rbg" draws the params from the rbg PRNG (other values, same shapes):
  benchmarks use it because XLA:GPU took 42 s to compile var-d16's threefry initialisers
  on an H200."""
  def init():
    params_key, state_key = jax.random.split(jax.random.key(seed))
    if param_key_impl is not None:
      params_key = jax.random.key(seed, impl=param_key_impl)
    params = model.init({"params": params_key}, *dummy_inputs(model.cfg))["params"]
    return {"params": params, "opt": tx.init(nn.unbox(params)),
            "step": jnp.zeros((), jnp.int32), "rng": jax.random.key_data(state_key)}
  return init


def state_shardings(model: VAR, tx, seed: int, mesh: Mesh):
  """(abstract unboxed state, its NamedShardings)."""
  boxed = jax.eval_shape(make_init(model, tx, seed))
  param_sh = rules.param_shardings(boxed["params"], mesh)
  abstract = nn.unbox(boxed)
  shardings = {
      "params": param_sh,
      "opt": rules.optimizer_shardings(tx, abstract["opt"], param_sh, mesh),
      "step": rules.replicated(mesh),
      "rng": rules.replicated(mesh),
  }
  return abstract, shardings


def init_state(model: VAR, tx, seed: int, mesh: Mesh, shardings,
               param_key_impl: str | None = None):
  """The initial state, created directly in its shards (nothing whole on one device)."""
  with jax.set_mesh(mesh), rules.rules_context():
    return jax.jit(lambda: nn.unbox(make_init(model, tx, seed, param_key_impl)()),
                   out_shardings=shardings)()


def batch_shardings(mesh: Mesh):
  return {"label": rules.batch_sharding(mesh, 1), "x": rules.batch_sharding(mesh, 3),
          "target": rules.batch_sharding(mesh, 2)}


def _split_micro(batch: dict, accum: int) -> dict:
  """[B, ...] -> [accum, B / accum, ...]; micro-batch i takes rows i, i + accum, ... so each
  device keeps its own rows (no data moves between devices)."""
  def one(a):
    a = a.reshape(a.shape[0] // accum, accum, *a.shape[1:])
    return jnp.swapaxes(a, 0, 1)
  return jax.tree.map(one, batch)


def _sq_norm(tree) -> jax.Array:
  """|tree|^2 in fp32."""
  return sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree))


def noise_scale_estimates(g_small_sq, g_big_sq, b_small, b_big) -> dict[str, jax.Array]:
  """Unbiased |G|^2 and tr(Sigma) from squared gradient norms measured at two batch sizes
  (McCandlish et al. 2018, appendix A.1): E|G_B|^2 = |G|^2 + tr(Sigma) / B, so

      |G|^2     = (b_big |G_big|^2 - b_small |G_small|^2) / (b_big - b_small)
      tr(Sigma) = (|G_small|^2 - |G_big|^2) / (1 / b_small - 1 / b_big)

  Each is noisy for one step (|G|^2 can come out negative); B_simple = tr(Sigma) / |G|^2 is
  taken from averages of the two over steps (varjax.train.metrics.NoiseScaleEMA)."""
  g2 = (b_big * g_big_sq - b_small * g_small_sq) / (b_big - b_small)
  trace = (g_small_sq - g_big_sq) / (1.0 / b_small - 1.0 / b_big)
  return {"gns_g2_step": g2, "gns_trace_step": trace}


def _combine(a: dict, b: dict) -> dict:
  """Metrics of two equal parts of a batch: sums (divided by the count later), except
  maxima (`*_max*` keys), which take the larger."""
  return {k: jnp.maximum(a[k], b[k]) if "_max" in k else a[k] + b[k] for k in a}


def _mean_parts(metrics: dict, parts: int) -> dict:
  return {k: v if "_max" in k else v / parts for k, v in metrics.items()}


def train_step_fn(model: VAR, tx, schedule: optax.Schedule, grad_accum_steps: int = 1,
                  noise_scale: bool = False, z_loss: float = 0.0):
  """The pure (state, batch) -> (state, metrics) of one optimizer step (unjitted: jitted by
  make_train_step, vmapped over runs by varjax.train.lanes).

  Metrics: token_losses' (the cross-entropy `loss` and errors), log_z_mean / log_z_max,
  attn_logit_max (+ _per_layer), grad_norm, lr; with z_loss > 0 also z_loss (the added
  term); with noise_scale gns_g2_step / gns_trace_step (noise_scale_estimates) from the
  gradients of the grad_accum_steps micro-batches, or without accumulation of the two
  halves of the batch (computed side by side under vmap: the same FLOPs as the whole
  batch, one more gradient-sized buffer; an odd batch measures nothing)."""
  cfg = model.cfg

  def loss_fn(params, batch, key):
    logits, inter = model.apply({"params": params}, batch["label"], batch["x"], train=True,
                                rngs={"dropout": key}, mutable=["intermediates"])
    metrics = losses.token_losses(logits, batch["target"], cfg.patch_nums, log_z=True)
    metrics |= attention_monitors(inter["intermediates"], cfg.depth)
    log_z_sq = metrics.pop("log_z_sq")
    objective = metrics["loss"]
    if z_loss:
      metrics["z_loss"] = z_loss * log_z_sq
      objective = objective + metrics["z_loss"]
    return objective, metrics

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def train_step(state, batch):
    key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
    params = state["params"]
    batch_size = batch["label"].shape[0]
    parts = grad_accum_steps
    if parts == 1 and noise_scale and batch_size % 2 == 0:
      parts = 2
    extra = {}
    if parts == 1:
      (_, metrics), grads = grad_fn(params, batch, key)
    elif grad_accum_steps == 1:  # two halves side by side, for the noise scale only
      halves = _split_micro(batch, 2)
      keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(2))
      (_, m2), g2 = jax.vmap(grad_fn, in_axes=(None, 0, 0))(params, halves, keys)
      metrics = _mean_parts(_combine(*(jax.tree.map(lambda a: a[i], m2) for i in range(2))), 2)
      grads = jax.tree.map(lambda a: a.mean(0), g2)
      small_sq = jax.vmap(_sq_norm)(g2).mean()
      extra = noise_scale_estimates(small_sq, _sq_norm(grads), batch_size // 2, batch_size)
    else:
      micro = _split_micro(batch, grad_accum_steps)

      def body(carry, xs):
        i, mb = xs
        (_, m), g = grad_fn(params, mb, jax.random.fold_in(key, i))
        grads_sum, m_sum, sq_sum = carry
        sq = _sq_norm(g) if noise_scale else jnp.zeros((), jnp.float32)
        return (jax.tree.map(jnp.add, grads_sum, g), _combine(m_sum, m), sq_sum + sq), None

      zeros = jax.tree.map(jnp.zeros_like, params)
      shapes = jax.eval_shape(lambda: grad_fn(params, jax.tree.map(lambda a: a[0], micro),
                                              key)[0][1])
      zero_m = {k: jnp.full(s.shape, -jnp.inf if "_max" in k else 0, s.dtype)
                for k, s in shapes.items()}
      (grads, metrics, sq_sum), _ = jax.lax.scan(
          body, (zeros, zero_m, jnp.zeros((), jnp.float32)),
          (jnp.arange(grad_accum_steps), micro))
      grads = jax.tree.map(lambda t: t / grad_accum_steps, grads)
      metrics = _mean_parts(metrics, grad_accum_steps)
      if noise_scale:
        extra = noise_scale_estimates(sq_sum / grad_accum_steps, _sq_norm(grads),
                                      batch_size // grad_accum_steps, batch_size)
    updates, opt = tx.update(grads, state["opt"], params)
    new_state = {"params": optax.apply_updates(params, updates), "opt": opt,
                 "step": state["step"] + 1, "rng": state["rng"]}
    metrics = dict(metrics, **extra, grad_norm=optax.tree.norm(grads),
                   lr=schedule(state["step"]))
    return new_state, metrics

  return train_step


def make_train_step(model: VAR, tx, schedule: optax.Schedule, mesh: Mesh, shardings,
                    grad_accum_steps: int = 1, noise_scale: bool = False, z_loss: float = 0.0):
  """jitted (state, batch) -> (state, metrics); the state argument is donated."""
  train_step = train_step_fn(model, tx, schedule, grad_accum_steps, noise_scale, z_loss)
  jitted = jax.jit(train_step, in_shardings=(shardings, batch_shardings(mesh)),
                   out_shardings=(shardings, rules.replicated(mesh)), donate_argnums=(0,))

  def step(state, batch):
    with jax.set_mesh(mesh), rules.rules_context():
      return jitted(state, batch)

  step.jitted = jitted
  return step


def make_eval_step(model: VAR, mesh: Mesh, param_shardings):
  """jitted (params, batch) -> per-batch means of loss / token error, total and per scale."""
  cfg = model.cfg

  def eval_step(params, batch):
    logits = model.apply({"params": params}, batch["label"], batch["x"], train=False)
    return losses.token_losses(logits, batch["target"], cfg.patch_nums)

  jitted = jax.jit(eval_step, in_shardings=(param_shardings, batch_shardings(mesh)),
                   out_shardings=rules.replicated(mesh))

  def step(params, batch):
    with jax.set_mesh(mesh), rules.rules_context():
      return jitted(params, batch)
  return step


def make_prepare(tokenizer, tok_params, mesh: Mesh):
  """jitted (tokens per scale, labels) -> the batch dict: teacher-forced inputs from the
  frozen tokenizer (f_hat after each scale, area-resized to the next grid)."""
  tok_params = jax.device_put(tok_params, rules.replicated(mesh))

  def prepare(tokens, label):
    x = tokenizer.apply({"params": tok_params}, tokens, method="indices_to_var_input")
    target = jnp.concatenate([t.reshape(t.shape[0], -1) for t in tokens], axis=1)
    return {"label": label, "x": x, "target": target.astype(jnp.int32)}

  jitted = jax.jit(prepare, out_shardings=batch_shardings(mesh))

  def run(tokens, label):
    with jax.set_mesh(mesh):
      return jitted(tokens, label)
  return run


def check_batch_divisible(global_batch_size: int, grad_accum_steps: int, mesh: Mesh) -> None:
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if global_batch_size % grad_accum_steps:
    raise VarjaxError(f"data.global_batch_size {global_batch_size} is not divisible by "
                      f"optim.grad_accum_steps {grad_accum_steps}")
  micro = global_batch_size // grad_accum_steps
  if micro % shards:
    raise VarjaxError(f"the micro-batch of {micro} examples (global batch "
                      f"{global_batch_size} / {grad_accum_steps} accumulation steps) does "
                      f"not split over data x fsdp = {shards} devices")
