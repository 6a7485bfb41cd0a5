"""Fidelity rows H1-H27 (docs/iommufd-fidelity.md): HWPT_ALLOC, HWPT_INVALIDATE
and the dirty-tracking commands."""

from __future__ import annotations

import errno

from iommu_helpers import P, PASID, NestedRig, Rig, expect_errno
from vuser.iommu import Access
from vuser.iommu.uapi import (
    U64_MAX, HwptAllocFlags, HwptDataType, IommuHwptVtdS1, IommuHwptVtdS1Invalidate,
    ViommuType,
)

NEST = int(HwptAllocFlags.NEST_PARENT)
DIRTY = int(HwptAllocFlags.DIRTY_TRACKING)
FAULT = int(HwptAllocFlags.FAULT_ID_VALID)
PASIDF = int(HwptAllocFlags.PASID)
VTD = int(HwptDataType.VTD_S1)
S1 = {"flags": 0, "pgtbl_addr": 0x100000, "addr_width": 48}


def inv(addr: int = 0, npages: int = 1, flags: int = 0, reserved: int = 0) -> dict[str, int]:
    return {"addr": addr, "npages": npages, "flags": flags, "reserved": reserved}


def test_H1_data_type_without_data_is_einval_before_the_device(rig: Rig) -> None:
    expect_errno(errno.EINVAL, rig.ctx.hwpt_alloc, 999, rig.ioas, 0, VTD)
    expect_errno(errno.EINVAL, rig.ctx.hwpt_alloc, 999, rig.ioas, 0, 0, S1)


def test_H2_missing_pt_id_is_einval(rig: Rig) -> None:
    expect_errno(errno.ENOENT, rig.ctx.hwpt_alloc, 999, rig.ioas)  # the device first
    expect_errno(errno.EINVAL, rig.ctx.hwpt_alloc, rig.dev_id, 999)


def test_H3_pt_id_of_another_kind_is_einval(nested: NestedRig) -> None:
    fq = nested.ctx.fault_queue_alloc()
    for bad in (fq, nested.dev_id, nested.s1):
        expect_errno(errno.EINVAL, nested.ctx.hwpt_alloc, nested.dev_id, bad, 0, VTD, S1)


def test_H4_paging_unknown_flags(rig: Rig) -> None:
    expect_errno(errno.EOPNOTSUPP, rig.ctx.hwpt_alloc, rig.dev_id, rig.ioas, 1 << 6)


def test_H5_paging_dirty_needs_the_device() -> None:
    rig = Rig(dirty_tracking=False)
    expect_errno(errno.EOPNOTSUPP, rig.ctx.hwpt_alloc, rig.dev_id, rig.ioas, DIRTY)


def test_H6_fault_queue_on_a_nest_parent_is_eopnotsupp(rig: Rig) -> None:
    fq = rig.ctx.fault_queue_alloc()
    expect_errno(errno.EOPNOTSUPP, rig.ctx.hwpt_alloc, rig.dev_id, rig.ioas, NEST | FAULT,
                 fault_id=fq)


def test_H7_paging_with_data_is_eopnotsupp(rig: Rig) -> None:
    expect_errno(errno.EOPNOTSUPP, rig.ctx.hwpt_alloc, rig.dev_id, rig.ioas, 0, VTD, S1)


def test_H8_pasid_flag_on_an_iommu_without_pasid() -> None:
    rig = Rig(pasid_width=0)
    expect_errno(errno.EOPNOTSUPP, rig.ctx.hwpt_alloc, rig.dev_id, rig.ioas, PASIDF)


def test_H9_fault_id_without_the_flag_is_ignored(rig: Rig) -> None:
    h = rig.ctx.hwpt_alloc(rig.dev_id, rig.ioas, fault_id=12345)
    assert rig.ctx.object_info(h)["fault"] is None


def test_H10_missing_fault_queue_is_enoent_and_checked_last(rig: Rig) -> None:
    expect_errno(errno.EINVAL, rig.ctx.hwpt_alloc, rig.dev_id, 999, FAULT, fault_id=998)
    expect_errno(errno.ENOENT, rig.ctx.hwpt_alloc, rig.dev_id, rig.ioas, FAULT, fault_id=998)
    assert [o["type"] for o in rig.ctx.objects()] == ["device", "ioas"]


def test_H11_nested_flags(rig: Rig) -> None:
    parent = rig.ctx.hwpt_alloc(rig.dev_id, rig.ioas, NEST)
    expect_errno(errno.EOPNOTSUPP, rig.ctx.hwpt_alloc, rig.dev_id, parent, NEST, VTD, S1)
    expect_errno(errno.EOPNOTSUPP, rig.ctx.hwpt_alloc, rig.dev_id, parent, DIRTY, VTD, S1)


def test_H12_nested_without_data_is_eopnotsupp(rig: Rig) -> None:
    parent = rig.ctx.hwpt_alloc(rig.dev_id, rig.ioas, NEST)
    expect_errno(errno.EOPNOTSUPP, rig.ctx.hwpt_alloc, rig.dev_id, parent)


def test_H13_nested_over_a_plain_parent_is_einval_after_flags(rig: Rig) -> None:
    plain = rig.ctx.hwpt_alloc(rig.dev_id, rig.ioas)
    expect_errno(errno.EOPNOTSUPP, rig.ctx.hwpt_alloc, rig.dev_id, plain, 1 << 6, VTD, S1)
    expect_errno(errno.EINVAL, rig.ctx.hwpt_alloc, rig.dev_id, plain, 0, VTD, S1)


def test_H14_nested_data_type_must_be_vtd_s1(rig: Rig) -> None:
    parent = rig.ctx.hwpt_alloc(rig.dev_id, rig.ioas, NEST)
    expect_errno(errno.EOPNOTSUPP, rig.ctx.hwpt_alloc, rig.dev_id, parent, 0,
                 int(HwptDataType.ARM_SMMUV3), S1)


def test_H15_driver_data_length_rules(rig: Rig) -> None:
    parent = rig.ctx.hwpt_alloc(rig.dev_id, rig.ioas, NEST)
    raw = IommuHwptVtdS1(**S1).pack()
    expect_errno(errno.EINVAL, rig.ctx.hwpt_alloc, rig.dev_id, parent, 0, VTD, raw[:20])
    expect_errno(errno.E2BIG, rig.ctx.hwpt_alloc, rig.dev_id, parent, 0, VTD, raw + b"\0\1")
    assert rig.ctx.hwpt_alloc(rig.dev_id, parent, 0, VTD, raw + bytes(8))


def test_H16_vtd_s1_fields_are_checked_at_attach(rig: Rig) -> None:
    parent = rig.ctx.hwpt_alloc(rig.dev_id, rig.ioas, NEST | PASIDF)
    bad = rig.ctx.hwpt_alloc(rig.dev_id, parent, PASIDF, VTD, {**S1, "addr_width": 39})
    expect_errno(errno.EINVAL, rig.ctx.device_attach, rig.dev_id, bad, PASID)
    odd = rig.ctx.hwpt_alloc(rig.dev_id, parent, PASIDF, VTD,
                             {"flags": 1 << 9, "pgtbl_addr": 0x100123, "addr_width": 57})
    assert rig.ctx.object_info(odd)["pgtbl_addr"] == 0x100000  # low bits dropped
    assert rig.ctx.device_attach(rig.dev_id, odd, PASID) == odd  # unknown flag ignored


def test_H17_nested_over_a_viommu(rig: Rig) -> None:
    parent = rig.ctx.hwpt_alloc(rig.dev_id, rig.ioas, NEST)
    v = rig.ctx.viommu_alloc(rig.dev_id, parent, int(ViommuType.VUSER_VTD))
    fq = rig.ctx.fault_queue_alloc()
    h = rig.ctx.hwpt_alloc(rig.dev_id, v, FAULT | PASIDF, VTD, S1, fault_id=fq)
    info = rig.ctx.object_info(h)
    assert (info["parent"], info["viommu"], info["fault"]) == (parent, v, fq)


def test_H18_invalidate_needs_a_nested_hwpt_or_a_viommu(nested: NestedRig) -> None:
    expect_errno(errno.ENOENT, nested.ctx.hwpt_invalidate, 999, [])
    for bad in (nested.parent, nested.ioas, nested.dev_id):
        expect_errno(errno.EINVAL, nested.ctx.hwpt_invalidate, bad, [])


def test_H19_invalidate_type_and_probe(nested: NestedRig) -> None:
    expect_errno(errno.EINVAL, nested.ctx.hwpt_invalidate, nested.s1, [], 1)
    assert nested.ctx.hwpt_invalidate(nested.s1, []) == 0


def test_H20_invalidate_entry_length_rules(nested: NestedRig) -> None:
    raw = IommuHwptVtdS1Invalidate(addr=0, npages=1, flags=0, reserved=0).pack()
    e = expect_errno(errno.EINVAL, nested.ctx.hwpt_invalidate, nested.s1, [raw, raw[:16]])
    assert e.processed == 1
    e = expect_errno(errno.E2BIG, nested.ctx.hwpt_invalidate, nested.s1, [raw + b"\0\0\0\1"])
    assert e.processed == 0
    assert nested.ctx.hwpt_invalidate(nested.s1, [raw + bytes(8)]) == 1


def test_H21_invalidate_entry_checks(nested: NestedRig) -> None:
    ctx = nested.ctx
    assert expect_errno(errno.EOPNOTSUPP, ctx.hwpt_invalidate, nested.s1,
                        [inv(), inv(flags=2)]).processed == 1
    expect_errno(errno.EOPNOTSUPP, ctx.hwpt_invalidate, nested.s1, [inv(reserved=1)])
    expect_errno(errno.EINVAL, ctx.hwpt_invalidate, nested.s1, [inv(addr=0x800)])
    expect_errno(errno.EINVAL, ctx.hwpt_invalidate, nested.s1, [inv(addr=P, npages=U64_MAX)])


def test_H22_npages_zero_is_accepted_and_flushes_nothing(nested: NestedRig) -> None:
    nested.pt.map(0, 0x40000000, P)
    assert nested.gpa_of(0) == 0x40000000
    nested.pt.unmap(0)
    assert nested.ctx.hwpt_invalidate(nested.s1, [inv(npages=0)]) == 1
    assert nested.gpa_of(0) == 0x40000000  # still cached: nothing was flushed


def test_H23_invalidate_list_is_bounded(nested: NestedRig) -> None:
    expect_errno(errno.EINVAL, nested.ctx.hwpt_invalidate, nested.s1, [inv()] * ((1 << 19) + 1))


def test_H24_set_dirty_tracking(rig: Rig) -> None:
    expect_errno(errno.ENOENT, rig.ctx.hwpt_set_dirty_tracking, rig.ioas, True)
    plain = rig.ctx.hwpt_alloc(rig.dev_id, rig.ioas)
    expect_errno(errno.EOPNOTSUPP, rig.ctx.hwpt_set_dirty_tracking, plain, True)
    h = rig.ctx.hwpt_alloc(rig.dev_id, rig.ioas, DIRTY)
    rig.map(P, iova=0)
    rig.ctx.device_attach(rig.dev_id, h)
    rig.ctx.hwpt_set_dirty_tracking(h, True)
    rig.dev.write(None, 0, b"x")
    rig.ctx.hwpt_set_dirty_tracking(h, True)  # enabling again clears
    assert rig.ctx.hwpt_get_dirty_bitmap(h, 0, P, P)[0] == 0


def test_H25_dirty_bitmap_flags_before_the_hwpt(rig: Rig) -> None:
    expect_errno(errno.EOPNOTSUPP, rig.ctx.hwpt_get_dirty_bitmap, 999, 0, P, P, 2)
    expect_errno(errno.ENOENT, rig.ctx.hwpt_get_dirty_bitmap, 999, 0, P, P)


def test_H26_dirty_bitmap_range_checks_and_support(rig: Rig) -> None:
    h = rig.ctx.hwpt_alloc(rig.dev_id, rig.ioas, DIRTY)
    expect_errno(errno.EOVERFLOW, rig.ctx.hwpt_get_dirty_bitmap, h, U64_MAX + 1 - P, 2 * P, P)
    expect_errno(errno.EINVAL, rig.ctx.hwpt_get_dirty_bitmap, h, 8, P, P)  # IOAS alignment
    expect_errno(errno.EINVAL, rig.ctx.hwpt_get_dirty_bitmap, h, P, P, 2 * P)
    plain = rig.ctx.hwpt_alloc(rig.dev_id, rig.ioas)
    expect_errno(errno.EOPNOTSUPP, rig.ctx.hwpt_get_dirty_bitmap, plain, 0, P, P)


def test_H27_dirty_bitmap_no_clear(rig: Rig) -> None:
    h = rig.ctx.hwpt_alloc(rig.dev_id, rig.ioas, DIRTY)
    rig.map(P, iova=0)
    rig.ctx.device_attach(rig.dev_id, h)
    rig.ctx.hwpt_set_dirty_tracking(h, True)
    rig.dev.write(None, 0, b"x", Access.WRITE)
    assert rig.ctx.hwpt_get_dirty_bitmap(h, 0, P, P, 1)[0] == 1
    assert rig.ctx.hwpt_get_dirty_bitmap(h, 0, P, P)[0] == 1
    assert rig.ctx.hwpt_get_dirty_bitmap(h, 0, P, P)[0] == 0
    expect_errno(errno.EINVAL, rig.ctx.hwpt_get_dirty_bitmap, h, 0, 3 * P, 3 * P)  # not 2^n
