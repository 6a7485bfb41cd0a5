"""IOTLB: stale until invalidated, bounded, keyed by (device, PASID, page, level)."""

from __future__ import annotations

import errno

import pytest

from iommu_helpers import DATA_GPA, MB, P, PASID, NestedRig, Rig, expect_errno
from vuser.iommu import Access, Fault, FaultKind, Stage
from vuser.iommu.uapi import ALL_PASIDS, U64_MAX

R, W = Access.READ, Access.WRITE


def _inv(addr: int, npages: int) -> dict[str, int]:
    return {"addr": addr, "npages": npages, "flags": 0, "reserved": 0}


def test_stale_entry_is_used_until_the_page_is_invalidated(nested: NestedRig) -> None:
    nested.pt.map(0, DATA_GPA, 2 * P)
    assert nested.gpa_of(0) == DATA_GPA
    leaf = nested.pt.entry_address(0, 1)
    nested.pt.write_entry(leaf, nested.pt.leaf_entry(DATA_GPA + 0x10000, 1))
    assert nested.gpa_of(0) == DATA_GPA               # the model does not snoop
    nested.ctx.hwpt_invalidate(nested.s1, [_inv(P, 1)])  # another page
    assert nested.gpa_of(0) == DATA_GPA
    assert nested.ctx.hwpt_invalidate(nested.s1, [_inv(0, 1)]) == 1
    assert nested.gpa_of(0) == DATA_GPA + 0x10000


def test_a_removed_pte_stays_usable_until_invalidated(nested: NestedRig) -> None:
    nested.pt.map(0, DATA_GPA, P)
    assert nested.gpa_of(0) == DATA_GPA
    nested.pt.unmap(0)
    assert nested.gpa_of(0) == DATA_GPA
    nested.ctx.hwpt_invalidate(nested.s1, [_inv(0, U64_MAX)])  # all pages
    assert nested.translate(0).reason == FaultKind.PAGING_ENTRY_INV


def test_large_pages_are_cached_as_one_entry(nested: NestedRig) -> None:
    nested.pt.map(0x200000, DATA_GPA + 0x200000, 2 * MB, page_size=2 * MB)
    for off in range(0, 2 * MB, 64 * 1024):
        nested.translate(0x200000 + off)
    s = nested.ctx.stats()
    assert (s["walks"], s["iotlb_entries"], s["hits"]) == (1, 1, 31)
    # a range invalidation inside the 2 MiB page drops the whole entry
    assert nested.ctx.hwpt_invalidate(nested.s1, [_inv(0x300000, 1)]) == 1
    assert nested.ctx.stats()["iotlb_entries"] == 0


def test_large_stage1_page_over_smaller_stage2_areas_is_cached_at_4k() -> None:
    rig = NestedRig()
    rig.ctx.ioas_unmap(rig.ioas, DATA_GPA, 4 * MB)
    for i in range(4):  # four separate 1 MiB areas under one 2 MiB stage-1 page
        rig.ctx.ioas_map(rig.ioas, memoryview(rig.data)[i * MB:(i + 1) * MB], MB,
                         DATA_GPA + i * MB)
    rig.pt.map(0, DATA_GPA, 2 * MB, page_size=2 * MB)
    rig.data[MB + 5] = 0x5A
    assert rig.ctx.read(rig.dev_id, PASID, MB + 5, 1) == b"\x5a"
    assert rig.ctx._iotlb.entries()[0].size == P


def test_counters(nested: NestedRig) -> None:
    nested.pt.map(0, DATA_GPA, P)
    nested.translate(0)
    nested.translate(8)
    nested.translate(0x9000)
    nested.ctx.hwpt_invalidate(nested.s1, [_inv(0, 1)])
    s = nested.ctx.stats()
    assert (s["translations"], s["hits"], s["misses"], s["walks"], s["faults"]) == (3, 1, 2, 2, 1)
    assert s["invalidations"] == 1 and s["invalidated_entries"] == 1
    # a 4-level walk, then one resuming at the PDE the first one cached
    assert (s["memory_reads"], s["psc_hits"]) == (4 + 1, 1)
    nested.ctx.stats_reset()
    assert nested.ctx.stats()["translations"] == 0


def test_size_bound_evicts_the_least_recently_used() -> None:
    rig = NestedRig(iotlb_capacity=2)
    rig.pt.map(0, DATA_GPA, 3 * P)
    rig.translate(0)
    rig.translate(P)
    rig.translate(0)        # 0 is now the most recent
    rig.translate(2 * P)    # evicts P
    s = rig.ctx.stats()
    assert (s["iotlb_entries"], s["evictions"], s["walks"]) == (2, 1, 3)
    rig.translate(0)
    assert rig.ctx.stats()["walks"] == 3  # still cached
    rig.translate(P)
    assert rig.ctx.stats()["walks"] == 4  # was evicted
    rig.ctx.iotlb_set_capacity(1)
    assert rig.ctx.stats()["iotlb_entries"] == 1
    expect_errno(errno.EINVAL, rig.ctx.iotlb_set_capacity, 0)


def test_per_pasid_per_device_and_global_invalidation(nested: NestedRig) -> None:
    ctx = nested.ctx
    nested.pt.map(0, DATA_GPA, 2 * P)
    ctx.device_attach(nested.dev_id, nested.s1, 200)
    for pasid in (PASID, 200):
        nested.translate(0, pasid=pasid)
        nested.translate(P, pasid=pasid)
    assert ctx.iotlb_invalidate(nested.dev_id, 200, P, 1) == 1        # one page of one PASID
    assert ctx.iotlb_invalidate(nested.dev_id, PASID) == 2             # one PASID
    assert ctx.iotlb_invalidate(nested.dev_id, ALL_PASIDS) == 1        # what is left
    nested.translate(0)
    assert ctx.iotlb_invalidate() == 1                                 # global
    expect_errno(errno.EINVAL, ctx.iotlb_invalidate, nested.dev_id, PASID, 0x800, 1)


def test_host_stage2_unmap_flushes_dependent_stage1_entries(nested: NestedRig) -> None:
    nested.pt.map(0, DATA_GPA, P)
    assert nested.gpa_of(0) == DATA_GPA
    nested.ctx.ioas_unmap(nested.ioas, DATA_GPA, 4 * MB)
    f = nested.translate(0)  # no stale host memory: the walk runs and stage 2 faults
    assert isinstance(f, Fault) and (f.stage, f.gpa) == (Stage.S2, DATA_GPA)


def test_host_unmap_flushes_stage2_only_entries_in_range(rig: Rig) -> None:
    rig.map(2 * P, iova=0)
    rig.map(P, iova=16 * P)
    rig.ctx.device_attach(rig.dev_id, rig.ioas)
    for a in (0, P, 16 * P):
        rig.ctx.translate(rig.dev_id, None, a, 1, R)
    rig.ctx.ioas_unmap(rig.ioas, 0, 2 * P)
    assert rig.ctx.stats()["iotlb_entries"] == 1
    assert isinstance(rig.ctx.translate(rig.dev_id, None, 0, 1, R), Fault)


def test_device_tlb_hook_hears_every_invalidation(nested: NestedRig) -> None:
    calls: list[tuple] = []
    nested.dev.devtlb_invalidate = lambda pasid, addr, npages: calls.append((pasid, addr, npages))
    nested.pt.map(0, DATA_GPA, P)
    nested.ctx.hwpt_invalidate(nested.s1, [_inv(0x3000, 2)])
    assert calls == [(PASID, 0x3000, 2)]
    nested.ctx.iotlb_invalidate(nested.dev_id, PASID, 0, 1)
    nested.ctx.ioas_unmap(nested.ioas, DATA_GPA, 4 * MB)
    nested.ctx.device_detach(nested.dev_id, PASID)
    assert calls[1:] == [(PASID, 0, 1), (PASID, 0, U64_MAX), (PASID, 0, U64_MAX)]


def test_hardware_style_invalidations_keep_the_two_caches_apart(nested: NestedRig) -> None:
    """VT-d descriptors (the vIOMMU's path): an IOTLB invalidation with
    ``devtlb=False`` leaves device TLBs alone, and ``devtlb_invalidate`` tells
    only the device TLB, leaving the IOTLB's entries in place."""
    calls: list[tuple] = []
    nested.dev.devtlb_invalidate = lambda pasid, addr, npages: calls.append((pasid, addr, npages))
    nested.pt.map(0, DATA_GPA, P)
    assert not isinstance(nested.ctx.translate(nested.dev_id, PASID, 0, 1, R), Fault)
    entries = nested.ctx.stats()["iotlb_entries"]
    nested.ctx.devtlb_invalidate(nested.dev_id, PASID, 0, 1)
    assert calls == [(PASID, 0, 1)]
    assert nested.ctx.stats()["iotlb_entries"] == entries       # the IOTLB kept its entry
    assert nested.ctx.iotlb_invalidate(nested.dev_id, PASID, 0, 1, devtlb=False) >= 1
    assert calls == [(PASID, 0, 1)]                                # the device TLB was not told
    expect_errno(errno.EINVAL, nested.ctx.devtlb_invalidate, nested.dev_id, PASID, 0x10, 1)
    expect_errno(errno.ENOENT, nested.ctx.devtlb_invalidate, 9999, PASID, 0, 1)


def test_ats_translation_requests(nested: NestedRig) -> None:
    nested.pt.map(0x200000, DATA_GPA + 0x200000, 2 * MB, page_size=2 * MB)
    nested.pt.map(0, DATA_GPA, P, write=False)
    t = nested.dev.ats_translate(PASID, 0x212345, W)
    assert (t.iova, t.size, t.gpa, t.read, t.write) == (0x200000, 2 * MB, DATA_GPA + 0x200000,
                                                        True, True)
    t = nested.dev.ats_translate(PASID, 0x10)
    assert (t.size, t.read, t.write) == (P, True, False)
    assert isinstance(nested.dev.ats_translate(PASID, 0x5000), Fault)
    rig = Rig(ats=False)
    expect_errno(errno.EOPNOTSUPP, rig.ctx.ats_translate, rig.dev_id, None, 0)


def test_trace_hook_sees_hits_misses_faults_and_invalidations() -> None:
    rig = NestedRig()
    now = iter(range(100))
    rig.ctx._clock = lambda: next(now)
    events = []
    rig.ctx.set_trace(events.append)
    rig.pt.map(0, DATA_GPA, P)
    rig.translate(0x10)
    rig.translate(0x20)
    rig.translate(0x5000)
    rig.ctx.hwpt_invalidate(rig.s1, [_inv(0, 1)])
    rig.ctx.set_trace(None)
    rig.translate(0x30)
    got = [(e.time, e.kind, e.label, e.pasid, e.iova, e.gpa, e.stage, e.hit, e.fault)
           for e in events]
    label = rig.dev.label
    assert got == [
        (0, "translate", label, PASID, 0x10, DATA_GPA + 0x10, Stage.S1, False, None),
        (1, "translate", label, PASID, 0x20, DATA_GPA + 0x20, Stage.IOTLB, True, None),
        (2, "fault", label, PASID, 0x5000, None, Stage.S1, False, FaultKind.PAGING_ENTRY_INV),
        (3, "invalidate", None, None, 0, None, 0, False, None),
    ]
    assert events[3].count == 1 and events[0].to_dict()["kind"] == "translate"


@pytest.mark.parametrize("access", [R, W, R | W])
def test_warm_path_checks_the_requested_access(nested: NestedRig, access: int) -> None:
    nested.pt.map(0, DATA_GPA, P, write=False)
    nested.translate(0)
    r = nested.translate(0, 1, access)
    assert isinstance(r, Fault) == bool(access & W)
