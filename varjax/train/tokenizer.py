"""Tokenizer training: VAR's multi-scale VQ-VAE on an image split, single host.

    varjax tokenizer train --preset vqvae-tiny32 --data.data_dir DIR   # ~5 min on 2 CPU cores

Loss = L1 + L2 reconstruction + the quantiser loss (commitment + codebook, VAR's
VectorQuantizer2). VAR's released tokenizer was also trained with perceptual and GAN
losses; we leave those out: the scaling study needs a fixed, reproducible tokenizer, not
the best FID. Codes unused for `dead_after` steps are re-initialised from residual vectors
the quantiser saw in the current batch, so the vocabulary stays in use.

A run directory (run.out_dir / run.name; varjax.train.rundir) holds config.json,
metrics.jsonl (varjax.train.metrics: "train" and "eval" records), checkpoints/<step>/
(orbax, periodic; varjax.train.checkpoint), params.msgpack (final) and summary.json: the
same files, cadence and step loop as the VAR trainer (varjax.train.steploop). SIGTERM or
Ctrl-C saves a checkpoint and stops (exit 143 / 130 from the CLI); the same command
resumes. `varjax.models.store.load_tokenizer(run_dir)` gives back (model, params, config).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from varjax import scales
from varjax.config import Config, OptimConfig
from varjax.data.pipeline import ImagePipeline, pipeline_from_config
from varjax.models import store, vqvae
from varjax.models.vqvae import VQVAE
from varjax.errors import VarjaxError
from varjax.train import checkpoint, metrics as metrics_lib, optimizer, rundir, steploop

# preset -> (dataset, resolution, schedule): what `--preset` sets besides the tokenizer.
PRESET_DATA: dict[str, tuple[str, int, tuple[int, ...]]] = {
    "vqvae-tiny32": ("embedded32", 32, scales.SCHEDULES["32"]),
    "vqvae-tiny64": ("embedded64", 64, scales.SCHEDULES["64"]),
    "vqvae-var": ("imagenet2012", 256, scales.SCHEDULES["256"]),
}
# Tokenizer recipe for small images: VAR's transformer lr (1e-4 x B / 256) is far too low
# for a 3M-parameter conv net trained for a few hundred steps.
TRAIN_DEFAULTS: dict[str, Any] = {
    "data": {"global_batch_size": 64, "crop": "random"},
    "optim": {"peak_lr": 2e-3, "b1": 0.9, "b2": 0.99, "weight_decay": 1e-4, "grad_clip": 1.0,
              "warmup_steps": 20, "schedule": "cosine", "min_lr_ratio": 0.05},
    "run": {"steps": 500, "log_every": 10, "eval_every": 1000, "checkpoint_every": 100},
}
DEAD_AFTER_STEPS = 20  # a code unused for this many steps is restarted
RESTART_EVERY = 10  # check for dead codes every this many steps


def base_config(preset: str = "vqvae-tiny32") -> dict[str, Any]:
  """Nested dict for `config.load_config(base=...)`: preset + tokenizer training recipe."""
  dataset, resolution, patch_nums = PRESET_DATA.get(preset, (None, None, None))
  tok = vqvae.tokenizer_preset(preset)
  base = {k: dict(v) for k, v in TRAIN_DEFAULTS.items()}
  base["tokenizer"] = tok
  base["model"] = {"patch_nums": list(patch_nums), "vocab_size": tok["vocab_size"],
                   "latent_channels": tok["latent_channels"]}
  base["data"].update(dataset=dataset, resolution=resolution)
  base["run"]["name"] = f"tokenizer-{preset.removeprefix('vqvae-')}"
  return base


# ------------------------------------------------------------------ optimizer

def make_optimizer(optim: OptimConfig, total_steps: int, batch_size: int):
  # Decay conv kernels only: decaying the codebook would pull codes towards 0, and norms
  # and biases are not decayed in VAR's recipe either.
  conv_kernels = lambda params: jax.tree_util.tree_map(lambda p: p.ndim == 4, params)
  return optimizer.adamw(optim, total_steps, batch_size, decay_mask=conv_kernels)


# ------------------------------------------------------------------ steps

def make_train_step(model: VQVAE, tx):
  def loss_fn(params, img):
    recon, aux = model.apply({"params": params}, img, train=True)
    l1 = jnp.mean(jnp.abs(recon - img))
    l2 = jnp.mean((recon - img) ** 2)
    loss = l1 + l2 + aux["vq_loss"]
    return loss, {"loss": loss, "l1": l1, "l2": l2, "vq_loss": aux["vq_loss"],
                  "usage_S": aux["usage_S"], "counts_SxV": aux["counts_SxV"],
                  "rest_NxC": aux["rest_NxC"]}

  @jax.jit
  def step(params, opt_state, img):
    grads, metrics = jax.grad(loss_fn, has_aux=True)(params, img)
    updates, opt_state = tx.update(grads, opt_state, params)
    metrics["grad_norm"] = optax.tree.norm(grads)
    return optax.apply_updates(params, updates), opt_state, metrics

  return step


def make_eval_step(model: VQVAE):
  @jax.jit
  def step(params, img, valid_B):
    recon, aux = model.apply({"params": params}, img)
    recon = jnp.clip(recon, -1, 1)
    sq_B = jnp.mean((recon - img) ** 2, axis=(1, 2, 3)) * valid_B
    counts = jnp.stack([
        jnp.bincount(idx.reshape(-1), jnp.broadcast_to(valid_B[:, None, None], idx.shape
                                                       ).reshape(-1), length=model.cfg.vocab_size)
        for idx in aux["indices"]])
    return jnp.sum(sq_B), counts

  return step


def psnr(mse_pm1: float) -> float:
  """PSNR in dB of images in [0, 1], from an MSE measured in [-1, 1] (4x larger)."""
  return 10 * math.log10(4.0 / max(mse_pm1, 1e-12))


def evaluate(model: VQVAE, params, pipeline: ImagePipeline, mean_image=None) -> dict[str, Any]:
  """Reconstruction error and codebook usage over one pass of a split (center crops).

  mse is in [-1, 1] units per pixel and channel; usage[s] is the fraction of the
  vocabulary used at scale s over the whole split; baseline_mse predicts `mean_image`
  (HxWx3) for every image when given.
  """
  step = make_eval_step(model)
  n, B = len(pipeline), pipeline.global_batch_size
  total_sq, counts, base_sq = 0.0, 0, 0.0
  for s in range(math.ceil(n / B)):
    batch = pipeline.batch(s)
    valid = (pipeline.local_positions(s) < n).astype(np.float32)  # last batch wraps
    sq, c = step(params, batch["image"], valid)
    total_sq += float(sq)
    counts = counts + np.asarray(c)
    if mean_image is not None:
      err = ((batch["image"] - mean_image) ** 2).mean(axis=(1, 2, 3))
      base_sq += float((err * valid).sum())
  mse = total_sq / n
  out = {"mse": mse, "psnr": psnr(mse), "usage": (counts > 0).mean(axis=1).tolist(),
         "num_images": n}
  if mean_image is not None:
    out["baseline_mse"] = base_sq / n
    out["baseline_psnr"] = psnr(base_sq / n)
  return out


# ------------------------------------------------------------------ dead codes

def restart_dead_codes(params, last_used_V: np.ndarray, step: int, rest_NxC: np.ndarray,
                       rng: np.random.Generator, dead_after: int = DEAD_AFTER_STEPS):
  """Codes unused for `dead_after` steps <- random residual vectors (+ small noise).

  Returns (params, number of codes restarted); `last_used_V` is updated in place.
  """
  dead = np.nonzero(step - last_used_V >= dead_after)[0]
  if dead.size == 0:
    return params, 0
  rows = rest_NxC[rng.integers(0, len(rest_NxC), dead.size)]
  rows = rows + 0.01 * rows.std() * rng.standard_normal(rows.shape).astype(np.float32)
  embedding = np.array(params["quantize"]["embedding"])
  embedding[dead] = rows
  last_used_V[dead] = step  # give them a fresh grace period
  quantize = dict(params["quantize"], embedding=jnp.asarray(embedding))
  return dict(params, quantize=quantize), int(dead.size)


# ------------------------------------------------------------------ loop

@jax.jit
def _mark_used(last_used_V, counts_SxV, step):
  """Codes used at any scale in this step get `step` as their last use (on the device)."""
  return jnp.where(counts_SxV.sum(axis=0) > 0, step, last_used_V).astype(jnp.int32)


def train_tokenizer(cfg: Config, *, progress: bool | None = None,
                    log: Callable[[str], None] = print,
                    on_step: Callable[[int], None] | None = None) -> dict[str, Any]:
  """Trains, evaluates on data.eval_split and writes the run directory; returns summary.

  Resumable: checkpoints hold the whole training state (params, optimizer state, code-use
  ages, the running mean image), the data order and the dead-code restarts are functions
  of the step, so a run restarted after a crash continues from its last checkpoint and ends
  with the same parameters as an uninterrupted run. A finished run is not retrained; a run
  directory holding another config is refused (varjax.train.rundir). The step cadence is
  the VAR trainer's (varjax.train.steploop); `on_step(step)` is called after each step.
  """
  start = time.time()
  patch_nums = scales.validate(cfg.model.patch_nums)
  vqvae.check_image_size((1, cfg.data.resolution, cfg.data.resolution, 3), cfg.tokenizer,
                         patch_nums)
  run_dir = rundir.run_dir(cfg)
  with contextlib.ExitStack() as cleanup:  # everything opened is closed, whatever stops us
    cleanup.enter_context(rundir.run_lock(run_dir))
    rundir.claim(run_dir, cfg, log=log)
    done = rundir.finished_summary(run_dir)
    if done is not None:
      log(f"{run_dir} is a finished run of this config; nothing to do")
      return done
    return _train(cfg, run_dir, patch_nums, cleanup, start, progress=progress, log=log,
                  on_step=on_step)


def _train(cfg: Config, run_dir: str, patch_nums, cleanup: contextlib.ExitStack, start: float,
           *, progress, log, on_step) -> dict[str, Any]:
  # ---- input
  train_data = pipeline_from_config(cfg.data, cfg.data.train_split, cfg.run.seed)
  eval_data = pipeline_from_config(cfg.data, cfg.data.eval_split, cfg.run.seed, crop="center")

  # ---- model and optimizer
  model = vqvae.build(cfg.tokenizer, patch_nums)
  params = vqvae.init_params(model, cfg.run.seed, cfg.data.resolution)
  batch_size = cfg.data.global_batch_size
  tx = make_optimizer(cfg.optim, cfg.run.steps, batch_size)
  opt_state = tx.init(params)
  train_step = make_train_step(model, tx)
  # Arrays in the orbax state; counters in the checkpoint's JSON record.
  state = {"params": params, "opt_state": opt_state,
           "last_used_V": np.zeros(cfg.tokenizer.vocab_size, np.int32),
           "image_sum": np.zeros((cfg.data.resolution,) * 2 + (3,), np.float32)}
  record = {"step": 0, "restarts": 0, "image_count": 0, "train_time": 0.0}
  ckpts = checkpoint.Checkpoints(run_dir, cfg.run.keep_checkpoints)
  cleanup.callback(ckpts.close)
  restored = ckpts.restore_latest(state, restart_if_damaged=cfg.run.restart_if_damaged)
  if restored is not None:
    state, record = restored
  first_step = int(record["step"])
  log(f"tokenizer {vqvae.count_params(params):,} params, schedule {list(patch_nums)}, "
      f"V {cfg.tokenizer.vocab_size}; {cfg.run.steps} steps of {batch_size} "
      f"images from {cfg.data.dataset}[{cfg.data.train_split}] ({len(train_data)}); "
      f"run dir {run_dir}" + (f"; resumed at step {first_step}" if first_step else ""))

  params, opt_state = state["params"], state["opt_state"]
  last_used_V = jnp.asarray(state["last_used_V"], jnp.int32)
  restarts, image_count = int(record["restarts"]), int(record["image_count"])
  image_sum = np.asarray(state["image_sum"], np.float32)
  resumed_time = float(record["train_time"])
  metrics_lib.truncate_after(run_dir, first_step)
  writer = metrics_lib.MetricsWriter(run_dir)
  cleanup.callback(writer.close)
  batches = iter(train_data.iterate(first_step, cfg.run.steps - first_step))
  t_loop = time.time()

  # ---- the loop: what a step, a log line, an evaluation and a checkpoint are
  def one_step(step: int):
    nonlocal params, opt_state, last_used_V, image_sum, image_count, restarts
    batch_step, batch = next(batches)
    assert batch_step == step, (batch_step, step)
    params, opt_state, m = train_step(params, opt_state, batch["image"])
    image_sum = image_sum + batch["image"].sum(axis=0)
    image_count += len(batch["image"])
    last_used_V = _mark_used(last_used_V, m["counts_SxV"], step)
    if (step + 1) % RESTART_EVERY == 0 and step + 1 < cfg.run.steps:
      # The generator is a function of the step, so a resumed run restarts the same codes.
      rng = np.random.default_rng([cfg.run.seed, 7, step])
      used = np.array(last_used_V)
      params, n = restart_dead_codes(params, used, step, np.asarray(m["rest_NxC"]), rng)
      last_used_V = jnp.asarray(used)
      restarts += n
    return {k: m[k] for k in ("loss", "l1", "l2", "vq_loss", "grad_norm", "usage_S")}

  def write_log(done: int, m, rate: float, train_time: float):
    writer.write(done, "train", {
        "time": resumed_time + time.time() - t_loop, "images_per_s": rate * batch_size,
        "restarted_codes": restarts,
        **{k: float(m[k]) for k in ("loss", "l1", "l2", "vq_loss", "grad_norm")},
        "usage": [round(float(u), 4) for u in m["usage_S"]]})

  def evaluate_now(done: int):
    writer.write(done, "eval", evaluate(model, params, eval_data))

  def save(done: int):
    ckpts.save(done, {"params": params, "opt_state": opt_state, "last_used_V": last_used_V,
                      "image_sum": image_sum},
               {"step": done, "restarts": restarts, "image_count": image_count,
                "train_time": resumed_time + time.time() - t_loop})

  def nonfinite(first_bad):
    raise VarjaxError(f"the tokenizer's training loss is not finite (nan or inf) at step "
                      f"{int(first_bad)}; stopped. Lower optim.peak_lr or check the data.")

  step_loop = steploop.StepLoop.for_run(
      cfg.run, first_step, desc="tokenizer", progress=progress, on_step=on_step,
      saved_where=ckpts.directory,
      postfix=lambda m: {"loss": f"{float(m['loss']):.4f}", "l2": f"{float(m['l2']):.4f}"})
  step_loop.run(steploop.Hooks(step=one_step, log=write_log, evaluate=evaluate_now, save=save,
                               nonfinite=nonfinite))
  train_time = resumed_time + time.time() - t_loop

  # ---- final evaluation, parameters, summary (last: it marks the run finished)
  mean_image = image_sum / max(image_count, 1)
  ev = evaluate(model, params, eval_data, mean_image=mean_image)
  writer.write(cfg.run.steps, "eval", ev)
  store.save_params(params, os.path.join(run_dir, store.PARAMS_FILE), cfg.run.steps)
  summary = {"steps": cfg.run.steps, "train_time_s": train_time,
             "wall_time_s": time.time() - start, "restarted_codes": restarts,
             "resumed_at_step": first_step, "num_params": vqvae.count_params(params),
             **{f"eval/{k}": v for k, v in ev.items()}}
  rundir.write_summary(run_dir, summary)
  return summary


def format_summary(summary: dict[str, Any], patch_nums) -> str:
  """Human-readable lines: reconstruction vs the mean-image baseline, usage per scale."""
  lines = [f"trained {summary['steps']} steps in {summary['train_time_s']:.0f} s "
           f"({summary['num_params']:,} params, {summary['restarted_codes']} codes restarted)",
           f"validation reconstruction: MSE {summary['eval/mse']:.5f} "
           f"(PSNR {summary['eval/psnr']:.2f} dB); mean-image baseline MSE "
           f"{summary['eval/baseline_mse']:.5f} (PSNR {summary['eval/baseline_psnr']:.2f} dB)",
           "codebook usage per scale: " + ", ".join(
               f"{pn}x{pn} {100 * u:.1f}%" for pn, u in zip(patch_nums, summary["eval/usage"]))]
  return "\n".join(lines)
