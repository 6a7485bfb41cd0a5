"""vuser-dma behind vuser-iommu, host side: our clients play QEMU for both functions
(one guest RAM memfd, DMA_MAPped to each), the test plays the guest: it writes the
VT-d tables and descriptors into the memfd and programs both devices' registers.

Nested PASID DMA, isolation with FRCD, stale IOTLB and device-TLB entries, the PRI
round trip through the PRQ, and a hostile guest, all through the vIOMMU's
registers (the vuser-dma harness is ``vdma_harness``; the VT-d driver is
tests/devices/viommu_guest.py).
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from vdma_harness import COMP, DST, PAGE, SRC, desc, eventually

from vuser.devices.dma_layout import CompletionStatus, DescFlags, FaultInfo, Opcode
from vuser.devices.viommu import VECTOR_FAULT, VECTOR_PAGE_REQUEST, VIommuDevice
from vuser.devices.vtd_layout import VtdFaultReason, Fsts, PasidQw0, Reg
from vuser.transport.client import Client
from vuser.transport.server import DeviceServer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "devices"))
from viommu_guest import (  # noqa: E402
    MessageRecorder, VtdDriver, page_response, pasid_cache, pdevtlb, piotlb, wait,
)

LABEL, BYSTANDER = 0x0100, 0x0208
BLOCK = DescFlags.COMPLETION | DescFlags.BLOCK_ON_FAULT
RID_COMPLETION = DescFlags.COMPLETION | DescFlags.COMPLETION_RID


@pytest.fixture
async def viommu(rig, ram, request):
    """A vuser-iommu on the rig's platform, connected like QEMU, queues set up
    (device options from an indirect parameter, if any)."""
    options = dict(getattr(request, "param", {}))
    msix = options.pop("msix", True)
    dev = VIommuDevice(**options)
    dev.join_platform(rig.platform)
    path = str(rig.tmp_path / "viommu.sock")
    server = DeviceServer(dev, path, name="vuser-iommu")
    await server.start()
    client = await Client.connect(path)
    await client.dma_map(ram.gpa, ram.size, fd=ram.fd, offset=ram.offset)
    messages = MessageRecorder(client)
    efds = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in range(3)]
    if msix:
        await client.set_irq_eventfds(2, efds)
    drv = VtdDriver(client, ram)
    await drv.init()

    def irq_count(vector: int) -> int:
        try:
            return os.eventfd_read(efds[vector])
        except BlockingIOError:
            return 0

    yield SimpleNamespace(dev=dev, drv=drv, irq_count=irq_count, client=client,
                          messages=messages)
    await client.close()
    await server.close()
    dev.close()
    for fd in efds:
        os.close(fd)


async def add_vdma(rig, ram, label: int, viommu, *, pri: bool = False, ats: bool = False):
    """A vuser-dma whose untagged DMA (rings) is pass-through via its RID_PASID entry."""
    dev = await rig.add(label=label)
    drv = await rig.connect(len(rig.devices) - 1, ram)
    await drv.setup()
    await drv.enable_pasid()
    if ats:
        await drv.enable_ats()
    if pri:
        await drv.enable_pri()
    viommu.drv.context(label, pre=pri, dte=ats)
    viommu.drv.pass_through(label, 0)
    return dev, drv


@pytest.fixture
async def vdma(rig, ram, viommu):
    dev, drv = await add_vdma(rig, ram, LABEL, viommu)
    await viommu.drv.enable_translation()
    return dev, drv


def pat(v: int) -> bytes:
    """What FILL writes in 8 bytes: the little-endian 64-bit pattern."""
    return v.to_bytes(8, "little")


def space(ram, vt, pasid: int, did: int = 1):
    """First-stage tables for ``pasid``: SRC, DST (pages swapped) and COMP mapped."""
    pt = ram.page_tables()
    src, dst, comp = ram.alloc(2 * PAGE), ram.alloc(2 * PAGE), ram.alloc(PAGE)
    pt.map(SRC, src, 2 * PAGE)
    pt.map(DST, dst + PAGE, PAGE)
    pt.map(DST + PAGE, dst, PAGE)
    pt.map(COMP, comp, PAGE)
    ram.write(src, os.urandom(2 * PAGE))
    vt.first_stage(LABEL, pasid, pt, did=did)
    return SimpleNamespace(pt=pt, src=src, dst=dst, comp=comp)


async def test_nested_pasid_dma_programmed_through_the_viommu(vdma, viommu, ram):
    dev, drv = vdma
    vt = viommu.drv
    spaces = {p: space(ram, vt, p, did=p) for p in (1, 2)}
    await vt.submit(pasid_cache(1, did=1), pasid_cache(2, did=2))
    n = 2 * PAGE - 200
    for pasid, sp in spaces.items():
        before = ram.snapshot()
        await drv.run(0, desc(Opcode.MEMCPY, src=SRC + 100, dst=DST + 100, length=n,
                              pasid=pasid, completion=COMP + 32))
        rec = drv.record(sp.comp + 32)
        assert rec.status == CompletionStatus.SUCCESS and rec.bytes_done == n
        data = ram.read(sp.src + 100, n)
        first = PAGE - 100
        # stage 1: DST+100 is GPA dst+PAGE+100, DST+PAGE is GPA dst ...
        assert ram.read(sp.dst + PAGE + 100, first) == data[:first]
        assert ram.read(sp.dst, n - first) == data[first:]
        # ... stage 2: GPA g is file byte g - gpa + offset
        assert os.pread(ram.fd, first, ram.file_offset(sp.dst + PAGE + 100)) == data[:first]
        drv.assert_only_written(before, (sp.dst, 2 * PAGE), (sp.comp + 32, 32),
                                *((t, n) for t, n in vt_tables(vt)))
    assert ram.read(spaces[1].dst + PAGE + 100, 64) != ram.read(spaces[2].dst + PAGE + 100, 64)
    assert await vt.faults() == []


@pytest.mark.parametrize("viommu", [{"cm": "0"}], indirect=True)
async def test_cm0_descriptor_dma_fetches_entries_on_demand(vdma, viommu, ram):
    """CM=0: the engine's DMA (rings through RID_PASID, data through PASID 1) finds
    entries the guest wrote without any invalidation; a changed entry is used only
    after its PASID-cache invalidation."""
    dev, drv = vdma
    vt = viommu.drv
    sp = space(ram, vt, 1, did=1)
    await drv.run(0, desc(Opcode.MEMCPY, src=SRC, dst=DST, length=64, pasid=1,
                          completion=COMP))
    assert drv.record(sp.comp).status == CompletionStatus.SUCCESS
    assert ram.read(sp.dst + PAGE, 64) == ram.read(sp.src, 64)
    sp2 = space(ram, vt, 1, did=1)                      # new tables, not invalidated
    await drv.run(0, desc(Opcode.FILL, dst=DST, length=64, pasid=1, pattern=0x11,
                          completion=COMP))
    assert drv.record(sp.comp).status == CompletionStatus.SUCCESS
    assert ram.read(sp.dst + PAGE, 8) == pat(0x11) and ram.read(sp2.dst + PAGE, 8) != pat(0x11)
    await vt.submit(pasid_cache(1, did=1), piotlb(1, did=1))
    await drv.run(0, desc(Opcode.FILL, dst=DST, length=64, pasid=1, pattern=0x22,
                          completion=COMP))
    assert drv.record(sp2.comp).status == CompletionStatus.SUCCESS
    assert ram.read(sp2.dst + PAGE, 8) == pat(0x22)
    assert await vt.faults() == []


def vt_tables(vt) -> list[tuple[int, int]]:
    """Guest RAM the VT-d driver writes (queues, status, tables): allowed to change."""
    return [(vt.iq, PAGE << vt.qs), (vt.status, PAGE), (vt.prq, PAGE << vt.pqs)]


async def test_isolation_unattached_pasid(vdma, viommu, ram):
    dev, drv = vdma
    vt = viommu.drv
    space(ram, vt, 1)
    await vt.submit(pasid_cache(1, did=1))
    comp = drv.completion()
    before = ram.snapshot()
    await drv.run(0, desc(Opcode.FILL, dst=DST + 0x40, length=256, pasid=7, pattern=0x5A,
                          completion=comp, flags=RID_COMPLETION))
    rec = drv.record(comp)
    assert rec.status == CompletionStatus.PAGE_FAULT and rec.bytes_done == 0
    assert rec.fault_addr == DST + 0x40 and rec.fault_info & FaultInfo.WRITE
    drv.assert_only_written(before, (comp, 32), *vt_tables(vt))
    (f,) = await vt.faults()
    assert (f.sid, f.pasid, f.reason, f.addr, f.write) == (LABEL, 7, VtdFaultReason.PASID_P,
                                                           DST, True)
    assert Fsts.PPF.get(await vt.fsts())
    assert viommu.irq_count(VECTOR_FAULT) == 1


async def test_stale_translation_until_pasid_iotlb_invalidation(vdma, viommu, ram):
    dev, drv = vdma
    vt = viommu.drv
    sp = space(ram, vt, 1, did=3)
    await vt.submit(pasid_cache(1, did=3))
    fresh = ram.alloc(PAGE)
    await drv.run(0, desc(Opcode.FILL, dst=DST, length=8, pasid=1, pattern=1, completion=COMP))
    sp.pt.map(DST, fresh, PAGE)                 # retarget DST's page: no invalidation yet
    await drv.run(0, desc(Opcode.FILL, dst=DST, length=8, pasid=1, pattern=2, completion=COMP))
    assert ram.read(sp.dst + PAGE, 8) == pat(2) and ram.read(fresh, 8) == bytes(8)
    await vt.submit(piotlb(1, did=3, addr=DST, am=0))
    await drv.run(0, desc(Opcode.FILL, dst=DST, length=8, pasid=1, pattern=3, completion=COMP))
    assert ram.read(fresh, 8) == pat(3) and ram.read(sp.dst + PAGE, 8) == pat(2)


async def test_stale_device_tlb_until_pasid_device_tlb_invalidation(rig, ram, viommu):
    """Two caches, two descriptors: the IOTLB flush leaves the ATS cache stale."""
    dev, drv = await add_vdma(rig, ram, LABEL, viommu, ats=True)
    vt = viommu.drv
    await vt.enable_translation()
    sp = space(ram, vt, 1)
    await vt.submit(pasid_cache(1, did=1))
    fresh = ram.alloc(PAGE)
    await drv.run(0, desc(Opcode.FILL, dst=DST, length=8, pasid=1, pattern=1, completion=COMP))
    assert dev.devtlb.lookup(1, DST) is not None          # cached by the device (ATS)
    sp.pt.map(DST, fresh, PAGE)
    await drv.run(0, desc(Opcode.FILL, dst=DST, length=8, pasid=1, pattern=2, completion=COMP))
    assert ram.read(sp.dst + PAGE, 8) == pat(2) and ram.read(fresh, 8) == bytes(8)
    # The PASID-IOTLB invalidation flushes the IOMMU's IOTLB, not the device's
    # TLB: the device keeps writing the old page (VT-d §6.5.2.4).
    await vt.submit(piotlb(1, did=1, addr=DST, am=0))
    assert dev.devtlb.lookup(1, DST) is not None
    await drv.run(0, desc(Opcode.FILL, dst=DST, length=8, pasid=1, pattern=4, completion=COMP))
    assert ram.read(sp.dst + PAGE, 8) == pat(4) and ram.read(fresh, 8) == bytes(8)
    await vt.submit(pdevtlb(LABEL, 1, DST))
    assert dev.devtlb.lookup(1, DST) is None
    await drv.run(0, desc(Opcode.FILL, dst=DST, length=8, pasid=1, pattern=3, completion=COMP))
    assert ram.read(fresh, 8) == pat(3)


@pytest.fixture
async def pri(rig, ram, viommu):
    dev, drv = await add_vdma(rig, ram, LABEL, viommu, pri=True)
    vt = viommu.drv
    await vt.enable_translation()
    pt = ram.page_tables()
    src, comp = ram.alloc(PAGE), ram.alloc(PAGE)
    pt.map(SRC, src, PAGE)
    pt.map(COMP, comp, PAGE)
    ram.write(src, b"paged in")
    vt.first_stage(LABEL, 1, pt)
    await vt.submit(pasid_cache(1, did=1))
    return dev, drv, vt, pt, comp


async def test_pri_round_trip_through_the_prq(pri, viommu, ram):
    dev, drv, vt, pt, comp = pri
    await drv.submit(0, desc(Opcode.MEMCPY, src=SRC, dst=DST + 16, length=8, pasid=1,
                             completion=COMP, flags=BLOCK))
    await eventually(lambda: viommu.dev.prq.written == 1, "a page request in the PRQ")
    (req,) = await vt.page_requests()
    assert (req.rid, req.pasid, req.addr, req.write, req.last) == (LABEL, 1, DST, True, True)
    assert viommu.irq_count(VECTOR_PAGE_REQUEST) == 1
    assert drv.record(comp).status == CompletionStatus.NONE      # held
    page = ram.alloc(PAGE)
    pt.map(DST, page, PAGE)                                        # the guest pages it in
    await vt.submit(page_response(req.rid, req.pasid, req.prgi, 0))
    await asyncio.wait_for(dev.idle(), 10)
    assert drv.record(comp).status == CompletionStatus.SUCCESS
    assert ram.read(page + 16, 8) == b"paged in"
    assert await vt.faults() == []              # the fault was claimed by the request


@pytest.mark.parametrize("viommu", [{"cm": "0", "msix": False}], indirect=True)
async def test_kernel_style_page_request_message_then_response(rig, ram, viommu):
    """As the guest kernel owns the unit: CM=0 (no invalidation after writing the
    entry), MSI-X off, Bus Master Enable set, PECTL programmed. The fault becomes a
    page request in the PRQ, then the page request message (PEDATA to PEADDR) goes
    out; the "handler" pages the buffer in and answers; the descriptor completes."""
    dev, drv = await add_vdma(rig, ram, LABEL, viommu, pri=True)
    vt = viommu.drv
    await viommu.client.region_write(7, 4, (0x0006).to_bytes(2, "little"))   # MEM + BME
    await vt.write32(Reg.PEDATA, 0x41)
    await vt.write32(Reg.PEADDR, 0xFEE0_0000)
    await vt.write32(Reg.PEUADDR, 0)
    await vt.write32(Reg.PECTL, 0)
    await vt.enable_translation()
    pt = ram.page_tables()
    src, comp = ram.alloc(PAGE), ram.alloc(PAGE)
    pt.map(SRC, src, PAGE)
    pt.map(COMP, comp, PAGE)
    ram.write(src, b"paged in")
    vt.first_stage(LABEL, 1, pt)                                   # no invalidation: CM=0
    queued_at_message: list[int] = []
    serve = viommu.messages._serve_dma

    def record(req):
        queued_at_message.append(viommu.dev.prq.written)
        serve(req)
    viommu.client._serve_dma = record
    await drv.submit(0, desc(Opcode.MEMCPY, src=SRC, dst=DST + 16, length=8, pasid=1,
                             completion=COMP, flags=BLOCK))
    await eventually(lambda: viommu.messages.writes, "the page request message")
    assert viommu.messages.take() == [(0xFEE0_0000, 0x41)] and queued_at_message == [1]
    (req,) = await vt.page_requests()
    assert (req.rid, req.pasid, req.addr, req.write) == (LABEL, 1, DST, True)
    page = ram.alloc(PAGE)
    pt.map(DST, page, PAGE)
    await vt.submit(page_response(req.rid, req.pasid, req.prgi, 0))
    await asyncio.wait_for(dev.idle(), 10)
    assert drv.record(comp).status == CompletionStatus.SUCCESS
    assert ram.read(page + 16, 8) == b"paged in"
    assert await vt.faults() == []


async def test_pri_invalid_response_fails_the_descriptor(pri, viommu, ram):
    dev, drv, vt, pt, comp = pri
    await drv.submit(0, desc(Opcode.FILL, dst=DST, length=64, pasid=1, pattern=7,
                             completion=COMP, flags=BLOCK))
    await eventually(lambda: viommu.dev.prq.written == 1, "a page request in the PRQ")
    (req,) = await vt.page_requests()
    await vt.submit(page_response(req.rid, req.pasid, req.prgi, 1))
    await asyncio.wait_for(dev.idle(), 10)
    rec = drv.record(comp)
    assert rec.status == CompletionStatus.PAGE_FAULT and rec.fault_addr == DST


async def test_hostile_guest_does_not_stop_the_other_device(rig, ram, viommu, caplog):
    """A PASID entry with reserved bits and a queue of garbage for one device; the
    other vuser-dma keeps copying and the vIOMMU keeps answering."""
    victim, vdrv = await add_vdma(rig, ram, LABEL, viommu)
    other, odrv = await add_vdma(rig, ram, BYSTANDER, viommu)
    vt = viommu.drv
    await vt.enable_translation()
    space(ram, vt, 1)
    pe = vt.pasid_entry_addr(LABEL, 1)
    ram.write(pe, (int.from_bytes(ram.read(pe, 8), "little")
                   | PasidQw0.SSADE.mask | (1 << 11)).to_bytes(8, "little"))
    await vt.submit(pasid_cache(1, did=1))
    comp = vdrv.completion()
    await vdrv.run(0, desc(Opcode.MEMCPY, src=SRC, dst=DST, length=64, pasid=1,
                           completion=comp, flags=RID_COMPLETION))
    assert vdrv.record(comp).status == CompletionStatus.PAGE_FAULT
    (f,) = await vt.faults()
    assert (f.sid, f.pasid, f.reason) == (LABEL, 1, VtdFaultReason.PASID_RSVD)
    # the invalidation queue, filled with garbage
    rnd = random.Random(5)
    ram.write(vt.iq, rnd.randbytes(PAGE))
    await vt.write64(Reg.IQT, PAGE - 32)
    src, dst = ram.alloc(PAGE), ram.alloc(PAGE)
    ram.write(src, b"still copying")
    for _ in range(20):
        rec = await odrv.memcpy(0, src, dst, 13)
        assert rec.status == CompletionStatus.SUCCESS
        await asyncio.sleep(0)
    assert ram.read(dst, 13) == b"still copying"
    await asyncio.wait_for(viommu.dev.idle(), 10)
    assert Fsts.IQE.get(await vt.fsts())
    head = await vt.read64(Reg.IQH)
    ram.write(vt.iq + head, wait())
    await vt.write32(Reg.FSTS, Fsts.IQE.mask)          # resumes: more garbage, more IQE
    await asyncio.wait_for(viommu.dev.idle(), 10)
    assert await vt.read32(Reg.VER) == 0x30
    assert not [r for r in caplog.records if r.levelno >= 40]
