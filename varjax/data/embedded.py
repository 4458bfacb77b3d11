"""TFDS builder for the embedded default dataset, cut from photographs shipped in a package.

`varjax_embedded/res32` and `varjax_embedded/res64` are deterministic random crops of
the public-domain photographs bundled with scikit-image (`skimage/data/*`), one class per
source photograph, resized to 32 or 64 px. Nothing is downloaded: the builder reads the
files from the installed package, so the dataset exists on any machine with varjax.

Train and validation crops are drawn from separate random streams and every crop box
(source, top, left, size) is unique across both splits, so the splits share no crop.

The `stream` split (`CropStream`, not stored by TFDS) is for scaling studies that must not
repeat data: an effectively unlimited sequence of crops of the same photographs, crop i a
pure function of (resolution, i), none equal to a validation crop. Reading it by index
costs one resize, so `varjax tokenize --split stream --num-examples K` encodes exactly the
prefix a sweep needs. The trade-off, stated in docs/data.md: distinct crops are not
independent images, since all come from 16 photographs; the stream removes verbatim
repetition (epochs), not the overlap of content between nearby crops.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

# (file in skimage/data, class name). Grey photographs are repeated over RGB. Each source
# is at least 300 px on its short side, so a crop always downsamples.
SOURCES: tuple[tuple[str, str], ...] = (
    ("astronaut.png", "astronaut"),
    ("chelsea.png", "cat"),
    ("coffee.png", "coffee"),
    ("hubble_deep_field.jpg", "galaxies"),
    ("ihc.png", "tissue_stain"),
    ("motorcycle_left.png", "motorcycle"),
    ("retina.jpg", "retina"),
    ("rocket.jpg", "rocket"),
    ("camera.png", "cameraman"),
    ("coins.png", "coins"),
    ("grass.png", "grass"),
    ("gravel.png", "gravel"),
    ("brick.png", "brick"),
    ("moon.png", "moon"),
    ("cell.png", "cell"),
    ("color.png", "color_wheel"),
)
SPLIT_SIZES = {"train": 512, "validation": 64}  # crops per class
# Crop side as a fraction of the source's short side: wide enough to show structure at
# 32 px, narrow enough that crops of one photograph differ.
CROP_FRACTION = (0.25, 0.6)
_SPLIT_STREAM = {"train": 0, "validation": 1, "stream": 2}
STREAM_SPLIT = "stream"
# Crops in the stream: 2^22 (1.3e8 tokens at 30 tokens an image), beyond any CPU study.
STREAM_SIZE = 1 << 22


def source_dir() -> str:
  import skimage.data
  return os.path.dirname(skimage.data.__file__)


def load_source(filename: str) -> np.ndarray:
  """Returns the photograph as uint8 HxWx3 (alpha dropped, grey repeated)."""
  with Image.open(os.path.join(source_dir(), filename)) as img:
    return np.asarray(img.convert("RGB"))


def crop_boxes(num_classes: int, per_class: int, split: str, resolution: int,
               shapes: list[tuple[int, int]]) -> np.ndarray:
  """Deterministic crop boxes, int32 [num_classes * per_class, 4] = (label, top, left, size).

  A pure function of (split, resolution, source shapes): the stream is seeded by them.
  """
  rng = np.random.default_rng([20241103, resolution, _SPLIT_STREAM[split]])
  boxes = []
  for label in range(num_classes):
    h, w = shapes[label]
    short = min(h, w)
    sizes = rng.integers(int(CROP_FRACTION[0] * short), int(CROP_FRACTION[1] * short) + 1,
                         size=per_class)
    tops = (rng.random(per_class) * (h - sizes + 1)).astype(np.int64)
    lefts = (rng.random(per_class) * (w - sizes + 1)).astype(np.int64)
    boxes.append(np.stack([np.full(per_class, label), tops, lefts, sizes], axis=1))
  return np.concatenate(boxes).astype(np.int32)


def cut_crop(photo: np.ndarray | Image.Image, top: int, left: int, size: int,
             resolution: int) -> np.ndarray:
  """uint8 [resolution, resolution, 3]: the box resized with an antialiasing filter.
  Pass a PIL image when cutting many crops: converting the array costs more than the crop."""
  img = photo if isinstance(photo, Image.Image) else Image.fromarray(photo)
  box = (left, top, left + size, top + size)
  return np.asarray(img.resize((resolution, resolution), Image.Resampling.BICUBIC, box=box,
                               reducing_gap=2.0))


def stream_box(index: int, resolution: int, shapes: list[tuple[int, int]],
               exclude: frozenset) -> tuple[int, int, int, int]:
  """(label, top, left, size) of crop `index` of the stream: a pure function of
  (resolution, index, source shapes); a box in `exclude` (the validation crops) is
  redrawn from the same generator, so the result stays deterministic."""
  rng = np.random.default_rng([20241103, resolution, _SPLIT_STREAM[STREAM_SPLIT], index])
  while True:
    label = int(rng.integers(len(shapes)))
    h, w = shapes[label]
    short = min(h, w)
    size = int(rng.integers(int(CROP_FRACTION[0] * short), int(CROP_FRACTION[1] * short) + 1))
    top = int(rng.random() * (h - size + 1))
    left = int(rng.random() * (w - size + 1))
    if (label, top, left, size) not in exclude:
      return label, top, left, size


class CropStream:
  """The `stream` split: a random-access sequence of `STREAM_SIZE` examples shaped like the
  TFDS ones ({"image": uint8 [R, R, 3], "label": int, "crop_box": int32 [3]}).

  Example i is a pure function of (resolution, i); no crop equals a validation crop.
  Boxes are drawn with replacement (collision probability 1 / 2.0e8 a pair at 32 px), so
  a prefix of K crops holds about K^2 / 4e8 repeated boxes: some 170 of 2.6e5 crops.
  """

  def __init__(self, resolution: int):
    self.resolution = resolution
    photos = [load_source(filename) for filename, _ in SOURCES]
    shapes = [p.shape[:2] for p in photos]
    self._photos = [Image.fromarray(p) for p in photos]
    self._shapes = shapes
    valid = crop_boxes(len(SOURCES), SPLIT_SIZES["validation"], "validation", resolution,
                       shapes)
    self._exclude = frozenset(tuple(int(v) for v in box) for box in valid)

  def __len__(self) -> int:
    return STREAM_SIZE

  def __getitem__(self, index: int) -> dict:
    index = int(index)
    if not 0 <= index < STREAM_SIZE:
      raise IndexError(f"stream index {index} outside [0, {STREAM_SIZE})")
    label, top, left, size = stream_box(index, self.resolution, self._shapes, self._exclude)
    return {"image": cut_crop(self._photos[label], top, left, size, self.resolution),
            "label": label, "crop_box": np.array([top, left, size], np.int32)}


class VarjaxEmbeddedConfig(tfds.core.BuilderConfig):

  def __init__(self, *, resolution: int, **kwargs):
    super().__init__(name=f"res{resolution}", **kwargs)
    self.resolution = resolution


class VarjaxEmbedded(tfds.core.GeneratorBasedBuilder):
  """Random crops of the photographs bundled with scikit-image; label = source photo."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "16 classes, 512 train and 64 validation crops per class."}
  BUILDER_CONFIGS = [
      VarjaxEmbeddedConfig(resolution=32, description="32 x 32 px crops"),
      VarjaxEmbeddedConfig(resolution=64, description="64 x 64 px crops"),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    res = self.builder_config.resolution
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(res, res, 3)),
            "label": tfds.features.ClassLabel(names=[name for _, name in SOURCES]),
            # (top, left, size) of the crop in its source photograph, for provenance
            # and for checking that the splits are disjoint.
            "crop_box": tfds.features.Tensor(shape=(3,), dtype=np.int32),
        }),
        supervised_keys=("image", "label"),
        homepage="https://scikit-image.org/docs/stable/api/skimage.data.html",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download: the photographs ship with scikit-image
    return {split: self._generate_examples(split) for split in SPLIT_SIZES}

  def _generate_examples(self, split: str):
    res = self.builder_config.resolution
    photos = [load_source(filename) for filename, _ in SOURCES]
    boxes = crop_boxes(len(SOURCES), SPLIT_SIZES[split], split, res,
                       [p.shape[:2] for p in photos])
    for i, (label, top, left, size) in enumerate(boxes):
      yield f"{split}_{i:06d}", {
          "image": cut_crop(photos[label], int(top), int(left), int(size), res),
          "label": int(label),
          "crop_box": np.array([top, left, size], np.int32),
      }
