"""Reference statistics: features of a whole data split, computed once and cached.

The cache file is keyed by everything the numbers depend on -- dataset, split, image
resolution, feature network and a hash of its weights:

    <cache_dir>/<dataset>-<split>-<resolution>px-<network>-<weights hash>.npz

(`cache_dir` defaults to `<data dir>/fd_stats`, next to the built datasets), so a retrained
feature network or another resolution never reuses stale statistics. Images are the
split's examples in index order, centre-cropped to the resolution as in evaluation, as
uint8 -- the same form generated samples are turned into before their features are taken.
"""

from __future__ import annotations

import concurrent.futures
import os
import re

import numpy as np

from varjax.eval.features import FeatureNetwork
from varjax.eval.frechet import FeatureAccumulator, FeatureStats


def default_split(train_split: str) -> str:
  """The reference split of a run that names none: its training split, except for the
  embedded `stream` (millions of crops made on read), where it is the stored `train` split,
  8,192 crops of the same photographs."""
  from varjax.data.embedded import STREAM_SPLIT
  return "train" if train_split == STREAM_SPLIT else train_split


def load_split_images(dataset: str, split: str, resolution: int, data_dir: str | None = None,
                      label_key: str = "label", image_key: str = "image",
                      progress: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
  """(uint8 [N, res, res, 3] centre crops, int64 labels [N]; zeros if unlabelled)."""
  from varjax import progress as progress_lib
  from varjax.data import pipeline, sources
  from varjax.errors import DataError
  from varjax.data.embedded import STREAM_SPLIT
  if split == STREAM_SPLIT:
    raise DataError("reference statistics need a stored split, not the unbounded stream; "
                    "use --reference-split train (the same photographs)")
  source = sources.open_split(dataset, split, data_dir)

  def read(index: int) -> tuple[np.ndarray, int]:
    example = source[index]
    for key in (image_key, label_key):
      if key and key not in example:
        raise DataError(f"{dataset} has no feature {key!r}; it has {sorted(example)}")
    image = pipeline.resize_and_crop(np.asarray(example[image_key]), resolution, "center")
    return image, int(example[label_key]) if label_key else 0

  n = len(source)
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    examples = list(progress_lib.bar(pool.map(read, range(n)), total=n,
                                     desc=f"reading {dataset}[{split}]", unit="img",
                                     enabled=progress))
  images = np.stack([im for im, _ in examples])
  labels = np.array([lab for _, lab in examples], np.int64)
  return images, labels


def feature_stats(network: FeatureNetwork, images_NxHxWx3: np.ndarray, meta: dict | None = None,
                  progress: bool | None = None, desc: str = "features") -> FeatureStats:
  """Gaussian statistics of the network's features of uint8 images, with a progress bar."""
  from varjax import progress as progress_lib
  network.check_images(np.shape(images_NxHxWx3))
  acc = FeatureAccumulator()
  chunk = network.batch_size * 4
  for i in progress_lib.bar(range(0, len(images_NxHxWx3), chunk), desc=desc, unit="batch",
                            enabled=progress):
    acc.add(network.features(images_NxHxWx3[i:i + chunk]))
  return acc.stats({"network": network.name, "fingerprint": network.fingerprint, **(meta or {})})


def stats_path(cache_dir: str, dataset: str, split: str, resolution: int,
               network: FeatureNetwork) -> str:
  safe = re.sub(r"[^A-Za-z0-9_.]+", "_", dataset)
  return os.path.join(cache_dir, f"{safe}-{split}-{resolution}px-{network.name}-"
                                 f"{network.fingerprint}.npz")


def default_cache_dir(data_dir: str | None = None) -> str:
  from varjax.data.sources import default_data_dir
  return os.path.join(data_dir or default_data_dir(), "fd_stats")


def reference_stats(network: FeatureNetwork, dataset: str, split: str, resolution: int,
                    data_dir: str | None = None, cache_dir: str | None = None,
                    label_key: str = "label", image_key: str = "image", force: bool = False,
                    progress: bool | None = None) -> tuple[FeatureStats, str, bool]:
  """(statistics, cache file, whether it came from the cache)."""
  path = stats_path(cache_dir or default_cache_dir(data_dir), dataset, split, resolution,
                    network)
  if os.path.isfile(path) and not force:
    return FeatureStats.load(path), path, True
  images, _ = load_split_images(dataset, split, resolution, data_dir, label_key, image_key,
                                progress)
  stats = feature_stats(network, images, {"dataset": dataset, "split": split,
                                          "resolution": resolution}, progress,
                        desc=f"{network.name} features of {dataset}[{split}]")
  stats.save(path)
  return stats, path, False
