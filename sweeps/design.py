"""IsoFLOP designs that bracket a prior compute-optimal D/N, and epochs over the data.

At a budget C the runs of an IsoFLOP grid trade size for tokens: D/N = C / (k N^2) (k
FLOPs per parameter-token, about 6), so D/N falls as N grows. A prior ratio r (Chinchilla's
20, or a previous fit's D_opt / N_opt at C) says where the loss-vs-log N minimum should be.
`plan_budget` keeps the fewest contiguous sizes (ordered by N) whose D/N reach both
r / factor and r x factor. Factor 8 makes D/N span 64x, hence N 8x: wide enough for a
parabola in log N with an interior minimum even when the prior is off by a few x.

`python -m sweeps design` writes a spec with `budgets.bracket` (sweeps/spec.py applies it,
so the spec stays the single source of truth); `python -m sweeps list` shows each run's
D/N and epochs and the warnings below.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Sequence

import yaml

from varjax.config import Config
from varjax.errors import ConfigError

MAX_EPOCHS = 4.0  # more passes over the training set than this: the loss measures repetition


@dataclasses.dataclass(frozen=True)
class BracketSpec:
  """A spec's `budgets.bracket`: tokens_per_param is the prior D/N, one for every budget
  or one per budget (a previous fit's); None: no bracketing (every size within tolerance
  trains). factor >= 1: how far each side of the prior the chosen D/N must reach."""
  tokens_per_param: float | tuple[float, ...] | None = None
  factor: float = 8.0

  @property
  def active(self) -> bool:
    return self.tokens_per_param is not None

  def ratios(self, budgets: int) -> tuple[float, ...]:
    ratio = self.tokens_per_param
    return tuple(ratio) if isinstance(ratio, tuple) else (ratio,) * budgets

  def check(self, budgets: int) -> None:
    """ConfigError naming the field for a bad ratio or factor (with `budgets` budgets)."""
    key = "budgets.bracket.tokens_per_param"
    listed = isinstance(self.tokens_per_param, tuple)
    if listed and len(self.tokens_per_param) != budgets:
      raise ConfigError(key, f"gives {len(self.tokens_per_param)} ratios for {budgets} "
                        "budgets; give one, or one per budget")
    for i, r in enumerate(self.ratios(budgets)):
      if not (r > 0 and math.isfinite(r)):
        raise ConfigError(key + (f"[{i}]" if listed else ""), f"must be a positive number, "
                          f"got {r}")
    if not (self.factor >= 1 and math.isfinite(self.factor)):
      raise ConfigError("budgets.bracket.factor", f"must be >= 1, got {self.factor}")


@dataclasses.dataclass(frozen=True)
class Candidate:
  """One size of the family at one IsoFLOP budget (within the spec's tolerance)."""
  label: str  # d3w96
  params: int  # N, non-embedding
  tokens: int  # D, exactly as trained: steps x batch x tokens per image
  steps: int

  @property
  def tokens_per_param(self) -> float:
    return self.tokens / self.params


@dataclasses.dataclass(frozen=True)
class BudgetPlan:
  """The bracketing choice at one budget: candidates[first:stop] (ordered by N) train."""
  name: str  # C1e12, as in the run names
  flops: float
  ratio: float  # the prior D/N
  factor: float
  candidates: tuple[Candidate, ...]
  first: int
  stop: int
  warnings: tuple[str, ...]

  @property
  def chosen_labels(self) -> list[str]:
    return [c.label for c in self.candidates[self.first:self.stop]]


def select_bracket(ratios: Sequence[float], ratio: float, factor: float) -> tuple[int, int]:
  """(first, stop): the shortest run ratios[first:stop] (D/N of sizes ordered by N) whose
  largest D/N reaches ratio x factor and whose smallest reaches ratio / factor; a side no
  size reaches is replaced by the family's extreme on that side (keep what it has)."""
  high = min(ratio * factor, max(ratios))
  low = max(ratio / factor, min(ratios))
  best = (0, len(ratios))
  for first in range(len(ratios)):
    for stop in range(first + 1, len(ratios) + 1):
      window = ratios[first:stop]
      if max(window) >= high and min(window) <= low:
        if stop - first < best[1] - best[0]:
          best = (first, stop)
        break  # longer runs from `first` are not shorter
  return best


def plan_budget(name: str, flops: float, candidates: Sequence[Candidate], ratio: float,
                factor: float) -> BudgetPlan:
  """The sizes that bracket `ratio` at this budget, and a warning for each side the
  family cannot reach."""
  candidates = tuple(sorted(candidates, key=lambda c: c.params))
  ratios = [c.tokens_per_param for c in candidates]
  first, stop = select_bracket(ratios, ratio, factor)
  warnings = []
  top, bottom = candidates[0], candidates[-1]
  if top.tokens_per_param < ratio * factor:
    warnings.append(
        f"budget {name}: cannot bracket D/N = {ratio:.3g} from above: the family reaches at "
        f"most D/N = {top.tokens_per_param:.3g} ({top.label}), it needs >= "
        f"{ratio * factor:.3g} (x {factor:g}); add smaller models")
  if bottom.tokens_per_param > ratio / factor:
    warnings.append(
        f"budget {name}: cannot bracket D/N = {ratio:.3g} from below: the family reaches at "
        f"least D/N = {bottom.tokens_per_param:.3g} ({bottom.label}), it needs <= "
        f"{ratio / factor:.3g} (/ {factor:g}); add larger models")
  return BudgetPlan(name, flops, ratio, factor, candidates, first, stop, tuple(warnings))


# ---------------------------------------------------------------- epochs

def unique_tokens_per_epoch(cfg: Config) -> int | None:
  """Distinct training tokens in one pass over the data: examples in the token pyramids'
  training split (`<data.tokens>/<data.train_split>/meta.json`, relative to the working
  directory as for training), or data.unique_images of them, x tokens per image; None
  when that split is not built."""
  if cfg.data.unique_images:
    return cfg.data.unique_images * cfg.model.num_tokens
  if not cfg.data.tokens:
    return None
  meta = os.path.join(cfg.data.tokens, cfg.data.train_split, "meta.json")
  try:
    with open(meta) as f:
      examples = json.load(f).get("num_examples")
  except (OSError, ValueError, AttributeError):
    return None
  if not isinstance(examples, int) or examples < 1:
    return None
  return examples * cfg.model.num_tokens


def epochs(tokens: float, unique: int | None) -> float | None:
  return None if unique is None else tokens / unique


def format_epochs(value: float | None) -> str:
  return "?" if value is None else f"{value:.3g}"


def epoch_warning(names_epochs: Sequence[tuple[str, float | None]]) -> str | None:
  """One line naming the runs that repeat the training set more than MAX_EPOCHS times."""
  over = [(n, e) for n, e in names_epochs if e is not None and e > MAX_EPOCHS]
  if not over:
    return None
  worst = max(e for _, e in over)
  return (f"{len(over)} run(s) train more than {MAX_EPOCHS:g} epochs (up to {worst:.3g}): "
          f"{', '.join(n for n, _ in over)}; their loss measures repetition, not scale")


def format_plan(plan: BudgetPlan, unique: int | None) -> list[str]:
  """The table `sweeps design` prints for one budget; '*' marks the chosen sizes."""
  lines = [f"budget {plan.name} FLOPs: prior D/N {plan.ratio:.3g}, bracket from "
           f"{plan.ratio / plan.factor:.3g} to {plan.ratio * plan.factor:.3g} (factor "
           f"{plan.factor:g})",
           f"    {'model':<10} {'N':>12} {'steps':>7} {'D':>12} {'D/N':>8} {'epochs':>7}"]
  for k, c in enumerate(plan.candidates):
    mark = "*" if plan.first <= k < plan.stop else " "
    lines.append(f"  {mark} {c.label:<10} {c.params:>12,} {c.steps:>7} {c.tokens:>12,} "
                 f"{c.tokens_per_param:>8.3g} {format_epochs(epochs(c.tokens, unique)):>7}")
  return lines


# ---------------------------------------------------------------- writing a spec

def ratios_from_fit(path: str, flops: Sequence[float]) -> list[float]:
  """D_opt / N_opt at each budget from a fit's compute-optimal allocation (the
  "allocation" of `python -m analysis report`'s report.json or `fit --json`): N_opt =
  G (C/k)^a, D_opt = (C/k)^b / G. C is the budget's exact FLOPs, read as the fit's k N D."""
  from analysis.compute_optimal import Allocation
  try:
    with open(path) as f:
      report = json.load(f)
  except OSError as e:
    raise ConfigError("--from-fit", f"cannot read {path}: {e.strerror}") from None
  except ValueError:
    raise ConfigError("--from-fit", f"{path} is not JSON") from None
  alloc = report.get("allocation") if isinstance(report, dict) else None
  try:
    alloc = Allocation(**{k: float(alloc[k]) for k in ("a", "b", "G")},
                       flops_per_param_token=float(alloc.get("flops_per_param_token", 6.0)))
  except (TypeError, KeyError, ValueError, AttributeError):
    raise ConfigError("--from-fit", f"{path} holds no compute-optimal allocation {{a, b, G}} "
                      "(write one with `python -m analysis report` or `fit --json`)") from None
  return [float(f"{alloc.tokens_per_param(c):.3g}") for c in flops]


def parse_numbers(text: str, option: str, kind: type = float) -> list:
  """'1e12,4e12' -> [1e12, 4e12]; for integers also ranges: '1-4,6' -> [1, 2, 3, 4, 6]."""
  values = []
  try:
    for part in (p for p in text.replace(" ", "").split(",") if p):
      if kind is int and "-" in part[1:]:
        lo, hi = (int(x) for x in part.split("-", 1))
        values.extend(range(lo, hi + 1))
      else:
        values.append(int(part) if kind is int else float(part))
  except ValueError:
    what = "integers or ranges (1-8)" if kind is int else "numbers"
    raise ConfigError(option, f"expected comma-separated {what}, got {text!r}") from None
  if not values:
    raise ConfigError(option, "is empty")
  return values


def spec_values(*, flops: Sequence[float], ratio: float | list[float], factor: float,
                models: dict[str, Any] | None, out: str, base: str | None = None,
                spec: str | None = None, tolerance: float | None = None,
                min_steps: int | None = None) -> dict[str, Any]:
  """The fields of a bracketing spec to be written at `out`: `base` (a config file) or
  `spec` (an existing spec whose other fields are kept; its name, out_dir and budgets are
  not) and `models` (ModelsSpec keys, over the spec's)."""
  from varjax import config as config_lib
  where = os.path.dirname(out) or "."
  values: dict[str, Any] = {}
  if spec:
    if not os.path.isfile(spec):
      raise ConfigError("--spec", f"not found: {spec}")
    values = config_lib.read_config_file(spec)
    if not isinstance(values, dict):
      raise ConfigError("--spec", f"{spec} must hold a mapping of spec fields")
    values = dict(values)
    for key in ("name", "out_dir", "budgets"):
      values.pop(key, None)
    if values.get("base"):
      values["base"] = os.path.relpath(os.path.join(os.path.dirname(spec), values["base"]),
                                       where)
    for section in ("lr", "batch"):  # a fitted rule's fit file, relative to the spec too
      rule = values.get(section)
      if isinstance(rule, dict) and isinstance(rule.get("from"), str):
        values[section] = dict(rule, **{"from": os.path.relpath(
            os.path.join(os.path.dirname(spec), rule["from"]), where)})
  if base:
    if not os.path.isfile(base):
      raise ConfigError("--base", f"config file not found: {base}")
    values["base"] = os.path.relpath(base, where)
  if models:  # over the spec's family: a depth family drops its widths and vice versa
    kept = dict(values["models"]) if isinstance(values.get("models"), dict) else {}
    for drop in (("widths", "depth") if "depths" in models else ()) + (
        ("depths", "width_per_depth") if "widths" in models else ()):
      kept.pop(drop, None)
    values["models"] = {**kept, **models}
  if not isinstance(values.get("models"), dict) or not {"depths", "widths"} & set(values["models"]):
    raise ConfigError("--depths", "give the model family: --depths 1-8 (with "
                      "--width-per-depth, --head-dim), --widths ... --depth D, or --spec")
  budgets: dict[str, Any] = {"flops": list(flops)}
  if tolerance is not None:
    budgets["tolerance"] = tolerance
  if min_steps is not None:
    budgets["min_steps"] = min_steps
  budgets["bracket"] = {"tokens_per_param": ratio, "factor": factor}
  order = ["base", "config", "models", "budgets"]
  values["budgets"] = budgets
  return {k: values[k] for k in order + [k for k in values if k not in order] if k in values}


class _SpecDumper(yaml.SafeDumper):
  pass


def _float(dumper, x: float):
  # YAML 1.1 (PyYAML) reads a float only with a dot and a signed exponent: 1.0e+12.
  text = f"{x:.6g}"
  mantissa, _, exponent = text.partition("e")
  if "." not in mantissa and math.isfinite(x):
    mantissa += ".0"
  text = mantissa + (f"e{int(exponent):+d}" if exponent else "")
  return dumper.represent_scalar("tag:yaml.org,2002:float", text)


_SpecDumper.add_representer(float, _float)


def dump_spec(values: dict[str, Any], header: str) -> str:
  """YAML text of a spec: `header` as comments, then the fields (lists inline)."""
  comments = "".join(f"# {line}\n".replace("# \n", "#\n") for line in header.splitlines())
  return comments + yaml.dump(values, Dumper=_SpecDumper, sort_keys=False,
                              default_flow_style=None, width=90)
