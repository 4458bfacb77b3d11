"""Collaborative decoding (CoDe): a drafter samples the first scales, a refiner prefills its
own KV cache from those tokens and samples the rest. Oracles: plain sampling (A == B, and
the switch at either end) and greedy decoding by the full forward pass of whichever model
owns each scale."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from varjax import config
from varjax.config import ModelConfig, TokenizerConfig
from varjax.errors import VarjaxError
from varjax.models import sampling, store, vqvae
from varjax.models.var import VAR, param_shapes

PN = (1, 2, 4)
TOK = TokenizerConfig(ch=8, ch_mult=(1, 2), num_res_blocks=1, vocab_size=23,
                      latent_channels=8, using_sa=False)
GREEDY = sampling.SamplingProtocol(cfg=0.0, top_k=1, top_p=0.0)
SEEDED = sampling.SamplingProtocol(cfg=1.5, top_k=5, top_p=0.9)
LABELS = jnp.array([0, 3, 4])


def _cfg(depth: int, **kw) -> ModelConfig:
  return ModelConfig(**{"depth": depth, "width": 32, "heads": 2, "vocab_size": 23,
                        "latent_channels": 8, "num_classes": 5, "patch_nums": PN, **kw})


def noise_params(shapes, seed: int, std: float = 0.3):
  """Normal(0, std) for every parameter, drawn by NumPy: XLA:CPU takes seconds to compile
  an initialiser, and a sampler needs no trained weights."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(rng.normal(0, std, s.shape), jnp.float32), shapes)


def random_model(cfg: ModelConfig, seed: int):
  """A VAR with noise weights (the AdaLN gates open) and VAR's q scale log 4 on top."""
  params = noise_params(param_shapes(cfg), seed)
  for i in range(cfg.depth):
    attn = params[f"blocks_{i}"]["attn"]
    attn["scale_mul"] = attn["scale_mul"] + np.log(4.0)
  return VAR(cfg), {"params": params}


@pytest.fixture(scope="module")
def models():
  tokenizer = vqvae.build(TOK, PN)
  image = jnp.zeros((1, 8, 8, 3))
  shapes = jax.eval_shape(lambda: tokenizer.init(jax.random.key(0), image))["params"]
  tok_params = {"params": noise_params(shapes, 1, std=0.1)}
  return random_model(_cfg(2), 0), random_model(_cfg(1), 5), tokenizer, tok_params


@functools.partial(jax.jit, static_argnums=(0, 2, 4, 5, 7))
def _pyramid(model, params, tokenizer, tok_params, protocol, refiner_model, refiner_params,
             switch):
  refiner = None if refiner_model is None else (refiner_model, refiner_params)
  # An rbg key: XLA:CPU compiles its sampler a third faster than threefry's (any key works)
  return sampling.sample_indices(model, params, tokenizer, tok_params, LABELS,
                                 jax.random.key(3, impl="rbg"), protocol, refiner, switch)[0]


def pyramid(models, protocol, drafter="A", refiner=None, switch=None):
  named = {"A": models[0], "B": models[1], None: (None, None)}
  return _pyramid(*named[drafter], *models[2:], protocol, *named[refiner], switch)


def assert_same(a, b):
  for x, y in zip(a, b, strict=True):
    np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("protocol, switch", [(GREEDY, 1), (SEEDED, 2)])
def test_same_model_on_both_sides_equals_plain_sampling(models, protocol, switch):
  assert_same(pyramid(models, protocol, "B", "B", switch), pyramid(models, protocol, "B"))


def test_switch_at_either_end_is_one_model_alone(models):
  assert_same(pyramid(models, SEEDED, "A", "B", 0), pyramid(models, SEEDED, "B"))
  assert_same(pyramid(models, SEEDED, "A", "B", len(PN)), pyramid(models, SEEDED, "A"))


def test_greedy_collaborative_equals_full_forward_of_each_owner(models):
  """Under guidance, scales < k are the drafter's argmax and scales >= k the refiner's, each
  given the whole pyramid so far: the refiner's prefilled cache is exact."""
  protocol = sampling.SamplingProtocol(cfg=2.0, top_k=1, top_p=0.0)
  k = 1
  chosen = pyramid(models, protocol, "A", "B", k)
  tokenizer, tok_params = models[2:]
  x = tokenizer.apply(tok_params, chosen, method=vqvae.VQVAE.indices_to_var_input)
  both = jnp.concatenate([LABELS, jnp.full_like(LABELS, 5)])
  bounds = np.cumsum([0] + [p * p for p in PN])
  for si, p in enumerate(PN):
    model, params = models[0] if si < k else models[1]
    logits = jax.jit(model.apply)(params, both, jnp.concatenate([x, x]))
    t = protocol.cfg * si / (len(PN) - 1)
    guided = (1 + t) * logits[:3] - t * logits[3:]
    want = jnp.argmax(guided[:, bounds[si]:bounds[si + 1]], -1).reshape(3, p, p)
    np.testing.assert_array_equal(chosen[si], want, err_msg=f"scale {si}")


def test_mismatched_models_and_switches_are_one_line(models):
  drafter, tokenizer, tok_params = models[0], *models[2:]
  other = (VAR(_cfg(1, vocab_size=19)), None)  # refused before its parameters are read
  labels = np.array([1])
  with pytest.raises(VarjaxError, match=r"disagree on vocab_size: 23 vs 19; collaborative"):
    sampling.sample_images(*drafter, tokenizer, tok_params, labels, refiner=other, switch=1)
  for k in (-1, 4, 1.5):
    with pytest.raises(VarjaxError, match=rf"switch scale {k} is outside the schedule: k must "
                                          r"be an integer in 0\.\.3"):
      sampling.sample_images(*drafter, tokenizer, tok_params, labels, refiner=drafter, switch=k)


# ------------------------------------------------------------------------------ the CLI

def _save(directory, model_cfg, params, tokenizer_dir):
  cfg = config.replace(config.Config(), model=config.to_dict(model_cfg),
                       data={"tokenizer": str(tokenizer_dir)})
  store.save_model_dir(str(directory), cfg, params.get("params", params))


def _cli(capsys, *argv):
  from varjax import cli
  rc = cli.main([str(a) for a in argv])
  out = capsys.readouterr()
  return rc, out.out, out.err


def test_sample_cli_collaborative(models, tmp_path, capsys):
  (a_model, a_params), (b_model, b_params), _, tok_params = models
  tok_cfg = config.replace(config.Config(), tokenizer=config.to_dict(TOK),
                           model={"patch_nums": list(PN), "vocab_size": 23, "latent_channels": 8},
                           data={"resolution": 8})
  store.save_model_dir(str(tmp_path / "tok"), tok_cfg, tok_params["params"])
  _save(tmp_path / "a", a_model.cfg, a_params, tmp_path / "tok")
  _save(tmp_path / "b", b_model.cfg, b_params, tmp_path / "tok")
  common = ("sample", "--var", tmp_path / "a", "--tokenizer", tmp_path / "tok", "--labels",
            "0,2", "--per-label", "2", "--top-k", "5")
  rc, out, err = _cli(capsys, *common, "--refiner", tmp_path / "b", "--switch-scale", "2",
                      "--out", tmp_path / "collab.png")
  assert rc == 0, err
  protocol = json.loads((tmp_path / "collab.json").read_text())
  assert protocol["refiner"] == str(tmp_path / "b") and protocol["switch_scale"] == 2

  # Mistakes: one line, exit 2, before any parameters are read.
  store.save_model_dir(str(tmp_path / "tok2"), tok_cfg,
                       jax.tree.map(lambda p: p + 1, tok_params["params"]))
  _save(tmp_path / "c", b_model.cfg, {}, tmp_path / "tok2")
  _save(tmp_path / "d", _cfg(1, patch_nums=(1, 3, 4)), {}, tmp_path / "tok")
  for extra, message in (
      (("--refiner", tmp_path / "b", "--switch-scale", "4"), "switch scale 4 is outside"),
      (("--refiner", tmp_path / "b"), "needs both --refiner DIR and --switch-scale K"),
      (("--switch-scale", "1"), "needs both --refiner DIR and --switch-scale K"),
      (("--refiner", tmp_path / "c", "--switch-scale", "1"), "needs one tokenizer"),
      (("--refiner", tmp_path / "d", "--switch-scale", "1"), "disagree on patch_nums")):
    rc, out, err = _cli(capsys, *common, *extra, "--out", tmp_path / "x.png")
    assert rc == 2 and len(err.splitlines()) == 1 and message in err, err
