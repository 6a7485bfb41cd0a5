"""Page requests: the model's fault queue into the guest's page request queue (VT-d §7.4-§7.7).

The vIOMMU owns one fault queue in the model; every nested HWPT it creates is
IOPF-capable through it, so a device's PRI page request for a first-stage
PASID reaches ``PageRequestQueue.deliver``. Each record becomes a 32-byte
page request descriptor written at PQT (``PageRequest``: RID = device label,
PASID, address, read/write/exec/priv, PRGI, LPIG), PQT advances, and if
PRS.PPR was clear it is set and the page request event (MSI-X vector 2)
raised. Nothing is written while PRS.PRO is set.

Overflow (§7.5.1.1): when the group does not fit between PQT and PQH (or the
queue registers are nonsense, or the queue memory cannot be written), PRS.PRO
is set, the event raised, and the group answered SUCCESS at once, as
hardware answers overflowing last requests so that the device retries.

A page request from a device whose context entry has PRE clear is not
queued: the fault SCT.8 (0x47) is recorded and the group answered INVALID.

Page group responses (``respond``, from the invalidation queue) match a
pending group by (label, PASID, PRGI) and answer the model's fault queue:
response code 0 SUCCESS, anything else INVALID (the model has no separate
"response failure").
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from vuser import ratelimit
from vuser.iommu import Access, IoasidContext, IommufdError
from vuser.iommu.uapi import FaultFlags, FaultRecord, PageResponseCode
from vuser.backend import DmaError

from .viommu_regs import EventSource, RegisterBank
from .vtd_layout import PRQ_ENTRY_SIZE, PageRequest, Pqa, Pqh, PrdHi, PrdLo, Prs, Reg

log = logging.getLogger(__name__)

__all__ = ["PageRequestQueue", "GroupKey"]

GroupKey = tuple[int, int | None, int]   # (label, pasid or None, PRGI)
WriteFn = Callable[[int, bytes], None]


@dataclass
class _Pending:
    cookie: int
    records: int


class PageRequestQueue:
    """The guest's PRQ as seen from the vIOMMU (see the module doc)."""

    def __init__(self, regs: RegisterBank, event: EventSource, ctx: IoasidContext,
                 fault_id: int) -> None:
        self.regs, self.event, self.ctx, self.fault_id = regs, event, ctx, fault_id
        self.pending: dict[GroupKey, deque[_Pending]] = {}
        self.written = 0
        self.overflows = 0
        self.responses = 0

    # -- device -> guest ---------------------------------------------------------
    def deliver(self, write: WriteFn | None, pre: Callable[[int], bool | None],
                record_pre_fault: Callable[[FaultRecord], None],
                seen: Callable[[FaultRecord], None] | None = None) -> None:
        """Drain the model's fault queue into the PRQ.

        ``write`` writes guest memory (None: no VM, every group overflows);
        ``pre(label)`` says whether the label's context entry has PRE set
        (None: unknown, treated as clear); ``seen(record)`` is told of every
        request first.
        """
        try:
            records = self.ctx.fault_read(self.fault_id)
        except IommufdError as e:
            log.warning("vIOMMU: fault queue read failed: %s", e)
            return
        groups: dict[int, list[FaultRecord]] = {}
        for r in records:
            if seen is not None:
                seen(r)
            groups.setdefault(r.cookie, []).append(r)
        for cookie, group in groups.items():
            first = group[0]
            if not pre(first.label):
                record_pre_fault(first)
                self._answer(cookie, PageResponseCode.INVALID)
                continue
            if not self._queue(write, group):
                self._answer(cookie, PageResponseCode.SUCCESS)
                continue
            pasid = first.pasid if first.flags & FaultFlags.PASID_VALID else None
            key = (first.label, pasid, first.grpid)
            self.pending.setdefault(key, deque()).append(_Pending(cookie, len(group)))

    def _queue(self, write: WriteFn | None, group: list[FaultRecord]) -> bool:
        """Write ``group`` into the PRQ; False on overflow (PRO set)."""
        prs = self.regs.get(Reg.PRS)
        if Prs.PRO.get(prs):
            self.overflows += 1
            return False
        pqa = self.regs.get(Reg.PQA)
        entries = 1 << (Pqa.PQS.get(pqa) + 7)
        base = pqa & Pqa.PQA.mask
        head = Pqh.PQH.get(self.regs.get(Reg.PQH))
        tail = Pqh.PQH.get(self.regs.get(Reg.PQT))
        free = (head - tail - 1) % entries
        if write is None or head >= entries or tail >= entries or free < len(group):
            return self._overflow(prs)
        for r in group:
            desc = PageRequest(
                lo=PrdLo.pack(TYPE=1, RID=r.label & 0xFFFF,
                              PP=int(bool(r.flags & FaultFlags.PASID_VALID)),
                              PASID=r.pasid & 0xFFFFF, EXR=int(bool(r.perm & Access.EXEC)),
                              PMR=int(bool(r.perm & Access.PRIV))),
                hi=PrdHi.pack(RDR=int(bool(r.perm & Access.READ)),
                              WRR=int(bool(r.perm & Access.WRITE)),
                              LPIG=int(bool(r.flags & FaultFlags.LAST_PAGE)),
                              PRGI=r.grpid & 0x1FF, ADDR=r.addr >> 12))
            try:
                write(base + tail * PRQ_ENTRY_SIZE, desc.pack())
            except (DmaError, ValueError, OverflowError) as e:
                ratelimit.log(log, logging.INFO, "vIOMMU: page request queue at %#x not writable: %s",
                              base, e)
                return self._overflow(prs)
            tail = (tail + 1) % entries
            self.regs.set(Reg.PQT, Pqh.PQH.put(0, tail))
            self.written += 1
        prs = self.regs.get(Reg.PRS)
        if not Prs.PPR.get(prs):
            self.regs.set(Reg.PRS, prs | Prs.PPR.mask)
            if not Prs.PRO.get(prs):
                self.event.raise_event()
        return True

    def _overflow(self, prs: int) -> bool:
        self.overflows += 1
        self.regs.set(Reg.PRS, prs | Prs.PRO.mask)
        if not prs & (Prs.PPR.mask | Prs.PRO.mask):
            self.event.raise_event()
        ratelimit.log(log, logging.INFO, "vIOMMU: page request queue overflow: PRO")
        return False

    def _answer(self, cookie: int, code: int) -> None:
        try:
            self.ctx.fault_respond(self.fault_id, cookie, int(code))
        except IommufdError as e:  # already answered (detach) or gone
            log.debug("vIOMMU: response to group %d dropped: %s", cookie, e)

    # -- guest -> device -------------------------------------------------------------
    def respond(self, label: int, pasid: int | None, prgi: int, code: int) -> bool:
        """A page group response descriptor; False when no such group is pending."""
        q = self.pending.get((label, pasid, prgi))
        if not q:
            log.debug("vIOMMU: response for label %#x PASID %s PRGI %d matches nothing",
                      label, pasid, prgi)
            return False
        p = q.popleft()
        if not q:
            del self.pending[(label, pasid, prgi)]
        self.responses += 1
        self._answer(p.cookie, PageResponseCode.SUCCESS if code == 0
                     else PageResponseCode.INVALID)
        return True

    def drop_all(self) -> None:
        """Answer INVALID every pending group (reset, release)."""
        for q in self.pending.values():
            for p in q:
                self._answer(p.cookie, PageResponseCode.INVALID)
        self.pending.clear()
