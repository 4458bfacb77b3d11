"""The bench training step of this tree against an earlier commit's, side by side in one run.

    .venv/bin/python benchmarks/train_step_vs_ref.py [--ref COMMIT] [--rounds 3] [--quick]

Runs `varjax bench train --model var-d4 --patch-nums 1,2,3,4,5,6,8 --batch 32 --json` from a
temporary git worktree of `--ref` (default: 5669765, the last commit before issue 21's
refactor of the trainers and layers) and from this tree, alternating, in fresh processes
with the same venv, and prints each side's best tokens/s and MFU and the ratio. Alternating
rounds let both sides see the same machine load (a shared CPU drifts by 20% a minute). It
also says whether both trees lower the step to the same XLA program (source locations
aside): when they do, any difference in speed is the machine's noise.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = ["bench", "train", "--model", "var-d4", "--patch-nums", "1,2,3,4,5,6,8",
         "--batch", "32", "--json"]


def bench(source_dir: str, steps: int) -> dict:
  """One `varjax bench train` with the package imported from `source_dir`."""
  env = {**os.environ, "PYTHONPATH": source_dir, "JAX_PLATFORMS": "cpu"}
  code = "import sys; from varjax.cli import main; sys.exit(main(sys.argv[1:]))"
  out = subprocess.run([sys.executable, "-c", code, *BENCH, "--steps", str(steps)],
                       capture_output=True, text=True, env=env, cwd=source_dir, check=True)
  return json.loads(out.stdout)


# The bench step's StableHLO, hashed without source locations (both trees' APIs).
_PROGRAM = """
import hashlib, re
import jax, numpy as np
from varjax import config as config_lib
from varjax.config import MeshConfig, OptimConfig
from varjax.models import var
from varjax.parallel import mesh as mesh_lib
from varjax.train import optimizer, step as step_lib
cfg = config_lib.replace(config_lib.Config(), model={"depth": 4, "patch_nums": (1, 2, 3, 4, 5, 6, 8),
                                                     "vocab_size": 4096, "num_classes": 1000})
m, mesh, optim = cfg.model, mesh_lib.make_mesh(MeshConfig()), OptimConfig()
model, tx = var.VAR(m), optimizer.adamw(optim, 1000, 32)
abstract, shardings = step_lib.state_shardings(model, tx, 0, mesh)
step = step_lib.make_train_step(model, tx, optimizer.lr_schedule(optim, 1000, 32), mesh, shardings)
batch = {"label": jax.ShapeDtypeStruct((32,), np.int32),
         "x": jax.ShapeDtypeStruct((32, m.num_tokens - 1, m.latent_channels), np.float32),
         "target": jax.ShapeDtypeStruct((32, m.num_tokens), np.int32)}
with jax.set_mesh(mesh):
  text = step.jitted.lower(abstract, batch).as_text()
text = re.sub(r"#loc\\d* = .*", "", re.sub(r"loc\\(.*?\\)", "", text))
print(hashlib.sha256(text.encode()).hexdigest())
"""


def program_hash(source_dir: str) -> str:
  env = {**os.environ, "PYTHONPATH": source_dir, "JAX_PLATFORMS": "cpu"}
  out = subprocess.run([sys.executable, "-c", _PROGRAM], capture_output=True, text=True,
                       env=env, cwd=source_dir, check=True)
  return out.stdout.strip().splitlines()[-1]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--ref", default="5669765")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--quick", action="store_true", help="1 round of 2 timed steps")
  args = parser.parse_args()
  rounds, steps = (1, 2) if args.quick else (args.rounds, 5)
  with tempfile.TemporaryDirectory() as tmp:
    ref_dir = os.path.join(tmp, "ref")
    subprocess.run(["git", "-C", REPO, "worktree", "add", "--detach", ref_dir, args.ref],
                   check=True, capture_output=True)
    try:
      same = program_hash(ref_dir) == program_hash(REPO)
      results = {"ref": [], "this tree": []}
      for r in range(rounds):
        sides = [("ref", ref_dir), ("this tree", REPO)]
        for side, source in (sides if r % 2 == 0 else sides[::-1]):  # neither always first
          results[side].append(bench(source, steps))
          last = results[side][-1]
          print(f"round {r + 1} {side:<9}: {last['tokens_per_s']:8.0f} tokens/s, "
                f"MFU {100 * last['mfu']:.1f}%", flush=True)
    finally:
      subprocess.run(["git", "-C", REPO, "worktree", "remove", "--force", ref_dir],
                     capture_output=True)
  best = {side: max(rs, key=lambda x: x["tokens_per_s"]) for side, rs in results.items()}
  print(f"\nvar-d4 [1..8] batch 32, best of {rounds} x {steps} steps each:")
  for side, b in best.items():
    print(f"  {side:<9} ({args.ref if side == 'ref' else 'working tree'}): "
          f"{b['tokens_per_s']:.0f} tokens/s, {b['step_s']:.3f} s/step, MFU {100 * b['mfu']:.1f}%")
  print(f"  ratio this tree / ref: {best['this tree']['tokens_per_s'] / best['ref']['tokens_per_s']:.3f}")
  print(f"  same XLA program (StableHLO without source locations): {'yes' if same else 'no'}")


if __name__ == "__main__":
  main()
