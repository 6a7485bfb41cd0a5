"""Page-table formats and walks: real x86-64 first-stage tables inside a
stage-2-mapped buffer, translated through both stages."""

from __future__ import annotations

import pytest

from iommu_helpers import DATA_GPA, GB, MB, P, PASID, TABLES_GPA, NestedRig
from vuser.iommu import Access, Fault, FaultKind, Stage
from vuser.iommu.pagetable import (
    FirstStagePte, PageTableBuilder, SecondStagePte, SecondStageTables, walk_nested,
    walk_second_stage,
)
from vuser.iommu.uapi import IoasMapFlags, VtdS1Flags

R, W, X, PRIV = Access.READ, Access.WRITE, Access.EXEC, Access.PRIV
TWO_M = 2 * MB

#: (levels, page size) -> (iova of the page, GPA it maps to)
CASES = {
    (4, P): (0x7F12_3456_7000, DATA_GPA + 0x3000),
    (4, TWO_M): (0x7F00_0020_0000, DATA_GPA + TWO_M),
    (4, GB): (0x40_0000_0000, DATA_GPA),
    (5, P): (0xAB_CDEF_1234_5000, DATA_GPA + 0x5000),
    (5, TWO_M): (0xAB_0000_0020_0000, DATA_GPA + TWO_M),
    (5, GB): (0xAB_0000_4000_0000, DATA_GPA),
}


def _leaf_level(size: int) -> int:
    return {P: 1, TWO_M: 2, GB: 3}[size]


@pytest.mark.parametrize("levels, size", sorted(CASES))
def test_nested_walk_translates_through_both_stages(levels: int, size: int) -> None:
    rig = NestedRig(levels=levels)
    iova, gpa = CASES[(levels, size)]
    rig.pt.map(iova, gpa, size, page_size=size)
    off = {P: 0x238, TWO_M: 0x101230, GB: 0x301230}[size]
    rig.data[gpa - DATA_GPA + off:gpa - DATA_GPA + off + 5] = b"hello"
    before = rig.ctx.stats()["memory_reads"]
    assert rig.ctx.read(rig.dev_id, PASID, iova + off, 5) == b"hello"
    walked = levels - _leaf_level(size) + 1
    assert rig.ctx.stats()["memory_reads"] - before == walked  # one read per level
    assert rig.ctx.write(rig.dev_id, PASID, iova + off + 8, b"world") is None
    assert rig.data_at(gpa + off + 8, 5) == b"world"
    segs = rig.translate(iova + off, 1)
    assert segs[0].gpa == gpa + off and segs[0].iova == iova + off
    rig.ctx.close()


def test_five_level_walks_read_one_more_entry_than_four_level() -> None:
    reads = {}
    for levels in (4, 5):
        rig = NestedRig(levels=levels)
        rig.pt.map(0x1000, DATA_GPA, P)
        rig.translate(0x1000)
        reads[levels] = rig.ctx.stats()["memory_reads"]
    assert reads == {4: 4, 5: 5}


def test_not_present_stage1_entry(nested: NestedRig) -> None:
    nested.pt.map(0, DATA_GPA, P)
    f = nested.translate(0x5000)
    assert isinstance(f, Fault)
    assert (f.reason, f.stage, f.iova, f.level) == (FaultKind.PAGING_ENTRY_INV, Stage.S1,
                                                    0x5000, 1)
    f = nested.translate(1 << 40)  # missing at the top
    assert f.reason == FaultKind.PAGING_ENTRY_INV and f.level == 4


def test_write_to_a_read_only_page(nested: NestedRig) -> None:
    nested.pt.map(0, DATA_GPA, P, write=False)
    assert nested.gpa_of(0x10) == DATA_GPA + 0x10
    f = nested.translate(0x10, 4, W)
    assert isinstance(f, Fault) and (f.reason, f.stage) == (FaultKind.WRITE, Stage.S1)


@pytest.mark.parametrize("levels, size, level, bit", [
    (4, P, 1, 50),        # above the 48-bit output width
    (4, TWO_M, 2, 13),    # inside a 2 MiB page's address
    (4, GB, 3, 20),       # inside a 1 GiB page's address
    (4, P, 2, 49),        # a table pointer above the width
    (4, P, 4, 7),         # PS in a PML4E
    (5, P, 5, 7),         # PS in a PML5E
])
def test_reserved_bits(levels: int, size: int, level: int, bit: int) -> None:
    rig = NestedRig(levels=levels)
    iova, gpa = CASES[(levels, size)]
    rig.pt.map(iova, gpa, size, page_size=size)
    addr = rig.pt.entry_address(iova, level)
    rig.pt.write_entry(addr, rig.pt.read_entry(addr) | 1 << bit)
    f = rig.translate(iova)
    assert isinstance(f, Fault)
    assert (f.reason, f.stage, f.level) == (FaultKind.PAGING_ENTRY_RSVD, Stage.S1, level)


def test_ignored_high_bits_are_not_reserved(nested: NestedRig) -> None:
    nested.pt.map(0, DATA_GPA, P)
    addr = nested.pt.entry_address(0, 1)
    nested.pt.write_entry(addr, nested.pt.read_entry(addr) | 0x7FF << 52)  # bits 62:52
    assert nested.gpa_of(0) == DATA_GPA


def test_stage2_hole_under_a_stage1_table(nested: NestedRig) -> None:
    nested.pt.map(0, DATA_GPA, P)
    hole = 0x800000  # not mapped in stage 2
    pdpte = nested.pt.entry_address(0, 3)
    nested.pt.write_entry(pdpte, FirstStagePte.pack(P=1, RW=1, US=1, ADDR=hole >> 12))
    f = nested.translate(0)
    assert isinstance(f, Fault)
    assert (f.reason, f.stage, f.s1_fetch, f.level) == (FaultKind.PAGING_ENTRY_INV, Stage.S2,
                                                        True, 2)
    assert f.gpa == hole and f.iova == 0


def test_stage2_hole_under_the_final_gpa(nested: NestedRig) -> None:
    nested.pt.map(0, 0x800000, P)
    f = nested.translate(0x24)
    assert (f.reason, f.stage, f.s1_fetch, f.gpa) == (FaultKind.PAGING_ENTRY_INV, Stage.S2,
                                                       False, 0x800024)


def test_stage2_read_only_page_denies_writes(nested: NestedRig) -> None:
    ro = bytearray(P)
    nested.ctx.ioas_map(nested.ioas, ro, P, 0x2000000, int(IoasMapFlags.READABLE))
    nested.pt.map(0, 0x2000000, P)
    assert nested.gpa_of(0) == 0x2000000
    f = nested.translate(0, 4, W)
    assert (f.reason, f.stage) == (FaultKind.WRITE, Stage.S2)


def test_non_canonical_address(nested: NestedRig) -> None:
    f = nested.translate(1 << 47)
    assert (f.reason, f.stage) == (FaultKind.FS_NON_CANONICAL, Stage.S1)
    f = nested.translate(0xFFFF_8000_0000_0000)  # canonical, just not mapped
    assert f.reason == FaultKind.PAGING_ENTRY_INV


def test_user_access_to_a_supervisor_page_and_priv_without_sre(nested: NestedRig) -> None:
    nested.pt.map(0, DATA_GPA, P, user=False)
    nested.pt.map(P, DATA_GPA + P, P)
    assert nested.translate(0).reason == FaultKind.FS_PRIV_VIOLATION
    assert nested.translate(P, 1, R | PRIV).reason == FaultKind.FS_PRIV_VIOLATION
    assert nested.gpa_of(P) == DATA_GPA + P


@pytest.mark.parametrize("wpe", [False, True])
def test_supervisor_requests_with_sre(wpe: bool) -> None:
    flags = VtdS1Flags.SRE | (VtdS1Flags.WPE if wpe else 0)
    rig = NestedRig(s1_flags=int(flags))
    rig.pt.map(0, DATA_GPA, P, user=False, write=False)
    assert rig.gpa_of(0, R | PRIV) == DATA_GPA
    f = rig.translate(0, 1, W | PRIV)
    if wpe:
        assert f.reason == FaultKind.WRITE
    else:
        assert f[0].gpa == DATA_GPA  # supervisor writes ignore R/W without WPE


def test_execute_disable(nested: NestedRig) -> None:
    nested.pt.map(0, DATA_GPA, P, xd=True)
    assert nested.gpa_of(0) == DATA_GPA
    f = nested.translate(0, 1, R | X)
    assert (f.reason, f.stage) == (FaultKind.READ, Stage.S1)


def test_walks_set_accessed_and_dirty_flags() -> None:
    rig = NestedRig(s1_flags=int(VtdS1Flags.EAFE))
    rig.pt.map(0, DATA_GPA, P)
    entries = [rig.pt.entry_address(0, lvl) for lvl in (4, 3, 2, 1)]
    rig.translate(0)
    vals = [rig.pt.read_entry(e) for e in entries]
    assert all(FirstStagePte.A.get(v) and FirstStagePte.EA.get(v) for v in vals)
    assert not FirstStagePte.D.get(vals[-1])
    writes = rig.ctx.stats()["memory_writes"]
    assert writes == 4
    rig.translate(0, 1, W)  # the cached entry was read-only: walk again, set D
    assert FirstStagePte.D.get(rig.pt.read_entry(entries[-1]))
    assert rig.ctx.stats()["memory_writes"] == writes + 1
    assert not any(FirstStagePte.D.get(rig.pt.read_entry(e)) for e in entries[:-1])


def test_faulting_walks_leave_the_tables_alone(nested: NestedRig) -> None:
    nested.pt.map(0, DATA_GPA, P, write=False)
    before = bytes(nested.tables)
    assert isinstance(nested.translate(0, 1, W), Fault)
    assert bytes(nested.tables) == before


def test_accessed_flag_update_through_a_read_only_stage2_fails(nested: NestedRig) -> None:
    nested.pt.map(0, DATA_GPA, P)
    ctx = nested.ctx
    ctx.ioas_unmap(ctx and nested.ioas, TABLES_GPA, 1 * MB)
    ctx.ioas_map(nested.ioas, nested.tables, 1 * MB, TABLES_GPA, int(IoasMapFlags.READABLE))
    f = nested.translate(0)
    assert (f.reason, f.stage, f.s1_fetch) == (FaultKind.FS_BIT_UPDATE_FAILED, Stage.S2, True)
    for lvl in (4, 3, 2, 1):  # with A already set no update is needed
        e = nested.pt.entry_address(0, lvl)
        nested.pt.write_entry(e, nested.pt.read_entry(e) | FirstStagePte.A.mask)
    assert nested.gpa_of(0) == DATA_GPA


# -- the second-stage format and real two-dimensional walks --------------------------

def _s2(levels: int = 4, ad: bool = False) -> tuple[bytearray, PageTableBuilder]:
    host = bytearray(1 * MB)
    return host, PageTableBuilder(host, fmt="second", levels=levels)


def test_second_stage_walk_and_permissions() -> None:
    host, s2 = _s2()
    s2.map(0x1000, 0x80000, P, write=False)
    s2.map(0x400000, 0x600000, TWO_M, page_size=TWO_M)
    t = walk_second_stage(memoryview(host), 0x1010, R, root=s2.root)
    assert (t.output, t.size, t.reads) == (0x80000, P, 4)
    t = walk_second_stage(memoryview(host), 0x412345, W, root=s2.root)
    assert (t.output, t.size, t.level, t.reads) == (0x600000, TWO_M, 2, 3)
    f = walk_second_stage(memoryview(host), 0x1010, W, root=s2.root)
    assert (f.reason, f.stage) == (FaultKind.WRITE, Stage.S2)
    f = walk_second_stage(memoryview(host), 0x5000, R, root=s2.root)
    assert f.reason == FaultKind.PAGING_ENTRY_INV
    f = walk_second_stage(memoryview(host), 1 << 48, R, root=s2.root)
    assert f.reason == FaultKind.ADDR_BEYOND_MGAW
    addr = s2.entry_address(0x400000, 2)
    s2.write_entry(addr, s2.read_entry(addr) | 1 << 14)
    assert walk_second_stage(memoryview(host), 0x400000, R,
                             root=s2.root).reason == FaultKind.PAGING_ENTRY_RSVD


def test_second_stage_accessed_dirty_when_enabled() -> None:
    host, s2 = _s2()
    s2.map(0x1000, 0x80000, P)
    leaf = s2.entry_address(0x1000, 1)
    walk_second_stage(memoryview(host), 0x1000, R, root=s2.root)
    assert not SecondStagePte.A.get(s2.read_entry(leaf))  # SSADE off: untouched
    walk_second_stage(memoryview(host), 0x1000, R, root=s2.root, ad=True)
    v = s2.read_entry(leaf)
    assert SecondStagePte.A.get(v) and not SecondStagePte.D.get(v)
    walk_second_stage(memoryview(host), 0x1000, W, root=s2.root, ad=True)
    assert SecondStagePte.D.get(s2.read_entry(leaf))


@pytest.mark.parametrize("levels, reads", [(4, 24), (5, 35)])
def test_two_dimensional_walk_over_real_stage2_tables(levels: int, reads: int) -> None:
    host = bytearray(4 * MB)
    hmem = memoryview(host)
    s2 = PageTableBuilder(hmem, fmt="second", levels=levels, alloc_end=1 * MB)
    s2.map(0, 2 * MB, 2 * MB)                 # GPA [0, 2M) -> HPA [2M, 4M), 4K pages
    guest = hmem[2 * MB:4 * MB]               # the guest's view of its memory
    s1 = PageTableBuilder(guest, levels=levels, alloc_start=P, alloc_end=1 * MB)
    iova = 0x1234_5000 if levels == 4 else 0x12_3456_7800_0000
    s1.map(iova, 0x100000, P)
    guest[0x100040:0x100044] = b"2dim"
    port = SecondStageTables(hmem, s2.root, levels=levels)
    t = walk_nested(port, iova + 0x40, R, root=s1.root, levels=levels)
    assert t.reads == reads  # n1 * (n2 + 1) + n2
    assert bytes(hmem[t.output:t.output + 4]) == b"2dim"
    s2.unmap(0x100000)  # the data page's stage-2 entry
    f = walk_nested(port, iova + 0x40, R, root=s1.root, levels=levels)
    assert (f.stage, f.s1_fetch, f.reason) == (Stage.S2, False, FaultKind.PAGING_ENTRY_INV)
    s2.unmap(s1.root)  # the stage-1 root's stage-2 entry
    f = walk_nested(port, iova, R, root=s1.root, levels=levels)
    assert (f.stage, f.s1_fetch, f.level) == (Stage.S2, True, levels)


def test_builder_rejects_bad_requests() -> None:
    with pytest.raises(ValueError):
        PageTableBuilder(bytearray(P * 4), fmt="third")
    with pytest.raises(ValueError):
        PageTableBuilder(bytearray(P * 4), levels=3)
    pt = PageTableBuilder(bytearray(P * 8))
    with pytest.raises(ValueError):
        pt.map(0, 0x1000, TWO_M, page_size=TWO_M)
    pt.map(0, 0, TWO_M, page_size=TWO_M)
    with pytest.raises(ValueError):
        pt.map(0x1000, 0, P)  # under an existing 2 MiB page
    with pytest.raises(MemoryError):
        for i in range(1, 16):
            pt.map(i << 39, 0, P)
