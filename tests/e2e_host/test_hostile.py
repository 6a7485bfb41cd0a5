"""A hostile guest on vuser-dma: bad rings, bad descriptors, bad addresses.
Each gives an error status or a queue halt, never an exception, and the
server keeps serving the other queues and the other devices."""

from __future__ import annotations

import asyncio
import logging

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from vdma_harness import PAGE, desc

from vuser.devices.dma_layout import (
    MAX_LENGTH, CompletionStatus, Ctrl, DescFlags, DescPasid, Descriptor, FaultInfo, Opcode,
    QCtrl, QStatus, QueueError, QueueReg, Reg, Status,
)


@pytest.fixture
async def two(rig, ram, caplog):
    """Two devices of one VM, each with two queues; the second is the witness."""
    caplog.set_level(logging.INFO)
    await rig.add()
    await rig.add()
    bad, good = await rig.connect(0, ram), await rig.connect(1, ram)
    await bad.setup(queues=2)
    await good.setup(queues=1)
    yield bad, good
    # Nothing reached the event loop's exception handler or a task's failure log.
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], \
        [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


async def still_serving(bad, good, ram):
    """The other queue of the bad device and the other device still work."""
    src, dst = ram.alloc(PAGE), ram.alloc(PAGE)
    ram.write(src, b"witness!")
    for drv, q in ((bad, 1), (good, 0)):
        rec = await drv.memcpy(q, src, dst, 8)
        assert rec.status == CompletionStatus.SUCCESS and ram.read(dst, 8) == b"witness!"
        ram.write(dst, bytes(8))


async def halted(drv, q, error):
    assert await drv.qreg(q, QueueReg.Q_ERROR) == error
    assert QStatus.HALTED.get(await drv.qreg(q, QueueReg.Q_STATUS))
    assert Status.ERROR.get(await drv.reg(Reg.STATUS))


async def recover(drv, q):
    await drv.set_qreg(q, QueueReg.Q_CTRL, 0)
    await drv.setup_queue(q, drv.rings[q].size)


async def test_tail_beyond_the_ring_halts_the_queue(two, ram):
    bad, good = two
    await bad.set_qreg(0, QueueReg.TAIL, 64 + 3)
    await bad.set_qreg(0, QueueReg.DOORBELL, 1)
    await asyncio.wait_for(bad.dev.idle(), 10)
    await halted(bad, 0, QueueError.TAIL)
    err_vector = bad.dev.nqueues
    assert bad.irq_count(err_vector) == 1
    await bad.set_qreg(0, QueueReg.DOORBELL, 1)       # doorbells on a halted queue: nothing
    await asyncio.wait_for(bad.dev.idle(), 10)
    await still_serving(bad, good, ram)
    await recover(bad, 0)
    assert not Status.ERROR.get(await bad.reg(Reg.STATUS))
    src, dst = ram.alloc(PAGE), ram.alloc(PAGE)
    assert (await bad.memcpy(0, src, dst, 8)).status == CompletionStatus.SUCCESS


@pytest.mark.parametrize("length", [MAX_LENGTH + 1, 1 << 40, 2**64 - 1])
async def test_absurd_lengths_are_invalid_descriptors(two, ram, length):
    bad, good = two
    comp = bad.completion()
    before = ram.snapshot()
    await bad.run(0, desc(Opcode.MEMCPY, src=ram.gpa, dst=ram.gpa + PAGE, length=length,
                          completion=comp))
    assert bad.record(comp).status == CompletionStatus.INVALID_DESC
    bad.assert_only_written(before, (comp, 32))
    await still_serving(bad, good, ram)


async def test_garbage_opcodes_flags_reserved_bits_and_pasids(two, ram):
    bad, good = two
    base = desc(Opcode.NOP)
    cases = [base.replace(opcode=0x77), base.replace(flags=0x80 | DescFlags.COMPLETION),
             base.replace(_rsvd0=1), base.replace(_rsvd1=b"\1" + bytes(15)),
             base.replace(pasid=DescPasid.pack(VALID=1, PASID=1)),   # PASID not enabled
             base.replace(pasid=0x4000_0000)]                        # reserved PASID bits
    comps = [bad.completion() for _ in cases]
    await bad.run(0, *(d.replace(completion=c) for d, c in zip(cases, comps)))
    assert [bad.record(c).status for c in comps] == [CompletionStatus.INVALID_DESC] * len(cases)
    assert await bad.qreg(0, QueueReg.Q_ERROR) == 0 and await bad.qreg(0, QueueReg.HEAD) == 6
    await still_serving(bad, good, ram)


async def test_addresses_outside_guest_ram_fault_at_stage2(two, ram):
    bad, good = two
    outside = ram.gpa + ram.size + 0x1000
    comp, comp2 = bad.completion(), bad.completion()
    await bad.run(0, desc(Opcode.MEMCPY, src=ram.gpa, dst=outside, length=64, completion=comp),
                  desc(Opcode.COMPARE, src=2**64 - 8, dst=ram.gpa, length=8, completion=comp2))
    r = bad.record(comp)
    assert r.status == CompletionStatus.PAGE_FAULT and r.fault_addr == outside
    assert r.fault_info == FaultInfo.WRITE | FaultInfo.STAGE2
    assert bad.record(comp2).status == CompletionStatus.PAGE_FAULT
    # The x86 MSI window is reserved: never DMA-able.
    comp3 = bad.completion()
    await bad.run(0, desc(Opcode.FILL, dst=0xFEE0_0000, length=4, completion=comp3))
    assert bad.record(comp3).status == CompletionStatus.PAGE_FAULT
    await still_serving(bad, good, ram)


async def test_fd_less_memory_is_not_reachable_by_vuser_dma(two, ram):
    bad, good = two
    rom = bytearray(PAGE)
    await bad.client.dma_map(0xC_0000, buffer=rom)
    comp = bad.completion()
    await bad.run(0, desc(Opcode.FILL, dst=0xC_0000, length=8, pattern=-1 % 2**64,
                          completion=comp))
    assert bad.record(comp).status == CompletionStatus.PAGE_FAULT
    assert rom[:8] == bytes(8) and bad.client.dma_requests_served == 0


async def test_ring_outside_ram_and_bad_ring_size(two, ram):
    bad, good = two
    await bad.set_qreg(0, QueueReg.Q_CTRL, 0)
    await bad.setup_queue(0, 64, base=ram.gpa + ram.size + PAGE)
    await bad.submit(0, desc(Opcode.NOP), ring_write=False)
    await asyncio.wait_for(bad.dev.idle(), 10)
    await halted(bad, 0, QueueError.RING_FAULT)
    for size in (0, 3, 1 << 13):
        await bad.set_qreg(0, QueueReg.Q_CTRL, 0)
        await bad.set_qreg(0, QueueReg.RING_SIZE, size)
        await bad.set_qreg(0, QueueReg.Q_CTRL, QCtrl.pack(ENABLE=1))
        await halted(bad, 0, QueueError.RING_SIZE)
    await still_serving(bad, good, ram)


async def test_completion_outside_ram_halts(two, ram):
    bad, good = two
    await bad.run(0, desc(Opcode.NOP, completion=ram.gpa + ram.size))
    await halted(bad, 0, QueueError.COMPLETION_FAULT)
    assert await bad.qreg(0, QueueReg.HEAD) == 0        # on the descriptor it could not finish
    await still_serving(bad, good, ram)


async def test_no_bus_master_no_dma(two, ram):
    bad, good = two
    await bad.bus_master(False)
    comp = bad.completion()
    await bad.run(0, desc(Opcode.FILL, dst=ram.gpa + PAGE * 8, length=8, completion=comp,
                          pattern=1))
    await halted(bad, 0, QueueError.BUS_MASTER)
    assert bad.record(comp).status == CompletionStatus.NONE
    await bad.bus_master(True)
    await still_serving(bad, good, ram)


async def test_ring_registers_are_frozen_while_enabled_and_reset_clears(two, ram):
    bad, good = two
    base = bad.rings[0].base
    await bad.set_qreg(0, QueueReg.RING_LO, 0x1234_0000)
    await bad.set_qreg(0, QueueReg.RING_SIZE, 2)
    assert await bad.qreg(0, QueueReg.RING_LO) == base & 0xFFFF_FFFF
    assert await bad.qreg(0, QueueReg.RING_SIZE) == 64
    await bad.set_reg(Reg.CTRL, Ctrl.RESET.mask)
    assert await bad.reg(Reg.CTRL) == 0 and await bad.qreg(0, QueueReg.RING_SIZE) == 0
    assert await bad.qreg(0, QueueReg.Q_CTRL) == 0
    await bad.set_reg(Reg.CTRL, Ctrl.ENABLE.mask)     # the driver probes again
    for q in (0, 1):
        await bad.setup_queue(q)
    await still_serving(bad, good, ram)


#: The last 4 MiB of the default GuestRam: random DMA may land there, and
#: nothing the witnesses use lives there.
_SCRATCH = (0x4000_0000 + (12 << 20), 0x4000_0000 + (16 << 20) - (64 << 10))
_addr = st.one_of(st.integers(0, 2**64 - 1), st.integers(*_SCRATCH))
_bad_desc = st.builds(
    Descriptor, opcode=st.integers(0, 255) | st.sampled_from(list(Opcode)),
    flags=st.integers(0, 255) | st.sampled_from([2, 3, 6, 10]),
    _rsvd0=st.sampled_from([0, 0, 1]), pasid=st.integers(0, 2**32 - 1) | st.just(0),
    src=_addr, dst=_addr,
    length=st.one_of(st.integers(0, 64 << 10), st.integers(0, 2**64 - 1)),
    completion=_addr, pattern=st.integers(0, 2**64 - 1),
    _rsvd1=st.sampled_from([bytes(16), bytes(16), b"\xff" * 16]))


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(_bad_desc, min_size=1, max_size=8))
async def test_random_descriptors_never_break_the_server(two, ram, batch):
    bad, good = two
    q = bad.rings[0]
    await bad.submit(0, *batch)
    await asyncio.wait_for(bad.dev.idle(), 10)
    err = await bad.qreg(0, QueueReg.Q_ERROR)
    assert err in (0, QueueError.COMPLETION_FAULT)
    if err:
        await recover(bad, 0)
    else:
        assert await bad.qreg(0, QueueReg.HEAD) == q.tail
    await still_serving(bad, good, ram)
