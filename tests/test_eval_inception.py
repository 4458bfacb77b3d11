"""The FID InceptionV3: converter names and shapes, every block type against a NumPy
transcription of torchvision's blocks (with pytorch-fid's FID patches), and the whole
network against pytorch-fid itself (tests/data/fid_inception_reference.npz, made by
tests/reference/make_fid_inception_reference.py). Weights are synthetic
(tests/reference/synthetic_inception.py): the real ones cannot be fetched here."""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from varjax.errors import VarjaxError
from varjax.eval import inception
from varjax.models import resize, store
from varjax.models.convert import ConvertError

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "reference"))
from synthetic_inception import inception_weight  # noqa: E402

FIXTURE = os.path.join(os.path.dirname(__file__), "data", "fid_inception_reference.npz")


def _pair(v):
  return (v, v) if isinstance(v, int) else v


def torch_spec() -> dict[str, tuple]:
  """BasicConv2d name -> (C_in, C_out, (kh, kw), stride, (ph, pw)), from torchvision's
  Inception3 constructors (written out independently of varjax.eval.inception)."""
  spec = {}

  def c(name, cin, cout, k, stride=1, pad=0):
    spec[name] = (cin, cout, _pair(k), stride, _pair(pad))

  c("Conv2d_1a_3x3", 3, 32, 3, 2)
  c("Conv2d_2a_3x3", 32, 32, 3)
  c("Conv2d_2b_3x3", 32, 64, 3, pad=1)
  c("Conv2d_3b_1x1", 64, 80, 1)
  c("Conv2d_4a_3x3", 80, 192, 3)
  for m, cin, pool in (("Mixed_5b", 192, 32), ("Mixed_5c", 256, 64), ("Mixed_5d", 288, 64)):
    c(f"{m}.branch1x1", cin, 64, 1)
    c(f"{m}.branch5x5_1", cin, 48, 1)
    c(f"{m}.branch5x5_2", 48, 64, 5, pad=2)
    c(f"{m}.branch3x3dbl_1", cin, 64, 1)
    c(f"{m}.branch3x3dbl_2", 64, 96, 3, pad=1)
    c(f"{m}.branch3x3dbl_3", 96, 96, 3, pad=1)
    c(f"{m}.branch_pool", cin, pool, 1)
  c("Mixed_6a.branch3x3", 288, 384, 3, 2)
  c("Mixed_6a.branch3x3dbl_1", 288, 64, 1)
  c("Mixed_6a.branch3x3dbl_2", 64, 96, 3, pad=1)
  c("Mixed_6a.branch3x3dbl_3", 96, 96, 3, 2)
  for m, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
    c(f"{m}.branch1x1", 768, 192, 1)
    c(f"{m}.branch7x7_1", 768, c7, 1)
    c(f"{m}.branch7x7_2", c7, c7, (1, 7), pad=(0, 3))
    c(f"{m}.branch7x7_3", c7, 192, (7, 1), pad=(3, 0))
    c(f"{m}.branch7x7dbl_1", 768, c7, 1)
    c(f"{m}.branch7x7dbl_2", c7, c7, (7, 1), pad=(3, 0))
    c(f"{m}.branch7x7dbl_3", c7, c7, (1, 7), pad=(0, 3))
    c(f"{m}.branch7x7dbl_4", c7, c7, (7, 1), pad=(3, 0))
    c(f"{m}.branch7x7dbl_5", c7, 192, (1, 7), pad=(0, 3))
    c(f"{m}.branch_pool", 768, 192, 1)
  c("Mixed_7a.branch3x3_1", 768, 192, 1)
  c("Mixed_7a.branch3x3_2", 192, 320, 3, 2)
  c("Mixed_7a.branch7x7x3_1", 768, 192, 1)
  c("Mixed_7a.branch7x7x3_2", 192, 192, (1, 7), pad=(0, 3))
  c("Mixed_7a.branch7x7x3_3", 192, 192, (7, 1), pad=(3, 0))
  c("Mixed_7a.branch7x7x3_4", 192, 192, 3, 2)
  for m, cin in (("Mixed_7b", 1280), ("Mixed_7c", 2048)):
    c(f"{m}.branch1x1", cin, 320, 1)
    c(f"{m}.branch3x3_1", cin, 384, 1)
    c(f"{m}.branch3x3_2a", 384, 384, (1, 3), pad=(0, 1))
    c(f"{m}.branch3x3_2b", 384, 384, (3, 1), pad=(1, 0))
    c(f"{m}.branch3x3dbl_1", cin, 448, 1)
    c(f"{m}.branch3x3dbl_2", 448, 384, 3, pad=1)
    c(f"{m}.branch3x3dbl_3a", 384, 384, (1, 3), pad=(0, 1))
    c(f"{m}.branch3x3dbl_3b", 384, 384, (3, 1), pad=(1, 0))
    c(f"{m}.branch_pool", cin, 192, 1)
  return spec


SPEC = torch_spec()


def torch_layout_shapes() -> dict[str, tuple]:
  shapes = {"fc.weight": (1008, 2048), "fc.bias": (1008,)}
  for name, (cin, cout, (kh, kw), _, _) in SPEC.items():
    shapes[f"{name}.conv.weight"] = (cout, cin, kh, kw)
    for leaf in ("weight", "bias", "running_mean", "running_var"):
      shapes[f"{name}.bn.{leaf}"] = (cout,)
    shapes[f"{name}.bn.num_batches_tracked"] = ()
  return shapes


@pytest.fixture(scope="module")
def state_dict():
  return {k: inception_weight(k, s) for k, s in torch_layout_shapes().items()}


@pytest.fixture(scope="module")
def params(state_dict):
  return inception.convert_inception(state_dict)


# ------------------------------------------------------------------ NumPy reference (NCHW)

def np_conv(sd, name, x):
  """torchvision BasicConv2d in eval mode: conv (no bias), BatchNorm eps 1e-3, ReLU."""
  _, _, (kh, kw), s, (ph, pw) = SPEC[name]
  w = sd[f"{name}.conv.weight"].astype(np.float64)
  xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
  ho, wo = (xp.shape[2] - kh) // s + 1, (xp.shape[3] - kw) // s + 1
  y = np.zeros((x.shape[0], w.shape[0], ho, wo))
  for u in range(kh):
    for v in range(kw):
      window = xp[:, :, u:u + s * (ho - 1) + 1:s, v:v + s * (wo - 1) + 1:s]
      y += np.einsum("oc,nchw->nohw", w[:, :, u, v], window)
  bn = {k: sd[f"{name}.bn.{k}"].astype(np.float64)[:, None, None]
        for k in ("weight", "bias", "running_mean", "running_var")}
  y = (y - bn["running_mean"]) / np.sqrt(bn["running_var"] + 1e-3) * bn["weight"] + bn["bias"]
  return np.maximum(y, 0)


def np_windows(xp, stride, ho, wo):
  return [xp[:, :, u:u + stride * (ho - 1) + 1:stride, v:v + stride * (wo - 1) + 1:stride]
          for u in range(3) for v in range(3)]


def np_avg_pool_exclude_pad(x):
  """F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)."""
  h, w = x.shape[2:]
  total = sum(np_windows(np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1))), 1, h, w))
  count = sum(np_windows(np.pad(np.ones((1, 1, h, w)), ((0, 0), (0, 0), (1, 1), (1, 1))), 1, h, w))
  return total / count


def np_max_pool(x, stride=2, pad=0):
  xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=-np.inf)
  ho, wo = (xp.shape[2] - 3) // stride + 1, (xp.shape[3] - 3) // stride + 1
  return np.max(np_windows(xp, stride, ho, wo), axis=0)


def np_block(sd, m, x):
  c = lambda n, y: np_conv(sd, f"{m}.{n}", y)
  cat = lambda *ys: np.concatenate(ys, axis=1)
  if m in ("Mixed_5b", "Mixed_5c", "Mixed_5d"):
    return cat(c("branch1x1", x), c("branch5x5_2", c("branch5x5_1", x)),
               c("branch3x3dbl_3", c("branch3x3dbl_2", c("branch3x3dbl_1", x))),
               c("branch_pool", np_avg_pool_exclude_pad(x)))
  if m == "Mixed_6a":
    return cat(c("branch3x3", x),
               c("branch3x3dbl_3", c("branch3x3dbl_2", c("branch3x3dbl_1", x))), np_max_pool(x))
  if m in ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
    b7 = c("branch7x7_3", c("branch7x7_2", c("branch7x7_1", x)))
    bd = x
    for i in range(1, 6):
      bd = c(f"branch7x7dbl_{i}", bd)
    return cat(c("branch1x1", x), b7, bd, c("branch_pool", np_avg_pool_exclude_pad(x)))
  if m == "Mixed_7a":
    b7 = x
    for i in range(1, 5):
      b7 = c(f"branch7x7x3_{i}", b7)
    return cat(c("branch3x3_2", c("branch3x3_1", x)), b7, np_max_pool(x))
  b3 = c("branch3x3_1", x)
  bd = c("branch3x3dbl_2", c("branch3x3dbl_1", x))
  pooled = np_avg_pool_exclude_pad(x) if m == "Mixed_7b" else np_max_pool(x, 1, 1)
  return cat(c("branch1x1", x), c("branch3x3_2a", b3), c("branch3x3_2b", b3),
             c("branch3x3dbl_3a", bd), c("branch3x3dbl_3b", bd), c("branch_pool", pooled))


# ------------------------------------------------------------------ tests

def test_converter_names_shapes_and_counts(state_dict, params):
  n_torch = sum(v.size for k, v in state_dict.items()
                if not k.startswith("fc.") and k.endswith((".conv.weight", ".bn.weight", ".bn.bias")))
  assert n_torch == 21_785_568  # torchvision's 27,161,264 less the aux classifier and fc
  shapes = inception.param_shapes()
  assert jax.tree.map(lambda a: a.shape, params) == jax.tree.map(lambda s: s.shape, shapes)
  leaves = jax.tree_util.tree_leaves_with_path(params)
  assert len(leaves) == 2 * len(SPEC)  # one kernel and one folded bias per BasicConv2d
  for path, value in leaves:
    keys = [p.key for p in path]
    cin, cout, (kh, kw), _, _ = SPEC[".".join(keys[:-2])]
    assert value.shape == ((kh, kw, cin, cout) if keys[-1] == "kernel" else (cout,))
  # BatchNorm folded: kernel = W * gamma / sqrt(var + eps), HWIO
  name = "Mixed_6b.branch7x7_2"
  scale = state_dict[f"{name}.bn.weight"] / np.sqrt(state_dict[f"{name}.bn.running_var"] + 1e-3)
  np.testing.assert_allclose(params["Mixed_6b"]["branch7x7_2"]["conv"]["kernel"],
                             state_dict[f"{name}.conv.weight"].transpose(2, 3, 1, 0) * scale,
                             rtol=1e-6)


def test_converter_refuses_incomplete_or_foreign_state_dicts(state_dict):
  broken = dict(state_dict)
  del broken["Mixed_7c.branch_pool.bn.running_var"]
  with pytest.raises(ConvertError, match="Mixed_7c.branch_pool.bn.running_var is missing"):
    inception.convert_inception(broken)
  with pytest.raises(ConvertError, match="no place.*AuxLogit|no place.*extra"):
    inception.convert_inception({**state_dict, "extra.weight": np.zeros(3)})
  wrong = {**state_dict, "Conv2d_1a_3x3.conv.weight": np.zeros((32, 3, 5, 5), np.float32)}
  with pytest.raises(ConvertError, match="Conv2d_1a_3x3.conv.weight has shape"):
    inception.convert_inception(wrong)


def test_block_output_shapes():
  model = inception.FIDInceptionV3()
  feats, blocks = jax.eval_shape(lambda p, x: model.apply({"params": p}, x, return_blocks=True),
                                 inception.param_shapes(),
                                 jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32))
  assert feats.shape == (2, inception.FEATURE_DIM)
  want = {"Conv2d_1a_3x3": (149, 32), "Conv2d_2a_3x3": (147, 32), "Conv2d_2b_3x3": (147, 64),
          "maxpool1": (73, 64), "Conv2d_3b_1x1": (73, 80), "Conv2d_4a_3x3": (71, 192),
          "maxpool2": (35, 192), "Mixed_5b": (35, 256), "Mixed_5c": (35, 288),
          "Mixed_5d": (35, 288), "Mixed_6a": (17, 768), "Mixed_6b": (17, 768),
          "Mixed_6c": (17, 768), "Mixed_6d": (17, 768), "Mixed_6e": (17, 768),
          "Mixed_7a": (8, 1280), "Mixed_7b": (8, 2048), "Mixed_7c": (8, 2048)}
  assert {k: (v.shape[1], v.shape[3]) for k, v in blocks.items()} == want


def test_stem_conv_bn_relu_matches_numpy(state_dict, params):
  x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 11, 9))
  want = np_conv(state_dict, "Conv2d_1a_3x3", x)
  got = inception.BasicConv(32, 3, stride=2).apply({"params": params["Conv2d_1a_3x3"]},
                                                   jnp.asarray(x.transpose(0, 2, 3, 1), jnp.float32))
  np.testing.assert_allclose(np.asarray(got).transpose(0, 3, 1, 2), want, atol=2e-5 * np.abs(want).max())


@pytest.mark.parametrize("name, module, cin, side", [
    ("Mixed_5b", inception.InceptionA(32), 192, 6),
    ("Mixed_6a", inception.InceptionB(), 288, 7),
    ("Mixed_6e", inception.InceptionC(192), 768, 5),
    ("Mixed_7a", inception.InceptionD(), 768, 7),
    ("Mixed_7b", inception.InceptionE("avg"), 1280, 4),
    ("Mixed_7c", inception.InceptionE("max"), 2048, 4),
])
def test_blocks_match_numpy(state_dict, params, name, module, cin, side):
  # Inputs are post-ReLU activations (non-negative), as inside the network; the max pool of
  # E_2 pads with -inf, so a padded border never wins.
  x = np.random.default_rng(1).exponential(1.0, (2, cin, side, side + 1))
  want = np_block(state_dict, name, x)
  got = module.apply({"params": params[name]}, jnp.asarray(x.transpose(0, 2, 3, 1), jnp.float32))
  np.testing.assert_allclose(np.asarray(got).transpose(0, 3, 1, 2), want,
                             atol=2e-5 * np.abs(want).max())


def test_bilinear_resize_matches_pytorch():
  ref = np.load(FIXTURE)
  x = jnp.asarray(ref["resize_in"].transpose(0, 2, 3, 1))
  for key, size in (("resize_13x4", (13, 4)), ("resize_3x11", (3, 11))):
    got = np.asarray(resize.bilinear_resize(x, size)).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(got, ref[key], atol=1e-6)


def test_whole_network_matches_pytorch_fid(state_dict, params):
  """pytorch-fid's InceptionV3 (resize to 299, scaling to [-1, 1], FID blocks, pool3)
  under the same synthetic weights, 3 images of 32 x 32."""
  ref = np.load(FIXTURE)
  names = sorted(state_dict)
  assert list(ref["names"]) == names  # our spec is pytorch-fid's state dict ...
  assert list(ref["shapes"]) == [",".join(map(str, state_dict[k].shape)) for k in names]
  np.testing.assert_allclose(ref["sums"], [state_dict[k].astype(np.float64).sum() for k in names],
                             rtol=1e-12)  # ... and the weights are the same numbers
  model = inception.FIDInceptionV3()
  feats, blocks = jax.jit(lambda p, x: model.apply({"params": p}, x, return_blocks=True))(
      params, jnp.asarray(ref["images"].transpose(0, 2, 3, 1)))
  for key, block in (("block0", "maxpool1"), ("block1", "maxpool2"), ("block2", "Mixed_6e")):
    np.testing.assert_allclose(np.asarray(blocks[block]).mean((1, 2)), ref[key],
                               rtol=1e-4, atol=1e-4 * np.abs(ref[key]).max())
  np.testing.assert_allclose(feats, ref["pool3"], rtol=1e-4, atol=1e-4 * np.abs(ref["pool3"]).max())


def test_load_inception_errors_are_one_line(tmp_path, params):
  with pytest.raises(VarjaxError, match="Inception weights not found.*convert-inception"):
    inception.load_inception(str(tmp_path / "missing.msgpack"))
  store.save_params({"Conv2d_1a_3x3": params["Conv2d_1a_3x3"]}, str(tmp_path / "part.msgpack"))
  with pytest.raises(VarjaxError, match="part.msgpack"):
    inception.load_inception(str(tmp_path / "part.msgpack"))
  store.save_params(params, str(tmp_path / "ok.msgpack"))
  model, variables = inception.load_inception(str(tmp_path / "ok.msgpack"))
  np.testing.assert_array_equal(variables["params"]["Mixed_7c"]["branch_pool"]["conv"]["bias"],
                                params["Mixed_7c"]["branch_pool"]["conv"]["bias"])


def test_convert_command_then_fid_network(state_dict, tmp_path):
  """The user path: the state dict (here synthetic, as .npz) -> `varjax eval
  convert-inception` -> the `fid` feature network, which equals pytorch-fid's pool3."""
  from conftest import run_varjax
  from varjax.eval import features
  np.savez(tmp_path / "pt_inception.npz", **state_dict)
  out = tmp_path / "inception.msgpack"
  result = run_varjax("eval", "convert-inception", "--checkpoint",
                      str(tmp_path / "pt_inception.npz"), "--out", str(out))
  assert result.returncode == 0, result.stderr
  assert "21,768,352 parameters" in result.stdout
  net = features.load_feature_network(inception_weights=str(out))
  assert (net.name, net.metric, net.dim, net.resolution) == ("inception", "fid", 2048, None)
  ref = np.load(FIXTURE)
  feats = net.apply_fn(jnp.asarray(ref["images"].transpose(0, 2, 3, 1)))
  np.testing.assert_allclose(feats, ref["pool3"], rtol=1e-4, atol=1e-4 * np.abs(ref["pool3"]).max())
  result = run_varjax("eval", "convert-inception", "--checkpoint", str(tmp_path / "x.pth"),
                      "--out", str(out))
  assert result.returncode == 2 and result.stderr.count("\n") == 1
  assert "checkpoint not found" in result.stderr
