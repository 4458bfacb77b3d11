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
from varjax.errors import VarjaxError
from varjax.models import var
from varjax.parallel import mesh as mesh_lib, rules
from varjax.train import flops as flops_lib, optimizer, step as step_lib


def bench_train(model: str, patch_nums: Sequence[int], batch: int | Sequence[int], *,
                vocab_size: int = 4096, steps: int = 5, attn_impl: str = "auto",
                dtype: str = "float32", num_classes: int = 1000,
                warmup: int = 2) -> dict[str, Any]:
  """Times the step at `batch`; given several batches, at the largest whose compiled step
  fits in device memory (XLA's memory analysis, nothing run): the smallest is compiled
  first, the per-image bytes from it predict which larger one fits, and that one is
  compiled and checked too (so at most two compiles before the timed one is known)."""
  kept = hostmem.keep_freed_memory()  # the CLI applied it already, before JAX's threads
  overrides = config_lib.model_overrides(model)
  cfg = config_lib.Config()
  cfg = config_lib.replace(cfg, model={**overrides, "patch_nums": tuple(patch_nums),
                                       "vocab_size": vocab_size, "num_classes": num_classes,
                                       "attn_impl": attn_impl, "dtype": dtype})
  mcfg = cfg.model
  mesh = mesh_lib.make_mesh(MeshConfig())
  batches = sorted({int(batch)} if isinstance(batch, (int, np.integer)) else
                   {int(b) for b in batch})
  for b in batches:
    step_lib.check_batch_divisible(b, 1, mesh)
  model_ = var.VAR(mcfg)
  optim = OptimConfig()
  limit = _device_memory_limit()
  compile_start = time.perf_counter()
  memory_by_batch: dict[int, int | None] = {}

  def compile_at(b):
    tx = optimizer.adamw(optim, 1000, b)
    abstract, shardings = step_lib.state_shardings(model_, tx, 0, mesh)
    train_step = step_lib.make_train_step(model_, tx, optimizer.lr_schedule(optim, 1000, b),
                                          mesh, shardings)
    state_spec = jax.tree.map(lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh),
                              abstract, shardings)
    batch_spec = {k: jax.ShapeDtypeStruct(shape, dt, sharding=step_lib.batch_shardings(mesh)[k])
                  for k, (shape, dt) in _batch_shapes(mcfg, b).items()}
    with jax.set_mesh(mesh), rules.rules_context():
      compiled = train_step.jitted.lower(state_spec, batch_spec).compile()
    memory_by_batch[b] = _memory_bytes(compiled)
    return tx, shardings, compiled

  chosen = batches[0]
  tx, shardings, compiled = compile_at(chosen)
  fits = lambda b: (memory_by_batch[b] is None or limit is None or
                    memory_by_batch[b] <= limit)
  if not fits(chosen):
    raise VarjaxError(f"{mcfg.name} at batch {chosen} ({attn_impl}, {dtype}) needs "
                      f"{memory_by_batch[chosen] / 2**30:.1f} GiB of device memory, "
                      f"{limit / 2**30:.1f} GiB available: lower --batch")
  if len(batches) > 1:
    larger = batches[1:]
    if limit is not None and memory_by_batch[chosen] is not None:
      # Memory is (state + fixed) + batch x per-image; the state is known exactly.
      state_bytes = sum(_nbytes(x) for x in jax.tree.leaves(
          step_lib.state_shardings(model_, tx, 0, mesh)[0]))
      per_image = max(memory_by_batch[chosen] - state_bytes, 0) / chosen
      larger = [b for b in larger if state_bytes + per_image * b <= 0.95 * limit] or []
    for b in reversed(larger):
      candidate = compile_at(b)
      if fits(b):
        chosen, (tx, shardings, compiled) = b, candidate
        break
  state = step_lib.init_state(model_, tx, 0, mesh, shardings, param_key_impl="rbg")
  rng = np.random.default_rng(0)
  host = {"label": rng.integers(0, num_classes, chosen).astype(np.int32),
          "x": rng.normal(size=(chosen, mcfg.num_tokens - mcfg.first_tokens,
                                mcfg.latent_channels)).astype(np.float32),
          "target": rng.integers(0, vocab_size, (chosen, mcfg.num_tokens)).astype(np.int32)}
  batch_arrays = {k: jax.device_put(v, step_lib.batch_shardings(mesh)[k])
                  for k, v in host.items()}
  batch = chosen
  memory = memory_by_batch[chosen]

  def run_step(state):
    with jax.set_mesh(mesh), rules.rules_context():
      return compiled(state, batch_arrays)

  for _ in range(warmup):
    state, m = run_step(state)
  jax.block_until_ready(m)
  compile_s = time.perf_counter() - compile_start
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  # Steps and peak rounds alternate, so both see the same machine (a shared CPU's speed
  # drifts by 20% over a minute); each side keeps its best.
  published = flops_lib.device_peak_flops()
  step_times, peak_rates, faults = [], [], []
  for _ in range(steps):
    faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    state, m = run_step(state)
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
      "device_memory_bytes": memory, "device_memory_limit_bytes": limit,
      "memory_by_batch": {str(k): v for k, v in memory_by_batch.items()},
      "batch_candidates": batches,
      "host_malloc": "keep freed memory" if kept else "system default",
      "step_s_all": step_times, "compile_and_warmup_s": compile_s, "timed_steps": steps,
      "loss": float(m["loss"]),
  }


def _nbytes(x) -> int:
  try:
    return int(x.size * x.dtype.itemsize)
  except (AttributeError, TypeError):  # PRNG key arrays: a few bytes, not worth a rule
    return 0


def _batch_shapes(mcfg, batch: int) -> dict[str, tuple[tuple[int, ...], Any]]:
  return {"label": ((batch,), np.int32),
          "x": ((batch, mcfg.num_tokens - mcfg.first_tokens, mcfg.latent_channels), np.float32),
          "target": ((batch, mcfg.num_tokens), np.int32)}


def _memory_bytes(compiled) -> int | None:
  """Device bytes the compiled step needs at once: arguments + outputs + temporaries, less
  the donated (aliased) state that outputs reuse; None where XLA gives no analysis."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # some backends do not implement it
    return None
  if m is None:
    return None
  return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
             - m.alias_size_in_bytes)


def _device_memory_limit() -> int | None:
  """The allocator's byte limit on the first device (GPU/TPU), None on CPU."""
  stats = jax.devices()[0].memory_stats() if jax.default_backend() != "cpu" else None
  return int(stats["bytes_limit"]) if stats and "bytes_limit" in stats else None


def format_result(r: dict[str, Any]) -> str:
  return (f"{r['model']} {r['patch_nums']} batch {r['batch']} V {r['vocab_size']} "
          f"({r['attn_impl']}, {r['dtype']}, {r['devices']} x {r['device']}): "
          f"{r['step_s']:.3f} s/step, {r['tokens_per_s']:.0f} tokens/s, "
          f"{r['flops_per_step'] / r['step_s'] / 1e9:.1f} GFLOP/s exact; peak "
          f"{r['peak_flops'] / 1e9:.1f} GFLOP/s ({r['peak_source']}) -> MFU "
          f"{100 * r['mfu']:.1f}% (6ND convention: {100 * r['mfu_6nd']:.1f}%); "
          f"{r['page_faults_per_step']} page faults per step, host malloc: {r['host_malloc']}")
