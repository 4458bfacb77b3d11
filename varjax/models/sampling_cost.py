"""Sampling cost, exactly: FLOPs per image of each cached scale step and KV-cache bytes.

One cached step of varjax.models.sampling.scale_step: the S tokens of scale k run through
every block attending to the T_k tokens cached up to and including their own scale (the
real prefix, not L), then the head. AdaLN runs once per step on the class embedding (the
sampler recomputes it every scale). Guidance doubles the rows; per image FLOPs double.
Not counted: top-k/top-p, the tokenizer's per-scale work (embedding lookup, Phi conv,
resizes) and the final decode, none of which depends on the transformer. One multiply-add
is 2 FLOPs, as in varjax/train/flops.py (training), which re-exports these.
"""

from __future__ import annotations

from varjax import scales
from varjax.config import ModelConfig
from varjax.models.sampling import check_collaborative


def scale_step_flops(cfg: ModelConfig, index: int, head: bool = True) -> dict[str, int]:
  """FLOPs per image of the cached sampling step of scale `index`, by part.

  head=False is a prefill step, which only extends the caches: its logits and its hidden
  output are unused (the next scale's input comes from the tokens), so XLA drops the head
  and its AdaLN and, in the last block, everything after the qkv projection."""
  pn = scales.validate(cfg.patch_nums)
  c, v, cv = cfg.resolved_width, cfg.vocab_size, cfg.latent_channels
  f = int(round(c * cfg.mlp_ratio))
  s, t = pn[index] ** 2, int(scales.boundaries(pn)[index + 1])
  full = cfg.depth if head else cfg.depth - 1  # blocks that run whole
  parts = {
      "word_embed": 2 * s * cv * c if index > 0 else 0,  # scale 0 is the class token
      "blocks_matmul": full * 2 * s * (4 * c * c + 2 * c * f) + (0 if head else 2 * s * 3 * c * c),
      "attention": full * 4 * c * s * t,  # q k^T and p v over the cached prefix
      "head": 2 * s * c * v if head else 0,
      "adaln": 2 * c * 6 * c * (1 if cfg.shared_aln else cfg.depth) + (4 * c * c if head else 0),
  }
  parts["total"] = sum(parts.values())
  return parts


def kv_cache_bytes(cfg: ModelConfig, tokens: int, rows: int = 1) -> int:
  """Bytes of a KV cache holding `tokens` tokens for `rows` batch rows: K and V per block,
  [rows, tokens, H, K] each (H K = C), in the compute dtype."""
  itemsize = 2 if cfg.dtype == "bfloat16" else 4
  return rows * tokens * cfg.depth * 2 * cfg.resolved_width * itemsize


def sampling_cost(drafter: ModelConfig, refiner: ModelConfig | None = None,
                  switch: int | None = None, guided: bool = False,
                  batch: int = 1) -> dict:
  """Sampling FLOPs per image and KV-cache bytes for `batch` images, scale by scale.

  Alone (refiner None) the model samples every scale. Collaborative: the drafter samples
  scales [0, switch), the refiner prefills its own cache over them (one cached step per
  drafted scale, of which only the caches are kept) and samples [switch, n). Guidance doubles every row."""
  pn = scales.validate(drafter.patch_nums)
  n = len(pn)
  if refiner is None:
    switch = n
  else:
    check_collaborative(drafter, refiner, switch)
  rows = 2 if guided else 1
  bounds = scales.boundaries(pn)
  steps = []
  for si in range(n):
    role, cfg = ("drafter", drafter) if si < switch else ("refiner", refiner)
    steps.append({"scale": si, "side": pn[si], "tokens": pn[si] ** 2,
                  "cached_tokens": int(bounds[si + 1]), "model": cfg.name, "role": role,
                  "flops": rows * scale_step_flops(cfg, si)["total"],
                  "kv_cache_bytes": kv_cache_bytes(cfg, int(bounds[si + 1]), rows * batch)})
  prefill = 0
  if refiner is not None and 0 < switch < n:
    prefill = rows * sum(scale_step_flops(refiner, si, head=False)["total"]
                         for si in range(switch))
  return {"guided": guided, "batch": batch, "switch": switch, "steps": steps,
          "prefill_flops": prefill, "drafted_tokens": int(bounds[switch]),
          "total": sum(s["flops"] for s in steps) + prefill,
          "kv_cache_peak_bytes": max(s["kv_cache_bytes"] for s in steps)}
