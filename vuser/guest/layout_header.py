"""C headers for the guest library, generated from the server's layout declarations.

The register, descriptor and table layouts of ``vuser-dma`` and ``vuser-iommu``
are declared once, in Python (``vuser.devices.dma_layout``,
``vuser.devices.vtd_layout``, and the first-stage PTE of
``vuser.iommu.pagetable.formats``). The guest library
(``guest-tests/lib/vuser.h``) includes ``vdma_layout.h`` and ``vtd_layout.h``,
which this module writes from those declarations, so the two sides cannot
drift; ``tests/guest/test_layout_header.py`` fails when a checked-in header
is not what this module generates now.

Naming, with ``P`` the header's prefix and ``NAME`` a class or field name in
UPPER_SNAKE case (``PasidQw0`` -> ``PASID_QW0``):

- ``enum.IntEnum`` / ``IntFlag`` member: ``P_CLASS_MEMBER``;
- ``BitLayout`` field: ``P_CLASS_FIELD_SHIFT``, ``_MASK`` (in place), ``_WIDTH``;
- ``Struct``: ``P_CLASS_SIZE``; each field ``P_CLASS_FIELD_OFF`` and ``_LEN``
  (a leading underscore of a reserved field is dropped);
- a module-level int in ``__all__``: ``P_NAME`` (not doubled if it already
  starts with ``P_``).

Regenerate with ``python -m vuser.guest.layout_header`` (``--check`` only
compares).
"""

from __future__ import annotations

import argparse
import enum
import re
import struct
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from vuser.devices import base, dma_layout, viommu, vtd_layout
from vuser.guest import paths
from vuser.iommu.pagetable import formats
from vuser.wire import BitLayout, Struct

__all__ = ["HeaderSpec", "HEADERS", "generate", "c_name", "main"]


@dataclass(frozen=True)
class HeaderSpec:
    """One generated header: its file, prefix, and the declarations it carries."""

    filename: str
    prefix: str
    guard: str
    title: str
    sources: tuple[tuple[ModuleType, tuple[str, ...] | None], ...]  # (module, names; None: __all__)
    extra: tuple[tuple[str, ModuleType, str], ...] = ()  # (C name, module, attribute path)


HEADERS = (
    HeaderSpec(
        filename="vdma_layout.h", prefix="VDMA", guard="VDMA_LAYOUT_H",
        title="vuser-dma: BAR0 registers, descriptor, completion record (docs/vuser-dma.md)",
        sources=((dma_layout, None),),
        extra=(("VDMA_VENDOR_ID", base, "VUSER_VENDOR_ID"),)),
    HeaderSpec(
        filename="vtd_layout.h", prefix="VTD", guard="VTD_LAYOUT_H",
        title="vuser-iommu: VT-d scalable-mode registers, tables, descriptors "
              "(docs/vuser-iommu.md)",
        sources=((vtd_layout, None), (formats, ("FirstStagePte",))),
        extra=(("VTD_VENDOR_ID", base, "VUSER_VENDOR_ID"),
               ("VTD_DEVICE_ID", viommu, "VIommuDevice.DEVICE_ID"))),
)


def c_name(name: str) -> str:
    """``PasidQw0`` -> ``PASID_QW0``, ``IQ_ENTRY_SIZE`` unchanged, ``_rsvd0`` -> ``RSVD0``."""
    name = name.lstrip("_")
    if name.isupper() or "_" in name and name.upper() == name:
        return name
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name)
    return snake.upper()


def _prefixed(prefix: str, *parts: str) -> str:
    head = c_name(parts[0])
    if head == prefix or head.startswith(prefix + "_"):
        return "_".join([head, *map(c_name, parts[1:])])
    return "_".join([prefix, head, *map(c_name, parts[1:])])


def _hex(v: int) -> str:
    return f"{v:#x}"


def _define(name: str, value: str, comment: str = "") -> str:
    line = f"#define {name} {value}"
    return f"{line:<64} /* {comment} */" if comment else line


def _enum_lines(prefix: str, cls: type[enum.Enum]) -> list[str]:
    lines = [f"/* {cls.__name__} ({cls.__module__}) */"]
    for member in cls:
        lines.append(_define(_prefixed(prefix, cls.__name__, member.name), _hex(int(member))))
    return lines


def _bits_lines(prefix: str, cls: type[BitLayout]) -> list[str]:
    lines = [f"/* {cls.__name__}: {cls.WIDTH}-bit layout ({cls.__module__}) */"]
    for fname, f in cls.FIELDS.items():
        base = _prefixed(prefix, cls.__name__, fname)
        lines.append(_define(f"{base}_SHIFT", str(f.lo), f"bits {f.hi}:{f.lo}"))
        lines.append(_define(f"{base}_MASK", f"{f.mask:#x}ull"))
        lines.append(_define(f"{base}_WIDTH", str(f.width)))
    return lines


def _struct_lines(prefix: str, cls: type[Struct]) -> list[str]:
    base = _prefixed(prefix, cls.__name__)
    lines = [f"/* {cls.__name__}: {cls.SIZE} bytes ({cls.__module__}) */",
             _define(f"{base}_SIZE", str(cls.SIZE))]
    for fname, kind in zip(cls.fields(), cls._kinds):
        fbase = _prefixed(prefix, cls.__name__, fname)
        lines.append(_define(f"{fbase}_OFF", _hex(cls.offset_of(fname))))
        lines.append(_define(f"{fbase}_LEN", str(struct.calcsize("<" + kind.code))))
    return lines


def _declarations(module: ModuleType, names: Iterable[str] | None) -> list[tuple[str, object]]:
    names = list(names if names is not None else getattr(module, "__all__", ()))
    return [(n, getattr(module, n)) for n in names]


def _resolve(module: ModuleType, path: str) -> object:
    obj: object = module
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def generate(spec: HeaderSpec) -> str:
    """The text of one header, from the current declarations."""
    out = [f"/* {spec.title}.",
           " *",
           " * GENERATED by `python -m vuser.guest.layout_header` from "
           + ", ".join(m.__name__ for m, _ in spec.sources) + ";",
           " * do not edit: change the Python declaration and regenerate",
           " * (tests/guest/test_layout_header.py checks this file is current).",
           " */",
           f"#ifndef {spec.guard}", f"#define {spec.guard}", ""]
    for cname, module, attr in spec.extra:
        out.append(_define(cname, _hex(int(_resolve(module, attr))), f"{module.__name__}.{attr}"))
    if spec.extra:
        out.append("")
    for module, names in spec.sources:
        for name, obj in _declarations(module, names):
            if isinstance(obj, type) and issubclass(obj, enum.Enum):
                block = _enum_lines(spec.prefix, obj)
            elif isinstance(obj, type) and issubclass(obj, BitLayout):
                block = _bits_lines(spec.prefix, obj)
            elif isinstance(obj, type) and issubclass(obj, Struct):
                block = _struct_lines(spec.prefix, obj)
            elif isinstance(obj, int) and not isinstance(obj, bool):
                block = [_define(_prefixed(spec.prefix, name), _hex(obj),
                                 f"{module.__name__}.{name}")]
            else:
                continue  # functions and other helpers have no C form
            if len(block) > 1 and out[-1] != "":
                out.append("")
            out += block + ([""] if len(block) > 1 else [])
    while out[-1] == "":
        out.pop()
    out += ["", f"#endif /* {spec.guard} */", ""]
    return "\n".join(_dedup(out))


def _dedup(lines: list[str]) -> list[str]:
    """Drop a second ``#define`` of a name with the same value (``FRCD_SIZE`` and
    ``Frcd.SIZE``); two different values for one name are an error."""
    seen: dict[str, int] = {}
    out = []
    for line in lines:
        m = re.match(r"#define (\w+) (0x[0-9a-f]+|\d+)", line)
        if m:
            name, value = m.group(1), int(m.group(2), 0)
            if name in seen:
                if seen[name] != value:
                    raise ValueError(f"{name} generated twice: {seen[name]:#x} and {value:#x}")
                continue
            seen[name] = value
        out.append(line)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vuser.guest.layout_header",
                                 description="write (or --check) guest-tests/lib/*_layout.h")
    ap.add_argument("--check", action="store_true", help="only report stale headers")
    ap.add_argument("--dir", type=Path, default=paths.GUEST_TESTS / "lib")
    args = ap.parse_args(argv)
    stale = []
    for spec in HEADERS:
        path = args.dir / spec.filename
        text = generate(spec)
        current = path.read_text() if path.exists() else None
        if current == text:
            continue
        stale.append(path)
        if not args.check:
            path.write_text(text)
            print(f"wrote {path}")
    if args.check and stale:
        print("stale: " + ", ".join(map(str, stale)), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
