"""BACKEND=tpu: the sweep on a Cloud TPU slice, every host training each run together.

A multi-host slice trains one run at a time on all its hosts: each host runs the local
backend (`python -m sweeps run SPEC --backend local`), which joins `jax.distributed`
first (varjax.parallel.distributed.initialize finds the slice's other hosts by itself),
then goes through the runs in the same order on every host. Two launchers:

  gcloud  a TPU VM slice (`tpu: {name, zone, project?}`) whose every worker holds a checkout
          of this repository at `tpu.repo_dir` (default ~/varjax). Two commands over ssh
          on all workers: `make install EXTRAS=dev,tpu` there, then the sweep in lockstep.
          The workers run the spec from their own checkout, so it must be there (commit
          and pull it, or copy it with `gcloud compute tpus tpu-vm scp`), at the path it
          has relative to this checkout. The sweep ends if the ssh session does; running
          the same command again resumes it.
  xpk     a GKE cluster with TPU node pools (`tpu: {cluster, tpu_type, num_slices,
          project?, zone?, docker_image?}`). One `xpk workload create`: xpk builds an image
          from this checkout (the current directory) on top of `tpu.docker_image`, with the
          checkout at /app, and every host of every slice runs `make install` into
          /opt/varjax-venv (not the copied .venv of this machine: a .dockerignore with
          .venv, runs and data_cache keeps them out of the image) and the sweep. The base
          image needs Python 3.12 and make: python:3.12 when `docker_image` is empty (xpk's
          own default has Python 3.10). The workload is named after the sweep
          (`workload_name`), so a sweep runs once per cluster at a time; delete a finished
          workload (`xpk workload delete --workload NAME --cluster C`) before launching
          its sweep again.

The run registry (the spec's `out_dir`) must be on storage that every host sees, at the
same path, for a multi-host slice: a GCS FUSE mount or NFS (Filestore). Every host reads
the checkpoints to resume and each run's summary.json to skip finished runs, while only
host 0 writes summaries and events; a registry on each host's own disk gives the hosts
different views of the sweep. With xpk, a relative `out_dir` even lies inside the
container and is lost with it.

`commands` builds the argv lists without side effects; `launch` prints them (DRY_RUN=1
stops there) and runs them one after another, stopping at the first that fails.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys

from varjax.errors import ConfigError, VarjaxError

from sweeps.spec import Run, Sweep

LAUNCHERS = ("gcloud", "xpk")
INSTALL = "make install EXTRAS=dev,tpu"
XPK_APP_DIR = "/app"  # where xpk's image build puts the checkout (its script dir)
XPK_VENV = "/opt/varjax-venv"
XPK_DEFAULT_IMAGE = "python:3.12"
MAX_WORKLOAD_NAME = 40  # xpk: [a-z]([-a-z0-9]*[a-z0-9])?, at most 40 characters


def launch(sweep: Sweep, runs: list[Run], *, launcher: str = "gcloud", dry_run: bool = False,
           selected: bool = False) -> int:
  """Prints the launcher's commands and, unless `dry_run`, runs them; the exit status."""
  argvs = commands(sweep, runs, launcher, selected)
  note = registry_note(sweep, launcher)
  if note:
    print(f"tpu: note: {note}", file=sys.stderr)
  if dry_run:
    for argv in argvs:
      print(shlex.join(argv))
    return 0
  if shutil.which(argvs[0][0]) is None:
    what = "the Google Cloud SDK" if launcher == "gcloud" else "xpk (pip install xpk)"
    raise VarjaxError(f"{argvs[0][0]} not found on PATH; install {what} or run with DRY_RUN=1")
  for argv in argvs:
    print(f"+ {shlex.join(argv)}", flush=True)
    code = subprocess.run(argv).returncode
    if code:
      print(f"tpu: {argv[0]} exited with status {code}", file=sys.stderr)
      return code
  return 0


def commands(sweep: Sweep, runs: list[Run], launcher: str, selected: bool) -> list[list[str]]:
  """The argv lists that launch `runs` (named with --runs only when `selected`)."""
  if launcher not in LAUNCHERS:
    raise ConfigError("launcher", f"must be one of {', '.join(LAUNCHERS)}, got {launcher!r}")
  sweep_args = ["-m", "sweeps", "run", _spec_in_checkout(sweep), "--backend", "local"]
  if selected:
    sweep_args += ["--runs", ",".join(r.name for r in runs)]
  if launcher == "gcloud":
    return _gcloud(sweep, sweep_args)
  return _xpk(sweep, sweep_args)


def _gcloud(sweep: Sweep, sweep_args: list[str]) -> list[list[str]]:
  tpu = sweep.spec.tpu
  _require(tpu, "name", "the TPU VM to ssh into")
  _require(tpu, "zone", "the TPU VM's zone")
  ssh = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", tpu.name, f"--zone={tpu.zone}"]
  if tpu.project:
    ssh.append(f"--project={tpu.project}")
  ssh.append("--worker=all")
  cd = f"cd {_shell_path(tpu.repo_dir)}"
  run = shlex.join([".venv/bin/python", *sweep_args])
  return [ssh + [f"--command={cd} && {INSTALL}"], ssh + [f"--command={cd} && {run}"]]


def _xpk(sweep: Sweep, sweep_args: list[str]) -> list[list[str]]:
  tpu = sweep.spec.tpu
  _require(tpu, "cluster", "the GKE cluster to run on")
  argv = ["xpk", "workload", "create", "--cluster", tpu.cluster,
          "--workload", workload_name(sweep.spec.name), "--tpu-type", tpu.tpu_type,
          "--num-slices", str(tpu.num_slices),
          "--base-docker-image", tpu.docker_image or XPK_DEFAULT_IMAGE]
  if tpu.project:
    argv += ["--project", tpu.project]
  if tpu.zone:
    argv += ["--zone", tpu.zone]
  script = (f"cd {XPK_APP_DIR} && {INSTALL} VENV={XPK_VENV} && "
            + shlex.join([f"{XPK_VENV}/bin/python", *sweep_args]))
  return [argv + ["--command", script]]


def workload_name(sweep_name: str) -> str:
  """A valid xpk workload name from the sweep's: lowercase [a-z0-9-], starting with a
  letter, at most 40 characters; a cut name ends with a hash of the whole one."""
  slug = re.sub(r"[^a-z0-9]+", "-", sweep_name.lower()).strip("-")
  name = f"varjax-{slug}" if slug else "varjax"
  if slug and len(name) <= MAX_WORKLOAD_NAME:
    return name
  digest = hashlib.sha1(sweep_name.encode()).hexdigest()[:6]
  return f"{name[:MAX_WORKLOAD_NAME - 7].rstrip('-')}-{digest}"


def registry_note(sweep: Sweep, launcher: str) -> str | None:
  """A warning when the registry is a relative path, i.e. on each host's own disk."""
  out_dir = sweep.out_dir
  if not out_dir or os.path.isabs(out_dir):
    return None
  where = ("inside the container, lost when the workload ends" if launcher == "xpk"
           else "on each worker's own disk under tpu.repo_dir")
  return (f"the registry {out_dir} is {where}; for a multi-host slice set the spec's out_dir "
          "to storage every host sees (GCS FUSE, NFS)")


def _require(tpu, field: str, what: str) -> None:
  if not getattr(tpu, field):
    raise ConfigError(f"tpu.{field}", f"is required to launch on a TPU ({what})")


def _spec_in_checkout(sweep: Sweep) -> str:
  """The spec's path relative to this checkout: where the workers' checkout has it."""
  path = os.path.relpath(os.path.abspath(sweep.path))
  if path == os.pardir or path.startswith(os.pardir + os.sep):
    raise ConfigError("spec", f"{sweep.path} is outside this checkout ({os.getcwd()}); the "
                      "TPU hosts run the spec from their own checkout, so keep it in the repo")
  return path


def _shell_path(path: str) -> str:
  """`path` quoted for the remote shell, keeping a leading ~ (the remote home) expandable."""
  if path == "~":
    return path
  if path.startswith("~/"):
    return "~/" + shlex.quote(path[2:])
  return shlex.quote(path)
