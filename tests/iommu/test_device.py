"""Devices, groups and attach rules (selftest ``iommufd_device_pasid`` and the seeds' rules)."""

from __future__ import annotations

import errno

import pytest

from iommu_helpers import P, PASID, NestedRig, Rig, expect_errno
from vuser.iommu import Access, Fault, FaultKind, IoasidContext, IommuRegistry, Stage
from vuser.iommu.uapi import HwptAllocFlags

PASID_FLAG = int(HwptAllocFlags.PASID)


def _two_in_a_group() -> tuple[IommuRegistry, object, object]:
    reg = IommuRegistry()
    g = reg.new_group()
    a = reg.register("fn0", group=g, pasid_width=8)
    b = reg.register("fn1", group=g, pasid_width=8)
    return reg, a, b


def test_devices_of_a_group_must_bind_to_the_same_context() -> None:
    reg, a, b = _two_in_a_group()
    ctx1, ctx2 = IoasidContext(reg), IoasidContext(reg)
    ctx1.device_bind(a)
    expect_errno(errno.EPERM, ctx2.device_bind, b)
    assert not b.bound
    ctx1.device_bind(b)


def test_binding_twice_is_ebusy(rig: Rig) -> None:
    expect_errno(errno.EBUSY, rig.ctx.device_bind, rig.dev)
    expect_errno(errno.EBUSY, IoasidContext(rig.reg).device_bind, rig.dev)


def test_bind_by_label_and_foreign_devices(rig: Rig) -> None:
    dev = rig.reg.register("dma1", label=0x42)
    assert rig.ctx.device_bind(0x42) == dev.dev_id
    assert rig.ctx.device_lookup(0x42) == dev.dev_id
    expect_errno(errno.ENOENT, rig.ctx.device_bind, 0x43)
    other = IommuRegistry().register("elsewhere")
    expect_errno(errno.EINVAL, rig.ctx.device_bind, other)


def test_unbound_device_is_unusable_and_its_dma_blocked() -> None:
    reg = IommuRegistry()
    dev = reg.register("dma0")
    assert not dev.bound
    f = dev.translate(None, 0, 8, Access.READ)
    assert isinstance(f, Fault) and f.stage == Stage.BLOCKED
    assert f.reason == FaultKind.CONTEXT_ENTRY_P and f.label == dev.label
    assert isinstance(dev.write(7, 0, b"x"), Fault)


def test_bound_device_is_blocked_until_attached(rig: Rig) -> None:
    buf, iova = rig.map(P, iova=0)
    f = rig.dev.read(None, 0, 4)
    assert isinstance(f, Fault) and f.stage == Stage.BLOCKED
    rig.ctx.device_attach(rig.dev_id, rig.ioas)
    buf[:4] = b"open"
    assert rig.dev.read(None, 0, 4) == b"open"


def test_detach_goes_back_to_blocking_even_with_a_warm_iotlb(rig: Rig) -> None:
    rig.map(P, iova=0)
    rig.ctx.device_attach(rig.dev_id, rig.ioas)
    assert rig.dev.read(None, 0, 4) == b"\0" * 4
    rig.ctx.device_detach(rig.dev_id)
    f = rig.dev.read(None, 0, 4)
    assert isinstance(f, Fault) and f.reason == FaultKind.CONTEXT_ENTRY_P
    rig.ctx.device_detach(rig.dev_id)  # nothing attached: a no-op, as VFIO's detach


def test_unbinding_the_last_device_releases_the_group() -> None:
    reg, a, b = _two_in_a_group()
    ctx1, ctx2 = IoasidContext(reg), IoasidContext(reg)
    ia, ib = ctx1.device_bind(a), ctx1.device_bind(b)
    ctx1.device_unbind(ia)
    assert a.group.owner is ctx1
    expect_errno(errno.EPERM, ctx2.device_bind, a)
    ctx1.device_unbind(ib)
    assert a.group.owner is None and not a.bound
    ctx2.device_bind(a)


def test_rids_of_a_group_share_one_hwpt_and_replace_moves_them_all() -> None:
    reg, a, b = _two_in_a_group()
    ctx = IoasidContext(reg)
    ia, ib = ctx.device_bind(a), ctx.device_bind(b)
    io1, io2 = ctx.ioas_alloc(), ctx.ioas_alloc()
    h1 = ctx.device_attach(ia, io1)
    expect_errno(errno.EINVAL, ctx.device_attach, ib, io2)
    assert ctx.device_attach(ib, io1) == h1
    h2 = ctx.device_replace(ia, io2)
    assert ctx.device_info(ia)["attach"] == [[None, h2]]
    assert ctx.device_info(ib)["attach"] == [[None, h2]]
    expect_errno(errno.ENOENT, ctx.object_info, h1)


def test_unregister_of_a_bound_device_is_ebusy(rig: Rig) -> None:
    expect_errno(errno.EBUSY, rig.reg.unregister, rig.dev)
    rig.ctx.device_unbind(rig.dev_id)
    rig.reg.unregister(rig.dev)
    expect_errno(errno.ENOENT, rig.reg.by_label, rig.dev.label)


@pytest.mark.parametrize("kw, err", [
    ({"label": 1 << 32}, errno.EINVAL), ({"pasid_width": 21}, errno.EINVAL),
    ({"aperture": (10, 5)}, errno.EINVAL), ({"reserved": [(3, 2)]}, errno.EINVAL),
])
def test_register_rejects_bad_devices(kw, err) -> None:
    expect_errno(err, IommuRegistry().register, "bad", **kw)


def test_register_rejects_a_taken_label(rig: Rig) -> None:
    expect_errno(errno.EEXIST, rig.reg.register, "twin", label=rig.dev.label)


def test_pasid_attach_on_a_device_without_pasid_is_einval() -> None:
    rig = Rig(pasid_width=0)
    expect_errno(errno.EINVAL, rig.ctx.device_attach, rig.dev_id, rig.ioas, PASID)


@pytest.mark.parametrize("pasid", [0, 1 << 20, -1])
def test_pasid_outside_the_width_is_einval(rig: Rig, pasid: int) -> None:
    expect_errno(errno.EINVAL, rig.ctx.device_attach, rig.dev_id, rig.ioas, pasid)


def test_pasid_attach_again_is_ebusy_even_to_the_same_hwpt(nested: NestedRig) -> None:
    ctx = nested.ctx
    expect_errno(errno.EBUSY, ctx.device_attach, nested.dev_id, nested.s1, PASID)
    other = ctx.hwpt_alloc(nested.dev_id, nested.ioas, PASID_FLAG)
    expect_errno(errno.EBUSY, ctx.device_attach, nested.dev_id, other, PASID)
    assert ctx.device_replace(nested.dev_id, nested.s1, PASID) == nested.s1  # same: a no-op


def test_pasid_replace_needs_an_attachment(nested: NestedRig) -> None:
    expect_errno(errno.EINVAL, nested.ctx.device_replace, nested.dev_id, nested.parent, 200)
    nested.ctx.device_attach(nested.dev_id, nested.parent, 200)
    assert nested.ctx.device_replace(nested.dev_id, nested.s1, 200) == nested.s1


def test_failed_replace_keeps_the_old_hwpt(nested: NestedRig) -> None:
    ctx = nested.ctx
    nested.pt.map(0, 0x40000000, P)
    no_pasid = ctx.hwpt_alloc(nested.dev_id, nested.ioas, int(HwptAllocFlags.NEST_PARENT))
    expect_errno(errno.EINVAL, ctx.device_replace, nested.dev_id, no_pasid, PASID)
    assert ctx.device_info(nested.dev_id)["attach"] == [[PASID, nested.s1]]
    assert nested.gpa_of(0x10) == 0x40000010  # DMA still goes through the old HWPT


def test_attaching_a_non_pasid_compatible_hwpt_to_a_pasid_is_einval(rig: Rig) -> None:
    plain = rig.ctx.hwpt_alloc(rig.dev_id, rig.ioas, int(HwptAllocFlags.NEST_PARENT))
    expect_errno(errno.EINVAL, rig.ctx.device_attach, rig.dev_id, plain, PASID)
    assert rig.ctx.device_info(rig.dev_id)["attach"] == []


def test_rid_and_pasid_compatibility_exclude_each_other(rig: Rig) -> None:
    plain = rig.ctx.hwpt_alloc(rig.dev_id, rig.ioas)
    compat = rig.ctx.hwpt_alloc(rig.dev_id, rig.ioas, PASID_FLAG)
    rig.ctx.device_attach(rig.dev_id, plain)
    expect_errno(errno.EINVAL, rig.ctx.device_attach, rig.dev_id, compat, PASID)
    rig.ctx.device_replace(rig.dev_id, compat)
    rig.ctx.device_attach(rig.dev_id, compat, PASID)
    expect_errno(errno.EINVAL, rig.ctx.device_replace, rig.dev_id, plain)


def test_vpasid_table_names_faults_and_invalidations(nested: NestedRig) -> None:
    ctx = nested.ctx
    ctx.device_pasid_map(nested.dev_id, 7, PASID)
    assert ctx.device_ppasid(nested.dev_id, 7) == PASID
    f = nested.translate(0x5000)  # nothing mapped in stage 1
    assert isinstance(f, Fault) and f.pasid == 7 and f.label == nested.dev.label
    expect_errno(errno.EEXIST, ctx.device_pasid_map, nested.dev_id, 8, PASID)
    nested.pt.map(0, 0x40000000, P)
    assert nested.gpa_of(0) == 0x40000000
    nested.pt.map(0x1000, 0x40001000, P)  # unrelated change; the cached page stays
    assert ctx.iotlb_invalidate(nested.dev_id, 7, 0, 1, vpasid=True) == 1
    ctx.device_pasid_map(nested.dev_id, 7, None)
    f = nested.translate(0x5000)
    assert f.pasid == PASID


def test_dma_write_is_all_or_nothing(nested: NestedRig) -> None:
    nested.pt.map(0, 0x40000000, P)
    before = nested.data_at(0x40000000, P)
    f = nested.ctx.write(nested.dev_id, PASID, P - 4, b"12345678")  # crosses into a hole
    assert isinstance(f, Fault) and f.iova == P and f.gpa is None
    assert nested.data_at(0x40000000, P) == before
    assert nested.ctx.write(nested.dev_id, PASID, P - 4, b"1234") is None
    assert nested.data_at(0x40000000 + P - 4, 4) == b"1234"


def test_translate_of_an_unknown_device_raises_and_bad_arguments_are_bugs(rig: Rig) -> None:
    expect_errno(errno.ENOENT, rig.ctx.translate, 999, None, 0, 1, Access.READ)
    with pytest.raises(ValueError):
        rig.ctx.translate(rig.dev_id, None, 0, -1, Access.READ)
    assert rig.ctx.translate(rig.dev_id, None, 0, 0, Access.READ) == []
    f = rig.ctx.translate(rig.dev_id, None, (1 << 64) - 4, 8, Access.READ)
    assert isinstance(f, Fault) and f.reason == FaultKind.ADDR_BEYOND_MGAW
