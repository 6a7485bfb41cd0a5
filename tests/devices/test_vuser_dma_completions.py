"""vuser-dma completion observers: one ``DmaCompletion`` per descriptor that ends.

Driven through our vfio-user client acting as QEMU and the guest driver
(``tests/e2e_host/vdma_harness.py``).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e_host"))

from vdma_harness import (  # noqa: E402
    COMP, DST, PAGE, SRC, GuestRam, Rig, attach_s1, desc, eventually,
)

from vuser.devices.dma_layout import (  # noqa: E402
    CompletionStatus, Ctrl, DescFlags, FaultInfo, Opcode, QCtrl, QueueError, QueueReg, Reg,
)
from vuser.devices.vuser_dma import DmaCompletion  # noqa: E402
from vuser.iommu.uapi import PageResponseCode  # noqa: E402


@pytest.fixture
def ram():
    r = GuestRam()
    yield r
    r.close()


@pytest.fixture
async def rig(tmp_path):
    r = Rig(tmp_path)
    yield r
    await r.close()


@pytest.fixture
async def pasid1(rig, ram):
    """One vuser-dma with PASID 1 on first-stage tables mapping SRC and COMP, not DST."""
    dev = await rig.add(label=0x51)
    drv = await rig.connect(0, ram)
    await drv.setup(queues=2)
    await drv.enable_pasid()
    pt = ram.page_tables()
    src, comp = ram.alloc(PAGE), ram.alloc(PAGE)
    pt.map(SRC, src, PAGE)
    pt.map(COMP, comp, PAGE)
    ram.write(src, bytes(range(256)) * 16)
    attach_s1(rig.platform, dev, pt.root, 1)
    return dev, drv, pt, {"src": src, "comp": comp}


async def test_one_record_per_descriptor_with_its_outcome(pasid1, ram):
    dev, drv, _pt, m = pasid1
    seen: list[DmaCompletion] = []
    dev.add_completion_observer(seen.append)
    dev.add_completion_observer(seen.append)       # adding twice: still once
    dst = ram.alloc(PAGE)
    t0 = time.monotonic()
    ok, bad, inval = drv.completion(), drv.completion(), drv.completion()
    await drv.run(1,
                  desc(Opcode.MEMCPY, src=m["src"], dst=dst, length=0x300, completion=ok),
                  desc(Opcode.FILL, dst=DST + 0x10, length=64, pasid=1, pattern=5,
                       completion=COMP),
                  desc(0x77, completion=inval))
    # The untagged success (GPA DMA through the RID's stage-2 pass-through).
    assert len(seen) == 3, seen
    s, f, i = seen
    assert (s.label, s.queue, s.index, s.opcode, s.pasid) == (0x51, 1, 0, Opcode.MEMCPY, None)
    assert (s.status, s.bytes_done, s.fault_addr, s.result) == (CompletionStatus.SUCCESS,
                                                                0x300, None, 0)
    assert (s.src, s.dst, s.length, s.halted) == (m["src"], dst, 0x300, None)
    assert ram.read(dst, 0x300) == ram.read(m["src"], 0x300)
    # The PASID page fault: the same outcome the completion record holds.
    assert (f.index, f.opcode, f.pasid, f.status) == (1, Opcode.FILL, 1,
                                                      CompletionStatus.PAGE_FAULT)
    rec = ram.read(m["comp"], 32)
    assert rec[0] == CompletionStatus.PAGE_FAULT
    assert (f.fault_addr, f.bytes_done, f.fault_info) == (DST + 0x10, 0, FaultInfo.WRITE)
    assert (f.dst, f.length) == (DST + 0x10, 64)
    # An unknown opcode: INVALID_DESC, its byte kept; the name is nil on the wire.
    assert (i.index, i.opcode, i.status) == (2, 0x77, CompletionStatus.INVALID_DESC)
    assert drv.record(inval).status == CompletionStatus.INVALID_DESC
    assert t0 <= s.time <= f.time <= i.time <= time.monotonic()
    d = f.to_dict()
    assert (d["status"], d["status_name"], d["opcode"], d["opcode_name"]) == (
        2, "PAGE_FAULT", 2, "FILL")
    assert i.to_dict()["opcode_name"] is None and s.to_dict()["halted"] is None
    assert await drv.qreg(1, QueueReg.COMPLETED) == 3


async def test_compare_result_is_reported(pasid1, ram):
    dev, drv, _pt, m = pasid1
    seen: list[DmaCompletion] = []
    dev.add_completion_observer(seen.append)
    other = ram.alloc(PAGE)
    ram.write(other, ram.read(m["src"], 64))
    ram.write(other + 40, b"\xff")
    await drv.run(0, desc(Opcode.COMPARE, src=m["src"], dst=other, length=64,
                          completion=drv.completion()))
    [c] = seen
    assert (c.status, c.result, c.bytes_done) == (CompletionStatus.SUCCESS, 1, 40)


async def test_an_observer_that_raises_does_not_break_dma(pasid1, ram, caplog):
    dev, drv, _pt, m = pasid1
    calls: list[int] = []

    def broken(rec: DmaCompletion) -> None:
        calls.append(rec.index)
        raise RuntimeError("observer bug")

    seen: list[DmaCompletion] = []
    dev.add_completion_observer(broken)
    dev.add_completion_observer(seen.append)     # after the broken one: still called
    dst = ram.alloc(4 * PAGE)
    comps = [drv.completion() for _ in range(4)]
    with caplog.at_level(logging.DEBUG, logger="vuser.devices.vuser_dma"):
        await drv.run(0, *(desc(Opcode.MEMCPY, src=m["src"], dst=dst + k * PAGE, length=PAGE,
                                completion=comps[k], flags=DescFlags.COMPLETION | DescFlags.IRQ)
                           for k in range(4)))
    assert calls == [0, 1, 2, 3] and [r.index for r in seen] == [0, 1, 2, 3]
    for k in range(4):
        assert drv.record(comps[k]).status == CompletionStatus.SUCCESS
        assert ram.read(dst + k * PAGE, PAGE) == ram.read(m["src"], PAGE)
    assert await drv.qreg(0, QueueReg.COMPLETED) == 4
    assert await drv.qreg(0, QueueReg.Q_ERROR) == QueueError.NONE
    assert drv.irq_count(0) >= 1                 # interrupts still raised
    assert dev.observer_errors == 4 and dev.describe()["observer_errors"] == 4
    tracebacks = [r for r in caplog.records if r.exc_info and "observer" in r.getMessage()]
    assert len(tracebacks) == 1                  # logged once, then counted
    # The queue keeps working.
    await drv.run(0, desc(Opcode.NOP, completion=drv.completion()))
    assert len(seen) == 5 and dev.observer_errors == 5


async def test_remove_stops_delivery(pasid1, ram):
    dev, drv, _pt, _m = pasid1
    seen: list[DmaCompletion] = []
    dev.add_completion_observer(seen.append)
    await drv.run(0, desc(Opcode.NOP, completion=drv.completion()))
    dev.remove_completion_observer(seen.append)
    dev.remove_completion_observer(seen.append)   # not there any more: nothing happens
    await drv.run(0, desc(Opcode.NOP, completion=drv.completion()))
    assert [r.index for r in seen] == [0]
    assert dev.describe()["completion_observers"] == 0
    assert await drv.qreg(0, QueueReg.COMPLETED) == 2


async def test_a_record_that_cannot_be_written_halts_and_is_reported(pasid1, ram):
    dev, drv, _pt, _m = pasid1
    seen: list[DmaCompletion] = []
    dev.add_completion_observer(seen.append)
    await drv.run(0, desc(Opcode.NOP, completion=drv.completion()),
                  desc(Opcode.NOP, completion=ram.gpa + ram.size))   # no RAM there
    assert [(r.index, r.status, r.halted) for r in seen] == [
        (0, CompletionStatus.SUCCESS, None),
        (1, CompletionStatus.SUCCESS, QueueError.COMPLETION_FAULT)]
    assert seen[1].to_dict()["halted"] == "COMPLETION_FAULT"
    assert await drv.qreg(0, QueueReg.Q_ERROR) == QueueError.COMPLETION_FAULT
    assert await drv.qreg(0, QueueReg.HEAD) == 1 and await drv.qreg(0, QueueReg.COMPLETED) == 1


async def test_a_device_model_error_is_reported_with_status_none(pasid1, ram, monkeypatch):
    dev, drv, _pt, m = pasid1
    seen: list[DmaCompletion] = []
    dev.add_completion_observer(seen.append)

    async def bug(*_a, **_k):
        raise RuntimeError("engine bug")
    monkeypatch.setattr(dev.engine, "start", bug)
    await drv.run(0, desc(Opcode.FILL, dst=m["src"], length=8, completion=drv.completion()))
    [r] = seen
    assert (r.index, r.status, r.halted) == (0, CompletionStatus.NONE, QueueError.INTERNAL)
    assert await drv.qreg(0, QueueReg.Q_ERROR) == QueueError.INTERNAL


@pytest.fixture
async def held(rig, ram):
    """A MEMCPY on PASID 1 held waiting for a page response (DST not present)."""
    dev = await rig.add()
    drv = await rig.connect(0, ram)
    await drv.setup()
    await drv.enable_pasid()
    await drv.enable_pri()
    ctx = rig.platform.ctx
    fq = ctx.fault_queue_alloc()
    pt = ram.page_tables()
    comp = ram.alloc(PAGE)
    pt.map(SRC, ram.alloc(PAGE), PAGE)
    pt.map(COMP, comp, PAGE)
    attach_s1(rig.platform, dev, pt.root, 1, fault_id=fq)
    seen: list[DmaCompletion] = []
    dev.add_completion_observer(seen.append)
    await drv.submit(0, desc(Opcode.MEMCPY, src=SRC, dst=DST, length=8, pasid=1,
                             completion=COMP,
                             flags=DescFlags.COMPLETION | DescFlags.BLOCK_ON_FAULT))
    await eventually(lambda: ctx.fault_queue_status(fq).queued, "a page request")
    [req] = ctx.fault_read(fq)
    assert seen == []                             # held: nothing ended yet
    return dev, drv, ctx, fq, req, comp, seen


async def test_a_held_descriptor_aborted_by_disable_is_reported(held, ram):
    dev, drv, ctx, fq, req, comp, seen = held
    await drv.set_qreg(0, QueueReg.Q_CTRL, QCtrl.pack(ENABLE=0))
    await asyncio.wait_for(dev.idle(), 10)
    [r] = seen
    assert (r.index, r.pasid, r.status, r.halted) == (0, 1, CompletionStatus.ABORTED, None)
    assert ram.read(comp, 1)[0] == CompletionStatus.ABORTED
    ctx.fault_respond(fq, req.cookie, PageResponseCode.SUCCESS)   # late: changes nothing
    await asyncio.sleep(0.01)
    assert len(seen) == 1


async def test_a_held_descriptor_dropped_by_reset_is_not_reported(held, ram):
    """CTRL.RESET stops queues without records: the descriptor did not end,
    and the observers hear nothing, as the guest sees nothing."""
    dev, drv, ctx, fq, req, comp, seen = held
    await drv.set_reg(Reg.CTRL, Ctrl.RESET.mask)
    await asyncio.wait_for(dev.idle(), 10)
    assert ram.read(comp, 1)[0] == CompletionStatus.NONE
    assert seen == [] and dev.describe()["completion_observers"] == 1  # observers survive reset
