"""Search at sampling time: draw more samples per image and keep what a verifier prefers.

A verifier is any callable (images float32 [N, H, W, 3] in [0, 1], labels int [N]) ->
scores [N], higher is better; `varjax.eval.verifiers.ClassConfidence` is the one for the
embedded data (the feature network's probability of the intended class).

best_of_k: K samples per label; candidate 0 is exactly plain sampling (key fold_in(seed,
batch_index)), candidate j > 0 folds j into that key; the first candidate with the highest
score is chosen. The candidates for K are a prefix of those for K + 1, so on a fixed seed
the chosen score never falls as K grows.

scale_search: a population of K partial samples per label. After each scale in
`select_at` the population is decoded from its partial reconstruction f_hat (the coarse
image so far) and scored; the best `keep` per label survive and refill the population
(candidate j <- kept[j mod keep], KV caches copied with it), after which the copies draw
independently. After the last scale the best of the K is chosen.

Both report the sampling FLOPs they spent (K times one sample's, `sampling_cost`) and the
verifier's scores. Neither counts the decoder or the verifier in the FLOPs.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from varjax.errors import VarjaxError
from varjax.models import sampling
from varjax.models.sampling_cost import sampling_cost
from varjax.models.var import VAR, check_labels

Verifier = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclasses.dataclass
class SearchResult:
  images: np.ndarray  # float32 [B, H, W, 3] in [0, 1]: the chosen sample per label
  scores: np.ndarray  # float64 [B]: the verifier's score of each chosen sample
  candidate_scores: np.ndarray  # float64 [B, K]: the final score of every candidate
  chosen: np.ndarray  # int [B]: which candidate was chosen
  flops_per_image: float  # sampling FLOPs spent per chosen image (all K candidates)
  verifier_calls: int  # images scored per chosen image
  tokens: list | None = None  # scale_search: the chosen token pyramid, int32 [B, p, p]
  # scale_search, one entry per selection: scale, scores [B, K], kept [B, keep] and the
  # population's tokens so far, int32 [B, K, p, p] per scale, before the copies
  history: list = dataclasses.field(default_factory=list)


def check_search(k: int, num_scales: int, select_at: Sequence[int] = (), keep: int = 1) -> None:
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
    raise VarjaxError(f"search needs K >= 1 samples per image, got {k}")
  if not 1 <= keep <= k:
    raise VarjaxError(f"scale-wise search keeps 1..K = 1..{k} candidates, got {keep}")
  bad = [s for s in select_at if not 0 <= s < num_scales - 1]
  if bad or len(set(select_at)) != len(select_at):
    raise VarjaxError(f"selection scales {list(select_at)}: each must appear once and lie in "
                      f"0..{num_scales - 2} (after the last scale the best is chosen anyway)")


def score(verifier: Verifier, images, labels) -> np.ndarray:
  scores = np.asarray(verifier(np.asarray(images), np.asarray(labels)), np.float64)
  if scores.shape != (len(labels),) or not np.all(np.isfinite(scores)):
    raise VarjaxError(f"the verifier must return one finite score per image: {len(labels)} "
                      f"images gave {scores.shape} scores")
  return scores


def best_of_k(model: VAR, params, tokenizer, tokenizer_params, labels_B, k: int,
              verifier: Verifier, protocol=sampling.SamplingProtocol(), batch_index: int = 0,
              refiner=None, switch: int | None = None) -> SearchResult:
  """K samples per label (optionally collaborative), the best by the verifier."""
  check_search(k, len(model.cfg.patch_nums))
  labels = check_labels(labels_B, model.cfg.num_classes)
  best, best_scores, all_scores = None, None, []
  for j in range(k):
    images = np.asarray(sampling.sample_images(model, params, tokenizer, tokenizer_params,
                                               labels, protocol, batch_index, refiner, switch,
                                               candidate=j))
    scores = score(verifier, images, labels)
    if best is None:
      best, best_scores = images, scores
    else:
      better = scores > best_scores  # ties keep the earlier candidate
      best = np.where(better[:, None, None, None], images, best)
      best_scores = np.where(better, scores, best_scores)
    all_scores.append(scores)
  candidate_scores = np.stack(all_scores, 1)
  per_sample = sampling_cost(model.cfg, None if refiner is None else refiner[0].cfg, switch,
                             protocol.cfg > 0)["total"]
  return SearchResult(best, best_scores, candidate_scores, np.argmax(candidate_scores, 1),
                      float(k * per_sample), k)


@functools.partial(jax.jit, static_argnums=(0, 2, 4, 5, 11))
def _advance(model, params, tokenizer, tokenizer_params, lo, hi, cond, caches, f_hat, x_in,
             key, protocol):
  """Scales [lo, hi) of a population; returns their tokens, the state and the coarse images
  decoded from f_hat so far."""
  tokens = []
  for si in range(lo, hi):
    idx, caches, f_hat, x_in = sampling.sample_scale(model, params, tokenizer, tokenizer_params,
                                                     si, cond, x_in, caches, f_hat, key,
                                                     protocol)
    tokens.append(idx)
  images = tokenizer.apply(tokenizer_params, f_hat, method=type(tokenizer).fhat_to_img)
  return tokens, caches, f_hat, x_in, jnp.clip((images + 1) / 2, 0, 1)


def scale_search(model: VAR, params, tokenizer, tokenizer_params, labels_B, k: int,
                 verifier: Verifier, select_at: Sequence[int], keep: int = 1,
                 protocol=sampling.SamplingProtocol(), batch_index: int = 0) -> SearchResult:
  """Scale-wise search (module docstring): rows b K .. b K + K - 1 are label b's candidates."""
  cfg = model.cfg
  n = len(cfg.patch_nums)
  select_at = sorted(int(s) for s in select_at)
  check_search(k, n, select_at, keep)
  labels = check_labels(labels_B, cfg.num_classes)
  b = len(labels)
  population = np.repeat(labels, k)
  guided = protocol.cfg > 0
  rows = sampling.with_null_rows(population, cfg.num_classes, guided)
  cond = model.apply(params, rows, method=VAR.condition)
  caches = sampling.empty_caches(model, rows.shape[0])
  side = cfg.patch_nums[-1]
  f_hat = jnp.zeros((b * k, side, side, cfg.latent_channels), jnp.float32)
  x_in, tokens, history, lo = None, [], [], 0
  key = jax.random.fold_in(jax.random.key(protocol.seed), batch_index)
  static_protocol = dataclasses.replace(protocol, seed=0)  # the seed is in the key
  for stop in select_at + [n - 1]:
    new, caches, f_hat, x_in, images = _advance(model, params, tokenizer, tokenizer_params, lo,
                                                stop + 1, cond, caches, f_hat, x_in, key,
                                                static_protocol)
    tokens += new
    scores_BxK = score(verifier, images, population).reshape(b, k)
    lo = stop + 1
    if stop == n - 1:
      break
    new_tokens = tokens  # before the copies, for the history
    kept = np.argsort(-scores_BxK, axis=1, kind="stable")[:, :keep]
    src = (np.arange(b)[:, None] * k + kept[:, np.arange(k) % keep]).reshape(-1)
    src_rows = np.concatenate([src, src + b * k]) if guided else src
    take = lambda x, i: jnp.take(x, jnp.asarray(i), axis=0)
    f_hat = take(f_hat, src)
    tokens = [take(t, src) for t in tokens]
    x_in = take(x_in, src_rows)
    caches = jax.tree.map(lambda c: take(c, src_rows), caches)
    history.append({"scale": stop, "scores": scores_BxK, "kept": kept,
                    "tokens": [np.asarray(t).reshape(b, k, *t.shape[1:]) for t in new_tokens]})
  chosen = np.argmax(scores_BxK, 1)
  pick = np.arange(b) * k + chosen
  images = np.asarray(images)[pick]
  per_sample = sampling_cost(cfg, guided=guided)["total"]
  return SearchResult(images, scores_BxK[np.arange(b), chosen], scores_BxK, chosen,
                      float(k * per_sample), k * (len(select_at) + 1),
                      tokens=[np.asarray(t)[pick] for t in tokens], history=history)
