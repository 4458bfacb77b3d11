"""Early stopping of lr sweeps (sweeps/early_stop.py): the plan, the decision against
analysis.extrapolate's own forecast, crash safety, and the registry's exclusion of
stopped runs from fits. The default tests fake the training (curves written by hand);
the end-to-end sweep trains for real and is slow."""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest

import train_fixtures as tf
from analysis import extrapolate, load_runs
from analysis import cli as analysis_cli
from analysis.pipeline import read_table
from sweeps import cli, early_stop, launch, registry, spec as spec_lib
from test_sweeps import ONE_MODEL, TOKENS_PER_STEP, write_spec
from varjax import config as config_lib, files

LR_SWEEP = {"rule": "config", "scales": [0.3, 1, 3]}
BUDGET = {"tokens": [30 * TOKENS_PER_STEP]}  # 30 steps: stop at round(0.3 x 30) = 9
# The fake runs' curves: L = 3 + c step^-0.5 with c by lr scale; scale 1 learns best.
CURVE = {0.3: 2.0, 1: 1.0, 3: 1.5}


def _spec(tmp_path, setup=None, **fields) -> str:
  fields.setdefault("early_stop", {"at": 0.3, "keep": 0.34})
  return write_spec(tmp_path, setup, models=ONE_MODEL, budgets=fields.pop("budgets", BUDGET),
                    lr=fields.pop("lr", LR_SWEEP), **fields)


def fake_run_one(calls: list, crash_at: set | None = None):
  """A stand-in for launch.run_one writing what a trained run leaves: config.json,
  sweep.json, metrics (the run's CURVE), a checkpoint at its last step, and summary.json
  when it reaches the end."""

  def run_one(run, *, progress=None, log=print, stop_at=None, **_):
    status = registry.status(run.directory)
    if status in ("finished", "stopped_early"):
      return {"run": run.name, "status": status, "seconds": 0.0}
    if crash_at and (run.name, stop_at) in crash_at:
      crash_at.discard((run.name, stop_at))
      raise KeyboardInterrupt
    calls.append((run.name, stop_at))
    d = run.directory
    os.makedirs(os.path.join(d, "checkpoints"), exist_ok=True)
    files.write_json(os.path.join(d, "config.json"), config_lib.to_dict(run.config))
    files.write_json(os.path.join(d, "sweep.json"), run.info)
    end = stop_at or run.info["steps"]
    c = CURVE[run.info["lr_scale"]]
    with open(os.path.join(d, "metrics.jsonl"), "w") as f:
      for s in range(1, end + 1):
        f.write(json.dumps({"step": s, "split": "train", "loss": 3 + c * s ** -0.5}) + "\n")
      if end == run.info["steps"]:
        f.write(json.dumps({"step": end, "split": "eval", "loss": 3 + c * end ** -0.5}) + "\n")
    os.makedirs(os.path.join(d, "checkpoints", str(end)), exist_ok=True)
    if stop_at:
      registry.append_event(run.config.run.out_dir, run.name, "paused", step=stop_at)
      return {"run": run.name, "status": "paused", "step": stop_at, "seconds": 0.0}
    files.write_json(os.path.join(d, "summary.json"), {
        "loss": 3 + c * end ** -0.5, "params": run.info["params"], "tokens": run.info["tokens"],
        "flops_exact": run.info["flops_exact"]})
    return {"run": run.name, "status": "trained", "loss": 3 + c * end ** -0.5, "seconds": 0.0}

  return run_one


def _own_forecasts(sweep) -> dict[str, float]:
  """Each run's train-loss forecast by analysis.extrapolate, called directly."""
  out = {}
  for r in sweep.runs:
    result = extrapolate.forecast(extrapolate.load_run(r.directory),
                                  r.info["early_stop_step"] / r.info["steps"],
                                  methods=("lr_annealing",), replicates=0)
    out[r.name] = next(f["forecast"] for f in result["forecasts"] if f["split"] == "train")
  return out


# ---------------------------------------------------------------- the spec

def test_plan_groups_everything_but_lr(tmp_path, capsys):
  path = _spec(tmp_path, seeds=[0, 1], early_stop={"at": 0.25, "keep": 0.5})
  sweep = spec_lib.load(path)
  assert len(sweep.runs) == 6
  groups = early_stop.groups(list(sweep.runs))
  assert sorted(groups) == ["d1w32-D1.44e4-s0", "d1w32-D1.44e4-s1"]
  for members in groups.values():  # three lrs each, same seed
    assert sorted(m.info["lr_scale"] for m in members) == [0.3, 1, 3]
    assert len({m.info["seed"] for m in members}) == 1
  assert {r.info["early_stop_step"] for r in sweep.runs} == {8}  # round(0.25 x 30)
  assert all(8 in r.config.run.keep_steps for r in sweep.runs)
  assert sweep.spec.early_stop.kept(3) == 2  # 1.5 -> 2: halves up
  assert spec_lib.EarlyStopSpec(keep=0.34).kept(3) == 1
  assert spec_lib.EarlyStopSpec(keep=0.01).kept(3) == 1  # at least one
  one = spec_lib.load(_spec(tmp_path / "g", seeds=[0, 1],
                            early_stop={"at": 0.3, "group_by": ["model", "budget"]}))
  assert list(early_stop.groups(list(one.runs))) == ["d1w32-D1.44e4"]  # seeds compete too
  grid = spec_lib.load(_spec(tmp_path / "b", batch={"rule": "config", "scales": [1, 2]},
                             budgets={"tokens": [60 * TOKENS_PER_STEP], "tolerance": 0.5}))
  groups = early_stop.groups(list(grid.runs))  # an lr x batch grid: each batch competes alone
  assert sorted(groups) == ["d1w32-D2.88e4-s0-b16", "d1w32-D2.88e4-s0-b32"]
  assert all(len({m.config.data.global_batch_size for m in g}) == 1 and len(g) == 3
             for g in groups.values())
  assert cli.main(["list", path]) == 0
  out = capsys.readouterr().out
  assert "early stop: at 0.25" in out and "group d1w32-D1.44e4-s0: 3 runs, keep 2" in out


@pytest.mark.parametrize("early, lr, key", [
    ({"at": 0}, LR_SWEEP, "early_stop.at"),
    ({"at": 1.5}, LR_SWEEP, "early_stop.at"),
    ({"at": 1}, LR_SWEEP, "early_stop.at"),
    ({"keep": 0}, LR_SWEEP, "early_stop.keep"),
    ({"keep": 1.2}, LR_SWEEP, "early_stop.keep"),
    ({"group_by": ["lr"]}, LR_SWEEP, "early_stop.group_by"),
    ({"at": 0.3, "kept": 1}, LR_SWEEP, "early_stop.kept"),
    ([0.3], LR_SWEEP, "early_stop"),
    ({"at": 0.3}, {"rule": "config"}, "early_stop"),  # not an lr sweep
    ({"at": 0.01}, LR_SWEEP, "early_stop.at"),  # step 0 of 30
])
def test_bad_early_stop_is_one_line(tmp_path, capsys, early, lr, key):
  path = _spec(tmp_path, early_stop=early, lr=lr)
  assert cli.main(["run", path]) == 2
  err = capsys.readouterr().err
  assert err.startswith(f"sweeps: error: {key}:") and err.count("\n") == 1
  assert not os.path.exists(os.path.join(tmp_path, "runs"))


@pytest.mark.parametrize("backend", ["lanes", "ray", "tpu"])
def test_other_backends_refuse_early_stop(tmp_path, capsys, backend):
  assert cli.main(["run", _spec(tmp_path), "--backend", backend]) == 2
  err = capsys.readouterr().err
  assert err.startswith("sweeps: error: early_stop:") and f"BACKEND={backend}" in err


# ---------------------------------------------------------------- decision and registry

def test_keeps_the_best_forecast_and_registry_excludes_the_rest(tmp_path, monkeypatch, capsys):
  calls = []
  monkeypatch.setattr(launch, "run_one", fake_run_one(calls))
  path = _spec(tmp_path)
  sweep = spec_lib.load(path)
  assert cli.main(["run", path, "--progress", "off"]) == 0
  names = [r.name for r in sweep.runs]
  # phase 1 takes every run to step 9, phase 2 only the kept one on
  assert calls == [(n, 9) for n in names] + [(names[1], None)]
  status = {r.name: registry.status(r.directory) for r in sweep.runs}
  assert sorted(status.values()) == ["finished", "stopped_early", "stopped_early"]
  own = _own_forecasts(sweep)
  best = min(own, key=own.get)
  assert status[best] == "finished" and best == names[1]  # CURVE: scale 1 learns best

  decision = early_stop.read_decision(sweep.out_dir, "d1w32-D1.44e4-s0")
  assert decision["split"] == "train" and decision["kept"] == 1
  for row in decision["runs"]:
    assert row["forecast"] == pytest.approx(own[row["run"]], rel=1e-6)
    lo, hi = row["interval_95"]  # recorded beside the forecast (bootstrap)
    assert 0 < lo < hi
  ranks = {n: i + 1 for i, n in enumerate(sorted(own, key=own.get))}
  events = registry.events(sweep.out_dir)
  stopped = {e["run"]: e for e in events if e["event"] == "stopped_early"}
  assert set(stopped) == set(names) - {best}
  for name, e in stopped.items():
    assert e["rank"] == ranks[name] and e["forecast"] == pytest.approx(own[name], rel=1e-6)
    assert e["step"] == 9 and e["of"] == 3 and e["group"] == "d1w32-D1.44e4-s0"
  out = capsys.readouterr().out
  assert "stopped_early" in out and "rank 3 of 3" in out

  # Again: nothing trains, nothing is decided or recorded twice.
  assert cli.main(["run", path, "--progress", "off"]) == 0
  assert len(calls) == 4 and registry.events(sweep.out_dir) == events

  with pytest.warns(UserWarning, match="2 run.*stopped early"):
    table = load_runs(sweep.out_dir)
  assert list(table["run"]) == [best] and "stopped_early" not in table
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    table = load_runs(sweep.out_dir, include_stopped_early=True)
  rows = table.set_index("run")
  assert rows["stopped_early"].to_dict() == {n: n != best for n in names}
  for name in stopped:  # no eval before step 9: no loss to offer, NaN (never a forecast)
    assert np.isnan(rows.loc[name, "loss"]) and rows.loc[name, "stopped_at_step"] == 9
    assert rows.loc[name, "forecast_loss"] == pytest.approx(own[name], rel=1e-6)

  # The fit path (fit / forecast / plan / report read the table through read_table).
  parser = analysis_cli.build_parser()
  args = parser.parse_args(["fit", "--runs", sweep.out_dir])
  with pytest.warns(UserWarning, match="stopped early"):
    assert list(read_table(args)["run"]) == [best]
  args = parser.parse_args(["fit", "--runs", sweep.out_dir, "--include-stopped-early"])
  assert sorted(read_table(args)["run"]) == sorted(names)


def test_a_crash_between_the_phases_loses_nothing(tmp_path, monkeypatch):
  calls = []
  path = _spec(tmp_path)
  sweep = spec_lib.load(path)
  names = [r.name for r in sweep.runs]
  # Ctrl-C in phase 1 (third run), then right after the decision is written (before any
  # run is marked), then in phase 2.
  monkeypatch.setattr(launch, "run_one", fake_run_one(calls, {(names[2], 9)}))
  with pytest.raises(KeyboardInterrupt):
    early_stop.run_local(list(sweep.runs), sweep.spec.early_stop, list(sweep.runs),
                         log=lambda s: None)
  assert calls == [(names[0], 9), (names[1], 9)]
  real_apply = early_stop.apply

  def crash(*a):
    raise KeyboardInterrupt
  monkeypatch.setattr(early_stop, "apply", crash)
  with pytest.raises(KeyboardInterrupt):
    early_stop.run_local(list(sweep.runs), sweep.spec.early_stop, list(sweep.runs),
                         log=lambda s: None)
  assert calls[2:] == [(names[2], 9)]  # only the unfinished first phase ran
  decision = early_stop.read_decision(sweep.out_dir, "d1w32-D1.44e4-s0")
  assert decision is not None
  assert all(registry.status(r.directory) == "interrupted" for r in sweep.runs)
  monkeypatch.setattr(early_stop, "apply", real_apply)
  monkeypatch.setattr(launch, "run_one", fake_run_one(calls, {(names[1], None)}))
  with pytest.raises(KeyboardInterrupt):
    early_stop.run_local(list(sweep.runs), sweep.spec.early_stop, list(sweep.runs),
                         log=lambda s: None)
  outcomes = early_stop.run_local(list(sweep.runs), sweep.spec.early_stop, list(sweep.runs),
                                  log=lambda s: None)
  assert calls[3:] == [(names[1], None)]
  assert [o["status"] for o in outcomes] == ["stopped_early", "trained", "stopped_early"]
  assert early_stop.read_decision(sweep.out_dir, "d1w32-D1.44e4-s0") == decision
  events = [e["event"] for e in registry.events(sweep.out_dir)
            if e["event"] in ("kept", "stopped_early")]
  assert sorted(events) == ["kept", "stopped_early", "stopped_early"]


def test_a_group_waits_for_its_unselected_runs(tmp_path, monkeypatch, capsys):
  calls = []
  monkeypatch.setattr(launch, "run_one", fake_run_one(calls))
  path = _spec(tmp_path)
  sweep = spec_lib.load(path)
  runs = list(sweep.runs)
  outcomes = early_stop.run_local(runs[:2], sweep.spec.early_stop, runs, log=lambda s: None)
  assert [o["status"] for o in outcomes] == ["paused", "paused"]
  assert early_stop.read_decision(sweep.out_dir, "d1w32-D1.44e4-s0") is None
  capsys.readouterr()
  assert cli.main(["list", path]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert [next(ln for ln in lines if ln.strip().startswith(r.name)).split()[9]
          for r in runs] == ["paused", "paused", "pending"]
  outcomes = early_stop.run_local(runs[2:], sweep.spec.early_stop, runs, log=lambda s: None)
  assert outcomes[0]["status"] == "stopped_early"
  assert calls == [(r.name, 9) for r in runs]  # decided; the kept run waits for its turn


def test_an_unforecastable_group_keeps_every_run(tmp_path, monkeypatch):
  calls = []
  monkeypatch.setattr(launch, "run_one", fake_run_one(calls))
  # 10 steps: stop at step 3, too few points for the annealing law's 4 parameters
  sweep = spec_lib.load(_spec(tmp_path, budgets={"tokens": [10 * TOKENS_PER_STEP]}))
  outcomes = early_stop.run_local(list(sweep.runs), sweep.spec.early_stop, list(sweep.runs),
                                  log=lambda s: None)
  assert [o["status"] for o in outcomes] == ["trained"] * 3
  decision = early_stop.read_decision(sweep.out_dir, sweep.runs[0].info["early_stop_group"])
  assert decision["kept"] == 3 and "every run kept" in decision["reason"]


# ---------------------------------------------------------------- end to end

@pytest.mark.slow  # 18-30 s idle, 110 s loaded: three real runs to step 9, one on to 30
def test_lr_sweep_stops_the_worst_forecasts(tmp_path):
  setup = tf.make_token_setup(str(tmp_path / "data"))
  path = _spec(tmp_path / "s", setup)
  sweep = spec_lib.load(path)
  assert cli.main(["run", path, "--progress", "off"]) == 0
  status = {r.name: registry.status(r.directory) for r in sweep.runs}
  assert sorted(status.values()) == ["finished", "stopped_early", "stopped_early"]
  own = _own_forecasts(sweep)
  assert status[min(own, key=own.get)] == "finished"
  for r in sweep.runs:  # the stopped ones trained exactly to step 9; every curve is whole
    steps = [s for s, _ in tf.train_losses(r.directory)]
    assert steps == list(range(1, 31 if status[r.name] == "finished" else 10))
  kept = next(r for r in sweep.runs if status[r.name] == "finished")
  with open(os.path.join(kept.directory, "summary.json")) as f:
    assert json.load(f)["resumed_at_step"] == 9
  with pytest.warns(UserWarning, match="stopped early"):
    assert list(load_runs(sweep.out_dir)["run"]) == [kept.name]
  # The stop does not disturb the survivor: its config trained alone, start to end, gives the
  # same curve step by step (bitwise: the pause is a checkpoint and a resume).
  from varjax.train import loop
  values = config_lib.read_config_file(os.path.join(kept.directory, "config.json"))
  values["run"] = dict(values["run"], out_dir=str(tmp_path / "alone"), keep_steps=[])
  loop.train(config_lib.from_dict(values), progress=False, log=lambda s: None)
  alone = os.path.join(str(tmp_path / "alone"), values["run"]["name"])
  assert tf.train_losses(alone) == tf.train_losses(kept.directory)
