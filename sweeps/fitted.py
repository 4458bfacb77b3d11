"""`lr: {rule: fitted, from: FILE}` and `batch: {rule: fitted, from: FILE}`: a sweep's runs
at the optimum an earlier sweep's hparams fit predicts (closing the loop).

FILE is what `python -m analysis hparams --json` prints: {"law": {"lr": {a, b, c}, "batch":
{d, e[, f]}, ...}, "cells": [...], ...}. The laws (analysis/hparams.py, `lr_law`,
`batch_law`) are evaluated at the run's N (non-embedding parameters, as summary.json's
`params` that the fit read) and D (training tokens):

    lr_opt    = a N^b D^c
    batch_opt = d N^f D^e      (f = 0 when the fit chose d D^e)

The batch law is in the units of the fit's batch column: images per step for a registry
(`global_batch_size`, the default), tokens when the fit read a token column (Step Law's B);
the fit file's `columns` (written by analysis hparams) says which, `batch.unit` in the spec
overrides. Each run's sweep.json records the file (path and SHA-256), the law and its value
(`Fit.record`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from typing import Any

from varjax.errors import ConfigError

# The hparams fit's default columns (analysis/hparams.py add_parser): N non-embedding
# parameters, D tokens, batch in images per step.
DEFAULT_COLUMNS = {"n": "params", "d": "tokens", "batch": "global_batch_size"}
WHAT = "an hparams fit (the output of `python -m analysis hparams --json`)"


@dataclasses.dataclass(frozen=True)
class Fit:
  path: str
  sha256: str
  law: dict[str, Any]  # the file's "law" block
  columns: dict[str, str]  # the fit's input columns ({} when the file predates them)

  def lr(self, n: float, d: float) -> float:
    c = self.law["lr"]
    return c["a"] * n ** c["b"] * d ** c["c"]

  def batch(self, n: float, d: float) -> float:
    """batch_opt in the fit's batch unit."""
    c = self.law["batch"]
    return c["d"] * n ** c.get("f", 0.0) * d ** c["e"]

  def batch_unit(self) -> str | None:
    """'images' for the registry's global_batch_size column; None when the file names
    another column (the spec must then say batch.unit)."""
    column = self.columns.get("batch", DEFAULT_COLUMNS["batch"])
    return "images" if column == DEFAULT_COLUMNS["batch"] else None

  def record(self, what: str, n: float, d: float, value: float) -> dict[str, Any]:
    """What a run's sweep.json says about the fit it used for `what` (lr or batch)."""
    block = self.law[what]
    names = ("a", "b", "c") if what == "lr" else ("d", "f", "e") if "f" in block else ("d", "e")
    out = {"rule": "fitted", "from": self.path, "sha256": self.sha256,
           "law": block.get("form", ""), "coefficients": {k: block[k] for k in names},
           "columns": self.columns,  # {}: a file without them (the defaults)
           "N": n, "D": d, "value": value}
    if self.d_fixed:  # an N-only fit: it holds at its one D (D^0 elsewhere is a guess)
      out.update(D_fixed=self.d_fixed, D_ratio=d / self.d_fixed)
    return out

  @property
  def d_fixed(self) -> float | None:
    """The one D of an N-only fit (analysis hparams at a single token budget), else None."""
    v = self.law.get("D_fixed")
    return float(v) if self.law.get("varies") == "N" and _number(self.law, "D_fixed") else None


def _number(block: dict, key: str) -> bool:
  v = block.get(key)
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def load(path: str, field: str, what: str) -> Fit:
  """The fit at `path` for `what` ('lr' or 'batch'); a file that is missing, not JSON or
  without law.<what> of numbers raises ConfigError(field) in one line."""
  try:
    with open(path, "rb") as f:
      raw = f.read()
  except FileNotFoundError:
    raise ConfigError(field, f"fit file not found: {path}") from None
  except OSError as e:
    raise ConfigError(field, f"cannot read {path}: {e.strerror}") from None
  try:
    values = json.loads(raw)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    where = f" (line {e.lineno}: {e.msg})" if isinstance(e, json.JSONDecodeError) else ""
    raise ConfigError(field, f"{path} is not JSON{where}; expected {WHAT}") from None
  law = values.get("law") if isinstance(values, dict) else None
  block = law.get(what) if isinstance(law, dict) else None
  names = ("a", "b", "c") if what == "lr" else ("d", "e")
  if not isinstance(block, dict) or not all(_number(block, k) for k in names) or (
      "f" in block and not _number(block, "f")):
    raise ConfigError(field, f"{path} is not {WHAT}: it has no law.{what} with numbers "
                      f"{', '.join(names)}")
  if not block[names[0]] > 0:
    raise ConfigError(field, f"{path}: law.{what}.{names[0]} must be > 0, got "
                      f"{block[names[0]]}")
  columns = values.get("columns")
  columns = {k: v for k, v in columns.items() if isinstance(v, str)} \
      if isinstance(columns, dict) else {}
  return Fit(path, hashlib.sha256(raw).hexdigest(), law, columns)
