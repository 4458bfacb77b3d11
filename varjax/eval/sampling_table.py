"""`varjax eval sampling`: quality and cost of sampler configurations, one row each.

    varjax eval sampling --runs runs/demo/a,runs/demo/b --refiner runs/demo/b
        --switch-scale 2 --best-of 2 --best-of 4 --verifier runs/features/embed32cnn
        --feature-net runs/features/embed32cnn --num-images 1024 --out sampling.csv

Configurations: every run sampled plainly; every run as the drafter of every (--refiner,
--switch-scale) pair (collaborative decoding); every run searched best-of-K for every
--best-of K under --verifier. Each row holds the configuration's fd_<network> (or fid),
measured as `varjax eval fid` measures it (fid.prepare, fid.generate, the same labels,
keys and reference statistics; nothing is written into the runs), a 95% bootstrap interval
of that distance over the sample set (basic bootstrap, fd_with_interval), images/s and
wall time of sampling (compilation excluded: one untimed batch compiles first), the
process's peak memory, sampling FLOPs per image (varjax/models/sampling_cost.py;
best-of-K: K samples plus K verifier calls), the verifier's scores, and each run's N and
training FLOPs from its summary.json. Columns: docs/eval.md. `python -m analysis plan
--sampling-table FILE` reads the table.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import resource
import time
from typing import Any, Sequence

import numpy as np

from varjax import files
from varjax.errors import VarjaxError
from varjax.eval import fid
from varjax.models import sampling, store

# Every row has every column (empty where it does not apply), in this order.
COLUMNS = (
    "config", "sampler", "run", "refiner", "switch_scale", "k",
    "params", "refiner_params", "train_flops",
    "metric", "quality", "quality_low", "quality_high", "quality_bootstrap",
    "num_images", "batch_size", "images_per_s", "wall_s", "peak_memory_bytes",
    "peak_memory_kind",
    "sampling_flops_per_image", "verifier_flops_per_image", "total_flops_per_image",
    "verifier", "verifier_mean_score", "candidate_mean_score", "coverage",
    "coverage_threshold",
    "cfg", "top_k", "top_p", "seed", "feature_network", "feature_fingerprint",
    "reference_dataset", "reference_split", "reference_count", "tokenizer", "device")


@dataclasses.dataclass(frozen=True)
class Config:
  sampler: str  # plain | collaborative | best_of_k
  run: str
  refiner: str | None = None
  switch: int | None = None
  k: int = 1

  @property
  def name(self) -> str:
    run = os.path.basename(os.path.normpath(self.run))
    if self.sampler == "collaborative":
      return f"{run}>{os.path.basename(os.path.normpath(self.refiner))}@{self.switch}"
    return run if self.sampler == "plain" else f"{run} best-of-{self.k}"


def configurations(runs: Sequence[str], refiners: Sequence[str] = (),
                   switches: Sequence[int] = (), best_of: Sequence[int] = ()) -> list[Config]:
  """Plain per run, then each run with each (refiner, switch) pair (except itself: a model
  paired with itself samples what it samples alone), then each run best-of-K."""
  if len(refiners) != len(switches):
    raise VarjaxError(f"each --refiner needs its --switch-scale (in the same order): got "
                      f"{len(refiners)} --refiner and {len(switches)} --switch-scale")
  out = [Config("plain", r) for r in runs]
  out += [Config("collaborative", r, ref, int(k)) for r in runs
          for ref, k in zip(refiners, switches) if os.path.realpath(r) != os.path.realpath(ref)]
  out += [Config("best_of_k", r, k=int(k)) for r in runs for k in best_of]
  return out


def check(configs: Sequence[Config], verifier_dir: str | None) -> None:
  """Every mistake the configurations can hold, before any model is loaded: missing runs,
  drafter/refiner pairs that do not share a schedule and tokenizer, k outside the
  schedule, K < 1, best-of-K without a verifier."""
  from varjax.models import search
  if not configs:
    raise VarjaxError("--runs names no run")
  read = {}

  def cfg_of(run):
    if run not in read:
      if not os.path.isdir(run):
        raise VarjaxError(f"run directory not found: {run}")
      read[run] = store.read_model_config(run, "VAR model")
    return read[run]

  for c in configs:
    cfg = cfg_of(c.run)
    if c.sampler == "collaborative":
      other = cfg_of(c.refiner)
      sampling.check_collaborative(cfg.model, other.model, c.switch)
      fid.check_one_tokenizer(c.run, cfg, c.refiner, other)
    if c.sampler == "best_of_k":
      search.check_search(c.k, len(cfg.model.patch_nums))
      if not verifier_dir:
        raise VarjaxError("--best-of needs --verifier DIR (a feature network: `varjax eval "
                          "features train`), whose class confidence scores the samples")


def _summary_numbers(run: str) -> tuple[float | None, float | None]:
  """(N, training FLOPs) from the run's summary.json (None when it records none)."""
  summary = fid.read_summary(run)
  return tuple(float(summary[k]) if isinstance(summary.get(k), (int, float)) else None
               for k in ("params", "flops_exact"))


def peak_memory() -> tuple[int, str]:
  """The process's peak memory so far: the device's peak_bytes_in_use on GPU/TPU, else the
  host's maximum resident set size. Neither can be reset."""
  import jax
  device = jax.devices()[0]
  if device.platform != "cpu":
    stats = device.memory_stats() or {}
    if "peak_bytes_in_use" in stats:
      return int(stats["peak_bytes_in_use"]), "device_peak_bytes_in_use"
  return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "host_max_rss"


def fd_with_interval(network, samples_uint8: np.ndarray, ref, replicates: int, seed: int,
                     progress: bool | None = None) -> tuple[float, float | None, float | None]:
  """The distance of the samples' features to `ref` and a 95% basic bootstrap interval over
  `replicates` resamples (with replacement) of the sample set, [2 d - q97.5, 2 d - q2.5]
  clipped at 0: a resample repeats images, which raises its distance, so the percentile
  interval itself would sit above d. No interval for 0 replicates."""
  from varjax import progress as progress_lib
  from varjax.eval.frechet import FeatureStats
  chunk = network.batch_size * 4
  feats = np.concatenate([network.features(samples_uint8[i:i + chunk]) for i in progress_lib.bar(
      range(0, len(samples_uint8), chunk), desc=f"{network.name} features", unit="batch",
      enabled=progress)])
  value = FeatureStats.from_features(feats).distance(ref)
  if replicates <= 0:
    return value, None, None
  rng = np.random.default_rng([seed, 9])
  draws = [FeatureStats.from_features(feats[rng.integers(0, len(feats), len(feats))]).distance(ref)
           for _ in range(replicates)]
  low, high = np.percentile(draws, [2.5, 97.5])
  return value, max(0.0, 2 * value - float(high)), max(0.0, 2 * value - float(low))


def measure(c: Config, network, *, num_images: int, batch_size: int,
            protocol: sampling.SamplingProtocol, tokenizer_dir: str | None = None,
            reference_split: str | None = None, data_dir: str | None = None,
            cache_dir: str | None = None, verifier=None, verifier_flops: float | None = None,
            coverage_threshold: float = 0.5, fd_bootstrap: int = 20,
            progress: bool | None = None, setups: dict | None = None) -> dict[str, Any]:
  """One configuration's row (module docstring; columns in docs/eval.md)."""
  import jax
  from varjax.models import search
  from varjax.models.sampling_cost import sampling_cost
  fid.check_args(c.run, num_images, batch_size)
  setups = {} if setups is None else setups
  if c.run not in setups:
    setups[c.run] = fid.prepare(c.run, network, tokenizer_dir=tokenizer_dir,
                                reference_split=reference_split, data_dir=data_dir,
                                cache_dir=cache_dir, progress=progress)
  s = setups[c.run]
  refiner = None
  if c.sampler == "collaborative":
    r_model, r_params, r_cfg = store.load_var(c.refiner)
    sampling.check_collaborative(s.cfg.model, r_cfg.model, c.switch)
    refiner = (r_model, r_params)
  if c.sampler == "best_of_k":
    verifier.check(s.cfg.model.num_classes, s.resolution)
  found = []  # best-of-K: the SearchResult of every batch

  def sample_batch(labels, b):
    if c.sampler != "best_of_k":
      return sampling.sample_images(s.model, s.params, s.tokenizer, s.tokenizer_params, labels,
                                    protocol, batch_index=b, refiner=refiner, switch=c.switch)
    result = search.best_of_k(s.model, s.params, s.tokenizer, s.tokenizer_params, labels, c.k,
                              verifier, protocol, batch_index=b)
    found.append(result)
    return result.images

  labels = fid.balanced_labels(num_images, s.cfg.model.num_classes, protocol.seed)
  warm = np.concatenate([labels[:batch_size],
                         np.zeros(max(0, batch_size - num_images), labels.dtype)])
  jax.block_until_ready(sample_batch(warm, 0))  # compiles; not timed
  found.clear()
  start = time.perf_counter()
  samples = fid.generate(s.model, s.params, s.tokenizer, s.tokenizer_params, labels, protocol,
                         batch_size, progress, sample_batch=sample_batch)
  wall = time.perf_counter() - start
  memory, memory_kind = peak_memory()
  value, low, high = fd_with_interval(network, samples, s.ref, fd_bootstrap, protocol.seed,
                                      progress)

  n, train_flops = _summary_numbers(c.run)
  row = {"config": c.name, "sampler": c.sampler, "run": c.run, "k": c.k, "params": n,
         "train_flops": train_flops}
  if refiner is not None:
    rn, r_flops = _summary_numbers(c.refiner)
    row.update(refiner=c.refiner, switch_scale=c.switch, refiner_params=rn,
               train_flops=None if train_flops is None or r_flops is None
               else train_flops + r_flops)
  per_sample = sampling_cost(s.cfg.model, None if refiner is None else refiner[0].cfg,
                             c.switch if refiner is not None else None,
                             protocol.cfg > 0)["total"]
  sampling_flops = float(c.k * per_sample)
  verifier_part = 0.0 if c.sampler != "best_of_k" else (
      None if verifier_flops is None else c.k * verifier_flops)
  row.update(sampling_flops_per_image=sampling_flops, verifier_flops_per_image=verifier_part,
             total_flops_per_image=None if verifier_part is None
             else sampling_flops + verifier_part)
  if found:
    chosen = np.concatenate([r.scores for r in found])[:num_images]
    candidates = np.concatenate([r.candidate_scores for r in found])[:num_images]
    row.update(verifier=verifier.name, verifier_mean_score=float(chosen.mean()),
               candidate_mean_score=float(candidates.mean()),
               coverage=float(np.mean(chosen >= coverage_threshold)),
               coverage_threshold=coverage_threshold)
  record = fid.protocol_record(s, network, protocol, num_images, batch_size)
  ref = record["reference"]
  row.update(metric=network.metric, quality=value, quality_low=low, quality_high=high,
             quality_bootstrap=fd_bootstrap, num_images=num_images, batch_size=batch_size,
             images_per_s=num_images / wall, wall_s=wall, peak_memory_bytes=memory,
             peak_memory_kind=memory_kind, cfg=protocol.cfg, top_k=protocol.top_k,
             top_p=protocol.top_p, seed=protocol.seed, feature_network=network.name,
             feature_fingerprint=network.fingerprint, reference_dataset=ref["dataset"],
             reference_split=ref["split"], reference_count=ref["count"],
             tokenizer=s.tokenizer_dir, device=jax.devices()[0].device_kind)
  return {key: row.get(key) for key in COLUMNS}


def write_table(rows: Sequence[dict], path: str) -> str:
  """CSV (empty cells for None) or JSONL (null), by the file's extension."""
  if path.endswith(".jsonl"):
    text = "".join(json.dumps(r) + "\n" for r in rows)
  else:
    import io
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows([{k: "" if v is None else v for k, v in r.items()} for r in rows])
    text = buffer.getvalue()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  files.write_atomic(path, text.encode())
  return path


def check_out(path: str) -> None:
  if not path.endswith((".csv", ".jsonl")):
    raise VarjaxError(f"--out {path}: the table is written as .csv or .jsonl")
  if os.path.isdir(path):
    raise VarjaxError(f"--out {path}: is a directory; give a file name")
