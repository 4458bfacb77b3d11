"""benchmarks/accelerator.py's bookkeeping: parsing each benchmark's JSON, chaining a
section's input to an earlier result, and the ratios in the summary tables."""

from __future__ import annotations

import importlib.util
import os

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location(
    "accelerator", os.path.join(HERE, "..", "benchmarks", "accelerator.py"))
accelerator = importlib.util.module_from_spec(spec)
spec.loader.exec_module(accelerator)


def test_last_json_skips_the_reference_codes_own_prints():
  text = "[constructor] ==== flash_if_available=True\n{not json\n{\"batch\": 64}\n"
  assert accelerator.last_json(text) == {"batch": 64}
  assert accelerator.last_json('{\n  "rows": []\n}') == {"rows": []}  # indented object
  assert accelerator.last_json("no output") is None


def test_resolve_takes_the_batch_the_earlier_section_chose():
  command = ["python3", "ref.py", "--batch", "@train-pallas.batch"]
  assert accelerator.resolve(command, {"train-pallas": {"batch": 128}})[-1] == "128"
  assert accelerator.resolve(command, {}) is None


def test_summary_ratios_and_shares_match_hand_arithmetic():
  results = {
      "env": {"device": "NVIDIA H200", "backend": "gpu", "bf16_matmul_flops": 800e12,
              "matmul_size": 8192, "jax": "0.11.2", "flax": "0.12.10"},
      "attn-bwd": {"rows": [
          {"shape": "VAR-512", "L": 2240, "model": "d30", "heads": 30, "batch": 16,
           "impl": "pallas", "ms": 10.0, "useful_tflops": 200.0, "speedup_vs_xla": 2.0}]},
      "train-pallas": {"model": "var-d16", "batch": 128, "tokens_per_s": 300_000.0,
                       "step_s": 0.5, "flops_per_step": 0.5 * 494.5e12, "mfu": 0.5,
                       "device_memory_bytes": 64 * 2**30},
      "torch-train": {"batch": 128, "depth": 16, "tokens_per_s": 200_000.0,
                      "attention": "sdpa", "peak_memory_bytes": 2**30, "torch": "2.11"},
      "sample": {"batch": 64, "images_per_s": 150.0, "call_s": 64 / 150.0,
                 "peak_memory_bytes": None},
      "torch-sample": {"batch": 64, "images_per_s": 100.0, "call_s": 0.64,
                       "peak_memory_bytes": None},
  }
  records = [{"section": "tune", "skipped": "out of the time budget (500 s)"}]
  text = accelerator.summary(results, quick=False, records=records, autotune="0")
  assert "| 200.0 | 25% | 2.00x |" in text  # 200 of a measured 800 TFLOP/s
  # 494.5 TFLOP/s of exact model FLOPs is 50% of the published 989 and 62% of 800.
  assert "| 300,000 | 50.0% | 61.8% | 64.0 | 1.50x |" in text
  assert "| varjax | 64 | 150.0 |" in text and "| 1.50x |" in text
  assert "| tune | - | skipped: out of the time budget (500 s) |" in text
  assert "autotuning level: 0" in text
