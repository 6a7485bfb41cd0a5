"""vuser-iommu page requests: the model's fault queue into the guest's PRQ, page group
responses back, PRE, overflow, and faults claimed by PRI not being logged.

A ``sample`` function's ``IommuDevice`` issues the page requests (the model's
PRI API); test_viommu_dma.py does the round trip with a vuser-dma descriptor.
"""

from __future__ import annotations

import asyncio

import pytest

from vuser.devices.viommu import VECTOR_PAGE_REQUEST
from vuser.devices.vtd_layout import VtdFaultReason, Prs, Reg
from vuser.iommu import Access, Fault
from vuser.iommu.uapi import PageResponseCode

from viommu_guest import P, Rig, translating_rig, page_response, pasid_cache

LABEL = 0x0310
IOVA = 0x5555_0000


@pytest.fixture
async def rig(tmp_path):
    r = await translating_rig(tmp_path, LABEL)
    yield r
    await r.close()


async def first_stage(rig: Rig, pasid: int = 1, pre: bool = True):
    pt = rig.ram.page_tables()
    pt.map(IOVA, rig.ram.alloc(P), P)
    rig.drv.context(LABEL, pre=pre)
    rig.drv.first_stage(LABEL, pasid, pt)
    await rig.drv.submit(pasid_cache(pasid, did=1))
    return pt


def request(rig: Rig, pasid: int, addr: int, perm: int, grpid: int, answers: list) -> bool:
    return rig.devices[LABEL].iommu.page_request(pasid, addr, perm, grpid, True, answers.append)


async def test_page_request_round_trip(rig):
    drv, ram = rig.drv, rig.ram
    pt = await first_stage(rig)
    target = IOVA + 3 * P
    assert isinstance(rig.devices[LABEL].iommu.write(1, target, b"x"), Fault)
    answers: list[int] = []
    assert request(rig, 1, target + 0x18, Access.WRITE, 17, answers)
    (pr,) = await drv.page_requests()
    assert (pr.rid, pr.pasid, pr.addr, pr.write, pr.read, pr.last, pr.prgi) == (
        LABEL, 1, target, True, False, True, 17)
    assert rig.irq_count(VECTOR_PAGE_REQUEST) == 1
    assert answers == []
    page = ram.alloc(P)
    pt.map(target, page, P)
    await drv.submit(page_response(LABEL, 1, 17, 0))
    assert answers == [PageResponseCode.SUCCESS]
    assert rig.devices[LABEL].iommu.write(1, target, b"resolved") is None
    assert ram.read(page, 8) == b"resolved"
    # the fault the device answered with a page request was not logged
    await asyncio.sleep(0.01)
    assert await drv.faults() == []


async def test_invalid_response_and_unmatched_response(rig):
    drv = rig.drv
    await first_stage(rig)
    answers: list[int] = []
    request(rig, 1, IOVA + 5 * P, Access.READ, 3, answers)
    await drv.page_requests()
    await drv.submit(page_response(LABEL, 1, 9, 0))      # no such group: ignored
    assert answers == []
    await drv.submit(page_response(LABEL, 1, 3, 1))      # INVALID
    assert answers == [PageResponseCode.INVALID]
    assert rig.viommu.prq.responses == 1


async def test_pre_clear_refuses_page_requests_with_sct8(rig):
    drv = rig.drv
    await first_stage(rig, pre=False)
    answers: list[int] = []
    request(rig, 1, IOVA + 2 * P, Access.WRITE, 1, answers)
    assert answers == [PageResponseCode.INVALID]
    assert await drv.page_requests() == []
    (rec,) = await drv.faults()
    assert (rec.sid, rec.pasid, rec.reason, rec.addr) == (LABEL, 1, VtdFaultReason.PRE_CLEAR,
                                                          IOVA + 2 * P)


async def test_prq_overflow_sets_pro_and_answers_success(rig):
    drv = rig.drv
    await first_stage(rig)
    tail = await drv.read64(Reg.PQT)
    await drv.write64(Reg.PQH, (tail + 32) % P)           # head just past tail: full
    answers: list[int] = []
    request(rig, 1, IOVA + 7 * P, Access.READ, 2, answers)
    assert answers == [PageResponseCode.SUCCESS]
    prs = await drv.read32(Reg.PRS)
    assert Prs.PRO.get(prs) and not Prs.PPR.get(prs)
    assert rig.irq_count(VECTOR_PAGE_REQUEST) == 1
    # while PRO is set nothing is queued, even with room
    await drv.write64(Reg.PQH, tail)
    request(rig, 1, IOVA + 8 * P, Access.READ, 3, answers)
    assert answers[-1] == PageResponseCode.SUCCESS
    assert await drv.read64(Reg.PQT) == tail
    await drv.write32(Reg.PRS, Prs.PRO.mask)
    request(rig, 1, IOVA + 9 * P, Access.READ, 4, answers)
    assert [r.addr for r in await drv.page_requests()] == [IOVA + 9 * P]


async def test_prq_wraps_around(rig):
    drv = rig.drv
    await first_stage(rig)
    entries = P // 32
    answers: list[int] = []
    seen = []
    for i in range(entries + 10):
        request(rig, 1, IOVA + (16 + i) * P, Access.READ, i % 512, answers)
        if i % 50 == 49:
            seen += await drv.page_requests()
    seen += await drv.page_requests()
    assert [r.addr for r in seen] == [IOVA + (16 + i) * P for i in range(entries + 10)]
    assert answers == []                   # all pending, none overflowed


async def test_fault_without_page_request_is_logged_after_the_turn(rig):
    drv = rig.drv
    await first_stage(rig)
    assert isinstance(rig.devices[LABEL].iommu.write(1, IOVA + 4 * P, b"x"), Fault)
    await drv.until(lambda: rig.viommu.faults.recorded == 1, "the deferred fault record")
    (rec,) = await drv.faults()
    assert (rec.reason, rec.addr) == (VtdFaultReason.FS_P, IOVA + 4 * P)


async def test_detach_answers_pending_groups_invalid(rig):
    drv = rig.drv
    await first_stage(rig)
    answers: list[int] = []
    request(rig, 1, IOVA + 6 * P, Access.READ, 8, answers)
    drv.clear_pasid(LABEL, 1)
    await drv.submit(pasid_cache(1, did=1))
    assert answers == [PageResponseCode.INVALID]
    await drv.page_requests()
    await drv.submit(page_response(LABEL, 1, 8, 0))      # late response: harmless
    assert answers == [PageResponseCode.INVALID]
