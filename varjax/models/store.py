"""Model directories: `config.json` + `params.msgpack`, for finished or converted models.

A model directory is what a tokenizer run, a converted official checkpoint (and, with the
training issue, an exported VAR run) leave behind: the full `Config` and the parameters as
a flax msgpack of {"step", "params"}. Training checkpoints (optimizer state, RNG, data
position) are a different thing and live with the trainer.

Why msgpack and not orbax here: a model directory is one small file read whole on the host
(for sampling, tokenizing, conversion); orbax's sharded, asynchronous machinery is for the
training state. Writes go to a temp file and are renamed, so a crash never leaves a
half-written file under the final name.
"""

from __future__ import annotations

import os
from typing import Any

import flax.serialization
import jax
import numpy as np

from varjax import config as config_lib
from varjax import files
from varjax.errors import VarjaxError

CONFIG_FILE = "config.json"
PARAMS_FILE = "params.msgpack"


def save_params(params, path: str, step: int = 0) -> None:
  files.write_atomic(path, flax.serialization.to_bytes(
      {"step": step, "params": jax.device_get(params)}))


def read_params(path: str, template) -> tuple[Any, int]:
  """(params shaped like `template` (arrays or ShapeDtypeStructs), step)."""
  zeros = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), template)
  with open(path, "rb") as f:
    try:
      state = flax.serialization.from_bytes({"step": 0, "params": zeros}, f.read())
    except (ValueError, KeyError, TypeError) as e:
      raise VarjaxError(f"{path} does not hold parameters of this model "
                        f"({str(e).splitlines()[0]})") from None
  for want, got in zip(jax.tree.leaves(zeros), jax.tree.leaves(state["params"])):
    if np.shape(want) != np.shape(got):
      raise VarjaxError(f"{path}: a parameter has shape {np.shape(got)}, the config needs "
                        f"{np.shape(want)}")
  return state["params"], int(state["step"])


def save_model_dir(directory: str, cfg: config_lib.Config, params, step: int = 0) -> None:
  os.makedirs(directory, exist_ok=True)
  cfg.save(os.path.join(directory, CONFIG_FILE))
  save_params(params, os.path.join(directory, PARAMS_FILE), step)


def read_model_config(directory: str, what: str, hint: str = "") -> config_lib.Config:
  """The config of a model directory; a missing file is one clear error naming `what`."""
  for name in (CONFIG_FILE, PARAMS_FILE):
    if not os.path.isfile(os.path.join(directory, name)):
      raise VarjaxError(f"{directory} is not a {what} directory: {name} is missing{hint}")
  return config_lib.load_config(os.path.join(directory, CONFIG_FILE))


def check_same_tokens(var_cfg: config_lib.Config, tok_cfg: config_lib.Config,
                      var_name: str = "the model", tok_name: str = "the tokenizer") -> None:
  """A VAR model and a tokenizer must agree on the schedule, codebook and latent width."""
  for key in ("patch_nums", "vocab_size", "latent_channels"):
    a, b = getattr(var_cfg.model, key), getattr(tok_cfg.model, key)
    if tuple(np.atleast_1d(a)) != tuple(np.atleast_1d(b)):
      raise VarjaxError(f"{var_name} and {tok_name} disagree on {key}: {a} vs {b}")


def load_tokenizer(directory: str):
  """(VQVAE model, params, Config) of a trained or converted tokenizer."""
  from varjax.models import vqvae
  cfg = read_model_config(directory, "finished tokenizer run",
                          " (train one with `varjax tokenizer train`)")
  model = vqvae.build(cfg.tokenizer, cfg.model.patch_nums)
  template = jax.eval_shape(lambda: vqvae.init_params(model, 0, cfg.data.resolution))
  params, _ = read_params(os.path.join(directory, PARAMS_FILE), template)
  return model, params, cfg


def load_var(directory: str):
  """(VAR model, {"params": ...}, Config) from a model directory."""
  from varjax.models import var
  cfg = read_model_config(directory, "VAR model")
  template = var.param_shapes(cfg.model)
  params, _ = read_params(os.path.join(directory, PARAMS_FILE), template)
  return var.VAR(cfg.model), {"params": params}, cfg
