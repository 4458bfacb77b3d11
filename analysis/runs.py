"""The run registry as a table: one row per finished run directory.

A run directory holds `config.json`, `metrics.jsonl` (one JSON object per logged step)
and, once finished, `summary.json`. Summary keys become columns as they are; config keys
become `config.<section>.<key>` columns, and a sweep's `sweep.json` (model, budget, seed, lr
scale: sweeps/registry.py) `sweep.<key>` columns. Expected summary keys (see docs/analysis.md):
`params` and `params_no_head` (N in both conventions), `tokens` (D), `flops_exact` and
`flops_6nd` (training FLOPs in both conventions), `loss` (final evaluation loss), and
optionally `fd_<network>` / `fid` (sample-quality distances).

VAR's evaluation metrics also get the names of its scaling-law figures (Tian et al. 2024;
`var_eval_columns`): `loss_avg` (mean cross-entropy over all tokens, = `loss`), `loss_last`
(over the last scale's tokens, = `loss_tail`), `err_avg` / `err_last` (token error rate,
1 - top-1 accuracy, as a fraction: `token_error` / `token_error_tail` are percent) and
`loss_s0`, `loss_s1`, ... (one column per scale, coarse to fine, from `loss_per_scale`).
Runs that predate a metric get NaN in its column.

Runs an early-stop sweep stopped (`stopped_early.json`, sweeps/early_stop.py) are left out
by default, with a warning that counts them: their last loss is that of a run cut short
in its schedule, not a trained run's final loss, and an L(N, D) fit must not take it for
one. `include_stopped_early=True` adds them and a `stopped_early` column (True for them,
False for every finished run), `loss` the last eval loss at or before the stop step (NaN if none), `tokens`
and `flops_exact` at that eval's step, and `forecast_loss` / `stopped_at_step` /
`early_stop_rank`.
"""

from __future__ import annotations

import json
import os
import warnings

import pandas as pd

from analysis.validate import AnalysisError


def _flatten(prefix: str, value, out: dict) -> None:
  if isinstance(value, dict):
    for k, v in value.items():
      _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
  elif isinstance(value, list):
    out[prefix] = tuple(value)
  else:
    out[prefix] = value


def run_dirs(path: str) -> list[str]:
  """Every directory below `path` (itself included) holding a config.json."""
  if not os.path.isdir(path):
    raise AnalysisError(f"run registry {path!r} does not exist")
  found = []
  for root, dirs, files in os.walk(path):
    dirs.sort()
    if "config.json" in files:
      found.append(root)
      dirs.clear()  # checkpoints and the like live below a run; no runs nest
  return found


def _number(value) -> float:
  if isinstance(value, (int, float)) and not isinstance(value, bool):
    return float(value)
  return float("nan")


def var_eval_columns(summary: dict) -> dict[str, float]:
  """The registry's names for a VAR run's final evaluation (module docstring); {} for a
  summary without VAR's token metrics (a tokenizer run, a hand-written CSV row)."""
  if "token_error" not in summary:
    return {}
  out = {"loss_avg": _number(summary.get("loss")),
         "err_avg": _number(summary["token_error"]) / 100.0}
  if "loss_tail" in summary:
    out["loss_last"] = _number(summary["loss_tail"])
  if "token_error_tail" in summary:
    out["err_last"] = _number(summary["token_error_tail"]) / 100.0
  per_scale = summary.get("loss_per_scale")
  if isinstance(per_scale, list):
    out.update({f"loss_s{k}": _number(v) for k, v in enumerate(per_scale)})
  return out


class _Unreadable(Exception):
  """One line naming the file and why it cannot be read."""


def _read_object(path: str) -> dict:
  try:
    with open(path, encoding="utf-8") as f:
      value = json.load(f)
  except UnicodeDecodeError:
    raise _Unreadable(f"{path} (not valid UTF-8)") from None
  except json.JSONDecodeError as e:
    raise _Unreadable(f"{path} (invalid JSON: {e})") from None
  except OSError as e:
    raise _Unreadable(f"{path} ({e.strerror or e})") from None
  if not isinstance(value, dict):
    raise _Unreadable(f"{path} (not a JSON object)")
  return value


STOPPED_FILE = "stopped_early.json"  # sweeps.registry.STOPPED_FILE


def _stopped_summary(record: dict, sweep: dict) -> dict:
  """The row fields of a run stopped early: its last eval before the stop (module doc)."""
  steps, step = sweep.get("steps"), record.get("eval_step")
  loss = record.get("eval_loss_at_stop")
  share = step / steps if isinstance(step, int) and isinstance(steps, int) and steps else None
  out = {"loss": _number(loss) if share is not None else float("nan"),
         "params": sweep.get("params", float("nan")),
         "stopped_at_step": record.get("stop_step"), "loss_step": step,
         "forecast_loss": record.get("forecast"), "early_stop_rank": record.get("rank")}
  for key in ("tokens", "flops_exact"):
    full = sweep.get(key)
    out[key] = full * share if share is not None and isinstance(full, (int, float)) \
        else float("nan")
  return out


def load_runs(path: str, include_stopped_early: bool = False) -> pd.DataFrame:
  """A DataFrame of the finished runs under `path`. Unfinished runs are skipped with a
  warning that counts them, runs stopped early likewise unless `include_stopped_early`
  (module doc); runs whose summary, config or sweep file cannot be read (not UTF-8, not
  JSON, not an object) with one warning line naming each file. Columns: `run` (directory
  name), `run_dir`, `stopped_early` (only with include_stopped_early), summary keys, VAR's
  eval metrics by their figure names (loss_last, loss_avg, err_last, err_avg, loss_s<k>),
  `config.*` keys."""
  rows, unfinished, stopped, broken = [], 0, 0, []
  for run_dir in run_dirs(path):
    summary_path = os.path.join(run_dir, "summary.json")
    stop_path = os.path.join(run_dir, STOPPED_FILE)
    is_stopped = not os.path.exists(summary_path) and os.path.exists(stop_path)
    if is_stopped and not include_stopped_early:
      stopped += 1
      continue
    if not os.path.exists(summary_path) and not is_stopped:
      unfinished += 1
      continue
    try:
      summary = _read_object(stop_path if is_stopped else summary_path)
      config = _read_object(os.path.join(run_dir, "config.json"))
      sweep_path = os.path.join(run_dir, "sweep.json")
      sweep = _read_object(sweep_path) if os.path.exists(sweep_path) else {}
      if is_stopped:
        summary = _stopped_summary(summary, sweep)
    except _Unreadable as e:
      broken.append(str(e))
      continue
    row = {"run": os.path.basename(run_dir), "run_dir": run_dir}
    if include_stopped_early:
      row["stopped_early"] = is_stopped
    _flatten("", summary, row)
    row.update({k: v for k, v in var_eval_columns(summary).items() if k not in row})
    _flatten("config", config, row)
    _flatten("sweep", sweep, row)
    rows.append(row)
  if unfinished:
    warnings.warn(f"{unfinished} unfinished run(s) under {path} skipped (no summary.json)")
  if stopped:
    warnings.warn(f"{stopped} run(s) under {path} stopped early by their sweep skipped (their "
                  "loss is not a trained run's; --include-stopped-early adds them)")
  if broken:
    warnings.warn(f"{len(broken)} run(s) with unreadable files skipped: {'; '.join(broken)}")
  return pd.DataFrame(rows)


def load_metrics(path: str) -> pd.DataFrame:
  """Every logged step of every run under `path` (finished or not), with a `run` column:
  the training curves Approach 1 and the annealing law use."""
  frames = []
  for run_dir in run_dirs(path):
    metrics = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(metrics):
      continue
    records = []
    with open(metrics) as f:
      for line in f:
        line = line.strip()
        if line:
          try:
            records.append(json.loads(line))
          except json.JSONDecodeError:
            break  # a run killed mid-write leaves a partial last line
    if records:
      frame = pd.DataFrame(records)
      frame.insert(0, "run", os.path.basename(run_dir))
      frames.append(frame)
  return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
