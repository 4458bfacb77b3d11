"""Fréchet distance: closed forms, the scipy sqrtm formula, singular and large covariances,
streaming statistics and their files."""

import time

import numpy as np
import pytest
import scipy.linalg

from varjax.errors import VarjaxError
from varjax.eval import frechet


def random_cov(rng, d: int, rank: int | None = None) -> np.ndarray:
  a = rng.normal(size=(d, rank or d))
  return a @ a.T / (rank or d)


def sqrtm_reference(mu1, s1, mu2, s2) -> float:
  """The usual formula (TTUR / pytorch-fid style): sqrtm of the non-symmetric product."""
  covmean = scipy.linalg.sqrtm(s1 @ s2)
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean.real))


def test_commuting_covariances_closed_form():
  # Same eigenvectors: tr((S1 S2)^1/2) = sum sqrt(a_i b_i), so d^2 = |dmu|^2 + sum (sqrt a - sqrt b)^2.
  rng = np.random.default_rng(0)
  d = 64
  q, _ = np.linalg.qr(rng.normal(size=(d, d)))
  a, b = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
  mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
  want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  got = frechet.frechet_distance_moments(mu1, (q * a) @ q.T, mu2, (q * b) @ q.T)
  assert got == pytest.approx(want, rel=1e-6)
  # Diagonal, and scalar multiples: d^2 = D (sqrt(c1) - sqrt(c2))^2 for c I.
  got = frechet.frechet_distance_moments(mu1, np.diag(a), mu1, np.diag(b))
  assert got == pytest.approx(np.sum((np.sqrt(a) - np.sqrt(b)) ** 2), rel=1e-6)
  assert frechet.frechet_distance_moments(np.zeros(5), 4 * np.eye(5), np.ones(5), np.eye(5)) \
      == pytest.approx(5 + 5 * (2 - 1) ** 2, rel=1e-12)


def test_agrees_with_scipy_sqrtm_formula():
  rng = np.random.default_rng(1)
  for d in (3, 50, 200):
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = random_cov(rng, d), random_cov(rng, d)
    got = frechet.frechet_distance_moments(mu1, s1, mu2, s2)
    assert got == pytest.approx(sqrtm_reference(mu1, s1, mu2, s2), rel=1e-8)
    # symmetric in its two arguments
    assert frechet.frechet_distance_moments(mu2, s2, mu1, s1) == pytest.approx(got, rel=1e-8)


def test_identical_sets_give_zero():
  rng = np.random.default_rng(2)
  feats = rng.normal(size=(500, 64)) * rng.uniform(0.01, 10, 64) + 5
  stats = frechet.FeatureStats.from_features(feats)
  assert abs(stats.distance(stats)) < 1e-8 * np.trace(stats.sigma)
  # singular (rank 20 < 64 dims) and identical: still 0
  low = frechet.FeatureStats.from_features(feats[:21])
  assert abs(low.distance(low)) < 1e-8 * np.trace(low.sigma)


def test_singular_covariances():
  # Fewer samples than dimensions: both covariances singular. Closed form when one is
  # zero: d^2 = tr(S2) (no sqrt term); against sqrtm with the usual eps offset otherwise.
  rng = np.random.default_rng(3)
  d = 100
  s2 = random_cov(rng, d, rank=30)
  assert frechet.frechet_distance_moments(np.zeros(d), np.zeros((d, d)), np.zeros(d), s2) \
      == pytest.approx(np.trace(s2), rel=1e-10)
  s1 = random_cov(rng, d, rank=40)
  got = frechet.frechet_distance_moments(np.zeros(d), s1, np.zeros(d), s2)
  eps = 1e-9 * np.eye(d)
  assert np.isfinite(got)
  assert got == pytest.approx(sqrtm_reference(np.zeros(d), s1 + eps, np.zeros(d), s2 + eps),
                              rel=1e-5)
  # from features: 10 vectors of dimension 50
  a = frechet.FeatureStats.from_features(rng.normal(size=(10, 50)))
  b = frechet.FeatureStats.from_features(rng.normal(size=(10, 50)) + 1)
  assert np.isfinite(a.distance(b)) and a.distance(b) > 0


def test_2048_dims_runs():
  rng = np.random.default_rng(4)
  d = 2048
  s1, s2 = random_cov(rng, d, rank=512), random_cov(rng, d, rank=512)
  start = time.perf_counter()
  got = frechet.frechet_distance_moments(np.zeros(d), s1, np.ones(d), s2)
  print(f"2048-d Fréchet distance: {time.perf_counter() - start:.2f} s")
  assert np.isfinite(got) and got > d  # |dmu|^2 = 2048 plus a positive covariance term


def test_streaming_stats_equal_numpy_and_round_trip(tmp_path):
  rng = np.random.default_rng(5)
  feats = rng.normal(size=(300, 16)) * 0.01 + 1e3  # far from 0: cancellation-prone
  acc = frechet.FeatureAccumulator()
  for i in range(0, 300, 64):
    acc.add(feats[i:i + 64])
  stats = acc.stats({"network": "test"})
  np.testing.assert_allclose(stats.mu, feats.mean(0), rtol=1e-14)
  np.testing.assert_allclose(stats.sigma, np.cov(feats, rowvar=False), rtol=1e-7, atol=1e-14)
  assert stats.count == 300
  stats.save(str(tmp_path / "s.npz"))
  back = frechet.FeatureStats.load(str(tmp_path / "s.npz"))
  np.testing.assert_array_equal(back.sigma, stats.sigma)
  assert back.count == 300 and back.meta == {"network": "test"}


def test_user_mistakes_are_one_line_errors(tmp_path):
  with pytest.raises(VarjaxError, match="not found"):
    frechet.FeatureStats.load(str(tmp_path / "missing.npz"))
  (tmp_path / "bad.npz").write_bytes(b"not a zip")
  with pytest.raises(VarjaxError, match="not a feature statistics file"):
    frechet.FeatureStats.load(str(tmp_path / "bad.npz"))
  a = frechet.FeatureStats.from_features(np.random.default_rng(0).normal(size=(5, 3)))
  b = frechet.FeatureStats.from_features(np.random.default_rng(0).normal(size=(5, 4)))
  with pytest.raises(VarjaxError, match="different feature networks"):
    a.distance(b)
  with pytest.raises(VarjaxError, match="at least 2"):
    frechet.FeatureStats.from_features(np.zeros((1, 3)))
