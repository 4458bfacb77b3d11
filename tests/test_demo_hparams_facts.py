"""make demo-hparams against sweeps/demo-hparams.yaml: the Makefile's two run lists (one per
lanes process) are disjoint and together the spec's runs, and every run fits in the stream
prefix make demo encodes (no crop seen twice)."""

import os
import re

from sweeps import spec as spec_lib

ROOT = os.path.join(os.path.dirname(__file__), "..")


def _makefile() -> str:
  with open(os.path.join(ROOT, "Makefile")) as f:
    return f.read()


def _spec_runs():
  return spec_lib.load(os.path.join(ROOT, "sweeps", "demo-hparams.yaml")).runs


def test_the_two_processes_split_the_spec():
  text = _makefile()
  batches, lrs, pattern = re.search(
      r"^demo_hparams_runs = \$\(foreach w,\$\(1\),\$\(foreach b,([\d ]+),"
      r"\$\(foreach lr,([\d. ]+),(\S+?)\)\)\)$", text, re.M).groups()
  def names(widths: str) -> set[str]:
    return {pattern.replace("$(w)", w).replace("$(lr)", lr).replace("$(b)", b)
            for w in widths.split() for b in batches.split() for lr in lrs.split()}
  calls = re.findall(r"\$\(call demo_hparams_runs,([\d ]+)\)", text)
  assert len(calls) == 2
  first, second = names(calls[0]), names(calls[1])
  assert not first & second
  assert first | second == {r.name for r in _spec_runs()}


def test_every_run_fits_in_the_demo_stream_prefix():
  from varjax import scales as scales_lib
  runs = _spec_runs()
  assert {r.config.data.train_split for r in runs} == {"stream"}
  assert all(r.config.run.log_noise_scale for r in runs)
  tokens_per_image = scales_lib.num_tokens(runs[0].config.model.patch_nums)
  needed = max(r.info["tokens"] for r in runs) / tokens_per_image
  streamed = int(re.search(r"^DEMO_STREAM_EXAMPLES := (\d+)$", _makefile(), re.M).group(1))
  assert needed <= streamed
