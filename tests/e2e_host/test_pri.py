"""PRI at the model level: a not-present stage-1 page under BLOCK_ON_FAULT
becomes a page request in the model's fault queue; the descriptor is held
until the page group response, then retried (SUCCESS) or failed (INVALID)."""

from __future__ import annotations

import asyncio

import pytest
from vdma_harness import COMP, DST, PAGE, SRC, attach_s1, desc, eventually

from vuser.devices.dma_layout import (
    CompletionStatus, DescFlags, FaultInfo, Opcode, QCtrl, QStatus, QueueReg,
)
from vuser.iommu import Access
from vuser.iommu.uapi import FaultFlags, PageResponseCode

BLOCK = DescFlags.COMPLETION | DescFlags.BLOCK_ON_FAULT


@pytest.fixture
async def pri(rig, ram):
    """PASID 1 on an IOPF-capable nested HWPT; DST is not present in stage 1."""
    dev = await rig.add()
    drv = await rig.connect(0, ram)
    await drv.setup(queues=2)
    await drv.enable_pasid()
    await drv.enable_pri()
    ctx = rig.platform.ctx
    fq = ctx.fault_queue_alloc()
    pt = ram.page_tables()
    src, dst, comp = ram.alloc(PAGE), ram.alloc(PAGE), ram.alloc(PAGE)
    pt.map(SRC, src, PAGE)
    pt.map(COMP, comp, PAGE)
    ram.write(src, b"paged in")
    hwpt = attach_s1(rig.platform, dev, pt.root, 1, fault_id=fq)
    return dev, drv, ctx, fq, pt, {"src": src, "dst": dst, "comp": comp, "hwpt": hwpt}


async def wait_request(ctx, fq):
    await eventually(lambda: ctx.fault_queue_status(fq).queued, "a page request")
    [rec] = ctx.fault_read(fq)
    return rec


async def test_success_response_retries_and_completes(pri, ram):
    dev, drv, ctx, fq, pt, m = pri
    await drv.submit(0, desc(Opcode.MEMCPY, src=SRC, dst=DST + 16, length=8, pasid=1,
                             completion=COMP, flags=BLOCK))
    rec = await wait_request(ctx, fq)
    assert (rec.label, rec.pasid, rec.addr, rec.perm) == (dev.iommu.label, 1, DST, Access.WRITE)
    assert rec.flags & FaultFlags.PASID_VALID and rec.flags & FaultFlags.LAST_PAGE
    # Held: not completed, the queue busy, HEAD still on it.
    assert drv.record(m["comp"]).status == CompletionStatus.NONE
    assert QStatus.BUSY.get(await drv.qreg(0, QueueReg.Q_STATUS))
    assert await drv.qreg(0, QueueReg.HEAD) == 0
    pt.map(DST, m["dst"], PAGE)                       # the "OS" makes the page present
    ctx.fault_respond(fq, rec.cookie, PageResponseCode.SUCCESS)
    await asyncio.wait_for(dev.idle(), 10)
    assert drv.record(m["comp"]).status == CompletionStatus.SUCCESS
    assert ram.read(m["dst"] + 16, 8) == b"paged in"
    assert dev.engine.page_requests == 1 and dev.engine.outstanding == 0


async def test_invalid_response_fails_with_page_fault(pri, ram):
    dev, drv, ctx, fq, pt, m = pri
    await drv.submit(0, desc(Opcode.FILL, dst=DST, length=64, pasid=1, pattern=7,
                             completion=COMP, flags=BLOCK))
    rec = await wait_request(ctx, fq)
    ctx.fault_respond(fq, rec.cookie, PageResponseCode.INVALID)
    await asyncio.wait_for(dev.idle(), 10)
    r = drv.record(m["comp"])
    assert r.status == CompletionStatus.PAGE_FAULT and r.fault_addr == DST
    assert r.fault_info == FaultInfo.WRITE and r.bytes_done == 0
    assert ram.read(m["dst"], 64) == bytes(64)


async def test_success_without_fixing_the_page_gives_up_after_retries(pri, ram):
    dev, drv, ctx, fq, pt, m = pri
    await drv.submit(0, desc(Opcode.FILL, dst=DST, length=8, pasid=1, pattern=7,
                             completion=COMP, flags=BLOCK))
    from vuser.devices.dma_engine import MAX_PAGE_REQUESTS
    for _ in range(MAX_PAGE_REQUESTS):
        rec = await wait_request(ctx, fq)
        ctx.fault_respond(fq, rec.cookie, PageResponseCode.SUCCESS)   # but still not present
    await asyncio.wait_for(dev.idle(), 10)
    assert drv.record(m["comp"]).status == CompletionStatus.PAGE_FAULT
    assert dev.engine.page_requests == MAX_PAGE_REQUESTS


async def test_no_page_request_without_block_on_fault_or_pri(pri, ram):
    dev, drv, ctx, fq, pt, m = pri
    await drv.run(0, desc(Opcode.FILL, dst=DST, length=8, pasid=1, completion=COMP))
    assert drv.record(m["comp"]).status == CompletionStatus.PAGE_FAULT
    off = await drv.ext_cap(0x13)
    await drv.cfg_write(off + 4, 2, 0)                # PRI Enable off
    await drv.run(0, desc(Opcode.FILL, dst=DST, length=8, pasid=1, completion=COMP,
                          flags=BLOCK))
    assert drv.record(m["comp"]).status == CompletionStatus.PAGE_FAULT
    assert dev.engine.page_requests == 0 and ctx.fault_queue_status(fq).delivered == 0


async def test_other_queues_run_while_one_waits_and_drain_waits_for_it(pri, ram):
    dev, drv, ctx, fq, pt, m = pri
    await drv.submit(0, desc(Opcode.MEMCPY, src=SRC, dst=DST, length=8, pasid=1,
                             completion=COMP, flags=BLOCK))
    rec = await wait_request(ctx, fq)
    a, b = ram.alloc(PAGE), ram.alloc(PAGE)
    ram.write(a, b"queue 1!")
    c1, c2 = drv.completion(), drv.completion()
    await drv.submit(1, desc(Opcode.MEMCPY, src=a, dst=b, length=8, completion=c1),
                     desc(Opcode.DRAIN, completion=c2))
    await eventually(lambda: drv.record(c1).status == CompletionStatus.SUCCESS, "queue 1 runs")
    assert ram.read(b, 8) == b"queue 1!"
    await asyncio.sleep(0.05)
    assert drv.record(c2).status == CompletionStatus.NONE     # DRAIN waits for queue 0
    pt.map(DST, m["dst"], PAGE)
    ctx.fault_respond(fq, rec.cookie, PageResponseCode.SUCCESS)
    await asyncio.wait_for(dev.idle(), 10)
    assert drv.record(c2).status == CompletionStatus.SUCCESS
    assert drv.record(m["comp"]).status == CompletionStatus.SUCCESS


async def test_disabling_the_queue_aborts_the_held_descriptor(pri, ram):
    dev, drv, ctx, fq, pt, m = pri
    await drv.submit(0, desc(Opcode.MEMCPY, src=SRC, dst=DST, length=8, pasid=1,
                             completion=COMP, flags=BLOCK))
    rec = await wait_request(ctx, fq)
    await drv.set_qreg(0, QueueReg.Q_CTRL, QCtrl.pack(ENABLE=0))
    await asyncio.wait_for(dev.idle(), 10)
    assert drv.record(m["comp"]).status == CompletionStatus.ABORTED
    ctx.fault_respond(fq, rec.cookie, PageResponseCode.SUCCESS)   # a late response is harmless
    assert dev.engine.outstanding == 0


async def test_detach_answers_the_held_request_invalid(pri, ram):
    dev, drv, ctx, fq, pt, m = pri
    comp = drv.completion()                           # untagged: PASID 1 is going away
    await drv.submit(0, desc(Opcode.MEMCPY, src=SRC, dst=DST, length=8, pasid=1,
                             completion=comp, flags=BLOCK | DescFlags.COMPLETION_RID))
    await wait_request(ctx, fq)
    ctx.device_detach(dev.iommu.dev_id, 1)            # iommufd answers pending groups INVALID
    await asyncio.wait_for(dev.idle(), 10)
    r = drv.record(comp)
    assert r.status == CompletionStatus.PAGE_FAULT and r.fault_addr == DST


async def test_pri_allocation_bounds_outstanding_requests(pri, ram):
    dev, drv, ctx, fq, pt, m = pri
    await drv.enable_pri(allocation=1)
    await drv.submit(0, desc(Opcode.FILL, dst=DST, length=8, pasid=1, pattern=1,
                             completion=COMP, flags=BLOCK))
    await drv.submit(1, desc(Opcode.FILL, dst=DST + 8, length=8, pasid=1, pattern=2,
                             completion=COMP + 32, flags=BLOCK))
    first = await wait_request(ctx, fq)
    await asyncio.sleep(0.05)
    assert ctx.fault_queue_status(fq).queued == 0 and dev.engine.outstanding == 1
    pt.map(DST, m["dst"], PAGE)
    ctx.fault_respond(fq, first.cookie, PageResponseCode.SUCCESS)
    # The other queue's request was waiting for a slot: it goes out now.
    second = await wait_request(ctx, fq)
    assert second.addr == DST and dev.engine.outstanding == 1
    ctx.fault_respond(fq, second.cookie, PageResponseCode.SUCCESS)
    await asyncio.wait_for(dev.idle(), 10)
    assert drv.record(m["comp"]).status == CompletionStatus.SUCCESS
    assert drv.record(m["comp"] + 32).status == CompletionStatus.SUCCESS
    assert ram.read(m["dst"], 16) == (1).to_bytes(8, "little") + (2).to_bytes(8, "little")


async def test_disconnect_while_held_loses_nothing_and_reconnects(pri, ram, rig, caplog):
    dev, drv, ctx, fq, pt, m = pri
    await drv.submit(0, desc(Opcode.MEMCPY, src=SRC, dst=DST, length=8, pasid=1,
                             completion=COMP, flags=BLOCK))
    await wait_request(ctx, fq)
    await rig.disconnect(drv)                         # QEMU goes away mid-descriptor
    await asyncio.wait_for(dev.idle(), 10)
    assert not dev.iommu.bound and rig.platform.vms() == [] and dev.engine.outstanding == 0
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    # A new client (registers were kept, as for every device: it resets first,
    # as QEMU does at machine reset) gets a working device again.
    drv2 = await rig.connect(0, ram)
    await drv2.client.reset()
    await drv2.setup()
    src, dst = ram.alloc(PAGE), ram.alloc(PAGE)
    ram.write(src, b"again!!!")
    assert (await drv2.memcpy(0, src, dst, 8)).status == CompletionStatus.SUCCESS
    assert ram.read(dst, 8) == b"again!!!"
