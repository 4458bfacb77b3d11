"""Sweep specs (`sweeps/*.yaml`) and their expansion into runs.

A spec names a base varjax config, a model family, budgets, seeds and the learning-rate /
batch rules; `expand(spec)` turns it into runs, each a full `varjax.config.Config` with a
deterministic name that says what it is and a static directory `<out_dir>/<name>`:

    d6-D2e7-s0         depth 6 (width 64 d), 2e7 training tokens, seed 0
    d3w96-C1e12-s1     depth 3 at width 96, a 1e12-FLOP IsoFLOP budget, seed 1
    d2-D1e6-s0-lr3e-3  one point of a learning-rate sweep (only when several are listed)
    d2-D1e6-s0-lr3e-3-b64  ... of an lr x batch sweep (-b<images per step>: several
                       batch.scales)

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
        # {rule: fitted, from: fit.json}: lr_opt = a N^b D^c of `analysis hparams --json`
        #   (sweeps/fitted.py) at the run's N and D
        # scales: [0.5, 1, 2] multiplies the rule's peak: a learning-rate sweep
    batch: {rule: config}            # or {rule: power, b0: 64, n0: 1e6, exponent: 0.2,
                                     #     multiple_of: 8}: B = b0 (N / n0)^exponent
        # {rule: fitted, from: fit.json}: batch_opt = d N^f D^e of the fit at the budget's D
        #   (unit: images | tokens when the fit's batch column is not global_batch_size)
        # scales: [0.5, 1, 2] multiplies the rule's batch: a batch sweep (with lr.scales,
        #   an lr x batch grid). Every batch but the config's own at scale 1 is rounded to
        #   a multiple of multiple_of and the mesh's data x fsdp (batch_multiple). A token
        #   budget keeps D: steps = round(D / (batch x L)) per batch; the lr follows the
        #   batch only where the lr rule does (var; config without peak_lr)
    early_stop: {at: 0.3, keep: 0.5} # an lr sweep's runs that differ only in lr compete:
        # at 30% of their steps each one's final eval loss is forecast (analysis/extrapolate,
        # lr_annealing on its own schedule) and the best half train on; the others are
        # recorded stopped_early (sweeps/early_stop.py). group_by: [model, budget, seed,
        # batch, unique_images] (the default) names what the competitors share
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

from sweeps import design, fitted
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
  rule: Literal["config", "var", "power", "fitted"] = "config"
  base_lr: float | None = None  # var; None: the config's optim.base_lr
  lr0: float | None = None  # power
  n0: float = 1e6
  exponent: float = 0.0
  scales: tuple[float, ...] = (1.0,)
  from_: str | None = None  # fitted: an hparams fit (spec key `from`, relative to the spec)

  def __post_init__(self):
    if self.rule == "power" and self.lr0 is None:
      raise ConfigError("lr.lr0", "the power rule needs lr0, the peak lr at N = n0")
    _check_from("lr", self.rule, self.from_)
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
  """The global batch (images per step) of each run: the rule's batch times each of
  `scales` (a batch-size sweep), rounded to a multiple of `batch_multiple` (multiple_of and
  the mesh's batch shards); the config's own batch is kept as it is at scale 1."""
  rule: Literal["config", "power", "fitted"] = "config"
  b0: int = 64
  n0: float = 1e6
  exponent: float = 0.0
  multiple_of: int = 8
  scales: tuple[float, ...] = (1.0,)
  from_: str | None = None  # fitted: an hparams fit (spec key `from`, relative to the spec)
  unit: Literal["images", "tokens"] | None = None  # fitted: the fit's batch unit (default:
  # images when the fit read global_batch_size, the registry's column)

  def __post_init__(self):
    if self.b0 < 1 or self.multiple_of < 1:
      raise ConfigError("batch", "b0 and multiple_of must be >= 1")
    if not self.n0 > 0:
      raise ConfigError("batch.n0", "must be > 0")
    if not self.scales or any(not s > 0 for s in self.scales) or len(set(self.scales)) != len(
        self.scales):
      raise ConfigError("batch.scales", f"must be a non-empty list of distinct positive "
                        f"factors, got {list(self.scales)}")
    _check_from("batch", self.rule, self.from_)
    if self.unit is not None and self.rule != "fitted":
      raise ConfigError("batch.unit", "is the unit of a fitted batch law: only with "
                        "rule: fitted")


def _check_from(section: str, rule: str, path: str | None) -> None:
  if rule == "fitted" and not path:
    raise ConfigError(f"{section}.from", "the fitted rule needs `from: FILE`, the JSON of "
                      "`python -m analysis hparams --json`")
  if rule != "fitted" and path:
    raise ConfigError(f"{section}.from", f"is the fit file of rule: fitted, not of rule: "
                      f"{rule}")


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


# What the runs of an early-stop group may share; lr never (they compete over it). A batch
# that is not swept is the same for every run of a model and budget.
EARLY_STOP_GROUP_KEYS = ("model", "budget", "seed", "batch", "unique_images")


@dataclasses.dataclass(frozen=True)
class EarlyStopSpec:
  """Early stopping of an lr sweep (sweeps/early_stop.py): the runs that share `group_by`
  (everything but lr by default) train to `at` x their steps, each one's final loss is
  forecast from that part of its curve, the best `keep` fraction of each group (rounded to
  the nearest count, halves up, at least 1) train to the end and the others stop."""
  at: float = 0.3
  keep: float = 0.5
  group_by: tuple[str, ...] = EARLY_STOP_GROUP_KEYS

  def __post_init__(self):
    if not 0 < self.at < 1:
      raise ConfigError("early_stop.at", f"must be a fraction of the steps in (0, 1), got "
                        f"{self.at}")
    if not 0 < self.keep <= 1:
      raise ConfigError("early_stop.keep", f"must be the fraction of each group kept, in "
                        f"(0, 1], got {self.keep}")
    unknown = [k for k in self.group_by if k not in EARLY_STOP_GROUP_KEYS]
    if unknown or len(set(self.group_by)) != len(self.group_by):
      raise ConfigError("early_stop.group_by", f"must be distinct names among "
                        f"{', '.join(EARLY_STOP_GROUP_KEYS)} (runs differing in lr always "
                        f"compete), got {list(self.group_by)}")

  def kept(self, n: int) -> int:
    """How many of a group of `n` train to the end."""
    return max(1, min(n, math.floor(self.keep * n + 0.5 + 1e-9)))

  def stop_step(self, steps: int) -> int:
    """The step where a run of `steps` steps is forecast (and stopped if it loses)."""
    return round(self.at * steps)


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
  early_stop: EarlyStopSpec | None = None
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
    if self.early_stop is not None:
      if len(self.lr.scales) < 2:
        raise ConfigError("early_stop", "stops the losers of an lr sweep: give several "
                          "lr.scales")
      if self.cooldowns is not None:
        raise ConfigError("early_stop", "cannot be combined with cooldowns (a stopped trunk "
                          "would strand its branches)")


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
    """Budgets the family cannot bracket, and fitted rules used away from the one D of an
    N-only fit (one sentence each)."""
    out = [w for plan in self.plans for w in plan.warnings]
    for key, section in (("lr_fit", "lr"), ("batch_fit", "batch")):
      off = [r for r in self.runs if r.info.get(key, {}).get("D_ratio") is not None
             and abs(math.log(r.info[key]["D_ratio"])) > math.log(1.02)]
      if off:
        fit = off[0].info[key]
        ratios = [r.info[key]["D_ratio"] for r in off]
        out.append(f"{section}.from {fit['from']} is an N-only fit at D = "
                   f"{fit['D_fixed']:.3g} tokens; {len(off)} run(s) train at "
                   f"{min(ratios):.3g}-{max(ratios):.3g}x that D, where it assumes the "
                   f"optimum does not move with D (not measured): {off[0].name}"
                   + (f" and {len(off) - 1} more" if len(off) > 1 else ""))
    return out

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
  early = values.pop("early_stop", None)
  for section in ("lr", "batch"):  # `from` is a Python keyword: the field is from_
    if isinstance(values.get(section), dict) and "from" in values[section]:
      values[section] = {("from_" if k == "from" else k): v for k, v in values[section].items()}
  try:
    spec = config_lib.build_dataclass(SweepSpec, values)
  except ConfigError as e:
    raise ConfigError(e.key.replace("from_", "from"), e.message.replace("from_", "from")) \
        from None
  for section in ("lr", "batch"):  # fit files are relative to the spec, as `base` is
    rule = getattr(spec, section)
    if rule.from_:
      spec = dataclasses.replace(spec, **{section: dataclasses.replace(
          rule, from_=os.path.normpath(os.path.join(os.path.dirname(path), rule.from_)))})
  if early is not None:  # built alone: the Optional would hide its field's own message
    if not isinstance(early, dict):
      raise ConfigError("early_stop", "must be a mapping {at: FRACTION, keep: FRACTION, "
                        "group_by: [...]}")
    spec = dataclasses.replace(
        spec, early_stop=config_lib.build_dataclass(EarlyStopSpec, early, "early_stop"))
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


def batch_multiple(batch: BatchSpec, cfg: Config) -> int:
  """What every batch the rules make is a multiple of: batch.multiple_of and the devices
  the batch splits over (data x fsdp, ICI and DCN, times optim.grad_accum_steps). A mesh
  axis of -1 takes the devices left at run time, unknown here: multiple_of (default 8)
  stands for them, so names never depend on the machine that lists the sweep."""
  mesh = cfg.mesh
  shards = math.prod(v for v in (mesh.data, mesh.fsdp) if v != -1) * mesh.dcn_data \
      * mesh.dcn_fsdp
  return math.lcm(batch.multiple_of, shards * cfg.optim.grad_accum_steps)


def round_batch(value: float, multiple: int) -> int:
  """The nearest multiple of `multiple` to `value`, at least `multiple`."""
  return max(multiple, int(round(value / multiple)) * multiple)


def _family(spec: SweepSpec, base_values: dict[str, Any]) -> list[dict[str, Any]]:
  """Each model of the family with what its runs share: size, costs, its config."""
  from varjax.models import var
  from varjax.train import flops as flops_lib

  family = []
  for depth, width in spec.models.shapes():
    if width % spec.models.head_dim:
      raise ConfigError("models.head_dim", f"width {width} (depth {depth}) is not a "
                        f"multiple of the head dim {spec.models.head_dim}")
    model = {"depth": depth, "width": width, "heads": width // spec.models.head_dim}
    probe = config_lib.from_dict(config_lib.merge(base_values, {"model": model}))
    family.append({"label": _model_label(depth, width), "depth": depth, "width": width,
                   "model": model, "params": var.count_params(probe.model)["non_embedding"],
                   "probe": probe, "tokens_per_image": probe.model.num_tokens,
                   "per_image": flops_lib.training_flops(probe.model)["total"],
                   "multiple": batch_multiple(spec.batch, probe)})
  return family


def _rule_batch(spec: SweepSpec, m: dict[str, Any], d: float,
                fits: dict[str, fitted.Fit]) -> tuple[float, dict[str, Any] | None]:
  """The batch rule's value for model `m` at D = `d` tokens, in images, before scales and
  rounding; and for the fitted rule what sweep.json records of it."""
  rule = spec.batch
  if rule.rule == "config":
    return float(m["probe"].data.global_batch_size), None
  if rule.rule == "power":
    return _rule_value(rule, m["params"], "batch", "batch"), None
  fit = fits["batch"]
  unit = rule.unit or fit.batch_unit()
  if unit is None:
    raise ConfigError("batch.unit", f"{fit.path} fitted the batch column "
                      f"{fit.columns['batch']!r}: say whether it counts images or tokens "
                      "(batch.unit: images | tokens)")
  value = fit.batch(m["params"], d)
  images = value / m["tokens_per_image"] if unit == "tokens" else value
  if not (images > 0 and math.isfinite(images)):
    raise ConfigError("batch.from", f"{fit.path}: batch_opt is {images} at N = "
                      f"{m['params']:.3g}, D = {d:.3g}")
  return images, dict(fit.record("batch", m["params"], d, value), unit=unit, images=images,
                      multiple_of=m["multiple"])


def _peak_lr(spec: SweepSpec, m: dict[str, Any], batch: int, tokens: float,
             fits: dict[str, fitted.Fit]) -> tuple[float, dict[str, Any] | None]:
  """The lr rule's peak for model `m` at `batch` images and `tokens` (before lr.scales);
  and for the fitted rule what sweep.json records of it."""
  rule, probe = spec.lr, m["probe"]
  if rule.rule == "var":
    return config_lib.var_peak_lr(rule.base_lr or probe.optim.base_lr, batch), None
  if rule.rule == "power":
    return _rule_value(rule, m["params"], "lr", "lr"), None
  if rule.rule == "config":
    return probe.optim.resolved_peak_lr(batch), None
  fit = fits["lr"]
  value = fit.lr(m["params"], tokens)
  if not (value > 0 and math.isfinite(value)):
    raise ConfigError("lr.from", f"{fit.path}: lr_opt is {value} at N = {m['params']:.3g}, "
                      f"D = {tokens:.3g}")
  return value, fit.record("lr", m["params"], tokens, value)


def _steps(spec: SweepSpec, kind: str, budget: float, m: dict[str, Any],
           batch: int) -> int | None:
  """Steps of model `m` at `batch` for a budget: tokens / (batch x L); or C / FLOPs per
  step, None when that misses the budget by more than the tolerance or is under min_steps."""
  if kind == "tokens":
    return max(1, round(budget / (batch * m["tokens_per_image"])))
  per_step = m["per_image"] * batch
  steps = round(budget / per_step)
  if steps >= spec.budgets.min_steps and abs(steps * per_step - budget) <= \
      spec.budgets.tolerance * budget:
    return steps
  return None


def _budgets(spec: SweepSpec, m: dict[str, Any],
             fits: dict[str, fitted.Fit]) -> list[dict[str, Any]]:
  """Each budget model `m` trains: its name part, kind, value, and the batches of the batch
  axis (batch, scale, fit record). An IsoFLOP budget is in the model's grid when the rule's
  batch (unscaled) trains it within tolerance; `steps` and `tokens` are that batch's."""
  kinds = [("D", "tokens", b) for b in spec.budgets.tokens] + \
      [("C", "flops", b) for b in spec.budgets.flops]
  out = []
  for letter, kind, b in kinds:
    # D for the batch law: the budget's tokens; an IsoFLOP budget's are C / FLOPs per token
    d = b if kind == "tokens" else b * m["tokens_per_image"] / m["per_image"]
    raw, record = _rule_batch(spec, m, d, fits)
    scaled = [(int(raw) if spec.batch.rule == "config" and scale == 1
               else round_batch(raw * scale, m["multiple"]), scale)
              for scale in spec.batch.scales]
    if len({batch for batch, _ in scaled}) < len(scaled):
      raise ConfigError("batch.scales", f"{m['label']} at {letter}{short_number(b)}: scales "
                        f"{', '.join(f'{x:g}' for x in spec.batch.scales)} of batch {raw:.4g} "
                        f"give batches {', '.join(str(x) for x, _ in scaled)} (multiples of "
                        f"{m['multiple']}); spread the scales further")
    reference = int(raw) if spec.batch.rule == "config" else round_batch(raw, m["multiple"])
    steps = _steps(spec, kind, b, m, reference)
    if steps is None:
      continue
    out.append({"part": f"{letter}{short_number(b)}", "kind": kind, "budget": b,
                "steps": steps, "tokens": steps * reference * m["tokens_per_image"],
                "batches": [(batch, scale, record) for batch, scale in scaled]})
  return out


def _bracket(spec: SweepSpec, family: list[dict[str, Any]],
             budgets: dict[str, list]) -> list[design.BudgetPlan]:
  """Each IsoFLOP budget's bracketing choice among the sizes within tolerance."""
  plans = []
  ratios = spec.budgets.bracket.ratios(len(spec.budgets.flops))
  for b, ratio in zip(spec.budgets.flops, ratios):
    candidates = [design.Candidate(m["label"], m["params"], p["tokens"], p["steps"])
                  for m in family for p in budgets[m["label"]] if p["budget"] == b]
    if candidates:
      plans.append(design.plan_budget(f"C{short_number(b)}", b, candidates, ratio,
                                      spec.budgets.bracket.factor))
  return plans


def expand(spec: SweepSpec,
           base_values: dict[str, Any]) -> tuple[list[Run], list[design.BudgetPlan]]:
  """Every run of the spec, ordered by model size, then budget, batch, seed and lr scale; and,
  with budgets.bracket, the bracketing choice at each IsoFLOP budget."""
  out_dir = spec.out_dir or os.path.join("runs", spec.name)
  if spec.cooldowns:
    base_values = config_lib.merge(base_values, {"optim": {
        "schedule": "wsd", "decay_fraction": spec.cooldowns.decay_fraction}})
  fits = {section: fitted.load(rule.from_, f"{section}.from", section)
          for section, rule in (("lr", spec.lr), ("batch", spec.batch)) if rule.rule == "fitted"}
  family = _family(spec, base_values)
  budgets = {m["label"]: _budgets(spec, m, fits) for m in family}
  plans = []
  if spec.budgets.bracket.active:
    plans = _bracket(spec, family, budgets)
    chosen = {(label, plan.flops) for plan in plans for label in plan.chosen_labels}
    budgets = {label: [b for b in bs if (label, b["budget"]) in chosen]
               for label, bs in budgets.items()}
  runs: list[Run] = []
  for m in family:
    label, n = m["label"], m["params"]
    for point in budgets[label]:
      part, kind, budget = point["part"], point["kind"], point["budget"]
      for batch, batch_scale, batch_fit in point["batches"]:
        steps = _steps(spec, kind, budget, m, batch)
        if steps is None:
          raise ConfigError("batch.scales", f"{label} at {part}: batch {batch} (scale "
                            f"{batch_scale:g}) trains {round(budget / (m['per_image'] * batch))}"
                            f" steps, not within budgets.tolerance {spec.budgets.tolerance} of "
                            f"the budget in at least budgets.min_steps "
                            f"{spec.budgets.min_steps}; narrow batch.scales")
        tokens = steps * batch * m["tokens_per_image"]
        peak, lr_fit = _peak_lr(spec, m, batch, tokens, fits)
        for seed, scale, unique in itertools.product(spec.seeds, spec.lr.scales,
                                                     spec.unique_images or (0,)):
          lr = peak * scale
          name = f"{label}-{part}-s{seed}"
          if len(spec.lr.scales) > 1:
            name += f"-lr{short_number(lr)}"
          if len(spec.batch.scales) > 1:
            name += f"-b{batch}"
          if unique:
            name += f"-U{short_number(unique)}"
          cfg = config_lib.from_dict(config_lib.merge(base_values, {
              "model": m["model"], "data": {"global_batch_size": batch,
                                            "unique_images": unique},
              "optim": {"peak_lr": lr},
              "run": {"name": name, "out_dir": out_dir, "seed": seed, "steps": steps}}))
          info = {"sweep": spec.name, "run": name, "model": label, "depth": m["depth"],
                  "width": m["width"], "budget_kind": kind, "budget": budget, "seed": seed,
                  "lr_scale": scale, "peak_lr": lr, "batch_scale": batch_scale,
                  "global_batch_size": batch, "steps": steps, "params": n,
                  "tokens": tokens, "flops_exact": steps * (m["per_image"] * batch)}
          if lr_fit:
            info["lr_fit"] = lr_fit
          if batch_fit:
            info["batch_fit"] = batch_fit
          if unique:
            info["unique_images"] = unique
          if spec.early_stop:
            cfg, info = _early_stop_point(spec.early_stop, cfg, info)
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


def early_stop_group(info: dict[str, Any], group_by: tuple[str, ...]) -> str:
  """The name of a run's early-stop group: the parts of its name that `group_by` keeps
  (never its lr), e.g. d2-D1e6-s0 for d2-D1e6-s0-lr3e-3 by default."""
  batch = info.get("global_batch_size")
  parts = {"model": info["model"],
           "budget": ("D" if info["budget_kind"] == "tokens" else "C")
                     + short_number(info["budget"]),
           "seed": f"s{info['seed']}",
           "batch": f"b{batch}" if f"-b{batch}-" in info["run"] + "-" else "",
           "unique_images": (f"U{short_number(info['unique_images'])}"
                             if info.get("unique_images") else "")}
  return "-".join(parts[k] for k in EARLY_STOP_GROUP_KEYS
                  if k in group_by and parts[k]) or "all"


def _early_stop_point(early: EarlyStopSpec, cfg: Config,
                      info: dict[str, Any]) -> tuple[Config, dict[str, Any]]:
  """A run of an early-stop sweep: its group (what it shares with its competitors) and its
  stop step, which it always checkpoints (run.keep_steps) and resumes from if kept."""
  steps = cfg.run.steps
  stop = early.stop_step(steps)
  if not 1 <= stop < steps:
    raise ConfigError("early_stop.at", f"{info['run']} trains {steps} steps: {early.at} of "
                      f"them is step {stop}, not a step inside the run")
  group = early_stop_group(info, early.group_by)
  cfg = config_lib.replace(cfg, run={"keep_steps": sorted({*cfg.run.keep_steps, stop})})
  return cfg, dict(info, early_stop_group=group, early_stop_step=stop)


def decay_start(cfg: Config) -> int:
  """Where a WSD run branches off a longer one: the first step of its decay, or its last
  step when warmup takes the whole run."""
  from varjax.train import optimizer
  return min(optimizer.wsd_decay_start(cfg.optim, cfg.run.steps), cfg.run.steps - 1)


def _branch_cooldowns(runs: list[Run]) -> list[Run]:
  """Runs of one model, seed, lr and batch: the longest (the trunk) keeps a checkpoint where each
  other run's decay starts; the others warm-start there."""
  groups: dict[tuple, list[Run]] = {}
  for run in runs:
    i = run.info
    # A trunk's schedule and data must be the branch's: same peak lr (a fitted lr moves
    # with D, so its budgets do not share one) and batch
    groups.setdefault((i["model"], i["seed"], i["lr_scale"], i["peak_lr"],
                       i["global_batch_size"], i.get("unique_images")), []).append(run)
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
