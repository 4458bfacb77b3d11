"""Input pipeline: batches of images in [-1, 1] whose order is a pure function of (seed, step).

Order. The global batch at step s holds the examples at sample positions
p = s * B .. s * B + B - 1 of an endless stream; position p is example
perm(seed, epoch = p // N)[p % N] of the split (N examples). Random crops are seeded by
(seed, p). Nothing depends on what was read before, so a resumed run asks for step k and
gets exactly what the original run got at step k: no iterator state to checkpoint, no seek.

Why not grain: its index sampler gives the same guarantee, but this 20-line rule is the
contract the token cache (issue 3) and the multi-host loader share, and it is easier to
check by eye than a library's internal shuffling.

Hosts. With P processes, process i reads rows [i * B/P, (i + 1) * B/P) of every global
batch, so the processes read disjoint slices and together the whole batch; the trainer
assembles them with `jax.make_array_from_process_local_data`.
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
from typing import Iterator, Literal, Sequence

import numpy as np
from PIL import Image

from varjax.errors import DataError

Crop = Literal["random", "center"]
# VAR resizes the short side to 1.125 x the resolution before cropping (mid_reso).
MID_RESOLUTION_FACTOR = 1.125


@functools.lru_cache(maxsize=8)
def epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
  return np.random.default_rng([seed, epoch]).permutation(num_examples)


def sample_positions(step: int, global_batch_size: int) -> np.ndarray:
  """int64[B]: the stream positions that make up global batch `step`."""
  return step * global_batch_size + np.arange(global_batch_size, dtype=np.int64)


def example_indices(seed: int, positions: np.ndarray, num_examples: int) -> np.ndarray:
  """int64[...]: the split index read at each stream position."""
  epochs, offsets = np.divmod(positions, num_examples)
  out = np.empty_like(positions)
  for epoch in np.unique(epochs):
    sel = epochs == epoch
    out[sel] = epoch_permutation(seed, int(epoch), num_examples)[offsets[sel]]
  return out


def resize_and_crop(image_HxWxC: np.ndarray, resolution: int, crop: Crop,
                    rng: np.random.Generator | None = None) -> np.ndarray:
  """uint8[resolution, resolution, 3]. Images already at the resolution pass through.

  Otherwise the short side is resized to 1.125 x resolution (Lanczos, as VAR does) and a
  random (training) or central (evaluation) square is cut.
  """
  if image_HxWxC.ndim == 2:
    image_HxWxC = image_HxWxC[..., None]
  if image_HxWxC.shape[-1] == 1:
    image_HxWxC = np.repeat(image_HxWxC, 3, axis=-1)
  image_HxWxC = image_HxWxC[..., :3]
  h, w = image_HxWxC.shape[:2]
  if (h, w) == (resolution, resolution):
    return image_HxWxC
  mid = round(resolution * MID_RESOLUTION_FACTOR)
  scale = mid / min(h, w)
  new_w, new_h = max(mid, round(w * scale)), max(mid, round(h * scale))
  img = Image.fromarray(image_HxWxC).resize((new_w, new_h), Image.Resampling.LANCZOS)
  if crop == "random":
    if rng is None:
      raise ValueError("a random crop needs an rng")
    top = int(rng.integers(0, new_h - resolution + 1))
    left = int(rng.integers(0, new_w - resolution + 1))
  else:
    top, left = (new_h - resolution) // 2, (new_w - resolution) // 2
  return np.asarray(img)[top:top + resolution, left:left + resolution]


def to_unit_range(images_uint8: np.ndarray) -> np.ndarray:
  """uint8 [0, 255] -> float32 [-1, 1]."""
  return images_uint8.astype(np.float32) / 127.5 - 1.0


class ImagePipeline:
  """Per-host batches of one image split, addressed by step.

  `batch(step)` returns this process's slice of global batch `step`:
    image_BxHxWx3 float32 in [-1, 1], label_B int32, index_B int64 (split indices),
  with B = global_batch_size / process_count.
  """

  def __init__(self, source: Sequence[dict], *, resolution: int, global_batch_size: int,
               seed: int, crop: Crop = "random", process_index: int = 0,
               process_count: int = 1, image_key: str = "image",
               label_key: str | None = "label", name: str = "dataset",
               split: str = "train", num_threads: int = 4):
    if global_batch_size <= 0 or global_batch_size % process_count:
      raise DataError(f"global batch size {global_batch_size} must be a positive multiple "
                      f"of the process count {process_count}")
    if not 0 <= process_index < process_count:
      raise DataError(f"process index {process_index} is outside [0, {process_count})")
    if len(source) == 0:
      raise DataError(f"{name} is empty")
    self.source = source
    self.resolution = resolution
    self.global_batch_size = global_batch_size
    self.local_batch_size = global_batch_size // process_count
    self.seed = seed
    self.crop = crop
    self.process_index = process_index
    self.process_count = process_count
    self.image_key = image_key
    self.label_key = label_key
    self.name = name
    self.split = split
    self._pool = concurrent.futures.ThreadPoolExecutor(num_threads)

  def __len__(self) -> int:
    return len(self.source)

  def local_positions(self, step: int) -> np.ndarray:
    lo = self.process_index * self.local_batch_size
    return sample_positions(step, self.global_batch_size)[lo:lo + self.local_batch_size]

  def _read(self, index: int) -> dict:
    try:
      return self.source[int(index)]
    except Exception as e:  # array_record / decoding errors come in many types
      raise DataError(
          f"{self.name}[{self.split}]: record {index} could not be read "
          f"({type(e).__name__}: {e}); the prepared files are corrupt or truncated: rebuild "
          f"them with `varjax data build --dataset {self.name} --force`") from None

  def _example(self, position: int, index: int) -> tuple[np.ndarray, int]:
    example = self._read(index)
    if self.image_key not in example:
      raise DataError(f"{self.name} has no feature {self.image_key!r}; it has "
                      f"{sorted(example)} (set data.image_key)")
    label = 0
    if self.label_key:
      if self.label_key not in example:
        raise DataError(f"{self.name} has no feature {self.label_key!r}; it has "
                        f"{sorted(example)} (set data.label_key, or '' for no labels)")
      label = int(example[self.label_key])
    rng = np.random.default_rng([self.seed, 1, position]) if self.crop == "random" else None
    image = resize_and_crop(np.asarray(example[self.image_key]), self.resolution,
                            self.crop, rng)
    return image, label

  def batch(self, step: int) -> dict[str, np.ndarray]:
    positions = self.local_positions(step)
    indices = example_indices(self.seed, positions, len(self.source))
    examples = list(self._pool.map(self._example, positions.tolist(), indices.tolist()))
    return {
        "image": to_unit_range(np.stack([im for im, _ in examples])),
        "label": np.array([lab for _, lab in examples], np.int32),
        "index": indices,
    }

  def iterate(self, start_step: int = 0, num_steps: int | None = None,
              prefetch: int = 2) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """Yields (step, batch) from `start_step`, preparing `prefetch` batches ahead."""
    end = None if num_steps is None else start_step + num_steps
    ahead = collections.deque()
    loader = concurrent.futures.ThreadPoolExecutor(1)
    step = start_step
    try:
      while end is None or step < end:
        while len(ahead) <= prefetch and (end is None or step + len(ahead) < end):
          ahead.append(loader.submit(self.batch, step + len(ahead)))
        yield step, ahead.popleft().result()
        step += 1
    finally:
      for future in ahead:
        future.cancel()
      loader.shutdown(wait=False)


def make_pipeline(dataset: str, split: str, *, resolution: int, global_batch_size: int,
                  seed: int, crop: Crop = "random", data_dir: str | None = None,
                  process_index: int | None = None, process_count: int | None = None,
                  image_key: str = "image", label_key: str | None = "label") -> ImagePipeline:
  """Opens a built TFDS split as an ImagePipeline; process index/count default to JAX's."""
  from varjax.data.sources import open_split
  if process_index is None or process_count is None:
    import jax
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  source = open_split(dataset, split, data_dir)
  return ImagePipeline(source, resolution=resolution, global_batch_size=global_batch_size,
                       seed=seed, crop=crop, process_index=process_index,
                       process_count=process_count, image_key=image_key,
                       label_key=label_key or None, name=dataset, split=split)


def pipeline_from_config(data, split: str, seed: int, *, crop: Crop | None = None,
                         process_index: int | None = None,
                         process_count: int | None = None) -> ImagePipeline:
  """The pipeline a `varjax.config.DataConfig` describes (crop defaults to data.crop)."""
  return make_pipeline(data.dataset, split, resolution=data.resolution,
                       global_batch_size=data.global_batch_size, seed=seed,
                       crop=crop or data.crop, data_dir=data.data_dir,
                       process_index=process_index, process_count=process_count,
                       image_key=data.image_key, label_key=data.label_key or None)
