"""Verifiers for search at sampling time (varjax.models.search): callables (images float32
[N, H, W, 3] in [0, 1], labels int [N]) -> scores [N], higher is better.

`ClassConfidence`: the embedded data's feature network (`varjax eval features train`)
read as a classifier: the softmax probability of the label each image was sampled for.
Images are rounded to uint8 first, as the fd_<name> evaluation sees them.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from varjax.errors import VarjaxError
from varjax.eval import features
from varjax.models import store


class ClassConfidence:
  """p(label | image) under a trained feature CNN, from its directory."""

  def __init__(self, directory: str):
    spec = features.read_spec(directory)
    self.name = f"class confidence of {spec['name']}"
    self.num_classes = int(spec["num_classes"])
    self.resolution = int(spec["resolution"])
    model = features.FeatureCNN(tuple(spec["widths"]), self.num_classes)
    image = jnp.zeros((1, self.resolution, self.resolution, 3))
    template = jax.eval_shape(lambda: model.init(jax.random.key(0), image))["params"]
    params, _ = store.read_params(os.path.join(directory, features.PARAMS_FILE), template)
    self._probs = jax.jit(lambda x: jax.nn.softmax(model.apply({"params": params}, x)[0], -1))

  def check(self, num_classes: int, resolution: int) -> None:
    """Before sampling: the model's classes and image size must be the network's."""
    if num_classes > self.num_classes:
      raise VarjaxError(f"the verifier ({self.name}) knows {self.num_classes} classes; the "
                        f"model samples {num_classes}")
    if resolution != self.resolution:
      raise VarjaxError(f"the verifier ({self.name}) takes {self.resolution}x{self.resolution} "
                        f"images; the tokenizer makes {resolution}x{resolution}")

  def __call__(self, images_NxHxWx3, labels_N) -> np.ndarray:
    images, labels = np.asarray(images_NxHxWx3, np.float32), np.asarray(labels_N)
    if labels.size and int(labels.max()) >= self.num_classes:
      raise VarjaxError(f"label {int(labels.max())} is outside the {self.num_classes} classes "
                        f"of the verifier ({self.name})")
    if images.shape[1:3] != (self.resolution, self.resolution):
      raise VarjaxError(f"the verifier ({self.name}) takes {self.resolution}x{self.resolution} "
                        f"images, got {images.shape[1]}x{images.shape[2]}")
    x = np.round(np.clip(images, 0, 1) * 255) / 255  # as uint8, like the evaluation
    probs = np.asarray(self._probs(jnp.asarray(x, jnp.float32)))
    return probs[np.arange(len(labels)), labels]

  def flops_per_image(self, batch: int = 64) -> float | None:
    """FLOPs of scoring one image: XLA's cost analysis of the compiled network on `batch`
    images, divided by `batch`; None where the backend reports none."""
    x = jax.ShapeDtypeStruct((batch, self.resolution, self.resolution, 3), jnp.float32)
    cost = self._probs.lower(x).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = (cost or {}).get("flops")
    return float(flops) / batch if flops and flops > 0 else None
