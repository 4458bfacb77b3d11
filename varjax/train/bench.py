"""`varjax bench train`: throughput and MFU of full training steps, peak measured alongside.

A step is the trainer's own jitted step (forward, backward, AdamW update, gradient clipping,
metrics) on a mesh of all local devices, fed a fixed random batch (teacher-forced inputs
and targets) so that only the step is timed. MFU = exact model FLOPs per second
(varjax.train.flops) / peak; on CPU the peak is the best fp32 matmul rate measured in this
same process between the timed steps (best of each), so both sides see the same machine
load and XLA settings.
"""

from __future__ import annotations

import resource
import time
from typing import Any, Sequence

import jax
import numpy as np

from varjax import config as config_lib, hostmem
from varjax.config import MeshConfig, OptimConfig
from varjax.models import var
from varjax.parallel import mesh as mesh_lib
from varjax.train import flops as flops_lib, optimizer, step as step_lib


def bench_train(model: str, patch_nums: Sequence[int], batch: int, *, vocab_size: int = 4096,
                steps: int = 5, attn_impl: str = "auto", dtype: str = "float32",
                num_classes: int = 1000, warmup: int = 2) -> dict[str, Any]:
  kept = hostmem.keep_freed_memory()  # the CLI applied it already, before JAX's threads
  overrides = config_lib.model_overrides(model)
  cfg = config_lib.Config()
  cfg = config_lib.replace(cfg, model={**overrides, "patch_nums": tuple(patch_nums),
                                       "vocab_size": vocab_size, "num_classes": num_classes,
                                       "attn_impl": attn_impl, "dtype": dtype})
  mcfg = cfg.model
  mesh = mesh_lib.make_mesh(MeshConfig())
  step_lib.check_batch_divisible(batch, 1, mesh)
  model_ = var.VAR(mcfg)
  optim = OptimConfig()
  tx = optimizer.adamw(optim, 1000, batch)
  _, shardings = step_lib.state_shardings(model_, tx, 0, mesh)
  state = step_lib.init_state(model_, tx, 0, mesh, shardings)
  train_step = step_lib.make_train_step(model_, tx, optimizer.lr_schedule(optim, 1000, batch),
                                        mesh, shardings)
  rng = np.random.default_rng(0)
  host = {"label": rng.integers(0, num_classes, batch).astype(np.int32),
          "x": rng.normal(size=(batch, mcfg.num_tokens - mcfg.first_tokens,
                                mcfg.latent_channels)).astype(np.float32),
          "target": rng.integers(0, vocab_size, (batch, mcfg.num_tokens)).astype(np.int32)}
  batch_arrays = {k: jax.device_put(v, step_lib.batch_shardings(mesh)[k])
                  for k, v in host.items()}
  compile_start = time.perf_counter()
  for _ in range(warmup):
    state, m = train_step(state, batch_arrays)
  jax.block_until_ready(m)
  compile_s = time.perf_counter() - compile_start
  cost = train_step.jitted.lower(state, batch_arrays).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  # Steps and peak rounds alternate, so both see the same machine (a shared CPU's speed
  # drifts by 20% over a minute); each side keeps its best.
  published = flops_lib.device_peak_flops()
  step_times, peak_rates, faults = [], [], []
  for _ in range(steps):
    faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    state, m = train_step(state, batch_arrays)
    jax.block_until_ready(m)
    step_times.append(time.perf_counter() - start)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before)
    if published is None:
      peak_rates.append(flops_lib.measure_cpu_peak.__wrapped__(repeats=2, rounds=1))
  step_s = min(step_times)
  if published is None:
    peak, peak_source = max(peak_rates), "fp32 matmul peak measured between the timed steps"
  else:
    peak, peak_source = published, f"published bf16 peak of {jax.devices()[0].device_kind}"
  per_image = flops_lib.training_flops(mcfg)
  executed = flops_lib.training_flops(mcfg, dense_attention=attn_impl in ("auto", "xla", "cudnn"))
  flops_step = per_image["total"] * batch
  tokens = batch * mcfg.num_tokens
  devices = len(mesh.devices.flat)
  return {
      "model": mcfg.name, "patch_nums": list(mcfg.patch_nums), "batch": batch,
      "vocab_size": vocab_size, "tokens_per_step": tokens, "attn_impl": attn_impl,
      "dtype": dtype, "device": jax.devices()[0].device_kind, "devices": devices,
      "step_s": step_s, "tokens_per_s": tokens / step_s, "images_per_s": batch / step_s,
      "flops_per_step": flops_step, "flops_per_step_6nd": per_image["6nd"] * batch,
      "flops_per_step_executed": executed["total"] * batch,
      "xla_cost_analysis_flops": float(cost.get("flops", float("nan"))) if cost else None,
      "peak_flops": peak * devices, "peak_source": peak_source,
      "mfu": flops_step / step_s / (peak * devices),
      "mfu_6nd": per_image["6nd"] * batch / step_s / (peak * devices),
      "page_faults_per_step": min(faults),
      "host_malloc": "keep freed memory" if kept else "system default",
      "step_s_all": step_times, "compile_and_warmup_s": compile_s, "timed_steps": steps,
      "loss": float(m["loss"]),
  }


def format_result(r: dict[str, Any]) -> str:
  return (f"{r['model']} {r['patch_nums']} batch {r['batch']} V {r['vocab_size']} "
          f"({r['attn_impl']}, {r['dtype']}, {r['devices']} x {r['device']}): "
          f"{r['step_s']:.3f} s/step, {r['tokens_per_s']:.0f} tokens/s, "
          f"{r['flops_per_step'] / r['step_s'] / 1e9:.1f} GFLOP/s exact; peak "
          f"{r['peak_flops'] / 1e9:.1f} GFLOP/s ({r['peak_source']}) -> MFU "
          f"{100 * r['mfu']:.1f}% (6ND convention: {100 * r['mfu_6nd']:.1f}%); "
          f"{r['page_faults_per_step']} page faults per step, host malloc: {r['host_malloc']}")
