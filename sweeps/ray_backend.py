"""BACKEND=ray: every run of the sweep as one Ray task, as many at once as the cluster's
resources allow (`resources: {cpus, gpus, memory_gb}` in the spec, per run).

Connects to the cluster at `--address` or $RAY_ADDRESS, else starts a local instance
with every core of this machine and shuts it down afterwards (a cluster it only
connected to keeps running). A local instance keeps Ray's token authentication on.

A task trains its run with `sweeps.launch.run_one`, exactly as the local backend does,
so the run registry is the same: finished runs are skipped here without a task, a
restarted sweep resumes interrupted runs from their checkpoints, and a run that another
process holds comes back "busy". Tasks do not receive a pickled Run: they get the spec's
path and the run's name and expand the spec themselves, so a worker sets up its host
allocator (varjax.hostmem) before anything imports JAX. Workers therefore need this
checkout, the spec's base config, the data and the registry at the same paths as this
driver: true for a local instance; on a cluster, a shared file system (NFS, GCS FUSE)
mounted at the same place on every node.

Each task gets a fresh worker process (`max_calls=1`): the host allocator keeps a
process's memory at its peak and JAX keeps its compiled programs, so a reused worker
would carry one run's footprint into the next. A task whose worker dies (out of memory,
node lost) is not retried by Ray (`max_retries=0`): it is recorded as failed with Ray's
message, and `make sweep` again resumes it from its last checkpoint. A task that cannot
find its run (the spec changed since the driver read it) records its failure itself,
since varjax's errors do not survive Ray's pickling back to the driver.

Ctrl-C cancels the outstanding tasks: a queued one never starts, a running one gets
KeyboardInterrupt and stops as `varjax train` does on Ctrl-C (at the end of its step it
saves a checkpoint), then records "interrupted". The driver waits until every cancelled
task has returned or its worker has died, normally seconds, at most CANCEL_GRACE_S; a task
still going after that, or when Ctrl-C comes again, is killed and the driver records its
run as interrupted itself (`"recorded_by": "driver"`). Then a local instance is stopped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
import warnings
from typing import Any, Callable, Iterator

from varjax.errors import ConfigError, VarjaxError

from sweeps import launch, registry
from sweeps.spec import Run, Sweep

# Where Ray logs that it turned token authentication on for a new local instance.
AUTH_NOTICE_LOGGER = "ray._private.authentication.authentication_token_setup"
# Ctrl-C: the longest wait for the cancelled tasks to stop by themselves. The wait ends as
# soon as each has returned or its worker died; this only bounds a stuck one (a hung save,
# a lost node). A fixed 10 s was too short: on a loaded 2-core machine a tiny run hit in its
# first step's compile took 108 s to finish the step, save and record (load average 10),
# and stopping the instance at 10 s killed the worker mid-save: no "interrupted" event, a
# half-written checkpoint left behind.
CANCEL_GRACE_S = 300.0
KILL_WAIT_S = 30.0  # after killing the tasks left: the longest wait for their workers to go


def run_ray(sweep: Sweep, runs: list[Run], *, address: str | None = None,
            log: Callable[[str], None] = print) -> list[dict[str, Any]]:
  """Trains `runs` as Ray tasks; returns their outcomes in the order of `runs`."""
  outcomes = {r.name: {"run": r.name, "status": "finished", "seconds": 0.0}
              for r in runs if registry.status(r.directory) == "finished"}
  todo = [r for r in runs if r.name not in outcomes]
  if todo:
    with _connected(address, sweep, log):
      outcomes.update(_run_tasks(sweep, todo, log))
  return [outcomes[r.name] for r in runs]


def task_options(sweep: Sweep) -> dict[str, Any]:
  """ray.remote options of one run's task, from the spec's `resources`."""
  res = sweep.spec.resources
  options = {"num_cpus": res.cpus, "num_gpus": res.gpus, "max_calls": 1, "max_retries": 0}
  if res.memory_gb:  # 0: not declared, Ray does not account memory for the task
    options["memory"] = int(res.memory_gb * 2**30)
  return options


@contextlib.contextmanager
def _connected(address: str | None, sweep: Sweep, log) -> Iterator[None]:
  import ray
  if ray.is_initialized():  # the caller's own connection: use it, leave it open
    yield
    return
  address = address or os.environ.get("RAY_ADDRESS") or None
  if not sys.stdout.isatty():  # a log file: the workers' lines without colour codes
    os.environ.setdefault("RAY_COLOR_PREFIX", "0")
  with _quiet_start():
    if address:
      try:
        ray.init(address=address, logging_level=logging.WARNING)
      except ConnectionError as e:
        raise VarjaxError(f"ray: cannot connect to the cluster at {address}: "
                          f"{str(e).strip().splitlines()[0]}") from None
    else:
      ray.init(num_cpus=os.cpu_count(), include_dashboard=False,
               logging_level=logging.WARNING)
  log(f"ray: connected to {address}" if address
      else f"ray: started a local instance with {os.cpu_count()} CPUs")
  try:
    if not address:
      _check_fits(sweep, ray.cluster_resources())
    yield
  finally:
    ray.shutdown()  # stops a local instance; only disconnects from a cluster


@contextlib.contextmanager
def _quiet_start() -> Iterator[None]:
  """Silences two notices of ray.init that need no action: that token authentication is
  on (Ray's default; setting RAY_AUTH_MODE=token here instead would not do: a driver that
  imported Ray before keeps the mode it read then, and the new instance rejects it), and
  JAX's warning on fork, false here: Ray forks only to exec its daemons."""
  notice = logging.getLogger(AUTH_NOTICE_LOGGER)
  level = notice.level
  notice.setLevel(logging.ERROR)
  try:
    with warnings.catch_warnings():
      warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called",
                              category=RuntimeWarning)
      yield
  finally:
    notice.setLevel(level)


def _check_fits(sweep: Sweep, available: dict[str, float]) -> None:
  """A run asking more than the local instance has would wait forever: say so now."""
  res = sweep.spec.resources
  for key, asked, have in (("cpus", res.cpus, available.get("CPU", 0.0)),
                           ("gpus", res.gpus, available.get("GPU", 0.0)),
                           ("memory_gb", res.memory_gb, available.get("memory", 0.0) / 2**30)):
    if asked > have:
      raise ConfigError(f"resources.{key}", f"each run asks for {asked:g} but the local Ray "
                        f"instance has {have:.3g}; lower it, or pass the --address of a cluster")


def _run_tasks(sweep: Sweep, runs: list[Run], log) -> dict[str, dict[str, Any]]:
  import ray
  task = ray.remote(**task_options(sweep))(train_task)
  spec_path, cwd = os.path.abspath(sweep.path), os.getcwd()
  submitted = time.time()
  # A WSD cool-down run (info["warm_start"]) starts from its trunk's checkpoint: it is
  # submitted once the trunk's task is done (at once if the trunk finished before).
  todo = {r.name for r in runs}
  waiting: dict[str, list[Run]] = {}
  ready = []
  for run in runs:
    trunk = run.info.get("warm_start")
    if trunk in todo:
      waiting.setdefault(trunk, []).append(run)
    else:
      ready.append(run)
  refs: dict[Any, Run] = {}

  def submit(batch: list[Run]) -> list:
    new = [task.remote(cwd, spec_path, run.config.run.out_dir, run.name) for run in batch]
    refs.update(zip(new, batch))
    return new

  pending = submit(ready)
  log(f"ray: {len(ready)} run(s) submitted, {sweep.spec.resources.cpus:g} CPU / "
      f"{sweep.spec.resources.gpus:g} GPU each"
      + (f"; {len(runs) - len(ready)} cool-down run(s) wait for their trunks" if waiting else ""))
  outcomes: dict[str, dict[str, Any]] = {}
  try:
    while pending:
      done, pending = ray.wait(pending, num_returns=1)
      for ref in done:
        outcome = _collect(ray, ref, refs[ref], submitted)
        outcomes[outcome["run"]] = outcome
        log(f"[{len(outcomes)}/{len(runs)}]{launch.format_outcomes([outcome])}")
        pending += submit(waiting.pop(outcome["run"], []))
  except KeyboardInterrupt:
    _stop(ray, pending, refs, submitted, log)
    raise
  return outcomes


def _stop(ray, pending: list, refs: dict, submitted: float, log) -> None:
  """Ctrl-C: cancels the outstanding tasks and waits until each has stopped (returned, or
  its worker died), at most CANCEL_GRACE_S. A running task records "interrupted" itself
  (run_one), a queued one never starts. The tasks still going after the grace, or at a
  second Ctrl-C, are killed, and their runs recorded as interrupted here."""
  if not pending:
    return
  for ref in pending:
    ray.cancel(ref)
  log(f"ray: Ctrl-C: cancelled {len(pending)} task(s); waiting up to {CANCEL_GRACE_S:.0f} s "
      "for the running ones to save a checkpoint and record their interruption "
      "(Ctrl-C again stops them at once)")
  try:
    _, left = ray.wait(pending, num_returns=len(pending), timeout=CANCEL_GRACE_S)
    why = f"still running after {CANCEL_GRACE_S:.0f} s"
  except KeyboardInterrupt:
    _, left = ray.wait(pending, num_returns=len(pending), timeout=0)
    why = "Ctrl-C again"
  if not left:
    return
  for ref in left:
    ray.cancel(ref, force=True)  # kills the task's worker
  ray.wait(left, num_returns=len(left), timeout=KILL_WAIT_S)
  recorded = record_killed([refs[ref] for ref in left], submitted)
  log(f"ray: {why}: killed {len(left)} task(s)"
      + (f"; recorded as interrupted: {', '.join(recorded)}" if recorded else ""))


def record_killed(runs: list[Run], since: float) -> list[str]:
  """Records "interrupted" for each of `runs` whose task was killed after starting it: its
  last registry event is a "started" at or after `since`, and no process holds its lock
  (the kernel drops a dead worker's). Returns the names recorded."""

  def started_last(run: Run) -> dict[str, Any] | None:
    mine = [e for e in registry.events(run.config.run.out_dir) if e["run"] == run.name]
    if mine and mine[-1]["event"] == "started" and mine[-1]["time"] >= since:
      return mine[-1]
    return None

  recorded = []
  for run in runs:
    if started_last(run) is None:  # never started, or recorded its own outcome
      continue
    try:
      with registry.run_lock(run.directory):
        started = started_last(run)  # again, under the lock
        if started is not None:
          registry.append_event(run.config.run.out_dir, run.name, "interrupted",
                                seconds=time.time() - started["time"], backend="ray",
                                recorded_by="driver")
          recorded.append(run.name)
    except registry.Busy:  # a live process trains it: it records its own outcome
      pass
  return recorded


def _collect(ray, ref, run: Run, submitted: float) -> dict[str, Any]:
  """The task's outcome, or a failed one when the task itself crashed."""
  try:
    return ray.get(ref)
  except ray.exceptions.RayError as e:
    cause = getattr(e, "cause", None)  # RayTaskError: the exception raised in the task
    error = cause if isinstance(cause, BaseException) else e
    # The time includes the task's wait in the queue: the best the driver knows.
    return failed(run.config.run.out_dir, run.name, error, time.time() - submitted)


def failed(out_dir: str, name: str, error: BaseException, seconds: float) -> dict[str, Any]:
  """Records a run's failure as run_one does (error.json, a registry event); its outcome."""
  return registry.fail(out_dir, name, error, seconds, backend="ray")


def train_task(cwd: str, spec_path: str, out_dir: str, name: str) -> dict[str, Any]:
  """The body of a run's task, in a Ray worker process."""
  start = time.time()
  from varjax.train import checkpoint
  # ray.cancel interrupts the main thread as a Ctrl-C would. Until the training loop
  # installs its own handler, Python's default one raises KeyboardInterrupt wherever the
  # thread is, and inside a JAX garbage-collection callback it was swallowed (the run then
  # trained to the end): record the request instead; the loop picks it up at its first step.
  checkpoint.clear_stop_request()  # a worker process runs task after task
  if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGINT, lambda signum, frame: checkpoint.ask_to_stop("Ctrl-C"))
  os.chdir(cwd)  # the spec's relative paths (out_dir, data) are the driver's
  from varjax import hostmem
  hostmem.keep_freed_memory()  # before JAX starts its threads: see varjax/hostmem.py
  from sweeps import spec as spec_lib
  try:
    run = spec_lib.load(spec_path, out_dir=out_dir).select([name])[0]
  except Exception as e:  # noqa: BLE001 -- e.g. the spec changed since the driver read it
    # Recorded here: varjax's errors do not survive Ray's pickling back to the driver.
    return failed(out_dir, name, e, time.time() - start)
  return launch.run_one(run, progress=False, backend="ray")
