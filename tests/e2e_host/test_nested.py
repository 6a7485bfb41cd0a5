"""Nested PASID DMA with the model driven directly, as the vIOMMU would: each
PASID attached to a nested VTD_S1 HWPT whose first-stage tables live in the
guest's memfd, over the VM's stage-2 parent. And isolation: a PASID with
nothing attached faults, writes nothing, and the fault names the device."""

from __future__ import annotations

import os

from vdma_harness import COMP, DST, PAGE, SRC, desc

from vuser.devices.dma_layout import CompletionStatus, DescFlags, FaultInfo, Opcode, QueueReg
from vuser.iommu import FaultKind, Stage



async def test_pasids_land_where_stage1_then_stage2_say(nested, ram):
    dev, drv, spaces = nested
    for pasid in (1, 2):
        sp = spaces[pasid]
        before = ram.snapshot()
        await drv.run(0, desc(Opcode.MEMCPY, src=SRC + 100, dst=DST + 100, length=2 * PAGE - 200,
                              pasid=pasid, completion=COMP + 32))
        rec = drv.record(sp["comp"] + 32)
        assert rec.status == CompletionStatus.SUCCESS and rec.bytes_done == 2 * PAGE - 200
        data = ram.read(sp["src"] + 100, 2 * PAGE - 200)
        # IOVA DST+100.. is GPA dst+PAGE+100.., then DST+PAGE is GPA dst: stage 1.
        first = PAGE - 100
        assert ram.read(sp["dst"] + PAGE + 100, first) == data[:first]
        assert ram.read(sp["dst"], PAGE - 100) == data[first:]
        # Stage 2: those GPAs are file bytes at +offset; nothing else moved.
        assert os.pread(ram.fd, first, ram.file_offset(sp["dst"] + PAGE + 100)) == data[:first]
        drv.assert_only_written(before, (sp["dst"], 2 * PAGE), (sp["comp"] + 32, 32))
    # The same IOVAs with PASID 2 landed in PASID 2's pages, not PASID 1's.
    assert ram.read(spaces[1]["dst"] + PAGE + 100, 16) != ram.read(spaces[2]["dst"] + PAGE + 100,
                                                                   16)
    assert ram.read(spaces[2]["dst"] + PAGE + 100, 16) == ram.read(spaces[2]["src"] + 100, 16)


async def test_untagged_dma_is_still_pass_through(nested, ram):
    dev, drv, spaces = nested
    src, dst = ram.alloc(PAGE), ram.alloc(PAGE)
    ram.write(src, b"untagged")
    rec = await drv.memcpy(0, src, dst, 8)
    assert rec.status == CompletionStatus.SUCCESS and ram.read(dst, 8) == b"untagged"


async def test_unattached_pasid_faults_writes_nothing_and_records_the_fault(nested, ram, rig):
    dev, drv, spaces = nested
    seen = []
    rig.platform.ctx.add_fault_observer(seen.append)
    comp = drv.completion()
    before = ram.snapshot()
    await drv.run(0, desc(Opcode.MEMCPY, src=SRC, dst=DST, length=64, pasid=3, completion=comp,
                          flags=DescFlags.COMPLETION | DescFlags.COMPLETION_RID))
    rec = drv.record(comp)
    assert rec.status == CompletionStatus.PAGE_FAULT
    assert rec.bytes_done == 0 and rec.fault_addr == SRC and rec.fault_info == 0
    drv.assert_only_written(before, (comp, 32))
    [f] = seen
    assert (f.label, f.pasid, f.iova) == (dev.iommu.label, 3, SRC)
    assert f.reason == FaultKind.PASID_ENTRY_P and f.stage == Stage.BLOCKED
    assert await drv.qreg(0, QueueReg.Q_ERROR) == 0          # the queue goes on


async def test_fault_in_the_middle_reports_bytes_done_and_address(nested, ram, rig):
    dev, drv, spaces = nested
    sp = spaces[1]
    sp["pt"].unmap(DST + PAGE)                  # second destination page not present
    rig.platform.ctx.iotlb_invalidate(dev.iommu.dev_id, 1)
    await drv.run(0, desc(Opcode.MEMCPY, src=SRC, dst=DST, length=2 * PAGE, pasid=1,
                          completion=COMP))
    rec = drv.record(sp["comp"])
    assert rec.status == CompletionStatus.PAGE_FAULT
    assert rec.bytes_done == PAGE and rec.fault_addr == DST + PAGE
    assert rec.fault_info == FaultInfo.WRITE
    assert ram.read(sp["dst"] + PAGE, PAGE) == ram.read(sp["src"], PAGE)   # the first page


async def test_stage2_fault_under_stage1_is_flagged(nested, ram, rig):
    dev, drv, spaces = nested
    sp = spaces[1]
    outside = ram.gpa + ram.size + 0x10_0000          # a GPA with no guest RAM
    sp["pt"].map(0x2000_0000, outside, PAGE)
    await drv.run(0, desc(Opcode.FILL, dst=0x2000_0000, length=8, pasid=1, completion=COMP,
                          pattern=1))
    rec = drv.record(sp["comp"])
    assert rec.status == CompletionStatus.PAGE_FAULT
    assert rec.fault_info == FaultInfo.WRITE | FaultInfo.STAGE2
    assert rec.fault_addr == 0x2000_0000


async def test_stale_iotlb_until_pasid_invalidation(nested, ram, rig):
    dev, drv, spaces = nested
    sp, ctx = spaces[1], rig.platform.ctx
    await drv.run(0, desc(Opcode.MEMCPY, src=SRC, dst=DST, length=8, pasid=1, completion=COMP))
    new_src = ram.alloc(PAGE)
    ram.write(new_src, b"new page")
    sp["pt"].map(SRC, new_src, PAGE)                  # PTE changed, nothing invalidated
    await drv.run(0, desc(Opcode.MEMCPY, src=SRC, dst=DST, length=8, pasid=1, completion=COMP))
    assert ram.read(sp["dst"] + PAGE, 8) == ram.read(sp["src"], 8)       # the old page
    ctx.hwpt_invalidate(sp["hwpt"], [{"addr": SRC, "npages": 1, "flags": 0}])
    await drv.run(0, desc(Opcode.MEMCPY, src=SRC, dst=DST, length=8, pasid=1, completion=COMP))
    assert ram.read(sp["dst"] + PAGE, 8) == b"new page"


async def test_a_destination_fault_after_a_clean_source_is_reported_once(nested, ram, rig):
    """MEMCPY's first pass translates both legs in full; the destination's
    fault then goes through the same handling, reported to the model once."""
    dev, drv, spaces = nested
    seen = []
    rig.platform.ctx.add_fault_observer(seen.append)
    spaces[1]["pt"].unmap(DST + PAGE)
    rig.platform.ctx.iotlb_invalidate(dev.iommu.dev_id, 1)
    faults = rig.platform.ctx.stats()["faults"]
    await drv.run(0, desc(Opcode.MEMCPY, src=SRC, dst=DST, length=2 * PAGE, pasid=1,
                          completion=COMP))
    rec = drv.record(spaces[1]["comp"])
    assert (rec.status, rec.bytes_done, rec.fault_addr) == (CompletionStatus.PAGE_FAULT, PAGE,
                                                           DST + PAGE)
    [f] = seen
    assert (f.pasid, f.iova, f.stage) == (1, DST + PAGE, Stage.S1)
    assert rig.platform.ctx.stats()["faults"] == faults + 1
