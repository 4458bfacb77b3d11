"""Sampling cost, exactly: the FLOP formula of a cached scale step against XLA's cost
analysis of the compiled step, the KV-cache bytes against the arrays the sampler builds,
and the published collaborative-decoding figures (CoDe, ScaleKV) for VAR-d30 -> d16."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from varjax import scales
from varjax.config import ModelConfig
from varjax.models import sampling
from varjax.models.var import VAR, param_shapes
from varjax.train import flops

PN = (1, 2, 3, 4)
D30, D16 = ModelConfig(depth=30), ModelConfig(depth=16)


def _xla_step_flops(cfg: ModelConfig, index: int, rows: int, head: bool) -> float:
  """XLA's FLOP count of the compiled cached step of scale `index` (a prefill step returns
  only the caches, so XLA drops the head)."""
  model = VAR(cfg)
  params = {"params": param_shapes(cfg)}
  h, c = cfg.resolved_heads, cfg.resolved_width
  t = int(scales.boundaries(cfg.patch_nums)[index])
  cache = [(jax.ShapeDtypeStruct((rows, t, h, c // h), jnp.float32),) * 2
           for _ in range(cfg.depth)]
  cond = jax.ShapeDtypeStruct((rows, c), jnp.float32)
  side = cfg.patch_nums[index]
  x = None if index == 0 else jax.ShapeDtypeStruct((rows, side * side, cfg.latent_channels),
                                                   jnp.float32)

  def step(params, cond, x, cache):
    logits, caches = sampling.scale_step(model, params, index, cond, x, cache)
    return (logits, caches) if head else caches

  return jax.jit(step).lower(params, cond, x, cache).compile().cost_analysis()["flops"]


def test_scale_step_flops_match_xla_cost_analysis():
  # (shared AdaLN, scale, rows (2: guidance), head (False: a prefill step))
  cases = [(False, si, 1, True) for si in range(len(PN))] + [
      (False, 2, 2, True), (False, 3, 1, False), (True, 3, 1, True)]
  for shared_aln, index, rows, head in cases:
    cfg = ModelConfig(depth=2, width=256, heads=4, vocab_size=512, latent_channels=8,
                      num_classes=5, patch_nums=PN, shared_aln=shared_aln)
    want = rows * flops.scale_step_flops(cfg, index, head=head)["total"]
    got = _xla_step_flops(cfg, index, rows, head)
    assert got == pytest.approx(want, rel=0.05), (shared_aln, index, rows, head)
    assert got >= want  # XLA also counts the element-wise work the formula leaves out


def test_kv_cache_bytes_equal_the_arrays_and_scalekv_figure():
  # A shape small enough for the CPU, in bf16 (2 bytes, as fp16), with and without
  # guidance; the formula then extrapolates to VAR-d30.
  cfg = ModelConfig(depth=2, width=64, heads=2, vocab_size=16, latent_channels=4,
                    num_classes=3, dtype="bfloat16", patch_nums=PN)
  model = VAR(cfg)
  params = {"params": jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), param_shapes(cfg))}
  bounds = scales.boundaries(cfg.patch_nums)
  def caches_after_each_scale(params, cond):
    caches, out = sampling.empty_caches(model, cond.shape[0]), []
    for si, side in enumerate(cfg.patch_nums):
      x = None if si == 0 else jnp.zeros((cond.shape[0], side * side, 4))
      _, caches = sampling.scale_step(model, params, si, cond, x, caches)
      out.append(caches)
    return out

  for rows, guided in ((1, False), (2, True)):
    cost = flops.sampling_cost(cfg, guided=guided)
    every = jax.jit(caches_after_each_scale)(params, jnp.zeros((rows, 64)))
    for si, caches in enumerate(every):
      measured = sum(a.nbytes for a in jax.tree.leaves(caches))
      assert all(a.dtype == jnp.bfloat16 for a in jax.tree.leaves(caches))
      assert measured == cost["steps"][si]["kv_cache_bytes"]
      assert measured == flops.kv_cache_bytes(cfg, int(bounds[si + 1]), rows)
  # ScaleKV: 680 tokens x 30 layers x (K, V) x 1920 x 2 bytes per image, doubled by CFG.
  d30 = ModelConfig(depth=30, dtype="bfloat16")
  assert flops.sampling_cost(d30)["kv_cache_peak_bytes"] == 680 * 30 * 2 * 1920 * 2
  assert flops.sampling_cost(d30)["kv_cache_peak_bytes"] == 156_672_000
  assert flops.sampling_cost(d30, guided=True)["kv_cache_peak_bytes"] == 2 * 156_672_000


def test_codec_token_counts_and_parameter_bound():
  cumulative = [int(b) for b in scales.boundaries(D30.patch_nums)[1:]]
  assert cumulative == [1, 5, 14, 30, 55, 91, 155, 255, 424, 680]
  steps = flops.sampling_cost(D30)["steps"]
  assert [s["cached_tokens"] for s in steps] == cumulative
  table = {r["switch"]: r for r in flops.collaborative_table(D30, D16, switches=[9, 8, 7, 6])}
  assert [table[k]["drafted_tokens"] for k in (9, 8, 7, 6)] == [424, 255, 155, 91]
  # CoDe's bound from 2.0e9 and 0.31e9 parameters: 1.47x / 2.12x / 2.88x / 3.73x.
  for k, bound in zip((9, 8, 7, 6), (1.47, 2.12, 2.88, 3.73)):
    assert table[k]["parameter_bound"] == pytest.approx(bound, rel=0.005)
    # The exact ratio pays the refiner's prefill and the drafter's longer attention.
    assert table[k]["speedup"] == pytest.approx(table[k]["parameter_bound"], rel=0.15)
    assert table[k]["speedup"] < table[k]["speedup_without_prefill"]
  alone = flops.sampling_cost(D30)["total"]
  d16_alone = flops.sampling_cost(D16)["total"]
  edges = flops.collaborative_table(D30, D16, switches=[0, 10])
  assert edges[0]["flops"] == d16_alone and edges[1]["flops"] == alone
  assert flops.sampling_cost(D30, guided=True)["total"] == 2 * alone


def test_sampling_flops_sum_the_scale_steps():
  cfg = ModelConfig(depth=3, width=128, heads=2, vocab_size=64, latent_channels=8,
                    num_classes=4, patch_nums=PN)
  cost = flops.sampling_cost(cfg, cfg, switch=2)
  steps = [flops.scale_step_flops(cfg, si)["total"] for si in range(len(PN))]
  prefill = sum(flops.scale_step_flops(cfg, si, head=False)["total"] for si in range(2))
  assert cost["total"] == sum(steps) + prefill and cost["prefill_flops"] == prefill
  # Attention over the real prefix: the sum over scales is the scale-causal pair count.
  attention = sum(flops.scale_step_flops(cfg, si)["attention"] for si in range(len(PN)))
  assert attention == cfg.depth * 4 * cfg.resolved_width * flops.allowed_pairs(PN)


def _cli(capsys, *argv):
  from varjax import cli
  rc = cli.main(list(argv))
  out = capsys.readouterr()
  return rc, out.out, out.err


def test_flops_sample_cli(capsys):
  rc, out, err = _cli(capsys, "flops", "--sample", "--model", "var-d30", "--refiner", "var-d16",
                      "--switch-scale", "9,8,7,6", "--model.dtype=bfloat16", "--json")
  assert rc == 0, err
  report = json.loads(out)
  assert report["sampling"]["kv_cache_peak_bytes"] == 156_672_000
  assert [r["switch"] for r in report["collaborative"]] == [9, 8, 7, 6]
  rc, out, err = _cli(capsys, "flops", "--sample", "--model", "var-d4", "--cfg", "1.5")
  assert rc == 0 and "guidance: batch doubled" in out and "KV cache peak" in out
  for argv, message in (
      (("--sample", "--refiner", "var-d2", "--switch-scale", "11"), "switch scale 11 is outside"),
      (("--sample", "--switch-scale", "2"), "--switch-scale needs --refiner"),
      (("--refiner", "var-d2"), "--refiner counts sampling: add --sample"),
      (("--sample", "--cfg=-1"), "--cfg must be >= 0")):
    rc, out, err = _cli(capsys, "flops", "--model", "var-d4", *argv)
    assert rc == 2 and out == "" and len(err.splitlines()) == 1 and message in err, err
