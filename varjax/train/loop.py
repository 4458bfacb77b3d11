"""`varjax train`: one VAR training run on token pyramids, sharded over a device mesh.

    varjax train --config sweeps/configs/embedded32.yaml --model.depth=4 --run.name d4

Flow: lock and claim the run directory (varjax.train.rundir) -> mesh -> state (restored
from the newest readable checkpoint onto this mesh, or initialised in its shards) -> the
shared step loop (varjax.train.steploop): for each step this process's rows of the global
batch from the token cache, teacher-forced inputs from the frozen tokenizer, one jitted
train step; metrics.jsonl / TensorBoard every log_every steps, held-out evaluation every
eval_every steps, a checkpoint every checkpoint_every steps, on SIGTERM or Ctrl-C and at
the end -> final params (the run dir is then a model dir) and summary.json, written last. The data order is a pure function of (seed, step), so a resumed run reads exactly the
batches the interrupted one would have: resuming is bitwise on CPU.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from typing import Any, Callable

import jax
import numpy as np

from varjax import config as config_lib
from varjax import scales
from varjax.config import Config
from varjax.data import pipeline, tokens as tokens_lib
from varjax.errors import VarjaxError
from varjax.models import store, var
from varjax.parallel import distributed, mesh as mesh_lib, rules
from varjax.train import accounting as accounting_lib, checkpoint, metrics as metrics_lib
from varjax.train import optimizer, rundir, step as step_lib, steploop


class NonFiniteLoss(VarjaxError):
  pass


def unique_subset(n: int, k: int) -> np.ndarray:
  """int64 [k], sorted: the examples of a k-example subset of an n-example set. The first k
  of a permutation seeded by n alone: the same for every run and seed, nested in k."""
  return np.sort(np.random.default_rng([20261130, n]).permutation(n)[:k])


class TokenData:
  """This process's rows of each global batch of a token-pyramid split."""

  def __init__(self, path: str, cfg: Config, mesh, shuffle_seed: int | None,
               unique_images: int = 0):
    self.pyramids = tokens_lib.TokenPyramids(path)
    self.path, self.cfg, self.mesh, self.seed = path, cfg, mesh, shuffle_seed
    # The examples this run may read: all, or data.unique_images of them (training only).
    self.subset = None
    if unique_images:
      n = len(self.pyramids)
      if unique_images > n:
        raise VarjaxError(f"data.unique_images {unique_images} is more than the {n} examples "
                          f"in {path}")
      self.subset = unique_subset(n, unique_images)
    self.batch_size = cfg.data.global_batch_size
    self.rows = distributed.process_rows(self.batch_size)
    if tuple(self.pyramids.patch_nums) != tuple(cfg.model.patch_nums):
      raise VarjaxError(f"{path} holds schedule {list(self.pyramids.patch_nums)}, the model "
                        f"uses {list(cfg.model.patch_nums)} (set --model.patch_nums)")
    if self.pyramids.vocab_size != cfg.model.vocab_size:
      raise VarjaxError(f"{path} holds tokens of a {self.pyramids.vocab_size}-code tokenizer, "
                        f"the model has model.vocab_size {cfg.model.vocab_size}")

    top = int(np.max(self.pyramids.labels)) if len(self.pyramids) else 0
    if top >= cfg.model.num_classes:
      raise VarjaxError(f"{path} has labels up to {top}, but model.num_classes is "
                        f"{cfg.model.num_classes} (set --model.num_classes={top + 1})")

  def __len__(self) -> int:
    return len(self.pyramids) if self.subset is None else len(self.subset)

  def local(self, positions: np.ndarray) -> dict[str, Any]:
    if self.seed is None:  # evaluation: the split in order
      indices = positions % len(self)
    else:
      indices = pipeline.example_indices(self.seed, positions, len(self))
    if self.subset is not None:
      indices = self.subset[indices]
    return self.pyramids.batch(indices[self.rows])

  def global_batch(self, local: dict[str, Any]):
    arrays = distributed.global_batch(
        {**{f"t{k}": t for k, t in enumerate(local["tokens"])}, "label": local["label"]},
        self.mesh)
    return [arrays[f"t{k}"] for k in range(len(local["tokens"]))], arrays["label"]

  def train_batch(self, step: int):
    return self.global_batch(self.local(pipeline.sample_positions(step, self.batch_size)))


def _tokens_dirs(cfg: Config) -> tuple[str, str]:
  if not cfg.data.tokens:
    raise VarjaxError("data.tokens is not set: VAR trains on token pyramids; make them with "
                      "`varjax tokenize --split train --out DIR/train` (and validation) and "
                      "pass --data.tokens DIR")
  return (os.path.join(cfg.data.tokens, cfg.data.train_split),
          os.path.join(cfg.data.tokens, cfg.data.eval_split))


def _tokenizer_dir(cfg: Config, train_data: TokenData) -> str:
  if cfg.data.tokenizer:
    return cfg.data.tokenizer
  recorded = train_data.pyramids.meta.get("tokenizer")
  if not recorded:
    raise VarjaxError(f"{train_data.path} does not record its tokenizer; pass "
                      "--data.tokenizer DIR")
  return recorded


def evaluate(eval_step, params, data: TokenData, prepare, num_examples: int) -> dict[str, Any]:
  """Mean loss / token error (total and per scale) over the first `num_examples` of the
  split in order (whole global batches; 0 means all whole batches of the split)."""
  b = data.batch_size
  available = len(data) // b * b
  n = available if num_examples <= 0 else min(available, num_examples // b * b)
  if n == 0:
    raise VarjaxError(f"{data.path} has {len(data)} examples, fewer than one global batch of "
                      f"{b}; lower data.global_batch_size or use a larger eval split")
  sums: dict[str, Any] = {}
  for start in range(0, n, b):
    tok, label = data.global_batch(data.local(np.arange(start, start + b)))
    out = jax.device_get(eval_step(params, prepare(tok, label)))
    for k, v in out.items():
      sums[k] = sums.get(k, 0) + np.asarray(v, np.float64)
  return {k: (v / (n // b)).tolist() for k, v in sums.items()} | {"examples": n}


def host_params(params, mesh):
  """Full parameters as NumPy on every process (jit to replicated, then the local copy)."""
  full = jax.jit(lambda p: p, out_shardings=rules.replicated(mesh))(params)
  return jax.tree.map(lambda a: np.asarray(a.addressable_data(0)), full)


def sample_quality(cfg: Config, directory: str, progress, log) -> dict[str, Any]:
  """fd_<network> or fid of a finished run with the protocol of cfg.eval, merged into its
  summary.json (varjax.eval.fid); returns the updated summary. `varjax eval fid --run`
  does the same for runs trained without it."""
  from varjax.eval import features, fid
  from varjax.models import sampling
  ev = cfg.eval
  network = features.load_feature_network(ev.inception_weights, ev.feature_net)
  protocol = sampling.SamplingProtocol(cfg=ev.guidance, top_k=ev.top_k, top_p=ev.top_p,
                                       seed=ev.seed)
  result = fid.evaluate_run(directory, network, num_samples=ev.num_samples,
                            batch_size=ev.batch_size, protocol=protocol,
                            reference_split=ev.reference_split,
                            progress=progress)
  log(f"{result['metric']} = {result['value']:.4f} ({ev.num_samples} samples, "
      f"{result['seconds']} s)")
  return fid.read_summary(directory)


def open_data(cfg: Config, mesh) -> tuple[TokenData, TokenData, str, Callable]:
  """(train data, eval data, tokenizer dir, jitted prepare) of a run on `mesh`."""
  train_path, eval_path = _tokens_dirs(cfg)
  train_data = TokenData(train_path, cfg, mesh, shuffle_seed=cfg.run.seed,
                         unique_images=cfg.data.unique_images)
  eval_data = TokenData(eval_path, cfg, mesh, shuffle_seed=None)
  tokenizer_dir = _tokenizer_dir(cfg, train_data)
  tokenizer, tok_params, tok_cfg = store.load_tokenizer(tokenizer_dir)
  store.check_same_tokens(cfg, tok_cfg, "the model config", f"the tokenizer {tokenizer_dir}")
  return train_data, eval_data, tokenizer_dir, step_lib.make_prepare(tokenizer, tok_params, mesh)


def finish(cfg: Config, directory: str, params, summary: dict[str, Any], progress, log):
  """Process 0 writes the final params (the run dir becomes a model dir), then summary.json
  (last: it marks the run finished), then measures sample quality if cfg.eval asks."""
  if jax.process_index() != 0:
    return summary
  store.save_params(params, os.path.join(directory, store.PARAMS_FILE), cfg.run.steps)
  rundir.write_summary(directory, summary)
  if cfg.eval.enabled:
    summary = sample_quality(cfg, directory, progress, log)
  return summary


# Keys a warm-start donor may differ in: its length and where it writes and checkpoints.
WARM_START_FREE = ("run.name", "run.steps", "run.warm_start", "run.keep_steps",
                   *rundir.RESUME_FREE_KEYS)


def warm_start(cfg: Config, target, directory: str, write: bool = True):
  """(state, record) of the checkpoint cfg.run.warm_start names, after checking that the
  other run trains exactly like this one up to that step (same config but for its length,
  the same learning rate at every step before it); its metrics up to the step are copied
  into this run's metrics.jsonl so the run's curve is whole."""
  donor_dir, step = cfg.run.warm_start_point
  path = os.path.join(donor_dir, "config.json")
  if not os.path.isfile(path):
    raise VarjaxError(f"run.warm_start: {donor_dir} has not started (no config.json); "
                      "train it first")
  donor = config_lib.load_config(path)
  diff = [k for k in rundir.training_differences(cfg, donor) if k not in WARM_START_FREE]
  if diff:
    raise VarjaxError(f"run.warm_start: {donor_dir} differs from this run in "
                      f"{', '.join(diff[:5])}, not only in its length")
  if not 0 < step < cfg.run.steps:
    raise VarjaxError(f"run.warm_start: step {step} is not inside this run's "
                      f"{cfg.run.steps} steps")
  batch = cfg.data.global_batch_size
  ours = optimizer.lr_schedule(cfg.optim, cfg.run.steps, batch)
  theirs = optimizer.lr_schedule(donor.optim, donor.run.steps, batch)
  at = np.arange(step)
  if not np.allclose(np.asarray(ours(at)), np.asarray(theirs(at)), rtol=1e-6, atol=0):
    raise VarjaxError(f"run.warm_start: the learning rates of {donor_dir} and this run "
                      f"differ before step {step} (use optim.schedule=wsd or constant, and "
                      "branch before this run's decay)")
  ckpts = checkpoint.Checkpoints(donor_dir, donor.run.keep_checkpoints, read_only=True)
  try:
    restored = ckpts.restore_step(target, step)
  finally:
    ckpts.close()
  if restored is None:
    raise VarjaxError(f"run.warm_start: {donor_dir} has no checkpoint of step {step} yet; "
                      "train it past that step first (it needs run.keep_steps to include "
                      f"{step}; a sweep does both)")
  donor_metrics = os.path.join(donor_dir, metrics_lib.METRICS_FILE)
  if write and os.path.exists(donor_metrics):  # train() then drops the lines after `step`
    shutil.copyfile(donor_metrics, os.path.join(directory, metrics_lib.METRICS_FILE))
  return restored


def train(cfg: Config, *, progress: bool | None = None, log: Callable[[str], None] = print,
          on_step: Callable[[int], None] | None = None, devices=None) -> dict[str, Any]:
  """Runs (or resumes, or skips if finished) the run `cfg` describes; returns summary.json.

  `on_step(step)` is called after every optimizer step (tests use it to interrupt)."""
  start_wall = time.time()
  scales.validate(cfg.model.patch_nums)
  directory = rundir.run_dir(cfg)
  is_main = jax.process_index() == 0
  with contextlib.ExitStack() as cleanup:  # everything opened is closed, whatever stops us
    if is_main:  # one trainer per run dir (the processes of one multi-host run share it)
      cleanup.enter_context(rundir.run_lock(directory))
    rundir.claim(directory, cfg, write=is_main, log=log)
    done = rundir.finished_summary(directory)
    if done is not None:
      if cfg.eval.enabled and "sample_protocol" not in done and is_main:
        log(f"{directory} is a finished run of this config; measuring its samples")
        return sample_quality(cfg, directory, progress, log)
      log(f"{directory} is a finished run of this config; nothing to do")
      return done
    # ---- mesh, data, tokenizer
    mesh = mesh_lib.make_mesh(cfg.mesh, devices)
    step_lib.check_batch_divisible(cfg.data.global_batch_size, cfg.optim.grad_accum_steps,
                                   mesh)
    train_data, eval_data, tokenizer_dir, prepare = open_data(cfg, mesh)

    # ---- model, optimizer, state (restored onto this mesh: orbax reshards)
    model = var.VAR(cfg.model)
    batch = cfg.data.global_batch_size
    tx = optimizer.adamw(cfg.optim, cfg.run.steps, batch)
    schedule = optimizer.lr_schedule(cfg.optim, cfg.run.steps, batch)
    abstract, shardings = step_lib.state_shardings(model, tx, cfg.run.seed, mesh)
    ckpts = checkpoint.Checkpoints(directory, cfg.run.keep_checkpoints, cfg.run.keep_steps)
    cleanup.callback(ckpts.close)
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract, shardings)
    restored = ckpts.restore_latest(target, restart_if_damaged=cfg.run.restart_if_damaged)
    if restored is None and cfg.run.warm_start:
      restored = warm_start(cfg, target, directory, write=is_main)
    if restored is None:
      state, first_step = step_lib.init_state(model, tx, cfg.run.seed, mesh, shardings), 0
    else:
      state, record = restored
      first_step = int(record["step"])
    if is_main:
      metrics_lib.truncate_after(directory, first_step)
    train_step = step_lib.make_train_step(model, tx, schedule, mesh, shardings,
                                          cfg.optim.grad_accum_steps,
                                          noise_scale=cfg.run.log_noise_scale,
                                          z_loss=cfg.optim.z_loss)
    noise_ema = metrics_lib.NoiseScaleEMA(cfg.run.noise_scale_ema)
    eval_step = step_lib.make_eval_step(model, mesh, shardings["params"])

    acc = accounting_lib.accounting(cfg, mesh)
    log(accounting_lib.describe_run(cfg, acc, mesh, directory, first_step))
    writer = metrics_lib.MetricsWriter(directory)
    cleanup.callback(writer.close)

    # ---- the loop: what a step, a log line, an evaluation and a checkpoint are
    def one_step(step: int):
      nonlocal state
      tok, label = train_data.train_batch(step)
      state, m = train_step(state, prepare(tok, label))
      return noise_ema.update(m)

    def write_log(done_steps: int, m, rate: float, train_time: float):
      writer.write(done_steps, "train",
                   accounting_lib.train_record(m, acc, done_steps, rate, train_time, batch))

    def evaluate_now(done_steps: int):
      writer.write(done_steps, "eval", evaluate(eval_step, state["params"], eval_data, prepare,
                                                cfg.run.eval_examples))

    def save(done_steps: int):
      ckpts.save(done_steps, state, {"step": done_steps, "examples_seen": done_steps * batch,
                                     "wall_time": time.time()})

    def nonfinite(first_bad):
      good = [s for s in ckpts.steps() if s < int(first_bad)]
      raise NonFiniteLoss(
          f"the training loss is not finite (nan or inf) at step {int(first_bad)}; stopped. "
          + (f"The last good checkpoint is step {good[-1]} in {ckpts.directory}."
             if good else "No checkpoint was written yet.")
          + " Lower optim.base_lr/peak_lr, raise optim.warmup_steps or check the data.")

    loop = steploop.StepLoop.for_run(
        cfg.run, first_step, desc=cfg.run.name, progress=progress, on_step=on_step,
        saved_where=ckpts.directory,
        postfix=lambda m: {"loss": f"{float(m['loss']):.4f}",
                           "err": f"{float(m['token_error']):.1f}%"})
    loop.run(steploop.Hooks(step=one_step, log=write_log, evaluate=evaluate_now, save=save,
                            nonfinite=nonfinite))

    # ---- end: final evaluation, checkpoint, model dir, summary (last)
    last_eval = evaluate(eval_step, state["params"], eval_data, prepare, cfg.run.eval_examples)
    writer.write(cfg.run.steps, "eval", last_eval)
    save(cfg.run.steps)
    params = host_params(state["params"], mesh)
    summary = accounting_lib.run_summary(
        cfg, acc, last_eval, first_step=first_step, train_time=loop.train_time,
        wall_time=time.time() - start_wall, mesh=mesh, tokenizer_dir=tokenizer_dir,
        train_examples=len(train_data))
    return finish(cfg, directory, params, summary, progress, log)
