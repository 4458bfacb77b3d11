"""Image grids: a look at a dataset (and, later, at samples) is worth a table of numbers."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image


def save_image_grid(images_NxHxWx3: np.ndarray, path: str, columns: int, scale: int = 2,
                    pad: int = 2) -> str:
  """Writes a PNG grid of images (uint8, or float in [-1, 1]); returns the path."""
  images = np.asarray(images_NxHxWx3)
  if images.dtype != np.uint8:
    images = np.clip(np.round((images + 1.0) * 127.5), 0, 255).astype(np.uint8)
  n, h, w, _ = images.shape
  rows = -(-n // columns)
  grid = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, 3), 255, np.uint8)
  for i, image in enumerate(images):
    r, c = divmod(i, columns)
    top, left = pad + r * (h + pad), pad + c * (w + pad)
    grid[top:top + h, left:left + w] = image
  out = Image.fromarray(grid)
  if scale != 1:
    out = out.resize((out.width * scale, out.height * scale), Image.Resampling.NEAREST)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  out.save(path)
  return path


def preview_split(source, path: str, num_classes: int, per_class: int = 8) -> str:
  """One row per class with the first `per_class` examples of that class in the split."""
  rows: dict[int, list[np.ndarray]] = {c: [] for c in range(num_classes)}
  for i in range(len(source)):
    example = source[i]
    label = int(example["label"])
    if len(rows[label]) < per_class:
      rows[label].append(np.asarray(example["image"]))
    if all(len(r) == per_class for r in rows.values()):
      break
  images = [im for c in range(num_classes) for im in rows[c]]
  return save_image_grid(np.stack(images), path, columns=per_class)
