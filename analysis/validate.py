"""Checks that refuse data a law cannot be fitted to, with one clear message each."""

from __future__ import annotations

from typing import Mapping

import numpy as np


class AnalysisError(ValueError):
  """Bad input to a fit, forecast or plan; the CLI prints it as one line."""


def check_positive_finite(name: str, values: np.ndarray) -> None:
  values = np.asarray(values, np.float64)
  if np.isnan(values).any():
    raise AnalysisError(f"{name} has {int(np.isnan(values).sum())} NaN value(s); drop or fix "
                        "those rows")
  if not np.isfinite(values).all():
    raise AnalysisError(f"{name} has infinite values")
  if (values <= 0).any():
    raise AnalysisError(f"{name} must be positive; {int((values <= 0).sum())} value(s) are "
                        f"<= 0 (smallest {values.min():g})")


def check_fit_data(law, inputs: Mapping[str, np.ndarray], y: np.ndarray) -> None:
  n = len(y)
  for role in law.inputs:
    if len(inputs[role]) != n:
      raise AnalysisError(f"{role} has {len(inputs[role])} values but the target has {n}")
    if law.positive_inputs is None or role in law.positive_inputs:
      check_positive_finite(role, inputs[role])
  check_positive_finite("the target", y)
  if np.ptp(y) <= 1e-12 * np.max(y):  # a law fitted to a constant sends its exponents anywhere
    raise AnalysisError(f"the target is constant ({y[0]:g} at all {n} points): there is "
                        "nothing to fit; check the loss (or target) column")
  if n <= law.num_params:
    raise AnalysisError(f"{law.name} has {law.num_params} parameters but only {n} points; "
                        f"it needs at least {law.num_params + 1}")
  for role in law.inputs:
    if len(np.unique(inputs[role])) < 2:
      raise AnalysisError(f"{law.name} needs at least two distinct values of {role}; all "
                          f"{n} points have {role} = {inputs[role][0]:g} (a single model size "
                          "or budget cannot separate the terms)")
