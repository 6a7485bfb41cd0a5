"""IOTLB runs: contiguous 4 KiB entries served as one translation, never
holding what the per-page entries would not (vuser/iommu/iotlb.py "Runs")."""

from __future__ import annotations

from iommu_helpers import DATA_GPA, MB, P, PASID, NestedRig
from vuser.iommu import Access, Fault, FaultKind, Stage
from vuser.iommu.uapi import U64_MAX

R, W = Access.READ, Access.WRITE


def _inv(addr: int, npages: int) -> dict[str, int]:
    return {"addr": addr, "npages": npages, "flags": 0, "reserved": 0}


def _check_runs(rig: NestedRig) -> None:
    """Every run is made of entries the IOTLB holds, each pointing back at it."""
    tlb = rig.ctx._iotlb
    live = set(map(id, tlb.entries()))
    for (dev_id, pasid, page), run in tlb.runs.items():
        assert run.entries, "a killed run is still reachable"
        assert all(id(e) in live and e.run is run for e in run.entries)
        assert any(e.iova >> 12 == page and (e.dev_id, e.pasid) == (dev_id, pasid)
                   for e in run.entries)


def _read(rig: NestedRig, iova: int, n: int) -> bytes | Fault:
    segs = rig.translate(iova, n, R)
    return segs if isinstance(segs, Fault) else b"".join(bytes(s.mem) for s in segs)


def test_a_warm_multi_page_dma_is_one_segment(nested: NestedRig) -> None:
    nested.pt.map(0, DATA_GPA, 16 * P)
    nested.data[:16 * P] = bytes(range(256)) * (16 * P // 256)
    cold = nested.translate(0x10, 16 * P - 0x20, R)
    assert len(cold) == 16                                # first time: page by page
    warm = nested.translate(0x10, 16 * P - 0x20, R)
    assert [(s.iova, s.gpa) for s in warm] == [(0x10, DATA_GPA + 0x10)]
    assert bytes(warm[0].mem) == bytes(nested.data[0x10:16 * P - 0x10])
    s = nested.ctx.stats()
    assert (s["walks"], s["iotlb_entries"], s["hits"]) == (16, 16, 16)  # hits count pages
    _check_runs(nested)


def test_runs_join_only_contiguous_pages(nested: NestedRig) -> None:
    nested.pt.map(0, DATA_GPA, 2 * P)
    nested.pt.map(2 * P, DATA_GPA + 8 * P, 2 * P)          # a GPA jump after page 1
    nested.translate(0, 4 * P, R)
    warm = nested.translate(0, 4 * P, R)
    assert [(s.iova, s.gpa, len(s.mem)) for s in warm] == [
        (0, DATA_GPA, 2 * P), (2 * P, DATA_GPA + 8 * P, 2 * P)]
    _check_runs(nested)


def test_a_stale_run_is_used_until_one_of_its_pages_is_invalidated(nested: NestedRig) -> None:
    """As for single entries: no snooping, and the invalidation the spec asks
    for (a page-selective one of the changed page) drops what the run held."""
    nested.pt.map(0, DATA_GPA, 4 * P)
    nested.data[2 * P:3 * P] = b"\x11" * P
    nested.data[2 * MB:2 * MB + P] = b"\x22" * P
    nested.translate(0, 4 * P, R)
    assert _read(nested, 0, 4 * P)[2 * P:3 * P] == b"\x11" * P
    leaf = nested.pt.entry_address(2 * P, 1)
    nested.pt.write_entry(leaf, nested.pt.leaf_entry(DATA_GPA + 2 * MB, 1))
    assert _read(nested, 0, 4 * P)[2 * P:3 * P] == b"\x11" * P  # stale, as hardware may be
    nested.ctx.hwpt_invalidate(nested.s1, [_inv(3 * P, 1)])     # another page: the run goes,
    assert _read(nested, 0, 4 * P)[2 * P:3 * P] == b"\x11" * P  # page 2's entry stays
    nested.ctx.hwpt_invalidate(nested.s1, [_inv(2 * P, 1)])
    got = _read(nested, 0, 4 * P)
    assert got[2 * P:3 * P] == b"\x22" * P
    assert got[:2 * P] == bytes(nested.data[:2 * P])
    _check_runs(nested)


def test_a_host_unmap_under_a_run_faults_at_stage_2(nested: NestedRig) -> None:
    nested.pt.map(0, DATA_GPA, 8 * P)
    nested.translate(0, 8 * P, R)
    nested.translate(0, 8 * P, R)
    assert nested.ctx._iotlb.runs
    nested.ctx.ioas_unmap(nested.ioas, DATA_GPA, 4 * MB)
    f = nested.translate(0, 8 * P, R)
    assert isinstance(f, Fault) and (f.stage, f.gpa) == (Stage.S2, DATA_GPA)
    assert not nested.ctx._iotlb.runs


def test_detach_and_global_invalidation_drop_runs(nested: NestedRig) -> None:
    nested.pt.map(0, DATA_GPA, 8 * P)
    nested.translate(0, 8 * P, R)
    nested.translate(0, 8 * P, R)
    assert nested.ctx.iotlb_invalidate() == 8
    assert not nested.ctx._iotlb.runs
    nested.translate(0, 8 * P, R)
    nested.translate(0, 8 * P, R)
    nested.ctx.device_detach(nested.dev_id, PASID)
    assert not nested.ctx._iotlb.runs
    f = nested.translate(0, 8 * P, R)
    assert isinstance(f, Fault) and f.reason == FaultKind.PASID_ENTRY_P


def test_eviction_of_one_page_ends_its_run() -> None:
    rig = NestedRig(iotlb_capacity=8)
    rig.pt.map(0, DATA_GPA, 16 * P)
    rig.translate(0, 8 * P, R)
    rig.translate(0, 8 * P, R)                  # one run of 8
    assert len(rig.ctx._iotlb.runs) == 8
    rig.translate(8 * P, 1, R)                  # evicts page 0
    _check_runs(rig)
    assert (0 >> 12) not in {k[2] for k in rig.ctx._iotlb.runs}
    walks = rig.ctx.stats()["walks"]
    assert _read(rig, 0, 8 * P) == bytes(rig.data[:8 * P])
    assert rig.ctx.stats()["walks"] > walks     # page 0 was walked again
    _check_runs(rig)


def test_a_write_through_a_read_run_sets_dirty_and_tracks_it() -> None:
    rig = NestedRig(dirty=True)
    rig.ctx.hwpt_set_dirty_tracking(rig.parent, True)
    rig.pt.map(0, DATA_GPA, 4 * P)
    rig.translate(0, 4 * P, R)
    rig.translate(0, 4 * P, R)                  # a run that allows reads only (D clear)
    segs = rig.translate(0, 4 * P, W)
    assert not isinstance(segs, Fault)
    for k in range(4):                          # the walk set D on every leaf
        assert rig.pt.read_entry(rig.pt.entry_address(k * P, 1)) & (1 << 6)
    segs = rig.translate(P, 2 * P, W)           # now through a writable run
    assert len(segs) == 1
    bitmap = rig.ctx.hwpt_get_dirty_bitmap(rig.parent, DATA_GPA, 4 * P, P)
    assert bitmap[0] == 0b1111 and not any(bitmap[1:])
    _check_runs(rig)


def test_no_run_crosses_a_2mib_iova_block(nested: NestedRig) -> None:
    nested.pt.map(2 * MB - 2 * P, DATA_GPA, 4 * P)
    nested.translate(2 * MB - 2 * P, 4 * P, R)
    warm = nested.translate(2 * MB - 2 * P, 4 * P, R)
    assert [(s.iova, len(s.mem)) for s in warm] == [(2 * MB - 2 * P, 2 * P), (2 * MB, 2 * P)]
    assert nested.ctx.iotlb_invalidate(nested.dev_id, PASID, 0, U64_MAX) == 4
    assert not nested.ctx._iotlb.runs
