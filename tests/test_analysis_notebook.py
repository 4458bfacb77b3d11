"""The scaling-law notebook runs headless on a small fixture registry and shows every
section of report.md."""

import importlib.util
import os

import nbformat

from analysis.report_md import SECTIONS
from test_analysis_cli import isoflop_table, write_registry

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_notebook_executes_on_a_fixture_registry(tmp_path, monkeypatch):
  registry = tmp_path / "runs"
  write_registry(str(registry), isoflop_table(), unfinished=0)
  monkeypatch.setenv("VARJAX_RUNS", str(registry))
  monkeypatch.setenv("VARJAX_NOTEBOOK_OUT", str(tmp_path / "figures"))
  spec = importlib.util.spec_from_file_location("nbrun", os.path.join(REPO, "notebooks", "run.py"))
  runner = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(runner)
  out = runner.execute(os.path.join(REPO, "notebooks", "scaling_laws.ipynb"), str(tmp_path / "nb"))
  nb = nbformat.read(out, as_version=4)
  outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
  assert not [o for o in outputs if o.output_type == "error"]
  assert any("28 runs" in o.get("text", "") for o in outputs)
  shown = "".join(o.get("data", {}).get("text/markdown", "") for o in outputs)
  for name in SECTIONS:
    assert f"## {name}" in shown, name
  assert (tmp_path / "figures" / "report.md").exists()
  for name in ("loss_vs_compute.png", "allocation.png", "residuals.png", "isoflop.png"):
    assert (tmp_path / "figures" / name).stat().st_size > 10_000
