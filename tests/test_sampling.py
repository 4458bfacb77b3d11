"""Scale-by-scale sampling through the KV cache against greedy decoding done the slow way:
the full masked forward pass re-run on the teacher-forced input of the tokens so far."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from test_var import random_params
from varjax import scales
from varjax.config import ModelConfig, TokenizerConfig
from varjax.errors import VarjaxError
from varjax.models import sampling, vqvae

PN = (1, 2, 3, 4)


@pytest.fixture(scope="module")
def models():
  tok_cfg = TokenizerConfig(ch=16, ch_mult=(1, 2), num_res_blocks=1, vocab_size=23,
                            latent_channels=8, using_sa=False)
  tokenizer = vqvae.build(tok_cfg, PN)
  tok_params = {"params": vqvae.init_params(tokenizer, 0, resolution=8)}
  cfg = ModelConfig(depth=2, width=64, heads=4, vocab_size=23, latent_channels=8,
                    num_classes=5, patch_nums=PN)
  model, params = random_params(cfg, noise=0.3)
  return model, params, tokenizer, tok_params


@pytest.mark.parametrize("cfg_scale", [0.0, 2.0])
def test_greedy_cached_sampling_equals_full_forward_decoding(models, cfg_scale):
  model, params, tokenizer, tok_params = models
  labels = jnp.array([0, 3, 4])
  protocol = sampling.SamplingProtocol(cfg=cfg_scale, top_k=1, top_p=0.0)
  pyramid, f_hat = sampling.sample_indices(model, params, tokenizer, tok_params, labels,
                                           jax.random.key(0), protocol)
  bounds = scales.boundaries(PN)
  forward = jax.jit(model.apply)
  chosen = [jnp.zeros((3, p, p), jnp.int32) for p in PN]  # later scales: placeholders
  for si, p in enumerate(PN):
    x = tokenizer.apply(tok_params, chosen, method=vqvae.VQVAE.indices_to_var_input)
    logits = forward(params, labels, x)
    if cfg_scale:
      t = cfg_scale * si / (len(PN) - 1)
      logits = (1 + t) * logits - t * forward(params, jnp.full_like(labels, 5), x)
    chosen[si] = jnp.argmax(logits[:, bounds[si]:bounds[si + 1]], -1).reshape(3, p, p)
    np.testing.assert_array_equal(pyramid[si], chosen[si])
  want = tokenizer.apply(tok_params, chosen, method=vqvae.VQVAE.indices_to_fhat)
  np.testing.assert_allclose(f_hat, want, atol=1e-5)


def test_sample_images_reproducible_and_checked(models):
  model, params, tokenizer, tok_params = models
  protocol = sampling.SamplingProtocol(cfg=1.5, top_k=10, top_p=0.9, seed=7)
  a = sampling.sample_images(model, params, tokenizer, tok_params, np.array([1, 2]), protocol)
  b = sampling.sample_images(model, params, tokenizer, tok_params, np.array([1, 2]), protocol)
  c = sampling.sample_images(model, params, tokenizer, tok_params, np.array([1, 2]), protocol,
                             batch_index=1)
  assert a.shape == (2, 8, 8, 3) and float(a.min()) >= 0 and float(a.max()) <= 1
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  with pytest.raises(VarjaxError, match="label 9 is out of range"):
    sampling.sample_images(model, params, tokenizer, tok_params, np.array([9]), protocol)
  with pytest.raises(VarjaxError, match="sampling.top_p"):
    sampling.SamplingProtocol(top_p=1.5)
