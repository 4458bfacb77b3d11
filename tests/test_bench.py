"""`varjax bench train`: the batch it times is the largest whose compiled step fits."""

from __future__ import annotations

import pytest

from varjax.errors import VarjaxError
from varjax.train import bench

SMALL = dict(model="var-d1", patch_nums=(1, 2), vocab_size=64, num_classes=10, steps=1,
             warmup=1, attn_impl="xla")


@pytest.mark.slow  # 15-26 s: five compiles of the bench step
def test_picks_the_largest_batch_that_fits_and_refuses_when_none_does(monkeypatch):
  # With no limit (CPU) the largest batch is timed, and XLA's memory grows with the batch.
  full = bench.bench_train(batch=[2, 8], **SMALL)
  assert full["batch"] == 8 and full["batch_candidates"] == [2, 8]
  need = {int(b): m for b, m in full["memory_by_batch"].items()}
  assert need[2] < need[8]
  # A device that holds batch 2 but not batch 8: batch 2 is timed, nothing else run.
  monkeypatch.setattr(bench, "_device_memory_limit", lambda: (need[2] + need[8]) // 2)
  fitted = bench.bench_train(batch=[2, 8], **SMALL)
  assert fitted["batch"] == 2 and fitted["tokens_per_step"] == 2 * 5
  # None fits: one clear error naming the memory.
  monkeypatch.setattr(bench, "_device_memory_limit", lambda: need[2] // 2)
  with pytest.raises(VarjaxError, match="GiB of device memory"):
    bench.bench_train(batch=[2, 8], **SMALL)
