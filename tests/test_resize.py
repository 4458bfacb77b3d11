"""PyTorch-exact resizes, checked against per-pixel formulas written as plain loops."""

import math

import numpy as np
import pytest

from varjax.models.resize import area_resize, bicubic_resize

A = -0.75  # PyTorch's cubic coefficient


def area_reference(x_HxW: np.ndarray, h: int, w: int) -> np.ndarray:
  """adaptive_avg_pool2d, one output pixel at a time."""
  H, W = x_HxW.shape
  out = np.zeros((h, w))
  for i in range(h):
    y0, y1 = math.floor(i * H / h), math.ceil((i + 1) * H / h)
    for j in range(w):
      x0, x1 = math.floor(j * W / w), math.ceil((j + 1) * W / w)
      total = sum(x_HxW[y, x] for y in range(y0, y1) for x in range(x0, x1))
      out[i, j] = total / ((y1 - y0) * (x1 - x0))
  return out


def cubic_kernel(d: float) -> float:
  d = abs(d)
  if d <= 1:
    return (A + 2) * d ** 3 - (A + 3) * d ** 2 + 1
  if d < 2:
    return A * d ** 3 - 5 * A * d ** 2 + 8 * A * d - 4 * A
  return 0.0


def bicubic_reference(x_HxW: np.ndarray, h: int, w: int) -> np.ndarray:
  """Bicubic, align_corners=False, border-clamped taps, one output pixel at a time."""
  H, W = x_HxW.shape
  out = np.zeros((h, w))
  for i in range(h):
    sy = (i + 0.5) * H / h - 0.5
    for j in range(w):
      sx = (j + 0.5) * W / w - 0.5
      total = 0.0
      for ty in range(math.floor(sy) - 1, math.floor(sy) + 3):
        for tx in range(math.floor(sx) - 1, math.floor(sx) + 3):
          value = x_HxW[min(max(ty, 0), H - 1), min(max(tx, 0), W - 1)]
          total += cubic_kernel(sy - ty) * cubic_kernel(sx - tx) * value
      out[i, j] = total
  return out


SIZES = [((16, 16), (10, 10)), ((3, 3), (16, 16)), ((1, 1), (16, 16)), ((16, 16), (4, 4)),
         ((4, 4), (16, 16)), ((16, 16), (13, 13)), ((5, 7), (3, 11)), ((16, 16), (1, 1))]


@pytest.mark.parametrize("src,dst", SIZES)
@pytest.mark.parametrize("mode", ["area", "bicubic"])
def test_matches_per_pixel_reference(src, dst, mode):
  rng = np.random.default_rng(0)
  x_BxHxWxC = rng.normal(size=(2, *src, 3)).astype(np.float32)
  fn, ref = (area_resize, area_reference) if mode == "area" else (bicubic_resize,
                                                                  bicubic_reference)
  got = np.asarray(fn(x_BxHxWxC, dst))
  assert got.shape == (2, *dst, 3)
  for b in range(2):
    for c in range(3):
      np.testing.assert_allclose(got[b, :, :, c], ref(x_BxHxWxC[b, :, :, c].astype(np.float64),
                                                      *dst), atol=2e-5)


@pytest.mark.parametrize("mode", ["area", "bicubic"])
def test_one_pixel_becomes_a_constant(mode):
  fn = area_resize if mode == "area" else bicubic_resize
  x = np.full((1, 1, 1, 2), 0.0, np.float32)
  x[..., 0], x[..., 1] = 3.5, -2.0
  got = np.asarray(fn(x, 16))
  np.testing.assert_allclose(got[..., 0], 3.5, rtol=1e-6)
  np.testing.assert_allclose(got[..., 1], -2.0, rtol=1e-6)


def test_area_of_a_constant_is_constant_and_divisible_area_is_block_mean():
  np.testing.assert_allclose(area_resize(np.full((1, 16, 16, 1), 0.7, np.float32), 10), 0.7,
                             rtol=1e-6)
  x = np.random.default_rng(1).normal(size=(2, 16, 16, 4)).astype(np.float32)
  block_mean = x.reshape(2, 4, 4, 4, 4, 4).mean(axis=(2, 4))
  np.testing.assert_allclose(area_resize(x, 4), block_mean, atol=1e-6)


def test_same_size_is_identity_and_bicubic_overshoots_like_pytorch():
  x = np.random.default_rng(2).normal(size=(1, 5, 5, 2)).astype(np.float32)
  np.testing.assert_array_equal(area_resize(x, 5), x)
  np.testing.assert_array_equal(bicubic_resize(x, 5), x)
  # [0, 1] -> 4 pixels: taps (0, 0, 0, 1) with weights far(1.75), near(.75), near(.25),
  # far(1.25) put -0.10546875 on the right pixel, so the output starts below 0.
  ramp = np.array([0.0, 1.0], np.float32).reshape(1, 1, 2, 1)
  got = np.asarray(bicubic_resize(ramp, (1, 4)))[0, 0, :, 0]
  np.testing.assert_allclose(got, [-0.10546875, 0.2265625, 0.7734375, 1.10546875], atol=1e-6)
