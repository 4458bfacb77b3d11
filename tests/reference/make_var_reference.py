"""Builds tests/data/var_reference.{npz,json}: outputs of the OFFICIAL PyTorch VAR code
(FoundationVision/VAR) on tiny models, for tests/test_reference_parity.py.

None of the official code is in this repository: it is imported at run time from a
checkout given by --var-repo. The fixture was made with

  official repo  FoundationVision/VAR @ 78b95394fc5896192e3a003e4b295f8ea743c48f
  torch 2.13.0+cpu, Python 3.11, NumPy 2.4

Regenerate:

  mkdir -p /tmp/VAR
  git -C <mirror-of-FoundationVision/VAR> archive 78b95394fc5896192e3a003e4b295f8ea743c48f \
      | tar -x -C /tmp/VAR          # or: git clone + git checkout that commit
  python3.11 -m venv /tmp/torchref && /tmp/torchref/bin/pip install torch==2.13.0 numpy
  /tmp/torchref/bin/python tests/reference/make_var_reference.py --var-repo /tmp/VAR

(`huggingface_hub`, which the official models/var.py imports only for its VARHF wrapper,
is stubbed if missing.) Runs in ~1 min on 2 CPU cores, needs ~1 GB of memory.

What is recorded (seeded; fp32, eval mode):
  * tokenizer: official VQVAE(vocab_size=37, z_channels=8, ch=32, v_patch_nums=(1,2,3,4),
    test_mode=True); its hard-coded ch_mult (1,1,2,2,4) makes 64 px images -> 4x4 latents.
    Weights: synthetic_weights.vae_weight (rebuilt by the test, not stored) except the
    codebook, stored as `vae/quantize.embedding.weight`; names/shapes as `vae_names`,
    `vae_shapes`, per-tensor float64 sums as `vae_sums`. For 3 random images in [-1, 1]:
    f = quant_conv(encoder(img)), img_to_idxBl, f_hat per scale
    (quantize.f_to_idxBl_or_fhat(to_fhat=True)), quantize.idxBl_to_var_input,
    decoder(post_quant_conv(f_hat)) unclipped and fhat_to_img (clipped), and the distance
    margin between the best and second-best code of every token.
  * transformer: official VAR(num_classes=5, depth=2, embed_dim=64, num_heads=2,
    patch_nums=(1,2,3,4), attn_l2_norm=True (as build_vae_var), no flash/fused kernels),
    shared_aln False (`var/`) and True (`var_shared/`): init_weights(init_std=-1) then
    Gaussian noise on every parameter (larger on the AdaLN biases and per-block ada_gss so
    that the gates are far from 0), state dicts stored as float32. Logits of
    var(label_B, var_input) with cond_drop_rate = 0 (the official forward draws
    torch.rand for label dropping unconditionally).
  * F.interpolate(mode='area') and mode='bicubic' (align_corners False) on NCHW arrays
    with non-divisible, up/down and rectangular sizes.
  * JSON: official parameter counts of VAR d16 / d20 (256 px defaults: V 4096, Cvae 32,
    1000 classes, attn_l2_norm) and of VQVAE(vocab_size=4096, z_channels=32, ch=160),
    plus provenance.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import types

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import synthetic_weights  # noqa: E402

PATCH_NUMS = (1, 2, 3, 4)
RESIZE_CASES = [  # (input NCHW shape, output (h, w))
    ((2, 3, 16, 16), (10, 10)),
    ((1, 2, 10, 10), (16, 16)),
    ((1, 2, 3, 3), (16, 16)),
    ((1, 2, 1, 1), (16, 16)),
    ((1, 2, 13, 13), (5, 5)),
    ((1, 2, 7, 16), (3, 5)),
    ((1, 2, 5, 9), (12, 4)),
]


def _import_official(repo: str):
  if "huggingface_hub" not in sys.modules:
    try:
      import huggingface_hub  # noqa: F401
    except ImportError:  # only VARHF uses it
      stub = types.ModuleType("huggingface_hub")
      stub.PyTorchModelHubMixin = type("PyTorchModelHubMixin", (), {})
      sys.modules["huggingface_hub"] = stub
  sys.path.insert(0, os.path.abspath(repo))
  from models.var import VAR  # noqa: E402
  from models.vqvae import VQVAE  # noqa: E402
  return VAR, VQVAE


def _commit(repo: str, mirror: str | None) -> str:
  for git_dir in filter(None, [mirror, os.path.join(repo, ".git")]):
    try:
      return subprocess.run(["git", "-C", git_dir, "rev-parse", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
      pass
  return "unknown"


@contextlib.contextmanager
def _no_init(torch):
  """Skip weight init (only shapes are needed for counting), as build_vae_var does."""
  nn = torch.nn
  classes = (nn.Linear, nn.LayerNorm, nn.Embedding, nn.Conv2d, nn.GroupNorm)
  saved = [(c, c.reset_parameters) for c in classes]
  trunc = nn.init.trunc_normal_
  for c in classes:
    c.reset_parameters = lambda self: None
  nn.init.trunc_normal_ = lambda t, *a, **k: t
  try:
    yield
  finally:
    for c, f in saved:
      c.reset_parameters = f
    nn.init.trunc_normal_ = trunc


def official_counts(torch, VAR, VQVAE) -> dict:
  counts = {}
  with _no_init(torch), torch.no_grad():
    vae = VQVAE(vocab_size=4096, z_channels=32, ch=160, test_mode=True)
    counts["vqvae_ch160v4096z32"] = sum(p.numel() for p in vae.parameters())
    for depth in (16, 20):
      var = VAR(vae_local=vae, num_classes=1000, depth=depth, embed_dim=64 * depth,
                num_heads=depth, attn_l2_norm=True, flash_if_available=False,
                fused_if_available=False)
      counts[f"var_d{depth}"] = sum(p.numel() for p in var.parameters())
      del var
  return counts


def f32(t) -> np.ndarray:
  return t.detach().float().cpu().numpy().astype(np.float32)


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--var-repo", default="/tmp/VAR",
                  help="checkout of FoundationVision/VAR (its models/ and dist.py)")
  ap.add_argument("--mirror", default="/work/.mirror/FoundationVision+VAR/repo",
                  help="git dir to read the official commit from if --var-repo has no .git")
  ap.add_argument("--out", default=os.path.join(HERE, "..", "data", "var_reference"))
  args = ap.parse_args()

  import torch
  import torch.nn.functional as F
  torch.set_num_threads(2)
  VAR, VQVAE = _import_official(args.var_repo)
  out: dict[str, np.ndarray] = {}

  # ------------------------------------------------------------------ tokenizer
  torch.manual_seed(0)
  vae = VQVAE(vocab_size=37, z_channels=8, ch=32, v_patch_nums=PATCH_NUMS, test_mode=True)
  vae.eval()
  names, shapes = [], []
  with torch.no_grad():
    sd = vae.state_dict()
    for name, t in sd.items():
      if name in synthetic_weights.STORED:
        continue
      t.copy_(torch.from_numpy(synthetic_weights.vae_weight(name, tuple(t.shape))))
      names.append(name)
      shapes.append(list(t.shape))
    g = torch.Generator().manual_seed(1)
    img = torch.rand(3, 3, 64, 64, generator=g) * 2 - 1
    f = vae.quant_conv(vae.encoder(img))
    # Codebook on the scale of the latents: codes drawn around the latent distribution.
    emb = torch.randn(37, 8, generator=g) * f.std(dim=(0, 2, 3))[None] + f.mean(dim=(0, 2, 3))[None]
    vae.quantize.embedding.weight.copy_(emb)
    sd = vae.state_dict()

    idx = vae.img_to_idxBl(img)
    fhats = vae.quantize.f_to_idxBl_or_fhat(f, to_fhat=True)
    var_in = vae.quantize.idxBl_to_var_input(idx)
    dec = vae.decoder(vae.post_quant_conv(fhats[-1]))
    rec = vae.fhat_to_img(fhats[-1])
    # Margins of the nearest-code decisions, replayed with the official indices.
    margins = []
    f_rest = f.clone()
    E = vae.quantize.embedding.weight
    for si, pn in enumerate(PATCH_NUMS):
      z = (F.interpolate(f_rest, size=(pn, pn), mode="area") if si != len(PATCH_NUMS) - 1
           else f_rest).permute(0, 2, 3, 1).reshape(-1, 8)
      d = torch.cdist(z.double(), E.double()) ** 2
      top2 = d.topk(2, dim=1, largest=False).values
      margins.append(float((top2[:, 1] - top2[:, 0]).min() / d.max()))
      h = vae.quantize.embedding(idx[si].view(3, pn, pn)).permute(0, 3, 1, 2)
      if si != len(PATCH_NUMS) - 1:
        h = F.interpolate(h, size=(4, 4), mode="bicubic")
      f_rest -= vae.quantize.quant_resi[si / (len(PATCH_NUMS) - 1)](h)

  out["vae/quantize.embedding.weight"] = f32(emb)
  out["vae_names"] = np.array(names)
  out["vae_shapes"] = np.array([json.dumps(s) for s in shapes])
  out["vae_sums"] = np.array([float(sd[n].double().sum()) for n in names])
  out["img_NCHW"] = f32(img)
  out["f_NCHW"] = f32(f)
  for si, pn in enumerate(PATCH_NUMS):
    out[f"idx_{si}"] = idx[si].numpy().astype(np.int32)
    out[f"fhat_{si}_NCHW"] = f32(fhats[si])
  out["var_input"] = f32(var_in)
  out["decoded_NCHW"] = f32(dec)
  out["fhat_to_img_NCHW"] = f32(rec)

  # ------------------------------------------------------------------ transformer
  labels = torch.tensor([0, 3, 5])  # 5 = num_classes: the null (unconditional) class
  out["labels"] = labels.numpy().astype(np.int32)
  var_info = {}
  for prefix, shared, seed in (("var", False, 10), ("var_shared", True, 11)):
    torch.manual_seed(seed)
    var = VAR(vae_local=vae, num_classes=5, depth=2, embed_dim=64, num_heads=2,
              patch_nums=PATCH_NUMS, attn_l2_norm=True, shared_aln=shared,
              flash_if_available=False, fused_if_available=False)
    var.init_weights(init_std=-1)
    with torch.no_grad():
      for name, p in var.named_parameters():
        big = ("ada_lin" in name and name.endswith("bias")) or name.endswith("ada_gss")
        p.add_(torch.randn_like(p) * (0.3 if big else 0.05))
    var.eval()
    var.cond_drop_rate = 0.0
    with torch.no_grad():
      logits = var(labels, var_in)
      # How much the blocks matter (a sanity number: the test must not pass on the head alone).
      saved = [b.attn.proj.weight.clone() for b in var.blocks]
      for b in var.blocks:
        b.attn.proj.weight.zero_()
      no_attn = var(labels, var_in)
      for b, w in zip(var.blocks, saved):
        b.attn.proj.weight.copy_(w)
    for name, t in var.state_dict().items():
      out[f"{prefix}/{name}"] = t.numpy() if not t.is_floating_point() else f32(t)
    out[f"{prefix}_logits"] = f32(logits)
    var_info[prefix] = {
        "logits_absmax": float(logits.abs().max()),
        "attention_effect_relmax": float((logits - no_attn).abs().max() / logits.abs().max()),
        "params": sum(p.numel() for p in var.parameters()),
    }

  # ------------------------------------------------------------------ resizes
  g = torch.Generator().manual_seed(2)
  for i, (shape, size) in enumerate(RESIZE_CASES):
    x = torch.randn(*shape, generator=g)
    out[f"resize_{i}_in_NCHW"] = f32(x)
    out[f"resize_{i}_size"] = np.array(size, np.int32)
    out[f"resize_{i}_area"] = f32(F.interpolate(x, size=size, mode="area"))
    out[f"resize_{i}_bicubic"] = f32(F.interpolate(x, size=size, mode="bicubic",
                                                   align_corners=False))

  counts = official_counts(torch, VAR, VQVAE)
  meta = {
      "official_repo": "https://github.com/FoundationVision/VAR",
      "official_commit": _commit(args.var_repo, args.mirror),
      "torch_version": torch.__version__,
      "numpy_version": np.__version__,
      "python_version": sys.version.split()[0],
      "generator": "tests/reference/make_var_reference.py",
      "official_param_counts": counts,
      "tokenizer": {"vocab_size": 37, "z_channels": 8, "ch": 32, "ch_mult": [1, 1, 2, 2, 4],
                    "num_res_blocks": 2, "patch_nums": list(PATCH_NUMS), "image_px": 64,
                    "params": sum(p.numel() for p in vae.parameters()),
                    "token_margin_min_rel_per_scale": margins,
                    "decoded_absmax": float(dec.abs().max()),
                    "decoded_clipped_fraction": float((dec.abs() > 1).float().mean())},
      "var": var_info,
  }
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  np.savez_compressed(args.out + ".npz", **out)
  with open(args.out + ".json", "w") as fh:
    json.dump(meta, fh, indent=2)
    fh.write("\n")
  print(json.dumps(meta, indent=2))
  print(f"wrote {args.out}.npz ({os.path.getsize(args.out + '.npz')} bytes)")


if __name__ == "__main__":
  main()
