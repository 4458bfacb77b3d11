"""Laws outside a fit: `predict` evaluates a named law at given parameters (a published law,
say), and law files keep a fit (`fit --save law.json`) for `forecast` and `plan
--law-file law.json`, which then forecast exactly as the fit did, without refitting.

A law file is JSON: the law, its fitted parameters (internal `theta`, bit-exact, and the
public ones), the bootstrap replicates and their seed, the fitted runs (N, D, U, loss,
budget: for extrapolation, residuals and the validity checks) and the fit's report.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pandas as pd

from analysis import constrained, laws, pipeline
from analysis.fitting import Fit
from analysis.uncertainty import Bootstrap
from analysis.validate import AnalysisError

FORMAT = "varjax-analysis-law"
VERSION = 1


# ---------------------------------------------------------------- predict

def law_named(name: str) -> laws.Law:
  try:
    return laws.law_by_name(name)
  except KeyError:
    known = [*laws.LND_LAWS, *laws.LNDU_LAWS, "saturating", "power", "loss_to_fid",
             "lr_annealing"]
    raise AnalysisError(f"--law {name}: unknown law; known: {', '.join(known)}") from None


def params_theta(law: laws.Law, params: dict[str, float]) -> np.ndarray:
  """theta from the named parameters `params` (--params), which must be exactly the law's."""
  names = law.param_names
  unknown = [k for k in params if k not in names]
  missing = [k for k in names if k not in params]
  if unknown or missing:
    what = "; ".join(([f"unknown {', '.join(unknown)}"] if unknown else []) +
                     ([f"missing {', '.join(missing)}"] if missing else []))
    raise AnalysisError(f"--params: {what}; {law.name} takes {', '.join(names)}")
  with np.errstate(divide="ignore", invalid="ignore"):
    theta = law.from_public(params)
  if not np.isfinite(theta).all():
    bad = [k for k in names if k in params and params[k] <= 0]
    raise AnalysisError(f"--params: {', '.join(bad) or 'a parameter'} must be positive for "
                        f"{law.name}")
  return theta


def law_point(law: laws.Law, point: dict[str, float]) -> dict[str, float]:
  """`point` (--at) as the law's inputs: N, D (or N, C) and, for a law of U, U <= D; other
  laws take exactly their own inputs (C; loss; S1, S2)."""
  spec = ",".join(f"{k}={v:g}" for k, v in point.items())
  if {"N", "D"} <= set(law.inputs):
    from analysis.arguments import nd_point
    point = nd_point(point, spec)
    if "U" in law.inputs and "U" not in point:
      raise AnalysisError(f"--at {spec}: {law.name} needs U, the unique tokens trained on "
                          "(U <= D)")
    return point
  if set(point) != set(law.inputs):
    raise AnalysisError(f"--at {spec}: {law.name} takes {', '.join(law.inputs)}")
  return point


def predict(args) -> dict:
  """`python -m analysis predict`: the law at --params evaluated at every --at point."""
  law = law_named(args.law)
  theta = params_theta(law, args.params)
  points = [law_point(law, p) for p in args.at]
  target = "fid" if law is laws.LOSS_TO_FID else "loss"
  rows = []
  for point in points:
    value = float(law.predict(theta, {k: np.array([point[k]]) for k in law.inputs})[0])
    row = {**point, target: value}
    if "U" in law.inputs:
      row["repetition"] = {k: float(v) for k, v in constrained.repetition(
          law.public(theta), point["N"], point["D"], point["U"]).items()}
    rows.append(row)
  return {"law": law.name, "formula": law.formula, "params": dict(args.params),
          "predict": rows}


# ---------------------------------------------------------------- law files

def save(path: str, fitted: pipeline.Fitted, data: pipeline.Data, args) -> str:
  """Writes the fit of `fitted` (with its bootstrap) and its runs to `path`."""
  fit, boot = fitted.fit, fitted.boot
  runs = {"N": data.inputs["N"], "D": data.inputs["D"], "loss": data.y,
          "budget": data.budget, "unique_tokens": data.unique_tokens}
  report = {k: v for k, v in fitted.report.items()
            if k not in ("plots", "validity", "predict", "candidates")}
  doc = {"format": FORMAT, "version": VERSION, "law": fit.law.name,
         "formula": fit.law.formula, "fix_e": args.fix_e, "params": fit.params,
         "theta": fit.theta, "objective": fit.objective, "converged": fit.converged,
         "num_starts": fit.num_starts, "top_thetas": fit.top_thetas, "delta": fit.delta,
         "bootstrap": None if boot is None else {"seed": boot.seed, "thetas": boot.thetas_KxP},
         "runs": runs, "fit_inputs": fit.inputs, "report": report}
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(pipeline.jsonable(doc), f, allow_nan=False)
  return path


def _array(values, what: str) -> np.ndarray:
  out = np.array([math.nan if v is None else v for v in values], np.float64)
  if out.ndim != 1:
    raise ValueError(f"{what} is not a list of numbers")
  return out


def load(path: str, args) -> tuple[pipeline.Data, pipeline.Fitted]:
  """The runs and the fit saved at `path`, as `forecast` and `plan` use them. Sets
  args.fix_e from the file (the validity checks read it). A file that is not one is one
  line (AnalysisError)."""
  try:
    with open(path) as f:
      doc = json.load(f)
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise AnalysisError(f"--law-file {path}: not a law file (not JSON: {e})") from None
  try:
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
      raise ValueError(f"no \"format\": \"{FORMAT}\"; write one with `fit --save FILE`")
    if doc.get("version") != VERSION:
      raise ValueError(f"version {doc.get('version')!r}, this reads {VERSION}")
    if doc["law"] not in laws.LND_LAWS and doc["law"] not in laws.LNDU_LAWS:
      raise ValueError(f"unknown law {doc['law']!r}")
    law = laws.law_by_name(doc["law"])
    if doc["fix_e"] is not None:
      law = laws.with_floor(law, float(doc["fix_e"]))
    theta = _array(doc["theta"], "theta")
    if len(theta) != law.num_params:
      raise ValueError(f"theta has {len(theta)} values, {law.name} has {law.num_params}")
    runs = doc["runs"]
    inputs = {k: _array(doc["fit_inputs"][k], k) for k in law.inputs}
    y = _array(runs["loss"], "loss")
    fit = Fit(law=law, theta=theta, objective=float(doc["objective"]), inputs=inputs, y=y,
              converged=bool(doc["converged"]), num_starts=int(doc["num_starts"]),
              top_thetas=np.array(doc["top_thetas"], np.float64).reshape(-1, law.num_params),
              delta=float(doc["delta"]))
    boot = None
    if doc["bootstrap"] is not None:
      thetas = np.array(doc["bootstrap"]["thetas"], np.float64).reshape(-1, law.num_params)
      boot = Bootstrap(fit=fit, thetas_KxP=thetas, seed=int(doc["bootstrap"]["seed"]))
    table = pd.DataFrame({"N": _array(runs["N"], "N"), "D": _array(runs["D"], "D")})
    data = pipeline.Data(
        table=table, inputs={"N": table["N"].to_numpy(), "D": table["D"].to_numpy()}, y=y,
        budget=None if runs["budget"] is None else _array(runs["budget"], "budget"),
        unique_tokens=(None if runs["unique_tokens"] is None
                       else _array(runs["unique_tokens"], "unique_tokens")))
    report = dict(doc["report"])
  except (KeyError, TypeError, ValueError) as e:
    what = f"missing {e}" if isinstance(e, KeyError) else str(e)
    raise AnalysisError(f"--law-file {path}: not a law file ({what})") from None
  args.fix_e = doc["fix_e"]
  minima, report["approach2"] = pipeline.approach2_report(data, 0, args.seed)
  if "approach2" in doc["report"]:
    report["approach2"] = doc["report"]["approach2"]
  if boot is None:
    report.setdefault("warnings", []).append(
        f"--law-file {path} has no bootstrap replicates: forecasts have no intervals (save a "
        "fit made with --bootstrap K)")
  return data, pipeline.Fitted(fit, boot, None, minima, report)
