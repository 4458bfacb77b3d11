"""Facts the code states once, pinned to values worked out independently of it.

Each is defined in one place and imported by the rest: the 256 px schedule
(varjax.scales), VAR's lr rule (varjax.config.var_peak_lr), the WSD decay start
(varjax.train.optimizer.wsd_decay_start), the attention implementations
(varjax.config.AttnImpl). The key blocks each query block visits
(varjax.kernels.mask.block_key_end) are pinned in test_attention.py.
"""

import jax.numpy as jnp
import pytest

from sweeps import spec as spec_lib
from varjax import cli, config, scales
from varjax.errors import ConfigError
from varjax.kernels import attention
from varjax.train import optimizer


def test_the_256px_schedule_is_vars_everywhere():
  # FoundationVision/VAR: patch_nums 1, 2, 3, 4, 5, 6, 8, 10, 13, 16; L = 680.
  published = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
  assert scales.SCHEDULES["256"] == published
  assert scales.num_tokens(published) == 680 == sum(p * p for p in published)
  assert config.ModelConfig().patch_nums == published
  args = cli.build_parser().parse_args(["convert", "var", "--checkpoint", "a.pth",
                                        "--out", "m"])
  assert tuple(args.patch_nums) == published


@pytest.mark.parametrize("batch, peak", [(256, 1e-4), (512, 2e-4), (768, 3e-4), (64, 2.5e-5)])
def test_the_var_lr_rule(batch, peak):
  # VAR: lr = base 1e-4 x global batch / 256.
  assert config.var_peak_lr(1e-4, batch) == pytest.approx(peak)
  assert config.OptimConfig().resolved_peak_lr(batch) == pytest.approx(peak)
  assert config.OptimConfig(peak_lr=3e-3).resolved_peak_lr(batch) == 3e-3


def test_the_wsd_decay_start_is_where_the_lr_first_falls():
  optim = config.OptimConfig(schedule="wsd", warmup_steps=100, decay_fraction=0.2)
  # 1000 steps: 100 of warmup, then of the other 900 the last 180 decay -> from step 820.
  assert optimizer.wsd_decay_start(optim, 1000) == 820
  lr = optimizer.lr_schedule(optim, 1000, 256)
  assert float(lr(100)) == float(lr(819)) == float(lr(820)) == pytest.approx(1e-4)
  assert float(lr(821)) < 1e-4
  cfg = config.replace(config.Config(), optim={"schedule": "wsd", "warmup_steps": 100},
                       run={"steps": 1000})
  assert spec_lib.decay_start(cfg) == 820  # where a 1000-step sweep run branches off
  # A run that is all warmup has no decay: it ends before its decay would start, and a
  # sweep branches it at its last step.
  assert optimizer.wsd_decay_start(optim, 50) == 50
  assert spec_lib.decay_start(config.replace(cfg, run={"steps": 50})) == 49


def test_the_attention_implementations_are_one_list():
  impls = ("auto", "xla", "cudnn", "splash", "pallas")
  assert config.ATTN_IMPLS == impls
  parser = cli.build_parser()
  for impl in impls:
    assert config.ModelConfig(attn_impl=impl).attn_impl == impl
    assert parser.parse_args(["bench", "train", "--attn-impl", impl]).attn_impl == impl
    if impl != "auto":  # the dispatcher knows each (cudnn on a GPU, in bf16)
      assert attention.resolve_impl(impl, jnp.bfloat16, "gpu") == impl
  with pytest.raises(ConfigError, match="model.attn_impl"):
    config.from_dict({"model": {"attn_impl": "flash"}})
  with pytest.raises(ValueError, match="unknown attention impl"):
    attention.resolve_impl("flash")


def _make_variable(name: str) -> str:
  import os
  import re
  with open(os.path.join(os.path.dirname(__file__), "..", "Makefile")) as f:
    return re.search(rf"^{name} := (.+)$", f.read(), re.M).group(1).strip()


@pytest.mark.parametrize("specs, variable", [
    (["demo.yaml"], "DEMO_STREAM_EXAMPLES"),
    (["study.yaml", "study-heldout.yaml"], "STUDY_STREAM_EXAMPLES")])
def test_the_streamed_prefix_covers_every_run_once_at_most(specs, variable):
  """make demo / make study encode a prefix of the stream; every run of their specs must
  fit in it (no crop seen twice), counted from the specs' runs."""
  import os
  from varjax import scales as scales_lib
  runs = [r for name in specs for r in spec_lib.load(
      os.path.join(os.path.dirname(__file__), "..", "sweeps", name)).runs]
  assert {r.config.data.train_split for r in runs} == {"stream"}
  assert len({r.config.data.tokens for r in runs}) == 1  # one prefix for all
  tokens_per_image = scales_lib.num_tokens(runs[0].config.model.patch_nums)
  needed = max(r.info["tokens"] for r in runs) / tokens_per_image
  streamed = int(_make_variable(variable))
  assert needed <= streamed < needed + 2048  # enough, and not a wasted chunk more
  assert streamed % 2048 == 0  # whole tokenize chunks


def test_the_demo_measures_fd_on_its_largest_budget():
  import os
  sweep = spec_lib.load(os.path.join(os.path.dirname(__file__), "..", "sweeps", "demo.yaml"))
  largest = max(r.info["budget"] for r in sweep.runs)
  names = {r.name for r in sweep.runs if r.info["budget"] == largest}
  fd_runs = _make_variable("DEMO_FD_RUNS")
  widths = fd_runs.split("foreach w,")[1].split(",")[0].split()
  assert {f"d2w{w}-C{spec_lib.short_number(largest)}-s0" for w in widths} == names


def test_the_demo_frontier_pairs_its_largest_and_smallest_models():
  """The sampling frontier of make demo: the largest budget's largest model drafts, its
  smallest refines (issue 19), both of the runs whose fd the demo measures."""
  import os
  sweep = spec_lib.load(os.path.join(os.path.dirname(__file__), "..", "sweeps", "demo.yaml"))
  largest = max(r.info["budget"] for r in sweep.runs)
  runs = sorted((r for r in sweep.runs if r.info["budget"] == largest),
                key=lambda r: r.info["params"])
  assert _make_variable("DEMO_DRAFTER") == f"runs/demo/{runs[-1].name}"
  assert _make_variable("DEMO_REFINER") == f"runs/demo/{runs[0].name}"


def test_the_repeated_runs_are_twins_of_demo_runs():
  """sweeps/demo-repeat.yaml: each run has a demo run of the same model, steps, batch, lr and
  schedule; only data.unique_images differs, and it repeats data (U < D)."""
  import dataclasses
  import os
  here = os.path.join(os.path.dirname(__file__), "..", "sweeps")
  demo = {r.name: r for r in spec_lib.load(os.path.join(here, "demo.yaml")).runs}
  repeat = spec_lib.load(os.path.join(here, "demo-repeat.yaml")).runs
  assert len(repeat) == 4 and len({r.info["unique_images"] for r in repeat}) == 2
  for r in repeat:
    twin = demo[r.name.rsplit("-U", 1)[0]]
    def same(c):  # everything but the names, where it lives, a branch's trunk and U
      d = dataclasses.asdict(c)
      for key in ("name", "out_dir", "warm_start"):
        d["run"].pop(key)
      d["data"].pop("unique_images")
      return d
    assert same(r.config) == same(twin.config)
    assert r.config.data.unique_images * r.config.model.num_tokens < r.info["tokens"]
