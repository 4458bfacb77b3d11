"""Dataset names -> TFDS builders: build once into a data dir, open splits by index.

Every dataset, the embedded default included, is read through the same TFDS path:
`tfds.builder(name, data_dir)` prepared as array_record, then opened as a random-access
data source so that any example can be fetched by its index (which is what makes the
example order a pure function of (seed, step), see `pipeline.py`).
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from varjax.errors import DataError

# Short names for the embedded default dataset (`varjax data build --dataset embedded32`).
ALIASES = {
    "embedded32": "varjax_embedded/res32",
    "embedded64": "varjax_embedded/res64",
}
FILE_FORMAT = "array_record"  # random access by index; tfrecord cannot do that


def default_data_dir() -> str:
  return os.environ.get("VARJAX_DATA_DIR") or os.path.join(
      os.path.expanduser("~"), ".cache", "varjax", "datasets")


def resolve_name(dataset: str) -> str:
  """Maps an alias to its TFDS name; any other TFDS name (`imagenet2012`) passes through."""
  return ALIASES.get(dataset, dataset)


def _tfds():
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  import absl.logging
  absl.logging.set_verbosity(absl.logging.ERROR)  # TFDS warns about OpenCV and empty dirs
  import tensorflow_datasets as tfds
  import varjax.data.embedded  # noqa: F401  (registers varjax_embedded with TFDS)
  return tfds


def get_builder(dataset: str, data_dir: str | None = None):
  """The TFDS builder for `dataset`, or a DataError naming what is known."""
  tfds = _tfds()
  name = resolve_name(dataset)
  try:
    return tfds.builder(name, data_dir=data_dir or default_data_dir())
  except tfds.core.registered.DatasetNotFoundError:
    raise DataError(
        f"unknown dataset {dataset!r}: use one of {sorted(ALIASES)} or a TFDS dataset name "
        "such as imagenet2012 or celeb_a") from None
  except ValueError as e:  # unknown config or version of a known dataset
    raise DataError(f"dataset {dataset!r}: {e}") from None


def is_prepared(builder) -> bool:
  return builder.is_prepared()


def build_dataset(dataset: str, data_dir: str | None = None, manual_dir: str | None = None,
                  force: bool = False) -> Any:
  """Prepares `dataset` under `data_dir` (once; a prepared dataset is left as is).

  Returns the builder. Datasets that need manually downloaded files (imagenet2012) read
  them from `manual_dir`; a missing or empty manual dir is reported before any work.
  """
  tfds = _tfds()
  builder = get_builder(dataset, data_dir)
  if builder.is_prepared() and not force:
    return builder
  if force and builder.is_prepared():
    import shutil
    shutil.rmtree(builder.data_dir)
    builder = get_builder(dataset, data_dir)
  if getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None):
    if not manual_dir or not os.path.isdir(manual_dir) or not os.listdir(manual_dir):
      raise DataError(
          f"dataset {builder.name!r} is built from files you download yourself; "
          f"put them in a directory and pass --manual-dir DIR "
          f"(got {manual_dir or 'no --manual-dir'}). TFDS says: "
          + " ".join(builder.MANUAL_DOWNLOAD_INSTRUCTIONS.split()))
  config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
  try:
    builder.download_and_prepare(file_format=FILE_FORMAT, download_config=config)
  except (OSError, ConnectionError) as e:
    raise DataError(
        f"could not prepare {builder.name!r} in {builder.data_dir_root}: {e}. If it must be "
        "downloaded and this machine has no network, prepare it elsewhere with "
        "`varjax data build` and copy the data dir here.") from None
  return builder


def open_split(dataset: str, split: str, data_dir: str | None = None) -> Sequence[dict]:
  """A random-access sequence of decoded examples (dicts of NumPy values) of one split.

  The embedded datasets also have the split `stream` (embedded.CropStream): crops made on
  read, not stored, so it needs no build."""
  from varjax.data import embedded
  name = resolve_name(dataset)
  if split == embedded.STREAM_SPLIT and name.startswith("varjax_embedded/"):
    return embedded.CropStream(int(name.rsplit("res", 1)[1]))
  builder = get_builder(dataset, data_dir)
  if not builder.is_prepared():
    raise DataError(
        f"dataset {dataset!r} is not built in {builder.data_dir_root}: run "
        f"`varjax data build --dataset {dataset} --data-dir {builder.data_dir_root}` first")
  if split not in builder.info.splits:
    extra = [embedded.STREAM_SPLIT] if name.startswith("varjax_embedded/") else []
    raise DataError(f"dataset {dataset!r} has no split {split!r}; it has "
                    f"{sorted(builder.info.splits) + extra}")
  file_format = getattr(builder.info.file_format, "value", builder.info.file_format)
  if file_format != FILE_FORMAT:
    raise DataError(
        f"dataset {dataset!r} in {builder.data_dir} is stored as {file_format}, which "
        "cannot be read by index; rebuild it with "
        f"`varjax data build --dataset {dataset} --force`")
  return builder.as_data_source(split=split)
