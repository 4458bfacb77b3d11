"""`python -m sweeps` (what `make sweep` runs):

    python -m sweeps run sweeps/demo.yaml [--backend local|lanes|ray|tpu] [--runs A,B]
                                          [--limit K] [--dry-run]
    python -m sweeps list sweeps/demo.yaml       # the runs, their N / D / D/N / epochs /
                                                 # FLOPs and status, and warnings
    python -m sweeps design --flops 1e12,4e12 --tokens-per-param 20 [--factor 8]
        (--base CONFIG | --spec SPEC) --depths 1-8 --width-per-depth 32 --head-dim 32
        [--from-fit reports/x/report.json] [--out sweeps/new.yaml]
                                                 # an IsoFLOP spec bracketing the prior D/N

`run` is idempotent: finished runs are skipped, interrupted ones resume, failed ones are
retried (`--runs NAME` retries one alone). A spec with `early_stop` trains in two phases
(sweeps/early_stop.py; BACKEND=local only, the others refuse it). A malformed spec fails before anything is
trained, with a message naming the field. Exit status: 0 when every selected run is
finished, 1 when some failed (listed with their errors), 2 for a user mistake, 143 when
SIGTERM stopped a run after its checkpoint.
"""

from __future__ import annotations

import argparse
import os
import shlex
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
  from sweeps import design, spec as spec_lib
  _check_counts(args)
  sweep = spec_lib.load(args.spec, args.out_dir)
  print(f"sweep {sweep.spec.name}: {len(sweep.runs)} runs in {sweep.out_dir}")
  width = max([22] + [len(r.name) for r in sweep.runs])
  print(f"  {'run':<{width}} {'N':>10} {'tokens':>12} {'D/N':>7} {'epochs':>6} {'FLOPs':>9} "
        f"{'steps':>6} {'lr':>8} {'batch':>6}  {'status':<14}"
        + ("early stop at" if sweep.spec.early_stop else "cool-down from"))
  repeats = []
  for run in _selected(sweep, args):
    i = run.info
    branch = f"{i['warm_start']} @ step {i['warm_start_step']}" if "warm_start" in i else ""
    if "early_stop_step" in i:
      branch = f"step {i['early_stop_step']} (group {i['early_stop_group']})"
    run_epochs = design.epochs(i["tokens"], design.unique_tokens_per_epoch(run.config))
    repeats.append((run.name, run_epochs))
    print(f"  {run.name:<{width}} {i['params']:>10,} {i['tokens']:>12,} "
          f"{i['tokens'] / i['params']:>7.3g} {design.format_epochs(run_epochs):>6} "
          f"{i['flops_exact']:>9.3g} {i['steps']:>6} {i['peak_lr']:>8.2g} "
          f"{run.config.data.global_batch_size:>6}  "
          f"{_status(sweep, run):<14}{branch}")
  for line in _fit_lines(sweep):
    print(line)
  _print_warnings(sweep, repeats)
  if sweep.spec.early_stop:
    from sweeps import early_stop
    print("\n".join(early_stop.describe(sweep.spec.early_stop, list(sweep.runs))))
    for group in early_stop.groups(_selected(sweep, args)):
      decision = early_stop.read_decision(sweep.out_dir, group)
      if decision:
        print(early_stop.format_decision(decision))
  return 0


def _status(sweep, run) -> str:
  """The run's registry status; `paused` for an early-stop run waiting at its stop step
  for its group's decision."""
  from sweeps import early_stop, registry
  status = registry.status(run.directory)
  if (status == "interrupted" and "early_stop_step" in run.info and early_stop.reached(run)
      and early_stop.read_decision(sweep.out_dir, run.info["early_stop_group"]) is None):
    return "paused"
  return status


def _print_warnings(sweep, repeats: list[tuple[str, float | None]]) -> None:
  """Budgets the family cannot bracket, then the runs that repeat the data > 4 times."""
  from sweeps import design
  for line in sweep.warnings + [design.epoch_warning(repeats)]:
    if line:
      print(f"warning: {line}")


def _cmd_design(args) -> int:
  from sweeps import design, spec as spec_lib
  flops = design.parse_numbers(args.flops, "--flops")
  if (args.tokens_per_param is None) == (args.from_fit is None):
    raise ConfigError("--tokens-per-param", "give the prior D/N: --tokens-per-param R or "
                      "--from-fit REPORT.json (not both)")
  if args.base and args.spec:
    raise ConfigError("--base", "give --base CONFIG or --spec SPEC, not both")
  if args.out and os.path.exists(args.out) and not args.force:
    raise ConfigError("--out", f"{args.out} exists (--force replaces it)")
  ratio = args.tokens_per_param
  if args.from_fit:
    ratio = design.ratios_from_fit(args.from_fit, flops)
  if args.depths and args.widths:
    raise ConfigError("--depths", "give --depths or --widths, not both")
  models = {}
  if args.depths:
    models["depths"] = design.parse_numbers(args.depths, "--depths", int)
  elif args.widths:
    models["widths"] = design.parse_numbers(args.widths, "--widths", int)
  models.update({key: getattr(args, key) for key in ("depth", "width_per_depth", "head_dim")
                 if getattr(args, key) is not None})
  out = args.out or "design.yaml"
  values = design.spec_values(flops=flops, ratio=ratio, factor=args.factor, models=models,
                              out=out, base=args.base, spec=args.spec,
                              tolerance=args.tolerance, min_steps=args.min_steps)
  sweep = spec_lib.from_values(values, out)  # every mistake surfaces before anything is written
  unique = design.unique_tokens_per_epoch(sweep.runs[0].config)
  for plan in sweep.plans:
    print("\n".join(design.format_plan(plan, unique)) + "\n")
  _print_warnings(sweep, [(r.name, design.epochs(r.info["tokens"], unique))
                          for r in sweep.runs])
  command = "python -m sweeps " + shlex.join(args.argv)
  origin = f"the D/N of the fit in {args.from_fit}" if args.from_fit else f"D/N = {ratio:g}"
  text = design.dump_spec(values, f"Written by\n  {command}\nAn IsoFLOP grid whose sizes "
                          f"at each budget bracket {origin}.")
  if not args.out:
    print(f"spec (--out FILE writes it; `base` is relative to the spec's folder):\n{text}",
          end="")
    return 0
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  with open(args.out, "w") as f:
    f.write(text)
  print(f"wrote {args.out}: {len(sweep.runs)} runs; `python -m sweeps list {args.out}` "
        "shows them")
  return 0


def _cmd_run(args) -> int:
  from sweeps import launch, spec as spec_lib
  _check_counts(args)
  sweep = spec_lib.load(args.spec, args.out_dir)  # every spec mistake surfaces here, before training
  runs = _selected(sweep, args)
  start = time.time()
  progress = None if args.progress == "auto" else args.progress == "on"
  if sweep.spec.early_stop and args.backend != "local":
    raise ConfigError("early_stop", f"BACKEND={args.backend} cannot stop runs early (it "
                      "trains runs to the end without a decision between phases); run this "
                      "sweep with BACKEND=local, or drop early_stop")
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
    if sweep.spec.early_stop:
      from sweeps import early_stop
      print("\n".join(early_stop.describe(sweep.spec.early_stop, runs)))
    return 0
  print(f"sweep {sweep.spec.name}: {len(runs)} runs, backend {args.backend}, registry "
        f"{sweep.out_dir}")
  if args.backend == "local":
    from varjax.parallel import distributed
    distributed.initialize()  # a TPU pod's processes join here (no-op elsewhere)
    if sweep.spec.early_stop:
      from sweeps import early_stop
      outcomes = early_stop.run_local(runs, sweep.spec.early_stop, list(sweep.runs),
                                      progress=progress)
    else:
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
  waiting = [o["run"] for o in outcomes if o["status"] == "paused"]
  if waiting:
    print(f"{len(waiting)} run(s) wait at their stop step for the rest of their early-stop "
          f"group: {', '.join(waiting)}")
  busy = [o["run"] for o in outcomes if o["status"] == "busy"]
  if busy:
    print(f"{len(busy)} run(s) are being trained by another process: {', '.join(busy)}")
  return 0


def _fit_lines(sweep) -> list[str]:
  """One line per fitted rule: the fit file, its hash and the law (sweeps/fitted.py)."""
  lines = []
  for what in ("lr", "batch"):
    record = next((r.info[f"{what}_fit"] for r in sweep.runs if f"{what}_fit" in r.info), None)
    if record:
      coef = ", ".join(f"{k} {v:.4g}" for k, v in record["coefficients"].items())
      unit = f"; batch in {record['unit']}, rounded to a multiple of {record['multiple_of']}" \
          if what == "batch" else ""
      lines.append(f"{what}: fitted from {record['from']} (sha256 {record['sha256'][:12]}): "
                   f"{record['law']} with {coef}{unit}")
  return lines


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
  _design_parser(commands)
  return parser


def _design_parser(commands) -> None:
  p = commands.add_parser("design", help="write an IsoFLOP spec whose sizes bracket a prior "
                          "tokens-per-parameter ratio at each budget")
  p.add_argument("--flops", required=True, help="FLOP budgets, e.g. 1e12,4e12,1.6e13")
  p.add_argument("--tokens-per-param", type=float, default=None, help="the prior D/N "
                 "(Chinchilla: 20)")
  p.add_argument("--from-fit", default=None, help="the prior D/N at each budget from a fit's "
                 "allocation (report.json of `python -m analysis report`, or `fit --json`)")
  p.add_argument("--factor", type=float, default=8.0, help="D/N reach prior / factor and "
                 "prior x factor (default 8)")
  p.add_argument("--base", default=None, help="the varjax config (path from here)")
  p.add_argument("--spec", default=None, help="an existing spec whose base, config, models, "
                 "lr, batch, cool-downs... the new one keeps")
  p.add_argument("--depths", default=None, help="a depth family, e.g. 1-8 or 2,4,6")
  p.add_argument("--width-per-depth", type=int, default=None)
  p.add_argument("--head-dim", type=int, default=None)
  p.add_argument("--widths", default=None, help="a width family at --depth")
  p.add_argument("--depth", type=int, default=None)
  p.add_argument("--tolerance", type=float, default=None, help="budgets.tolerance")
  p.add_argument("--min-steps", type=int, default=None, help="budgets.min_steps")
  p.add_argument("--out", default=None, help="write the spec here (else print it)")
  p.add_argument("--force", action="store_true", help="replace an existing --out")
  p.set_defaults(func=_cmd_design)


def main(argv: list[str] | None = None) -> int:
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  hostmem.keep_freed_memory()  # before JAX starts threads: see varjax/hostmem.py
  args = build_parser().parse_args(argv)
  args.argv = list(sys.argv[1:] if argv is None else argv)
  return run_command(args.func, args, "sweeps",
                     interrupted="interrupted; `make sweep` again resumes")
