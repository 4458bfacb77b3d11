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
from varjax.models.var import VAR
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


def train_step_fn(model: VAR, tx, schedule: optax.Schedule, grad_accum_steps: int = 1):
  """The pure (state, batch) -> (state, metrics) of one optimizer step (unjitted: jitted by
  make_train_step, vmapped over runs by varjax.train.lanes)."""
  cfg = model.cfg

  def loss_fn(params, batch, key):
    logits = model.apply({"params": params}, batch["label"], batch["x"], train=True,
                         rngs={"dropout": key})
    metrics = losses.token_losses(logits, batch["target"], cfg.patch_nums)
    return metrics["loss"], metrics

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def train_step(state, batch):
    key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
    params = state["params"]
    if grad_accum_steps == 1:
      (_, metrics), grads = grad_fn(params, batch, key)
    else:
      micro = _split_micro(batch, grad_accum_steps)

      def body(carry, xs):
        i, mb = xs
        (_, m), g = grad_fn(params, mb, jax.random.fold_in(key, i))
        return jax.tree.map(jnp.add, carry, (g, m)), None

      zeros = jax.tree.map(jnp.zeros_like, params)
      shapes = jax.eval_shape(lambda: grad_fn(params, jax.tree.map(lambda a: a[0], micro),
                                              key)[0][1])
      zero_m = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
      (grads, metrics), _ = jax.lax.scan(
          body, (zeros, zero_m), (jnp.arange(grad_accum_steps), micro))
      grads, metrics = jax.tree.map(lambda t: t / grad_accum_steps, (grads, metrics))
    updates, opt = tx.update(grads, state["opt"], params)
    new_state = {"params": optax.apply_updates(params, updates), "opt": opt,
                 "step": state["step"] + 1, "rng": state["rng"]}
    metrics = dict(metrics, grad_norm=optax.tree.norm(grads), lr=schedule(state["step"]))
    return new_state, metrics

  return train_step


def make_train_step(model: VAR, tx, schedule: optax.Schedule, mesh: Mesh, shardings,
                    grad_accum_steps: int = 1):
  """jitted (state, batch) -> (state, metrics); the state argument is donated."""
  train_step = train_step_fn(model, tx, schedule, grad_accum_steps)
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
