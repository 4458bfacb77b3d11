"""Run directories shared by every trainer (tokenizer, VAR runs, lanes) and by sweeps.

    config.json          the config being trained (see `claim` for what may change)
    config_history.jsonl configs this directory held before, one JSON line each, with why
                         they were replaced
    metrics.jsonl        one JSON object per logged step (varjax.train.metrics)
    checkpoints/         training state (varjax.train.checkpoint)
    params.msgpack       final parameters: with config.json the run is also a model
                         directory (varjax.models.store.load_var / load_tokenizer)
    summary.json         written last: its presence marks the run finished
    .lock                held (flock) by the one process training the run

A run directory is self-contained: nothing in it records where it lives, so a copied or
moved run resumes from its new place (run.out_dir may differ).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from typing import Iterator

from varjax import config as config_lib, files
from varjax.config import Config
from varjax.errors import VarjaxError

CONFIG_FILE = "config.json"
HISTORY_FILE = "config_history.jsonl"
SUMMARY_FILE = "summary.json"
LOCK_FILE = ".lock"
# Files a launcher may put into a run directory before the run writes its config
# (sweeps: sweep.json, error.json of a failed attempt).
LAUNCHER_FILES = frozenset({LOCK_FILE, HISTORY_FILE, "sweep.json", "error.json"})

# Keys that do not change what is trained: a run with checkpoints may resume under new
# values (a moved directory, another mesh when orbax can reshard the checkpoint onto it,
# another logging / saving cadence, the sample-quality protocol measured at the end).
RESUME_FREE_SECTIONS = ("mesh", "eval")
RESUME_FREE_KEYS = ("run.out_dir", "run.log_every", "run.eval_every", "run.checkpoint_every",
                    "run.keep_checkpoints", "run.restart_if_damaged")


class RunBusy(VarjaxError):
  """Another process holds the run's lock."""


def run_dir(cfg: Config) -> str:
  return os.path.join(cfg.run.out_dir, cfg.run.name)


def has_checkpoints(directory: str) -> bool:
  ckpt = os.path.join(directory, "checkpoints")
  return os.path.isdir(ckpt) and any(name.isdigit() for name in os.listdir(ckpt))


def training_differences(new: Config, saved: Config) -> list[str]:
  """Dotted keys in which `new` trains differently from `saved`."""
  return [key for key in config_lib.differences(new, saved, ignore=RESUME_FREE_KEYS)
          if key.split(".")[0] not in RESUME_FREE_SECTIONS]


def _describe(keys: list[str], new: Config, saved: Config) -> str:
  old_values, new_values = config_lib.to_dict(saved), config_lib.to_dict(new)

  def value(values, key):
    section, name = key.split(".", 1)
    return json.dumps(values[section].get(name))
  return "; ".join(f"{k}: {value(old_values, k)} -> {value(new_values, k)}" for k in keys)


def _record_previous(directory: str, saved: Config, reason: str) -> None:
  line = json.dumps({"time": time.time(), "reason": reason, "config": config_lib.to_dict(saved)})
  with open(os.path.join(directory, HISTORY_FILE), "a") as f:
    f.write(line + "\n")


def claim(directory: str, cfg: Config, write: bool = True, log=print) -> None:
  """Makes `directory` the run of `cfg` (writes config.json when `write`), or refuses.

  - No config.json: the directory must be new, empty, or hold only launcher files; any
    other content is someone else's and is refused.
  - The same config: resume.
  - Another config, no checkpoint yet (an attempt that failed before saving anything):
    the new config replaces it; the old one is kept in config_history.jsonl.
  - Another config and checkpoints (or a finished run): allowed when only keys that do not
    change training differ (RESUME_FREE_*: a moved directory, another mesh, ...); otherwise
    refused with every differing key and how to start over.
  """
  path = os.path.join(directory, CONFIG_FILE)
  if not os.path.isfile(path):
    if os.path.isdir(directory):
      foreign = sorted(set(os.listdir(directory)) - LAUNCHER_FILES)
      if foreign:
        raise VarjaxError(
            f"{directory} is not empty ({', '.join(foreign[:4])}{', ...' if len(foreign) > 4 else ''}) "
            "and holds no varjax run (no config.json); choose another --run.name or "
            "--run.out_dir (nothing was changed)")
    if write:
      os.makedirs(directory, exist_ok=True)
      config_lib.save_config(cfg, path)
    return
  saved = config_lib.load_config(path)
  if saved == cfg:
    return
  changed = training_differences(cfg, saved)
  finished = finished_summary(directory) is not None
  if not changed:
    reason = ("resumed with other values of keys that do not change training: "
              + _describe(config_lib.differences(cfg, saved), cfg, saved))
  elif not has_checkpoints(directory) and not finished:
    reason = ("replaced before any checkpoint (a failed or empty attempt): "
              + _describe(changed, cfg, saved))
    log(f"{directory}: the earlier attempt saved no checkpoint; training this config "
        f"instead of the one it had ({_describe(changed, cfg, saved)})")
  else:
    what = "a finished run" if finished else "checkpoints"
    raise VarjaxError(
        f"{directory} holds {what} of another config ({_describe(changed, cfg, saved)}); "
        f"to train this config choose another --run.name, or start over by deleting "
        f"{os.path.join(directory, 'checkpoints')}"
        + (f" and {os.path.join(directory, SUMMARY_FILE)}" if what == "a finished run" else "")
        + " (nothing was changed)")
  if write:
    _record_previous(directory, saved, reason)
    config_lib.save_config(cfg, path)


def finished_summary(directory: str) -> dict | None:
  path = os.path.join(directory, SUMMARY_FILE)
  if not os.path.isfile(path):
    return None
  try:
    with open(path) as f:
      return json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise VarjaxError(f"{path} is damaged ({e}); delete it to finish the run again") from None


_held: dict[str, int] = {}  # lock path -> depth, for re-entry by the same process


@contextlib.contextmanager
def run_lock(directory: str) -> Iterator[None]:
  """Holds the run's lock (flock on <run>/.lock) for the block; raises RunBusy at once if
  another process has it. Re-entrant within a process (a sweep holds it around `train`,
  which takes it too). The kernel drops a flock when its process dies, so a killed run
  never stays locked."""
  os.makedirs(directory, exist_ok=True)
  path = os.path.realpath(os.path.join(directory, LOCK_FILE))
  if _held.get(path):
    _held[path] += 1
    try:
      yield
    finally:
      _held[path] -= 1
    return
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise RunBusy(f"{directory} is being trained by another process (it holds "
                    f"{path}); wait for it to finish or stop it") from None
    _held[path] = 1
    try:
      yield
    finally:
      del _held[path]
  finally:
    os.close(fd)


def write_summary(directory: str, summary: dict) -> None:
  """summary.json, written last (atomically): it marks the run finished."""
  files.write_json(os.path.join(directory, SUMMARY_FILE), summary)
