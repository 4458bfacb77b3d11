"""Feature networks for Fréchet distances, and the small CNN for datasets Inception does not fit.

A `FeatureNetwork` maps uint8 images [N, H, W, 3] to float32 features [N, D]. Two kinds:

  - the FID Inception (`inception.py`, weights from a local file): its distance is `fid`;
  - a small CNN classifier trained here on a dataset's training split (for the embedded
    default: `varjax eval features train --out DIR`, about a minute on 2 CPU cores), whose
    penultimate layer (the global average of its last convolution) gives the features.
    Its distance is ALWAYS reported as `fd_<name>` (e.g. `fd_embed32cnn`), never as FID:
    the numbers are not comparable with any published FID.

A feature-network directory holds `feature_net.json` (architecture, dataset, training
figures) and `params.msgpack` (`store.save_params`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import time
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from varjax import files
from varjax.errors import VarjaxError

SPEC_FILE = "feature_net.json"
PARAMS_FILE = "params.msgpack"
INCEPTION_NAME = "inception"


# ------------------------------------------------------------------ the interface

@dataclasses.dataclass(frozen=True)
class FeatureNetwork:
  """name: what the metric is called after (`fid` for Inception, else `fd_<name>`);
  resolution: the image side it needs (None: any, it resizes); fingerprint: a hash of its
  weights, so cached reference statistics are never reused across different weights."""
  name: str
  dim: int
  resolution: int | None
  fingerprint: str
  path: str
  apply_fn: Callable[[jax.Array], jax.Array]  # float32 [B, H, W, 3] in [0, 1] -> [B, D]
  batch_size: int = 64

  @property
  def metric(self) -> str:
    return "fid" if self.name == INCEPTION_NAME else f"fd_{self.name}"

  def check_images(self, shape: Sequence[int]) -> None:
    if len(shape) != 4 or shape[-1] != 3:
      raise VarjaxError(f"feature network {self.name} takes [N, H, W, 3] images, got "
                        f"shape {tuple(shape)}")
    if self.resolution and tuple(shape[1:3]) != (self.resolution, self.resolution):
      raise VarjaxError(f"feature network {self.name} was trained on {self.resolution}x"
                        f"{self.resolution} images; these are {shape[1]}x{shape[2]}")

  def features(self, images_NxHxWx3: np.ndarray) -> np.ndarray:
    """uint8 images -> float32 [N, D], in batches padded to `batch_size` (one compile)."""
    images = np.asarray(images_NxHxWx3)
    self.check_images(images.shape)
    if images.dtype != np.uint8:
      raise VarjaxError(f"feature networks take uint8 images, got {images.dtype}")
    out = []
    for i in range(0, len(images), self.batch_size):
      batch = images[i:i + self.batch_size]
      n = len(batch)
      if n < self.batch_size:
        batch = np.concatenate([batch, np.zeros((self.batch_size - n,) + batch.shape[1:],
                                                np.uint8)])
      x = jnp.asarray(batch, jnp.float32) / 255.0
      out.append(np.asarray(self.apply_fn(x))[:n])
    return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)


def file_fingerprint(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()[:12]


def load_feature_network(inception_weights: str | None = None,
                         feature_net: str | None = None, batch_size: int = 64) -> FeatureNetwork:
  """The Inception (FID) from a weights file, or a trained CNN from its directory."""
  if bool(inception_weights) == bool(feature_net):
    raise VarjaxError("pass exactly one of --inception-weights PATH (FID) or --feature-net DIR "
                      "(fd_<name>; train one with `varjax eval features train --out DIR`)")
  if inception_weights:
    from varjax.eval import inception
    model, variables = inception.load_inception(inception_weights)
    fn = jax.jit(lambda x: model.apply(variables, x))
    return FeatureNetwork(INCEPTION_NAME, inception.FEATURE_DIM, None,
                          file_fingerprint(inception_weights), inception_weights, fn, batch_size)
  return load_cnn(feature_net, batch_size)


# ------------------------------------------------------------------ the small CNN

class FeatureCNN(nn.Module):
  """conv3x3 -> GroupNorm -> ReLU per stage, 2x2 average pool between stages; features =
  global average of the last stage (the penultimate layer); logits = Dense(features).

  GroupNorm (at least 4 channels a group: one channel a group would divide out each
  image's colour) makes the distance far more sensitive to blur, noise and colour shifts
  relative to the data's own floor than the same net without it (docs/eval.md)."""
  widths: tuple[int, ...] = (32, 64, 128)
  num_classes: int = 16

  @nn.compact
  def __call__(self, images_BxHxWx3):
    x = 2 * images_BxHxWx3 - 1  # [0, 1] -> [-1, 1]
    for i, w in enumerate(self.widths):
      if i:
        x = nn.avg_pool(x, (2, 2), (2, 2))
      x = nn.Conv(w, (3, 3), name=f"conv{i}")(x)
      x = nn.relu(nn.GroupNorm(num_groups=max(1, min(8, w // 4)), name=f"norm{i}")(x))
    feats_BxD = x.mean(axis=(1, 2))
    return nn.Dense(self.num_classes, name="head")(feats_BxD), feats_BxD


def default_name(dataset: str, resolution: int) -> str:
  """embedded32 -> embed32cnn; other datasets: <name><resolution>cnn, letters and digits."""
  if dataset.startswith("embedded"):
    return f"embed{resolution}cnn"
  return re.sub(r"[^a-z0-9]", "", dataset.lower()) + f"{resolution}cnn"


def read_spec(directory: str) -> dict[str, Any]:
  for name in (SPEC_FILE, PARAMS_FILE):
    if not os.path.isfile(os.path.join(directory, name)):
      raise VarjaxError(f"{directory} is not a feature-network directory: {name} is missing "
                        "(train one with `varjax eval features train --out DIR`)")
  with open(os.path.join(directory, SPEC_FILE)) as f:
    return json.load(f)


def load_cnn(directory: str, batch_size: int = 64) -> FeatureNetwork:
  from varjax.models import store
  spec = read_spec(directory)
  model = FeatureCNN(tuple(spec["widths"]), spec["num_classes"])
  side = spec["resolution"]
  template = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                               jnp.zeros((1, side, side, 3))))["params"]
  params_path = os.path.join(directory, PARAMS_FILE)
  params, _ = store.read_params(params_path, template)
  fn = jax.jit(lambda x: model.apply({"params": params}, x)[1])
  return FeatureNetwork(spec["name"], model.widths[-1], side, file_fingerprint(params_path),
                        directory, fn, batch_size)


def _augment(images_BxHxWx3: np.ndarray, rng: np.random.Generator, shift: int = 2) -> np.ndarray:
  """Random horizontal flips and translations by up to `shift` pixels (reflect padding)."""
  b, h, w, _ = images_BxHxWx3.shape
  flip = rng.random(b) < 0.5
  x = np.where(flip[:, None, None, None], images_BxHxWx3[:, :, ::-1], images_BxHxWx3)
  padded = np.pad(x, ((0, 0), (shift, shift), (shift, shift), (0, 0)), mode="reflect")
  dy, dx = rng.integers(0, 2 * shift + 1, (2, b))
  return np.stack([padded[i, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])


def train_cnn(train_images: np.ndarray, train_labels: np.ndarray, val_images: np.ndarray,
              val_labels: np.ndarray, out_dir: str, *, name: str, dataset: str,
              num_classes: int, widths: Sequence[int] = (32, 64, 128), epochs: int = 5,
              batch_size: int = 128, lr: float = 2e-3, seed: int = 0,
              progress: bool | None = None) -> dict[str, Any]:
  """Trains the classifier on uint8 images, writes the feature-network directory and
  returns its spec (with train/validation accuracy and the time taken)."""
  from varjax import progress as progress_lib
  n, side = len(train_images), train_images.shape[1]
  if not re.fullmatch(r"[a-z0-9_]+", name) or name == INCEPTION_NAME:
    raise VarjaxError(f"feature network name {name!r}: use lower-case letters, digits and _ "
                      f"(not {INCEPTION_NAME!r}); the metric is called fd_<name>")
  if n < batch_size:
    raise VarjaxError(f"{n} training images are fewer than one batch of {batch_size}")
  if int(train_labels.max()) >= num_classes:
    raise VarjaxError(f"label {int(train_labels.max())} is outside the {num_classes} classes")
  start = time.time()
  model = FeatureCNN(tuple(widths), num_classes)
  # jitted with the rbg PRNG: XLA:CPU compiles threefry initialisers slowly (see vqvae)
  params = jax.jit(lambda key: model.init(key, jnp.zeros((1, side, side, 3)))["params"])(
      jax.random.key(seed, impl="rbg"))
  steps_per_epoch = n // batch_size
  total = epochs * steps_per_epoch
  tx = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, lr, min(50, total // 10), total),
                   weight_decay=1e-4)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, x, y):
    def loss_fn(p):
      logits, _ = model.apply({"params": p}, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  predict = jax.jit(lambda p, x: jnp.argmax(model.apply({"params": p}, x)[0], -1))

  def accuracy(images, labels):
    hits = 0
    for i in range(0, len(images), 256):
      hits += int(np.sum(np.asarray(predict(params, jnp.asarray(images[i:i + 256], jnp.float32)
                                            / 255.0)) == labels[i:i + 256]))
    return hits / max(len(images), 1)

  rng = np.random.default_rng(seed)
  bar = progress_lib.bar(total=total, desc=f"training {name}", unit="step", enabled=progress)
  loss = float("nan")
  for epoch in range(epochs):
    order = rng.permutation(n)
    for s in range(steps_per_epoch):
      idx = order[s * batch_size:(s + 1) * batch_size]
      x = jnp.asarray(_augment(train_images[idx], rng), jnp.float32) / 255.0
      params, opt_state, loss = step(params, opt_state, x, jnp.asarray(train_labels[idx]))
      bar.update()
    bar.set_postfix(epoch=epoch + 1, loss=f"{float(loss):.3f}")
  bar.close()
  spec = {"name": name, "widths": list(widths), "num_classes": num_classes,
          "resolution": side, "dataset": dataset, "feature_dim": int(widths[-1]),
          "epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed,
          "train_accuracy": accuracy(train_images, train_labels),
          "val_accuracy": accuracy(val_images, val_labels), "final_loss": float(loss),
          "train_seconds": round(time.time() - start, 1)}
  save_cnn(out_dir, spec, params)
  return spec


def save_cnn(directory: str, spec: dict[str, Any], params) -> None:
  """Writes a feature-network directory: spec (name, widths, num_classes, resolution, ...)
  and parameters."""
  from varjax.models import store
  os.makedirs(directory, exist_ok=True)
  store.save_params(params, os.path.join(directory, PARAMS_FILE))
  files.write_json(os.path.join(directory, SPEC_FILE), spec)
