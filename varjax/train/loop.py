"""`varjax train`: one VAR training run on token pyramids, sharded over a device mesh.

    varjax train --config sweeps/configs/demo.yaml --model.depth=4 --run.name d4

Flow: claim the run directory (config.json) -> mesh -> state (restored from the newest
readable checkpoint, or initialised in its shards) -> for each step: this process's rows
of the global batch from the token cache, teacher-forced inputs from the frozen tokenizer,
one jitted train step -> metrics.jsonl / TensorBoard every log_every steps, held-out
evaluation every eval_every steps, a checkpoint every checkpoint_every steps, on SIGTERM
and at the end -> final params (the run dir is then a model dir) and summary.json, written
last. The data order is a pure function of (seed, step), so a resumed run reads exactly the
batches the interrupted one would have: resuming is bitwise on CPU.
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import time
from typing import Any, Callable

import jax
import numpy as np

from varjax import config as config_lib, files, progress as progress_lib
from varjax import scales
from varjax.config import Config
from varjax.data import pipeline, tokens as tokens_lib
from varjax.errors import VarjaxError
from varjax.models import store, var
from varjax.parallel import distributed, mesh as mesh_lib, rules
from varjax.train import checkpoint, flops as flops_lib, metrics as metrics_lib, optimizer
from varjax.train import rundir, step as step_lib


class NonFiniteLoss(VarjaxError):
  pass


class TokenData:
  """This process's rows of each global batch of a token-pyramid split."""

  def __init__(self, path: str, cfg: Config, mesh, shuffle_seed: int | None):
    self.pyramids = tokens_lib.TokenPyramids(path)
    self.path, self.cfg, self.mesh, self.seed = path, cfg, mesh, shuffle_seed
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
    return len(self.pyramids)

  def local(self, positions: np.ndarray) -> dict[str, Any]:
    if self.seed is None:  # evaluation: the split in order
      indices = positions % len(self)
    else:
      indices = pipeline.example_indices(self.seed, positions, len(self))
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
  train_data = TokenData(train_path, cfg, mesh, shuffle_seed=cfg.run.seed)
  eval_data = TokenData(eval_path, cfg, mesh, shuffle_seed=None)
  tokenizer_dir = _tokenizer_dir(cfg, train_data)
  tokenizer, tok_params, tok_cfg = store.load_tokenizer(tokenizer_dir)
  store.check_same_tokens(cfg, tok_cfg, "the model config", f"the tokenizer {tokenizer_dir}")
  return train_data, eval_data, tokenizer_dir, step_lib.make_prepare(tokenizer, tok_params, mesh)


def accounting(cfg: Config, mesh) -> dict[str, Any]:
  """Parameter counts, FLOPs per step (exact), tokens per step and the peak for MFU."""
  counts = var.count_params(cfg.model)
  per_image = flops_lib.training_flops(cfg.model)
  peak, peak_source = flops_lib.peak_flops()
  batch = cfg.data.global_batch_size
  return {"counts": counts, "per_image": per_image, "flops_per_step": per_image["total"] * batch,
          "peak_total": peak * len(mesh.devices.flat) if peak else None,
          "peak_source": peak_source, "tokens_per_step": batch * cfg.model.num_tokens}


def describe_run(cfg: Config, acc: dict[str, Any], mesh, directory: str, first_step: int) -> str:
  counts = acc["counts"]
  return (f"{cfg.model.name} {counts['total']:,} params ({counts['non_embedding']:,} "
          f"non-embedding) on mesh {mesh_lib.describe(mesh)}; {cfg.run.steps} steps x "
          f"{cfg.data.global_batch_size} images x {cfg.model.num_tokens} tokens; "
          f"{acc['flops_per_step']:.3g} FLOPs/step; peak {(acc['peak_total'] or 0):.3g} FLOP/s "
          f"({acc['peak_source']}); run dir {directory}"
          + (f"; resumed at step {first_step}" if first_step else ""))


def train_record(m: dict[str, Any], acc: dict[str, Any], done_steps: int, rate: float,
                 train_time: float, batch: int) -> dict[str, Any]:
  """The metrics.jsonl record of a logged training step (`rate`: steps per second)."""
  record = dict(m)
  record.update(tokens_per_s=rate * acc["tokens_per_step"], images_per_s=rate * batch,
                flops_per_step=acc["flops_per_step"], examples_seen=done_steps * batch,
                tokens_seen=done_steps * acc["tokens_per_step"],
                flops_seen=done_steps * acc["flops_per_step"], train_time_s=train_time)
  if acc["peak_total"]:
    record["mfu"] = rate * acc["flops_per_step"] / acc["peak_total"]
  return record


def hardware(mesh) -> dict[str, Any]:
  """What the run ran on, for summary.json."""
  device = mesh.devices.flat[0]
  return {"platform": device.platform, "device_kind": device.device_kind,
          "devices": len(mesh.devices.flat), "processes": jax.process_count(),
          "host": socket.gethostname(), "host_cpus": os.cpu_count(), "jax": jax.__version__}


def run_summary(cfg: Config, acc: dict[str, Any], last_eval: dict[str, Any], *,
                first_step: int, train_time: float, wall_time: float, mesh,
                tokenizer_dir: str) -> dict[str, Any]:
  counts, per_image = acc["counts"], acc["per_image"]
  batch, steps = cfg.data.global_batch_size, cfg.run.steps
  return {
      "model": cfg.model.name, "steps": steps, "global_batch_size": batch,
      "params": counts["non_embedding"], "params_no_head": counts["non_embedding"] - counts["head"],
      "params_total": counts["total"], "params_per_token": counts["per_token"],
      "tokens": steps * acc["tokens_per_step"], "examples": steps * batch,
      "flops_exact": per_image["total"] * batch * steps,
      "flops_6nd": per_image["6nd"] * batch * steps,
      "flops_6nd_no_head": per_image["6nd_no_head"] * batch * steps,
      "loss": last_eval["loss"], "token_error": last_eval["token_error"],
      "loss_tail": last_eval["loss_tail"], "token_error_tail": last_eval["token_error_tail"],
      "loss_per_scale": last_eval["loss_per_scale"],
      "token_error_per_scale": last_eval["token_error_per_scale"],
      "eval_examples": last_eval["examples"], "resumed_at_step": first_step,
      "train_time_s": train_time, "wall_time_s": wall_time,
      "mesh": dict(mesh.shape), "processes": jax.process_count(), "hardware": hardware(mesh),
      "tokenizer": tokenizer_dir,
  }


def finish(cfg: Config, directory: str, params, summary: dict[str, Any], progress, log):
  """Process 0 writes the final params (the run dir becomes a model dir), then summary.json
  (last: it marks the run finished), then measures sample quality if cfg.eval asks."""
  if jax.process_index() != 0:
    return summary
  store.save_params(params, os.path.join(directory, store.PARAMS_FILE), cfg.run.steps)
  files.write_json(os.path.join(directory, rundir.SUMMARY_FILE), summary)
  if cfg.eval.enabled:
    summary = sample_quality(cfg, directory, progress, log)
  return summary


# Keys a warm-start donor may differ in: its length and where it writes and checkpoints.
WARM_START_FREE = ("run.name", "run.steps", "run.warm_start", "run.keep_steps",
                   "run.checkpoint_every")


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
  diff = config_lib.differences(cfg, donor, ignore=WARM_START_FREE)
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
  rundir.claim(directory, cfg, write=is_main)
  done = rundir.finished_summary(directory)
  if done is not None:
    if cfg.eval.enabled and "sample_protocol" not in done and is_main:
      log(f"{directory} is a finished run of this config; measuring its samples")
      return sample_quality(cfg, directory, progress, log)
    log(f"{directory} is a finished run of this config; nothing to do")
    return done
  # ---- mesh, data, tokenizer
  mesh = mesh_lib.make_mesh(cfg.mesh, devices)
  step_lib.check_batch_divisible(cfg.data.global_batch_size, cfg.optim.grad_accum_steps, mesh)
  train_data, eval_data, tokenizer_dir, prepare = open_data(cfg, mesh)

  # ---- model, optimizer, state
  model = var.VAR(cfg.model)
  batch = cfg.data.global_batch_size
  tx = optimizer.adamw(cfg.optim, cfg.run.steps, batch)
  schedule = optimizer.lr_schedule(cfg.optim, cfg.run.steps, batch)
  abstract, shardings = step_lib.state_shardings(model, tx, cfg.run.seed, mesh)
  ckpts = checkpoint.Checkpoints(directory, cfg.run.keep_checkpoints, cfg.run.keep_steps)
  target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract, shardings)
  restored = ckpts.restore_latest(target)
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
                                        cfg.optim.grad_accum_steps)
  eval_step = step_lib.make_eval_step(model, mesh, shardings["params"])

  acc = accounting(cfg, mesh)
  log(describe_run(cfg, acc, mesh, directory, first_step))

  writer = metrics_lib.MetricsWriter(directory)
  preempt = checkpoint.PreemptionFlag()
  bar = progress_lib.bar(total=cfg.run.steps, initial=first_step, desc=cfg.run.name,
                        unit="step", enabled=progress)

  def ckpt_record(step_done: int) -> dict[str, Any]:
    return {"step": step_done, "examples_seen": step_done * batch, "wall_time": time.time()}

  train_time, window_start, window_steps = 0.0, time.perf_counter(), 0
  last_eval: dict[str, Any] | None = None
  try:
    for step in range(first_step, cfg.run.steps):
      tok, label = train_data.train_batch(step)
      state, m = train_step(state, prepare(tok, label))
      m = jax.device_get(m)
      window_steps += 1
      done_steps = step + 1
      if not math.isfinite(float(m["loss"])):
        good = ckpts.steps()
        raise NonFiniteLoss(
            f"the training loss is {float(m['loss'])} at step {done_steps}; stopped. "
            + (f"The last good checkpoint is step {good[-1]} in {ckpts.directory}."
               if good else "No checkpoint was written yet.")
            + " Lower optim.base_lr/peak_lr, raise optim.warmup_steps or check the data.")
      if done_steps % cfg.run.log_every == 0 or done_steps == cfg.run.steps:
        elapsed = time.perf_counter() - window_start
        train_time += elapsed
        rate = window_steps / max(elapsed, 1e-9)
        writer.write(done_steps, "train", train_record(m, acc, done_steps, rate, train_time, batch))
        bar.set_postfix(loss=f"{float(m['loss']):.4f}", err=f"{float(m['token_error']):.1f}%")
        window_start, window_steps = time.perf_counter(), 0
      bar.update(1)
      pausing = False
      if done_steps % cfg.run.eval_every == 0 and done_steps < cfg.run.steps:
        last_eval = evaluate(eval_step, state["params"], eval_data, prepare,
                             cfg.run.eval_examples)
        writer.write(done_steps, "eval", last_eval)
        pausing = True
      if preempt.reached(done_steps):
        ckpts.save_and_stop(done_steps, state, ckpt_record(done_steps))
      if ((done_steps % cfg.run.checkpoint_every == 0 or done_steps in cfg.run.keep_steps)
          and done_steps < cfg.run.steps):
        ckpts.save(done_steps, state, ckpt_record(done_steps))
        pausing = True
      if pausing:  # evaluation and saving are not training throughput
        window_start = time.perf_counter()
      if on_step is not None:
        on_step(done_steps)
    bar.close()

    # ---- end: final evaluation, checkpoint, model dir, summary (last)
    last_eval = evaluate(eval_step, state["params"], eval_data, prepare, cfg.run.eval_examples)
    writer.write(cfg.run.steps, "eval", last_eval)
    ckpts.save(cfg.run.steps, state, ckpt_record(cfg.run.steps))
    params = host_params(state["params"], mesh)
    summary = run_summary(cfg, acc, last_eval, first_step=first_step, train_time=train_time,
                          wall_time=time.time() - start_wall, mesh=mesh,
                          tokenizer_dir=tokenizer_dir)
    return finish(cfg, directory, params, summary, progress, log)
  finally:
    bar.close()
    preempt.restore()
    writer.close()
    ckpts.close()
