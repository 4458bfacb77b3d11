"""The package's layers point one way, and only public JAX is imported.

Read from the source with `ast` (every import, including those inside functions), so a
cycle or a reach upward fails here before it fails at import time in some command.
"""

import ast
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent

# The modules at the top of `varjax/` that everything may import: configs, errors, file
# writes, progress bars, the allocator switch and the scale schedules. They import only
# one another (and no JAX-heavy package of varjax).
BASE = {"config", "errors", "files", "hostmem", "progress", "scales"}

# Layer -> the layers it may import besides itself. Bottom to top: base; kernels and
# parallel (independent of each other); models on kernels; data (tokenizes with a model);
# eval; train; aot (compiles whole training steps); the `varjax` command.
MAY_IMPORT = {
    "base": set(),
    "kernels": {"base"},
    "parallel": {"base"},
    "models": {"base", "kernels"},
    "data": {"base", "models"},
    "eval": {"base", "models", "data"},
    "train": {"base", "kernels", "parallel", "models", "data", "eval"},
    "aot": {"base", "kernels", "parallel", "models", "train"},
    "cli": {"base", "kernels", "parallel", "models", "data", "eval", "train", "aot"},
}


def _layer(module: str) -> str:
  """"varjax.kernels.mask" -> "kernels", "varjax.config" -> "base"; "?" if unclassified."""
  parts = module.split(".")
  if len(parts) == 1:
    return "base"  # varjax/__init__.py
  if parts[1] in MAY_IMPORT:
    return parts[1]
  return "base" if parts[1] in BASE else "?" + parts[1]


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(REPO).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: pathlib.Path):
  """(line, imported module) for every import in the file; relative ones resolved."""
  tree = ast.parse(path.read_text(), str(path))
  package = _module_name(path).split(".")
  if path.name != "__init__.py":
    package = package[:-1]
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        yield node.lineno, alias.name
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
      for alias in node.names:  # `from varjax import scales`: the module varjax.scales
        yield node.lineno, f"{base}.{alias.name}"


def _python_files(*folders: str) -> list[pathlib.Path]:
  return sorted(p for folder in folders for p in (REPO / folder).rglob("*.py"))


def test_the_layer_table_is_a_one_way_stack():
  order = ["base", "kernels", "parallel", "models", "data", "eval", "train", "aot", "cli"]
  for layer, allowed in MAY_IMPORT.items():
    assert all(order.index(a) < order.index(layer) for a in allowed), layer


def test_no_module_imports_a_layer_above_or_beside_it():
  bad = []
  for path in _python_files("varjax"):
    layer = _layer(_module_name(path))
    assert not layer.startswith("?"), (
        f"{path.relative_to(REPO)}: new package; give it a layer in MAY_IMPORT")
    for line, module in _imports(path):
      if not module.startswith("varjax."):
        assert not module.startswith(("sweeps", "analysis")), f"{path}:{line} imports {module}"
        continue
      target = _layer(module)
      if target != layer and target not in MAY_IMPORT[layer]:
        bad.append(f"{path.relative_to(REPO)}:{line} ({layer}) imports {module} ({target})")
  assert not bad, "imports against the layers:\n" + "\n".join(bad)


@pytest.mark.parametrize("folder", ["varjax", "tests", "benchmarks", "sweeps", "analysis"])
def test_only_public_jax_is_imported(folder):
  private = [f"{path.relative_to(REPO)}:{line} imports {module}"
             for path in _python_files(folder) for line, module in _imports(path)
             if module.split(".")[:2] == ["jax", "_src"]
             or module.startswith(("jaxlib._jax", "jaxlib.xla_extension"))]
  assert not private, "\n".join(private)
