"""Executes notebooks headless (nbclient) and writes the executed copies to --out.

`make notebooks` runs every notebook here on the Chinchilla reference data, or on a run
registry when VARJAX_RUNS=DIR is set.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys

import nbclient
import nbformat


def execute(path: str, out_dir: str, timeout: int = 900) -> str:
  nb = nbformat.read(path, as_version=4)
  client = nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                   resources={"metadata": {"path": os.path.dirname(path)}})
  client.execute()
  os.makedirs(out_dir, exist_ok=True)
  out = os.path.join(out_dir, os.path.basename(path))
  nbformat.write(nb, out)
  return out


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("notebooks", nargs="*")
  parser.add_argument("--out", default="reports/notebooks")
  args = parser.parse_args()
  paths = args.notebooks or sorted(glob.glob(os.path.join(os.path.dirname(__file__), "*.ipynb")))
  for path in paths:
    try:
      print(f"executed {path} -> {execute(os.path.abspath(path), args.out)}")
    except nbclient.exceptions.CellExecutionError as e:
      print(f"notebook {path} failed:\n{str(e)[-2000:]}", file=sys.stderr)
      return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
