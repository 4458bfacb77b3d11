"""Lanes vs sequential runs: K tiny VAR runs (seeds x learning rates of one shape) trained
one after another with `varjax.train.loop.train`, and the same K runs as lanes of one
vmapped program (`varjax.train.lanes.train_lanes`), side by side in one process.

Both sides are whole runs measured by the wall clock: compile, init, every step, the final
evaluation, checkpoint, params and summary ("whole runs"); "steps only" compares the time
inside the training steps (summary.json train_time_s), where lanes win only by keeping the
vector units busier (on 2 CPU cores a var-d2 step is already mostly compute). The data are the tests' real-but-random setup
(a randomly initialised tokenizer and random token pyramids, tests/train_fixtures.py), so
the benchmark needs nothing built. It also checks that every lane ends at its separate
run's eval loss. Usage: python benchmarks/lanes.py [--lanes 8] [--steps 100] [--json]
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
  parser.add_argument("--depth", type=int, default=2, help="var-d<depth> (width 64 d)")
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--json", action="store_true")
  args = parser.parse_args()
  root = tempfile.mkdtemp(prefix="varjax-bench-lanes-")
  try:
    setup = train_fixtures.make_token_setup(root)

    def configs(out: str):
      return [config_lib.from_dict(train_fixtures.tiny_config(
          setup, os.path.join(root, out),
          model={"depth": args.depth, "width": 64 * args.depth, "heads": args.depth},
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
    gap = max(abs(a["loss"] - b["loss"]) for a, b in zip(separate, together))
    steps_sequential = sum(s["train_time_s"] for s in separate)
    steps_lanes = together[0]["train_time_s"]
    result = {"model": f"var-d{args.depth}", "lanes": args.lanes, "steps": args.steps,
              "batch": args.batch, "sequential_s": t_sequential, "lanes_s": t_lanes,
              "speedup": t_sequential / t_lanes, "train_steps_sequential_s": steps_sequential,
              "train_steps_lanes_s": steps_lanes, "steps_speedup": steps_sequential / steps_lanes,
              "max_eval_loss_gap": gap, "params": separate[0]["params"]}
  finally:
    shutil.rmtree(root, ignore_errors=True)
  if args.json:
    print(json.dumps(result, indent=2))
    return
  print(f"lanes vs sequential: {args.lanes} x var-d{args.depth} "
        f"({result['params']:,} params), {args.steps} steps of batch {args.batch}, whole runs")
  print(f"  {'':12}{'whole runs':>12}{'steps only':>12}")
  print(f"  {'sequential':12}{t_sequential:11.1f}s{steps_sequential:11.1f}s")
  print(f"  {'lanes':12}{t_lanes:11.1f}s{steps_lanes:11.1f}s")
  print(f"  {'speed-up':12}{result['speedup']:11.2f}x{result['steps_speedup']:11.2f}x"
        f"   (max |eval loss gap| {gap:.2e})")


if __name__ == "__main__":
  main()
