"""vuser-iommu queued invalidation: processing off the IQT write, wait descriptors,
and every way a descriptor stops the queue with IQE (and how it resumes)."""

from __future__ import annotations

import asyncio
import struct

import pytest

from vuser.devices.sample import SampleDevice
from vuser.devices.viommu import VECTOR_FAULT, VECTOR_INVALIDATION
from vuser.devices.viommu_qi import BATCH, devtlb_range
from vuser.devices.vtd_layout import (
    Fsts, Gcmd, Ics, InvType, Iqa, Iqei, Iqercd, PcDesc, Reg, WaitDesc,
)

from viommu_guest import P, Rig, _desc, _type, pasid_cache, piotlb, wait

LABEL = 0x0420


@pytest.fixture
async def rig(tmp_path):
    r = Rig()
    await r.start(tmp_path, (LABEL,), lambda label: SampleDevice(label=label))
    await r.drv.init()
    yield r
    await r.close()


async def iqe(rig: Rig) -> int:
    """Wait for the queue task to stop; the IQEI code (asserting IQE is set)."""
    await rig.drv.queue_idle(rig.viommu)
    assert Fsts.IQE.get(await rig.drv.fsts()), "IQE not set"
    return Iqercd.IQEI.get(await rig.drv.read64(Reg.IQERCD))


def test_device_tlb_size_encoding():
    assert devtlb_range(0x1234_5000, False) == (0x1234_5000, 1)
    assert devtlb_range(0x1234_4000, True) == (0x1234_4000, 2)       # bit 12 clear: 2 pages
    assert devtlb_range(0x1234_5000, True) == (0x1234_4000, 4)       # bit 12 set, 13 clear
    assert devtlb_range(0x1234_7000, True) == (0x1234_0000, 16)      # bits 14:12 set, 15 clear
    assert devtlb_range(0x7FFF_FFFF_FFFF_F000, True) == (0, (1 << 64) - 1)


async def test_iqt_write_returns_before_processing(rig):
    """The MMIO handler only schedules: IQH moves once the device task runs."""
    vi, drv, ram = rig.viommu, rig.drv, rig.ram
    await drv.resize_queue(2)
    for i in range(3 * BATCH):
        ram.write(drv.iq + i * 32, piotlb(1))
    vi.region_write(0, Reg.IQT, struct.pack("<Q", 3 * BATCH * 32))
    assert vi.regs.get(Reg.IQH) == 0 and vi.qi.running and vi.qi.processed == 0
    await asyncio.wait_for(vi.idle(), 10)
    assert vi.qi.processed == 3 * BATCH
    assert await drv.read64(Reg.IQH) == 3 * BATCH * 32


async def test_queue_yields_every_batch(rig):
    vi, drv, ram = rig.viommu, rig.drv, rig.ram
    await drv.resize_queue(2)
    n = 3 * BATCH + 5
    for i in range(n):
        ram.write(drv.iq + i * 32, piotlb(2))
    vi.region_write(0, Reg.IQT, struct.pack("<Q", n * 32))
    await asyncio.sleep(0)
    assert vi.qi.processed == BATCH
    await asyncio.wait_for(vi.idle(), 10)
    assert vi.qi.processed == n


async def test_wait_descriptor_status_and_completion_interrupt(rig):
    drv, ram = rig.drv, rig.ram
    status = ram.alloc(P)
    await drv.submit(wait(status, 0xABCD), irq=True)
    assert struct.unpack("<I", ram.read(status, 4))[0] == 0xABCD
    assert Ics.IWC.get(await drv.read32(Reg.ICS))
    assert rig.irq_count(VECTOR_INVALIDATION) == 1
    await drv.submit(irq=True)                       # IWC still set: no new interrupt
    assert rig.irq_count(VECTOR_INVALIDATION) == 0
    await drv.write32(Reg.ICS, Ics.IWC.mask)
    await drv.submit(irq=True)
    assert rig.irq_count(VECTOR_INVALIDATION) == 1
    # masked: IP stays pending until IM is cleared
    await drv.write32(Reg.ICS, Ics.IWC.mask)
    await drv.write32(Reg.IECTL, 1 << 31)
    await drv.submit(irq=True)
    assert rig.irq_count(VECTOR_INVALIDATION) == 0 and await drv.event_pending(Reg.IECTL)
    await drv.write32(Reg.IECTL, 0)
    assert rig.irq_count(VECTOR_INVALIDATION) == 1


@pytest.mark.parametrize("desc, code", [
    (_desc(0), Iqei.INVALID_TYPE),
    (_desc(_type(InvType.INT_ENTRY_CACHE)), Iqei.INVALID_TYPE),
    (_desc(_type(12)), Iqei.INVALID_TYPE),
    (_desc(_type(InvType.PASID_CACHE) | PcDesc.pack(G=2)), Iqei.RESERVED_FIELD),
    (_desc(_type(InvType.PASID_IOTLB) | PcDesc.pack(G=0)), Iqei.RESERVED_FIELD),
    (_desc(_type(InvType.IOTLB)), Iqei.RESERVED_FIELD),                 # G = 0
    (_desc(_type(InvType.PASID_CACHE) | (1 << 63)), Iqei.RESERVED_FIELD),
    (_desc(_type(InvType.PASID_CACHE), 1), Iqei.RESERVED_FIELD),       # qw1 reserved
    (_desc(_type(InvType.WAIT) | WaitDesc.pack(SW=1), 0x4000_0000_0000), Iqei.NOT_AVAILABLE),
    (piotlb(1, addr=0, am=40), Iqei.RESERVED_FIELD),                  # AM above MAMV
])
async def test_bad_descriptor_sets_iqe_and_stops_the_queue(rig, desc, code):
    drv, ram = rig.drv, rig.ram
    status = ram.alloc(P)
    await drv.post(piotlb(1), desc, wait(status, 7))
    assert await iqe(rig) == code
    assert await drv.read64(Reg.IQH) == 32          # stopped on the bad descriptor
    assert ram.read(status, 4) == bytes(4)           # nothing after it ran
    assert rig.irq_count(VECTOR_FAULT) == 1
    # the driver replaces the bad descriptor and clears IQE: fetching resumes at IQH
    ram.write(drv.iq + 32, pasid_cache())
    await drv.write32(Reg.FSTS, Fsts.IQE.mask)
    await drv.until(lambda: struct.unpack("<I", ram.read(status, 4))[0] == 7, "resume")
    assert not Fsts.IQE.get(await drv.fsts())


async def test_queue_register_errors(rig):
    drv = rig.drv
    # tail not 256-bit aligned
    await drv.write64(Reg.IQT, 0x10)
    assert await iqe(rig) == Iqei.TAIL_MISALIGNED
    await drv.write64(Reg.IQT, 0)
    await drv.write32(Reg.FSTS, Fsts.IQE.mask)
    # tail beyond a one-page queue
    await drv.write64(Reg.IQT, P + 0x40)
    assert await iqe(rig) == Iqei.TAIL_BEYOND_QUEUE
    await drv.write64(Reg.IQT, 0)
    await drv.write32(Reg.FSTS, Fsts.IQE.mask)
    # 128-bit descriptors are not supported
    await drv.write64(Reg.IQA, drv.iq)
    await drv.write64(Reg.IQT, 0x20)
    assert await iqe(rig) == Iqei.INVALID_WIDTH
    await drv.write64(Reg.IQT, 0)
    await drv.write32(Reg.FSTS, Fsts.IQE.mask)
    # the queue outside guest RAM
    await drv.write64(Reg.IQA, 0x7000_0000_0000 | Iqa.DW.mask)
    await drv.write64(Reg.IQT, 0x20)
    assert await iqe(rig) == Iqei.FETCH_ERROR


async def test_qi_disabled_ignores_the_tail_and_enable_resets_head(rig):
    drv, ram = rig.drv, rig.ram
    await drv.gcmd(clear_bits=Gcmd.QIE.mask)
    assert not Gcmd.QIE.get(await drv.read32(Reg.GSTS))
    status = ram.alloc(P)
    ram.write(drv.iq, wait(status, 5))
    await drv.write64(Reg.IQT, 32)
    await drv.queue_idle(rig.viommu)
    assert ram.read(status, 4) == bytes(4)
    await drv.gcmd(Gcmd.QIE.mask)
    await drv.until(lambda: struct.unpack("<I", ram.read(status, 4))[0] == 5, "enable")
    assert await drv.read64(Reg.IQH) == 32


async def test_register_based_invalidation_completes_at_once(rig):
    drv = rig.drv
    await drv.write64(Reg.CCMD, (1 << 63) | (1 << 61))      # ICC, global
    ccmd = await drv.read64(Reg.CCMD)
    assert not ccmd >> 63 and (ccmd >> 59) & 3 == 1
    await drv.write64(Reg.IOTLB, (1 << 63) | (1 << 60))     # IVT, global
    iotlb = await drv.read64(Reg.IOTLB)
    assert not iotlb >> 63 and (iotlb >> 57) & 3 == 1


async def test_misaligned_or_odd_sized_register_access_is_einval(rig):
    from vuser.transport.client import VfioUserError
    for off, n in ((Reg.GSTS + 1, 4), (Reg.CAP, 2), (Reg.IQT + 4, 8)):
        with pytest.raises(VfioUserError):
            await rig.vc.region_read(0, off, n)
    assert await rig.drv.read32(Reg.VER) == 0x30
