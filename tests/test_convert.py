"""PyTorch-layout VAR state dicts convert to our params, and our forward pass then equals a
NumPy transcription of the reference forward pass run directly on the PyTorch layout."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from varjax.errors import VarjaxError
from varjax.models import convert
from varjax.models.var import VAR


def torch_layout_state_dict(depth=2, c=48, heads=3, latent=8, vocab=29, classes=6,
                            pn=(1, 2, 3), shared=False, seed=0):
  """Random weights under the reference's names and shapes (Linear weights [out, in])."""
  rng = np.random.default_rng(seed)
  r = lambda *shape: rng.normal(scale=0.3, size=shape).astype(np.float32)
  length = sum(p * p for p in pn)
  sd = {
      "word_embed.weight": r(c, latent), "word_embed.bias": r(c),
      "class_emb.weight": r(classes + 1, c), "pos_start": r(1, pn[0] ** 2, c),
      "pos_1LC": r(1, length, c), "lvl_embed.weight": r(len(pn), c),
      "lvl_1L": np.zeros((1, length), np.int64),
      "attn_bias_for_masking": np.zeros((1, 1, length, length), np.float32),
      "head_nm.ada_lin.1.weight": r(2 * c, c), "head_nm.ada_lin.1.bias": r(2 * c),
      "head.weight": r(vocab, c), "head.bias": r(vocab),
  }
  if shared:
    sd["shared_ada_lin.1.weight"], sd["shared_ada_lin.1.bias"] = r(6 * c, c), r(6 * c)
  for i in range(depth):
    p = f"blocks.{i}."
    sd.update({
        p + "attn.mat_qkv.weight": r(3 * c, c), p + "attn.q_bias": r(c), p + "attn.v_bias": r(c),
        p + "attn.zero_k_bias": np.zeros(c, np.float32),
        p + "attn.scale_mul_1H11": r(1, heads, 1, 1) + math.log(4.0),
        p + "attn.proj.weight": r(c, c), p + "attn.proj.bias": r(c),
        p + "ffn.fc1.weight": r(4 * c, c), p + "ffn.fc1.bias": r(4 * c),
        p + "ffn.fc2.weight": r(c, 4 * c), p + "ffn.fc2.bias": r(c),
    })
    if shared:
      sd[p + "ada_gss"] = r(1, 1, 6, c)
    else:
      sd[p + "ada_lin.1.weight"], sd[p + "ada_lin.1.bias"] = r(6 * c, c), r(6 * c)
  return sd


def reference_forward(sd, labels, x, pn, heads):
  """The reference VAR forward (eval mode) in float64 NumPy on the PyTorch layout."""
  sd = {k: v.astype(np.float64) for k, v in sd.items()}
  lin = lambda h, name: h @ sd[name + ".weight"].T + sd[name + ".bias"]
  silu = lambda z: z / (1 + np.exp(-z))
  ln = lambda z: (z - z.mean(-1, keepdims=True)) / np.sqrt(z.var(-1, keepdims=True) + 1e-6)
  gelu = lambda z: 0.5 * z * (1 + np.tanh(np.sqrt(2 / np.pi) * (z + 0.044715 * z ** 3)))
  normalize = lambda z: z / np.maximum(np.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
  c = sd["word_embed.weight"].shape[0]
  b = len(labels)
  ids = np.repeat(np.arange(len(pn)), [p * p for p in pn])
  cond = sd["class_emb.weight"][labels]
  h = np.concatenate([cond[:, None] + sd["pos_start"][0], lin(x, "word_embed")], 1)
  h = h + sd["lvl_embed.weight"][ids] + sd["pos_1LC"][0]
  allowed = ids[None, :] <= ids[:, None]
  depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
  for i in range(depth):
    p = f"blocks.{i}."
    if "shared_ada_lin.1.weight" in sd:
      ada = sd[p + "ada_gss"][0, 0] + lin(silu(cond), "shared_ada_lin.1").reshape(b, 6, c)
    else:
      ada = lin(silu(cond), p + "ada_lin.1").reshape(b, 6, c)
    g1, g2, s1, s2, t1, t2 = (ada[:, k][:, None] for k in range(6))
    a = ln(h) * (1 + s1) + t1
    bias = np.concatenate([sd[p + "attn.q_bias"], sd[p + "attn.zero_k_bias"],
                           sd[p + "attn.v_bias"]])
    qkv = (a @ sd[p + "attn.mat_qkv.weight"].T + bias).reshape(b, -1, 3, heads, c // heads)
    scale = np.exp(np.minimum(sd[p + "attn.scale_mul_1H11"].reshape(heads), np.log(100)))
    q = normalize(qkv[:, :, 0]) * scale[:, None]
    k = normalize(qkv[:, :, 1])
    s = np.einsum("bqhk,bthk->bhqt", q, k)
    s = np.where(allowed, s, -np.inf)
    w = np.exp(s - s.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    o = np.einsum("bhqt,bthk->bqhk", w, qkv[:, :, 2]).reshape(b, -1, c)
    h = h + lin(o, p + "attn.proj") * g1
    f = lin(gelu(lin(ln(h) * (1 + s2) + t2, p + "ffn.fc1")), p + "ffn.fc2")
    h = h + f * g2
  ss = lin(silu(cond), "head_nm.ada_lin.1").reshape(b, 2, c)
  return lin(ln(h) * (1 + ss[:, 0:1]) + ss[:, 1:2], "head")


@pytest.mark.parametrize("shared, pn", [(False, (1, 2, 3)), (True, (1, 2, 4))])
def test_converted_var_matches_reference_forward(shared, pn, tmp_path):
  sd = torch_layout_state_dict(pn=pn, shared=shared)
  np.savez(tmp_path / "sd.npz", **sd)
  cfg, params = convert.convert_var(convert.load_state_dict(str(tmp_path / "sd.npz")), pn)
  assert (cfg.depth, cfg.resolved_width, cfg.resolved_heads, cfg.vocab_size,
          cfg.num_classes, cfg.shared_aln) == (2, 48, 3, 29, 6, shared)
  rng = np.random.default_rng(1)
  labels = np.array([0, 5, 6])  # 6 is the null class
  x = rng.normal(size=(3, cfg.num_tokens - 1, 8)).astype(np.float32)
  ours = VAR(cfg).apply(params, jnp.asarray(labels), jnp.asarray(x))
  want = reference_forward(sd, labels, x.astype(np.float64), pn, heads=3)
  np.testing.assert_allclose(ours, want, atol=2e-5 * np.abs(want).max())


def test_bad_checkpoints_fail_clearly(tmp_path):
  sd = torch_layout_state_dict()
  with pytest.raises(VarjaxError, match="has 14 positions; schedule .* has 30 tokens"):
    convert.convert_var(sd, (1, 2, 3, 4))
  with pytest.raises(VarjaxError, match="not a VAR state dict"):
    convert.convert_var({"foo.weight": np.zeros(3)})
  with pytest.raises(VarjaxError, match="checkpoint not found"):
    convert.load_state_dict(str(tmp_path / "missing.pth"))


@pytest.mark.parametrize("extra", ["blocks.0.attn.extra.weight", "ema.head.weight",
                                   "blocks.1.ada_gss"])  # ada_gss: only with shared_aln
def test_var_leftover_weights_are_refused_like_vqvae(extra):
  sd = torch_layout_state_dict()
  convert.convert_var(sd, (1, 2, 3))  # every weight, and the reference's buffers, find a place
  with pytest.raises(VarjaxError, match=f"1 checkpoint weights have no place in this VAR "
                                        f"config, e.g. {extra}"):
    convert.convert_var({**sd, extra: np.zeros(3, np.float32)}, (1, 2, 3))


def test_var_missing_weight_is_one_error_naming_it():
  sd = torch_layout_state_dict()
  del sd["blocks.1.ffn.fc2.bias"]
  with pytest.raises(VarjaxError, match="checkpoint has no blocks.1.ffn.fc2.bias"):
    convert.convert_var(sd, (1, 2, 3))


def torch_layout_vqvae(cfg, seed=0):
  """Random weights under the reference VQVAE's names (taming's Encoder/Decoder), written
  from its module structure, independently of our parameter tree."""
  rng = np.random.default_rng(seed)
  sd = {}
  def conv(name, cin, cout, k):
    sd[name + ".weight"] = rng.normal(scale=0.1, size=(cout, cin, k, k)).astype(np.float32)
    sd[name + ".bias"] = rng.normal(scale=0.1, size=cout).astype(np.float32)
  def norm(name, ch):
    sd[name + ".weight"] = 1 + rng.normal(scale=0.1, size=ch).astype(np.float32)
    sd[name + ".bias"] = rng.normal(scale=0.1, size=ch).astype(np.float32)
  def resnet(name, cin, cout):
    norm(name + ".norm1", cin), conv(name + ".conv1", cin, cout, 3)
    norm(name + ".norm2", cout), conv(name + ".conv2", cout, cout, 3)
    if cin != cout:
      conv(name + ".nin_shortcut", cin, cout, 1)
  def attn(name, ch):
    norm(name + ".norm", ch), conv(name + ".qkv", ch, 3 * ch, 1), conv(name + ".proj_out", ch, ch, 1)
  levels, z = len(cfg.ch_mult), cfg.latent_channels
  conv("encoder.conv_in", 3, cfg.ch, 3)
  cin = cfg.ch
  for lv, m in enumerate(cfg.ch_mult):
    for i in range(cfg.num_res_blocks):
      resnet(f"encoder.down.{lv}.block.{i}", cin, cfg.ch * m)
      cin = cfg.ch * m
      if lv == levels - 1 and cfg.using_sa:
        attn(f"encoder.down.{lv}.attn.{i}", cin)
    if lv != levels - 1:
      conv(f"encoder.down.{lv}.downsample.conv", cin, cin, 3)
  for prefix in ("encoder", "decoder"):
    top = cfg.ch * cfg.ch_mult[-1]
    resnet(f"{prefix}.mid.block_1", top, top), resnet(f"{prefix}.mid.block_2", top, top)
    if cfg.using_mid_sa:
      attn(f"{prefix}.mid.attn_1", top)
  norm("encoder.norm_out", cin), conv("encoder.conv_out", cin, z, 3)
  conv("decoder.conv_in", z, cfg.ch * cfg.ch_mult[-1], 3)
  cin = cfg.ch * cfg.ch_mult[-1]
  for lv in reversed(range(levels)):
    for i in range(cfg.num_res_blocks + 1):
      resnet(f"decoder.up.{lv}.block.{i}", cin, cfg.ch * cfg.ch_mult[lv])
      cin = cfg.ch * cfg.ch_mult[lv]
      if lv == levels - 1 and cfg.using_sa:
        attn(f"decoder.up.{lv}.attn.{i}", cin)
    if lv != 0:
      conv(f"decoder.up.{lv}.upsample.conv", cin, cin, 3)
  norm("decoder.norm_out", cin), conv("decoder.conv_out", cin, 3, 3)
  conv("quant_conv", z, z, 3), conv("post_quant_conv", z, z, 3)
  sd["quantize.embedding.weight"] = rng.normal(size=(cfg.vocab_size, z)).astype(np.float32)
  for k in range(cfg.share_quant_resi):
    conv(f"quantize.quant_resi.qresi_ls.{k}", z, z, 3)
  sd["quantize.ema_vocab_hit_SV"] = np.zeros((4, cfg.vocab_size), np.float32)
  return sd


def _torch_conv2d(x_CHW, w_OIHW, b, stride=1, pad=(1, 1, 1, 1)):
  """PyTorch's conv2d (cross-correlation) written out; pad = (top, bottom, left, right)."""
  x = np.pad(x_CHW, ((0, 0), pad[:2], pad[2:]))
  o, _, kh, kw = w_OIHW.shape
  hout = (x.shape[1] - kh) // stride + 1
  wout = (x.shape[2] - kw) // stride + 1
  out = np.zeros((o, hout, wout))
  for i in range(hout):
    for j in range(wout):
      patch = x[:, i * stride:i * stride + kh, j * stride:j * stride + kw]
      out[:, i, j] = np.einsum("ihw,oihw->o", patch, w_OIHW) + b
  return out


def test_converted_vqvae_uses_every_weight_and_matches_torch_convs():
  from varjax.config import TokenizerConfig
  from varjax.models import vqvae
  cfg = TokenizerConfig(ch=16, ch_mult=(1, 2), num_res_blocks=1, vocab_size=11,
                        latent_channels=4, using_sa=True, using_mid_sa=True)
  sd = torch_layout_vqvae(cfg)
  params = convert.convert_vqvae(sd, cfg, (1, 2, 4))
  model = vqvae.build(cfg, (1, 2, 4))
  img = np.random.default_rng(3).uniform(-1, 1, size=(1, 8, 8, 3)).astype(np.float32)
  ours = model.apply({"params": params}, jnp.asarray(img), method=vqvae.VQVAE.encode)
  assert ours.shape == (1, 4, 4, 4)
  # The encoder's conv_in and the first downsampling conv, written out on the torch layout.
  x = img[0].transpose(2, 0, 1).astype(np.float64)
  first = _torch_conv2d(x, sd["encoder.conv_in.weight"], sd["encoder.conv_in.bias"])
  got = vqvae.conv3x3(16).apply({"params": params["encoder"]["conv_in"]}, jnp.asarray(img))
  np.testing.assert_allclose(np.asarray(got)[0].transpose(2, 0, 1), first, atol=1e-4)
  down = _torch_conv2d(first, sd["encoder.down.0.downsample.conv.weight"],
                       sd["encoder.down.0.downsample.conv.bias"], stride=2, pad=(0, 1, 0, 1))
  w = jnp.asarray(params["encoder"]["down0_downsample"]["conv"]["kernel"])
  b = jnp.asarray(params["encoder"]["down0_downsample"]["conv"]["bias"])
  got = vqvae.Downsample().apply({"params": {"conv": {"kernel": w, "bias": b}}},
                                 jnp.asarray(first.transpose(1, 2, 0)[None], jnp.float32))
  np.testing.assert_allclose(np.asarray(got)[0].transpose(2, 0, 1), down, atol=1e-4)
  # A weight the config has no place for is an error, not silently dropped.
  with pytest.raises(VarjaxError, match="no place"):
    convert.convert_vqvae({**sd, "encoder.extra.weight": np.zeros(3)}, cfg, (1, 2, 4))
  with pytest.raises(VarjaxError, match="has no"):
    convert.convert_vqvae({k: v for k, v in sd.items() if "conv_out" not in k}, cfg, (1, 2, 4))
