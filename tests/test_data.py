"""The embedded dataset through the generic TFDS path, and the deterministic pipeline."""

import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image

from varjax.data import build_dataset, embedded, example_indices, make_pipeline
from varjax.data.pipeline import resize_and_crop
from varjax.errors import DataError
from conftest import run_varjax

TFDS_NAME = "varjax_embedded/res32"  # read by its TFDS name, not the alias


def pipeline(data_dir, split="train", batch=64, seed=0, **kw):
  return make_pipeline(TFDS_NAME, split, resolution=32, global_batch_size=batch, seed=seed,
                       data_dir=data_dir, process_index=kw.pop("process_index", 0),
                       process_count=kw.pop("process_count", 1), **kw)


def all_examples(data_dir, split):
  from varjax.data import open_split
  source = open_split(TFDS_NAME, split, data_dir)
  return [source[i] for i in range(len(source))]


def reference_crop(example) -> np.ndarray:
  """The example's crop cut again from its source photograph with PIL (the reference)."""
  filename, _ = embedded.SOURCES[example["label"]]
  top, left, size = (int(v) for v in example["crop_box"])
  with Image.open(os.path.join(embedded.source_dir(), filename)) as img:
    return np.asarray(img.convert("RGB").resize((32, 32), Image.Resampling.BICUBIC,
                                                box=(left, top, left + size, top + size),
                                                reducing_gap=2.0))


def test_build_is_done_once(embedded_data_dir):
  files = os.path.join(embedded_data_dir, "varjax_embedded", "res32", "1.0.0")
  before = {f: os.stat(os.path.join(files, f)).st_mtime_ns for f in os.listdir(files)}
  build_dataset("embedded32", embedded_data_dir)
  after = {f: os.stat(os.path.join(files, f)).st_mtime_ns for f in os.listdir(files)}
  assert before == after


def test_batches_have_shapes_range_and_labels(embedded_data_dir):
  p = pipeline(embedded_data_dir, batch=512)
  assert len(p) == len(embedded.SOURCES) * embedded.SPLIT_SIZES["train"]
  b = p.batch(0)
  assert b["image"].shape == (512, 32, 32, 3) and b["image"].dtype == np.float32
  assert b["image"].min() >= -1.0 and b["image"].max() <= 1.0
  assert b["image"].min() < -0.9 and b["image"].max() > 0.9  # full range is used
  assert b["label"].dtype == np.int32
  assert set(b["label"].tolist()) == set(range(len(embedded.SOURCES)))


def test_stored_crops_equal_their_source_photographs(embedded_data_dir):
  examples = all_examples(embedded_data_dir, "validation")
  for ex in examples[::97]:
    np.testing.assert_array_equal(ex["image"], reference_crop(ex))


def test_splits_share_no_crop(embedded_data_dir):
  def keys(split):
    exs = all_examples(embedded_data_dir, split)
    boxes = {(int(e["label"]), *map(int, e["crop_box"])) for e in exs}
    pixels = {hashlib.sha1(e["image"].tobytes()).hexdigest() for e in exs}
    return boxes, pixels, len(exs)
  train_boxes, train_pixels, n_train = keys("train")
  val_boxes, val_pixels, n_val = keys("validation")
  assert (n_train, n_val) == (8192, 1024)
  assert not train_boxes & val_boxes
  assert not train_pixels & val_pixels


def test_order_is_a_pure_function_of_seed_and_step(embedded_data_dir):
  a, b = pipeline(embedded_data_dir, seed=3), pipeline(embedded_data_dir, seed=3)
  for step in (0, 5, 200):
    np.testing.assert_array_equal(a.batch(step)["image"], b.batch(step)["image"])
  assert not np.array_equal(pipeline(embedded_data_dir, seed=4).batch(0)["index"],
                            a.batch(0)["index"])


def test_each_epoch_visits_every_example_once():
  n, batch = 100, 8
  positions = np.arange(3 * n)
  idx = example_indices(7, positions, n)
  for epoch in range(3):
    assert sorted(idx[epoch * n:(epoch + 1) * n].tolist()) == list(range(n))
  assert not np.array_equal(idx[:n], idx[n:2 * n])  # reshuffled every epoch
  del batch


def test_resume_continues_exactly(embedded_data_dir):
  # 8192 / 1000 per step: steps 8 and 9 cross the first epoch boundary.
  original = pipeline(embedded_data_dir, batch=1000, seed=11)
  continued = [b for _, b in original.iterate(0, 11)]
  resumed = [b for _, b in pipeline(embedded_data_dir, batch=1000, seed=11).iterate(7, 4)]
  for b_cont, b_res in zip(continued[7:], resumed, strict=True):
    for key in ("image", "label", "index"):
      np.testing.assert_array_equal(b_cont[key], b_res[key])


_WORKER = """
import sys, numpy as np
from varjax.data import make_pipeline
p = make_pipeline("varjax_embedded/res32", "train", resolution=32, global_batch_size=48,
                  seed=5, data_dir=sys.argv[1], process_index=int(sys.argv[2]),
                  process_count=2)
np.savez(sys.argv[3], **{f"{k}{s}": v for s in range(3) for k, v in p.batch(s).items()})
"""


def test_two_processes_read_disjoint_halves_of_each_global_batch(embedded_data_dir, tmp_path):
  procs = [subprocess.Popen([sys.executable, "-c", _WORKER, embedded_data_dir, str(i),
                             str(tmp_path / f"p{i}.npz")], stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  for proc in procs:
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
  halves = [np.load(tmp_path / f"p{i}.npz") for i in range(2)]
  whole = pipeline(embedded_data_dir, batch=48, seed=5)
  for step in range(3):
    first, second = (h[f"index{step}"] for h in halves)
    assert len(first) == len(second) == 24
    assert not set(first.tolist()) & set(second.tolist())
    full = whole.batch(step)
    np.testing.assert_array_equal(np.concatenate([first, second]), full["index"])
    np.testing.assert_array_equal(
        np.concatenate([halves[0][f"image{step}"], halves[1][f"image{step}"]]), full["image"])


def test_corrupt_record_gives_a_clear_error(embedded_data_dir, tmp_path):
  copy = str(tmp_path / "copy")
  shutil.copytree(embedded_data_dir, copy)
  folder = os.path.join(copy, "varjax_embedded", "res32", "1.0.0")
  (name,) = [f for f in os.listdir(folder) if "train.array_record" in f]
  path = os.path.join(folder, name)
  with open(path, "r+b") as f:
    f.seek(os.path.getsize(path) // 2)
    f.write(b"\0" * 4096)
  p = pipeline(copy, batch=1024)
  with pytest.raises(DataError, match="corrupt or truncated.*varjax data build"):
    for step in range(8):  # one epoch touches every record
      p.batch(step)


def test_missing_dataset_and_unknown_names(tmp_path):
  with pytest.raises(DataError, match="not built.*varjax data build --dataset embedded64"):
    make_pipeline("embedded64", "train", resolution=64, global_batch_size=8, seed=0,
                  data_dir=str(tmp_path), process_index=0, process_count=1)
  with pytest.raises(DataError, match="unknown dataset 'no_such_set'"):
    build_dataset("no_such_set", str(tmp_path))
  with pytest.raises(DataError, match="--manual-dir"):
    build_dataset("imagenet2012", str(tmp_path), manual_dir=str(tmp_path / "absent"))
  result = run_varjax("data", "build", "--dataset", "imagenet2012", "--data-dir", str(tmp_path))
  assert result.returncode == 2 and "Traceback" not in result.stderr
  assert result.stderr.startswith("varjax: error: dataset 'imagenet2012'")


def test_bad_split_and_bad_batch(embedded_data_dir):
  with pytest.raises(DataError, match="no split 'test'"):
    pipeline(embedded_data_dir, split="test")
  with pytest.raises(DataError, match="multiple of the process count"):
    pipeline(embedded_data_dir, batch=9, process_count=2)
  with pytest.raises(DataError, match="no feature 'caption'"):
    pipeline(embedded_data_dir, label_key="caption").batch(0)


def _jpeg(rng, h, w) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "JPEG")
  return buf.getvalue()


def _add(tar, name, payload):
  info = tarfile.TarInfo(name)
  info.size = len(payload)
  tar.addfile(info, io.BytesIO(payload))


def test_imagenet2012_from_a_tiny_manual_dir(tmp_path):
  """TFDS's real imagenet2012 builder on a 2-class, 6-image fake of the ImageNet tars."""
  rng = np.random.default_rng(0)
  manual = tmp_path / "manual"
  manual.mkdir()
  with tarfile.open(manual / "ILSVRC2012_img_train.tar", "w") as train:
    for synset in ("n01440764", "n01443537"):  # the first two ImageNet classes
      inner = io.BytesIO()
      with tarfile.open(fileobj=inner, mode="w") as t:
        for i, (h, w) in enumerate([(60, 80), (90, 45), (40, 40)]):
          _add(t, f"{synset}_{i}.JPEG", _jpeg(rng, h, w))
      _add(train, f"{synset}.tar", inner.getvalue())
  with tarfile.open(manual / "ILSVRC2012_img_val.tar", "w") as val:
    for i in range(1, 3):
      _add(val, f"ILSVRC2012_val_{i:08d}.JPEG", _jpeg(rng, 50, 70))
  data_dir = str(tmp_path / "data")
  build_dataset("imagenet2012", data_dir, manual_dir=str(manual))
  p = make_pipeline("imagenet2012", "train", resolution=32, global_batch_size=6, seed=0,
                    data_dir=data_dir, process_index=0, process_count=1)
  b = p.batch(0)
  assert b["image"].shape == (6, 32, 32, 3)
  assert sorted(b["label"].tolist()) == [0, 0, 0, 1, 1, 1]
  v = make_pipeline("imagenet2012", "validation", resolution=32, global_batch_size=2, seed=0,
                    crop="center", data_dir=data_dir, process_index=0, process_count=1)
  assert v.batch(0)["image"].shape == (2, 32, 32, 3)


def test_resize_and_crop_geometry():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (48, 64), dtype=np.uint8)  # grey, landscape
  center = resize_and_crop(image, 32, "center")
  assert center.shape == (32, 32, 3)
  np.testing.assert_array_equal(center[..., 0], center[..., 2])  # grey repeated over RGB
  # Short side 48 -> 36 (1.125 x 32), long side 64 -> 48; the centre square starts at (2, 8).
  resized = np.asarray(Image.fromarray(image).resize((48, 36), Image.Resampling.LANCZOS))
  np.testing.assert_array_equal(center[..., 0], resized[2:34, 8:40])
  crop = resize_and_crop(image, 32, "random", np.random.default_rng(1))[..., 0]
  windows = [resized[t:t + 32, l:l + 32] for t in range(5) for l in range(17)]
  assert any(np.array_equal(crop, w) for w in windows)
  exact = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
  np.testing.assert_array_equal(resize_and_crop(exact, 32, "random", rng), exact)


def test_preview_grid_has_one_row_per_class(embedded_data_dir, tmp_path):
  out = run_varjax("data", "preview", "--dataset", "embedded32", "--data-dir",
                   embedded_data_dir, "--out", str(tmp_path / "grid.png"))
  assert out.returncode == 0, out.stderr
  grid = np.asarray(Image.open(tmp_path / "grid.png"))
  pad, scale, n = 2, 2, len(embedded.SOURCES)
  assert grid.shape == ((n * (32 + pad) + pad) * scale, (8 * (32 + pad) + pad) * scale, 3)


def test_stream_crops_are_pure_disjoint_from_validation_and_cut_from_the_photographs(
    embedded_data_dir):
  from varjax.data import open_split
  stream = open_split("embedded32", "stream", embedded_data_dir)
  again = embedded.CropStream(32)
  assert len(stream) == embedded.STREAM_SIZE
  indices = [0, 1, 2, 777, 123_456, embedded.STREAM_SIZE - 1]
  for i in indices:  # a pure function of the index, whatever was read before
    np.testing.assert_array_equal(stream[i]["image"], again[i]["image"])
  # Validation crops as stored by TFDS (the independent reference): none is in the stream.
  valid = {(int(e["label"]), *(int(v) for v in e["crop_box"]))
           for e in all_examples(embedded_data_dir, "validation")}
  boxes = [(int(ex["label"]), *(int(v) for v in ex["crop_box"]))
           for ex in map(stream.__getitem__, range(3000))]
  assert not valid & set(boxes)
  assert len(set(boxes)) >= 2995  # distinct crops (chance repeats ~ K^2 / 4e8)
  for i in (5, 2999):
    ex = stream[i]
    np.testing.assert_array_equal(ex["image"], reference_crop(ex))
  with pytest.raises(IndexError):
    stream[embedded.STREAM_SIZE]
