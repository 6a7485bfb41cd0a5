"""vuser-iommu event messages in a kernel-owned guest: with the function's MSI-X off,
fault, invalidation completion and page request events go out as a 4-byte
DMA_WRITE of DATA to UADDR:ADDR on the function's own connection (our client
plays QEMU and records them). IP/IM follow VT-d; Bus Master Enable gates the
write; addresses outside the MSI window are never written."""

from __future__ import annotations

import asyncio
import errno
import logging
import struct

import pytest

from vuser.devices.sample import SampleDevice
from vuser.devices.viommu import VECTOR_FAULT
from vuser.devices.vtd_layout import PRQ_ENTRY_SIZE, Ics, InvType, Prs, Reg, WaitDesc
from vuser.iommu import Access, Fault
from vuser.rpc import Service

from viommu_guest import P, Rig, _desc, _type, context_cache, pasid_cache, wait

LABEL = 0x0210
IOVA = 0x6000_0000
IM = 1 << 31
COMMAND = 4
MEM_BME = 0x0006          # Memory Space + Bus Master Enable
FE = (Reg.FECTL, 0x23, 0xFEE0_1004)
IE = (Reg.IECTL, 0x24, 0xFEE0_2004)
PE = (Reg.PECTL, 0x25, 0xFEE0_3004)


async def program(rig: Rig, ev: tuple[int, int, int], *, unmask: bool = True) -> None:
    """DATA and ADDR as the 6.1 driver's dmar_msi_write does, then FECTL/IECTL/PECTL."""
    ctl, data, addr = ev
    await rig.drv.write32(ctl + 4, data)
    await rig.drv.write32(ctl + 8, addr)
    await rig.drv.write32(ctl + 0xC, 0)
    await rig.drv.write32(ctl, 0 if unmask else IM)


async def bme(rig: Rig, on: bool) -> None:
    await rig.vc.region_write(7, COMMAND, struct.pack("<H", MEM_BME if on else 0x0002))


async def quiet(rig: Rig) -> None:
    """Let the vIOMMU's message tasks finish."""
    await asyncio.sleep(0.01)
    await asyncio.wait_for(rig.viommu.idle(), 10)


def fault(rig: Rig, pasid: int = 7) -> None:
    assert isinstance(rig.devices[LABEL].iommu.write(pasid, IOVA, b"x"), Fault)


@pytest.fixture
async def rig(tmp_path):
    r = Rig()
    await r.start(tmp_path, (LABEL,), lambda label: SampleDevice(label=label), msix=False)
    await r.drv.init(unmask=False)
    await r.drv.enable_translation()
    r.drv.context(LABEL)
    await r.drv.submit(context_cache())
    await bme(r, True)
    yield r
    await r.close()


async def test_fault_event_is_a_dword_write_of_fedata_to_feaddr(rig):
    await program(rig, FE)
    fault(rig)
    await rig.drv.until(lambda: rig.messages.writes, "the fault message")
    await quiet(rig)
    assert rig.messages.take() == [(0xFEE0_1004, 0x23)]
    assert not await rig.drv.event_pending(Reg.FECTL)
    assert [r.pasid for r in await rig.drv.faults()] == [7]
    assert rig.viommu.msi.sent == 1
    service = Service.for_platform(rig.platform)       # `vuser ctl stats` shows it
    try:
        counters = service.call(None, "counters", [])["devices"]
        assert counters[f"{rig.viommu.iommu.label:#x}"]["msi_sent"] == 1
    finally:
        service.close()


async def test_masked_event_stays_pending_and_unmasking_sends_it_once(rig):
    await program(rig, FE, unmask=False)
    fault(rig)
    fault(rig, 8)
    await quiet(rig)
    assert rig.messages.take() == [] and await rig.drv.event_pending(Reg.FECTL)
    await rig.drv.write32(Reg.FECTL, 0)
    await quiet(rig)
    assert rig.messages.take() == [(0xFEE0_1004, 0x23)]
    assert not await rig.drv.event_pending(Reg.FECTL)
    await rig.drv.write32(Reg.FECTL, 0)                # IP clear: nothing more
    await quiet(rig)
    assert rig.messages.take() == []


async def test_bus_master_clear_holds_the_message_until_bme_is_set(rig):
    await bme(rig, False)
    await program(rig, FE)
    fault(rig)
    await quiet(rig)
    assert rig.messages.take() == [] and await rig.drv.event_pending(Reg.FECTL)
    assert rig.viommu.msi.waited_for_bme == 1
    await bme(rig, True)
    await quiet(rig)
    assert rig.messages.take() == [(0xFEE0_1004, 0x23)]
    assert not await rig.drv.event_pending(Reg.FECTL)
    await bme(rig, True)                                # BME stays 1: no second message
    await quiet(rig)
    assert rig.messages.take() == []


@pytest.mark.parametrize("addr, uaddr", [(0, 0), (0xFED0_0000, 0), (0xFEF0_0000, 0),
                                         (0xFEE0_1004, 1)])
async def test_address_outside_the_msi_window_is_never_written(rig, addr, uaddr, caplog):
    await rig.drv.write32(Reg.FEDATA, 0x23)
    await rig.drv.write32(Reg.FEADDR, addr)
    await rig.drv.write32(Reg.FEUADDR, uaddr)
    with caplog.at_level(logging.WARNING, logger="vuser.devices.viommu_msi"):
        await rig.drv.write32(Reg.FECTL, 0)
        fault(rig)
        await quiet(rig)
    assert rig.messages.take() == []
    assert await rig.drv.event_pending(Reg.FECTL)
    assert rig.viommu.msi.outside_window == 1
    assert len([r for r in caplog.records if "outside the MSI window" in r.message]) == 1
    # programmed right and unmasked again, the pending event goes out
    await program(rig, FE)
    await quiet(rig)
    assert rig.messages.take() == [(0xFEE0_1004, 0x23)]


async def test_out_of_window_log_is_rate_limited(rig, caplog):
    await rig.drv.write32(Reg.FEADDR, 0x1000)
    fault(rig)                                          # pending while IM is set
    with caplog.at_level(logging.WARNING, logger="vuser.devices.viommu_msi"):
        for _ in range(150):
            await rig.drv.write32(Reg.FECTL, 0)        # IP set, IM clear: each write retries
    assert rig.viommu.msi.outside_window == 150
    assert len([r for r in caplog.records if "outside the MSI window" in r.message]) == 2


async def test_refused_write_leaves_the_event_pending_with_one_log_line(rig, caplog):
    rig.messages.refuse = errno.ENODEV
    with caplog.at_level(logging.WARNING, logger="vuser.devices.viommu_msi"):
        await program(rig, FE)
        fault(rig)
        await rig.drv.until(lambda: rig.messages.refused, "the refused message")
        await quiet(rig)
    assert rig.messages.refused == [(0xFEE0_1004, struct.pack("<I", 0x23))]
    assert await rig.drv.event_pending(Reg.FECTL)
    assert rig.viommu.msi.refused == 1
    assert len([r for r in caplog.records if "refused" in r.message]) == 1
    rig.messages.refuse = None
    await bme(rig, False)
    await bme(rig, True)                                # BME 0 -> 1: sent again
    await quiet(rig)
    assert rig.messages.take() == [(0xFEE0_1004, 0x23)]
    assert not await rig.drv.event_pending(Reg.FECTL)


async def test_msix_enabled_uses_the_vector_and_sends_no_message(tmp_path):
    r = Rig()
    await r.start(tmp_path, (LABEL,), lambda label: SampleDevice(label=label), msix=True)
    try:
        await r.drv.init(unmask=False)
        await r.drv.enable_translation()
        r.drv.context(LABEL)
        await r.drv.submit(context_cache())
        await bme(r, True)
        await program(r, FE)
        fault(r)
        await quiet(r)
        assert r.irq_count(VECTOR_FAULT) == 1
        assert r.messages.take() == [] and r.viommu.msi.sent == 0
    finally:
        await r.close()


async def test_invalidation_wait_with_if_sends_the_invalidation_event(rig):
    await program(rig, IE)
    status = rig.ram.alloc(P)
    await rig.drv.submit(wait(status, 5), irq=True)
    await quiet(rig)
    assert rig.messages.take() == [(0xFEE0_2004, 0x24)]
    assert Ics.IWC.get(await rig.drv.read32(Reg.ICS))
    assert not await rig.drv.event_pending(Reg.IECTL)


async def test_page_request_entry_is_in_guest_memory_before_the_message(rig):
    seen: list[bytes] = []
    prq = rig.drv.prq
    serve = rig.messages._serve_dma

    def snapshot(req):
        seen.append(rig.ram.read(prq, PRQ_ENTRY_SIZE))
        serve(req)
    rig.vc._serve_dma = snapshot
    await program(rig, PE)
    pt = rig.ram.page_tables()
    pt.map(IOVA + P, rig.ram.alloc(P), P)
    rig.drv.context(LABEL, pre=True)
    rig.drv.first_stage(LABEL, 1, pt)
    await rig.drv.submit(pasid_cache(1, did=1))
    assert rig.devices[LABEL].iommu.page_request(1, IOVA, Access.WRITE, 4, True, lambda c: None)
    await rig.drv.until(lambda: rig.messages.writes, "the page request message")
    await quiet(rig)
    assert rig.messages.take() == [(0xFEE0_3004, 0x25)]
    assert len(seen) == 1 and seen[0] != bytes(PRQ_ENTRY_SIZE)
    (pr,) = await rig.drv.page_requests()
    assert (pr.rid, pr.pasid, pr.addr, pr.prgi) == (LABEL, 1, IOVA, 4)


async def test_driver_that_never_enables_interrupts_loses_nothing(rig):
    """Events stay pending (IM set from reset), records and queue entries are kept."""
    pt = rig.ram.page_tables()
    pt.map(IOVA + P, rig.ram.alloc(P), P)
    rig.drv.context(LABEL, pre=True)
    rig.drv.first_stage(LABEL, 1, pt)
    await rig.drv.submit(pasid_cache(1, did=1))
    fault(rig, 9)
    assert rig.devices[LABEL].iommu.page_request(1, IOVA, Access.READ, 2, True, lambda c: None)
    await quiet(rig)
    assert rig.messages.take() == []
    assert await rig.drv.event_pending(Reg.FECTL) and await rig.drv.event_pending(Reg.PECTL)
    assert [r.pasid for r in await rig.drv.faults()] == [9]
    assert Prs.PPR.get(await rig.drv.read32(Reg.PRS))
    (pr,) = await rig.drv.page_requests()
    assert pr.prgi == 2


async def test_prq_drain_wait_descriptor_is_accepted(rig):
    """6.1's intel_svm_drain_prq: a fenced wait without status write, then one with
    PD set and a status write (VT-d §6.5.2.8); neither is an IQE."""
    status = rig.ram.alloc(P)
    fenced = _desc(_type(InvType.WAIT) | WaitDesc.pack(FN=1, STDATA=1))
    drain = _desc(_type(InvType.WAIT) | WaitDesc.pack(SW=1, PD=1, STDATA=0x77), status)
    before = rig.viommu.qi.processed
    await rig.drv.post(fenced, drain)
    await rig.drv.until(lambda: rig.viommu.qi.processed == before + 2, "both wait descriptors")
    assert rig.viommu.qi.errors == 0
    assert struct.unpack("<I", rig.ram.read(status, 4))[0] == 0x77
    assert not Prs.PRO.get(await rig.drv.read32(Reg.PRS))



async def test_reset_with_a_message_in_flight_does_not_wedge_the_event(rig):
    """DEVICE_RESET cancels the write task (maybe before it ran); later events still go out."""
    await program(rig, FE)
    fault(rig)
    assert rig.viommu.fault_event.in_flight
    rig.viommu.reset()              # DEVICE_RESET in the same turn: the task never ran
    await quiet(rig)
    rig.messages.take()
    assert not rig.viommu.fault_event.in_flight
    await rig.drv.init(unmask=False)
    await rig.drv.enable_translation()
    rig.drv.context(LABEL)
    await rig.drv.submit(context_cache())
    await bme(rig, True)
    await program(rig, FE)
    fault(rig)
    await rig.drv.until(lambda: rig.messages.writes, "the fault message after reset")
    assert rig.messages.take() == [(0xFEE0_1004, 0x23)]
