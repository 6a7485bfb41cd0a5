"""The layer table of docs/architecture.md ("Layers") holds for every module of vuser/.

Each import in vuser/ (module level, function-local, under ``TYPE_CHECKING``,
and ``importlib.import_module``/``__import__`` of a string) must stay inside
its own layer or go to a layer its row allows, within the row's restriction;
every module must belong to a row.
"""

from __future__ import annotations

import ast
import importlib
import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"
PKG = ROOT / "vuser"

#: Imports the table does not allow yet, each with its reason. Keep it short.
EXCEPTIONS: set[tuple[str, str]] = set()


@dataclass(frozen=True)
class Layer:
    name: str
    modules: tuple[str, ...]
    allowed: dict[str, tuple[str, ...] | None]  # layer -> restriction (None: any module)
    everything: bool = False


def parse_table(text: str) -> list[Layer]:
    """The rows of the "Layers" table."""
    section = text.split("\n## Layers\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")][1:]  # no header
    layers = []
    for row in rows:
        name, modules, may, _ = (c.strip() for c in row.strip("|").split("|"))
        allowed: dict[str, tuple[str, ...] | None] = {}
        for item in re.findall(r"([A-Z][\w ]*?)(?: \(([^)]*)\))?(?:, |$)", may):
            layer, restriction = item
            allowed[layer] = (tuple(re.findall(r"`([^`]+)`", restriction)) if restriction
                              else None)
        layers.append(Layer(name, tuple(re.findall(r"`([^`]+)`", modules)), allowed,
                            everything=may == "every layer"))
    return layers


def layer_of(module: str, layers: list[Layer]) -> Layer | None:
    best, best_len = None, -1
    for layer in layers:
        for m in layer.modules:
            hit = module == m or (m != "vuser" and module.startswith(m + "."))
            if hit and len(m) > best_len:
                best, best_len = layer, len(m)
    return best


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    rel = Path(*name.split("."))
    return (ROOT / rel).with_suffix(".py").exists() or (ROOT / rel / "__init__.py").exists()


def imports(module: str, source: str, is_pkg: bool) -> list[tuple[str, tuple[str, ...]]]:
    """``(target module, names imported from it)`` for every import in ``source``."""
    package = module if is_pkg else module.rpartition(".")[0]
    out: list[tuple[str, tuple[str, ...]]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(a.name, ()) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = tuple(a.name for a in node.names)
            subs = [n for n in names if is_module(f"{target}.{n}")]
            out += [(f"{target}.{n}", ()) for n in subs]
            rest = tuple(n for n in names if n not in subs)
            if rest or not subs:
                out.append((target, rest))
        elif isinstance(node, ast.Call) and node.args \
                and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            fn = node.func
            fname = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
            if fname in ("import_module", "__import__"):
                out.append((node.args[0].value, ()))
    return [(t, n) for t, n in out if t == "vuser" or t.startswith("vuser.")]


def violations(module: str, source: str, layers: list[Layer], is_pkg: bool = False) -> list[str]:
    """Every import of ``module`` that the table does not allow."""
    own = layer_of(module, layers)
    if own is None:
        return [f"{module}: in no row of the layer table"]
    bad = []
    for target, names in imports(module, source, is_pkg):
        other = layer_of(target, layers)
        if other is own or own.everything or (module, target) in EXCEPTIONS:
            continue
        where = f"{module} imports {target}" + (f" ({', '.join(names)})" if names else "")
        if other is None:
            bad.append(f"{where}: {target} is in no row of the layer table")
        elif other.name not in own.allowed:
            bad.append(f"{where}: {own.name} may not import {other.name}")
        else:
            only = own.allowed[other.name]
            if only is None:
                continue
            if only == ("__all__",):
                public = set(importlib.import_module(target).__all__) \
                    if target in other.modules else set()
                if not names or not set(names) <= public:
                    bad.append(f"{where}: {own.name} may import only "
                               f"{other.modules[0]}.__all__")
            elif not any(target == m or target.startswith(m + ".") for m in only):
                bad.append(f"{where}: {own.name} may import only {', '.join(only)} "
                           f"of {other.name}")
    return bad


def _layers() -> list[Layer]:
    return parse_table(DOC.read_text())


def test_the_table_parses() -> None:
    layers = _layers()
    by_name = {la.name: la for la in layers}
    assert {"Foundation", "Device contract", "Protocol core", "Transport", "PCI", "Devices",
            "IOMMU model", "Control RPC", "QEMU and guest", "CLI"} <= set(by_name)
    assert by_name["Protocol core"].allowed == {"Foundation": None, "Device contract": None}
    assert by_name["Control RPC"].allowed["Devices"] == ("vuser.devices.introspect",)
    assert by_name["Control RPC"].allowed["IOMMU model"] == ("__all__",)
    assert by_name["CLI"].everything and not by_name["Devices"].everything
    for la in layers:
        assert all(a in by_name for a in la.allowed), f"{la.name}: unknown layer in {la.allowed}"


def test_every_module_keeps_to_its_layer() -> None:
    layers = _layers()
    bad = []
    files = sorted(PKG.rglob("*.py"))
    assert len(files) > 100
    for path in files:
        bad += violations(module_name(path), path.read_text(), layers,
                          is_pkg=path.name == "__init__.py")
    assert not bad, "imports against docs/architecture.md \"Layers\":\n" + "\n".join(bad)


def test_an_upward_import_fails() -> None:
    """The check can fail: planted imports of each kind are reported."""
    layers = _layers()
    assert violations("vuser.pci.bar", "from vuser.devices import base\n", layers)
    assert violations("vuser.protocol.server", "def f():\n    import vuser.transport.dma\n",
                      layers)
    assert violations("vuser.iommu.ioas", "import importlib\n"
                      "importlib.import_module('vuser.pci.config')\n", layers)
    assert violations("vuser.rpc.views", "from vuser.devices.platform import Platform\n", layers)
    assert violations("vuser.rpc.views", "from vuser.iommu.ioas import Ioas\n", layers)
    assert violations("vuser.rpc.views", "from vuser.iommu import IoasidContext, Ioas\n", layers)
    assert violations("vuser.devices.platform",
                      "from vuser.protocol.consts import VFIO_USER_F_DMA_REGION_READ\n", layers)
    assert violations("vuser.newpkg.mod", "", layers)
    # ... and allowed ones are not
    assert not violations("vuser.rpc.views", "from vuser.iommu import IoasidContext\n", layers)
    assert not violations("vuser.devices.base", "from ..pci.bar import Bar\n", layers)
    assert not violations("vuser.commands.ctl", "from vuser.devices.platform import Platform\n",
                          layers)
