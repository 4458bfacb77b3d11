"""Sample quality of a run directory: K class-conditional samples -> features -> Fréchet
distance to the cached statistics of a data split -> `summary.json`.

    varjax eval fid --run runs/demo/d4 --feature-net runs/features/embed32cnn   # fd_embed32cnn
    varjax eval fid --run runs/in256/d16 --inception-weights inception.msgpack  # fid

A run directory is a model directory (config.json + params.msgpack). The tokenizer that
decodes the samples is `--tokenizer`, else the run's `data.tokenizer`, else the one its
summary records. Labels: K labels balanced over the model's classes (each class K // C or
K // C + 1 times), in an order shuffled by the seed. Samples are rounded to uint8, as if
saved as PNG, so they meet the feature network in the same form as the data. The result
goes into summary.json under `fid` or `fd_<network>`, with `sample_protocol` (everything
the number depends on, including which metric it belongs to; when a run is measured with a
second network, the first one's protocol moves to `sample_protocol_<metric>`). A grid of
the first samples is written beside it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any

import numpy as np

from varjax import files
from varjax.errors import VarjaxError
from varjax.eval import reference
from varjax.eval.features import FeatureNetwork
from varjax.models import sampling, store

SUMMARY_FILE = "summary.json"
GRID_FILE = "eval_samples.png"


def balanced_labels(num_samples: int, num_classes: int, seed: int) -> np.ndarray:
  """int64[K]: class c appears K // C or K // C + 1 times; the order depends on the seed."""
  return np.random.default_rng([seed, 8]).permutation(np.arange(num_samples) % num_classes)


def to_uint8(images_01: np.ndarray) -> np.ndarray:
  return np.clip(np.round(np.asarray(images_01, np.float32) * 255.0), 0, 255).astype(np.uint8)


def generate(model, params, tokenizer, tokenizer_params, labels: np.ndarray,
             protocol: sampling.SamplingProtocol, batch_size: int,
             progress: bool | None = None, sample_batch=None) -> np.ndarray:
  """uint8 [K, H, W, 3]. Batch b uses key fold_in(seed, b); the last batch is padded to
  `batch_size` (label 0) so that one compiled sampler serves every batch. `sample_batch`
  (labels [batch_size], b) -> images in [0, 1] replaces plain sampling (another sampler:
  collaborative, best-of-K; varjax/eval/sampling_table.py)."""
  from varjax import progress as progress_lib
  if sample_batch is None:
    sample_batch = lambda batch, b: sampling.sample_images(  # noqa: E731
        model, params, tokenizer, tokenizer_params, batch, protocol, batch_index=b)
  out = []
  starts = range(0, len(labels), batch_size)
  for b, i in enumerate(progress_lib.bar(starts, desc="sampling", unit="batch", enabled=progress)):
    batch = labels[i:i + batch_size]
    n = len(batch)
    padded = np.concatenate([batch, np.zeros(batch_size - n, batch.dtype)])
    out.append(to_uint8(np.asarray(sample_batch(padded, b))[:n]))
  return np.concatenate(out)


def read_summary(run_dir: str) -> dict[str, Any]:
  path = os.path.join(run_dir, SUMMARY_FILE)
  if not os.path.isfile(path):
    return {}
  with open(path) as f:
    try:
      summary = json.load(f)
    except json.JSONDecodeError as e:
      raise VarjaxError(f"{path} is not valid JSON ({e}); fix or remove it") from None
  if not isinstance(summary, dict):
    raise VarjaxError(f"{path} does not hold a JSON object")
  return summary


def resolve_tokenizer(run_dir: str, cfg, tokenizer_dir: str | None) -> str:
  found = (tokenizer_dir or getattr(cfg.data, "tokenizer", None)
           or read_summary(run_dir).get("tokenizer"))
  if not found:
    raise VarjaxError(f"{run_dir} does not name its tokenizer (data.tokenizer); pass "
                      "--tokenizer DIR")
  return found


def check_one_tokenizer(drafter_dir: str, drafter_cfg, refiner_dir: str, refiner_cfg) -> None:
  """Two models trained on different tokenizers (recorded as data.tokenizer or in
  summary.json) cannot share a sample, even when codebook sizes agree. Paths that do not
  exist here cannot be compared and pass; copies are compared by their parameters."""
  from varjax.eval import features
  recorded = [cfg.data.tokenizer or read_summary(d).get("tokenizer")
              for d, cfg in ((drafter_dir, drafter_cfg), (refiner_dir, refiner_cfg))]
  if not all(recorded) or os.path.realpath(recorded[0]) == os.path.realpath(recorded[1]):
    return
  params = [os.path.join(t, "params.msgpack") for t in recorded]
  if not all(os.path.isfile(p) for p in params):
    return
  if features.file_fingerprint(params[0]) != features.file_fingerprint(params[1]):
    raise VarjaxError(f"the drafter {drafter_dir} was trained on the tokenizer {recorded[0]} "
                      f"and the refiner {refiner_dir} on {recorded[1]}: collaborative "
                      "sampling needs one tokenizer")


@dataclasses.dataclass
class Setup:
  """What measuring a run needs: the model, its tokenizer and the reference statistics."""
  run_dir: str
  model: Any
  params: Any
  cfg: Any
  tokenizer: Any
  tokenizer_params: Any  # {"params": ...}
  tokenizer_dir: str
  resolution: int
  split: str
  ref: Any  # FeatureStats of the reference split
  ref_path: str


def check_args(run_dir: str, num_samples: int, batch_size: int) -> None:
  if num_samples < 2 or batch_size < 1:
    raise VarjaxError(f"need at least 2 samples and a batch size >= 1, got {num_samples} "
                      f"and {batch_size}")
  if not os.path.isdir(run_dir):
    raise VarjaxError(f"run directory not found: {run_dir}")


def prepare(run_dir: str, network: FeatureNetwork, *, tokenizer_dir: str | None = None,
            reference_split: str | None = None, data_dir: str | None = None,
            cache_dir: str | None = None, progress: bool | None = None) -> Setup:
  """Loads the run and its tokenizer, checks them against each other and the network, and
  reads (or computes once) the reference statistics."""
  model, params, cfg = store.load_var(run_dir)
  tokenizer_dir = resolve_tokenizer(run_dir, cfg, tokenizer_dir)
  tokenizer, tok_params, tok_cfg = store.load_tokenizer(tokenizer_dir)
  store.check_same_tokens(cfg, tok_cfg, f"the model in {run_dir}", f"the tokenizer {tokenizer_dir}")
  resolution = tok_cfg.data.resolution
  network.check_images((1, resolution, resolution, 3))
  split = reference_split or reference.default_split(cfg.data.train_split)
  data_dir = data_dir or cfg.data.data_dir
  ref, ref_path, _ = reference.reference_stats(
      network, cfg.data.dataset, split, resolution, data_dir, cache_dir,
      label_key=cfg.data.label_key, image_key=cfg.data.image_key, progress=progress)
  return Setup(run_dir, model, params, cfg, tokenizer, {"params": tok_params}, tokenizer_dir,
               resolution, split, ref, ref_path)


def protocol_record(setup: Setup, network: FeatureNetwork, protocol: sampling.SamplingProtocol,
                    num_samples: int, batch_size: int) -> dict[str, Any]:
  """Everything a distance depends on (stored next to it)."""
  cfg = setup.cfg
  return {
      "metric": network.metric, "cfg": protocol.cfg, "top_k": protocol.top_k,
      "top_p": protocol.top_p, "seed": protocol.seed, "num_samples": num_samples,
      "batch_size": batch_size, "labels": f"balanced over {cfg.model.num_classes} classes",
      "feature_network": network.name, "feature_fingerprint": network.fingerprint,
      "feature_path": network.path, "feature_dim": network.dim,
      "reference": {"dataset": cfg.data.dataset, "split": setup.split,
                    "resolution": setup.resolution, "count": setup.ref.count,
                    "stats_file": setup.ref_path},
      "tokenizer": setup.tokenizer_dir,
  }


def evaluate_run(run_dir: str, network: FeatureNetwork, *, tokenizer_dir: str | None = None,
                 num_samples: int = 1024, batch_size: int = 64,
                 protocol: sampling.SamplingProtocol = sampling.SamplingProtocol(),
                 reference_split: str | None = None, data_dir: str | None = None,
                 cache_dir: str | None = None, grid_size: int = 64,
                 progress: bool | None = None) -> dict[str, Any]:
  """Samples, measures and records; returns {metric, value, sample_protocol, ...}."""
  check_args(run_dir, num_samples, batch_size)
  if (not os.path.isfile(os.path.join(run_dir, SUMMARY_FILE))
      and os.path.isdir(os.path.join(run_dir, "checkpoints"))):
    # The trainer reads an existing summary.json as "finished": never write one for it.
    raise VarjaxError(f"{run_dir} has training checkpoints but no {SUMMARY_FILE}: the run has "
                      "not finished; evaluate it when it has")
  start = time.time()
  setup = prepare(run_dir, network, tokenizer_dir=tokenizer_dir,
                  reference_split=reference_split, data_dir=data_dir, cache_dir=cache_dir,
                  progress=progress)
  labels = balanced_labels(num_samples, setup.cfg.model.num_classes, protocol.seed)
  samples = generate(setup.model, setup.params, setup.tokenizer, setup.tokenizer_params, labels,
                     protocol, batch_size, progress)
  stats = reference.feature_stats(network, samples, progress=progress,
                                  desc=f"{network.name} features of the samples")
  value = stats.distance(setup.ref)
  sample_protocol = protocol_record(setup, network, protocol, num_samples, batch_size)
  summary = read_summary(run_dir)
  summary[network.metric] = value
  previous = summary.get("sample_protocol")
  if isinstance(previous, dict) and previous.get("metric") not in (None, network.metric):
    summary[f"sample_protocol_{previous['metric']}"] = previous  # keep it with its number
  summary["sample_protocol"] = sample_protocol
  files.write_json(os.path.join(run_dir, SUMMARY_FILE), summary)
  grid = None
  if grid_size > 0:
    from varjax.data import preview
    shown = samples[:grid_size]
    grid = preview.save_image_grid(shown, os.path.join(run_dir, GRID_FILE),
                                   columns=int(np.ceil(np.sqrt(len(shown)))))
  return {"metric": network.metric, "value": value, "sample_protocol": sample_protocol,
          "grid": grid, "seconds": round(time.time() - start, 1)}
