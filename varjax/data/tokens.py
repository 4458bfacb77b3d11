"""Token pyramids on disk: a dataset split encoded once by a trained tokenizer.

Layout of an output directory:
  scale_{k}.npy   int16 (int32 if V > 32767) [N, pn_k, pn_k], the tokens of scale k
  labels.npy      int32 [N]
  progress.json   while writing: how many chunks are done (and the settings they used)
  meta.json       written last: schedule, vocab, tokenizer run dir, dataset, split, crop...

Example i is record i of the split (no shuffling), center-cropped, so the result is a
pure function of (tokenizer, dataset, split). Chunks of `chunk_size` examples are written
into memory-mapped arrays and flushed before progress.json moves on (atomically), so an
interrupted run resumes at its first unfinished chunk and ends with the same bytes as an
uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Callable, Sequence

import jax
import numpy as np

from varjax import files, progress as progress_lib
from varjax.data.pipeline import resize_and_crop, to_unit_range
from varjax.errors import DataError, VarjaxError

META = "meta.json"
PROGRESS = "progress.json"


def token_dtype(vocab_size: int) -> np.dtype:
  return np.dtype(np.int16) if vocab_size <= np.iinfo(np.int16).max + 1 else np.dtype(np.int32)


def tokenize_split(tokenizer_dir: str, split: str, out_dir: str, *,
                   dataset: str | None = None, data_dir: str | None = None,
                   batch_size: int = 256, chunk_size: int = 2048,
                   max_chunks: int | None = None, num_examples: int | None = None,
                   progress: bool | None = None,
                   log: Callable[[str], None] = print) -> dict[str, Any]:
  """Encodes `split` (its first `num_examples` examples if given) into `out_dir`; resumes an
  interrupted run of the same settings.

  `max_chunks` stops after that many new chunks (the next call continues). Returns the
  meta dict, with "complete" False if chunks remain. The embedded `stream` split is
  unlimited in practice (embedded.STREAM_SIZE), so it needs `num_examples`.
  """
  from varjax.data.sources import open_split
  from varjax.models.vqvae import VQVAE
  from varjax.models.store import load_tokenizer

  from varjax.data.embedded import STREAM_SPLIT

  if batch_size < 1 or chunk_size < 1:
    raise VarjaxError(f"batch size and chunk size must be >= 1, got {batch_size}, {chunk_size}")
  if num_examples is not None and num_examples < 1:
    raise VarjaxError(f"--num-examples must be >= 1, got {num_examples}")
  if split == STREAM_SPLIT and num_examples is None:
    raise VarjaxError("the stream split holds millions of crops: say how many to encode "
                      "with --num-examples K (a sweep needs tokens / tokens per image)")
  model, params, cfg = load_tokenizer(tokenizer_dir)
  dataset = dataset or cfg.data.dataset
  data_dir = data_dir if data_dir is not None else cfg.data.data_dir
  source = open_split(dataset, split, data_dir)
  n = len(source)
  if num_examples is not None:
    if num_examples > n:
      raise VarjaxError(f"{dataset}[{split}] has {n} examples; --num-examples {num_examples} "
                        "asks for more")
    n = num_examples
  patch_nums = list(cfg.model.patch_nums)
  dtype = token_dtype(cfg.tokenizer.vocab_size)
  settings = {"patch_nums": patch_nums, "vocab_size": cfg.tokenizer.vocab_size,
              "tokenizer": os.path.abspath(tokenizer_dir), "dataset": dataset, "split": split,
              "crop": "center", "resolution": cfg.data.resolution, "num_examples": n,
              "dtype": dtype.name, "chunk_size": chunk_size}
  os.makedirs(out_dir, exist_ok=True)
  if os.path.exists(os.path.join(out_dir, META)):
    with open(os.path.join(out_dir, META)) as f:
      meta = json.load(f)
    if {k: meta.get(k) for k in settings} == settings:
      log(f"{out_dir} already holds these tokens; nothing to do")
      return meta
    raise VarjaxError(f"{out_dir} holds token pyramids made with other settings; "
                      "choose another --out or delete it")

  num_chunks = math.ceil(n / chunk_size)
  done, mode = 0, "w+"
  progress_path = os.path.join(out_dir, PROGRESS)
  if os.path.exists(progress_path):
    with open(progress_path) as f:
      state = json.load(f)
    if state.get("settings") == settings:
      done, mode = state["chunks_done"], "r+"
      log(f"resuming {out_dir} at chunk {done} of {num_chunks}")
  arrays = [np.lib.format.open_memmap(os.path.join(out_dir, f"scale_{k}.npy"), mode=mode,
                                      dtype=dtype, shape=(n, pn, pn))
            for k, pn in enumerate(patch_nums)]
  labels = np.lib.format.open_memmap(os.path.join(out_dir, "labels.npy"), mode=mode,
                                     dtype=np.int32, shape=(n,))
  if mode == "w+":
    files.write_json(progress_path, {"settings": settings, "chunks_done": 0})

  # params as an argument, not a closure: constants the size of VAR's VAE slow compiles.
  encode = jax.jit(lambda p, x: model.apply({"params": p}, x, method=VQVAE.img_to_indices))
  label_key = cfg.data.label_key

  def read(i: int) -> tuple[np.ndarray, int]:
    example = source[i]
    image = resize_and_crop(np.asarray(example[cfg.data.image_key]), cfg.data.resolution,
                            "center")
    return image, int(example[label_key]) if label_key else 0

  def store(ids: list[int], indices, batch_labels: list[int]) -> None:
    for arr, idx in zip(arrays, indices):
      arr[ids[0]:ids[-1] + 1] = np.asarray(idx)[:len(ids)].astype(dtype)
    labels[ids[0]:ids[-1] + 1] = batch_labels

  bar = progress_lib.bar(total=num_chunks, initial=done, desc=f"tokenize {split}",
                         unit="chunk", enabled=progress)
  new_chunks = 0
  for c in range(done, num_chunks):
    if max_chunks is not None and new_chunks >= max_chunks:
      break
    lo, hi = c * chunk_size, min((c + 1) * chunk_size, n)
    # Encoding is dispatched asynchronously and its result read one batch later, so the
    # next batch's images are read (for the stream: cut) while the tokenizer runs.
    pending = None
    for b in range(lo, hi, batch_size):
      ids = list(range(b, min(b + batch_size, hi)))
      examples = [read(i) for i in ids]
      images = to_unit_range(np.stack([im for im, _ in examples]))
      if len(ids) < batch_size:  # pad: one compiled shape for every batch
        images = np.concatenate([images, np.repeat(images[-1:], batch_size - len(ids), 0)])
      if pending is not None:
        store(*pending)
      pending = (ids, encode(params, images), [lab for _, lab in examples])
    if pending is not None:
      store(*pending)
    for arr in (*arrays, labels):
      arr.flush()
    files.write_json(progress_path, {"settings": settings, "chunks_done": c + 1})
    new_chunks += 1
    bar.update(1)
  bar.close()
  del arrays, labels
  with open(progress_path) as f:
    complete = json.load(f)["chunks_done"] == num_chunks
  meta = dict(settings, complete=complete)
  if complete:
    files.write_json(os.path.join(out_dir, META), meta)
    os.remove(progress_path)
  return meta


class TokenPyramids:
  """Reader of a finished token directory; memory-mapped, so opening is instant.

  `batch(indices)` -> {"tokens": [int32 [B, pn, pn] per scale], "label": int32 [B]}.
  """

  def __init__(self, path: str):
    meta_path = os.path.join(path, META)
    if not os.path.isfile(meta_path):
      hint = (" (tokenization was interrupted: rerun the same `varjax tokenize` command to "
              "finish it)" if os.path.isfile(os.path.join(path, PROGRESS)) else "")
      raise DataError(f"{path} holds no finished token pyramids{hint}")
    with open(meta_path) as f:
      self.meta = json.load(f)
    self.patch_nums: tuple[int, ...] = tuple(self.meta["patch_nums"])
    self.vocab_size: int = self.meta["vocab_size"]
    self.scales = [np.load(os.path.join(path, f"scale_{k}.npy"), mmap_mode="r")
                   for k in range(len(self.patch_nums))]
    self.labels = np.load(os.path.join(path, "labels.npy"), mmap_mode="r")

  def __len__(self) -> int:
    return len(self.labels)

  def batch(self, indices: Sequence[int] | np.ndarray) -> dict[str, Any]:
    indices = np.asarray(indices, np.int64)
    return {"tokens": [np.asarray(s[indices], np.int32) for s in self.scales],
            "label": np.asarray(self.labels[indices], np.int32)}

  def flat(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
    """int32 [B, L]: the scales concatenated coarse to fine, row-major within a scale."""
    tokens = self.batch(indices)["tokens"]
    return np.concatenate([t.reshape(len(t), -1) for t in tokens], axis=1)
