"""Typed, frozen run configs with dotted command-line overrides.

One vocabulary for every command: a `Config` has the sections `model`, `tokenizer`,
`data`, `optim`, `mesh`, `run` and `eval`. A config is built from defaults, then a YAML/JSON file, then dotted
overrides (`--model.depth=4 --data.dataset=embedded64`), and is saved with every run
(`config.json`). Every mistake -- unknown key, wrong type, impossible value -- raises
`ConfigError` whose message names the dotted key; the CLI prints it as one line.
"""

from __future__ import annotations

import dataclasses
import decimal
import json
import os
import re
import types
import typing
from typing import Any, Literal, Mapping, Sequence

import yaml

from varjax import files, scales
from varjax.errors import ConfigError

# Attention implementations; varjax.kernels.attention dispatches on them.
AttnImpl = Literal["auto", "xla", "cudnn", "splash", "pallas"]
ATTN_IMPLS: tuple[str, ...] = typing.get_args(AttnImpl)


def _check(ok: bool, key: str, message: str) -> None:
  if not ok:
    raise ConfigError(key, message)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """VAR transformer `var-d{depth}`: width 64 d and d heads unless set explicitly."""
  depth: int = 16
  width: int | None = None  # None: 64 * depth
  heads: int | None = None  # None: depth (head dim 64)
  mlp_ratio: float = 4.0
  vocab_size: int = 4096
  latent_channels: int = 32
  num_classes: int = 1000
  patch_nums: tuple[int, ...] = scales.SCHEDULES["256"]  # VAR's 256 px: L = 680
  drop_path_rate: float | None = None  # None: 0.1 * depth / 24
  cond_drop_prob: float = 0.1  # label -> null class, for classifier-free guidance
  shared_aln: bool = False
  attn_impl: AttnImpl = "auto"
  dtype: Literal["float32", "bfloat16"] = "float32"  # compute dtype; params stay fp32
  # VAR's attention: L2-normalised q and k, q times a learned per-head scale, softmax scale
  # 1. False: standard attention, softmax(q k^T / sqrt(head_dim)).
  attn_l2_norm: bool = True
  qk_norm: bool = False  # LayerNorm (learned scale and bias) on q and k per head

  def __post_init__(self):
    _check(self.depth >= 1, "model.depth", f"must be >= 1, got {self.depth}")
    _check(self.width is None or self.width >= 1, "model.width", "must be >= 1")
    _check(self.heads is None or self.heads >= 1, "model.heads", "must be >= 1")
    _check(self.resolved_width % self.resolved_heads == 0, "model.heads",
           f"width {self.resolved_width} is not divisible by {self.resolved_heads} heads")
    _check(self.mlp_ratio > 0, "model.mlp_ratio", "must be > 0")
    for key in ("vocab_size", "latent_channels", "num_classes"):
      _check(getattr(self, key) >= 1, f"model.{key}", "must be >= 1")
    _check(len(self.patch_nums) >= 1 and all(p >= 1 for p in self.patch_nums),
           "model.patch_nums", "must be a non-empty list of positive grid sizes")
    _check(list(self.patch_nums) == sorted(set(self.patch_nums)), "model.patch_nums",
           f"grid sizes must increase strictly, got {list(self.patch_nums)}")
    _check(self.drop_path_rate is None or 0 <= self.drop_path_rate < 1,
           "model.drop_path_rate", "must be in [0, 1)")
    _check(0 <= self.cond_drop_prob <= 1, "model.cond_drop_prob", "must be in [0, 1]")
    _check(not (self.qk_norm and self.attn_l2_norm), "model.qk_norm",
           "needs model.attn_l2_norm=false (VAR's L2-normalised attention already normalises "
           "q and k)")

  @property
  def name(self) -> str:
    return f"var-d{self.depth}"

  @property
  def resolved_width(self) -> int:
    return self.width if self.width is not None else 64 * self.depth

  @property
  def resolved_heads(self) -> int:
    return self.heads if self.heads is not None else self.depth

  @property
  def resolved_drop_path_rate(self) -> float:
    return self.drop_path_rate if self.drop_path_rate is not None else 0.1 * self.depth / 24

  @property
  def num_tokens(self) -> int:
    return sum(p * p for p in self.patch_nums)

  @property
  def first_tokens(self) -> int:
    """Tokens of the first scale, all start tokens (1 in VAR's schedules)."""
    return self.patch_nums[0] ** 2


@dataclasses.dataclass(frozen=True)
class TokenizerConfig:
  """VAR's multi-scale residual VQ-VAE (varjax.models.vqvae); scales are `model.patch_nums`.

  Defaults are VAR's released tokenizer (ch 160, V 4096, z 32, 16x downsampling, 256 px).
  The downsampling factor is 2 ** (len(ch_mult) - 1): image side / factor must equal the
  last grid size of the schedule.
  """
  ch: int = 160
  ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
  num_res_blocks: int = 2
  vocab_size: int = 4096
  latent_channels: int = 32
  beta: float = 0.25  # commitment weight
  quant_resi: float = 0.5  # Phi(h) = (1 - r) h + r conv3x3(h)
  share_quant_resi: int = 4  # number of Phi convs shared across the scales by nearest tick
  using_sa: bool = True  # self-attention at the lowest resolution of the encoder/decoder
  using_mid_sa: bool = True  # self-attention in the middle block
  dropout: float = 0.0

  def __post_init__(self):
    for key in ("ch", "num_res_blocks", "vocab_size", "latent_channels", "share_quant_resi"):
      _check(getattr(self, key) >= 1, f"tokenizer.{key}", "must be >= 1")
    _check(len(self.ch_mult) >= 1 and all(m >= 1 for m in self.ch_mult), "tokenizer.ch_mult",
           "must be a non-empty list of positive multipliers")
    _check(self.beta >= 0, "tokenizer.beta", "must be >= 0")
    _check(0 <= self.quant_resi <= 1, "tokenizer.quant_resi", "must be in [0, 1]")
    _check(0 <= self.dropout < 1, "tokenizer.dropout", "must be in [0, 1)")

  @property
  def downsample(self) -> int:
    return 2 ** (len(self.ch_mult) - 1)


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """An image dataset read through TFDS (see varjax.data)."""
  dataset: str = "embedded32"  # alias or any TFDS name: imagenet2012, celeb_a, ...
  train_split: str = "train"
  eval_split: str = "validation"
  resolution: int = 32
  global_batch_size: int = 64
  crop: Literal["random", "center"] = "random"
  data_dir: str | None = None  # None: $VARJAX_DATA_DIR or ~/.cache/varjax/datasets
  manual_dir: str | None = None  # for datasets built from downloaded files (imagenet2012)
  image_key: str = "image"
  label_key: str = "label"  # "" for unlabelled datasets (all labels 0)
  # VAR training reads token pyramids (`varjax tokenize`): tokens/<train_split> and
  # tokens/<eval_split>. The tokenizer defaults to the one recorded in their meta.json.
  tokens: str | None = None
  tokenizer: str | None = None
  # Train on a fixed subset of this many examples of the training token set (0: all of it):
  # the first K of a permutation seeded by the set's size alone, so the subset is the same
  # for every run and seed, and a smaller K is a subset of a larger one (unique data as a
  # sweep axis: summary.json's unique_tokens and epochs follow it).
  unique_images: int = 0

  def __post_init__(self):
    _check(bool(self.dataset), "data.dataset", "must not be empty")
    _check(self.unique_images >= 0, "data.unique_images",
           f"must be >= 0 (0: the whole split), got {self.unique_images}")
    _check(self.resolution >= 8, "data.resolution", f"must be >= 8, got {self.resolution}")
    _check(self.global_batch_size >= 1, "data.global_batch_size",
           f"must be >= 1, got {self.global_batch_size}")


def var_peak_lr(base_lr: float, global_batch_size: int) -> float:
  """VAR's learning-rate rule: the peak lr grows linearly with the batch, base_lr per 256
  images (VAR: 1e-4 x B / 256)."""
  return base_lr * global_batch_size / 256


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  """AdamW with VAR's recipe: peak lr = base_lr x batch / 256 unless peak_lr is set."""
  base_lr: float = 1e-4
  peak_lr: float | None = None
  b1: float = 0.9
  b2: float = 0.95
  weight_decay: float = 0.05
  grad_clip: float = 2.0
  warmup_steps: int = 0
  schedule: Literal["linear", "cosine", "wsd", "constant"] = "linear"
  decay_fraction: float = 0.2  # wsd: last fraction of the steps decays
  min_lr_ratio: float = 0.0
  grad_accum_steps: int = 1  # micro-batches per optimizer step (global batch / this each)
  # z-loss (Wortsman et al. 2023: 1e-4): adds z_loss * mean(log^2 Z) of the output softmax
  # to the objective; the logged `loss` stays the cross-entropy.
  z_loss: float = 0.0

  def __post_init__(self):
    _check(self.base_lr > 0, "optim.base_lr", "must be > 0")
    _check(self.peak_lr is None or self.peak_lr > 0, "optim.peak_lr", "must be > 0")
    _check(0 <= self.b1 < 1, "optim.b1", "must be in [0, 1)")
    _check(0 <= self.b2 < 1, "optim.b2", "must be in [0, 1)")
    _check(self.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
    _check(self.grad_clip > 0, "optim.grad_clip", "must be > 0")
    _check(self.warmup_steps >= 0, "optim.warmup_steps", "must be >= 0")
    _check(0 < self.decay_fraction <= 1, "optim.decay_fraction", "must be in (0, 1]")
    _check(0 <= self.min_lr_ratio <= 1, "optim.min_lr_ratio", "must be in [0, 1]")
    _check(self.grad_accum_steps >= 1, "optim.grad_accum_steps", "must be >= 1")
    _check(self.z_loss >= 0, "optim.z_loss", f"must be >= 0, got {self.z_loss}")

  def resolved_peak_lr(self, global_batch_size: int) -> float:
    if self.peak_lr is not None:
      return self.peak_lr
    return var_peak_lr(self.base_lr, global_batch_size)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Device mesh (data, fsdp, tensor): ICI sizes within a slice, DCN sizes across slices.

  One ICI axis may be -1 and is filled in with the remaining devices.
  """
  data: int = -1
  fsdp: int = 1
  tensor: int = 1
  dcn_data: int = 1
  dcn_fsdp: int = 1
  dcn_tensor: int = 1

  def __post_init__(self):
    ici = {"data": self.data, "fsdp": self.fsdp, "tensor": self.tensor}
    _check(sum(v == -1 for v in ici.values()) <= 1, "mesh",
           "at most one of data, fsdp, tensor may be -1")
    for key, value in ici.items():
      _check(value == -1 or value >= 1, f"mesh.{key}", f"must be >= 1 or -1, got {value}")
    for key in ("dcn_data", "dcn_fsdp", "dcn_tensor"):
      _check(getattr(self, key) >= 1, f"mesh.{key}", "must be >= 1")


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """Where a run writes and how long it trains."""
  name: str = "run"
  out_dir: str = "runs"
  seed: int = 0
  steps: int = 1000
  log_every: int = 10
  eval_every: int = 500
  checkpoint_every: int = 500
  keep_checkpoints: int = 2
  eval_examples: int = 0  # examples of the eval split per evaluation; 0: all of it
  # Steps always checkpointed and never deleted (where WSD cool-down runs branch off).
  keep_steps: tuple[int, ...] = ()
  # "<run dir>@<step>": with no checkpoint of its own, the run starts from that run's
  # checkpoint at that step instead of from scratch. For WSD cool-downs: the other run has
  # the same config up to its length, so both are identical until this run's decay starts.
  warm_start: str | None = None
  # When every checkpoint of the run is unreadable: train again from step 0 (True) instead
  # of stopping with an error (False).
  restart_if_damaged: bool = False
  # Gradient noise scale B_simple (McCandlish et al. 2018) in the train records: gradients of
  # the micro-batches (or of the two halves of the batch) against the whole batch's, EMA'd
  # over steps with this decay (docs/training.md). Off by default: the halves add about a
  # third to the step's compile time and one gradient-sized buffer; batch sweeps turn it on.
  log_noise_scale: bool = False
  noise_scale_ema: float = 0.98

  def __post_init__(self):
    _check(bool(self.name) and "/" not in self.name, "run.name",
           "must be a non-empty name without '/'")
    _check(self.steps >= 0, "run.steps", f"must be >= 0, got {self.steps}")
    for key in ("log_every", "eval_every", "checkpoint_every", "keep_checkpoints"):
      _check(getattr(self, key) >= 1, f"run.{key}", "must be >= 1")
    _check(self.eval_examples >= 0, "run.eval_examples", "must be >= 0")
    _check(all(k >= 1 for k in self.keep_steps), "run.keep_steps", "must be positive steps")
    _check(0 <= self.noise_scale_ema < 1, "run.noise_scale_ema",
           f"must be in [0, 1), got {self.noise_scale_ema}")
    if self.warm_start is not None:
      _check(self.warm_start_point is not None, "run.warm_start",
             f"expected '<run dir>@<step>', got {self.warm_start!r}")

  @property
  def warm_start_point(self) -> tuple[str, int] | None:
    """(run dir, step) of run.warm_start, None if unset or malformed."""
    directory, _, step = (self.warm_start or "").rpartition("@")
    if not directory or not step.isdigit() or int(step) < 1:
      return None
    return directory, int(step)


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """Sample quality measured when a run finishes (varjax.eval): K samples with this
  protocol, their distance to a data split written into summary.json. Off unless a feature
  network (-> fd_<name>) or the FID Inception weights (-> fid) are given."""
  feature_net: str | None = None  # directory from `varjax eval features train`
  inception_weights: str | None = None  # file from `varjax eval convert-inception`
  num_samples: int = 1024
  batch_size: int = 64
  guidance: float = 1.5  # classifier-free guidance (VAR's cfg)
  top_k: int = 900
  top_p: float = 0.96
  seed: int = 0
  reference_split: str | None = None  # None: data.train_split (`train` for the stream)

  def __post_init__(self):
    _check(not (self.feature_net and self.inception_weights), "eval",
           "set at most one of eval.feature_net and eval.inception_weights")
    _check(self.num_samples >= 2, "eval.num_samples", "must be >= 2")
    _check(self.batch_size >= 1, "eval.batch_size", "must be >= 1")
    _check(self.top_k >= 0, "eval.top_k", "must be >= 0")
    _check(0 <= self.top_p <= 1, "eval.top_p", "must be in [0, 1]")

  @property
  def enabled(self) -> bool:
    return bool(self.feature_net or self.inception_weights)


@dataclasses.dataclass(frozen=True)
class Config:
  model: ModelConfig = ModelConfig()
  tokenizer: TokenizerConfig = TokenizerConfig()
  data: DataConfig = DataConfig()
  optim: OptimConfig = OptimConfig()
  mesh: MeshConfig = MeshConfig()
  run: RunConfig = RunConfig()
  eval: EvalConfig = EvalConfig()

  def to_dict(self) -> dict[str, Any]:
    return to_dict(self)

  def save(self, path: str) -> None:
    save_config(self, path)


# ------------------------------------------------------------------ conversion

def to_dict(cfg: Any) -> dict[str, Any]:
  """Plain JSON/YAML-able dict (tuples become lists)."""
  def plain(value):
    if dataclasses.is_dataclass(value):
      return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple):
      return [plain(v) for v in value]
    return value
  return plain(cfg)


def _type_name(tp: Any) -> str:
  if typing.get_origin(tp) is Literal:
    return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
  if typing.get_origin(tp) in (typing.Union, types.UnionType):
    return " or ".join(_type_name(a) for a in typing.get_args(tp))
  if typing.get_origin(tp) is tuple:
    return f"a list of {_type_name(typing.get_args(tp)[0])}"
  return getattr(tp, "__name__", str(tp))


# A number in exponent notation: YAML 1.1 leaves `1e4` and `1.5e3` as strings.
_EXPONENT_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+")


def _coerce(value: Any, tp: Any, key: str) -> Any:
  """Checks `value` against the annotation `tp`; converts only where lossless."""
  origin = typing.get_origin(tp)
  if origin in (typing.Union, types.UnionType):
    args = typing.get_args(tp)
    if value is None and type(None) in args:
      return None
    for arg in args:
      if arg is type(None):
        continue
      try:
        return _coerce(value, arg, key)
      except ConfigError:
        pass  # try the next member of the union; report the whole union below
    raise ConfigError(key, f"expected {_type_name(tp)}, got {value!r}")
  if origin is Literal:
    if value in typing.get_args(tp):
      return value
    raise ConfigError(key, f"expected {_type_name(tp)}, got {value!r}")
  if origin is tuple:
    (item_tp, _) = typing.get_args(tp)
    if isinstance(value, str):  # "1,2,3" from the command line
      value = [v for v in value.replace(" ", "").strip("[]()").split(",") if v]
      value = [yaml.safe_load(v) for v in value]
    if not isinstance(value, (list, tuple)):
      raise ConfigError(key, f"expected {_type_name(tp)}, got {value!r}")
    return tuple(_coerce(v, item_tp, key) for v in value)
  if tp is bool:
    if isinstance(value, bool):
      return value
  elif tp is int:
    if isinstance(value, int) and not isinstance(value, bool):
      return value
    if isinstance(value, float) and value.is_integer():
      return int(value)  # 1e6 in YAML
    if isinstance(value, str) and _EXPONENT_NUMBER.fullmatch(value.strip()):
      exact = decimal.Decimal(value.strip())  # YAML 1.1 reads 1e4 (no dot) as a string
      if exact == exact.to_integral_value():
        return int(exact)
  elif tp is float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
      return float(value)
    if isinstance(value, str):  # YAML 1.1 reads 3e-4 (no dot) as a string
      try:
        return float(value)
      except ValueError:
        pass
  elif tp is str:
    if isinstance(value, str):
      return value
  elif dataclasses.is_dataclass(tp):
    if isinstance(value, Mapping):
      return build_dataclass(tp, value, key)
  raise ConfigError(key, f"expected {_type_name(tp)}, got {value!r}")


def build_dataclass(cls: type, values: Mapping[str, Any], prefix: str = "") -> Any:
  """An instance of the dataclass `cls` from `values`, checked against its annotations;
  every mistake raises ConfigError naming the dotted key (`prefix.key`)."""
  hints = typing.get_type_hints(cls)
  names = {f.name for f in dataclasses.fields(cls)}
  kwargs = {}
  for key, value in values.items():
    dotted = f"{prefix}.{key}" if prefix else str(key)
    if key not in names:
      raise ConfigError(dotted, f"unknown key; valid keys are {', '.join(sorted(names))}")
    kwargs[key] = _coerce(value, hints[key], dotted)
  return cls(**kwargs)


def from_dict(values: Mapping[str, Any]) -> Config:
  """A Config from a (possibly partial) nested dict; missing keys keep their defaults."""
  if not isinstance(values, Mapping):
    raise ConfigError("config", f"expected a mapping of sections, got {type(values).__name__}")
  return build_dataclass(Config, values)


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
  parts = dotted.split(".")
  node = tree
  for i, part in enumerate(parts[:-1]):
    child = node.setdefault(part, {})
    if not isinstance(child, dict):
      raise ConfigError(".".join(parts[:i + 1]), "is a value, not a section")
    node = child
  node[parts[-1]] = value


def parse_overrides(args: Sequence[str]) -> dict[str, Any]:
  """`--model.depth=4 --data.dataset embedded64` -> nested dict of YAML-parsed values."""
  tree: dict[str, Any] = {}
  args = list(args)
  i = 0
  while i < len(args):
    arg = args[i]
    if not arg.startswith("--") or "." not in arg.split("=", 1)[0]:
      raise ConfigError(arg, "expected an override of the form --section.key=value")
    if "=" in arg:
      key, raw = arg[2:].split("=", 1)
    elif i + 1 < len(args) and not args[i + 1].startswith("--"):
      key, raw = arg[2:], args[i + 1]
      i += 1
    else:
      raise ConfigError(arg[2:], "has no value (use --section.key=value)")
    try:
      value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
      value = raw
    _set_dotted(tree, key, value)
    i += 1
  return tree


def merge(base: dict, update: Mapping) -> dict:
  """`update` merged into `base` section by section (nested dicts merge, values replace)."""
  out = dict(base)
  for key, value in update.items():
    if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
      out[key] = merge(out[key], value)
    else:
      out[key] = value
  return out


def read_config_file(path: str) -> dict[str, Any]:
  """The mapping a YAML or JSON file holds (an empty file: {}); any other content, bytes
  that are not UTF-8 or an unreadable file raise ConfigError naming the file."""
  if not os.path.isfile(path):
    raise ConfigError("config", f"file not found: {path}")
  try:
    with open(path, encoding="utf-8") as f:
      text = f.read()
  except UnicodeDecodeError as e:
    raise ConfigError("config", f"{path} is not UTF-8 text (byte {e.start}: "
                      f"{e.object[e.start:e.start + 1]!r})") from None
  except OSError as e:
    raise ConfigError("config", f"cannot read {path}: {e.strerror}") from None
  try:
    values = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
  except (json.JSONDecodeError, yaml.YAMLError) as e:
    raise ConfigError("config", f"{path} is not valid {'JSON' if path.endswith('.json') else 'YAML'}: "
                      f"{str(e).splitlines()[0]}") from None
  if values is None:
    return {}
  if not isinstance(values, Mapping):
    name = type(values).__name__
    raise ConfigError("config", f"{path} must hold a mapping (key: value lines) at the top "
                      f"level, got {'an' if name[0] in 'aeiou' else 'a'} {name}")
  return dict(values)


def load_config(path: str | None = None, overrides: Sequence[str] | Mapping = (),
                base: Mapping[str, Any] | None = None) -> Config:
  """defaults <- `base` <- file at `path` <- `overrides` (dotted CLI args or nested dict)."""
  values: dict[str, Any] = dict(base or {})
  if path:
    values = merge(values, read_config_file(path))
  if not isinstance(overrides, Mapping):
    overrides = parse_overrides(overrides)
  return from_dict(merge(values, overrides))


def save_config(cfg: Config, path: str) -> None:
  """Writes JSON (`.json`) or YAML (anything else); `load_config(path)` reads it back."""
  values = to_dict(cfg)
  if path.endswith(".json"):
    files.write_json(path, values)
  else:
    files.write_atomic(path, yaml.safe_dump(values, sort_keys=False))


def differences(a: Config, b: Config, ignore: Sequence[str] = ()) -> list[str]:
  """The dotted keys (`section.key`) whose values differ, leaving out those in `ignore`."""
  da, db = to_dict(a), to_dict(b)
  return [f"{s}.{k}" for s in da for k in da[s]
          if da[s][k] != db[s].get(k) and f"{s}.{k}" not in ignore]


def replace(cfg: Config, **sections: Mapping[str, Any]) -> Config:
  """`replace(cfg, model={"depth": 4})`: a copy with some keys changed, fully validated."""
  return from_dict(merge(to_dict(cfg), sections))


def model_overrides(name: str) -> dict[str, Any]:
  """`var-d16` -> {"depth": 16}: the family is indexed by depth (width 64 d, d heads)."""
  prefix = "var-d"
  if not name.startswith(prefix) or not name[len(prefix):].isdigit() or int(name[len(prefix):]) < 1:
    raise ConfigError("model", f"unknown model name {name!r}; models are named var-d<depth>, "
                      "e.g. var-d16")
  return {"depth": int(name[len(prefix):])}
