"""Builds tests/data/fid_inception_reference.npz: outputs of pytorch-fid's own InceptionV3
(the FID Inception, `use_fid_inception=True`) under synthetic weights, for
tests/test_eval_inception.py.

No pytorch-fid code is in this repository: it is imported at run time. The fixture was made
with pytorch-fid 0.3.0, torchvision 0.28.0, torch 2.13.0+cpu, NumPy 2.4, Python 3.11:

  python3.11 -m venv /tmp/torchref
  /tmp/torchref/bin/pip install torch==2.13.0 torchvision pytorch-fid numpy
  /tmp/torchref/bin/python tests/reference/make_fid_inception_reference.py

pytorch-fid's `fid_inception_v3()` downloads the real weights; here it is replaced by the
same construction (torchvision's Inception3 with the FID blocks patched in) loaded with
`synthetic_inception.inception_weight`, so `InceptionV3` runs its own resize, input
scaling and blocks on them. Recorded (fp32, eval mode, 3 images 32 x 32 in [0, 1]):
`images` (NCHW), `block0`..`block2` (the outputs of the first max pool, the second max
pool and Mixed_6e averaged over space, [3, C]), `pool3` ([3, 2048]); the state dict's
`names`, `shapes` and per-tensor float64 `sums`; and PyTorch's bilinear resize
(F.interpolate, align_corners=False) of `resize_in` [1, 2, 7, 5] to 13 x 4 and 3 x 11.
"""

import os
import sys

import types

import numpy as np
import torch
import torch.nn.functional as F

# torchvision's C++ ops (nms, ...) may not load against a CPU-only torch from another
# index; the Inception model is pure Python, so skip the op registrations that need them.
for _name in ("torchvision._meta_registrations", "torchvision._autograd_registrations"):
  sys.modules.setdefault(_name, types.ModuleType(_name))
from pytorch_fid import inception as pfi  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from synthetic_inception import inception_weight  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data",
                   "fid_inception_reference.npz")


def synthetic_fid_inception():
  net = pfi._inception_v3(num_classes=1008, aux_logits=False, weights=None)
  net.Mixed_5b = pfi.FIDInceptionA(192, pool_features=32)
  net.Mixed_5c = pfi.FIDInceptionA(256, pool_features=64)
  net.Mixed_5d = pfi.FIDInceptionA(288, pool_features=64)
  net.Mixed_6b = pfi.FIDInceptionC(768, channels_7x7=128)
  net.Mixed_6c = pfi.FIDInceptionC(768, channels_7x7=160)
  net.Mixed_6d = pfi.FIDInceptionC(768, channels_7x7=160)
  net.Mixed_6e = pfi.FIDInceptionC(768, channels_7x7=192)
  net.Mixed_7b = pfi.FIDInceptionE_1(1280)
  net.Mixed_7c = pfi.FIDInceptionE_2(2048)
  state = {k: torch.from_numpy(inception_weight(k, tuple(v.shape)))
           for k, v in net.state_dict().items()}
  net.load_state_dict(state, strict=True)
  return net, state


def main():
  torch.manual_seed(0)
  net, state = synthetic_fid_inception()
  pfi.fid_inception_v3 = lambda: net  # no download
  model = pfi.InceptionV3(output_blocks=(0, 1, 2, 3)).eval()
  images = np.random.RandomState(0).random_sample((3, 3, 32, 32)).astype(np.float32)
  with torch.no_grad():
    b0, b1, b2, b3 = model(torch.from_numpy(images))
  resize_in = np.random.RandomState(1).random_sample((1, 2, 7, 5)).astype(np.float32)
  with torch.no_grad():
    up = F.interpolate(torch.from_numpy(resize_in), size=(13, 4), mode="bilinear",
                       align_corners=False)
    down = F.interpolate(torch.from_numpy(resize_in), size=(3, 11), mode="bilinear",
                         align_corners=False)
  names = sorted(state)
  np.savez_compressed(
      OUT, images=images,
      block0=b0.mean((2, 3)).numpy(), block1=b1.mean((2, 3)).numpy(),
      block2=b2.mean((2, 3)).numpy(), pool3=b3[:, :, 0, 0].numpy(),
      names=np.array(names), shapes=np.array([",".join(map(str, state[k].shape)) for k in names]),
      sums=np.array([state[k].double().sum().item() for k in names]),
      resize_in=resize_in, resize_13x4=up.numpy(), resize_3x11=down.numpy())
  print(f"wrote {OUT}: pool3 {tuple(b3.shape)}, mean {b3.mean().item():.4f}, "
        f"std {b3.std().item():.4f}")


if __name__ == "__main__":
  main()
