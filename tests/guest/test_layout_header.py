"""The guest library's layouts match the server's single declaration.

- ``guest-tests/lib/vdma_layout.h`` and ``vtd_layout.h`` are exactly what
  ``vuser.guest.layout_header`` generates from the Python declarations now;
- the C structs of ``vuser.h`` (descriptor, completion record) have the
  Python ``Struct``'s field offsets and sizes, read from the compiled
  object's DWARF with pyelftools (independent of the generated macros);
- the header compiles, so its static assertions hold.
"""

from __future__ import annotations

import enum
import re
import subprocess
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from guest_helpers import need_gcc
from vuser.devices import dma_layout, vtd_layout
from vuser.guest import layout_header, paths
from vuser.wire import Struct

LIB = paths.GUEST_TESTS / "lib"


@pytest.mark.parametrize("spec", layout_header.HEADERS, ids=lambda s: s.filename)
def test_checked_in_header_is_current(spec):
    path = LIB / spec.filename
    assert path.is_file(), f"{path} missing: run python -m vuser.guest.layout_header"
    assert path.read_text() == layout_header.generate(spec), (
        f"{path.name} is stale: the Python layout changed; run "
        "`python -m vuser.guest.layout_header` and rebuild the guest tests")


def _defines(text: str) -> dict[str, int]:
    out = {}
    for m in re.finditer(r"^#define (\w+) (0x[0-9a-f]+|\d+)(ull)?\b", text, re.M):
        out[m.group(1)] = int(m.group(2), 0)
    return out


def test_generated_values_follow_the_declarations():
    """Spot checks by hand-derived names: the naming rule and the values."""
    vdma = _defines(layout_header.generate(layout_header.HEADERS[0]))
    vtd = _defines(layout_header.generate(layout_header.HEADERS[1]))
    assert vdma["VDMA_REG_DEVTLB_CTRL"] == dma_layout.Reg.DEVTLB_CTRL
    assert vdma["VDMA_QUEUE_REG_COMPLETED"] == dma_layout.QueueReg.COMPLETED
    assert vdma["VDMA_DESCRIPTOR_COMPLETION_OFF"] == dma_layout.Descriptor.offset_of("completion")
    assert vdma["VDMA_DESCRIPTOR_SIZE"] == dma_layout.Descriptor.SIZE == 64
    assert vdma["VDMA_Q_CTRL_VECTOR_MASK"] == dma_layout.QCtrl.VECTOR.mask
    assert vdma["VDMA_Q_CTRL_VECTOR_SHIFT"] == dma_layout.QCtrl.VECTOR.lo
    assert vdma["VDMA_COMPLETION_STATUS_PAGE_FAULT"] == dma_layout.CompletionStatus.PAGE_FAULT
    assert vtd["VTD_PASID_QW0_PGTT_SHIFT"] == vtd_layout.PasidQw0.PGTT.lo
    assert vtd["VTD_PASID_QW2_FSPTPTR_MASK"] == vtd_layout.PasidQw2.FSPTPTR.mask
    assert vtd["VTD_FRCD_HI_F_SHIFT"] == 63
    assert vtd["VTD_INV_TYPE_PAGE_GROUP_RESPONSE"] == vtd_layout.InvType.PAGE_GROUP_RESPONSE
    assert vtd["VTD_FAULT_REASON_FS_P"] == vtd_layout.VtdFaultReason.FS_P
    assert vtd["VTD_REG_FRCD"] == vtd_layout.Reg.FRCD
    assert vtd["VTD_IQ_ENTRY_SIZE"] == vtd_layout.IQ_ENTRY_SIZE
    assert vtd["VTD_FIRST_STAGE_PTE_PS_SHIFT"] == 7


def test_every_declaration_is_in_the_header():
    """No enum member, bit field or struct field of the modules is left out."""
    for spec in layout_header.HEADERS:
        names = set(_defines(layout_header.generate(spec)))
        for module, only in spec.sources:
            for name, obj in layout_header._declarations(module, only):
                if isinstance(obj, type) and issubclass(obj, enum.Enum):
                    want = {layout_header._prefixed(spec.prefix, name, m.name) for m in obj}
                elif isinstance(obj, type) and issubclass(obj, Struct):
                    want = {layout_header._prefixed(spec.prefix, name, f) + "_OFF"
                            for f in obj.fields()}
                elif hasattr(obj, "FIELDS"):
                    want = {layout_header._prefixed(spec.prefix, name, f) + "_MASK"
                            for f in obj.FIELDS}
                else:
                    continue
                assert want <= names, f"{spec.filename}: missing {sorted(want - names)}"


def test_a_changed_declaration_makes_the_header_stale(monkeypatch):
    """The check can fail: move a field and the generated text differs."""
    spec = layout_header.HEADERS[0]
    before = layout_header.generate(spec)
    moved = enum.IntEnum("Reg", {**{m.name: int(m) for m in dma_layout.Reg}, "LABEL": 0x0D0})
    monkeypatch.setattr(dma_layout, "Reg", moved)
    assert "#define VDMA_REG_LABEL 0xd0" in layout_header.generate(spec)
    assert layout_header.generate(spec) != before


def test_check_mode_reports_a_stale_file(tmp_path, capsys):
    for spec in layout_header.HEADERS:
        (tmp_path / spec.filename).write_text(layout_header.generate(spec))
    assert layout_header.main(["--check", "--dir", str(tmp_path)]) == 0
    (tmp_path / "vtd_layout.h").write_text("/* old */\n")
    assert layout_header.main(["--check", "--dir", str(tmp_path)]) == 1
    assert "vtd_layout.h" in capsys.readouterr().err


def _dwarf_structs(obj: Path) -> dict[str, dict[str, tuple[int, int]]]:
    """{struct name: {member: (offset, size)}} from the object's DWARF."""
    out: dict[str, dict[str, tuple[int, int]]] = {}
    with obj.open("rb") as f:
        elf = ELFFile(f)
        dwarf = elf.get_dwarf_info()
        for cu in dwarf.iter_CUs():
            for die in cu.iter_DIEs():
                if die.tag != "DW_TAG_structure_type" or "DW_AT_name" not in die.attributes:
                    continue
                members = {}
                for child in die.iter_children():
                    if child.tag != "DW_TAG_member":
                        continue
                    name = child.attributes["DW_AT_name"].value.decode()
                    off = child.attributes["DW_AT_data_member_location"].value
                    members[name] = (off, _type_size(child))
                out[die.attributes["DW_AT_name"].value.decode()] = members
    return out


def _type_size(die) -> int:
    t = die.get_DIE_from_attribute("DW_AT_type")
    while "DW_AT_byte_size" not in t.attributes:
        if t.tag == "DW_TAG_array_type":
            elem = _type_size(t)
            sub = next(t.iter_children())
            return elem * (sub.attributes["DW_AT_upper_bound"].value + 1)
        t = t.get_DIE_from_attribute("DW_AT_type")
    return t.attributes["DW_AT_byte_size"].value


@pytest.fixture(scope="module")
def c_structs(tmp_path_factory) -> dict[str, dict[str, tuple[int, int]]]:
    gcc = need_gcc()
    work = tmp_path_factory.mktemp("layout")
    src = work / "layout.c"
    src.write_text('#include "lib/vuser.h"\n'
                   "struct vdma_desc layout_desc;\nstruct vdma_completion layout_comp;\n")
    obj = work / "layout.o"
    p = subprocess.run([gcc, "-g", "-c", "-std=gnu11", "-Wall", "-Werror", "-I",
                        str(paths.GUEST_TESTS), "-o", str(obj), str(src)],
                       capture_output=True, text=True)
    assert p.returncode == 0, f"vuser.h does not compile (static assertions?):\n{p.stderr}"
    return _dwarf_structs(obj)


@pytest.mark.parametrize("c_name, py", [("vdma_desc", dma_layout.Descriptor),
                                         ("vdma_completion", dma_layout.CompletionRecord)])
def test_c_struct_matches_the_python_struct(c_structs, c_name, py):
    members = c_structs[c_name]
    assert len(members) == len(py.fields()), f"{c_name}: {list(members)} vs {py.fields()}"
    # Members pair up in order; named ones must also agree by name.
    for (cname, (off, size)), pname, kind in zip(members.items(), py.fields(), py._kinds):
        if not pname.startswith("_"):
            assert cname == pname, f"{c_name}: member {cname} where Python has {pname}"
        assert off == py.offset_of(pname), f"{c_name}.{cname} at {off}, Python {pname} at " \
                                           f"{py.offset_of(pname)}"
        want = kind.n if hasattr(kind, "n") else kind.bits // 8
        assert size == want, f"{c_name}.{cname} is {size} bytes, Python {pname} {want}"
