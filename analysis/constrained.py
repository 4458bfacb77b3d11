"""What the data-constrained law (Muennighoff et al. 2023; laws.DATA_CONSTRAINED) says about
repeated data: effective epochs, what a repeated token is worth, the best (N, D) of a FLOP
budget when only U unique tokens exist, and what more unique data or more epochs buy there.

U counts the unique tokens a run trains on (U <= D); a data set of T distinct tokens an
epoch gives a run of D tokens U = min(T, D). Parameters are the law's public ones (E, A,
B, alpha, beta, rd_star, rn_star); every function is numpy, float64.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from analysis.compute_optimal import chinchilla_allocation
from analysis.laws import DATA_CONSTRAINED


def n_opt_for_unique(params: Mapping[str, float], unique) -> np.ndarray:
  """N_opt(U) = G (U G)^(beta/alpha): the compute-optimal N of a budget whose optimal D is
  U; parameters beyond it count as excess (R_N > 0)."""
  A, B, alpha, beta = params["A"], params["B"], params["alpha"], params["beta"]
  g = (alpha * A / (beta * B)) ** (1.0 / (alpha + beta))
  return g * (np.asarray(unique, np.float64) * g) ** (beta / alpha)


def _saturate(r, r_star):
  return r_star * -np.expm1(-np.asarray(r, np.float64) / r_star)


def effective_epochs(epochs, rd_star) -> np.ndarray:
  """D'/U for D/U = `epochs` (>= 1): 1 + R_D* (1 - exp(-(epochs - 1) / R_D*)), at most
  1 + R_D*. Four epochs with R_D* = 15.4 are worth 3.73 unique ones."""
  return 1.0 + _saturate(np.maximum(np.asarray(epochs, np.float64) - 1.0, 0.0), rd_star)


def repetition(params: Mapping[str, float], n, d, u) -> dict:
  """Per point (arrays or scalars): epochs D/U, effective epochs D'/U, `repeated_token_worth`
  = dD'/dD = exp(-R_D / R_D*) (what one more repeated token adds relative to a fresh one),
  `excess_params` N / U_N (> 1: N beyond N_opt(U)) and `effective_params` N'/N."""
  n, d, u = (np.asarray(v, np.float64) for v in (n, d, u))
  r_d = np.maximum(d / u - 1.0, 0.0)
  u_n = np.minimum(n, n_opt_for_unique(params, u))
  r_n = n / u_n - 1.0
  return {"epochs": d / u, "effective_epochs": 1.0 + _saturate(r_d, params["rd_star"]),
          "repeated_token_worth": np.exp(-r_d / params["rd_star"]),
          "excess_params": n / u_n,
          "effective_params": u_n * (1.0 + _saturate(r_n, params["rn_star"])) / n}


def loss(params: Mapping[str, float], n, d, u) -> np.ndarray:
  theta = DATA_CONSTRAINED.from_public(params)
  n, d, u = np.broadcast_arrays(*(np.asarray(v, np.float64) for v in (n, d, u)))
  return DATA_CONSTRAINED.predict(theta, {"N": n, "D": d, "U": u})


def best_split(params: Mapping[str, float], flops: float, unique: float | None,
               points: int = 4001) -> dict:
  """The (N, D) with 6 N D = `flops` that minimises the law when `unique` tokens exist
  (each run trains on min(unique, D) of them; None: unlimited, every token unique).

  A grid of `points` values of N over six decades around the unlimited-data optimum, then
  a finer grid between the best point's neighbours (no unimodality assumed: the law has
  kinks at D = U and N = N_opt(U)). Returns N, D, U and the loss."""
  def split(n):
    d = flops / (6 * n)
    return d, (d if unique is None else np.minimum(unique, d))

  n = float(chinchilla_allocation(params).n_opt(flops)) * np.geomspace(1e-3, 1e3, points)
  for _ in range(2):
    i = int(np.argmin(loss(params, n, *split(n))))
    n_best = float(n[i])
    n = np.geomspace(n[max(i - 1, 0)], n[min(i + 1, len(n) - 1)], points)
  d_best, u_best = (float(v) for v in split(n_best))
  return {"N": n_best, "D": d_best, "U": u_best,
          "loss": float(loss(params, n_best, d_best, u_best))}


def budget_choice(params: Mapping[str, float], flops: float, unique: float) -> dict:
  """More epochs or more data at a FLOP budget with `unique` tokens: the loss of the best
  split that repeats data (`best`), of one epoch (D = U, the rest of the budget in N), and
  of the best split with unlimited unique data; `epochs_gain` = what repeating buys over one
  epoch, `more_data_gain` = what unlimited unique data would buy over repeating."""
  best = best_split(params, flops, unique)
  one_epoch_n = flops / (6 * unique)
  one_epoch = {"N": one_epoch_n, "D": unique, "U": unique,
               "loss": float(loss(params, one_epoch_n, unique, unique))}
  unlimited = best_split(params, flops, None)
  return {"unique_tokens": unique, "best": best, "one_epoch": one_epoch,
          "unlimited_data": unlimited, "epochs_gain": one_epoch["loss"] - best["loss"],
          "more_data_gain": best["loss"] - unlimited["loss"]}
