"""VAR's multi-scale VQ-VAE: quantiser identities, teacher forcing, sampling steps, shapes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from varjax.config import TokenizerConfig
from varjax.errors import ConfigError
from varjax.models import vqvae
from varjax.models.resize import area_resize
from varjax.models.vqvae import VQVAE

PATCH_NUMS = (1, 2, 3, 4)
# 8 px images, 2x downsampling -> 4 x 4 latent; 16 channels exercise the gcd GroupNorm rule.
TINY = TokenizerConfig(ch=16, ch_mult=(1, 2), num_res_blocks=1, vocab_size=64,
                       latent_channels=8, using_sa=True, using_mid_sa=True)


@pytest.fixture(scope="module")
def tiny():
  """(model, params, images): codebook redrawn at the latent's scale so codes differ."""
  model = vqvae.build(TINY, PATCH_NUMS)
  img = jax.random.uniform(jax.random.key(1), (3, 8, 8, 3), minval=-1, maxval=1)
  params = vqvae.init_params(model, 0, 8)
  f = jax.jit(lambda p, x: model.apply({"params": p}, x, method=VQVAE.encode))(params, img)
  codes = jax.random.normal(jax.random.key(2), (TINY.vocab_size, TINY.latent_channels))
  params = {**params, "quantize": {**params["quantize"],
                                   "embedding": codes * jnp.std(f)}}
  return model, {"params": params}, img


def test_phi_index_follows_vars_ticks():
  assert [vqvae.phi_index(si, 10, 4) for si in range(10)] == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]
  assert vqvae.phi_index(0, 1, 4) == 0  # one scale: no division by zero
  assert [vqvae.phi_index(si, 4, 1) for si in range(4)] == [0] * 4


def test_group_count():
  assert [vqvae.group_count(c) for c in (160, 320, 640, 16, 48, 3)] == [32, 32, 32, 16, 16, 1]


def test_indices_round_trip_to_the_quantised_latent(tiny):
  model, variables, img = tiny
  recon, aux = jax.jit(model.apply)(variables, img)
  assert recon.shape == img.shape
  indices = model.apply(variables, img, method=VQVAE.img_to_indices)
  assert [i.shape for i in indices] == [(3, p, p) for p in PATCH_NUMS]
  assert all(i.dtype == jnp.int32 for i in indices)
  for a, b in zip(indices, aux["indices"]):
    np.testing.assert_array_equal(a, b)
  f_hat = model.apply(variables, indices, method=VQVAE.indices_to_fhat)
  np.testing.assert_allclose(f_hat, aux["f_hat"], atol=1e-5)
  assert float(jnp.abs(f_hat).mean()) > 1e-3  # not trivially zero
  # The straight-through forward value is f_hat itself.
  np.testing.assert_allclose(model.apply(variables, f_hat, method=VQVAE.fhat_to_img),
                             jnp.clip(recon, -1, 1), atol=1e-5)
  assert aux["counts_SxV"].shape == (4, TINY.vocab_size)
  np.testing.assert_array_equal(aux["counts_SxV"].sum(-1), [3 * p * p for p in PATCH_NUMS])
  assert aux["usage_S"].shape == (4,) and float(aux["usage_S"].max()) <= 1


def test_teacher_forcing_input_and_sampling_steps_agree(tiny):
  model, variables, img = tiny
  indices = model.apply(variables, img, method=VQVAE.img_to_indices)
  C, L = TINY.latent_channels, sum(p * p for p in PATCH_NUMS)
  var_input = model.apply(variables, indices, method=VQVAE.indices_to_var_input)
  assert var_input.shape == (3, L - 1, C) and var_input.dtype == jnp.float32

  # First chunk: the scale-0 reconstruction area-resized to the 2 x 2 grid.
  first = model.apply(variables, indices[:1], method=VQVAE.indices_to_fhat)
  np.testing.assert_allclose(var_input[:, :4], area_resize(first, 2).reshape(3, 4, C),
                             atol=1e-5)

  # The sampling loop rebuilds both the teacher-forcing input and the final f_hat.
  f_hat, chunks = jnp.zeros((3, 4, 4, C)), []
  for si, idx in enumerate(indices):
    h = model.apply(variables, idx, method=VQVAE.embed)
    f_hat, nxt = model.apply(variables, si, f_hat, h, method=VQVAE.next_autoregressive_input)
    if si < len(PATCH_NUMS) - 1:
      pn = PATCH_NUMS[si + 1]
      assert nxt.shape == (3, pn, pn, C)
      chunks.append(nxt.reshape(3, pn * pn, C))
    else:
      np.testing.assert_array_equal(nxt, f_hat)
  np.testing.assert_allclose(jnp.concatenate(chunks, 1), var_input, atol=1e-5)
  np.testing.assert_allclose(
      f_hat, model.apply(variables, indices, method=VQVAE.indices_to_fhat), atol=1e-5)


def test_straight_through_gradient_and_codebook_gradient():
  quant = vqvae.MultiScaleQuantizer(16, 4, PATCH_NUMS)
  f = jax.random.normal(jax.random.key(0), (2, 4, 4, 4))
  params = jax.jit(quant.init)(jax.random.key(1, impl="rbg"), f)
  w = jax.random.normal(jax.random.key(2), f.shape)

  def out(f):
    f_hat_st, _, _, _ = quant.apply(params, f)
    return jnp.sum(f_hat_st * w)

  np.testing.assert_allclose(jax.jit(jax.grad(out))(f), w, rtol=1e-6)  # identity Jacobian

  def vq_loss(p, f):
    return quant.apply(p, f)[1]

  g_params, g_f = jax.jit(jax.grad(vq_loss, argnums=(0, 1)))(params, f)
  assert float(jnp.abs(g_params["params"]["embedding"]).sum()) > 0
  assert float(jnp.abs(g_params["params"]["phi0"]["conv"]["kernel"]).sum()) > 0
  assert float(jnp.abs(g_f).sum()) > 0  # commitment term reaches the encoder


def _reference_param_count(ch, ch_mult, nrb, V, z, K=4):
  """VAR's PyTorch VQVAE parameter count, module by module (basic_vae.py, quant.py)."""
  conv = lambda k, i, o: k * k * i * o + o
  gn = lambda c: 2 * c
  res = lambda i, o: gn(i) + conv(3, i, o) + gn(o) + conv(3, o, o) + (conv(1, i, o) if i != o else 0)
  attn = lambda c: gn(c) + conv(1, c, 3 * c) + conv(1, c, c)
  n, top = len(ch_mult), ch * ch_mult[-1]
  mid = 2 * res(top, top) + attn(top)
  enc, c_in = conv(3, 3, ch), ch
  for lvl, m in enumerate(ch_mult):
    for _ in range(nrb):
      enc += res(c_in, ch * m) + (attn(ch * m) if lvl == n - 1 else 0)
      c_in = ch * m
    enc += conv(3, c_in, c_in) if lvl != n - 1 else 0
  enc += mid + gn(top) + conv(3, top, z)
  dec, c_in = conv(3, z, top) + mid, top
  for lvl in reversed(range(n)):
    for _ in range(nrb + 1):
      dec += res(c_in, ch * ch_mult[lvl]) + (attn(ch * ch_mult[lvl]) if lvl == n - 1 else 0)
      c_in = ch * ch_mult[lvl]
    dec += conv(3, c_in, c_in) if lvl != 0 else 0
  dec += gn(c_in) + conv(3, c_in, 3)
  quant = V * z + K * conv(3, z, z)
  return enc + dec + quant + 2 * conv(3, z, z)


def test_var_config_parameter_shapes():
  cfg = TokenizerConfig()  # VAR's vae_ch160v4096z32
  model = vqvae.build(cfg, (1, 2, 3, 4, 5, 6, 8, 10, 13, 16))
  shapes = jax.eval_shape(lambda: vqvae.init_params(model, 0, 256))
  count = vqvae.count_params(shapes)
  assert count == _reference_param_count(160, (1, 1, 2, 2, 4), 2, 4096, 32)
  # The official VQVAE's count, measured with torch in tests/data/var_reference.json.
  assert count == 108_948_355
  assert shapes["quantize"]["embedding"].shape == (4096, 32)
  assert shapes["encoder"]["down4_attn0"]["qkv"]["kernel"].shape == (1, 1, 640, 1920)


def test_wrong_image_size_names_both_numbers(tiny):
  model, variables, _ = tiny
  with pytest.raises(ConfigError, match=r"wrong image size for the schedule.*16x16 px.*8x8 "
                                        r"latent.*ends at 4x4 \(needs 8 px"):
    model.apply(variables, jnp.zeros((1, 16, 16, 3)), method=VQVAE.img_to_indices)


def test_presets_are_valid_configs():
  from varjax.train.tokenizer import PRESET_DATA
  assert set(PRESET_DATA) == set(vqvae.TOKENIZER_PRESETS)
  for name, (_, resolution, patch_nums) in PRESET_DATA.items():
    cfg = TokenizerConfig(**vqvae.tokenizer_preset(name))
    vqvae.check_image_size((1, resolution, resolution, 3), cfg, patch_nums)
  with pytest.raises(ConfigError, match="unknown preset"):
    vqvae.tokenizer_preset("nope")
