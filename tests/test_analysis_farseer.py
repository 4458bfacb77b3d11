"""Farseer's law: the differencing fit and the joint fit against the published coefficients,
the numerical compute-optimal allocation against brute force, `fit --law farseer`."""

import numpy as np
import pytest

from analysis import farseer, fit_law
from analysis.cli import main
from analysis.fitting import huber
from analysis.laws import FARSEER


def published_grid(noise: float = 0.0, seed: int = 0):
  """Losses from the published coefficients: N from 1e8 to 2e9, D on a sqrt(2) grid."""
  n = np.geomspace(1e8, 2e9, 8)
  d = 2e9 * np.sqrt(2) ** np.arange(12)
  N, D = (a.ravel() for a in np.meshgrid(n, d, indexing="ij"))
  loss = FARSEER.predict(farseer.published_theta(), {"N": N, "D": D})
  loss = loss * np.exp(np.random.default_rng(seed).normal(0, noise, loss.shape))
  return {"N": N, "D": D}, loss


def at_6p4e9():
  d = 2e9 * np.sqrt(2) ** np.arange(12)
  x = {"N": np.full(len(d), 6.4e9), "D": d}
  return x, FARSEER.predict(farseer.published_theta(), x)


def huber_objective(theta, x, y):
  r = np.log(FARSEER.predict(theta, x)) - np.log(y)
  return float(np.sum(huber(r, 1e-3)))


def test_published_law_values():
  # exp(-0.021 N^0.169 - 0.091) + exp(88.01 N^-0.1 - 6.287) D^-exp(-0.124 N^0.123 + 0.424)
  n, d = 1e9, 1e11
  kappa = np.exp(-0.124 * n ** 0.123 + 0.424)
  expected = np.exp(-0.021 * n ** 0.169 - 0.091) + np.exp(88.01 * n ** -0.1 - 6.287) * d ** -kappa
  got = FARSEER.predict(farseer.published_theta(), {"N": [n], "D": [d]})[0]
  assert got == pytest.approx(expected, rel=1e-12)
  assert farseer.public(farseer.published_theta())["E"] == 0.0  # a3 < 0 < gamma: no floor


def test_differencing_fit_recovers_the_published_law_and_predicts_6p4e9():
  x, loss = published_grid()
  diff = farseer.fit_differencing(x["N"], x["D"], loss)
  np.testing.assert_allclose(diff.theta, farseer.published_theta(), rtol=1e-4, atol=1e-6)
  xt, truth = at_6p4e9()
  assert np.max(np.abs(FARSEER.predict(diff.theta, xt) / truth - 1)) < 1e-3


@pytest.mark.slow  # ~30 s on 2 cores: make test-slow
def test_joint_fit_predicts_6p4e9_and_beats_the_differencing_fit_on_noisy_data():
  """The `fit --law farseer` path: the differencing fit, its ridge starts and the
  data-scaled grid (never the published coefficients). Noise-free, it predicts N = 6.4e9
  within 0.1%. With 0.2% noise the joint fit's objective is at most the differencing
  fit's (it starts there) and it extrapolates better: differences of noisy losses amplify
  the noise (docs/analysis.md: 29 of 30 such datasets)."""
  xt, truth = at_6p4e9()
  x, loss = published_grid()
  fit = fit_law(FARSEER, x, loss)
  assert fit.num_starts == 1 + len(farseer.EXPONENT_SHIFTS) ** 3 + len(
      farseer.grid_starts(x["N"], x["D"], loss))
  assert np.max(np.abs(fit.predict(xt) / truth - 1)) < 1e-3
  x, loss = published_grid(noise=2e-3, seed=0)
  diff = farseer.fit_differencing(x["N"], x["D"], loss)
  joint = fit_law(FARSEER, x, loss)
  assert joint.objective <= huber_objective(diff.theta, x, loss)
  err_joint = np.max(np.abs(joint.predict(xt) / truth - 1))
  err_diff = np.max(np.abs(FARSEER.predict(diff.theta, xt) / truth - 1))
  assert err_joint < err_diff


def test_differencing_needs_three_d_per_n():
  with pytest.raises(ValueError, match="three or more N with three or more D"):
    farseer.fit_differencing([1e8, 1e8, 2e8, 2e8], [1e9, 2e9, 1e9, 2e9], [3.0, 2.9, 2.8, 2.7])


def test_power_plus_constant_is_exact_on_its_own_family():
  log_x = np.log(np.geomspace(1e8, 2e9, 6))
  a, p, b = farseer.power_plus_constant(log_x, 88.01 * np.exp(-0.1 * log_x) - 6.287)
  assert (a, p, b) == pytest.approx((88.01, -0.1, -6.287), rel=1e-6)


def test_allocation_is_the_brute_force_optimum():
  """The published law's interior minimum over N at fixed C; far beyond (N > 3e10) it falls
  again toward 0 (kappa -> 0), which the allocation must not take for the optimum."""
  params = farseer.public(farseer.published_theta())
  alloc = farseer.allocation(params, flops_range=(1e20, 1e22))
  for c in (1e20, 1e21, 1e22):
    n = np.geomspace(1e6, 2e10, 400001)
    brute = n[np.argmin(FARSEER.predict(farseer.published_theta(), {"N": n, "D": c / (6 * n)}))]
    assert alloc.n_opt(c) == pytest.approx(brute, rel=1e-3)
    assert alloc.d_opt(c) * alloc.n_opt(c) * 6 == pytest.approx(c, rel=1e-12)
  lo, hi = alloc.n_opt(1e20), alloc.n_opt(1e22)  # a: the local power law over the range
  assert alloc.a == pytest.approx(np.log(hi / lo) / np.log(1e2), abs=0.03)
  with pytest.raises(ValueError, match="no interior compute-optimal N"):
    farseer.allocation(params, flops_range=(1e22, 1e24))  # none at 1e23 and beyond


def test_fix_e_is_refused_for_farseer(tmp_path, capsys):
  csv = tmp_path / "runs.csv"
  csv.write_text("params,tokens,loss\n1e8,1e9,3\n2e8,1e9,2.9\n")
  assert main(["fit", "--law", "farseer", "--csv", str(csv), "--d-col", "tokens",
               "--fix-e", "1.0"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "farseer has no constant floor" in err[0]
