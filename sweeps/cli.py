"""`python -m sweeps` (what `make sweep` runs):

    python -m sweeps run sweeps/demo.yaml [--backend local|lanes|ray|tpu] [--runs A,B]
                                          [--limit K] [--dry-run]
    python -m sweeps list sweeps/demo.yaml       # the runs, their N / D / FLOPs and status

`run` is idempotent: finished runs are skipped, interrupted ones resume, failed ones are
retried (`--runs NAME` retries one alone). A malformed spec fails before anything is
trained, with a message naming the field. Exit status: 0 when every selected run is
finished, 1 when some failed (listed with their errors), 2 for a user mistake, 143 when
SIGTERM stopped a run after its checkpoint.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from varjax import hostmem
from varjax.cli import run_command
from varjax.errors import ConfigError

BACKENDS = ("local", "lanes", "ray", "tpu")


def _check_counts(args) -> None:
  """--limit and --max-lanes count runs: 0 or less is a mistake, never "all" or "drop some"."""
  for option in ("limit", "max_lanes"):
    value = getattr(args, option, None)
    if value is not None and value < 1:
      raise ConfigError(f"--{option.replace('_', '-')}", f"must be a positive integer, got {value}")


def _selected(sweep, args):
  runs = list(sweep.runs)
  if args.runs:
    runs = sweep.select([n for n in args.runs.replace(" ", ",").split(",") if n])
  if args.limit is not None:
    runs = runs[:args.limit]
  return runs


def _cmd_list(args) -> int:
  from sweeps import registry, spec as spec_lib
  _check_counts(args)
  sweep = spec_lib.load(args.spec, args.out_dir)
  print(f"sweep {sweep.spec.name}: {len(sweep.runs)} runs in {sweep.out_dir}")
  print(f"  {'run':<22} {'N':>10} {'tokens':>10} {'FLOPs':>9} {'steps':>6} {'lr':>8}  "
        f"{'status':<12}cool-down from")
  for run in _selected(sweep, args):
    i = run.info
    branch = f"{i['warm_start']} @ step {i['warm_start_step']}" if "warm_start" in i else ""
    print(f"  {run.name:<22} {i['params']:>10,} {i['tokens']:>10,} {i['flops_exact']:>9.3g} "
          f"{i['steps']:>6} {i['peak_lr']:>8.2g}  {registry.status(run.directory):<12}{branch}")
  return 0


def _cmd_run(args) -> int:
  from sweeps import launch, spec as spec_lib
  _check_counts(args)
  sweep = spec_lib.load(args.spec, args.out_dir)  # every spec mistake surfaces here, before training
  runs = _selected(sweep, args)
  start = time.time()
  progress = None if args.progress == "auto" else args.progress == "on"
  if args.backend == "tpu":
    from sweeps import tpu
    if args.out_dir:
      raise ConfigError("out-dir", "BACKEND=tpu runs the spec on the workers as it is; set "
                        "out_dir in the spec (on storage every host sees)")
    return tpu.launch(sweep, runs, launcher=args.launcher, dry_run=args.dry_run,
                      selected=bool(args.runs) or args.limit is not None)
  if args.dry_run:
    print(f"dry run: {len(runs)} runs with BACKEND={args.backend}:")
    print("\n".join(f"  {r.name}  ({r.info['steps']} steps)  -> {r.directory}" for r in runs))
    return 0
  print(f"sweep {sweep.spec.name}: {len(runs)} runs, backend {args.backend}, registry "
        f"{sweep.out_dir}")
  if args.backend == "local":
    from varjax.parallel import distributed
    distributed.initialize()  # a TPU pod's processes join here (no-op elsewhere)
    outcomes = launch.run_local(runs, progress=progress)
  elif args.backend == "lanes":
    from sweeps import lanes
    outcomes = lanes.run_lanes(runs, progress=progress, max_lanes=args.max_lanes)
  else:
    from sweeps import ray_backend
    outcomes = ray_backend.run_ray(sweep, runs, address=args.address)
  print(f"sweep {sweep.spec.name}: done in {time.time() - start:.0f} s")
  print(launch.format_outcomes(outcomes))
  failed = [o["run"] for o in outcomes if o["status"] == "failed"]
  if failed:
    print(f"{len(failed)} run(s) failed; fix the cause and retry them alone with\n  make sweep "
          f"SWEEP={args.spec} BACKEND={args.backend} RUNS={','.join(failed)}", file=sys.stderr)
    return 1
  busy = [o["run"] for o in outcomes if o["status"] == "busy"]
  if busy:
    print(f"{len(busy)} run(s) are being trained by another process: {', '.join(busy)}")
  return 0


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m sweeps", description=__doc__.split("\n\n")[0])
  commands = parser.add_subparsers(dest="command", required=True)
  run = commands.add_parser("run", help="train the sweep's runs (idempotent)")
  lst = commands.add_parser("list", help="the sweep's runs and their status")
  for p in (run, lst):
    p.add_argument("spec", help="a sweep spec, e.g. sweeps/demo.yaml")
    p.add_argument("--runs", default="", help="only these runs (comma-separated names)")
    p.add_argument("--limit", type=int, default=None, help="only the first K runs (K >= 1)")
    p.add_argument("--out-dir", default=None, help="the registry directory instead of the "
                   "spec's out_dir")
  run.add_argument("--backend", choices=BACKENDS, default="local")
  run.add_argument("--dry-run", action="store_true", help="print what would run (tpu: the "
                   "exact commands) and stop")
  run.add_argument("--address", default=None, help="ray: cluster address (default: "
                   "$RAY_ADDRESS, else a local Ray instance)")
  run.add_argument("--launcher", choices=("gcloud", "xpk"), default="gcloud",
                   help="tpu: a TPU VM slice over ssh, or a GKE cluster with xpk")
  run.add_argument("--max-lanes", type=int, default=8, help="lanes: runs per program")
  run.add_argument("--progress", choices=("auto", "on", "off"), default="auto")
  run.set_defaults(func=_cmd_run)
  lst.set_defaults(func=_cmd_list)
  return parser


def main(argv: list[str] | None = None) -> int:
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  hostmem.keep_freed_memory()  # before JAX starts threads: see varjax/hostmem.py
  args = build_parser().parse_args(argv)
  return run_command(args.func, args, "sweeps",
                     interrupted="interrupted; `make sweep` again resumes")
