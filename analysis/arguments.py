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


def value(text: str) -> float:
  """A number, or e^X for exp(X) (published laws often quote log parameters)."""
  text = text.strip()
  if text.startswith("e^"):
    return math.exp(float(text[2:]))
  return float(text)


AT_USAGE = "expected N=...,D=... (or N=...,C=...), optionally U=..."


def pairs(spec: str, usage: str = "expected NAME=VALUE,NAME=VALUE,...") -> dict[str, float]:
  """`K=V,K=V,...` as {K: V}, each V a number (or e^X), each K once."""
  out = {}
  for part in spec.split(","):
    key, equals, text = (s.strip() for s in part.partition("="))
    if not key or not equals or not text:
      raise argparse.ArgumentTypeError(f"{spec!r}: {usage}")
    if key in out:
      raise argparse.ArgumentTypeError(f"{spec!r}: {key} given twice")
    try:
      out[key] = value(text)
    except (ValueError, OverflowError):
      raise argparse.ArgumentTypeError(f"{spec!r}: {text!r} is not a number") from None
  return out


def nd_point(point: dict[str, float], spec: str) -> dict[str, float]:
  """{N, D[, C][, U]} from two of N, D, C (C = 6 N D) and optionally U, the unique tokens
  trained on (U <= D); every value positive. AnalysisError names `spec` otherwise."""
  unknown = [k for k in point if k not in ("N", "D", "C", "U")]
  if unknown:
    raise AnalysisError(f"{spec!r}: {AT_USAGE}; got {', '.join(unknown)}")
  for key, v in point.items():
    if not (math.isfinite(v) and v > 0):
      raise AnalysisError(f"{spec!r}: {key} must be a positive finite number, got {v:g}")
  point = dict(point)
  given = [k for k in ("N", "D", "C") if k in point]
  if len(given) == 3:
    raise AnalysisError(f"{spec!r}: give two of N, D, C, not all three")
  if "C" in point and "N" in point:
    point["D"] = point["C"] / (6 * point["N"])
    if not (math.isfinite(point["D"]) and point["D"] > 0):
      raise AnalysisError(f"{spec!r}: D = C / 6N = {point['D']:g} is not a positive finite "
                          "number")
  if not {"N", "D"} <= set(point):
    raise AnalysisError(f"{spec!r}: needs N and D (or N and C)")
  if "U" in point and point["U"] > point["D"] * (1 + 1e-12):
    raise AnalysisError(f"{spec!r}: U = {point['U']:g} exceeds D = {point['D']:g}: U counts "
                        "the unique tokens among the D trained on (at most D)")
  return point


def at_point(spec: str) -> dict[str, float]:
  """`N=..,D=..` or `N=..,C=..` (C = 6 N D), optionally `,U=..` (unique tokens, <= D), as
  {"N", "D"[, "C"][, "U"]}, every value positive."""
  try:
    return nd_point(pairs(spec, AT_USAGE), spec)
  except AnalysisError as e:
    raise argparse.ArgumentTypeError(str(e)) from None


def law_params(spec: str) -> dict[str, float]:
  """--params `E=1.69,A=406.4,...`: a law's named parameters (checked against the law once
  it is known)."""
  params = pairs(spec)
  for key, v in params.items():
    if not math.isfinite(v):
      raise argparse.ArgumentTypeError(f"{spec!r}: {key} must be finite, got {v}")
  return params


def check_output_dir(path: str, flag: str) -> None:
  """Refuses a directory that cannot be created or written, before any fit runs."""
  existing = os.path.abspath(path)
  while not os.path.exists(existing):  # the first existing ancestor decides
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise AnalysisError(f"{flag} {path}: {existing} is not a directory")
  if not os.access(existing, os.W_OK):
    raise AnalysisError(f"{flag} {path}: {existing} is not writable")


def check_output_file(path: str, flag: str) -> None:
  """Refuses a file path that is a directory or whose directory cannot be written."""
  if os.path.isdir(path):
    raise AnalysisError(f"{flag} {path}: is a directory; give a file name")
  check_output_dir(os.path.dirname(os.path.abspath(path)), flag)
