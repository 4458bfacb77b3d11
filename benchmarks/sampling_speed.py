"""Cached sampling throughput: images/s of varjax's sampler, VQVAE decode included.

Times `varjax.models.sampling.sample_images` (KV cache, one jitted program per batch shape,
classifier-free guidance doubling the batch, VAR's protocol cfg 1.5 / top-k 900 / top-p
0.96) for a randomly initialised model of a preset (`--model var-d16`) and the released
tokenizer's architecture (ch 160, V 4096): the speed does not depend on the weights'
values. `benchmarks/torch_var_ref.py sample` times the official `autoregressive_infer_cfg`
at the same settings. Prints one JSON object.

Usage: python benchmarks/sampling_speed.py [--model var-d16] [--batch 64] [--calls 3]
         [--dtype bfloat16] [--patch-nums 1,2,3,4,5,6,8,10,13,16] [--tokenizer-ch 160]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from varjax import config as config_lib
from varjax.config import TokenizerConfig
from varjax.models import sampling, var, vqvae


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="var-d16")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--calls", type=int, default=3, help="timed calls after the compiling one")
  parser.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
  parser.add_argument("--patch-nums", default="1,2,3,4,5,6,8,10,13,16")
  parser.add_argument("--tokenizer-ch", type=int, default=160)
  args = parser.parse_args()
  patch_nums = tuple(int(p) for p in args.patch_nums.split(","))
  cfg = config_lib.replace(config_lib.Config(), model={
      **config_lib.model_overrides(args.model), "patch_nums": patch_nums,
      "dtype": args.dtype})
  tok_cfg = dataclasses.replace(TokenizerConfig(), ch=args.tokenizer_ch)
  resolution = patch_nums[-1] * 2 ** (len(tok_cfg.ch_mult) - 1)

  model = var.VAR(cfg.model)
  x = jnp.zeros((1, cfg.model.num_tokens - cfg.model.first_tokens,
                 cfg.model.latent_channels), jnp.float32)
  params = jax.jit(lambda k: model.init(k, jnp.zeros((1,), jnp.int32), x))(
      jax.random.key(0, impl="rbg"))
  tokenizer = vqvae.build(tok_cfg, patch_nums)
  tok_params = {"params": vqvae.init_params(tokenizer, 0, resolution)}
  labels = np.arange(args.batch) % cfg.model.num_classes
  protocol = sampling.SamplingProtocol(cfg=1.5, top_k=900, top_p=0.96)

  start = time.perf_counter()
  jax.block_until_ready(sampling.sample_images(model, params, tokenizer, tok_params, labels,
                                               protocol))
  compile_s = time.perf_counter() - start
  times = []
  for i in range(args.calls):
    start = time.perf_counter()
    images = jax.block_until_ready(sampling.sample_images(
        model, params, tokenizer, tok_params, labels, protocol, batch_index=i + 1))
    times.append(time.perf_counter() - start)
  call_s = min(times)
  stats = jax.devices()[0].memory_stats() if jax.default_backend() != "cpu" else None
  print(json.dumps({
      "what": "sample", "model": cfg.model.name, "patch_nums": list(patch_nums),
      "batch": args.batch, "dtype": args.dtype, "cfg": protocol.cfg, "top_k": protocol.top_k,
      "top_p": protocol.top_p, "call_s": call_s, "call_s_all": times,
      "images_per_s": args.batch / call_s, "compile_and_first_call_s": compile_s,
      "image_shape": list(images.shape), "device": jax.devices()[0].device_kind,
      "peak_memory_bytes": int(stats["peak_bytes_in_use"]) if stats and
      "peak_bytes_in_use" in stats else None, "jax": jax.__version__}))


if __name__ == "__main__":
  main()
