"""Fidelity rows D1-D20 and O1-O3 (docs/iommufd-fidelity.md): attach, replace,
detach, bind/unbind and DESTROY."""

from __future__ import annotations

import errno

from iommu_helpers import P, PASID, NestedRig, Rig, expect_errno
from vuser.iommu import IoasidContext, IommuRegistry
from vuser.iommu.uapi import HwptAllocFlags, HwptDataType, ViommuType

NEST = int(HwptAllocFlags.NEST_PARENT)
PASIDF = int(HwptAllocFlags.PASID)
DIRTY = int(HwptAllocFlags.DIRTY_TRACKING)


def test_D1_pt_id_is_looked_up_before_the_pasid(rig: Rig) -> None:
    expect_errno(errno.ENOENT, rig.ctx.device_attach, rig.dev_id, 999, 1 << 25)
    expect_errno(errno.EINVAL, rig.ctx.device_attach, rig.dev_id, rig.ctx.fault_queue_alloc())


def test_D2_attaching_again_is_ebusy_even_to_the_same_hwpt(rig: Rig) -> None:
    h = rig.ctx.device_attach(rig.dev_id, rig.ioas)
    expect_errno(errno.EBUSY, rig.ctx.device_attach, rig.dev_id, rig.ioas)
    expect_errno(errno.EBUSY, rig.ctx.device_attach, rig.dev_id, h)


def _pair() -> tuple[IoasidContext, int, int, int]:
    """A context with two bound devices of one group and an IOAS."""
    reg = IommuRegistry()
    g = reg.new_group()
    a, b = reg.register("a", group=g), reg.register("b", group=g)
    ctx = IoasidContext(reg)
    return ctx, ctx.device_bind(a), ctx.device_bind(b), ctx.ioas_alloc()


def test_D3_group_rids_share_one_hwpt() -> None:
    ctx, d1, d2, ioas = _pair()
    ctx.device_attach(d1, ioas)
    other = ctx.hwpt_alloc(d1, ioas)
    expect_errno(errno.EINVAL, ctx.device_attach, d2, other)


def test_D4_rid_attach_reserves_and_may_not_narrow(rig: Rig) -> None:
    d = rig.ctx.device_bind(rig.reg.register("r", reserved=[(0xFEE00000, 0xFEEFFFFF)]))
    rig.map(P, iova=0xFEE00000)
    expect_errno(errno.EADDRINUSE, rig.ctx.device_attach, d, rig.ioas)


def test_D5_pasid_attach_reserves_nothing(rig: Rig) -> None:
    d = rig.ctx.device_bind(rig.reg.register("r", pasid_width=8,
                                             reserved=[(0xFEE00000, 0xFEEFFFFF)]))
    s2 = rig.ctx.hwpt_alloc(d, rig.ioas, PASIDF)
    rig.ctx.device_attach(d, s2, 5)
    assert rig.ctx.ioas_iova_ranges(rig.ioas).ranges[0].last == (1 << 64) - 1
    rig.ctx.device_attach(d, s2)  # the RID reserves
    assert rig.ctx.ioas_iova_ranges(rig.ioas).ranges[0].last == 0xFEDFFFFF


def test_D6_automatic_domains_are_not_pasid_compatible(rig: Rig) -> None:
    expect_errno(errno.EINVAL, rig.ctx.device_attach, rig.dev_id, rig.ioas, 7)
    auto = rig.ctx.device_attach(rig.dev_id, rig.ioas)
    assert rig.ctx.object_info(auto)["pasid_compat"] is False


def test_D7_pasid_needs_a_pasid_compatible_rid(rig: Rig) -> None:
    s2 = rig.ctx.hwpt_alloc(rig.dev_id, rig.ioas, PASIDF)
    rig.ctx.device_attach(rig.dev_id, rig.ctx.hwpt_alloc(rig.dev_id, rig.ioas, NEST))
    expect_errno(errno.EINVAL, rig.ctx.device_attach, rig.dev_id, s2, 7)


def test_D8_rid_may_not_leave_pasid_compatibility_with_pasids_attached(nested: NestedRig) -> None:
    expect_errno(errno.EINVAL, nested.ctx.device_attach, nested.dev_id, nested.ioas)
    plain = nested.ctx.hwpt_alloc(nested.dev_id, nested.ioas, NEST)
    expect_errno(errno.EINVAL, nested.ctx.device_attach, nested.dev_id, plain)


def test_D9_pasid_outside_the_device_is_einval(rig: Rig) -> None:
    s2 = rig.ctx.hwpt_alloc(rig.dev_id, rig.ioas, PASIDF)
    expect_errno(errno.EINVAL, rig.ctx.device_attach, rig.dev_id, s2, 1 << 20)
    expect_errno(errno.EINVAL, rig.ctx.device_attach, rig.dev_id, s2, 0)
    nop = rig.ctx.device_bind(rig.reg.register("nopasid"))
    expect_errno(errno.EINVAL, rig.ctx.device_attach, nop, s2, 3)
    assert rig.ctx.device_attach(nop, s2) == s2  # a PASID-compatible HWPT serves a RID


def test_D10_stage1_data_is_checked_at_attach(rig: Rig) -> None:
    parent = rig.ctx.hwpt_alloc(rig.dev_id, rig.ioas, NEST | PASIDF)
    bad = rig.ctx.hwpt_alloc(rig.dev_id, parent, PASIDF, int(HwptDataType.VTD_S1),
                             {"flags": 0, "pgtbl_addr": 0, "addr_width": 40})
    expect_errno(errno.EINVAL, rig.ctx.device_attach, rig.dev_id, bad, 3)
    assert rig.ctx.device_info(rig.dev_id)["attach"] == []


def test_D11_dirty_enforcing_hwpt_needs_a_dirty_capable_device(rig: Rig) -> None:
    h = rig.ctx.hwpt_alloc(rig.dev_id, rig.ioas, DIRTY)
    nd = rig.ctx.device_bind(rig.reg.register("nodirty", dirty_tracking=False))
    expect_errno(errno.EINVAL, rig.ctx.device_attach, nd, h)


def test_D12_replace_order(rig: Rig) -> None:
    expect_errno(errno.ENOENT, rig.ctx.device_replace, rig.dev_id, 999)
    expect_errno(errno.EINVAL, rig.ctx.device_replace, rig.dev_id, rig.ioas)
    h = rig.ctx.device_attach(rig.dev_id, rig.ioas)
    assert rig.ctx.device_replace(rig.dev_id, h) == h
    assert rig.ctx.device_replace(rig.dev_id, rig.ioas) == h


def test_D13_failed_replace_keeps_the_old_hwpt(nested: NestedRig) -> None:
    plain = nested.ctx.hwpt_alloc(nested.dev_id, nested.ioas, NEST)
    expect_errno(errno.EINVAL, nested.ctx.device_replace, nested.dev_id, plain, PASID)
    assert nested.ctx.device_info(nested.dev_id)["attach"] == [[PASID, nested.s1]]


def test_D14_rid_replace_moves_the_group_and_frees_the_auto_hwpt() -> None:
    ctx, d1, d2, ioas = _pair()
    auto = ctx.device_attach(d1, ioas)
    ctx.device_attach(d2, ioas)
    h = ctx.hwpt_alloc(d1, ioas)
    ctx.device_replace(d1, h)
    assert ctx.device_info(d2)["attach"] == [[None, h]]
    expect_errno(errno.ENOENT, ctx.object_info, auto)


def test_D15_pasid_replace_to_an_ioas_is_einval(nested: NestedRig) -> None:
    expect_errno(errno.EINVAL, nested.ctx.device_replace, nested.dev_id, nested.ioas, PASID)


def test_D16_detach_of_nothing_is_a_no_op(rig: Rig) -> None:
    rig.ctx.device_detach(rig.dev_id)
    rig.ctx.device_detach(rig.dev_id, 77)
    nop = rig.ctx.device_bind(rig.reg.register("nopasid"))
    rig.ctx.device_detach(nop, 5)
    expect_errno(errno.ENOENT, rig.ctx.device_detach, 999)


def test_D17_detach_frees_auto_and_answers_pending(rig: Rig) -> None:
    auto = rig.ctx.device_attach(rig.dev_id, rig.ioas)
    rig.ctx.device_detach(rig.dev_id)
    expect_errno(errno.ENOENT, rig.ctx.object_info, auto)
    n = NestedRig(fault=True)
    got: list[int] = []
    n.dev.page_request(PASID, 0, 1, 0, True, got.append)
    n.ctx.device_detach(n.dev_id, PASID)
    assert got == [1]  # INVALID
    n.ctx.close()


def test_D18_bind_rules() -> None:
    reg = IommuRegistry()
    g = reg.new_group()
    a, b = reg.register("a", group=g), reg.register("b", group=g)
    ctx, other = IoasidContext(reg), IoasidContext(reg)
    ctx.device_bind(a)
    expect_errno(errno.EBUSY, ctx.device_bind, a)    # departs: VFIO says EINVAL per fd
    expect_errno(errno.EPERM, other.device_bind, b)  # the group has another owner
    ctx.close()
    other.close()


def test_D19_unbind_destroys_the_vdevice(rig: Rig) -> None:
    parent = rig.ctx.hwpt_alloc(rig.dev_id, rig.ioas, NEST)
    v = rig.ctx.viommu_alloc(rig.dev_id, parent, int(ViommuType.VUSER_VTD))
    vd = rig.ctx.vdevice_alloc(v, rig.dev_id, 9)
    rig.ctx.device_unbind(rig.dev_id)
    expect_errno(errno.ENOENT, rig.ctx.destroy, vd)


def test_D20_device_extensions(rig: Rig) -> None:
    assert rig.ctx.device_lookup(rig.dev.label) == rig.dev_id
    rig.ctx.device_pasid_map(rig.dev_id, 3, 30)
    assert rig.ctx.device_ppasid(rig.dev_id, 3) == 30
    assert rig.ctx.device_info(rig.dev_id)["pasid_map"] == [[3, 30]]
    expect_errno(errno.EEXIST, rig.ctx.device_pasid_map, rig.dev_id, 4, 30)


def test_O1_destroy_enoent_and_ebusy(rig: Rig) -> None:
    expect_errno(errno.ENOENT, rig.ctx.destroy, 999)
    rig.ctx.device_attach(rig.dev_id, rig.ioas)
    expect_errno(errno.EBUSY, rig.ctx.destroy, rig.ioas)


def test_O2_destroy_of_a_device_is_ebusy(rig: Rig) -> None:
    expect_errno(errno.EBUSY, rig.ctx.destroy, rig.dev_id)


def test_O3_object_listing_is_an_extension(rig: Rig) -> None:
    assert [o["type"] for o in rig.ctx.objects()] == ["device", "ioas"]
    assert rig.ctx.object_info(rig.ioas)["type"] == "ioas"
    expect_errno(errno.ENOENT, rig.ctx.object_info, 999)
