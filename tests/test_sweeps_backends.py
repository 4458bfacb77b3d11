"""The sweep backends that leave this process: BACKEND=tpu builds launcher commands (checked
argument by argument, since a wrong one costs a TPU slice's time before it shows), and
BACKEND=ray trains real tiny runs as concurrent tasks of a local Ray instance and keeps
the registry's promises (finished runs skipped, crashed tasks recorded as failures)."""

from __future__ import annotations

import _thread
import os
import signal
import threading
import time

import pytest
import yaml

import train_fixtures as fx
from sweeps import cli, registry, spec as spec_lib, tpu
from varjax.errors import ConfigError

RUN_NAMES = ["d1-D1.92e3-s0", "d2-D1.92e3-s0"]  # 4 steps x 16 examples x 30 tokens


def _write_spec(directory, setup, **fields) -> str:
  """A two-model spec (depths 1 and 2) on the tiny config, in `directory`; returns its
  path relative to `directory`, the test's working directory."""
  base = fx.tiny_config(setup, "unused", run={"eval_every": 1000, "checkpoint_every": 1000,
                                              "log_every": 1})
  fx.write_config(base, os.path.join(directory, "base.yaml"))
  spec = {"name": "tiny", "base": "base.yaml", "out_dir": "runs/tiny",
          "models": {"depths": [1, 2], "width_per_depth": 64, "head_dim": 32},
          "budgets": {"tokens": [1920]}, **fields}
  with open(os.path.join(directory, "sweep.yaml"), "w") as f:
    yaml.safe_dump(spec, f)
  return "sweep.yaml"


# ---------------------------------------------------------------- tpu

TPU = {"name": "pod", "zone": "us-east5-a", "project": "p", "cluster": "c"}
SSH = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod", "--zone=us-east5-a", "--project=p",
       "--worker=all"]


@pytest.fixture
def tpu_spec(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  return _write_spec(str(tmp_path), {"tokens": "tokens"}, tpu=TPU)


def test_gcloud_installs_then_runs_the_sweep_on_every_worker(tpu_spec):
  sweep = spec_lib.load(tpu_spec)
  assert [r.name for r in sweep.runs] == RUN_NAMES
  assert tpu.commands(sweep, list(sweep.runs), "gcloud", selected=False) == [
      SSH + ["--command=cd ~/varjax && make install EXTRAS=dev,tpu"],
      SSH + ["--command=cd ~/varjax && .venv/bin/python -m sweeps run sweep.yaml "
             "--backend local"]]
  picked = sweep.select(RUN_NAMES[1:])
  assert tpu.commands(sweep, picked, "gcloud", selected=True)[1] == SSH + [
      "--command=cd ~/varjax && .venv/bin/python -m sweeps run sweep.yaml --backend local "
      "--runs d2-D1.92e3-s0"]


def test_xpk_creates_one_workload_named_after_the_sweep(tpu_spec):
  sweep = spec_lib.load(tpu_spec)
  head = ["xpk", "workload", "create", "--cluster", "c", "--workload", "varjax-tiny",
          "--tpu-type", "v5p-8", "--num-slices", "1", "--base-docker-image", "python:3.12",
          "--project", "p", "--zone", "us-east5-a", "--command"]
  script = ("cd /app && make install EXTRAS=dev,tpu VENV=/opt/varjax-venv && "
            "/opt/varjax-venv/bin/python -m sweeps run sweep.yaml --backend local")
  assert tpu.commands(sweep, list(sweep.runs), "xpk", selected=False) == [head + [script]]
  assert tpu.commands(sweep, list(sweep.runs), "xpk", selected=True) == [
      head + [script + " --runs d1-D1.92e3-s0,d2-D1.92e3-s0"]]


def test_workload_names_follow_xpk_rules():
  assert tpu.workload_name("demo") == "varjax-demo"
  assert tpu.workload_name("My_Sweep.v2") == "varjax-my-sweep-v2"
  long = tpu.workload_name("an-isoflop-sweep-of-the-var-family-at-256px")
  assert len(long) == 40 and long.startswith("varjax-an-isoflop-sweep")
  assert long == tpu.workload_name("an-isoflop-sweep-of-the-var-family-at-256px")
  assert long != tpu.workload_name("an-isoflop-sweep-of-the-var-family-at-512px")
  assert tpu.workload_name("__").startswith("varjax-")


@pytest.mark.parametrize("launcher,missing", [("gcloud", "name"), ("gcloud", "zone"),
                                              ("xpk", "cluster")])
def test_missing_tpu_fields_name_the_field(tmp_path, monkeypatch, launcher, missing):
  monkeypatch.chdir(tmp_path)
  path = _write_spec(str(tmp_path), {"tokens": "tokens"},
                     tpu={k: v for k, v in TPU.items() if k != missing})
  sweep = spec_lib.load(path)
  with pytest.raises(ConfigError, match=f"^tpu.{missing}: "):
    tpu.commands(sweep, list(sweep.runs), launcher, selected=False)


def test_cli_dry_run_prints_the_commands_as_shell_lines(tpu_spec, capsys):
  assert cli.main(["run", tpu_spec, "--backend", "tpu", "--dry-run"]) == 0
  assert capsys.readouterr().out.splitlines() == [
      "gcloud compute tpus tpu-vm ssh pod --zone=us-east5-a --project=p --worker=all "
      "'--command=cd ~/varjax && make install EXTRAS=dev,tpu'",
      "gcloud compute tpus tpu-vm ssh pod --zone=us-east5-a --project=p --worker=all "
      "'--command=cd ~/varjax && .venv/bin/python -m sweeps run sweep.yaml --backend local'"]
  assert cli.main(["run", tpu_spec, "--backend", "tpu", "--launcher", "xpk", "--dry-run",
                   "--limit", "1"]) == 0
  out = capsys.readouterr()
  assert out.out.splitlines() == [
      "xpk workload create --cluster c --workload varjax-tiny --tpu-type v5p-8 --num-slices 1 "
      "--base-docker-image python:3.12 --project p --zone us-east5-a --command 'cd /app && "
      "make install EXTRAS=dev,tpu VENV=/opt/varjax-venv && /opt/varjax-venv/bin/python -m "
      "sweeps run sweep.yaml --backend local --runs d1-D1.92e3-s0'"]
  assert "runs/tiny is inside the container" in out.err


def test_cli_without_gcloud_is_a_one_line_error(tpu_spec, capsys, monkeypatch):
  monkeypatch.setenv("PATH", "")
  assert cli.main(["run", tpu_spec, "--backend", "tpu"]) == 2
  err = capsys.readouterr().err
  assert err.splitlines()[-1] == ("sweeps: error: gcloud not found on PATH; install the "
                                  "Google Cloud SDK or run with DRY_RUN=1")


# ---------------------------------------------------------------- ray

@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  return fx.make_token_setup(str(tmp_path_factory.mktemp("tokens")))


@pytest.mark.slow  # ~45 s on 2 cores: make test-slow
def test_ray_trains_runs_concurrently_and_skips_finished_ones(setup, tmp_path, monkeypatch,
                                                              capfd):
  import ray

  from sweeps import ray_backend
  monkeypatch.chdir(tmp_path)  # the spec's out_dir is relative: workers must chdir too
  monkeypatch.delenv("RAY_COLOR_PREFIX", raising=False)
  sweep = spec_lib.load(_write_spec(str(tmp_path), setup, resources={"cpus": 1}))
  assert [r.info["steps"] for r in sweep.runs] == [4, 4]
  outcomes = ray_backend.run_ray(sweep, list(sweep.runs), log=lambda line: None)
  assert [(o["run"], o["status"]) for o in outcomes] == [(n, "trained") for n in RUN_NAMES]
  out = capfd.readouterr()
  # stdout is no terminal here: the workers' lines reach it without colour codes
  assert "(train_task pid=" in out.out + out.err and "\x1b[" not in out.out + out.err
  for name in RUN_NAMES:
    assert os.path.isfile(tmp_path / "runs" / "tiny" / name / "summary.json")
  events = registry.events("runs/tiny")
  spans = {}
  for e in events:
    spans.setdefault(e["run"], {})[e["event"]] = e
  assert sorted(spans) == RUN_NAMES
  starts = [spans[n]["started"]["time"] for n in RUN_NAMES]
  ends = [spans[n]["finished"]["time"] for n in RUN_NAMES]
  assert max(starts) < min(ends), "the two runs did not train at the same time"
  pids = {spans[n]["started"]["pid"] for n in RUN_NAMES}
  assert len(pids) == 2 and os.getpid() not in pids
  assert all(spans[n]["started"]["backend"] == "ray" for n in RUN_NAMES)

  def no_ray(*args, **kwargs):
    raise AssertionError("a finished sweep started Ray")
  monkeypatch.setattr(ray, "init", no_ray)
  again = ray_backend.run_ray(sweep, list(sweep.runs), log=lambda line: None)
  assert [o["status"] for o in again] == ["finished", "finished"]
  assert registry.events("runs/tiny") == events


@pytest.mark.slow
def test_ray_tasks_that_die_or_cannot_start_are_recorded_failures(setup, tmp_path,
                                                                  monkeypatch):
  from sweeps import ray_backend
  monkeypatch.chdir(tmp_path)
  path = _write_spec(str(tmp_path), setup, budgets={"tokens": [192000]})  # 400 steps
  sweep = spec_lib.load(path)
  killed, gone = sweep.runs[0].name, sweep.runs[1].name
  # The spec changes after the driver read it: the second run's task cannot find its run.
  _write_spec(str(tmp_path), setup, budgets={"tokens": [192000]},
              models={"depths": [1], "width_per_depth": 64, "head_dim": 32})

  def kill_when_started():  # the first run's worker dies as if out of memory
    deadline = time.time() + 240
    while time.time() < deadline:
      started = [e for e in registry.events("runs/tiny")
                 if e["run"] == killed and e["event"] == "started"]
      if started:
        os.kill(started[0]["pid"], signal.SIGKILL)
        return
      time.sleep(0.2)
  killer = threading.Thread(target=kill_when_started, daemon=True)
  killer.start()
  lines = []
  outcomes = ray_backend.run_ray(sweep, list(sweep.runs), log=lines.append)
  killer.join()
  assert [o["status"] for o in outcomes] == ["failed", "failed"]
  assert outcomes[0]["error"].startswith("WorkerCrashedError: ")
  assert outcomes[1]["error"].startswith(f"ConfigError: runs: unknown run(s) {gone}")
  for run, outcome in zip(sweep.runs, outcomes):
    assert registry.status(run.directory) == "failed"
    assert registry.read_failure(run.directory)["error"] in outcome["error"]
  events = [(e["run"], e["event"]) for e in registry.events("runs/tiny")]
  assert sorted(events) == sorted([(killed, "started"), (killed, "failed"), (gone, "failed")])
  assert sum("failed" in line for line in lines) == 2


def _interrupt_when_started() -> None:
  """Ctrl-C (KeyboardInterrupt in the main thread) as soon as a run has started."""
  def interrupt():
    deadline = time.time() + 240
    while time.time() < deadline and not registry.events("runs/tiny"):
      time.sleep(0.2)
    _thread.interrupt_main()
  threading.Thread(target=interrupt, daemon=True).start()


@pytest.mark.slow
def test_ray_interrupted_cancels_its_tasks_and_stops_the_local_instance(setup, tmp_path,
                                                                        monkeypatch):
  import ray

  from sweeps import ray_backend
  monkeypatch.chdir(tmp_path)
  sweep = spec_lib.load(_write_spec(str(tmp_path), setup, budgets={"tokens": [960000]}))
  run = sweep.runs[0]  # 2000 steps: still training when Ctrl-C comes

  _interrupt_when_started()
  with pytest.raises(KeyboardInterrupt):
    ray_backend.run_ray(sweep, [run], log=lambda line: None)
  assert not ray.is_initialized()
  # run_ray returns once the cancelled task has stopped, however long that takes on a
  # loaded machine (up to CANCEL_GRACE_S): the task recorded its interruption itself.
  events = registry.events("runs/tiny")
  assert [e["event"] for e in events] == ["started", "interrupted"]
  assert "recorded_by" not in events[-1]
  assert registry.status(run.directory) == "interrupted"


@pytest.mark.slow
def test_ray_task_still_running_after_the_grace_is_killed_and_recorded(setup, tmp_path,
                                                                       monkeypatch):
  import ray

  from sweeps import ray_backend
  # A task that does not stop when cancelled (stuck in a long C call, a hung save): the
  # polite cancel reaches nobody, the grace runs out, the driver kills and records it.
  real_cancel = ray.cancel

  def cancel(ref, force=False):
    if force:
      real_cancel(ref, force=True)
  monkeypatch.setattr(ray, "cancel", cancel)
  monkeypatch.setattr(ray_backend, "CANCEL_GRACE_S", 1.0)
  monkeypatch.chdir(tmp_path)
  sweep = spec_lib.load(_write_spec(str(tmp_path), setup, budgets={"tokens": [960000]}))
  run = sweep.runs[0]

  _interrupt_when_started()
  lines = []
  with pytest.raises(KeyboardInterrupt):
    ray_backend.run_ray(sweep, [run], log=lines.append)
  assert not ray.is_initialized()
  assert lines[-1] == ("ray: still running after 1 s: killed 1 task(s); recorded as "
                       f"interrupted: {run.name}")
  events = registry.events("runs/tiny")
  assert [e["event"] for e in events] == ["started", "interrupted"]
  assert events[-1]["recorded_by"] == "driver" and events[-1]["backend"] == "ray"
  assert registry.status(run.directory) == "interrupted"


def test_ray_refuses_resources_the_local_instance_lacks(tmp_path, monkeypatch):
  from sweeps import ray_backend
  monkeypatch.chdir(tmp_path)
  sweep = spec_lib.load(_write_spec(str(tmp_path), {"tokens": "tokens"},
                                    resources={"gpus": 1000}))
  with pytest.raises(ConfigError, match="^resources.gpus: each run asks for 1000 but"):
    ray_backend.run_ray(sweep, list(sweep.runs), log=lambda line: None)


@pytest.mark.slow
def test_ray_submits_a_cooldown_branch_after_its_trunk(setup, tmp_path, monkeypatch):
  from sweeps import ray_backend
  monkeypatch.chdir(tmp_path)
  sweep = spec_lib.load(_write_spec(
      str(tmp_path), setup, models={"depths": [1], "width_per_depth": 64, "head_dim": 32},
      budgets={"tokens": [1920, 3840]}, cooldowns={"decay_fraction": 0.2},
      resources={"cpus": 1}))
  trunk, branch = sweep.runs
  assert branch.config.run.warm_start == f"{trunk.directory}@3"
  outcomes = ray_backend.run_ray(sweep, list(sweep.runs), log=lambda line: None)
  assert [o["status"] for o in outcomes] == ["trained", "trained"]
  events = {(e["run"], e["event"]): e["time"] for e in registry.events("runs/tiny")}
  assert events[(branch.name, "started")] > events[(trunk.name, "finished")]
