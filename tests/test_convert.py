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
