"""Run accounting: parameter counts, FLOPs and tokens per step, throughput records and the
summary.json of a VAR run (single runs and lanes alike)."""

from __future__ import annotations

import os
import socket
from typing import Any

import jax

from varjax.config import Config
from varjax.models import var
from varjax.parallel import mesh as mesh_lib
from varjax.train import flops as flops_lib


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
                tokenizer_dir: str, train_examples: int) -> dict[str, Any]:
  """The summary.json of a finished run. `train_examples`: the images in the training
  token set, so that `unique_tokens` (distinct tokens an epoch) and `epochs` (D over it)
  say how much of D repeated data."""
  counts, per_image = acc["counts"], acc["per_image"]
  batch, steps = cfg.data.global_batch_size, cfg.run.steps
  unique_tokens = train_examples * cfg.model.num_tokens
  return {
      "model": cfg.model.name, "steps": steps, "global_batch_size": batch,
      "params": counts["non_embedding"], "params_no_head": counts["non_embedding"] - counts["head"],
      "params_total": counts["total"], "params_per_token": counts["per_token"],
      "tokens": steps * acc["tokens_per_step"], "examples": steps * batch,
      "train_examples": train_examples, "unique_tokens": unique_tokens,
      "epochs": steps * acc["tokens_per_step"] / unique_tokens,
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
