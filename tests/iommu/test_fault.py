"""Fault queues (PRI page requests and responses) and DMA-fault reporting."""

from __future__ import annotations

import errno

from iommu_helpers import P, PASID, NestedRig, Rig, expect_errno
from vuser.iommu import Access, Fault, FaultKind, IommuRegistry, Stage
from vuser.iommu.uapi import FaultFlags, FaultPerm, HwptAllocFlags, PageResponseCode

SUCCESS, INVALID = PageResponseCode.SUCCESS, PageResponseCode.INVALID


def test_page_request_is_queued_with_every_field() -> None:
    rig = NestedRig(fault=True)
    rig.ctx.device_pasid_map(rig.dev_id, 9, PASID)
    got: list[int] = []
    assert rig.dev.page_request(PASID, 0x12345, int(FaultPerm.WRITE), 3, True, got.append)
    [rec] = rig.ctx.fault_read(rig.fault_id)
    assert rec.to_dict() == {
        "flags": int(FaultFlags.PASID_VALID | FaultFlags.LAST_PAGE), "dev_id": rig.dev_id,
        "label": rig.dev.label, "pasid": 9, "grpid": 3, "perm": 2, "addr": 0x12000,
        "length": P, "cookie": rec.cookie}
    assert got == []
    rig.ctx.fault_respond(rig.fault_id, rec.cookie, SUCCESS)
    assert got == [SUCCESS]
    assert rig.ctx.fault_read(rig.fault_id) == []


def test_response_invalid_and_unknown_cookies() -> None:
    rig = NestedRig(fault=True)
    got: list[int] = []
    rig.dev.page_request(PASID, 0, 1, 0, True, got.append)
    [rec] = rig.ctx.fault_read(rig.fault_id)
    expect_errno(errno.EINVAL, rig.ctx.fault_respond, rig.fault_id, rec.cookie, 2)
    expect_errno(errno.EINVAL, rig.ctx.fault_respond, rig.fault_id, rec.cookie + 1, SUCCESS)
    rig.ctx.fault_respond(rig.fault_id, rec.cookie, INVALID)
    assert got == [INVALID]
    expect_errno(errno.EINVAL, rig.ctx.fault_respond, rig.fault_id, rec.cookie, SUCCESS)


def test_a_group_is_queued_when_its_last_request_arrives() -> None:
    rig = NestedRig(fault=True)
    got: list[int] = []
    rig.dev.page_request(PASID, 0x1000, 1, 5, False)
    rig.dev.page_request(PASID, 0x2000, 1, 5, False)
    assert rig.ctx.fault_queue_status(rig.fault_id).queued == 0
    rig.dev.page_request(PASID, 0x3000, 3, 5, True, got.append)
    recs = rig.ctx.fault_read(rig.fault_id)
    assert [r.addr for r in recs] == [0x1000, 0x2000, 0x3000]
    assert len({r.cookie for r in recs}) == 1
    assert [bool(r.flags & FaultFlags.LAST_PAGE) for r in recs] == [False, False, True]
    rig.ctx.fault_respond(rig.fault_id, recs[0].cookie, SUCCESS)
    assert got == [SUCCESS]


def test_overflow_is_reported_never_silent() -> None:
    rig = NestedRig(fault=True, depth=2)
    answers: list[list[int]] = [[] for _ in range(4)]
    results = [rig.dev.page_request(PASID, i * P, 1, i, True, answers[i].append)
               for i in range(3)]
    assert results == [True, True, False]
    assert answers[2] == [SUCCESS]  # answered at once so that the device retries
    st = rig.ctx.fault_queue_status(rig.fault_id)
    assert (st.queued, st.lost_events, st.pending_groups) == (2, 1, 2)
    first, second = rig.ctx.fault_read(rig.fault_id)
    assert not first.flags & FaultFlags.LOST_EVENTS  # queued before the loss
    rig.dev.page_request(PASID, 3 * P, 1, 3, True, answers[3].append)
    [third] = rig.ctx.fault_read(rig.fault_id)
    assert third.flags & FaultFlags.LOST_EVENTS
    assert rig.ctx.fault_queue_status(rig.fault_id).lost_events == 1


def test_without_an_iopf_capable_hwpt_the_request_is_refused(nested: NestedRig) -> None:
    got: list[int] = []
    assert not nested.dev.page_request(PASID, 0, 1, 0, True, got.append)
    assert not nested.dev.page_request(555, 0, 1, 0, True, got.append)  # nothing attached
    assert got == [INVALID, INVALID]
    unbound = IommuRegistry().register("lonely", pasid_width=8)
    assert not unbound.page_request(1, 0, 1, 0, True, got.append)
    assert got[-1] == INVALID


def test_page_request_arguments_are_checked() -> None:
    rig = NestedRig(fault=True)
    expect_errno(errno.EINVAL, rig.dev.page_request, PASID, 0, 0, 0, True)
    expect_errno(errno.EINVAL, rig.dev.page_request, PASID, 0, 1, 512, True)


def test_detach_answers_pending_groups_invalid() -> None:
    rig = NestedRig(fault=True)
    got: list[int] = []
    rig.dev.page_request(PASID, 0, 1, 1, True, got.append)
    rig.dev.page_request(PASID, P, 1, 2, False)
    rig.ctx.device_detach(rig.dev_id, PASID)
    assert got == [INVALID]
    st = rig.ctx.fault_queue_status(rig.fault_id)
    assert (st.queued, st.pending_groups) == (0, 0)


def test_notify_hook_runs_when_records_arrive() -> None:
    rig = NestedRig(fault=True)
    woken: list[int] = []
    rig.ctx.fault_set_notify(rig.fault_id, woken.append)
    rig.dev.page_request(PASID, 0, 1, 0, False)
    assert woken == []
    rig.dev.page_request(PASID, 0, 1, 0, True)
    assert woken == [rig.fault_id]


def test_fault_queue_arguments() -> None:
    rig = Rig()
    expect_errno(errno.EINVAL, rig.ctx.fault_queue_alloc, 0)
    expect_errno(errno.EINVAL, rig.ctx.fault_queue_alloc, (1 << 19) + 1)
    fq = rig.ctx.fault_queue_alloc(4)
    expect_errno(errno.EINVAL, rig.ctx.fault_read, fq, -1)
    hwpt = rig.ctx.hwpt_alloc(rig.dev_id, rig.ioas, int(HwptAllocFlags.FAULT_ID_VALID),
                              fault_id=fq)
    rig.ctx.device_attach(rig.dev_id, hwpt)
    got: list[int] = []
    assert rig.dev.page_request(None, 0x1000, 1, 0, True, got.append)  # RID, no PASID
    [rec] = rig.ctx.fault_read(fq, 1)
    assert not rec.flags & FaultFlags.PASID_VALID and rec.pasid == 0


def test_dma_faults_reach_the_observers_with_stage_and_names(nested: NestedRig) -> None:
    seen: list[Fault] = []
    nested.ctx.add_fault_observer(seen.append)
    nested.ctx.device_pasid_map(nested.dev_id, 3, PASID)
    nested.pt.map(0, 0x900000, P)          # GPA not in stage 2
    nested.translate(0x5000)                # stage 1: for the guest
    nested.translate(0)                     # stage 2: for the host
    nested.ctx.translate(nested.dev_id, 77, 0, 1, Access.READ)  # PASID 77 not attached
    assert [(f.stage, f.reason, f.pasid, f.label) for f in seen] == [
        (Stage.S1, FaultKind.PAGING_ENTRY_INV, 3, nested.dev.label),
        (Stage.S2, FaultKind.PAGING_ENTRY_INV, 3, nested.dev.label),
        (Stage.BLOCKED, FaultKind.PASID_ENTRY_P, 77, nested.dev.label)]
    assert seen[1].to_dict()["gpa"] == 0x900000
    nested.ctx.remove_fault_observer(seen.append)
    nested.translate(0x5000)
    assert len(seen) == 3
    assert nested.ctx.stats()["faults"] == 4
