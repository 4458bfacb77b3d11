"""The small feature CNN: it learns a separable toy problem, its directory loads back as an
fd_<name> feature network, and its name cannot pose as Inception."""

import json

import numpy as np
import pytest

from varjax.errors import VarjaxError
from varjax.eval import features


def toy_split(n: int, seed: int):
  """4 classes of 8x8 images: a dominant colour channel per class (or grey), plus noise."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 4, n)
  base = np.full((n, 8, 8, 3), 80.0)
  for c in range(3):
    base[labels == c, :, :, c] = 200
  images = np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8)
  return images, labels


def test_train_cnn_learns_and_loads_back(tmp_path):
  train, val = toy_split(512, 0), toy_split(128, 1)
  spec = features.train_cnn(*train, *val, str(tmp_path / "net"), name="toy8cnn",
                            dataset="toy", num_classes=4, widths=(8, 16), epochs=3,
                            batch_size=64, lr=1e-2, progress=False)
  assert spec["val_accuracy"] > 0.9, spec
  saved = json.loads((tmp_path / "net" / features.SPEC_FILE).read_text())
  assert saved == spec and saved["feature_dim"] == 16 and saved["resolution"] == 8
  net = features.load_cnn(str(tmp_path / "net"))
  assert net.metric == "fd_toy8cnn"
  feats = net.features(val[0])
  assert feats.shape == (128, 16) and np.all(np.isfinite(feats))
  # penultimate features separate the classes: class means far apart relative to spread
  means = np.stack([feats[val[1] == c].mean(0) for c in range(4)])
  spread = np.mean([feats[val[1] == c].std(0).mean() for c in range(4)])
  assert np.min([np.linalg.norm(means[i] - means[j]) for i in range(4) for j in range(i)]) \
      > spread


@pytest.mark.parametrize("name", ["inception", "FID", "my net"])
def test_names_that_are_refused(tmp_path, name):
  with pytest.raises(VarjaxError, match="feature network name"):
    features.train_cnn(*toy_split(64, 0), *toy_split(8, 1), str(tmp_path), name=name,
                       dataset="toy", num_classes=4, batch_size=32, progress=False)


def test_default_names():
  assert features.default_name("embedded32", 32) == "embed32cnn"
  assert features.default_name("embedded64", 64) == "embed64cnn"
  assert features.default_name("celeb_a", 64) == "celeba64cnn"
