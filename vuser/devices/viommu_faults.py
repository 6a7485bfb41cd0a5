"""Primary fault logging: the fault recording registers and FSTS (VT-d §7.2.1, §7.3).

``FaultRecorder.record`` logs one non-recoverable fault the way hardware
does: if FSTS.PFO is set the fault is dropped; if the next fault recording
register (they are used in a ring) still holds a fault (F set), PFO is set
and the fault dropped; otherwise the record is written with F set and, if
no fault was pending (PPF clear), PPF and FRI are set and a fault event is
raised. Software clears F (write 1) in each record; PPF follows the F bits.
Faults from the same source are not collapsed.

IQE, ICE and ITE raise the same fault event (§7.3.1) when none of the
fault status conditions was pending before.

The reason recorded for a model ``Fault`` is its ``Fault.vtd_reason``: the
model's one table from its ``FaultKind`` to the scalable-mode reasons
(``vuser.iommu.pagetable.reasons.VTD_REASONS``), so the guest's record, the
model's fault list and the traces show the same code.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from vuser import ratelimit
from vuser.iommu import Access

from .viommu_regs import EventSource, RegisterBank
from .vtd_layout import FRCD_SIZE, NFR, FrcdHi, FrcdLo, Fsts, Reg

log = logging.getLogger(__name__)

__all__ = ["FaultRecorder", "FaultRecord"]

_STATUS = Fsts.PFO.mask | Fsts.PPF.mask | Fsts.IQE.mask | Fsts.ICE.mask | Fsts.ITE.mask

@dataclass(frozen=True)
class FaultRecord:
    """One decoded fault recording register (tests, inspection)."""

    index: int
    sid: int
    pasid: int | None
    reason: int
    addr: int
    write: bool
    exe: bool
    priv: bool

    @classmethod
    def decode(cls, index: int, lo: int, hi: int) -> FaultRecord | None:
        if not FrcdHi.F.get(hi):
            return None
        return cls(index, FrcdHi.SID.get(hi),
                   FrcdHi.PV.get(hi) if FrcdHi.PP.get(hi) else None, FrcdHi.FR.get(hi),
                   lo & FrcdLo.FI.mask, not FrcdHi.T1.get(hi), bool(FrcdHi.EXE.get(hi)),
                   bool(FrcdHi.PRIV.get(hi)))


class FaultRecorder:
    """The fault recording registers of one vIOMMU (see the module doc)."""

    def __init__(self, regs: RegisterBank, event: EventSource) -> None:
        self.regs, self.event = regs, event
        self.next = 0
        self.recorded = 0
        self.dropped = 0

    def record(self, sid: int, pasid: int | None, reason: int, addr: int,
               access: int = Access.READ) -> bool:
        """Log one fault; False when it was dropped (PFO)."""
        fsts = self.regs.get(Reg.FSTS)
        if Fsts.PFO.get(fsts):
            self.dropped += 1
            return False
        off = Reg.FRCD + self.next * FRCD_SIZE
        if FrcdHi.F.get(self.regs.get(off + 8)):
            self.regs.set(Reg.FSTS, fsts | Fsts.PFO.mask)
            self.dropped += 1
            ratelimit.log(log, logging.INFO, "vIOMMU: fault recording registers full: PFO")
            return False
        hi = FrcdHi.pack(SID=sid & 0xFFFF, FR=reason & 0xFF, F=1,
                         T1=0 if access & Access.WRITE else 1,
                         EXE=int(bool(access & Access.EXEC)), PRIV=int(bool(access & Access.PRIV)))
        if pasid is not None:
            hi |= FrcdHi.pack(PP=1, PV=pasid & 0xFFFFF)
        self.regs.set(off, addr & FrcdLo.FI.mask)
        self.regs.set(off + 8, hi)
        index = self.next
        self.next = (self.next + 1) % NFR
        self.recorded += 1
        log.debug("vIOMMU: fault %#x sid %#x pasid %s addr %#x in FRCD %d", reason, sid, pasid,
                  addr, index)
        if not Fsts.PPF.get(fsts):
            self.regs.set(Reg.FSTS, Fsts.FRI.put(fsts | Fsts.PPF.mask, index))
            if not fsts & _STATUS:
                self.event.raise_event()
        return True

    def set_status(self, bit: int) -> None:
        """Set IQE, ICE or ITE (a mask of ``Fsts``) and raise the fault event."""
        fsts = self.regs.get(Reg.FSTS)
        self.regs.set(Reg.FSTS, fsts | bit)
        if not fsts & _STATUS:
            self.event.raise_event()

    def frcd_written(self, _raw: int = 0) -> None:
        """Software cleared F in a record: PPF and FRI follow the pending records."""
        fsts = self.regs.get(Reg.FSTS)
        start = Fsts.FRI.get(fsts) % NFR
        for k in range(NFR):
            i = (start + k) % NFR
            if FrcdHi.F.get(self.regs.get(Reg.FRCD + i * FRCD_SIZE + 8)):
                self.regs.set(Reg.FSTS, Fsts.FRI.put(fsts | Fsts.PPF.mask, i))
                return
        self.regs.set(Reg.FSTS, fsts & ~Fsts.PPF.mask)
        self.status_written()

    def status_written(self, _raw: int = 0) -> None:
        """FSTS written (W1C): with nothing left pending, FECTL.IP clears."""
        if not self.regs.get(Reg.FSTS) & _STATUS:
            self.event.cancel()

    def records(self) -> list[FaultRecord]:
        """The pending fault records, by index."""
        out = []
        for i in range(NFR):
            off = Reg.FRCD + i * FRCD_SIZE
            r = FaultRecord.decode(i, self.regs.get(off), self.regs.get(off + 8))
            if r is not None:
                out.append(r)
        return out

    def reset(self) -> None:
        self.next = 0
