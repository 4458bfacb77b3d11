"""Run directories shared by every trainer (tokenizer and VAR).

    config.json    written when the run starts; a directory holding another config is
                   refused (nothing is overwritten), the same config resumes
    metrics.jsonl  one JSON object per logged step (varjax.train.metrics)
    checkpoints/   training state (format owned by the trainer)
    params.msgpack final parameters: with config.json the run is also a model directory
                   (varjax.models.store.load_var / load_tokenizer)
    summary.json   written last: its presence marks the run finished
"""

from __future__ import annotations

import json
import os

from varjax import config as config_lib
from varjax.config import Config
from varjax.errors import VarjaxError

SUMMARY_FILE = "summary.json"


def run_dir(cfg: Config) -> str:
  return os.path.join(cfg.run.out_dir, cfg.run.name)


def claim(directory: str, cfg: Config, write: bool = True) -> None:
  """Writes config.json, or checks that an existing run directory holds the same config."""
  path = os.path.join(directory, "config.json")
  if os.path.isfile(path):
    saved = config_lib.load_config(path)
    if saved != cfg:
      diff = config_lib.differences(cfg, saved)
      raise VarjaxError(f"{directory} holds a run with another config (differs in "
                        f"{', '.join(diff[:5]) or 'its sections'}); choose another "
                        "--run.name or --out-dir (nothing was overwritten)")
    return
  if write:
    os.makedirs(directory, exist_ok=True)
    config_lib.save_config(cfg, path)


def finished_summary(directory: str) -> dict | None:
  path = os.path.join(directory, SUMMARY_FILE)
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)
