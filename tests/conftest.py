"""Shared fixtures. Everything runs on the CPU; datasets are built into temp dirs."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# One persistent XLA compilation cache for the whole suite (before JAX is imported): the
# pytest-xdist workers and the `varjax` subprocesses the tests start compile the same small
# programs again and again. Entries are keyed by the program, the compile options, the
# devices and the jax version, so a hit is the same executable; VARJAX_TEST_JAX_CACHE=off
# turns it off, another path moves it.
_cache = os.environ.get("VARJAX_TEST_JAX_CACHE", os.path.join(REPO, ".cache", "jax-tests"))
if _cache != "off":
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _cache)
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.3")

from varjax import hostmem  # noqa: E402 -- after the cache settings

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
hostmem.keep_freed_memory()  # as the CLI does, before JAX starts its threads


def run_varjax(*args: str, env: dict | None = None, timeout: int = 600):
  """Runs the installed `varjax` command in a subprocess; returns CompletedProcess."""
  exe = os.path.join(os.path.dirname(sys.executable), "varjax")
  return subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout,
                        env={**os.environ, **(env or {})})


@pytest.fixture(scope="session")
def embedded_data_dir(tmp_path_factory) -> str:
  """A data dir in which `varjax data build --dataset embedded32` has run, built once per
  test run: pytest-xdist workers share it (the first one builds it under a file lock)."""
  import fcntl
  shared = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    shared = shared.parent  # this run's temp root, above each worker's own
  data_dir = str(shared / "datasets")
  with open(shared / "datasets.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not os.path.exists(os.path.join(data_dir, ".built")):
      result = run_varjax("data", "build", "--dataset", "embedded32", "--data-dir", data_dir)
      assert result.returncode == 0, result.stderr
      assert "varjax_embedded/res32 ready" in result.stdout
      open(os.path.join(data_dir, ".built"), "w").close()
  return data_dir
