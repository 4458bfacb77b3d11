"""Accelerator measurements in one run: attention kernels, the training step and cached
sampling, side by side with the official PyTorch VAR (run through benchmarks/accelerator.sh).

Every measurement is its own subprocess (a crash or an out-of-memory in one costs only its
own row; JAX and PyTorch never share the GPU), run in priority order under a total time
budget: what does not fit is recorded as skipped. Results append to OUT/results.jsonl as
they come, logs to OUT/log.txt, and OUT/summary.md holds the tables for docs/benchmarks.md.

Sections (full mode; --quick runs each at a CPU-sized shape to check the code paths):
  env          device, driver, versions; bf16 8192^3 matmul rate measured with JAX
  attn-bwd     attention forward + backward, VAR-256 d16 (16 x 64) and VAR-512 d30 (30 x 64)
  train-pallas varjax var-d16 step at 256 px, bf16 compute, fp32 master weights, largest
               batch of 64 / 128 / 256 that fits (XLA's memory analysis)
  torch-train  the official VAR step at the same model, batch and precision
  sample       varjax cached sampling, var-d16, batch 64, cfg 1.5
  torch-sample the official autoregressive_infer_cfg at the same settings
  train-xla, attn-fwd, train-cudnn, tune   (the same, lower priority)
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

H200_BF16_PEAK = 989e12  # published dense bf16 peak of the H200 SXM (NVIDIA datasheet)

ENV_SNIPPET = r"""
import json, time, jax, jax.numpy as jnp
out = {"device": jax.devices()[0].device_kind, "backend": jax.default_backend(),
       "devices": jax.device_count(), "jax": jax.__version__}
import jaxlib, flax, optax
out.update(jaxlib=jaxlib.__version__, flax=flax.__version__, optax=optax.__version__)
n = SIZE
a = jnp.ones((n, n), jnp.bfloat16); b = jnp.full((n, n), 0.5, jnp.bfloat16)
mm = jax.jit(lambda x, y: x @ y); mm(a, b).block_until_ready()
best = 0.0
for _ in range(5):
  t = time.perf_counter()
  for _ in range(10):
    c = mm(a, b)
  c.block_until_ready()
  best = max(best, 2 * n ** 3 * 10 / (time.perf_counter() - t))
out["bf16_matmul_flops"] = best
out["matmul_size"] = n
print(json.dumps(out))
"""


def sections(args) -> list[tuple[str, list[str], int]]:
  """(name, command, timeout seconds) in priority order."""
  py, tpy = args.python, args.torch_python
  q = args.quick
  model, pn = ("var-d2", "1,2,3,4") if q else ("var-d16", "1,2,3,4,5,6,8,10,13,16")
  # One batch on a GPU: with XLA's GEMM autotuning on (it must be, see --xla-autotune),
  # compiling the var-d16 step took 184 s on an H200, so one batch size fills a section.
  batches = "2,4" if q else "128"
  cases = "VAR-256:d16:1" if q else "VAR-256:d16:128,VAR-512:d30:16"
  attn = [py, f"{HERE}/attention.py", "--json", "--cases", cases,
          "--repeats", "1" if q else "10"] + (["--interpret"] if q else [])
  train = lambda impl: (f"train-{impl}", [
      py, "-m", "varjax.cli", "bench", "train", "--model", model, "--patch-nums", pn,
      "--batch", batches, "--dtype", "bfloat16", "--attn-impl", impl, "--steps",
      "2" if q else "5", "--json"], 150 if q else 300)
  sample_batch = "2" if q else "64"
  torch_src = ["--var-src", args.var_src] if args.var_src else []
  torch_shape = ["--depth", "2" if q else "16", "--patch-nums", pn]
  out = [
      ("env", [py, "-c", ENV_SNIPPET.replace("SIZE", "512" if q else "8192")], 120),
      ("attn-bwd", attn + ["--backward"], 240 if q else 150),
      train("pallas"),
      ("torch-train", [tpy, f"{HERE}/torch_var_ref.py", "train", *torch_src, *torch_shape,
                       "--batch", "@train-pallas.batch", "--steps", "2" if q else "5"], 150),
      ("sample", [py, f"{HERE}/sampling_speed.py", "--model", model, "--patch-nums", pn,
                  "--batch", sample_batch, "--calls", "1" if q else "3"]
       + (["--tokenizer-ch", "16"] if q else []), 240),
      ("torch-sample", [tpy, f"{HERE}/torch_var_ref.py", "sample", *torch_src, *torch_shape,
                        "--batch", sample_batch, "--steps", "1" if q else "3"], 120),
      train("xla"),
      ("attn-fwd", attn, 240 if q else 120),
  ]
  if not q:
    out += [train("cudnn"),
            ("tune", [py, f"{HERE}/attention.py", "--tune", "--json", "--batch", "16",
                      "--repeats", "5"], 150)]
  return out


def resolve(command: list[str], results: dict) -> list[str] | None:
  """Replaces '@section.key' with an earlier result's value; None when it is missing."""
  out = []
  for part in command:
    if part.startswith("@"):
      name, key = part[1:].split(".")
      value = results.get(name, {}).get(key)
      if value is None:
        return None
      part = str(value)
    out.append(part)
  return out


def last_json(text: str) -> dict | None:
  """The JSON object a benchmark prints (the last line that parses as one; the official
  VAR code prints its own lines first). attention.py prints one indented object."""
  try:
    value = json.loads(text)
    return value if isinstance(value, dict) else None
  except json.JSONDecodeError:
    pass
  for line in reversed(text.strip().splitlines()):
    if line.startswith("{"):
      try:
        return json.loads(line)
      except json.JSONDecodeError:
        continue
  return None


def run_all(args) -> tuple[dict, list[dict]]:
  os.makedirs(args.out, exist_ok=True)
  results_path = os.path.join(args.out, "results.jsonl")
  log_path = os.path.join(args.out, "log.txt")
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
             PYTHONUNBUFFERED="1")
  env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.92")
  if args.xla_autotune is not None:
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                        f" --xla_gpu_autotune_level={args.xla_autotune}").strip()
  deadline = time.monotonic() + args.budget_s
  results: dict[str, dict] = {}
  records: list[dict] = []
  only = set(args.only.split(",")) if args.only else None
  for name, command, timeout in sections(args):
    if only and name not in only:
      continue
    left = deadline - time.monotonic()
    record: dict = {"section": name}
    command = resolve(command, results)
    if command is None:
      record["skipped"] = "an earlier section it depends on has no result"
    elif name.startswith("torch") and not args.var_src:
      record["skipped"] = "no --var-src (the official VAR source) given"
    elif left < 30:
      record["skipped"] = f"out of the time budget ({args.budget_s:.0f} s)"
    else:
      start = time.monotonic()
      print(f"[{name}] {' '.join(shlex.quote(c) for c in command[:6])} ...", flush=True)
      try:
        proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=min(timeout, left))
        text, rc = proc.stdout, proc.returncode
        errors = proc.stderr
      except subprocess.TimeoutExpired as e:
        text = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        errors = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        rc = "timeout"
      record["seconds"] = round(time.monotonic() - start, 1)
      with open(log_path, "a") as log:
        log.write(f"==== {name} (rc {rc}, {record['seconds']} s): {' '.join(command)}\n"
                  f"{text[-20000:]}\n---- stderr\n{errors[-20000:]}\n")
      value = last_json(text) if rc == 0 else None
      if value is None:
        tail = (errors or text).strip().splitlines()[-1:] or [""]
        record["error"] = f"rc {rc}: {tail[0][:300]}"
      else:
        record["result"] = value
        results[name] = value
    records.append(record)
    with open(results_path, "a") as f:
      f.write(json.dumps(record) + "\n")
    status = ("ok" if "result" in record else record.get("error") or
              "skipped: " + record["skipped"])
    print(f"[{name}] {status}", flush=True)
  return results, records


def summary(results: dict, quick: bool, records: list[dict] = (),
            autotune: str | None = None) -> str:
  """Markdown tables of what ran, with the ratios, and a line per section that did not."""
  env = results.get("env", {})
  peak = H200_BF16_PEAK if "H200" in env.get("device", "") else None
  measured = env.get("bf16_matmul_flops")
  lines = [f"Device: {env.get('device', '?')} ({env.get('backend', '?')}); jax "
           f"{env.get('jax', '?')}, flax {env.get('flax', '?')}; torch "
           f"{results.get('torch-train', results.get('torch-sample', {})).get('torch', '-')}"
           + (f"; bf16 {env.get('matmul_size')}^3 matmul measured: {measured / 1e12:.1f} "
              f"TFLOP/s" if measured else "")]
  lines += ["", "| pass | shape | heads x dim | batch | impl | ms | useful TFLOP/s | "
            "% of measured matmul peak | vs xla |", "|---|---|---|---|---|---|---|---|---|"]
  for section, label in (("attn-fwd", "forward"), ("attn-bwd", "forward + backward")):
    for r in results.get(section, {}).get("rows", []):
      if "error" in r:
        lines.append(f"| {label} | {r['shape']} | | | {r['impl']} | {r['error'][:60]} | | | |")
        continue
      share = (f"{100 * r['useful_tflops'] * 1e12 / measured:.0f}%" if measured else "-")
      ratio = f"{r['speedup_vs_xla']:.2f}x" if r.get("speedup_vs_xla") else "-"
      lines.append(f"| {label} | {r['shape']} (L {r['L']}) | {r['heads']} x 64 | {r['batch']} "
                   f"| {r['impl']} | {r['ms']:.3f} | {r['useful_tflops']:.1f} | {share} | "
                   f"{ratio} |")
  torch_train = results.get("torch-train")
  lines += ["", "| training step | batch | tokens/s | MFU (published peak) | "
            "MFU (measured matmul peak) | device memory GiB | vs PyTorch |",
            "|---|---|---|---|---|---|---|"]
  for impl in ("pallas", "xla", "cudnn"):
    r = results.get(f"train-{impl}")
    if not r:
      continue
    flops_s = r["flops_per_step"] / r["step_s"]
    mfu = f"{100 * flops_s / peak:.1f}%" if peak else f"{100 * r['mfu']:.1f}%"
    mfu_measured = f"{100 * flops_s / measured:.1f}%" if measured else "-"
    ratio = "-"
    if torch_train:
      ratio = f"{r['tokens_per_s'] / torch_train['tokens_per_s']:.2f}x"
      if torch_train["batch"] != r["batch"]:
        ratio += f" (PyTorch at batch {torch_train['batch']})"
    mem = r.get("device_memory_bytes")
    lines.append(f"| varjax {r['model']} ({impl}) | {r['batch']} | {r['tokens_per_s']:,.0f} | "
                 f"{mfu} | {mfu_measured} | {mem / 2**30:.1f} |" if mem else
                 f"| varjax {r['model']} ({impl}) | {r['batch']} | {r['tokens_per_s']:,.0f} | "
                 f"{mfu} | {mfu_measured} | - |")
    lines[-1] += f" {ratio} |"
  if torch_train:
    mem = torch_train.get("peak_memory_bytes")
    lines.append(f"| official VAR d{torch_train['depth']} (PyTorch, "
                 f"{torch_train['attention']}) | {torch_train['batch']} | "
                 f"{torch_train['tokens_per_s']:,.0f} | | | "
                 f"{mem / 2**30 if mem else 0:.1f} | 1.00x |")
  ours, theirs = results.get("sample"), results.get("torch-sample")
  lines += ["", "| cached sampling | batch | images/s | s per batch | peak memory GiB | "
            "vs PyTorch |", "|---|---|---|---|---|---|"]
  for label, r in (("varjax", ours), ("official VAR (PyTorch)", theirs)):
    if not r:
      continue
    ratio = (f"{r['images_per_s'] / theirs['images_per_s']:.2f}x" if theirs else "-")
    mem = r.get("peak_memory_bytes")
    lines.append(f"| {label} | {r['batch']} | {r['images_per_s']:.1f} | {r['call_s']:.3f} | "
                 f"{mem / 2**30 if mem else 0:.1f} | {ratio} |")
  lines += ["", f"XLA GPU autotuning level: {autotune if autotune is not None else 'default'}",
            "", "| section | seconds | outcome |", "|---|---|---|"]
  for r in records:
    outcome = ("ok" if "result" in r else r.get("error") or "skipped: " + r["skipped"])
    lines.append(f"| {r['section']} | {r.get('seconds', '-')} | {outcome} |")
  tune = results.get("tune", {}).get("rows")
  if tune:
    lines += ["", "| pallas launch (fwd block, bwd block, warps) | ms fwd+bwd | useful TFLOP/s |",
              "|---|---|---|"]
    for r in tune:
      lines.append(f"| {r['block']}, {r['block_bwd']}, {r['num_warps']}"
                   f"{' (default)' if r['default'] else ''} | {r['ms']:.3f} | "
                   f"{r['useful_tflops']:.1f} |")
  if quick:
    lines += ["", "(--quick: CPU-sized shapes; the pallas rows ran in interpret mode. These "
              "check the code paths, they are not kernel speeds.)"]
  return "\n".join(lines) + "\n"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="CPU-sized shapes (code paths)")
  parser.add_argument("--out", default="reports/accelerator")
  parser.add_argument("--var-src", default=None,
                      help="folder holding the official VAR models/ (torch sections)")
  parser.add_argument("--python", default=sys.executable, help="interpreter with JAX")
  parser.add_argument("--torch-python", default=sys.executable,
                      help="interpreter with PyTorch (the same one on the GPU machine)")
  parser.add_argument("--budget-s", type=float, default=540.0,
                      help="total seconds; sections that do not fit are skipped")
  parser.add_argument("--only", default=None, help="comma-separated section names")
  parser.add_argument("--xla-autotune", default="default",
                      help="XLA_FLAGS --xla_gpu_autotune_level for the JAX sections ('default' "
                           "leaves XLA's setting). Not 0: on an H200 level 0 ran a bf16 8192^3 "
                           "matmul at 10.6 TFLOP/s against 872.7 with XLA's default, and the "
                           "var-d16 step at 18,153 tokens/s against 210,064")
  args = parser.parse_args()
  if args.xla_autotune == "default":
    args.xla_autotune = None
  if args.budget_s <= 0:
    parser.error(f"--budget-s must be > 0, got {args.budget_s}")
  if args.var_src and not os.path.isdir(os.path.join(args.var_src, "models")):
    parser.error(f"--var-src {args.var_src}: no models/ folder")
  start = time.monotonic()
  results, records = run_all(args)
  text = summary(results, args.quick, records, args.xla_autotune)
  with open(os.path.join(args.out, "summary.md"), "w") as f:
    f.write(text)
  print(text)
  print(f"accelerator: done in {time.monotonic() - start:.0f} s; {args.out}/summary.md")


if __name__ == "__main__":
  main()
