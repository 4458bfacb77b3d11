"""Only public JAX is imported (`jax._src` moves between releases without notice).

Read from the source with `ast`: every import, including those inside functions.
"""

import ast
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent


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


@pytest.mark.parametrize("folder", ["varjax", "tests", "benchmarks", "sweeps", "analysis"])
def test_only_public_jax_is_imported(folder):
  private = [f"{path.relative_to(REPO)}:{line} imports {module}"
             for path in _python_files(folder) for line, module in _imports(path)
             if module.split(".")[:2] == ["jax", "_src"]
             or module.startswith(("jaxlib._jax", "jaxlib.xla_extension"))]
  assert not private, "\n".join(private)
