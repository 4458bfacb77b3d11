"""Types and checks for `python -m analysis` arguments: each value is checked as the command
line is read, so a typo (a negative budget, `--at M=1e9`, an unwritable plot directory)
is one line before a fit, not a NaN or a traceback after one."""

from __future__ import annotations

import argparse
import math
import os

from analysis.validate import AnalysisError


def _number(text: str, what: str) -> float:
  try:
    return float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None


def positive_number(text: str) -> float:
  value = _number(text, "a positive finite number")
  if not (math.isfinite(value) and value > 0):
    raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text}")
  return value


def fraction(text: str) -> float:
  value = _number(text, "in (0, 1]")
  if not 0 < value <= 1:  # NaN fails too
    raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
  return value


def _integer(text: str, ok, what: str) -> int:
  try:
    value = int(text)
  except ValueError:
    value = None
  if value is None or not ok(value):
    raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
  return value


def positive_int(text: str) -> int:
  return _integer(text, lambda v: v >= 1, "a positive integer")


def count(text: str) -> int:
  return _integer(text, lambda v: v >= 0, "an integer >= 0")


def replicates(text: str) -> int:
  return _integer(text, lambda v: v == 0 or v >= 2, "0 (none) or at least 2")


def at_point(spec: str) -> dict[str, float]:
  """`N=..,D=..` or `N=..,C=..` (C = 6 N D) as {"N", "D"[, "C"]}, every value positive."""
  usage = f"{spec!r}: expected N=...,D=... (or N=...,C=...)"
  point = {}
  for part in spec.split(","):
    key, equals, text = (s.strip() for s in part.partition("="))
    if key not in ("N", "D", "C") or not equals or not text:
      raise argparse.ArgumentTypeError(usage)
    if key in point:
      raise argparse.ArgumentTypeError(f"{spec!r}: {key} given twice")
    try:
      value = float(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"{spec!r}: {text!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
      raise argparse.ArgumentTypeError(f"{spec!r}: {key} must be a positive finite number, "
                                       f"got {text}")
    point[key] = value
  if len(point) == 3:
    raise argparse.ArgumentTypeError(f"{spec!r}: give two of N, D, C, not all three")
  if "C" in point and "N" in point:
    point["D"] = point["C"] / (6 * point["N"])
    if not (math.isfinite(point["D"]) and point["D"] > 0):
      raise argparse.ArgumentTypeError(f"{spec!r}: D = C / 6N = {point['D']:g} is not a "
                                       "positive finite number")
  if not {"N", "D"} <= set(point):
    raise argparse.ArgumentTypeError(f"{spec!r}: needs N and D (or N and C)")
  return point


def check_output_dir(path: str, flag: str) -> None:
  """Refuses a directory that cannot be created or written, before any fit runs."""
  existing = os.path.abspath(path)
  while not os.path.exists(existing):  # the first existing ancestor decides
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise AnalysisError(f"{flag} {path}: {existing} is not a directory")
  if not os.access(existing, os.W_OK):
    raise AnalysisError(f"{flag} {path}: {existing} is not writable")
