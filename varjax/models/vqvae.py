"""VAR's multi-scale residual VQ-VAE (FoundationVision/VAR models/vqvae.py) in flax.linen.

Conventions: NHWC; B batch, H W image side, h w latent side (= patch_nums[-1]), C latent
channels (Cvae), V vocabulary, S number of scales, pn the grid side of one scale, L the
number of tokens sum(pn^2). Images are float32 in [-1, 1].

Encoder and decoder are taming/LDM's (ResnetBlocks with GroupNorm + swish, single-head
self-attention at the lowest resolution, conv downsampling with PyTorch's (0, 1, 0, 1)
padding, nearest-2x + conv upsampling). Between them sits VAR's quantiser: scale by
scale the residual is area-downsampled to pn x pn, snapped to the nearest code (L2),
bicubic-upsampled back to h x w, refined by Phi(h) = (1 - r) h + r conv3x3(h) and
subtracted. The resizes are PyTorch-exact (varjax.models.resize) so that token pyramids
match VAR's.

All public methods are meant for `model.apply(params, ..., method=VQVAE.<name>)`.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from varjax import scales
from varjax.config import TokenizerConfig
from varjax.errors import ConfigError
from varjax.models.resize import area_resize, bicubic_resize

sg = jax.lax.stop_gradient

# Named tokenizers; the schedule is chosen separately (model.patch_nums, see scales.py).
# The small ones are sized to train in minutes on a 2-core CPU (see varjax.train.tokenizer).
TOKENIZER_PRESETS: dict[str, dict[str, Any]] = {
    # VAR's released vae_ch160v4096z32: 256 px -> 16 x 16, schedule scales.SCHEDULES["256"].
    "vqvae-var": dict(ch=160, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, vocab_size=4096,
                      latent_channels=32),
    # 32 px -> 4 x 4 (schedule (1, 2, 3, 4)), 8x downsampling.
    "vqvae-tiny32": dict(ch=16, ch_mult=(1, 2, 4, 4), num_res_blocks=1, vocab_size=512,
                         latent_channels=32, using_sa=False, using_mid_sa=True),
    # 64 px -> 8 x 8 (schedule (1, 2, 3, 4, 6, 8)), 8x downsampling.
    "vqvae-tiny64": dict(ch=16, ch_mult=(1, 2, 4, 4), num_res_blocks=1, vocab_size=1024,
                         latent_channels=32, using_sa=False, using_mid_sa=True),
}


def tokenizer_preset(name: str) -> dict[str, Any]:
  if name not in TOKENIZER_PRESETS:
    raise ConfigError("tokenizer", f"unknown preset {name!r}; presets are "
                      f"{', '.join(TOKENIZER_PRESETS)}")
  return dict(TOKENIZER_PRESETS[name])


def phi_index(si: int, num_scales: int, num_phi: int) -> int:
  """Which of the `num_phi` shared Phi convs scale `si` uses: the tick nearest si / (S - 1).

  VAR's PhiPartiallyShared: ticks linspace(1/3K, 1 - 1/3K, K) for K = 4 (else 1/2K);
  S = 10, K = 4 gives [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]. With one scale VAR divides by zero;
  we place it at 0.
  """
  k = num_phi
  margin = 1 / 3 / k if k == 4 else 1 / 2 / k
  ticks = np.linspace(margin, 1 - margin, k)
  at = si / (num_scales - 1) if num_scales > 1 else 0.0
  return int(np.argmin(np.abs(ticks - at)))


def group_count(channels: int) -> int:
  """GroupNorm groups: 32 as in VAR when it divides the channels, else gcd(32, channels).

  Tiny test configs have widths such as 16 or 48 that 32 does not divide; the gcd keeps
  every group the same size (min(32, C) would not divide 48) and equals 32 for VAR's.
  """
  return math.gcd(32, channels)


def group_norm(x_BxHxWxC: jax.Array, name: str | None = None) -> jax.Array:
  """GroupNorm(eps 1e-6) created inside the calling compact module."""
  return nn.GroupNorm(num_groups=group_count(x_BxHxWxC.shape[-1]), epsilon=1e-6,
                      name=name)(x_BxHxWxC)


def conv3x3(features: int, name: str | None = None) -> nn.Conv:
  return nn.Conv(features, (3, 3), padding=((1, 1), (1, 1)), name=name)


class ResnetBlock(nn.Module):
  out_channels: int
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x_BxHxWxC, train: bool = False):
    h = conv3x3(self.out_channels)(nn.swish(group_norm(x_BxHxWxC)))
    h = nn.swish(group_norm(h))
    h = nn.Dropout(self.dropout, deterministic=not train or self.dropout <= 1e-6)(h)
    h = conv3x3(self.out_channels)(h)
    if x_BxHxWxC.shape[-1] != self.out_channels:
      x_BxHxWxC = nn.Conv(self.out_channels, (1, 1), name="nin_shortcut")(x_BxHxWxC)
    return x_BxHxWxC + h


class AttnBlock(nn.Module):
  """Single-head self-attention over the h * w positions, residual."""

  @nn.compact
  def __call__(self, x_BxHxWxC):
    B, H, W, C = x_BxHxWxC.shape
    qkv = nn.Conv(3 * C, (1, 1), name="qkv")(group_norm(x_BxHxWxC)).reshape(B, H * W, 3, C)
    q_BxNxC, k_BxNxC, v_BxNxC = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    w_BxNxN = jax.nn.softmax(jnp.einsum("bnc,bmc->bnm", q_BxNxC, k_BxNxC) * C ** -0.5, axis=-1)
    h = jnp.einsum("bnm,bmc->bnc", w_BxNxN, v_BxNxC).reshape(B, H, W, C)
    return x_BxHxWxC + nn.Conv(C, (1, 1), name="proj_out")(h)


class Downsample(nn.Module):
  @nn.compact
  def __call__(self, x_BxHxWxC):
    # PyTorch's Downsample2x pads right and bottom only, then a VALID stride-2 conv.
    x = jnp.pad(x_BxHxWxC, ((0, 0), (0, 1), (0, 1), (0, 0)))
    return nn.Conv(x.shape[-1], (3, 3), strides=(2, 2), padding="VALID", name="conv")(x)


class Upsample(nn.Module):
  @nn.compact
  def __call__(self, x_BxHxWxC):
    x = jnp.repeat(jnp.repeat(x_BxHxWxC, 2, axis=1), 2, axis=2)  # nearest 2x
    return conv3x3(x.shape[-1], name="conv")(x)


class Encoder(nn.Module):
  cfg: TokenizerConfig

  @nn.compact
  def __call__(self, img_BxHxWx3, train: bool = False):
    cfg = self.cfg
    h = conv3x3(cfg.ch, name="conv_in")(img_BxHxWx3)
    last = len(cfg.ch_mult) - 1
    for level, mult in enumerate(cfg.ch_mult):
      for i in range(cfg.num_res_blocks):
        h = ResnetBlock(cfg.ch * mult, cfg.dropout, name=f"down{level}_block{i}")(h, train)
        if level == last and cfg.using_sa:
          h = AttnBlock(name=f"down{level}_attn{i}")(h)
      if level != last:
        h = Downsample(name=f"down{level}_downsample")(h)
    width = h.shape[-1]
    h = ResnetBlock(width, cfg.dropout, name="mid_block1")(h, train)
    if cfg.using_mid_sa:
      h = AttnBlock(name="mid_attn")(h)
    h = ResnetBlock(width, cfg.dropout, name="mid_block2")(h, train)
    h = nn.swish(group_norm(h, "norm_out"))
    return conv3x3(cfg.latent_channels, name="conv_out")(h)


class Decoder(nn.Module):
  cfg: TokenizerConfig

  @nn.compact
  def __call__(self, z_BxhxwxC, train: bool = False):
    cfg = self.cfg
    last = len(cfg.ch_mult) - 1
    width = cfg.ch * cfg.ch_mult[last]
    h = conv3x3(width, name="conv_in")(z_BxhxwxC)
    h = ResnetBlock(width, cfg.dropout, name="mid_block1")(h, train)
    if cfg.using_mid_sa:
      h = AttnBlock(name="mid_attn")(h)
    h = ResnetBlock(width, cfg.dropout, name="mid_block2")(h, train)
    for level in reversed(range(len(cfg.ch_mult))):
      for i in range(cfg.num_res_blocks + 1):
        h = ResnetBlock(cfg.ch * cfg.ch_mult[level], cfg.dropout,
                        name=f"up{level}_block{i}")(h, train)
        if level == last and cfg.using_sa:
          h = AttnBlock(name=f"up{level}_attn{i}")(h)
      if level != 0:
        h = Upsample(name=f"up{level}_upsample")(h)
    h = nn.swish(group_norm(h, "norm_out"))
    return conv3x3(3, name="conv_out")(h)


class Phi(nn.Module):
  """Phi(h) = (1 - r) h + r conv3x3(h): the quantiser's per-scale refinement."""
  ratio: float

  @nn.compact
  def __call__(self, h_BxhxwxC):
    conv = conv3x3(h_BxhxwxC.shape[-1], name="conv")(h_BxhxwxC)
    return (1 - self.ratio) * h_BxhxwxC + self.ratio * conv


class MultiScaleQuantizer(nn.Module):
  """VAR's VectorQuantizer2 (L2 nearest code, no z-normalisation)."""
  vocab_size: int
  channels: int
  patch_nums: tuple[int, ...]
  beta: float = 0.25
  quant_resi: float = 0.5
  share_quant_resi: int = 4

  def setup(self):
    V = self.vocab_size
    # VAR's eini < 0 branch: uniform(-1/V, 1/V); dead-code restarts soon replace it with
    # encoder outputs during training.
    self.embedding = self.param(
        "embedding", lambda key, shape: jax.random.uniform(key, shape, jnp.float32, -1 / V,
                                                           1 / V), (V, self.channels))
    # VAR uses an identity instead of Phi when the ratio is ~0.
    self.phis = ([Phi(self.quant_resi, name=f"phi{k}") for k in range(self.share_quant_resi)]
                 if abs(self.quant_resi) > 1e-6 else [])

  @property
  def side(self) -> int:
    return self.patch_nums[-1]

  def phi(self, si: int, h_BxhxwxC: jax.Array) -> jax.Array:
    if not self.phis:
      return h_BxhxwxC
    return self.phis[phi_index(si, len(self.patch_nums), len(self.phis))](h_BxhxwxC)

  def embed(self, idx):
    """int[...] -> float32[..., C]."""
    return jnp.take(self.embedding, idx, axis=0)

  def upsample_embedding(self, si: int, idx_Bxpnxpn: jax.Array) -> jax.Array:
    """Phi(bicubic_up(embed(idx))): scale si's contribution to f_hat, [B, h, w, C]."""
    return self.phi(si, bicubic_resize(self.embed(idx_Bxpnxpn), self.side))

  def nearest_code(self, rest_BxpnxpnxC: jax.Array) -> jax.Array:
    codes_VxC = sg(self.embedding)
    rest = sg(rest_BxpnxpnxC)
    d = (jnp.sum(rest ** 2, -1, keepdims=True) + jnp.sum(codes_VxC ** 2, -1)
         - 2 * jnp.einsum("bijc,vc->bijv", rest, codes_VxC, precision=jax.lax.Precision.HIGHEST))
    return jnp.argmin(d, axis=-1).astype(jnp.int32)

  def __call__(self, f_BxhxwxC: jax.Array):
    """-> (f_hat straight-through [B, h, w, C], vq_loss, indices list, aux dict).

    aux: counts_SxV (code hits per scale in this batch), rest_NxC (the residual vectors
    that were quantised, all scales; candidates for dead-code restarts).
    """
    S = len(self.patch_nums)
    f_nograd = sg(f_BxhxwxC)
    f_rest, f_hat = f_nograd, jnp.zeros_like(f_nograd)
    loss, indices, counts, rests = 0.0, [], [], []
    for si, pn in enumerate(self.patch_nums):
      rest = area_resize(f_rest, pn)
      idx = self.nearest_code(rest)
      h = self.upsample_embedding(si, idx)
      f_hat = f_hat + h
      f_rest = f_rest - sg(h)
      # Commitment (to the encoder) + codebook/Phi term, as VAR computes it per scale.
      loss = loss + self.beta * jnp.mean((sg(f_hat) - f_BxhxwxC) ** 2) + jnp.mean(
          (f_hat - f_nograd) ** 2)
      indices.append(idx)
      counts.append(jnp.bincount(idx.reshape(-1), length=self.vocab_size))
      rests.append(rest.reshape(-1, rest.shape[-1]))
    f_hat_st = f_BxhxwxC + sg(f_hat - f_BxhxwxC)  # straight-through to the encoder
    aux = {"counts_SxV": jnp.stack(counts), "rest_NxC": jnp.concatenate(rests),
           "f_hat": f_hat}
    return f_hat_st, loss / S, indices, aux

  def indices_to_fhat(self, indices: Sequence[jax.Array]) -> jax.Array:
    f_hat = 0.0
    for si, idx in enumerate(indices):
      f_hat = f_hat + self.upsample_embedding(si, idx)
    return f_hat

  def indices_to_var_input(self, indices: Sequence[jax.Array]) -> jax.Array:
    B, C = indices[0].shape[0], self.channels
    f_hat = jnp.zeros((B, self.side, self.side, C), jnp.float32)
    chunks = []
    for si in range(len(self.patch_nums) - 1):
      f_hat = f_hat + self.upsample_embedding(si, indices[si])
      pn = self.patch_nums[si + 1]
      chunks.append(area_resize(f_hat, pn).reshape(B, pn * pn, C))
    if not chunks:
      return jnp.zeros((B, 0, C), jnp.float32)
    return jnp.concatenate(chunks, axis=1)

  def next_autoregressive_input(self, si: int, f_hat_BxhxwxC: jax.Array,
                                h_BxpnxpnxC: jax.Array) -> tuple[jax.Array, jax.Array]:
    if si != len(self.patch_nums) - 1:
      f_hat = f_hat_BxhxwxC + self.phi(si, bicubic_resize(h_BxpnxpnxC, self.side))
      return f_hat, area_resize(f_hat, self.patch_nums[si + 1])
    f_hat = f_hat_BxhxwxC + self.phi(si, h_BxpnxpnxC)
    return f_hat, f_hat


class VQVAE(nn.Module):
  """Encoder -> quant_conv -> multi-scale VQ -> post_quant_conv -> decoder."""
  cfg: TokenizerConfig
  patch_nums: tuple[int, ...]

  def setup(self):
    cfg = self.cfg
    self.encoder = Encoder(cfg)
    self.decoder = Decoder(cfg)
    self.quant_conv = conv3x3(cfg.latent_channels)
    self.post_quant_conv = conv3x3(cfg.latent_channels)
    self.quantize = MultiScaleQuantizer(
        cfg.vocab_size, cfg.latent_channels, scales.validate(self.patch_nums), cfg.beta,
        cfg.quant_resi, cfg.share_quant_resi)

  def check_image(self, img_BxHxWx3: jax.Array) -> None:
    check_image_size(img_BxHxWx3.shape, self.cfg, self.patch_nums)

  def encode(self, img_BxHxWx3: jax.Array, train: bool = False) -> jax.Array:
    """[B, H, W, 3] in [-1, 1] -> f [B, h, w, C], the pre-quantisation latent."""
    self.check_image(img_BxHxWx3)
    return self.quant_conv(self.encoder(img_BxHxWx3, train))

  def decode(self, f_hat_BxhxwxC: jax.Array, train: bool = False) -> jax.Array:
    """f_hat -> image [B, H, W, 3], unclipped (training)."""
    return self.decoder(self.post_quant_conv(f_hat_BxhxwxC), train)

  def fhat_to_img(self, f_hat_BxhxwxC: jax.Array) -> jax.Array:
    """f_hat -> image [B, H, W, 3] clipped to [-1, 1]."""
    return jnp.clip(self.decode(f_hat_BxhxwxC), -1, 1)

  def img_to_indices(self, img_BxHxWx3: jax.Array) -> list[jax.Array]:
    """-> int32 [B, pn, pn] per scale."""
    _, _, indices, _ = self.quantize(self.encode(img_BxHxWx3))
    return indices

  def indices_to_fhat(self, indices: Sequence[jax.Array]) -> jax.Array:
    """int [B, pn, pn] per scale -> f_hat [B, h, w, C]."""
    return self.quantize.indices_to_fhat(indices)

  def indices_to_img(self, indices: Sequence[jax.Array]) -> jax.Array:
    return self.fhat_to_img(self.indices_to_fhat(indices))

  def indices_to_var_input(self, indices: Sequence[jax.Array]) -> jax.Array:
    """Teacher-forcing input of scales 1.. S-1: float32 [B, L - 1, C], row-major per scale."""
    return self.quantize.indices_to_var_input(indices)

  def next_autoregressive_input(self, si: int, f_hat_BxhxwxC: jax.Array,
                                h_BxpnxpnxC: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Sampling step: add scale si's embeddings h to f_hat; -> (f_hat, next scale's input).

    The input is f_hat area-resized to the next grid [B, pn', pn', C]; after the last
    scale both outputs are f_hat.
    """
    return self.quantize.next_autoregressive_input(si, f_hat_BxhxwxC, h_BxpnxpnxC)

  def embed(self, idx: jax.Array) -> jax.Array:
    """int [...] -> float32 [..., C]."""
    return self.quantize.embed(idx)

  def __call__(self, img_BxHxWx3: jax.Array, train: bool = False):
    """-> (reconstruction [B, H, W, 3] unclipped, aux).

    aux: vq_loss, indices (list of int32 [B, pn, pn]), counts_SxV, usage_S (fraction of
    the vocabulary hit per scale in this batch), rest_NxC, f (pre-quant latent), f_hat.
    """
    f = self.encode(img_BxHxWx3, train)
    f_hat_st, vq_loss, indices, aux = self.quantize(f)
    recon = self.decode(f_hat_st, train)
    aux = dict(aux, vq_loss=vq_loss, indices=indices, f=f,
               usage_S=jnp.mean(aux["counts_SxV"] > 0, axis=-1))
    return recon, aux


def check_image_size(shape: Sequence[int], cfg: TokenizerConfig,
                     patch_nums: Sequence[int]) -> None:
  """ConfigError unless a [B, H, W, 3] image gives a latent of side patch_nums[-1]."""
  if len(shape) != 4 or shape[-1] != 3:
    raise ConfigError("tokenizer", f"expected images [B, H, W, 3], got shape {tuple(shape)}")
  H, W = shape[1], shape[2]
  ds, last = cfg.downsample, patch_nums[-1]
  if H != W or H % ds or H // ds != last:
    raise ConfigError(
        "data.resolution", f"wrong image size for the schedule: {H}x{W} px images with "
        f"{ds}x downsampling give a {H / ds:g}x{W / ds:g} latent, but the schedule "
        f"{list(patch_nums)} ends at {last}x{last} (needs {last * ds} px images)")


def build(cfg: TokenizerConfig, patch_nums: Sequence[int]) -> VQVAE:
  return VQVAE(cfg, scales.validate(patch_nums))


def init_params(model: VQVAE, seed: int, resolution: int) -> Any:
  """Parameters for [1, resolution, resolution, 3] inputs.

  Jitted with the 'rbg' PRNG: XLA:CPU takes ~10 s to compile the threefry initialisers of
  even a tiny encoder (and eager init is slower still); rbg compiles in ~1 s.
  """
  image = jnp.zeros((1, resolution, resolution, 3), jnp.float32)
  return jax.jit(lambda r: model.init(r, image)["params"])(jax.random.key(seed, impl="rbg"))


def count_params(params: Any) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))
