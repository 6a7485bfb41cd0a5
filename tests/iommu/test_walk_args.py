"""The miss path's walk: ``walk_first_stage_raw`` with the arguments a nested
HWPT computes once at allocation (``HwptNested.walk_args``) gives what
``walk_first_stage`` gives with the HWPT's fields, and a PASID whose stage 1
is replaced walks the new HWPT's tables, never the old one's."""

from __future__ import annotations

import itertools

import pytest

from iommu_helpers import DATA_GPA, MB, P, PASID, TABLES_GPA, NestedRig
from vuser.iommu import Access, Fault, FaultKind
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
