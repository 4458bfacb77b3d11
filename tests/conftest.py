"""Shared fixtures. Everything runs on the CPU; datasets are built into temp dirs."""

import os
import subprocess
import sys

import pytest

from varjax import hostmem

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
hostmem.keep_freed_memory()  # as the CLI does, before JAX starts its threads

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_varjax(*args: str, env: dict | None = None, timeout: int = 600):
  """Runs the installed `varjax` command in a subprocess; returns CompletedProcess."""
  exe = os.path.join(os.path.dirname(sys.executable), "varjax")
  return subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout,
                        env={**os.environ, **(env or {})})


@pytest.fixture(scope="session")
def embedded_data_dir(tmp_path_factory) -> str:
  """A data dir in which `varjax data build --dataset embedded32` has run."""
  data_dir = str(tmp_path_factory.mktemp("datasets"))
  result = run_varjax("data", "build", "--dataset", "embedded32", "--data-dir", data_dir)
  assert result.returncode == 0, result.stderr
  assert "varjax_embedded/res32 ready" in result.stdout
  return data_dir
