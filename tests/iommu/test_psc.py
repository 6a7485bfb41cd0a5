"""The first-stage paging-structure cache: a changed upper-level entry may be
used until an invalidation, and never after one (vuser/iommu/iotlb.py
"Paging-structure cache")."""

from __future__ import annotations

from typing import Callable

import pytest

from iommu_helpers import DATA_GPA, MB, P, PASID, TABLES_GPA, TABLES_SIZE, NestedRig
from vuser.iommu import Fault
from vuser.iommu.pagetable.formats import FirstStagePte
from vuser.iommu.uapi import ALL_PASIDS, U64_MAX, VTD_INV_FLAGS_LEAF

OLD, NEW = DATA_GPA + 2 * P, DATA_GPA + MB          # where page 1 maps, before and after


def _inv(addr: int, npages: int, flags: int = 0) -> dict[str, int]:
    return {"addr": addr, "npages": npages, "flags": flags, "reserved": 0}


def _warm(rig: NestedRig) -> None:
    """Page 0 and page 1 under one PDE; only page 0 is translated, so the
    PDE (and the entries above it) are cached, page 1 is not in the IOTLB."""
    rig.pt.map(0, DATA_GPA, P)
    rig.pt.map(P, OLD, P)
    assert rig.gpa_of(0) == DATA_GPA
    assert rig.ctx.stats()["psc_entries"] == 3         # PML4E, PDPTE, PDE


def _move_pde(rig: NestedRig) -> None:
    """The guest points the PDE at a new table where page 1 maps NEW: no
    invalidation yet."""
    new_table = rig.pt.alloc_table()
    rig.pt.write_entry(rig.pt.entry_address(0, 2),
                       FirstStagePte.pack(P=1, RW=1, US=1, ADDR=new_table >> 12))
    rig.pt.map(P, NEW, P)                              # lands in the new table


def test_a_changed_pde_is_used_until_invalidated(nested: NestedRig) -> None:
    _warm(nested)
    _move_pde(nested)
    reads = nested.ctx.stats()["memory_reads"]
    assert nested.gpa_of(P) == OLD                     # the cached PDE: the old table
    s = nested.ctx.stats()
    assert (s["memory_reads"] - reads, s["psc_hits"]) == (1, 1)   # only the PTE was read
    nested.ctx.hwpt_invalidate(nested.s1, [_inv(P, 1)])
    assert nested.gpa_of(P) == NEW


def test_without_the_cache_every_walk_reads_the_tables() -> None:
    rig = NestedRig(psc_capacity=0)
    rig.pt.map(0, DATA_GPA, P)
    rig.pt.map(P, OLD, P)
    assert rig.gpa_of(0) == DATA_GPA
    _move_pde(rig)
    assert rig.gpa_of(P) == NEW
    s = rig.ctx.stats()
    assert (s["psc_hits"], s["psc_entries"], s["memory_reads"]) == (0, 0, 8)


def _hwpt_page(rig: NestedRig) -> None:
    rig.ctx.hwpt_invalidate(rig.s1, [_inv(P, 1)])


def _hwpt_leaf_hint(rig: NestedRig) -> None:
    # LEAF would let a paging-structure cache stay; the model drops it anyway
    rig.ctx.hwpt_invalidate(rig.s1, [_inv(P, 1, VTD_INV_FLAGS_LEAF)])


def _hwpt_other_page(rig: NestedRig) -> None:
    # a page-selective invalidation of another page still drops the whole cache
    rig.ctx.hwpt_invalidate(rig.s1, [_inv(64 * P, 1)])


def _pasid_iotlb(rig: NestedRig) -> None:
    # the vIOMMU's PASID-based IOTLB invalidation (IOTLB only, no device TLB)
    rig.ctx.iotlb_invalidate(rig.dev_id, PASID, P, 1, devtlb=False)


def _device(rig: NestedRig) -> None:
    rig.ctx.iotlb_invalidate(rig.dev_id, ALL_PASIDS)


def _global(rig: NestedRig) -> None:
    rig.ctx.iotlb_invalidate()


def _host_unmap(rig: NestedRig) -> None:
    rig.ctx.ioas_unmap(rig.ioas, TABLES_GPA, TABLES_SIZE)
    rig.ctx.ioas_map(rig.ioas, rig.tables, TABLES_SIZE, TABLES_GPA)


def _reattach(rig: NestedRig) -> None:
    rig.ctx.device_detach(rig.dev_id, PASID)
    rig.ctx.device_attach(rig.dev_id, rig.s1, pasid=PASID)


@pytest.mark.parametrize("invalidate", [
    _hwpt_page, _hwpt_leaf_hint, _hwpt_other_page, _pasid_iotlb, _device, _global, _host_unmap,
    _reattach,
], ids=lambda f: f.__name__.strip("_"))
def test_no_stale_pde_after_an_invalidation(nested: NestedRig,
                                            invalidate: Callable[[NestedRig], None]) -> None:
    _warm(nested)
    _move_pde(nested)
    invalidate(nested)
    assert nested.ctx.stats()["psc_entries"] == 0
    assert nested.gpa_of(P) == NEW


def test_other_pasids_and_devices_keep_their_entries(nested: NestedRig) -> None:
    """Scoped invalidations drop the scope's entries, not others'."""
    ctx = nested.ctx
    ctx.device_attach(nested.dev_id, nested.s1, pasid=200)
    nested.pt.map(0, DATA_GPA, P)
    assert nested.gpa_of(0) == DATA_GPA
    assert not isinstance(nested.translate(0, pasid=200), Fault)
    assert ctx.stats()["psc_entries"] == 6
    ctx.iotlb_invalidate(nested.dev_id, 200, 0, 1, devtlb=False)
    assert ctx.stats()["psc_entries"] == 3
    ctx.iotlb_invalidate(nested.dev_id, PASID, 0, U64_MAX)
    assert ctx.stats()["psc_entries"] == 0


def test_a_faulting_walk_caches_nothing(nested: NestedRig) -> None:
    nested.pt.map(0, DATA_GPA, P, user=False)          # supervisor page: a user read faults
    assert isinstance(nested.gpa_of(0), Fault)
    assert nested.ctx.stats()["psc_entries"] == 0


def test_a_full_cache_starts_again() -> None:
    rig = NestedRig(psc_capacity=4)
    rig.pt.map(0, DATA_GPA, P)
    rig.pt.map(1 << 39, DATA_GPA + P, P)               # another PML4E: three more entries
    rig.gpa_of(0)
    assert rig.ctx.stats()["psc_entries"] == 3
    rig.gpa_of(1 << 39)
    assert rig.ctx.stats()["psc_entries"] == 3         # emptied, then this walk's three
    assert rig.gpa_of(0) == DATA_GPA and rig.gpa_of(1 << 39) == DATA_GPA + P


@pytest.mark.parametrize("levels", [4, 5])
def test_a_large_page_walk_resumes_at_its_leaf_level(levels: int) -> None:
    """2 MiB leaves sit at level 2: the cached entries end at the PDPTE, and a
    second 2 MiB page under it is one read, at either paging depth."""
    rig = NestedRig(levels=levels)
    rig.pt.map(0, DATA_GPA, 4 * MB, page_size=2 * MB)
    rig.data[2 * MB + 5] = 0x5A
    assert rig.gpa_of(0) == DATA_GPA
    s = rig.ctx.stats()
    assert (s["memory_reads"], s["psc_entries"]) == (levels - 1, levels - 2)
    assert rig.ctx.read(rig.dev_id, PASID, 2 * MB + 5, 1) == b"\x5a"
    s = rig.ctx.stats()
    assert (s["memory_reads"], s["psc_hits"]) == (levels, 1)
