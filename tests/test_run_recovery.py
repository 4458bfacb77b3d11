"""What a user meets when a run goes wrong: a failed attempt retried under its name, a moved
run directory, Ctrl-C, two trainers on one directory, damaged checkpoints, a full or
read-only disk and out of memory. Every case ends in one line (or a resumed run), never in
a traceback or a silent restart."""

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess

import numpy as np
import pytest

import train_fixtures as fx
from conftest import run_varjax
from varjax import cli, config as config_lib
from varjax.errors import Preempted, VarjaxError
from varjax.train import checkpoint, loop, rundir

quiet = lambda _: None


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  return fx.make_token_setup(str(tmp_path_factory.mktemp("tokens")))


def _cfg(setup, out_dir, **sections):
  return config_lib.from_dict(fx.tiny_config(setup, str(out_dir), **sections))


def _history(run_dir):
  with open(os.path.join(run_dir, rundir.HISTORY_FILE)) as f:
    return [json.loads(line) for line in f]


# ---------------------------------------------------------------- retries under one name

def test_a_failed_attempt_without_checkpoints_takes_the_corrected_config(setup, tmp_path):
  bad = _cfg(setup, tmp_path, optim={"grad_accum_steps": 3}, run={"steps": 2})
  with pytest.raises(VarjaxError, match="not divisible by optim.grad_accum_steps 3"):
    loop.train(bad, progress=False, log=quiet)
  run_dir = str(tmp_path / "tiny")
  assert os.path.isfile(os.path.join(run_dir, "config.json"))  # the attempt left it behind
  fixed = config_lib.replace(bad, optim={"grad_accum_steps": 1})
  messages = []
  summary = loop.train(fixed, progress=False, log=messages.append)
  assert summary["steps"] == 2 and summary["resumed_at_step"] == 0
  assert "saved no checkpoint" in messages[0] and "optim.grad_accum_steps: 3 -> 1" in messages[0]
  assert config_lib.load_config(os.path.join(run_dir, "config.json")) == fixed
  [previous] = _history(run_dir)
  assert previous["config"]["optim"]["grad_accum_steps"] == 3
  assert "before any checkpoint" in previous["reason"]


def test_a_moved_run_directory_resumes_and_equals_an_uninterrupted_run(setup, tmp_path):
  whole = loop.train(_cfg(setup, tmp_path / "whole", run={"steps": 6}), progress=False,
                     log=quiet)

  def stop(step):
    if step == 4:
      raise RuntimeError("crash")
  with pytest.raises(RuntimeError, match="crash"):
    loop.train(_cfg(setup, tmp_path / "a", run={"steps": 6}), progress=False, log=quiet,
               on_step=stop)
  shutil.copytree(tmp_path / "a", tmp_path / "b")
  shutil.rmtree(tmp_path / "a")  # the old place is gone: nothing may point there
  moved = _cfg(setup, tmp_path / "b", run={"steps": 6, "log_every": 2})
  summary = loop.train(moved, progress=False, log=quiet)
  assert summary["resumed_at_step"] == 4
  assert summary["loss"] == whole["loss"]
  [previous] = _history(str(tmp_path / "b" / "tiny"))
  assert "run.out_dir" in previous["reason"] and "run.log_every" in previous["reason"]


# ---------------------------------------------------------------- Ctrl-C

def test_ctrl_c_saves_the_step_and_the_same_command_resumes(setup, tmp_path):
  cfg = _cfg(setup, tmp_path, run={"steps": 8, "checkpoint_every": 100})

  def ctrl_c(step):  # arrives during step 4: that step ends and is saved
    if step == 3:
      os.kill(os.getpid(), signal.SIGINT)
  with pytest.raises(Preempted, match=r"Ctrl-C: saved step 4 in .*checkpoints") as stopped:
    loop.train(cfg, progress=False, log=quiet, on_step=ctrl_c)
  assert stopped.value.exit_code == 130
  assert checkpoint.Checkpoints(str(tmp_path / "tiny"), 3).steps() == [4]
  assert loop.train(cfg, progress=False, log=quiet)["resumed_at_step"] == 4


def test_a_second_ctrl_c_stops_at_once():
  flag = checkpoint.PreemptionFlag()
  try:
    os.kill(os.getpid(), signal.SIGINT)
    assert flag.requested and flag.reason == "Ctrl-C"
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
  finally:
    flag.restore()
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# ---------------------------------------------------------------- one trainer per directory

def test_a_run_another_process_trains_is_refused(setup, tmp_path):
  run_dir = tmp_path / "tiny"
  run_dir.mkdir()
  fd = os.open(run_dir / rundir.LOCK_FILE, os.O_RDWR | os.O_CREAT)  # another trainer's lock
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with pytest.raises(rundir.RunBusy, match="being trained by another process"):
      loop.train(_cfg(setup, tmp_path), progress=False, log=quiet)
  finally:
    os.close(fd)
  assert not (run_dir / "config.json").exists()


def test_a_foreign_directory_is_refused_and_left_untouched(setup, tmp_path):
  run_dir = tmp_path / "tiny"
  run_dir.mkdir()
  (run_dir / "metrics.jsonl").write_text('{"step": 1, "mine": true}\n')
  with pytest.raises(VarjaxError, match=r"is not empty \(metrics.jsonl\) and holds no varjax run"):
    loop.train(_cfg(setup, tmp_path), progress=False, log=quiet)
  assert (run_dir / "metrics.jsonl").read_text() == '{"step": 1, "mine": true}\n'
  assert not (run_dir / "config.json").exists()


# ---------------------------------------------------------------- damaged checkpoints

def test_every_checkpoint_damaged_stops_unless_restart_is_asked_for(setup, tmp_path, capsys):
  cfg = _cfg(setup, tmp_path, run={"steps": 6})

  def crash(step):
    if step == 5:
      raise RuntimeError("crash")
  with pytest.raises(RuntimeError):
    loop.train(cfg, progress=False, log=quiet, on_step=crash)
  ckpt_dir = tmp_path / "tiny" / "checkpoints"
  for path in ckpt_dir.rglob("*"):
    if path.is_file() and "state" in str(path.relative_to(ckpt_dir)):
      path.write_bytes(b"garbage")
  path = fx.write_config(fx.tiny_config(setup, str(tmp_path), run={"steps": 6}),
                         str(tmp_path / "c.yaml"))
  assert cli.main(["train", "--config", path, "--progress", "off"]) == 2
  err = capsys.readouterr().err
  lines = err.strip().splitlines()
  assert lines[-1].startswith("varjax: error: every checkpoint in") and \
      "--run.restart_if_damaged=true" in lines[-1]
  # each skipped checkpoint is one warning line, not Python's two-line warning format
  assert all(line.startswith("varjax: ") for line in lines), err
  assert sum(line.startswith("varjax: warning: checkpoint") and "is unreadable" in line
             for line in lines) == 2
  assert sorted(os.listdir(ckpt_dir)) == ["2", "4"]  # nothing was deleted or rewritten
  assert cli.main(["train", "--config", path, "--progress", "off",
                   "--run.restart_if_damaged=true"]) == 0
  summary = json.loads((tmp_path / "tiny" / "summary.json").read_text())
  assert summary["resumed_at_step"] == 0 and summary["steps"] == 6


def test_a_warm_start_error_is_one_line(setup, tmp_path):
  """The donor has no checkpoint: one line, and no orbax thread left to fail at exit."""
  donor = fx.tiny_config(setup, str(tmp_path), run={"name": "donor", "steps": 8},
                         optim={"schedule": "constant"})
  os.makedirs(tmp_path / "donor")
  config_lib.save_config(config_lib.from_dict(donor), str(tmp_path / "donor" / "config.json"))
  branch = fx.tiny_config(setup, str(tmp_path), optim={"schedule": "constant"},
                          run={"name": "branch", "steps": 6,
                               "warm_start": f"{tmp_path / 'donor'}@4"})
  result = run_varjax("train", "--config", fx.write_config(branch, str(tmp_path / "b.yaml")),
                      "--progress", "off")
  assert result.returncode == 2, result.stderr
  assert result.stderr.strip().splitlines() == [
      f"varjax: error: run.warm_start: {tmp_path / 'donor'} has no checkpoint of step 4 yet; "
      "train it past that step first (it needs run.keep_steps to include 4; a sweep does both)"]


# ---------------------------------------------------------------- disk and memory

@contextlib.contextmanager
def _small_disk(path, size: str, read_only: bool = False):
  """A tmpfs of `size` mounted at `path` (root only: CI and these machines run as root)."""
  os.makedirs(path, exist_ok=True)
  mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                           capture_output=True, text=True)
  if mounted.returncode != 0:
    pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
  try:
    if read_only:
      subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)
    yield path
  finally:
    subprocess.run(["umount", "-l", str(path)], check=True)


def test_a_full_disk_is_one_line_and_the_run_resumes(setup, tmp_path):
  values = fx.tiny_config(setup, str(tmp_path / "disk"), run={"steps": 6, "checkpoint_every": 2})
  path = fx.write_config(values, str(tmp_path / "c.yaml"))
  with _small_disk(tmp_path / "disk", "3m"):  # one 2 MB checkpoint fits, the second does not
    result = run_varjax("train", "--config", path, "--progress", "off")
    assert result.returncode == 1, result.stderr[-3000:]
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("varjax: error: the disk is full ("), err
    assert "checkpoint of step 4 needs" in err[0] and "rerun the same command" in err[0]
    kept = tmp_path / "kept"
    shutil.copytree(tmp_path / "disk", kept)
  assert sorted(os.listdir(kept / "tiny" / "checkpoints")) == ["2"]
  values["run"]["out_dir"] = str(kept)  # moved to a disk with room: resumes where it stopped
  summary = loop.train(config_lib.from_dict(values), progress=False, log=quiet)
  assert summary["resumed_at_step"] == 2 and summary["steps"] == 6


def test_a_read_only_run_directory_is_one_line(setup, tmp_path, capsys):
  path = fx.write_config(fx.tiny_config(setup, str(tmp_path / "ro")), str(tmp_path / "c.yaml"))
  with _small_disk(tmp_path / "ro", "1m", read_only=True):
    assert cli.main(["train", "--config", path, "--progress", "off"]) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("varjax: error: the file system is read-only"), err


def test_a_model_that_does_not_fit_in_memory_is_one_line(setup, tmp_path):
  values = fx.tiny_config(setup, str(tmp_path))
  values["model"].update(width=1 << 16, heads=1)  # ~1e11 parameters: no host holds them
  result = run_varjax("train", "--config", fx.write_config(values, str(tmp_path / "c.yaml")),
                      "--progress", "off")
  assert result.returncode == 1, result.stderr[-2000:]
  lines = result.stderr.strip().splitlines()
  assert lines[-1].startswith("varjax: error: out of memory ("), lines
  assert "Traceback" not in result.stderr and "data.global_batch_size" in lines[-1]


def test_environment_failures_are_found_in_the_chain_of_causes():
  try:
    try:
      raise OSError(28, "No space left on device", "/x/checkpoints/4")
    except OSError as inner:
      raise ValueError("orbax could not finish the save") from inner
  except ValueError as outer:
    message = cli.environment_failure(outer)
  assert message.startswith("the disk is full (/x/checkpoints/4): No space left on device")
  assert cli.environment_failure(ValueError("a bug")) is None


_RESHARD = """
import json, sys
sys.path.insert(0, sys.argv[1])
import train_fixtures as fx
from varjax import config as config_lib
from varjax.train import loop

setup, root = json.loads(sys.argv[2]), sys.argv[3]
def cfg(out, mesh):
  return config_lib.from_dict(fx.tiny_config(setup, out, run={"steps": 6}, mesh=mesh))
quiet = lambda _: None
whole = loop.train(cfg(root + "/whole", {"data": 8}), progress=False, log=quiet)
def crash(step):
  if step == 4:
    raise RuntimeError("crash")
try:
  loop.train(cfg(root + "/part", {"data": 8}), progress=False, log=quiet, on_step=crash)
except RuntimeError:
  pass
resumed = loop.train(cfg(root + "/part", {"data": 2, "fsdp": 2, "tensor": 2}), progress=False,
                     log=quiet)
print(json.dumps({"whole": whole, "resumed": resumed,
                  "curves": [fx.train_losses(root + "/whole/tiny"),
                             fx.train_losses(root + "/part/tiny")]}))
"""


@pytest.mark.slow
def test_a_run_resumes_on_another_mesh(setup, tmp_path):
  """Checkpointed on data = 8, resumed on data 2 x fsdp 2 x tensor 2 (orbax reshards the
  state onto the new mesh): the curve of a run that stayed on the first mesh, to fp32
  reduction-order tolerance."""
  import sys
  tests_dir = os.path.dirname(os.path.abspath(__file__))
  result = subprocess.run(
      [sys.executable, "-c", _RESHARD, tests_dir, json.dumps(setup), str(tmp_path)],
      capture_output=True, text=True, timeout=900,
      env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
  assert result.returncode == 0, result.stderr[-3000:]
  out = json.loads(result.stdout.strip().splitlines()[-1])
  assert out["resumed"]["resumed_at_step"] == 4
  assert out["resumed"]["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2}
  whole, part = out["curves"]
  assert [s for s, _ in part] == [s for s, _ in whole] == list(range(1, 7))
  np.testing.assert_allclose([l for _, l in part], [l for _, l in whole], rtol=1e-5)
  assert out["resumed"]["loss"] == pytest.approx(out["whole"]["loss"], rel=1e-5)


def test_reading_another_runs_checkpoints_warns_of_nothing(tmp_path, caplog):
  """A cool-down opens its trunk's checkpoints read-only; orbax's two warnings that the
  manager it was asked for is read-only are not passed on, and the steps are read."""
  writer = checkpoint.Checkpoints(str(tmp_path), 2)
  writer.save(3, {"w": np.ones(4, np.float32)}, {"step": 3})
  with caplog.at_level("WARNING"):
    reader = checkpoint.Checkpoints(str(tmp_path), 2, read_only=True)
  assert reader.steps() == [3]
  assert not [r for r in caplog.records if "read only" in r.getMessage()
              or "read_only" in r.getMessage()]
