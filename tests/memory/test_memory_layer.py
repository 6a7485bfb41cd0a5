"""``vuser.memory`` sits below every other package: it imports only ``vuser.errors``."""

from __future__ import annotations

import ast
from pathlib import Path

import vuser.memory

ALLOWED = {"vuser.errors"}


def vuser_imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("vuser")}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.startswith("vuser"):
            out.add(node.module)
    return out


def test_memory_imports_nothing_above_it():
    files = sorted(Path(vuser.memory.__file__).parent.glob("*.py"))
    assert len(files) >= 4
    for path in files:
        assert vuser_imports(path) <= ALLOWED, path.name


def test_the_check_sees_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from vuser.iommu import IoasidContext\nimport vuser.transport.dma\n")
    assert vuser_imports(bad) == {"vuser.iommu", "vuser.transport.dma"}
