"""Image resizes with PyTorch's exact semantics, NHWC, as separable (out, in) matrices.

VAR's tokenizer and teacher forcing use `F.interpolate(mode='area')` and
`F.interpolate(mode='bicubic', align_corners=False)`, and FID's Inception sees its input
through `F.interpolate(mode='bilinear', align_corners=False)`; token pyramids are only
interchangeable with VAR's if we resize the same way. `jax.image.resize` differs on both:
its 'cubic' uses a = -0.5 (Keys) and antialiases when downsampling, and it has no 'area'
mode with PyTorch's overlapping adaptive-pooling bins. Both PyTorch ops are separable and
linear, so each is one small (out, in) matrix per axis, built once in NumPy (float64, then
float32) and applied with two einsums; the sizes are static, so the matrices are constants
under jit.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

# PyTorch's cubic convolution coefficient (upsample_bicubic2d); Keys' classic value is -0.5.
CUBIC_A = -0.75


@functools.lru_cache(maxsize=256)
def area_matrix(n_in: int, n_out: int) -> np.ndarray:
  """float32[n_out, n_in]: row i averages inputs [floor(i n_in / n_out), ceil((i+1) n_in / n_out))."""
  m = np.zeros((n_out, n_in), np.float64)
  for i in range(n_out):
    start = (i * n_in) // n_out
    end = -((-(i + 1) * n_in) // n_out)  # integer ceil
    m[i, start:end] = 1.0 / (end - start)
  return m.astype(np.float32)


def _cubic_weights(t: float) -> tuple[float, float, float, float]:
  """Weights of the taps at floor(src) - 1 .. floor(src) + 2 for fractional offset t."""
  a = CUBIC_A

  def near(x):  # |x| <= 1
    return ((a + 2) * x - (a + 3)) * x * x + 1

  def far(x):  # 1 < |x| < 2
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

  return far(t + 1), near(t), near(1 - t), far(2 - t)


@functools.lru_cache(maxsize=256)
def bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
  """float32[n_out, n_in]: PyTorch bicubic, align_corners=False, no antialias.

  src = (dst + 0.5) n_in / n_out - 0.5 (not clamped, unlike linear modes); taps outside
  [0, n_in - 1] read the border pixel, so their weights pile up on it.
  """
  m = np.zeros((n_out, n_in), np.float64)
  scale = n_in / n_out
  for i in range(n_out):
    src = (i + 0.5) * scale - 0.5
    base = int(np.floor(src))
    for k, w in enumerate(_cubic_weights(src - base)):
      m[i, min(max(base - 1 + k, 0), n_in - 1)] += w
  return m.astype(np.float32)


@functools.lru_cache(maxsize=256)
def bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
  """float32[n_out, n_in]: PyTorch bilinear, align_corners=False, no antialias.

  src = (dst + 0.5) n_in / n_out - 0.5 clamped at 0 (linear modes clamp, cubic does not);
  output i mixes inputs floor(src) and floor(src) + 1 (the border pixel past the end).
  """
  m = np.zeros((n_out, n_in), np.float64)
  scale = n_in / n_out
  for i in range(n_out):
    src = max((i + 0.5) * scale - 0.5, 0.0)
    lo = min(int(np.floor(src)), n_in - 1)
    frac = src - lo
    m[i, lo] += 1 - frac
    m[i, min(lo + 1, n_in - 1)] += frac
  return m.astype(np.float32)


def _size(size: int | tuple[int, int]) -> tuple[int, int]:
  return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _apply(x_BxHxWxC: jax.Array, m_h: np.ndarray, m_w: np.ndarray) -> jax.Array:
  dtype = x_BxHxWxC.dtype
  hp = jax.lax.Precision.HIGHEST  # resizes feed argmins; keep them exact in fp32
  y = jnp.einsum("oh,bhwc->bowc", jnp.asarray(m_h, dtype), x_BxHxWxC, precision=hp)
  return jnp.einsum("pw,bowc->bopc", jnp.asarray(m_w, dtype), y, precision=hp)


def _resize(x_BxHxWxC: jax.Array, size: int | tuple[int, int], matrix) -> jax.Array:
  h, w = _size(size)
  H, W = x_BxHxWxC.shape[1:3]
  if (h, w) == (H, W):
    return x_BxHxWxC
  return _apply(x_BxHxWxC, matrix(H, h), matrix(W, w))


def area_resize(x_BxHxWxC: jax.Array, size: int | tuple[int, int]) -> jax.Array:
  """= torch F.interpolate(mode='area') = adaptive_avg_pool2d; returns [B, h, w, C]."""
  return _resize(x_BxHxWxC, size, area_matrix)


def bilinear_resize(x_BxHxWxC: jax.Array, size: int | tuple[int, int]) -> jax.Array:
  """= torch F.interpolate(mode='bilinear', align_corners=False); returns [B, h, w, C]."""
  return _resize(x_BxHxWxC, size, bilinear_matrix)


def bicubic_resize(x_BxHxWxC: jax.Array, size: int | tuple[int, int]) -> jax.Array:
  """= torch F.interpolate(mode='bicubic', align_corners=False); returns [B, h, w, C]."""
  return _resize(x_BxHxWxC, size, bicubic_matrix)
