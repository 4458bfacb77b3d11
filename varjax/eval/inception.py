"""The FID InceptionV3 in flax: pool3 features (2048-d) of the TF graph of 2015-12-05.

This is the network FID is defined with (TTUR's TensorFlow code), as pytorch-fid ports it
("FIDInception"): torchvision's InceptionV3 layout with the blocks patched where the TF
graph differs, and its weights `pt_inception-2015-12-05-6726825d.pth`:

  - every average pool inside a block ignores the zero padding (count_include_pad=False);
  - the last block (Mixed_7c, "E_2") pools its pool branch with a 3x3 *max* pool;
  - input: [0, 1] images, bilinearly resized to 299 x 299 (align_corners=False, no
    antialias, PyTorch's F.interpolate), then mapped to [-1, 1];
  - features: the global average of Mixed_7c (the 1008-way classifier is not used).

Every convolution is conv (no bias) -> BatchNorm (inference, eps 1e-3) -> ReLU; the
converter folds each BatchNorm into its conv, so here a conv has a kernel and a bias.
Parameter names are the PyTorch module names (`Mixed_6b/branch7x7dbl_3/conv`).

Weights: our own file (a flax msgpack of {"step", "params"}, `store.save_params`), made
once from the published PyTorch file with `varjax eval convert-inception` (the `convert`
extra reads .pth; a state dict saved as .npz needs nothing). Nothing is downloaded.
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from varjax.errors import VarjaxError
from varjax.models import resize

INPUT_SIZE = 299
FEATURE_DIM = 2048
BN_EPS = 1e-3
# Exact fp32 convolutions: on GPUs the default precision may use TF32, which moves FID.
PRECISION = jax.lax.Precision.HIGHEST

Pair = int | tuple[int, int]


def _pair(v: Pair) -> tuple[int, int]:
  return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


class BasicConv(nn.Module):
  """Conv with its BatchNorm folded in, then ReLU (torchvision's BasicConv2d)."""
  features: int
  kernel: Pair = 1
  stride: int = 1
  padding: Pair = 0

  @nn.compact
  def __call__(self, x_BxHxWxC):
    ph, pw = _pair(self.padding)
    x = nn.Conv(self.features, _pair(self.kernel), strides=self.stride,
                padding=((ph, ph), (pw, pw)), precision=PRECISION, name="conv")(x_BxHxWxC)
    return nn.relu(x)


def avg_pool_3x3_same(x_BxHxWxC):
  """TF's 3x3 / stride 1 / SAME average: the padded zeros are not counted."""
  return nn.avg_pool(x_BxHxWxC, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)


def max_pool_3x3(x_BxHxWxC, stride: int = 2, padding: int = 0):
  return nn.max_pool(x_BxHxWxC, (3, 3), (stride, stride), ((padding, padding),) * 2)


class InceptionA(nn.Module):
  """Mixed_5b/c/d: 64 + 64 + 96 + pool_features channels."""
  pool_features: int

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv(64, name="branch1x1")(x)
    b5 = BasicConv(48, name="branch5x5_1")(x)
    b5 = BasicConv(64, 5, padding=2, name="branch5x5_2")(b5)
    b3 = BasicConv(64, name="branch3x3dbl_1")(x)
    b3 = BasicConv(96, 3, padding=1, name="branch3x3dbl_2")(b3)
    b3 = BasicConv(96, 3, padding=1, name="branch3x3dbl_3")(b3)
    bp = BasicConv(self.pool_features, name="branch_pool")(avg_pool_3x3_same(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """Mixed_6a: stride 2, 384 + 96 + C_in channels."""

  @nn.compact
  def __call__(self, x):
    b3 = BasicConv(384, 3, stride=2, name="branch3x3")(x)
    bd = BasicConv(64, name="branch3x3dbl_1")(x)
    bd = BasicConv(96, 3, padding=1, name="branch3x3dbl_2")(bd)
    bd = BasicConv(96, 3, stride=2, name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, max_pool_3x3(x)], axis=-1)


class InceptionC(nn.Module):
  """Mixed_6b..e: factorised 7x7 convolutions, 4 x 192 channels."""
  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c7 = self.channels_7x7
    b1 = BasicConv(192, name="branch1x1")(x)
    b7 = BasicConv(c7, name="branch7x7_1")(x)
    b7 = BasicConv(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
    b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
    bd = BasicConv(c7, name="branch7x7dbl_1")(x)
    bd = BasicConv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
    bd = BasicConv(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
    bd = BasicConv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
    bd = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
    bp = BasicConv(192, name="branch_pool")(avg_pool_3x3_same(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """Mixed_7a: stride 2, 320 + 192 + C_in channels."""

  @nn.compact
  def __call__(self, x):
    b3 = BasicConv(192, name="branch3x3_1")(x)
    b3 = BasicConv(320, 3, stride=2, name="branch3x3_2")(b3)
    b7 = BasicConv(192, name="branch7x7x3_1")(x)
    b7 = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = BasicConv(192, 3, stride=2, name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, max_pool_3x3(x)], axis=-1)


class InceptionE(nn.Module):
  """Mixed_7b ("E_1", average pool) and Mixed_7c ("E_2", max pool): 2048 channels."""
  pool: str = "avg"

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv(320, name="branch1x1")(x)
    b3 = BasicConv(384, name="branch3x3_1")(x)
    b3 = jnp.concatenate([BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                          BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)],
                         axis=-1)
    bd = BasicConv(448, name="branch3x3dbl_1")(x)
    bd = BasicConv(384, 3, padding=1, name="branch3x3dbl_2")(bd)
    bd = jnp.concatenate([BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                          BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)],
                         axis=-1)
    pooled = avg_pool_3x3_same(x) if self.pool == "avg" else max_pool_3x3(x, 1, 1)
    bp = BasicConv(192, name="branch_pool")(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


def _layers() -> list[tuple[str, nn.Module | None]]:
  """(name, module) in order; None marks the two stem max pools."""
  return [
      ("Conv2d_1a_3x3", BasicConv(32, 3, stride=2, name="Conv2d_1a_3x3")),
      ("Conv2d_2a_3x3", BasicConv(32, 3, name="Conv2d_2a_3x3")),
      ("Conv2d_2b_3x3", BasicConv(64, 3, padding=1, name="Conv2d_2b_3x3")),
      ("maxpool1", None),
      ("Conv2d_3b_1x1", BasicConv(80, name="Conv2d_3b_1x1")),
      ("Conv2d_4a_3x3", BasicConv(192, 3, name="Conv2d_4a_3x3")),
      ("maxpool2", None),
      ("Mixed_5b", InceptionA(32, name="Mixed_5b")),
      ("Mixed_5c", InceptionA(64, name="Mixed_5c")),
      ("Mixed_5d", InceptionA(64, name="Mixed_5d")),
      ("Mixed_6a", InceptionB(name="Mixed_6a")),
      ("Mixed_6b", InceptionC(128, name="Mixed_6b")),
      ("Mixed_6c", InceptionC(160, name="Mixed_6c")),
      ("Mixed_6d", InceptionC(160, name="Mixed_6d")),
      ("Mixed_6e", InceptionC(192, name="Mixed_6e")),
      ("Mixed_7a", InceptionD(name="Mixed_7a")),
      ("Mixed_7b", InceptionE("avg", name="Mixed_7b")),
      ("Mixed_7c", InceptionE("max", name="Mixed_7c")),
  ]


class FIDInceptionV3(nn.Module):
  """images_BxHxWx3 in [0, 1] -> pool3 features float32 [B, 2048].

  `resize_input=False` feeds the images as they are (at least 75 x 75), for tests."""
  resize_input: bool = True

  @nn.compact
  def __call__(self, images_BxHxWx3, return_blocks: bool = False):
    x = images_BxHxWx3.astype(jnp.float32)
    if self.resize_input:
      x = resize.bilinear_resize(x, INPUT_SIZE)
    x = 2 * x - 1
    blocks = {}
    for name, layer in _layers():
      x = max_pool_3x3(x) if layer is None else layer(x)
      blocks[name] = x
    feats_BxD = jnp.mean(x, axis=(1, 2))
    return (feats_BxD, blocks) if return_blocks else feats_BxD


def param_shapes(model: FIDInceptionV3 | None = None):
  """The parameter tree as ShapeDtypeStructs (nothing is computed)."""
  model = model or FIDInceptionV3(resize_input=False)
  x = jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32)
  return jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)["params"]


def load_inception(path: str):
  """(FIDInceptionV3, {"params": ...}) from a weights file written by convert-inception."""
  from varjax.models import store
  if not os.path.isfile(path):
    raise VarjaxError(f"Inception weights not found: {path} (make them once from "
                      "pt_inception-2015-12-05-6726825d.pth with `varjax eval "
                      "convert-inception`)")
  params, _ = store.read_params(path, param_shapes())
  return FIDInceptionV3(), {"params": params}


# ------------------------------------------------------------------ conversion

def _torch_key(path: Sequence[str]) -> str:
  """Our ("Mixed_5b", "branch1x1", "conv", "kernel") -> PyTorch "Mixed_5b.branch1x1"."""
  return ".".join(path[:-2])


def convert_inception(state: Mapping[str, np.ndarray]) -> dict:
  """Our params from pytorch-fid's FID Inception state dict (NumPy arrays, PyTorch names
  and layouts): conv OIHW -> HWIO, each BatchNorm folded into its conv in float64:
      kernel = W * gamma / sqrt(var + 1e-3),  bias = beta - mean * gamma / sqrt(var + 1e-3).
  Every parameter of ours must be found with the right shape, and every weight of the
  state dict must find a place (the classifier `fc` and BatchNorm counters excepted)."""
  from flax import traverse_util
  from varjax.models.convert import ConvertError
  flat = traverse_util.flatten_dict(param_shapes())
  out, used = {}, set()
  for path, want in flat.items():
    prefix = _torch_key(path)
    keys = {"weight": f"{prefix}.conv.weight", "gamma": f"{prefix}.bn.weight",
            "beta": f"{prefix}.bn.bias", "mean": f"{prefix}.bn.running_mean",
            "var": f"{prefix}.bn.running_var"}
    missing = [k for k in keys.values() if k not in state]
    if missing:
      raise ConvertError(f"not an FID Inception state dict: {missing[0]} is missing "
                         f"(for {'/'.join(path)})")
    w = np.asarray(state[keys["weight"]], np.float64)
    gamma, beta, mean, var = (np.asarray(state[keys[k]], np.float64).reshape(-1)
                              for k in ("gamma", "beta", "mean", "var"))
    scale = gamma / np.sqrt(var + BN_EPS)
    if path[-1] == "kernel":
      if w.ndim != 4 or w.transpose(2, 3, 1, 0).shape != tuple(want.shape):
        raise ConvertError(f"{keys['weight']} has shape {w.shape}; {'/'.join(path)} needs "
                           f"{tuple(want.shape)} as HWIO")
      value = w.transpose(2, 3, 1, 0) * scale
    else:
      value = beta - mean * scale
      if value.shape != tuple(want.shape):
        raise ConvertError(f"{prefix}.bn has {value.shape[0]} channels; {'/'.join(path)} "
                           f"needs {tuple(want.shape)}")
    out[path] = value.astype(np.float32)
    used.update(keys.values())
  unused = sorted(k for k in state if k not in used and not k.startswith(("fc.", "AuxLogits."))
                  and not k.endswith("num_batches_tracked"))
  if unused:
    raise ConvertError(f"{len(unused)} weights of the state dict have no place in the FID "
                       f"Inception, e.g. {unused[0]}")
  return traverse_util.unflatten_dict(out)
