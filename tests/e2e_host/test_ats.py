"""ATS: with the ATS capability enabled the device keeps a device TLB. It
differs from the IOMMU's IOTLB, keeps a stale translation after a PTE change
until the model sends a device-TLB invalidation, and dies with ATS."""

from __future__ import annotations

from vdma_harness import COMP, DST, PAGE, SRC, desc

from vuser.devices.dma_layout import CompletionStatus, DevtlbCtrl, Opcode, Reg
from vuser.iommu import Access


async def copy8(drv, pasid=1):
    await drv.run(0, desc(Opcode.MEMCPY, src=SRC, dst=DST, length=8, pasid=pasid,
                          completion=COMP))


async def test_device_tlb_differs_from_the_iotlb_and_stays_stale(nested, ram, rig):
    dev, drv, spaces = nested
    sp, ctx, dev_id = spaces[1], rig.platform.ctx, dev.iommu.dev_id
    await drv.enable_ats()
    ctx.iotlb_set_capacity(1)                        # a tiny IOTLB: the device TLB outlives it
    await copy8(drv)
    assert drv.record(sp["comp"]).status == CompletionStatus.SUCCESS
    cached = {(e.pasid, e.iova) for e in dev.devtlb.entries()}
    assert {(1, SRC), (1, DST), (1, COMP)} <= cached
    assert ctx.stats()["iotlb_entries"] == 1         # the IOMMU kept one of the three
    new = ram.alloc(PAGE)
    ram.write(new, b"new page")
    sp["pt"].map(SRC, new, PAGE)                     # PTE changed, nothing invalidated
    # The IOMMU walks again (its entry was evicted) and sees the new page...
    [seg] = ctx.translate(dev_id, 1, SRC, 8, Access.READ)
    assert seg.gpa == new
    # ...while the device uses its cached translation: the old page.
    await copy8(drv)
    assert ram.read(sp["dst"] + PAGE, 8) == ram.read(sp["src"], 8)
    # A device-TLB invalidation through the model (as for a PASID device-TLB
    # invalidation descriptor) drops that entry; the next copy sees the new page.
    ctx.iotlb_invalidate(dev_id, 1, SRC, 1, vpasid=True)
    assert (1, SRC) not in {(e.pasid, e.iova) for e in dev.devtlb.entries()}
    await copy8(drv)
    assert ram.read(sp["dst"] + PAGE, 8) == b"new page"


async def test_hwpt_invalidate_reaches_the_device_tlb(nested, ram, rig):
    dev, drv, spaces = nested
    sp, ctx = spaces[2], rig.platform.ctx
    await drv.enable_ats()
    await copy8(drv, pasid=2)
    new = ram.alloc(PAGE)
    ram.write(new, b"pasid 2!")
    sp["pt"].map(SRC, new, PAGE)
    await copy8(drv, pasid=2)
    assert ram.read(sp["dst"] + PAGE, 8) == ram.read(sp["src"], 8)      # stale
    ctx.hwpt_invalidate(sp["hwpt"], [{"addr": SRC, "npages": 1, "flags": 0}])
    await copy8(drv, pasid=2)
    assert ram.read(sp["dst"] + PAGE, 8) == b"pasid 2!"


async def test_without_ats_there_is_no_device_tlb(nested, rig):
    dev, drv, spaces = nested
    await copy8(drv)
    assert drv.record(spaces[1]["comp"]).status == CompletionStatus.SUCCESS
    assert len(dev.devtlb) == 0


async def test_flush_register_and_ats_disable_empty_the_device_tlb(nested):
    dev, drv, spaces = nested
    await drv.enable_ats()
    await copy8(drv)
    assert len(dev.devtlb) >= 3
    await drv.set_reg(Reg.DEVTLB_CTRL, DevtlbCtrl.FLUSH.mask)
    assert len(dev.devtlb) == 0 and await drv.reg(Reg.DEVTLB_CTRL) == 0
    await copy8(drv)
    assert len(dev.devtlb) >= 3
    await drv.enable_ats(False)
    assert len(dev.devtlb) == 0


async def test_host_unmap_flushes_the_device_tlb(nested, ram, rig):
    dev, drv, spaces = nested
    await drv.enable_ats()
    await copy8(drv)
    assert len(dev.devtlb) >= 3
    # QEMU takes a piece of RAM away (not the pages in use here): the model
    # flushes every stage-1 cache nested on the parent, device TLBs included.
    top = ram.gpa + ram.size - PAGE
    await drv.client.dma_unmap(top, PAGE)
    assert len(dev.devtlb) == 0
    await copy8(drv)
    assert drv.record(spaces[1]["comp"]).status == CompletionStatus.SUCCESS
