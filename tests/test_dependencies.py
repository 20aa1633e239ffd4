"""pyproject.toml declares exactly what the package imports (and why the rest is there)."""

import ast
import re
import sys
from importlib import metadata
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).parents[1]
# Declared but not imported by weights2data itself: each needs its reason.
INDIRECT = {
    "accelerate": "transformers refuses to load GGUF checkpoints without it",
    "gguf": "transformers reads GGUF checkpoints with it",
}


def _declared() -> dict[str, str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    out = {}
    for spec in deps:
        name = re.match(r"[A-Za-z0-9_.-]+", spec).group(0)
        out[metadata.metadata(name)["Name"].lower()] = spec
    return out


def _imported() -> set[str]:
    """Third-party top-level modules imported anywhere in src/ (lazily or not)."""
    found = set()
    for path in (ROOT / "src" / "weights2data").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names and m != "weights2data"}


def test_every_import_is_declared_and_every_declaration_used():
    declared = _declared()
    dists = metadata.packages_distributions()
    used = set()
    for module in _imported():
        owners = {d.lower() for d in dists.get(module, [])}
        assert owners & set(declared), f"{module} is imported but no owner of it is declared"
        used |= owners & set(declared)
    unused = set(declared) - used - set(INDIRECT)
    assert not unused, f"declared but never imported: {sorted(unused)}"


def test_transformers_floor_knows_the_dtype_argument():
    spec = _declared()["transformers"]
    floor = tuple(int(x) for x in re.search(r">=\s*([\d.]+)", spec).group(1).split(".")[:2])
    assert floor >= (4, 56), "from_pretrained(dtype=...) needs transformers >= 4.56"
