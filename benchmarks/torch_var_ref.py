"""The official PyTorch VAR (Tian et al. 2024) timed at the shapes varjax's benchmarks use.

The reference is the authors' own model code, imported at run time from `--var-src DIR`
(a checkout of github.com/FoundationVision/VAR holding `models/`); none of it is part of
this repository. This driver builds the model with the authors' `build_vae_var` and times:

  train   one training step as their trainer takes it: bf16 autocast, label-smoothed (0.1)
          cross entropy averaged over tokens, backward, gradient clipping (2.0) and fused
          AdamW (betas 0.9 / 0.95, weight decay 0.05) on fp32 master weights. The inputs
          are random teacher-forced latents and targets, like `varjax bench train`, so
          neither side's time includes the tokenizer's encoder.
  sample  `autoregressive_infer_cfg` (KV cache, cfg 1.5, top-k 900, top-p 0.96, VQVAE
          decode) under bf16 autocast and inference mode, like `benchmarks/sampling_speed.py`.

Prints one JSON object. Usage:
  python benchmarks/torch_var_ref.py --var-src DIR (train | sample) [--depth 16]
      [--batch 64] [--steps 5] [--warmup 2] [--patch-nums 1,2,3,4,5,6,8,10,13,16]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings


def _sync(torch, device) -> None:
  if device.type == "cuda":
    torch.cuda.synchronize()


def build(args, torch, device):
  sys.path.insert(0, os.path.abspath(args.var_src))
  from models import build_vae_var  # the official code, from --var-src
  vae, var = build_vae_var(device=device, patch_nums=tuple(args.patch_nums), depth=args.depth,
                           shared_aln=False, attn_l2_norm=True)
  # build_vae_var turns torch's initialisers off and initialises only the transformer (the
  # VQVAE comes from a checkpoint in their code), so the VQVAE holds uninitialised memory:
  # give it small random weights. Speed does not depend on the values.
  gen = torch.Generator(device="cpu").manual_seed(0)
  with torch.no_grad():
    for p in vae.parameters():
      p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
  return vae, var


def bench_train(args, torch, device) -> dict:
  _, var = build(args, torch, device)
  var.train()
  length, first = var.L, var.first_l
  vocab, cvae = var.V, var.Cvae
  gen = torch.Generator(device="cpu").manual_seed(0)
  label = torch.randint(0, 1000, (args.batch,), generator=gen).to(device)
  x = torch.randn(args.batch, length - first, cvae, generator=gen).to(device)
  target = torch.randint(0, vocab, (args.batch, length), generator=gen).to(device)
  fused = device.type == "cuda"
  opt = torch.optim.AdamW(var.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05,
                          fused=fused)
  loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
  amp = torch.autocast(device.type, enabled=True, dtype=torch.bfloat16, cache_enabled=True)

  def step():
    with amp:
      logits = var(label, x)
      loss = loss_fn(logits.view(-1, vocab), target.view(-1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(var.parameters(), 2.0)
    opt.step()
    return loss

  loss, warmup_s, times = _timed(lambda i: step(), args, torch, device)
  step_s = min(times)
  return {"what": "train", "batch": args.batch, "depth": args.depth, "tokens_per_step":
          args.batch * length, "step_s": step_s, "step_s_all": times,
          "tokens_per_s": args.batch * length / step_s, "warmup_s": warmup_s,
          "params": sum(p.numel() for p in var.parameters()), "loss": float(loss.detach()),
          "peak_memory_bytes": _peak(torch, device), "attention": _attention_kind(var)}


def bench_sample(args, torch, device) -> dict:
  _, var = build(args, torch, device)
  var.eval()
  labels = torch.arange(args.batch, device=device) % 1000
  amp = torch.autocast(device.type, enabled=True, dtype=torch.bfloat16, cache_enabled=True)

  def sample(seed):
    with torch.inference_mode(), amp:
      return var.autoregressive_infer_cfg(B=args.batch, label_B=labels, cfg=1.5, top_k=900,
                                          top_p=0.96, g_seed=seed)

  images, warmup_s, times = _timed(sample, args, torch, device)
  call_s = min(times)
  return {"what": "sample", "batch": args.batch, "depth": args.depth, "cfg": 1.5,
          "top_k": 900, "top_p": 0.96, "call_s": call_s, "call_s_all": times,
          "images_per_s": args.batch / call_s, "warmup_s": warmup_s,
          "image_shape": list(images.shape), "peak_memory_bytes": _peak(torch, device),
          "attention": _attention_kind(var)}


def _timed(fn, args, torch, device):
  """fn(i) for --warmup calls (i = 0, 1, ...), then --steps timed ones (i = 100, 101, ...,
  so seeded samplers draw new samples), peak memory reset between: (last result, warmup
  seconds, timed seconds per call)."""
  start = time.perf_counter()
  for i in range(args.warmup):
    out = fn(i)
  _sync(torch, device)
  warmup_s = time.perf_counter() - start
  if device.type == "cuda":
    torch.cuda.reset_peak_memory_stats()
  times = []
  for i in range(args.steps):
    start = time.perf_counter()
    out = fn(100 + i)
    _sync(torch, device)
    times.append(time.perf_counter() - start)
  return out, warmup_s, times


def _peak(torch, device):
  return int(torch.cuda.max_memory_allocated()) if device.type == "cuda" else None


def _attention_kind(var) -> str:
  attn = var.blocks[0].attn
  if getattr(attn, "using_flash", False):
    return "flash_attn (training without mask) / SDPA"
  if getattr(attn, "using_xform", False):
    return "xformers memory_efficient_attention"
  return "torch scaled_dot_product_attention with the block-causal mask"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("what", choices=("train", "sample"))
  parser.add_argument("--var-src", required=True, help="folder holding the official models/")
  parser.add_argument("--depth", type=int, default=16)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--patch-nums", default="1,2,3,4,5,6,8,10,13,16")
  args = parser.parse_args()
  args.patch_nums = [int(p) for p in args.patch_nums.split(",")]
  if not os.path.isdir(os.path.join(args.var_src, "models")):
    parser.error(f"--var-src {args.var_src}: no models/ folder (a FoundationVision/VAR "
                 f"checkout is expected)")
  import torch
  warnings.filterwarnings("ignore", category=FutureWarning)  # their torch.cuda.amp calls
  device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  torch.backends.cuda.matmul.allow_tf32 = True
  torch.backends.cudnn.allow_tf32 = True
  bench = bench_train if args.what == "train" else bench_sample
  asked = args.batch
  while True:
    try:
      result = bench(args, torch, device)
      break
    except torch.cuda.OutOfMemoryError:
      if args.batch <= 1:
        raise
      # Same model and precision at the next smaller batch; the JSON says which ran.
      args.batch //= 2
      torch.cuda.empty_cache()
  result["batch_asked"] = asked
  result.update(device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                torch=torch.__version__)
  print(json.dumps(result))


if __name__ == "__main__":
  main()
