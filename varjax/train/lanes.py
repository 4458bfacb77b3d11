"""Lanes: runs of one shape trained together as one jitted, `vmap`ped program.

Runs that differ only in seed and peak learning rate (a seed or learning-rate sweep of one
model) have identical array shapes, so their training states stack along a leading lane
axis [K, ...] and one vmapped step updates all K. Tiny models leave an accelerator (or the
CPU's vector units) mostly idle and pay a fixed dispatch cost per step; K lanes pay it once
and give XLA K times the work per kernel (`make bench` prints the speed-up over K
sequential runs, measured side by side).

What each lane gets is exactly what its separate run would get: its own initial params
(its seed), its own dropout / label-drop keys (fold_in of its seed's key, per step), its
own data order (a function of its seed and the step), and its own learning-rate schedule
(the peak is a per-lane input of the vmapped step; see optimizer.lr_schedule). Each lane
writes its own run directory in the registry format of a single run (config.json,
metrics.jsonl, checkpoints/, params.msgpack, summary.json with "lanes": K), so a lane run
can be resumed, evaluated and analysed like any other; a lane whose loss turns non-finite
is reported failed without stopping the others.

Lanes run in one process (any number of local devices: states are replicated along the
lane axis and sharded like a single run's within it; the K x B batch is split over data).
"""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from varjax import config as config_lib
from varjax import scales
from varjax.config import Config
from varjax.data import pipeline
from varjax.errors import VarjaxError
from varjax.models import var
from varjax.parallel import mesh as mesh_lib, rules
from varjax.train import accounting as accounting_lib, checkpoint, loop, metrics as metrics_lib
from varjax.train import optimizer, rundir, step as step_lib, steploop

# Config keys lanes may differ in; everything else must be equal.
LANE_KEYS = (("run", "name"), ("run", "seed"), ("optim", "peak_lr"), ("optim", "base_lr"))


def shape_key(cfg: Config) -> str:
  """Equal for runs that can share one lanes program."""
  values = config_lib.to_dict(cfg)
  for section, key in LANE_KEYS:
    values[section][key] = None
  return json.dumps(values, sort_keys=True)


def _lane_shardings(shardings, mesh):
  return jax.tree.map(lambda s: NamedSharding(mesh, P(None, *s.spec)), shardings)


def _restore(ckpts: list[checkpoint.Checkpoints], target,
             restart_if_damaged: bool) -> tuple[list, int] | None:
  """Every lane's state at the newest step all lanes have (a kill between two lanes' saves
  leaves them one checkpoint apart), or None when some lane has none."""
  at_most = min((c.steps() or [0])[-1] for c in ckpts)
  while at_most > 0:
    restored = [c.restore_latest(target, at_most=at_most, restart_if_damaged=restart_if_damaged)
                for c in ckpts]
    if any(r is None for r in restored):
      return None
    steps = {int(r[1]["step"]) for r in restored}
    if len(steps) == 1:
      return [r[0] for r in restored], steps.pop()
    at_most = min(steps)  # some lane's newest readable checkpoint is older: agree on it
  return None


def train_lanes(cfgs: list[Config], *, progress: bool | None = None,
                log: Callable[[str], None] = print,
                on_step: Callable[[int], None] | None = None,
                devices=None) -> list[dict[str, Any]]:
  """Trains (or resumes) the runs `cfgs` as lanes of one program; returns one summary per
  run, or {"error": message} for a lane that failed. All runs must be unfinished and
  differ only in run.name, run.seed and the learning rate (shape_key)."""
  start_wall = time.time()
  if len({shape_key(c) for c in cfgs}) != 1:
    raise VarjaxError("lanes need runs that differ only in run.name, run.seed and the peak "
                      "learning rate; these differ in more (run them separately)")
  if jax.process_count() > 1:
    raise VarjaxError("lanes run in one process; use BACKEND=local for multi-host runs")
  scales.validate(cfgs[0].model.patch_nums)
  directories = [rundir.run_dir(c) for c in cfgs]
  with contextlib.ExitStack() as cleanup:  # everything opened is closed, whatever stops us
    for directory, c in zip(directories, cfgs):
      cleanup.enter_context(rundir.run_lock(directory))
      rundir.claim(directory, c, log=log)
      if rundir.finished_summary(directory) is not None:
        raise VarjaxError(f"{directory} is finished; lanes take unfinished runs only")
    return _train(cfgs, directories, cleanup, start_wall, progress=progress, log=log,
                  on_step=on_step, devices=devices)


def _train(cfgs: list[Config], directories: list[str], cleanup: contextlib.ExitStack,
           start_wall: float, *, progress, log, on_step, devices) -> list[dict[str, Any]]:
  k = len(cfgs)
  cfg = cfgs[0]
  # ---- mesh, data (one order per lane), tokenizer
  mesh = mesh_lib.make_mesh(cfg.mesh, devices)
  batch = cfg.data.global_batch_size
  step_lib.check_batch_divisible(batch, cfg.optim.grad_accum_steps, mesh)
  step_lib.check_batch_divisible(k * batch, 1, mesh)
  first_data, eval_data, tokenizer_dir, prepare = loop.open_data(cfg, mesh)
  train_data = [first_data] + [loop.TokenData(first_data.path, c, mesh, shuffle_seed=c.run.seed,
                                              unique_images=c.data.unique_images)
                               for c in cfgs[1:]]

  # ---- model, optimizers, stacked state
  model = var.VAR(cfg.model)
  steps = cfg.run.steps
  peaks = jnp.asarray([c.optim.resolved_peak_lr(batch) for c in cfgs], jnp.float32)
  txs = [optimizer.adamw(c.optim, steps, batch) for c in cfgs]
  abstract, shardings = step_lib.state_shardings(model, txs[0], cfg.run.seed, mesh)
  lane_sh = _lane_shardings(shardings, mesh)
  if any(c.run.warm_start for c in cfgs):
    raise VarjaxError("lanes start from scratch; train warm-started runs (run.warm_start) "
                      "on their own")
  ckpts = []
  for d, c in zip(directories, cfgs):
    ckpts.append(checkpoint.Checkpoints(d, c.run.keep_checkpoints, c.run.keep_steps))
    cleanup.callback(ckpts[-1].close)
  target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract, shardings)
  restored = _restore(ckpts, target, restart_if_damaged=cfg.run.restart_if_damaged)
  if restored is None:
    # One vmapped init over the seeds: the same draws as each run's own init, one compile.
    seeds = jnp.asarray([c.run.seed for c in cfgs], jnp.int32)
    init = jax.jit(jax.vmap(lambda seed: nn.unbox(step_lib.make_init(model, txs[0], seed)())),
                   out_shardings=lane_sh)
    with jax.set_mesh(mesh), rules.rules_context():
      state = init(seeds)
    first_step = 0
  else:
    lane_states, first_step = restored
    state = jax.jit(lambda xs: jax.tree.map(lambda *a: jnp.stack(a), *xs),
                    out_shardings=lane_sh)(lane_states)
    del lane_states
  take = jax.jit(lambda s, i: jax.tree.map(lambda a: a[i], s), out_shardings=shardings)
  for directory in directories:
    metrics_lib.truncate_after(directory, first_step)

  def one_lane(lane_state, lane_batch, peak):
    tx = optimizer.adamw(cfg.optim, steps, batch, peak=peak)
    schedule = optimizer.lr_schedule(cfg.optim, steps, batch, peak=peak)
    return step_lib.train_step_fn(model, tx, schedule, cfg.optim.grad_accum_steps,
                                  noise_scale=cfg.run.log_noise_scale,
                                  z_loss=cfg.optim.z_loss)(lane_state, lane_batch)

  def lanes_step(stacked, flat_batch, lane_peaks):
    per_lane = jax.tree.map(lambda a: a.reshape(k, a.shape[0] // k, *a.shape[1:]), flat_batch)
    return jax.vmap(one_lane)(stacked, per_lane, lane_peaks)

  jitted = jax.jit(lanes_step,
                   in_shardings=(lane_sh, step_lib.batch_shardings(mesh), rules.replicated(mesh)),
                   out_shardings=(lane_sh, rules.replicated(mesh)), donate_argnums=(0,))
  eval_step = step_lib.make_eval_step(model, mesh, shardings["params"])

  def lane_batch(step: int):
    positions = pipeline.sample_positions(step, batch)
    locals_ = [d.local(positions) for d in train_data]
    merged = {"tokens": [np.concatenate([l["tokens"][s] for l in locals_])
                         for s in range(len(cfg.model.patch_nums))],
              "label": np.concatenate([l["label"] for l in locals_])}
    return first_data.global_batch(merged)

  accs = [accounting_lib.accounting(c, mesh) for c in cfgs]
  log(f"{k} lanes of {accounting_lib.describe_run(cfg, accs[0], mesh, '...', first_step)}: "
      + ", ".join(f"{c.run.name} (seed {c.run.seed}, lr {float(p):.3g})"
                  for c, p in zip(cfgs, peaks)))
  writers = []
  for d in directories:
    writers.append(metrics_lib.MetricsWriter(d))
    cleanup.callback(writers[-1].close)
  errors: list[str | None] = [None] * k
  noise_ema = metrics_lib.NoiseScaleEMA(cfg.run.noise_scale_ema)  # [K] averages

  # ---- the loop: what a step, a log line, an evaluation and a checkpoint are
  def one_step(step: int):
    nonlocal state
    tok, label = lane_batch(step)
    with jax.set_mesh(mesh), rules.rules_context():
      state, m = jitted(state, prepare(tok, label), peaks)
    return noise_ema.update(m)

  def write_log(done_steps: int, m, rate: float, train_time: float):
    for i in range(k):
      if errors[i] is None:
        record = accounting_lib.train_record(jax.tree.map(lambda v: v[i], m), accs[i],
                                             done_steps, rate, train_time, batch)
        writers[i].write(done_steps, "train", dict(record, lanes=k))

  def evaluate_now(done_steps: int):
    for i in range(k):
      if errors[i] is None:
        writers[i].write(done_steps, "eval", loop.evaluate(
            eval_step, take(state, i)["params"], eval_data, prepare, cfg.run.eval_examples))

  def save(done_steps: int):
    for i, ckpt in enumerate(ckpts):
      ckpt.save(done_steps, take(state, i), {"step": done_steps, "examples_seen": done_steps * batch,
                                             "wall_time": time.time(), "lanes": k})

  def nonfinite(first_bad):  # a diverging lane fails alone; the others go on
    for i in range(k):
      if errors[i] is None and first_bad[i] >= 0:
        errors[i] = (f"the training loss is not finite (nan or inf) at step {int(first_bad[i])} "
                     f"(lane {i} of {k}); lower its learning rate")
        log(f"{cfgs[i].run.name}: {errors[i]}")

  def postfix(m):
    alive = [float(m["loss"][i]) for i in range(k) if errors[i] is None]
    return {"loss": f"{min(alive):.4f}..{max(alive):.4f}"} if alive else {}

  step_loop = steploop.StepLoop.for_run(cfg.run, first_step, desc=f"{k} lanes",
                                        progress=progress, on_step=on_step, postfix=postfix,
                                        saved_where=f"each of the {k} lanes' run directories")
  step_loop.run(steploop.Hooks(step=one_step, log=write_log, evaluate=evaluate_now, save=save,
                               nonfinite=nonfinite))

  # ---- end: per lane final evaluation, checkpoint, params, summary (last)
  save(steps)
  results: list[dict[str, Any]] = []
  for i, c in enumerate(cfgs):
    if errors[i] is not None:
      results.append({"error": errors[i]})
      continue
    lane_state = take(state, i)
    last_eval = loop.evaluate(eval_step, lane_state["params"], eval_data, prepare,
                              c.run.eval_examples)
    writers[i].write(steps, "eval", last_eval)
    summary = accounting_lib.run_summary(c, accs[i], last_eval, first_step=first_step,
                                         train_time=step_loop.train_time,
                                         wall_time=time.time() - start_wall, mesh=mesh,
                                         tokenizer_dir=tokenizer_dir,
                                         train_examples=len(train_data[i]))
    summary["lanes"] = k
    params = loop.host_params(lane_state["params"], mesh)
    results.append(loop.finish(c, directories[i], params, summary, progress, log))
  return results
