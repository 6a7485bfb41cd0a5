"""The miss path's walk: ``walk_first_stage_raw`` with the arguments a nested
HWPT computes once at allocation (``HwptNested.walk_args``) gives what
``walk_first_stage`` gives with the HWPT's fields, and a PASID whose stage 1
is replaced walks the new HWPT's tables, never the old one's."""

from __future__ import annotations

import itertools

import pytest

from iommu_helpers import DATA_GPA, MB, P, PASID, TABLES_GPA, TABLES_SIZE, NestedRig
from vuser.iommu import Access, Fault, FaultKind, Stage
from vuser.iommu.hwpt import HwptNested
from vuser.iommu.pagetable import PageTableBuilder, walk_first_stage
from vuser.iommu.pagetable.walker import walk_first_stage_raw
from vuser.iommu.uapi import HwptAllocFlags, HwptDataType, VtdS1Flags

R, W, X, PRIV = int(Access.READ), int(Access.WRITE), int(Access.EXEC), int(Access.PRIV)


def _hwpt(rig: NestedRig, hwpt_id: int) -> HwptNested:
    h = rig.ctx._objects.find(hwpt_id)
    assert isinstance(h, HwptNested)
    return h


@pytest.mark.parametrize("s1_flags", [0, VtdS1Flags.SRE, VtdS1Flags.SRE | VtdS1Flags.WPE,
                                      VtdS1Flags.WPE | VtdS1Flags.EAFE])
def test_raw_walk_with_the_hwpt_args_matches_the_keyword_walk(s1_flags: int) -> None:
    """Every leaf right (R/W, U/S, XD) and every access: same result, same
    fault reason, same accessed/dirty updates."""
    for write, user, nx in itertools.product((False, True), repeat=3):
        for access in (R, W, R | X, R | PRIV, W | PRIV, R | X | PRIV):
            results = []
            for raw in (False, True):
                rig = NestedRig(s1_flags=int(s1_flags))
                rig.pt.map(0, DATA_GPA, P, write=write, user=user, xd=nx)
                h = _hwpt(rig, rig.s1)
                s2 = rig.ctx._objects.find(rig.parent)
                if raw:
                    table, levels, modes, eafe = h.walk_args
                    t = walk_first_stage_raw(s2, 0x10, access, table, levels, modes, eafe,
                                             None, None)
                    if not isinstance(t, Fault):
                        t = t[:8] + ([loc[0] for loc in t[8]],)
                else:
                    t = walk_first_stage(s2, 0x10, access, root=h.pgtbl_addr, levels=h.levels,
                                         sre=h.sre, wpe=h.wpe, eafe=h.eafe)
                    if not isinstance(t, Fault):
                        t = (t.iova, t.output, t.size, t.level, t.ok, t.reads, t.writes,
                             t.dirty, t.path)
                results.append((t.reason if isinstance(t, Fault) else t,
                                bytes(rig.tables)))
            assert results[0] == results[1], (write, user, nx, access)


def test_replacing_the_stage_1_walks_the_new_tables() -> None:
    rig = NestedRig()
    rig.pt.map(0, DATA_GPA, P)
    assert rig.gpa_of(0) == DATA_GPA
    # A second stage 1 in the upper half of the table buffer, mapping page 0 elsewhere.
    pt2 = PageTableBuilder(memoryview(rig.tables), base=TABLES_GPA,
                           alloc_start=TABLES_GPA + MB // 2)
    pt2.map(0, DATA_GPA + 3 * P, P)
    s1b = rig.ctx.hwpt_alloc(rig.dev_id, rig.parent, int(HwptAllocFlags.PASID),
                             HwptDataType.VTD_S1,
                             {"flags": int(VtdS1Flags.SRE), "pgtbl_addr": pt2.root,
                              "addr_width": 48})
    assert _hwpt(rig, s1b).walk_args != _hwpt(rig, rig.s1).walk_args
    rig.ctx.device_replace(rig.dev_id, s1b, pasid=PASID)
    assert rig.gpa_of(0) == DATA_GPA + 3 * P
    assert rig.gpa_of(0, R | PRIV) == DATA_GPA + 3 * P      # the new HWPT's SRE
    assert rig.gpa_of(P).reason == FaultKind.PAGING_ENTRY_INV   # not in the new tables
    rig.ctx.device_replace(rig.dev_id, rig.s1, pasid=PASID)   # and back
    assert rig.gpa_of(0) == DATA_GPA
    assert rig.gpa_of(0, R | PRIV).reason == FaultKind.FS_PRIV_VIOLATION


# -- the stage-2 area a walk used last (``IoPagetable.recent``) ---------------

def test_an_unmapped_table_area_is_not_used_by_the_next_walk() -> None:
    """The walk's table fetches remember their area; a host unmap of it and a
    new buffer mapped in its place: the next walk faults, then reads the new
    buffer's tables, never the unmapped one's."""
    rig = NestedRig(psc_capacity=0)                # every walk fetches all 4 levels
    rig.pt.map(0, DATA_GPA, P)
    rig.pt.map(P, DATA_GPA + P, P)
    assert rig.gpa_of(0) == DATA_GPA
    iopt = rig.ctx._objects.find(rig.ioas).iopt
    assert iopt.recent is not None and iopt.recent.iova == TABLES_GPA
    rig.ctx.ioas_unmap(rig.ioas, TABLES_GPA, TABLES_SIZE)
    assert iopt.recent is None
    f = rig.translate(P)
    assert isinstance(f, Fault) and f.stage == Stage.S2 and f.s1_fetch
    # The same tables, but page 1 now maps elsewhere, in a new buffer.
    pte = rig.pt.entry_address(P, 1)
    tables2 = bytearray(rig.tables)
    tables2[pte - TABLES_GPA:pte - TABLES_GPA + 8] = \
        rig.pt.leaf_entry(DATA_GPA + 5 * P, 1).to_bytes(8, "little")
    rig.ctx.ioas_map(rig.ioas, tables2, TABLES_SIZE, TABLES_GPA)
    assert rig.gpa_of(P) == DATA_GPA + 5 * P


def test_a_page_in_a_replaced_area_is_the_new_buffers() -> None:
    """Tables and data in one area (as guest RAM is): the miss path tests that
    area first for the page; after an unmap and a new map at the same GPA the
    page's memory is the new buffer's."""
    rig = NestedRig(psc_capacity=0)
    rig.pt.map(0, TABLES_GPA + MB // 2, P)           # data inside the tables area
    rig.pt.map(P, TABLES_GPA + MB // 2 + P, P)
    rig.pt.map(2 * P, TABLES_GPA + MB // 2 + 2 * P, P)
    assert rig.pt.entry_address(2 * P, 1) < TABLES_GPA + MB // 2   # tables in the lower half
    rig.tables[MB // 2 + P:MB // 2 + P + 4] = b"old!"
    assert rig.gpa_of(0) == TABLES_GPA + MB // 2
    rig.ctx.ioas_unmap(rig.ioas, TABLES_GPA, TABLES_SIZE)
    tables2 = bytearray(rig.tables)
    tables2[MB // 2 + P:MB // 2 + P + 4] = b"new!"
    rig.ctx.ioas_map(rig.ioas, tables2, TABLES_SIZE, TABLES_GPA)
    segs = rig.translate(P, 4)
    assert not isinstance(segs, Fault) and bytes(segs[0].mem) == b"new!"
    # Only the lower half (the tables) mapped again: the walk succeeds, and the
    # page, in the upper half, is a stage-2 fault, not a page of an old area.
    rig.ctx.ioas_unmap(rig.ioas, TABLES_GPA, TABLES_SIZE)
    rig.ctx.ioas_map(rig.ioas, bytearray(tables2[:TABLES_SIZE // 2]), TABLES_SIZE // 2,
                     TABLES_GPA)
    f = rig.translate(2 * P)
    assert isinstance(f, Fault) and f.stage == Stage.S2 and not f.s1_fetch
    assert f.gpa == TABLES_GPA + MB // 2 + 2 * P


def test_a_miss_is_traced_with_the_stage_that_translated_it() -> None:
    """The miss path names its stage only when tracing: S1 for a nested
    attachment, S2 for a paging one."""
    rig = NestedRig()
    rig.pt.map(0, DATA_GPA, P)
    rig.ctx.device_attach(rig.dev_id, rig.parent)   # the RID: stage 2 only
    events: list = []
    rig.ctx.set_trace(events.append)
    assert rig.gpa_of(0x10) == DATA_GPA + 0x10
    assert not isinstance(rig.translate(DATA_GPA + 0x20, pasid=None), Fault)
    assert [(e.kind, e.stage, e.hit) for e in events] == [
        ("translate", Stage.S1, False), ("translate", Stage.S2, False)]
