"""Scale-by-scale sampling through the KV cache against greedy decoding done the slow way:
the full masked forward pass re-run on the teacher-forced input of the tokens so far."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from test_collaborative import noise_params, random_model
from varjax import config, scales
from varjax.config import ModelConfig, TokenizerConfig
from varjax.errors import VarjaxError
from varjax.eval import features, verifiers
from varjax.models import sampling, search, store, vqvae
from varjax.models.sampling_cost import sampling_cost

PN = (1, 2, 3, 4)
TOK = TokenizerConfig(ch=16, ch_mult=(1, 2), num_res_blocks=1, vocab_size=23,
                      latent_channels=8, using_sa=False)


@pytest.fixture(scope="module")
def models():
  tokenizer = vqvae.build(TOK, PN)
  shapes = jax.eval_shape(lambda: tokenizer.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3))))
  tok_params = {"params": noise_params(shapes["params"], 1, std=0.1)}
  cfg = ModelConfig(depth=2, width=64, heads=4, vocab_size=23, latent_channels=8,
                    num_classes=5, patch_nums=PN)
  model, params = random_model(cfg, 0)
  return model, params, tokenizer, tok_params


@pytest.mark.parametrize("cfg_scale", [0.0, 2.0])
def test_greedy_cached_sampling_equals_full_forward_decoding(models, cfg_scale):
  model, params, tokenizer, tok_params = models
  labels = jnp.array([0, 3, 4])
  protocol = sampling.SamplingProtocol(cfg=cfg_scale, top_k=1, top_p=0.0)
  pyramid, f_hat = jax.jit(sampling.sample_indices, static_argnums=(0, 2, 6))(
      model, params, tokenizer, tok_params, labels, jax.random.key(0, impl="rbg"), protocol)
  bounds = scales.boundaries(PN)
  forward = jax.jit(model.apply)
  var_input = jax.jit(functools.partial(tokenizer.apply, method=vqvae.VQVAE.indices_to_var_input))
  chosen = [jnp.zeros((3, p, p), jnp.int32) for p in PN]  # later scales: placeholders
  for si, p in enumerate(PN):
    x = var_input(tok_params, chosen)
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


# ------------------------------------------------------------------ search at sampling time

PROTOCOL = sampling.SamplingProtocol(cfg=1.5, top_k=10, top_p=0.9, seed=7)


def redness(images, labels):
  """A verifier: any callable (images in [0, 1], labels) -> one score per image."""
  return images[..., 0].mean(axis=(1, 2)) - images[..., 1:].mean(axis=(1, 2, 3)) + 0 * labels


def test_best_of_k(models):
  labels = np.array([1, 2])
  plain = np.asarray(sampling.sample_images(*models, labels, PROTOCOL))
  per_sample = sampling_cost(models[0].cfg, guided=True)["total"]
  results = {k: search.best_of_k(*models, labels, k, redness, PROTOCOL) for k in (1, 2, 4)}
  np.testing.assert_array_equal(results[1].images, plain)  # K = 1 is plain sampling
  np.testing.assert_array_equal(results[1].scores, redness(plain, labels))
  for k, r in results.items():
    assert r.flops_per_image == k * per_sample and r.verifier_calls == k
    assert r.candidate_scores.shape == (2, k)
    np.testing.assert_array_equal(r.candidate_scores, results[4].candidate_scores[:, :k])
    np.testing.assert_array_equal(r.scores, r.candidate_scores.max(1))
  assert np.all(results[1].scores <= results[2].scores)
  assert np.all(results[2].scores <= results[4].scores)
  assert len(set(results[4].candidate_scores[0])) == 4  # the candidates differ
  best = results[4]
  again = np.asarray(sampling.sample_images(*models, labels, PROTOCOL,
                                            candidate=int(best.chosen[0])))
  np.testing.assert_array_equal(best.images[0], again[0])


def test_scale_search(models):
  labels = np.array([1, 2])
  r = search.scale_search(*models, labels, 3, redness, select_at=[1], keep=1,
                          protocol=PROTOCOL)
  assert r.flops_per_image == 3 * sampling_cost(models[0].cfg, guided=True)["total"]
  assert r.verifier_calls == 6 and r.candidate_scores.shape == (2, 3)
  np.testing.assert_array_equal(r.scores, r.candidate_scores.max(1))
  (selection,) = r.history
  np.testing.assert_array_equal(selection["kept"][:, 0], selection["scores"].argmax(1))
  for b in range(2):  # the chosen sample descends from the candidate kept after scale 1
    for si in (0, 1):
      np.testing.assert_array_equal(r.tokens[si][b],
                                    selection["tokens"][si][b, selection["kept"][b, 0]])
  assert len(set(r.candidate_scores[0])) > 1  # the copies drew independently afterwards


def test_search_mistakes(models):
  labels = np.array([1, 2])
  for call, message in (
      (lambda: search.best_of_k(*models, labels, 0, redness), "search needs K >= 1"),
      (lambda: search.scale_search(*models, labels, 2, redness, [3]), "selection scales"),
      (lambda: search.scale_search(*models, labels, 2, redness, [1], keep=3), "keeps 1..K"),
      (lambda: search.best_of_k(*models, labels, 1, lambda i, l: np.zeros(3), PROTOCOL),
       "one finite score per image")):
    with pytest.raises(VarjaxError, match=message):
      call()


def _feature_net(directory, num_classes=6, resolution=8):
  model = features.FeatureCNN((8, 8), num_classes)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                             jnp.zeros((1, resolution, resolution, 3))))
  params = noise_params(shapes["params"], 3)
  features.save_cnn(str(directory), {"name": "tiny", "widths": [8, 8],
                                     "num_classes": num_classes, "resolution": resolution,
                                     "dataset": "test", "feature_dim": 8}, params)
  return model, params


def test_class_confidence_verifier(tmp_path):
  model, params = _feature_net(tmp_path / "net")
  verifier = verifiers.ClassConfidence(str(tmp_path / "net"))
  images = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3)) / 255.0
  labels = np.array([0, 5, 2])
  probs = jax.nn.softmax(model.apply({"params": params}, jnp.asarray(images, jnp.float32))[0])
  np.testing.assert_allclose(verifier(images, labels), np.asarray(probs)[[0, 1, 2], labels],
                             rtol=1e-5)
  with pytest.raises(VarjaxError, match="label 6 is outside the 6 classes"):
    verifier(images, np.array([0, 6, 1]))
  with pytest.raises(VarjaxError, match="takes 8x8 images, got 4x4"):
    verifier(images[:, :4, :4], labels)


def test_sample_cli_search(models, tmp_path, capsys):
  from varjax import cli
  model, params, _, tok_params = models
  tok_cfg = config.replace(config.Config(), tokenizer=config.to_dict(TOK),
                           model={"patch_nums": list(PN), "vocab_size": 23, "latent_channels": 8},
                           data={"resolution": 8})
  store.save_model_dir(str(tmp_path / "tok"), tok_cfg, tok_params["params"])
  store.save_model_dir(str(tmp_path / "var"), config.replace(
      config.Config(), model=config.to_dict(model.cfg)), params["params"])
  _feature_net(tmp_path / "net")
  common = ["sample", "--var", str(tmp_path / "var"), "--tokenizer", str(tmp_path / "tok"),
            "--labels", "1,2", "--per-label", "1", "--cfg", "1.5", "--top-k", "10",
            "--top-p", "0.9", "--seed", "7", "--verifier", str(tmp_path / "net")]
  for extra in (["--best-of", "2"], ["--best-of", "3", "--search-scales", "1"]):
    out = tmp_path / f"grid{len(extra)}.png"
    assert cli.main(common + extra + ["--out", str(out)]) == 0
    printed = capsys.readouterr().out
    record = json.loads(out.with_suffix(".json").read_text())["search"]
    assert record["verifier"] == "class confidence of tiny" and len(record["scores"]) == 2
    k = int(extra[1])
    assert record["sampling_flops_per_image"] == k * sampling_cost(model.cfg, guided=True)["total"]
    assert "by class confidence of tiny: chosen mean score" in printed
  assert record["method"] == "scale_wise" and record["select_at"] == [1]
  for extra, message in (
      (["--best-of", "0"], "--best-of must be >= 1"),
      (["--search-scales", "1"], "--verifier is a search option: add --best-of K"),
      (["--best-of", "2", "--search-scales", "3"], "selection scales [3]"),
      (["--best-of", "2", "--search-scales", "1", "--keep", "3"], "keeps 1..K = 1..2"),
      (["--best-of", "2", "--search-scales", "1", "--refiner", str(tmp_path / "var"),
        "--switch-scale", "1"], "scale-wise search (--search-scales) samples with one model")):
    assert cli.main(common + extra + ["--out", str(tmp_path / "x.png")]) == 2, extra
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and message in err, err
  no_verifier = common[:-2] + ["--best-of", "2", "--out", str(tmp_path / "x.png")]
  assert cli.main(no_verifier) == 2
  assert "--best-of needs --verifier DIR" in capsys.readouterr().err
