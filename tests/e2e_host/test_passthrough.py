"""Pass-through DMA: no vIOMMU programming, the RID sits on the VM's stage-2
parent, so a memcpy's addresses are GPAs."""

from __future__ import annotations

import asyncio
import os

from vdma_harness import MiB, desc

from vuser.devices.dma_layout import (
    CompletionStatus, DescFlags, Opcode, QueueReg, Reg, queue_reg,
)


async def test_memcpy_lands_at_the_right_gpa(rig, ram):
    dev = await rig.add()
    drv = await rig.connect(0, ram)
    await drv.setup()
    src, dst = ram.alloc(3 * 4096), ram.alloc(3 * 4096)
    data = os.urandom(10000)
    ram.write(src + 5, data)
    before = ram.snapshot()
    rec = await drv.memcpy(0, src + 5, dst + 7, len(data))
    assert rec.status == CompletionStatus.SUCCESS and rec.bytes_done == len(data)
    # GPA dst+7 is file byte dst+7 - gpa + offset: stage 2 is not the identity here.
    assert os.pread(ram.fd, len(data), ram.file_offset(dst + 7)) == data
    drv.assert_only_written(before, (dst + 7, len(data)), (drv.last_completion, 32))
    assert await drv.qreg(0, QueueReg.HEAD) == 1
    assert await drv.qreg(0, QueueReg.COMPLETED) == 1
    assert await drv.reg(Reg.INT_STATUS) == 0   # no IRQ flag on the descriptor
    ctx = rig.platform.ctx
    vm = rig.platform.vm_of(dev)
    assert ctx.device_info(dev.iommu.dev_id)["attach"] == [[None, vm.s2_hwpt_id]]


async def test_fill_compare_nop_and_interrupts(rig, ram):
    await rig.add()
    drv = await rig.connect(0, ram)
    await drv.setup(queues=2)
    buf = ram.alloc(8192)
    c1, c2, c3, c4 = (drv.completion() for _ in range(4))
    irq = DescFlags.COMPLETION | DescFlags.IRQ
    await drv.run(1,
                  desc(Opcode.FILL, dst=buf + 3, length=21, pattern=0x0807060504030201,
                       src=2**64 - 1, completion=c1, flags=irq),   # FILL ignores src
                  desc(Opcode.COMPARE, src=buf + 3, dst=buf + 11, length=8, completion=c2),
                  desc(Opcode.COMPARE, src=buf + 3, dst=buf + 4, length=8, completion=c3),
                  desc(Opcode.NOP, completion=c4, flags=irq))
    assert ram.read(buf, 26) == b"\0" * 3 + bytes([1, 2, 3, 4, 5, 6, 7, 8]) * 2 + \
        bytes([1, 2, 3, 4, 5]) + b"\0" * 2
    r1, r2, r3, r4 = (drv.record(c) for c in (c1, c2, c3, c4))
    assert (r1.status, r1.bytes_done) == (CompletionStatus.SUCCESS, 21)
    assert (r2.status, r2.result, r2.bytes_done) == (CompletionStatus.SUCCESS, 0, 8)
    assert (r3.status, r3.result, r3.bytes_done) == (CompletionStatus.SUCCESS, 1, 0)
    assert r4.status == CompletionStatus.SUCCESS
    assert await drv.reg(Reg.INT_STATUS) == 0b10
    assert drv.irq_count(1) == 2 and drv.irq_count(0) == 0
    await drv.set_reg(Reg.INT_STATUS, 0b10)     # RW1C
    assert await drv.reg(Reg.INT_STATUS) == 0
    assert await drv.qreg(1, QueueReg.COMPLETED) == 4


async def test_large_memcpy_across_many_pages(rig, ram):
    await rig.add()
    drv = await rig.connect(0, ram)
    await drv.setup()
    n = 3 * MiB + 123
    src, dst = ram.alloc(n), ram.alloc(n)
    data = os.urandom(n)
    ram.write(src, data)
    rec = await drv.memcpy(0, src, dst, n)
    assert rec.status == CompletionStatus.SUCCESS and rec.bytes_done == n
    assert ram.read(dst, n) == data


async def test_doorbell_returns_before_the_work_is_done(rig, ram):
    dev = await rig.add()
    drv = await rig.connect(0, ram)
    await drv.setup()
    n = 8 * MiB
    dst = ram.alloc(n)
    comp = drv.completion()
    ring = drv.rings[0]
    ram.write(ring.base, desc(Opcode.FILL, dst=dst, length=n, pattern=2**64 - 1,
                              completion=comp).pack())
    await drv.set_qreg(0, QueueReg.TAIL, 1)
    # The doorbell as the server core delivers it: it returns with the work queued.
    dev.region_write(0, queue_reg(0, QueueReg.DOORBELL), b"\1\0\0\0")
    assert dev.queues[0].busy and drv.record(comp).status == CompletionStatus.NONE
    await asyncio.wait_for(dev.idle(), 10)
    assert drv.record(comp).status == CompletionStatus.SUCCESS
    assert ram.read(dst + n - 8, 8) == b"\xff" * 8 and ram.read(dst, 8) == b"\xff" * 8
