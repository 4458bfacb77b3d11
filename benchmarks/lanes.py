"""Lanes vs sequential runs: K tiny VAR runs (seeds x learning rates of one shape) trained
one after another with `varjax.train.loop.train`, and the same K runs as lanes of one
vmapped program (`varjax.train.lanes.train_lanes`), side by side in one process.

Both sides are whole runs measured by the wall clock: compile, init, every step, the final
evaluation, checkpoint, params and summary ("whole runs"); "steps only" compares the time
inside the training loop (summary.json train_time_s: the steps, the first one's compile
included), where lanes win by paying the per-step dispatch once and keeping the vector
units busier (on 2 CPU cores a var-d2 step is already mostly compute). The data are the tests' real-but-random setup
(a randomly initialised tokenizer and random token pyramids, tests/train_fixtures.py), so
the benchmark needs nothing built. It also checks that every lane ends at its separate
run's eval loss. Usage: python benchmarks/lanes.py [--depths 1,2] [--lanes 8] [--steps 100]
[--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

from varjax import hostmem

hostmem.keep_freed_memory()  # before JAX starts threads, as the CLIs do

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
import train_fixtures  # noqa: E402  (the tests' on-disk training setup)

from varjax import config as config_lib  # noqa: E402
from varjax.train import lanes, loop  # noqa: E402


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--lanes", type=int, default=8)
  parser.add_argument("--steps", type=int, default=100)
  parser.add_argument("--depths", default="1,2", help="var-d<depth> (width 64 d), one "
                      "comparison each")
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--json", action="store_true")
  args = parser.parse_args()
  results = [compare(int(d), args) for d in args.depths.split(",")]
  if args.json:
    print(json.dumps(results, indent=2))
    return
  print(f"lanes vs sequential: {args.lanes} runs of one shape (seeds x learning rates), "
        f"{args.steps} steps of batch {args.batch}, whole runs and steps only")
  print(f"  {'model':<8}{'params':>9}{'sequential':>12}{'lanes':>9}{'speed-up':>10}"
        f"{'steps: seq':>12}{'lanes':>9}{'speed-up':>10}{'max gap':>10}")
  for r in results:
    print(f"  {r['model']:<8}{r['params']:>9,}{r['sequential_s']:>11.1f}s{r['lanes_s']:>8.1f}s"
          f"{r['speedup']:>9.2f}x{r['train_steps_sequential_s']:>11.1f}s"
          f"{r['train_steps_lanes_s']:>8.1f}s{r['steps_speedup']:>9.2f}x"
          f"{r['max_eval_loss_gap']:>10.1e}")


def compare(depth: int, args) -> dict:
  root = tempfile.mkdtemp(prefix="varjax-bench-lanes-")
  try:
    setup = train_fixtures.make_token_setup(root)

    def configs(out: str):
      return [config_lib.from_dict(train_fixtures.tiny_config(
          setup, os.path.join(root, out),
          model={"depth": depth, "width": 64 * depth, "heads": depth},
          data={"global_batch_size": args.batch},
          optim={"peak_lr": 1e-3 * (1 + i % 3)},
          run={"name": f"lane{i}", "seed": i, "steps": args.steps, "log_every": 10,
               "eval_every": 10 ** 6, "checkpoint_every": 10 ** 6, "eval_examples": 32}))
          for i in range(args.lanes)]

    quiet = lambda message: None
    start = time.perf_counter()
    separate = [loop.train(c, log=quiet, progress=False) for c in configs("sequential")]
    t_sequential = time.perf_counter() - start
    start = time.perf_counter()
    together = lanes.train_lanes(configs("lanes"), log=quiet, progress=False)
    t_lanes = time.perf_counter() - start
  finally:
    shutil.rmtree(root, ignore_errors=True)
  steps_sequential = sum(s["train_time_s"] for s in separate)
  steps_lanes = together[0]["train_time_s"]
  return {"model": f"var-d{depth}", "params": separate[0]["params"], "lanes": args.lanes,
          "steps": args.steps, "batch": args.batch, "sequential_s": t_sequential,
          "lanes_s": t_lanes, "speedup": t_sequential / t_lanes,
          "train_steps_sequential_s": steps_sequential, "train_steps_lanes_s": steps_lanes,
          "steps_speedup": steps_sequential / steps_lanes,
          "max_eval_loss_gap": max(abs(a["loss"] - b["loss"]) for a, b in zip(separate, together))}


if __name__ == "__main__":
  main()
