"""Queued invalidation: the invalidation queue and its descriptors (VT-d §6.5.2).

A write to IQT (with GSTS.QIES set and no IQE pending) starts
``InvalidationQueue.run`` as a device task; the MMIO write returns at once.
The task fetches 256-bit descriptors from IQH up to IQT through the VM's
stage 2, validates each one completely, hands it to the ``Invalidator`` and
only then advances IQH. It yields to the event loop every ``BATCH``
descriptors, so a queue full of work does not stall other devices.

A bad descriptor stops the queue as on hardware (§6.5.2.10): FSTS.IQE is set
(a fault event), IQERCD.IQEI says why, and IQH stays on the offending
descriptor. Clearing IQE (write 1) resumes fetching at IQH. Errors:

- IQA.DW = 0 (128-bit descriptors are not supported): INVALID_WIDTH;
- IQT not 256-bit aligned: TAIL_MISALIGNED; IQT beyond the queue:
  TAIL_BEYOND_QUEUE;
- the descriptor cannot be read: FETCH_ERROR;
- type 0, 4 (interrupt entry cache: no interrupt remapping) or above 9:
  INVALID_TYPE;
- a reserved field set, a reserved granularity, an address mask above
  CAP.MAMV: RESERVED_FIELD;
- a wait descriptor whose status write fails: NOT_AVAILABLE.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from vuser import ratelimit
from vuser.backend import DmaError
from vuser.wire import BitLayout

from .viommu_faults import FaultRecorder
from .viommu_regs import MAMV, RegisterBank
from .vtd_layout import (
    IQ_ENTRY_SIZE, CcDesc, DevTlbAddr, DevTlbDesc, Fsts, Gcmd, InvDesc, InvType, IotlbAddr,
    IotlbDesc, Iqa, Iqei, Iqercd, Iqh, PcDesc, PdevTlbAddr, PdevTlbDesc, PgrespDesc,
    PgrespQw1, PiotlbDesc, Reg, WaitAddr, WaitDesc, inv_type, reserved,
)

log = logging.getLogger(__name__)

__all__ = ["InvalidationQueue", "Invalidator", "devtlb_range", "BATCH", "ALL_ADDRESSES"]

#: Descriptors processed between two yields to the event loop.
BATCH = 64
#: ``npages`` meaning every address (the model's U64_MAX).
ALL_ADDRESSES = (1 << 64) - 1

ReadFn = Callable[[int, int], bytes]

_LAYOUTS: dict[int, tuple[type[BitLayout], type[BitLayout] | None]] = {
    InvType.CONTEXT_CACHE: (CcDesc, None),
    InvType.IOTLB: (IotlbDesc, IotlbAddr),
    InvType.DEVICE_TLB: (DevTlbDesc, DevTlbAddr),
    InvType.WAIT: (WaitDesc, WaitAddr),
    InvType.PASID_IOTLB: (PiotlbDesc, IotlbAddr),
    InvType.PASID_CACHE: (PcDesc, None),
    InvType.PASID_DEVICE_TLB: (PdevTlbDesc, PdevTlbAddr),
    InvType.PAGE_GROUP_RESPONSE: (PgrespDesc, PgrespQw1),
}
#: Granularities each type accepts (the others are reserved).
_GRANULARITY = {
    InvType.CONTEXT_CACHE: (1, 2, 3),
    InvType.IOTLB: (1, 2, 3),
    InvType.PASID_IOTLB: (2, 3),
    InvType.PASID_CACHE: (0, 1, 3),
}


class Invalidator(Protocol):
    """What each descriptor asks of the vIOMMU. ``pasid`` None: the RID;
    ``"all"``: every PASID. ``npages`` ``ALL_ADDRESSES``: every address."""

    def context_cache(self, g: int, did: int, sid: int, fm: int) -> None: ...

    def iotlb(self, g: int, did: int, addr: int, npages: int) -> None: ...

    def pasid_iotlb(self, g: int, did: int, pasid: int, addr: int, npages: int) -> None: ...

    def pasid_cache(self, g: int, did: int, pasid: int) -> None: ...

    def device_tlb(self, sid: int, pasid: int | None | str, addr: int, npages: int) -> None: ...

    def wait(self, status: tuple[int, int] | None, interrupt: bool) -> bool: ...

    def page_response(self, rid: int, pasid: int | None, prgi: int, code: int) -> None: ...


def devtlb_range(qw1_addr: int, size: bool) -> tuple[int, int]:
    """``(addr, npages)`` of a device-TLB invalidation (§6.5.2.5, S bit).

    With S set, the lowest zero bit of ADDR[63:12] at position ``k`` (above
    bit 12) encodes a range of 2^(k+1) pages aligned to its size.
    """
    page = qw1_addr >> 12
    if not size:
        return page << 12, 1
    k = 0
    while k < 52 and (page >> k) & 1:
        k += 1
    if k >= 51:
        return 0, ALL_ADDRESSES
    n = 1 << (k + 1)
    return (page & ~(n - 1)) << 12, n


class InvalidationQueue:
    """The invalidation queue of one vIOMMU (see the module doc)."""

    def __init__(self, regs: RegisterBank, faults: FaultRecorder, handler: Invalidator,
                 spawn: Callable[[Coroutine[Any, Any, None]], object]) -> None:
        self.regs, self.faults, self.handler, self.spawn = regs, faults, handler, spawn
        self.read: ReadFn | None = None
        self.running = False
        self.processed = 0
        self.errors = 0

    # -- control ------------------------------------------------------------------
    def enabled(self) -> bool:
        return bool(Gcmd.QIE.get(self.regs.get(Reg.GSTS)))

    def kick(self) -> None:
        """IQT written, QI enabled or IQE cleared: process if there is work."""
        if self.running or not self.enabled() or Fsts.IQE.get(self.regs.get(Reg.FSTS)):
            return
        if self._offset(Reg.IQH) == self._offset(Reg.IQT):
            return
        self.running = True
        try:
            self.spawn(self.run())
        except Exception:
            self.running = False
            raise

    async def run(self) -> None:
        try:
            n = 0
            while self.step():
                n += 1
                if n % BATCH == 0:
                    await asyncio.sleep(0)
        finally:
            self.running = False

    def _offset(self, reg: int) -> int:
        return self.regs.get(reg) & Iqh.QH.mask

    # -- one descriptor -----------------------------------------------------------------
    def step(self) -> bool:
        """Process the descriptor at IQH; False when the queue is empty or stopped."""
        if not self.enabled() or Fsts.IQE.get(self.regs.get(Reg.FSTS)):
            return False
        head, tail = self._offset(Reg.IQH), self._offset(Reg.IQT)
        if head == tail:
            return False
        iqa = self.regs.get(Reg.IQA)
        size = 4096 << Iqa.QS.get(iqa)
        if not Iqa.DW.get(iqa):
            return self._error(Iqei.INVALID_WIDTH)
        if tail % IQ_ENTRY_SIZE:
            return self._error(Iqei.TAIL_MISALIGNED)
        if tail >= size:
            return self._error(Iqei.TAIL_BEYOND_QUEUE)
        if head >= size or head % IQ_ENTRY_SIZE:
            head = 0  # the queue shrank under us: start over, as after enabling
        raw = self._fetch((iqa & Iqa.IQA.mask) + head)
        if raw is None:
            return self._error(Iqei.FETCH_ERROR)
        try:
            err = self.dispatch(InvDesc.unpack(raw))
        except Exception:  # our bug, not the guest's: stop the queue, keep serving
            log.exception("vIOMMU: descriptor at IQH %#x crashed the handler", head)
            err = Iqei.NOT_AVAILABLE
        if err is not None:
            return self._error(err)
        self.regs.set(Reg.IQH, (head + IQ_ENTRY_SIZE) % size)
        self.processed += 1
        return True

    def _fetch(self, addr: int) -> bytes | None:
        if self.read is None:
            return None
        try:
            data = self.read(addr, IQ_ENTRY_SIZE)
        except (DmaError, ValueError, OverflowError) as e:
            ratelimit.log(log, logging.INFO, "vIOMMU: invalidation descriptor fetch at %#x failed: %s",
                          addr, e)
            return None
        return data if len(data) == IQ_ENTRY_SIZE else None

    def _error(self, iqei: int) -> bool:
        self.errors += 1
        self.regs.set(Reg.IQERCD, Iqercd.pack(IQEI=int(iqei)))
        ratelimit.log(log, logging.INFO, "vIOMMU: invalidation queue error %s at IQH %#x",
                      Iqei(iqei).name, self._offset(Reg.IQH))
        self.faults.set_status(Fsts.IQE.mask)
        return False

    def dispatch(self, d: InvDesc) -> int | None:
        """Validate and perform one descriptor; the IQEI code when it is bad."""
        t = inv_type(d.qw0)
        layouts = _LAYOUTS.get(t)
        if layouts is None:
            return Iqei.INVALID_TYPE
        l0, l1 = layouts
        if reserved(l0, d.qw0) or (d.qw1 if l1 is None else reserved(l1, d.qw1)) \
                or d.qw2 or d.qw3:
            return Iqei.RESERVED_FIELD
        g = getattr(l0, "G", None)
        if g is not None and t in _GRANULARITY and g.get(d.qw0) not in _GRANULARITY[t]:
            return Iqei.RESERVED_FIELD
        h = self.handler
        if t == InvType.CONTEXT_CACHE:
            h.context_cache(CcDesc.G.get(d.qw0), CcDesc.DID.get(d.qw0), CcDesc.SID.get(d.qw0),
                            CcDesc.FM.get(d.qw0))
        elif t in (InvType.IOTLB, InvType.PASID_IOTLB):
            am = IotlbAddr.AM.get(d.qw1)
            gran = IotlbDesc.G.get(d.qw0)
            if gran == 3 and am > MAMV:
                return Iqei.RESERVED_FIELD
            addr, npages = 0, ALL_ADDRESSES
            if gran == 3:
                npages = 1 << am
                addr = (d.qw1 & IotlbAddr.ADDR.mask) & ~((npages << 12) - 1)
            if t == InvType.IOTLB:
                h.iotlb(gran, IotlbDesc.DID.get(d.qw0), addr, npages)
            else:
                h.pasid_iotlb(gran, PiotlbDesc.DID.get(d.qw0), PiotlbDesc.PASID.get(d.qw0),
                              addr, npages)
        elif t == InvType.PASID_CACHE:
            h.pasid_cache(PcDesc.G.get(d.qw0), PcDesc.DID.get(d.qw0), PcDesc.PASID.get(d.qw0))
        elif t == InvType.DEVICE_TLB:
            addr, npages = devtlb_range(d.qw1 & DevTlbAddr.ADDR.mask,
                                        bool(DevTlbAddr.S.get(d.qw1)))
            h.device_tlb(DevTlbDesc.SID.get(d.qw0), None, addr, npages)
        elif t == InvType.PASID_DEVICE_TLB:
            addr, npages = devtlb_range(d.qw1 & PdevTlbAddr.ADDR.mask,
                                        bool(PdevTlbAddr.S.get(d.qw1)))
            pasid: int | str = "all" if PdevTlbAddr.G.get(d.qw1) else PdevTlbDesc.PASID.get(d.qw0)
            h.device_tlb(PdevTlbDesc.SID.get(d.qw0), pasid, addr, npages)
        elif t == InvType.WAIT:
            status = None
            if WaitDesc.SW.get(d.qw0):
                status = (d.qw1 & WaitAddr.STADDR.mask, WaitDesc.STDATA.get(d.qw0))
            if not h.wait(status, bool(WaitDesc.IF.get(d.qw0))):
                return Iqei.NOT_AVAILABLE
        else:  # PAGE_GROUP_RESPONSE
            pp = PgrespDesc.PP.get(d.qw0)
            h.page_response(PgrespDesc.RID.get(d.qw0),
                            PgrespDesc.PASID.get(d.qw0) if pp else None,
                            PgrespQw1.PRGI.get(d.qw1), PgrespDesc.RC.get(d.qw0))
        return None
