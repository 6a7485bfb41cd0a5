"""Fidelity rows F1-F5 (fault queue), W1-W5 (GET_HW_INFO) and X1-X10 (the DMA
extensions) of docs/iommufd-fidelity.md."""

from __future__ import annotations

import errno

from iommu_helpers import P, PASID, NestedRig, Rig, expect_errno
from vuser.iommu import Fault
from vuser.iommu.uapi import HwCapabilities, HwInfoType, HwptAllocFlags, PageResponseCode

NEST = int(HwptAllocFlags.NEST_PARENT)


def test_F1_fault_queue_depth_is_a_model_bound(rig: Rig) -> None:
    expect_errno(errno.EINVAL, rig.ctx.fault_queue_alloc, 0)
    assert rig.ctx.fault_queue_status(rig.ctx.fault_queue_alloc(3)).depth == 3


def test_F2_respond_code_and_cookie(nested_fault: NestedRig) -> None:
    n = nested_fault
    n.dev.page_request(PASID, 0, 1, 0, True)
    [rec] = n.ctx.fault_read(n.fault_id)
    expect_errno(errno.EINVAL, n.ctx.fault_respond, n.fault_id, rec.cookie, 2)
    expect_errno(errno.EINVAL, n.ctx.fault_respond, n.fault_id, rec.cookie + 1, 0)


def test_F3_respond_before_read_is_accepted(nested_fault: NestedRig) -> None:
    n = nested_fault
    got: list[int] = []
    n.dev.page_request(PASID, 0, 1, 0, True, got.append)
    assert n.ctx.fault_queue_status(n.fault_id).pending_groups == 1
    n.ctx.fault_respond(n.fault_id, 1, int(PageResponseCode.SUCCESS))  # cookie 1, unread
    assert got == [0] and n.ctx.fault_read(n.fault_id) == []


def test_F4_fault_read_is_record_granular(nested_fault: NestedRig) -> None:
    n = nested_fault
    for g in range(3):
        n.dev.page_request(PASID, g * P, 1, g, True)
    assert len(n.ctx.fault_read(n.fault_id, 2)) == 2
    assert len(n.ctx.fault_read(n.fault_id)) == 1
    expect_errno(errno.EINVAL, n.ctx.fault_read, n.fault_id, -1)


def test_F5_fault_queue_status_is_an_extension(nested_fault: NestedRig) -> None:
    st = nested_fault.ctx.fault_queue_status(nested_fault.fault_id)
    assert (st.queued, st.pending_groups, st.lost_events) == (0, 0, 0)
    expect_errno(errno.ENOENT, nested_fault.ctx.fault_queue_status, 999)


def test_W1_in_data_type(rig: Rig) -> None:
    expect_errno(errno.ENOENT, rig.ctx.get_hw_info, 999, 7)
    assert rig.ctx.get_hw_info(rig.dev_id, 0).data_type == HwInfoType.INTEL_VTD
    assert rig.ctx.get_hw_info(rig.dev_id, int(HwInfoType.INTEL_VTD)).data_type == 1
    expect_errno(errno.EOPNOTSUPP, rig.ctx.get_hw_info, rig.dev_id, int(HwInfoType.ARM_SMMUV3))


def test_W2_pasid_exec_priv_follow_the_device() -> None:
    plain = Rig()
    caps = plain.ctx.get_hw_info(plain.dev_id).capabilities
    assert not caps & (HwCapabilities.PCI_PASID_EXEC | HwCapabilities.PCI_PASID_PRIV)
    both = Rig(pasid_exec=True, pasid_priv=True)
    caps = both.ctx.get_hw_info(both.dev_id).capabilities
    assert caps & HwCapabilities.PCI_PASID_EXEC and caps & HwCapabilities.PCI_PASID_PRIV


def test_W3_cap_ecap_advertise_what_alloc_and_attach_accept() -> None:
    rig = Rig()
    d = rig.ctx.get_hw_info(rig.dev_id).data
    cap, ecap = d["cap_reg"], d["ecap_reg"]
    assert cap >> 60 & 1      # FS5LP: addr_width 57 attaches
    assert ecap >> 34 & 1     # EAFS: VTD_S1 EAFE is honoured
    assert ecap >> 31 & 1     # SRS: VTD_S1 SRE is honoured
    assert ecap >> 45 & 1     # SSADS: DIRTY_TRACKING is accepted
    nd = Rig(dirty_tracking=False)
    assert not nd.ctx.get_hw_info(nd.dev_id).data["ecap_reg"] >> 45 & 1
    assert not nd.ctx.get_hw_info(nd.dev_id).capabilities & HwCapabilities.DIRTY_TRACKING


def test_W4_max_pasid_and_ats() -> None:
    rig = Rig(pasid_width=12, ats=False)
    info = rig.ctx.get_hw_info(rig.dev_id)
    assert info.max_pasid_log2 == 12 and info.capabilities & HwCapabilities.NO_ATS


def test_W5_ecap_is_per_device() -> None:
    rig = Rig(pasid_width=0, pri=False)
    ecap = rig.ctx.get_hw_info(rig.dev_id).data["ecap_reg"]
    assert not ecap >> 40 & 1 and not ecap >> 29 & 1  # PASID, PRS follow this device


def test_X1_translate_read_write_of_an_unknown_device(rig: Rig) -> None:
    expect_errno(errno.ENOENT, rig.ctx.translate, 999, None, 0, 8, 1)
    assert isinstance(rig.ctx.translate(rig.dev_id, None, 0, 8, 1), Fault)  # blocked
    assert isinstance(rig.ctx.read(rig.dev_id, None, 0, 8), Fault)
    assert isinstance(rig.ctx.write(rig.dev_id, None, 0, b"x"), Fault)


def test_X2_ats_translate(nested: NestedRig) -> None:
    nested.pt.map(0, 0x40000000, P)
    t = nested.ctx.ats_translate(nested.dev_id, PASID, 0, 1)
    assert t.gpa == 0x40000000 and t.size == P


def test_X3_page_request_checks(nested: NestedRig) -> None:
    expect_errno(errno.EINVAL, nested.ctx.page_request, nested.dev_id, PASID, 0, 16, 0, True)
    expect_errno(errno.EINVAL, nested.ctx.page_request, nested.dev_id, PASID, 0, 1, 512, True)
    assert nested.ctx.page_request(nested.dev_id, PASID, 0, 1, 0, True) is False  # no queue


def test_X4_iotlb_and_devtlb_invalidate_checks(rig: Rig) -> None:
    expect_errno(errno.EINVAL, rig.ctx.iotlb_invalidate, rig.dev_id, None, 8)
    expect_errno(errno.EINVAL, rig.ctx.devtlb_invalidate, rig.dev_id, None, 0, 0)
    assert rig.ctx.iotlb_invalidate() == 0


def test_X5_iotlb_capacity_and_stats(rig: Rig) -> None:
    rig.ctx.iotlb_set_capacity(8)
    assert rig.ctx.stats()["iotlb_capacity"] == 8
    rig.ctx.translate(rig.dev_id, None, 0, 8, 1)
    assert rig.ctx.stats()["translations"] == 1
    rig.ctx.stats_reset()
    assert rig.ctx.stats()["translations"] == 0
