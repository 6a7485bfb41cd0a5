"""HWPT, vIOMMU and lifetime scenarios (selftest ``alloc_hwpt_nested``, ``hwpt_attach``...)."""

from __future__ import annotations

import errno

import pytest

from iommu_helpers import P, NestedRig, Rig, expect_errno
from vuser.iommu import IoasidContext
from vuser.iommu.uapi import (
    U64_MAX, HwCapabilities, HwInfoType, HwptAllocFlags, HwptDataType, IommuHwptVtdS1,
    ViommuType,
)

NEST = int(HwptAllocFlags.NEST_PARENT)
S1 = {"flags": 0, "pgtbl_addr": 0x100000, "addr_width": 48}
VUSER = int(ViommuType.VUSER_VTD)


def test_replacing_the_ioas_frees_the_old_automatic_hwpt(rig: Rig) -> None:
    other = rig.ctx.ioas_alloc()
    old = rig.ctx.device_attach(rig.dev_id, rig.ioas)
    new = rig.ctx.device_replace(rig.dev_id, other)
    assert new != old
    expect_errno(errno.ENOENT, rig.ctx.destroy, old)
    expect_errno(errno.ENOENT, rig.ctx.object_info, old)
    rig.ctx.destroy(rig.ioas)  # no HWPT holds it any more
    assert rig.ctx.object_info(new)["ioas"] == other


def test_automatic_hwpt_is_shared_and_freed_with_its_last_device(rig: Rig) -> None:
    dev2 = rig.reg.register("dma1", pasid_width=20)
    d2 = rig.ctx.device_bind(dev2)
    h1 = rig.ctx.device_attach(rig.dev_id, rig.ioas)
    h2 = rig.ctx.device_attach(d2, rig.ioas)
    assert h1 == h2
    rig.ctx.device_detach(rig.dev_id)
    assert rig.ctx.object_info(h1)["users"] == 1
    rig.ctx.device_detach(d2)
    expect_errno(errno.ENOENT, rig.ctx.object_info, h1)


def test_destroy_of_an_attached_hwpt_is_ebusy(rig: Rig) -> None:
    hwpt = rig.ctx.hwpt_alloc(rig.dev_id, rig.ioas)
    rig.ctx.device_attach(rig.dev_id, hwpt)
    expect_errno(errno.EBUSY, rig.ctx.destroy, hwpt)
    expect_errno(errno.EBUSY, rig.ctx.destroy, rig.ioas)
    rig.ctx.device_detach(rig.dev_id)
    rig.ctx.destroy(hwpt)  # manual HWPTs outlive their devices until destroyed
    rig.ctx.destroy(rig.ioas)


def test_nested_alloc_without_data(rig: Rig) -> None:
    parent = rig.ctx.hwpt_alloc(rig.dev_id, rig.ioas, NEST)
    # data_type NONE and no data pass the core check; the nested path wants data
    expect_errno(errno.EOPNOTSUPP, rig.ctx.hwpt_alloc, rig.dev_id, parent)
    # a data type without data is the core's EINVAL
    expect_errno(errno.EINVAL, rig.ctx.hwpt_alloc, rig.dev_id, parent, 0, HwptDataType.VTD_S1)


def test_nested_alloc_with_an_unknown_data_type_is_eopnotsupp(rig: Rig) -> None:
    parent = rig.ctx.hwpt_alloc(rig.dev_id, rig.ioas, NEST)
    expect_errno(errno.EOPNOTSUPP, rig.ctx.hwpt_alloc, rig.dev_id, parent, 0,
                 HwptDataType.ARM_SMMUV3, {"ste": [0, 0]})
    expect_errno(errno.EOPNOTSUPP, rig.ctx.hwpt_alloc, rig.dev_id, parent, 0, 77, S1)


def test_nested_alloc_over_a_parent_without_nest_parent_is_einval(rig: Rig) -> None:
    plain = rig.ctx.hwpt_alloc(rig.dev_id, rig.ioas)
    expect_errno(errno.EINVAL, rig.ctx.hwpt_alloc, rig.dev_id, plain, 0, HwptDataType.VTD_S1, S1)


def test_nested_alloc_over_a_nested_hwpt_is_einval(rig: Rig) -> None:
    parent = rig.ctx.hwpt_alloc(rig.dev_id, rig.ioas, NEST)
    child = rig.ctx.hwpt_alloc(rig.dev_id, parent, 0, HwptDataType.VTD_S1, S1)
    expect_errno(errno.EINVAL, rig.ctx.hwpt_alloc, rig.dev_id, child, 0, HwptDataType.VTD_S1, S1)


def test_destroying_a_parent_with_children_is_ebusy(rig: Rig) -> None:
    parent = rig.ctx.hwpt_alloc(rig.dev_id, rig.ioas, NEST)
    kids = [rig.ctx.hwpt_alloc(rig.dev_id, parent, 0, HwptDataType.VTD_S1, S1) for _ in range(2)]
    expect_errno(errno.EBUSY, rig.ctx.destroy, parent)
    rig.ctx.destroy(kids[0])
    expect_errno(errno.EBUSY, rig.ctx.destroy, parent)
    rig.ctx.destroy(kids[1])
    rig.ctx.destroy(parent)


@pytest.mark.parametrize("data, err", [
    ({**S1, "bogus": 1}, errno.EINVAL),              # not a field of the struct
    (b"\0" * 23, errno.EINVAL),                      # short struct
    (b"\0" * 24 + b"\1", errno.E2BIG),               # longer, non-zero tail
])
def test_nested_alloc_validates_vtd_s1_data(rig: Rig, data, err) -> None:
    parent = rig.ctx.hwpt_alloc(rig.dev_id, rig.ioas, NEST)
    expect_errno(err, rig.ctx.hwpt_alloc, rig.dev_id, parent, 0, HwptDataType.VTD_S1, data)
    assert [o["type"] for o in rig.ctx.objects()].count("hwpt_nested") == 0


def test_nested_alloc_accepts_the_raw_struct(rig: Rig) -> None:
    parent = rig.ctx.hwpt_alloc(rig.dev_id, rig.ioas, NEST)
    raw = IommuHwptVtdS1(flags=1, pgtbl_addr=0x200000, addr_width=57).pack()
    h = rig.ctx.hwpt_alloc(rig.dev_id, parent, 0, HwptDataType.VTD_S1, raw)
    info = rig.ctx.object_info(h)
    assert (info["pgtbl_addr"], info["addr_width"], info["flags"]) == (0x200000, 57, 1)


@pytest.mark.parametrize("kw, err", [
    ({"flags": 1 << 7}, errno.EOPNOTSUPP),
    ({"data_type": HwptDataType.VTD_S1, "data": S1}, errno.EOPNOTSUPP),  # data on paging
    ({"flags": int(HwptAllocFlags.FAULT_ID_VALID), "fault_id": 999}, errno.ENOENT),
])
def test_paging_alloc_rejects_bad_arguments(rig: Rig, kw, err) -> None:
    expect_errno(err, rig.ctx.hwpt_alloc, rig.dev_id, rig.ioas, **kw)


def test_paging_alloc_checks_device_capabilities() -> None:
    rig = Rig(pasid_width=0, dirty_tracking=False)
    expect_errno(errno.EOPNOTSUPP, rig.ctx.hwpt_alloc, rig.dev_id, rig.ioas,
                 int(HwptAllocFlags.DIRTY_TRACKING))
    expect_errno(errno.EOPNOTSUPP, rig.ctx.hwpt_alloc, rig.dev_id, rig.ioas,
                 int(HwptAllocFlags.PASID))


def test_hwpt_alloc_on_a_device_or_fault_object_is_einval(rig: Rig) -> None:
    fq = rig.ctx.fault_queue_alloc()
    expect_errno(errno.EINVAL, rig.ctx.hwpt_alloc, rig.dev_id, fq)
    expect_errno(errno.ENOENT, rig.ctx.hwpt_alloc, 999, rig.ioas)


def test_hwpt_invalidate_validates_and_counts(nested: NestedRig) -> None:
    ctx = nested.ctx
    assert ctx.hwpt_invalidate(nested.s1, []) == 0  # probe
    assert ctx.hwpt_invalidate(nested.s1, [{"addr": 0, "npages": 1, "flags": 1, "reserved": 0},
                                           {"addr": 0, "npages": U64_MAX, "flags": 0,
                                            "reserved": 0}]) == 2
    e = expect_errno(errno.EOPNOTSUPP, ctx.hwpt_invalidate, nested.s1, [
        {"addr": 0, "npages": 1, "flags": 0, "reserved": 0},
        {"addr": 0, "npages": 1, "flags": 2, "reserved": 0}])
    assert e.processed == 1
    e = expect_errno(errno.EINVAL, ctx.hwpt_invalidate, nested.s1, [
        {"addr": 0x800, "npages": 1, "flags": 0, "reserved": 0}])
    assert e.processed == 0
    expect_errno(errno.EINVAL, ctx.hwpt_invalidate, nested.s1,
                 [{"addr": P, "npages": U64_MAX, "flags": 0, "reserved": 0}])
    expect_errno(errno.EOPNOTSUPP, ctx.hwpt_invalidate, nested.s1,
                 [{"addr": 0, "npages": 1, "flags": 0, "reserved": 3}])
    expect_errno(errno.EINVAL, ctx.hwpt_invalidate, nested.parent, [])
    expect_errno(errno.EINVAL, ctx.hwpt_invalidate, nested.ioas, [])
    expect_errno(errno.EINVAL, ctx.hwpt_invalidate, nested.s1, [], 1)


def test_viommu_objects_and_their_lifetimes(rig: Rig) -> None:
    ctx = rig.ctx
    parent = ctx.hwpt_alloc(rig.dev_id, rig.ioas, NEST)
    plain = ctx.hwpt_alloc(rig.dev_id, rig.ioas)
    expect_errno(errno.EINVAL, ctx.viommu_alloc, rig.dev_id, plain, VUSER)
    expect_errno(errno.EOPNOTSUPP, ctx.viommu_alloc, rig.dev_id, parent, 1)
    v = ctx.viommu_alloc(rig.dev_id, parent, VUSER)
    vd = ctx.vdevice_alloc(v, rig.dev_id, 0x10)
    assert ctx.vdevice_lookup(v, 0x10) == rig.dev_id
    expect_errno(errno.EEXIST, ctx.vdevice_alloc, v, rig.dev_id, 0x11)
    dev2 = ctx.device_bind(rig.reg.register("dma1"))
    expect_errno(errno.EEXIST, ctx.vdevice_alloc, v, dev2, 0x10)
    nested = ctx.hwpt_alloc(rig.dev_id, v, 0, HwptDataType.VTD_S1, S1)
    assert ctx.object_info(nested)["viommu"] == v
    expect_errno(errno.EBUSY, ctx.destroy, v)
    expect_errno(errno.EBUSY, ctx.destroy, parent)
    ctx.destroy(nested)
    ctx.device_unbind(rig.dev_id)  # silently destroys the vDEVICE
    expect_errno(errno.ENOENT, ctx.destroy, vd)
    ctx.destroy(v)
    ctx.destroy(parent)


def test_devices_are_released_by_unbind_not_destroy(rig: Rig) -> None:
    expect_errno(errno.EBUSY, rig.ctx.destroy, rig.dev_id)
    expect_errno(errno.ENOENT, rig.ctx.destroy, 12345)


def test_fault_queue_in_use_cannot_be_destroyed(rig: Rig) -> None:
    fq = rig.ctx.fault_queue_alloc()
    h = rig.ctx.hwpt_alloc(rig.dev_id, rig.ioas, int(HwptAllocFlags.FAULT_ID_VALID), fault_id=fq)
    expect_errno(errno.EBUSY, rig.ctx.destroy, fq)
    rig.ctx.destroy(h)
    rig.ctx.destroy(fq)


def test_close_destroys_everything_leaves_first() -> None:
    rig = NestedRig(fault=True)
    ctx = rig.ctx
    v = ctx.viommu_alloc(rig.dev_id, rig.parent, VUSER)
    ctx.vdevice_alloc(v, rig.dev_id, 1)
    ctx.veventq_alloc(v, VUSER, 4)
    ctx.hwpt_alloc(rig.dev_id, v, 0, HwptDataType.VTD_S1, S1)
    ctx.device_attach(rig.dev_id, rig.parent)  # PASID-compatible, as the RID must be
    ctx.close()
    assert ctx.objects() == []
    rig.pt.mem.release()  # the test's own view of the tables
    rig.tables.extend(b"x")  # unpinned
    rig.data.extend(b"x")
    assert not rig.dev.bound and rig.dev.group.owner is None
    IoasidContext(rig.reg).device_bind(rig.dev)  # the group is free again


def test_get_hw_info_reports_vtd_and_the_device_caps() -> None:
    rig = Rig(pasid_width=16, ats=False)
    info = rig.ctx.get_hw_info(rig.dev_id)
    assert info.data_type == HwInfoType.INTEL_VTD and info.max_pasid_log2 == 16
    assert info.capabilities & HwCapabilities.NO_ATS
    # the PCI PASID EXEC/PRIV bits follow the device's PASID capability
    assert not info.capabilities & (HwCapabilities.PCI_PASID_PRIV | HwCapabilities.PCI_PASID_EXEC)
    ecap = info.data["ecap_reg"]
    assert ecap >> 40 & 1 and ecap >> 26 & 1 and (ecap >> 35) & 0x1F == 15  # PASID, NEST, PSS
    assert info.data["cap_reg"] >> 56 & 1  # FS1GP
    assert sorted(info.to_dict()) == ["capabilities", "data", "data_type", "max_pasid_log2"]


def test_every_uapi_method_exists_and_is_documented() -> None:
    for name in IoasidContext.UAPI_METHODS:
        method = getattr(IoasidContext, name)
        assert callable(method) and method.__doc__ and len(method.__doc__) > 20, name
    assert len(set(IoasidContext.UAPI_METHODS)) == len(IoasidContext.UAPI_METHODS)
