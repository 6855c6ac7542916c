"""The package's imports run one way (docs/design.md, "Repository layout"): every relative import of a module
goes to its own sub-package or to a lower layer, checked over the source, so no import cycle between layers
and nothing imports upward (lazy imports inside functions included)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cfbi_model"

# Lowest first; a unit may import itself and the layers before its own (not the other units of its layer).
LAYERS = [
    {"errors", "config", "runtime"},
    {"io"},
    {"modeling"},
    {"build"},
    {"inference", "data"},
    {"evaluation"},
    {"training"},
    {"cli"},
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def _unit(path: Path) -> str:
    """The layer unit of a module: its sub-package, or the module name for a top-level module."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, unit) of every relative import of the package in a module."""
    tree = ast.parse(path.read_text())
    depth = len(path.relative_to(PACKAGE).parts) - 1  # 0 for cfbi_model/x.py
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom) or node.level == 0:
            continue
        up = node.level - 1  # levels above the module's own package
        base = path.relative_to(PACKAGE).parts[: depth - up] if up <= depth else None
        assert base is not None, f"{path}:{node.lineno} imports above the package"
        target = [*base, *(node.module.split(".") if node.module else [])]
        if target:
            found.append((node.lineno, target[0]))
        else:  # `from .. import io`
            found.extend((node.lineno, alias.name) for alias in node.names)
    return found


def test_imports_point_down():
    modules = [p for p in PACKAGE.rglob("*.py") if p != PACKAGE / "__init__.py" and "weights" not in p.parts]
    assert len(modules) > 40
    wrong = []
    for path in modules:
        unit = _unit(path)
        assert unit.removesuffix(".py") in RANK, f"{unit} is in no layer of this test"
        for line, target in _imports(path):
            target = target.removesuffix(".py")
            if target == unit.removesuffix(".py"):
                continue
            assert target in RANK, f"{path}:{line} imports {target}, which is in no layer"
            if RANK[target] >= RANK[unit.removesuffix(".py")]:
                wrong.append(f"{path.relative_to(PACKAGE)}:{line} imports {target} (not a lower layer)")
    assert not wrong, "\n".join(wrong)
