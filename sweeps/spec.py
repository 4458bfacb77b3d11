"""Sweep specs (`sweeps/*.yaml`) and their expansion into runs.

A spec names a base varjax config, a model family, budgets, seeds and the learning-rate /
batch rules; `expand(spec)` turns it into runs, each a full `varjax.config.Config` with a
deterministic name that says what it is and a static directory `<out_dir>/<name>`:

    d6-D2e7-s0         depth 6 (width 64 d), 2e7 training tokens, seed 0
    d3w96-C1e12-s1     depth 3 at width 96, a 1e12-FLOP IsoFLOP budget, seed 1
    d2-D1e6-s0-lr3e-3  one point of a learning-rate sweep (only when several are listed)

    name: demo                       # default: the file's stem
    base: configs/embedded32.yaml    # a varjax config, relative to this file
    config: {optim: {warmup_steps: 20}}   # any varjax config keys on top of base
    out_dir: runs/demo               # the run registry (default runs/<name>)
    models: {depths: [1, 2, 3], width_per_depth: 64, head_dim: 64}
        # or {widths: [128, 256], depth: 4}
    budgets: {tokens: [1e6, 2e6]}    # per model, or an IsoFLOP grid:
        # {flops: [1e12, 3e12], tolerance: 0.05, min_steps: 20}
        # bracket: {tokens_per_param: 20, factor: 8} keeps, per budget, the fewest sizes
        #   whose D/N reach both 20 / 8 and 20 x 8 (sweeps/design.py)
    seeds: [0]
    cooldowns: {decay_fraction: 0.2} # WSD; shorter budgets branch off the longest run
    lr: {rule: var, base_lr: 1e-4}  # peak = base_lr x batch / 256 (VAR)
        # {rule: power, lr0: 2e-3, n0: 1e6, exponent: -0.3}: peak = lr0 (N / n0)^exponent
        # {rule: config}: the config's optim.peak_lr / base_lr as they are
        # scales: [0.5, 1, 2] multiplies the rule's peak: a learning-rate sweep
    batch: {rule: config}            # or {rule: power, b0: 64, n0: 1e6, exponent: 0.2,
                                     #     multiple_of: 8}: B = b0 (N / n0)^exponent
    resources: {cpus: 1, gpus: 0}    # per run, for BACKEND=ray
    tpu: {name: my-v5p, zone: us-east5-a, project: my-proj}   # for BACKEND=tpu

IsoFLOP budgets use the exact FLOP counter (varjax.train.flops): for each budget C and
model, steps = round(C / FLOPs per step); the model is in the grid when that many steps
(at least `min_steps`) land within `tolerance` of C. N is the non-embedding parameter
count (`summary.json` "params"). With `bracket` each budget keeps only the contiguous sizes
(by N) needed to span the prior tokens-per-parameter ratio; a budget the family cannot
bracket keeps what it has and records a warning (`Sweep.warnings`). Every mistake raises
ConfigError naming the spec field.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
from typing import Any, Literal

from sweeps import design
from varjax import config as config_lib
from varjax.config import Config
from varjax.errors import ConfigError

SWEEP_FILE = "sweep.json"  # written into each run directory: the run's place in its sweep


@dataclasses.dataclass(frozen=True)
class ModelsSpec:
  depths: tuple[int, ...] = ()
  width_per_depth: int = 64
  widths: tuple[int, ...] = ()
  depth: int | None = None
  head_dim: int = 64

  def __post_init__(self):
    if bool(self.depths) == bool(self.widths):
      raise ConfigError("models", "give exactly one of models.depths (a depth family) or "
                        "models.widths (a width family at models.depth)")
    if self.widths and self.depth is None:
      raise ConfigError("models.depth", "a width family needs the depth of its models")
    for key, values in (("depths", self.depths), ("widths", self.widths)):
      if any(v < 1 for v in values):
        raise ConfigError(f"models.{key}", f"must be positive, got {list(values)}")
      if len(set(values)) != len(values):
        raise ConfigError(f"models.{key}", f"has repeated entries: {list(values)}")
    for key in ("width_per_depth", "head_dim"):
      if getattr(self, key) < 1:
        raise ConfigError(f"models.{key}", "must be >= 1")
    if self.depth is not None and self.depth < 1:
      raise ConfigError("models.depth", "must be >= 1")

  def shapes(self) -> list[tuple[int, int]]:
    """(depth, width) of every model of the family."""
    if self.depths:
      return [(d, d * self.width_per_depth) for d in self.depths]
    return [(self.depth, w) for w in self.widths]


@dataclasses.dataclass(frozen=True)
class BudgetsSpec:
  tokens: tuple[float, ...] = ()
  flops: tuple[float, ...] = ()
  tolerance: float = 0.1
  min_steps: int = 10
  bracket: design.BracketSpec = design.BracketSpec()

  def __post_init__(self):
    if bool(self.tokens) == bool(self.flops):
      raise ConfigError("budgets", "give exactly one of budgets.tokens (per model) or "
                        "budgets.flops (an IsoFLOP grid)")
    for key in ("tokens", "flops"):
      values = getattr(self, key)
      for i, v in enumerate(values):
        if not (v > 0 and math.isfinite(v)):
          raise ConfigError(f"budgets.{key}[{i}]", f"must be a positive number, got {v}")
      if len(set(values)) != len(values):
        raise ConfigError(f"budgets.{key}", f"has repeated budgets: {list(values)}")
    if not 0 < self.tolerance < 1:
      raise ConfigError("budgets.tolerance", f"must be in (0, 1), got {self.tolerance}")
    if self.min_steps < 1:
      raise ConfigError("budgets.min_steps", "must be >= 1")
    if self.bracket.active:
      if not self.flops:
        raise ConfigError("budgets.bracket", "brackets an IsoFLOP grid: give budgets.flops")
      self.bracket.check(len(self.flops))


@dataclasses.dataclass(frozen=True)
class LrSpec:
  rule: Literal["config", "var", "power"] = "config"
  base_lr: float | None = None  # var; None: the config's optim.base_lr
  lr0: float | None = None  # power
  n0: float = 1e6
  exponent: float = 0.0
  scales: tuple[float, ...] = (1.0,)

  def __post_init__(self):
    if self.rule == "power" and self.lr0 is None:
      raise ConfigError("lr.lr0", "the power rule needs lr0, the peak lr at N = n0")
    for key in ("base_lr", "lr0"):
      value = getattr(self, key)
      if value is not None and not value > 0:
        raise ConfigError(f"lr.{key}", f"must be > 0, got {value}")
    if not self.n0 > 0:
      raise ConfigError("lr.n0", "must be > 0")
    if not self.scales or any(not s > 0 for s in self.scales):
      raise ConfigError("lr.scales", f"must be a non-empty list of positive factors, got "
                        f"{list(self.scales)}")


@dataclasses.dataclass(frozen=True)
class BatchSpec:
  rule: Literal["config", "power"] = "config"
  b0: int = 64
  n0: float = 1e6
  exponent: float = 0.0
  multiple_of: int = 8

  def __post_init__(self):
    if self.b0 < 1 or self.multiple_of < 1:
      raise ConfigError("batch", "b0 and multiple_of must be >= 1")
    if not self.n0 > 0:
      raise ConfigError("batch.n0", "must be > 0")


@dataclasses.dataclass(frozen=True)
class CooldownsSpec:
  """Warmup-stable-decay with cool-downs: every run uses the WSD schedule (linear decay
  over the last `decay_fraction` of its steps after warmup), and the budgets of one model,
  seed and lr share a trunk: the longest run keeps a checkpoint where each shorter run's
  decay starts, and the shorter run trains only its decay from there (run.warm_start).
  The result is the same as training each from scratch; the compute is the longest run
  plus the decays."""
  decay_fraction: float = 0.2

  def __post_init__(self):
    if not 0 < self.decay_fraction <= 1:
      raise ConfigError("cooldowns.decay_fraction", f"must be in (0, 1], got "
                        f"{self.decay_fraction}")


@dataclasses.dataclass(frozen=True)
class ResourcesSpec:
  """What one run asks of a Ray cluster."""
  cpus: float = 1.0
  gpus: float = 0.0
  memory_gb: float = 0.0

  def __post_init__(self):
    for key in ("cpus", "gpus", "memory_gb"):
      if getattr(self, key) < 0:
        raise ConfigError(f"resources.{key}", "must be >= 0")


@dataclasses.dataclass(frozen=True)
class TpuSpec:
  """Where BACKEND=tpu launches: a TPU VM slice (gcloud) or a GKE cluster (xpk)."""
  name: str = ""  # TPU VM / queued resource name
  zone: str = ""
  project: str = ""
  repo_dir: str = "~/varjax"  # the checkout on every worker
  cluster: str = ""  # xpk
  tpu_type: str = "v5p-8"  # xpk --tpu-type
  num_slices: int = 1
  docker_image: str = ""  # xpk --base-docker-image (empty: python:3.12, see sweeps/tpu.py)


@dataclasses.dataclass(frozen=True)
class SweepSpec:
  name: str
  models: ModelsSpec
  budgets: BudgetsSpec
  base: str | None = None
  out_dir: str | None = None
  seeds: tuple[int, ...] = (0,)
  # Unique data as an axis: each run trains on data.unique_images = K examples (a fixed
  # subset; names end -U<K>); empty: the whole training split.
  unique_images: tuple[int, ...] = ()
  lr: LrSpec = LrSpec()
  batch: BatchSpec = BatchSpec()
  cooldowns: CooldownsSpec | None = None
  resources: ResourcesSpec = ResourcesSpec()
  tpu: TpuSpec = TpuSpec()

  def __post_init__(self):
    if not self.name or "/" in self.name:
      raise ConfigError("name", "must be a non-empty name without '/'")
    if not self.seeds or any(s < 0 for s in self.seeds) or len(set(self.seeds)) != len(self.seeds):
      raise ConfigError("seeds", f"must be distinct non-negative integers, got {list(self.seeds)}")
    if any(u < 1 for u in self.unique_images) or len(set(self.unique_images)) != len(
        self.unique_images):
      raise ConfigError("unique_images", "must be distinct positive example counts, got "
                        f"{list(self.unique_images)}")


@dataclasses.dataclass(frozen=True)
class Run:
  """One run of a sweep: its name, full config and place in the sweep (-> sweep.json)."""
  name: str
  config: Config
  info: dict[str, Any]

  @property
  def directory(self) -> str:
    return os.path.join(self.config.run.out_dir, self.name)


@dataclasses.dataclass(frozen=True)
class Sweep:
  spec: SweepSpec
  path: str  # the spec file
  base_values: dict[str, Any]  # base config file <- spec `config`
  runs: tuple[Run, ...]
  plans: tuple[design.BudgetPlan, ...] = ()  # with budgets.bracket: the choice per budget

  @property
  def warnings(self) -> list[str]:
    """Budgets the family cannot bracket (one sentence each)."""
    return [w for plan in self.plans for w in plan.warnings]

  @property
  def out_dir(self) -> str:
    return self.runs[0].config.run.out_dir if self.runs else ""

  def select(self, names: list[str]) -> list[Run]:
    """The runs called `names` (in sweep order); unknown names raise ConfigError."""
    known = {r.name: r for r in self.runs}
    unknown = [n for n in names if n not in known]
    if unknown:
      raise ConfigError("runs", f"unknown run(s) {', '.join(unknown)}; this sweep has "
                        f"{', '.join(known)}")
    return [r for r in self.runs if r.name in set(names)]


def short_number(x: float) -> str:
  """2.5e5 -> '2.5e5', 1e6 -> '1e6', 3e-4 -> '3e-4', 500 -> '500': for run names."""
  text = f"{x:.3g}"
  if "e" not in text:
    return text
  mantissa, exponent = text.split("e")
  return f"{mantissa}e{int(exponent)}"


def _model_label(depth: int, width: int) -> str:
  return f"d{depth}" if width == 64 * depth else f"d{depth}w{width}"


def load(path: str, out_dir: str | None = None) -> Sweep:
  """Reads, validates and expands the spec at `path` (nothing is trained or written);
  `out_dir` replaces the spec's registry directory."""
  values = config_lib.read_config_file(path)
  if not isinstance(values, dict):
    raise ConfigError("spec", f"{path} must hold a mapping of spec fields")
  values = dict(values)
  if out_dir:
    values["out_dir"] = out_dir
  return from_values(values, path)


def from_values(values: dict[str, Any], path: str) -> Sweep:
  """`load` of spec fields already read; `path` (which need not exist) places `base` and
  names the sweep when `name` is not given."""
  values = dict(values)
  values.setdefault("name", os.path.splitext(os.path.basename(path))[0])
  overrides = values.pop("config", None) or {}
  if not isinstance(overrides, dict):
    raise ConfigError("config", "must be a mapping of varjax config sections")
  for key in ("models", "budgets"):
    if key not in values:
      raise ConfigError(key, "is required")
  bracket = values["budgets"].get("bracket") if isinstance(values["budgets"], dict) else None
  if isinstance(bracket, dict) and bracket.get("tokens_per_param") is None:
    raise ConfigError("budgets.bracket.tokens_per_param", "is required: the prior D/N to "
                      "bracket (e.g. 20)")
  spec = config_lib.build_dataclass(SweepSpec, values)
  base_values: dict[str, Any] = {}
  if spec.base:
    base_path = os.path.normpath(os.path.join(os.path.dirname(path), spec.base))
    if not os.path.isfile(base_path):
      raise ConfigError("base", f"config file not found: {base_path}")
    base_values = config_lib.read_config_file(base_path)
  base_values = config_lib.merge(base_values, overrides)
  try:
    config_lib.from_dict(base_values)
  except ConfigError as e:
    raise ConfigError(f"config.{e.key}", e.message) from None
  runs, plans = expand(spec, base_values)
  return Sweep(spec, path, base_values, tuple(runs), tuple(plans))


def _rule_value(rule, n: float, what: str, field: str) -> float:
  value = rule.lr0 if what == "lr" else rule.b0
  value = value * (n / rule.n0) ** rule.exponent
  if not (value > 0 and math.isfinite(value)):
    raise ConfigError(field, f"gives {value} at N = {n:.3g}")
  return value


def _family(spec: SweepSpec, base_values: dict[str, Any]) -> list[dict[str, Any]]:
  """Each model of the family with what its runs share: size, batch, peak lr, costs."""
  from varjax.models import var
  from varjax.train import flops as flops_lib

  family = []
  for depth, width in spec.models.shapes():
    if width % spec.models.head_dim:
      raise ConfigError("models.head_dim", f"width {width} (depth {depth}) is not a "
                        f"multiple of the head dim {spec.models.head_dim}")
    model = {"depth": depth, "width": width, "heads": width // spec.models.head_dim}
    probe = config_lib.from_dict(config_lib.merge(base_values, {"model": model}))
    n = var.count_params(probe.model)["non_embedding"]
    batch = probe.data.global_batch_size
    if spec.batch.rule == "power":
      raw = _rule_value(spec.batch, n, "batch", "batch")
      batch = max(spec.batch.multiple_of,
                  int(round(raw / spec.batch.multiple_of)) * spec.batch.multiple_of)
    if spec.lr.rule == "var":
      peak = config_lib.var_peak_lr(spec.lr.base_lr or probe.optim.base_lr, batch)
    elif spec.lr.rule == "power":
      peak = _rule_value(spec.lr, n, "lr", "lr")
    else:
      peak = probe.optim.resolved_peak_lr(batch)
    family.append({"label": _model_label(depth, width), "depth": depth, "width": width,
                   "model": model, "params": n, "batch": batch, "peak": peak,
                   "per_step": flops_lib.training_flops(probe.model)["total"] * batch,
                   "tokens_per_step": batch * probe.model.num_tokens})
  return family


def _budgets(spec: SweepSpec, m: dict[str, Any]) -> list[tuple[str, int, str, float]]:
  """(name part, steps, budget kind, budget value) of each budget model `m` trains."""
  if spec.budgets.tokens:
    return [(f"D{short_number(b)}", max(1, round(b / m["tokens_per_step"])), "tokens", b)
            for b in spec.budgets.tokens]
  budgets = []
  for b in spec.budgets.flops:
    steps = round(b / m["per_step"])
    off = abs(steps * m["per_step"] - b)
    if steps >= spec.budgets.min_steps and off <= spec.budgets.tolerance * b:
      budgets.append((f"C{short_number(b)}", steps, "flops", b))
  return budgets


def _bracket(spec: SweepSpec, family: list[dict[str, Any]],
             budgets: dict[str, list]) -> list[design.BudgetPlan]:
  """Each IsoFLOP budget's bracketing choice among the sizes within tolerance."""
  plans = []
  ratios = spec.budgets.bracket.ratios(len(spec.budgets.flops))
  for b, ratio in zip(spec.budgets.flops, ratios):
    candidates = [design.Candidate(m["label"], m["params"], steps * m["tokens_per_step"], steps)
                  for m in family for _, steps, _, value in budgets[m["label"]] if value == b]
    if candidates:
      plans.append(design.plan_budget(f"C{short_number(b)}", b, candidates, ratio,
                                      spec.budgets.bracket.factor))
  return plans


def expand(spec: SweepSpec,
           base_values: dict[str, Any]) -> tuple[list[Run], list[design.BudgetPlan]]:
  """Every run of the spec, ordered by model size, then budget, seed and lr scale; and,
  with budgets.bracket, the bracketing choice at each IsoFLOP budget."""
  out_dir = spec.out_dir or os.path.join("runs", spec.name)
  if spec.cooldowns:
    base_values = config_lib.merge(base_values, {"optim": {
        "schedule": "wsd", "decay_fraction": spec.cooldowns.decay_fraction}})
  family = _family(spec, base_values)
  budgets = {m["label"]: _budgets(spec, m) for m in family}
  plans = []
  if spec.budgets.bracket.active:
    plans = _bracket(spec, family, budgets)
    chosen = {(label, plan.flops) for plan in plans for label in plan.chosen_labels}
    budgets = {label: [b for b in bs if (label, b[3]) in chosen] for label, bs in budgets.items()}
  runs: list[Run] = []
  for m in family:
    label, n = m["label"], m["params"]
    for part, steps, kind, budget in budgets[label]:
      for seed, scale, unique in itertools.product(spec.seeds, spec.lr.scales,
                                                   spec.unique_images or (0,)):
        lr = m["peak"] * scale
        name = f"{label}-{part}-s{seed}"
        if len(spec.lr.scales) > 1:
          name += f"-lr{short_number(lr)}"
        if unique:
          name += f"-U{short_number(unique)}"
        cfg = config_lib.from_dict(config_lib.merge(base_values, {
            "model": m["model"], "data": {"global_batch_size": m["batch"],
                                          "unique_images": unique},
            "optim": {"peak_lr": lr},
            "run": {"name": name, "out_dir": out_dir, "seed": seed, "steps": steps}}))
        info = {"sweep": spec.name, "run": name, "model": label, "depth": m["depth"],
                "width": m["width"], "budget_kind": kind, "budget": budget, "seed": seed,
                "lr_scale": scale, "peak_lr": lr, "steps": steps, "params": n,
                "tokens": steps * m["tokens_per_step"],
                "flops_exact": steps * m["per_step"]}
        if unique:
          info["unique_images"] = unique
        runs.append(Run(name, cfg, info))
  if spec.cooldowns:
    runs = _branch_cooldowns(runs)
  if spec.budgets.flops:
    for i, b in enumerate(spec.budgets.flops):
      if not any(r.info["budget"] == b for r in runs):
        raise ConfigError(f"budgets.flops[{i}]", f"no model of the family trains "
                          f"{short_number(b)} FLOPs within tolerance "
                          f"{spec.budgets.tolerance} in at least {spec.budgets.min_steps} "
                          "steps; widen budgets.tolerance, lower budgets.min_steps or "
                          "change the budget")
  return runs, plans


def decay_start(cfg: Config) -> int:
  """Where a WSD run branches off a longer one: the first step of its decay, or its last
  step when warmup takes the whole run."""
  from varjax.train import optimizer
  return min(optimizer.wsd_decay_start(cfg.optim, cfg.run.steps), cfg.run.steps - 1)


def _branch_cooldowns(runs: list[Run]) -> list[Run]:
  """Runs of one model, seed and lr: the longest (the trunk) keeps a checkpoint where each
  other run's decay starts; the others warm-start there."""
  groups: dict[tuple, list[Run]] = {}
  for run in runs:
    i = run.info
    groups.setdefault((i["model"], i["seed"], i["lr_scale"], i.get("unique_images")),
                      []).append(run)
  out: list[Run] = []
  for members in groups.values():
    trunk = max(members, key=lambda r: r.config.run.steps)
    points = {r.name: decay_start(r.config) for r in members if r is not trunk}
    points = {name: b for name, b in points.items() if b >= 1}
    keep = tuple(sorted(set(points.values())))
    out.append(Run(trunk.name, config_lib.replace(trunk.config, run={"keep_steps": list(keep)}),
                   dict(trunk.info, cooldown_trunk=True)))
    for run in members:
      if run is trunk:
        continue
      if run.name not in points:
        out.append(run)
        continue
      b = points[run.name]
      cfg = config_lib.replace(run.config, run={"warm_start": f"{trunk.directory}@{b}"})
      out.append(Run(run.name, cfg, dict(run.info, warm_start=trunk.name,
                                         warm_start_step=b)))
  order = {r.name: k for k, r in enumerate(runs)}
  # Every trunk (and unbranched run) first, in sweep order, then the runs branching off:
  # a branch never waits for a trunk that has not started, and the first runs are
  # independent (BACKEND=ray trains them at once).
  return sorted(out, key=lambda r: ("warm_start" in r.info, order[r.name]))
