"""The ``vuser-dma`` execution engine: descriptors in, completion outcomes out.

Every address the engine emits goes through the device's ``IommuDevice``
(docs/architecture.md "Data flow"): with a PASID (``DescPasid.VALID``) through the (label,
PASID) attachment, without one through the device's RID attachment.

- **Translation.** Without ATS, ``IommuDevice.translate`` (untranslated
  requests). With ATS enabled in the device's capability, through the device
  TLB (``devtlb.DeviceTlb``): a miss sends an ATS translation request
  (``ats_translate``), a hit uses the cached page without asking the IOMMU,
  until the IOMMU invalidates it (PCIe Base 6.0 §10.2, §10.3).
- **Faults and PRI** (PCIe Base 6.0 §10.4). A fault ends the descriptor with
  PAGE_FAULT, the faulting address and the bytes done before it, unless the
  descriptor has ``BLOCK_ON_FAULT``, PRI is enabled and the fault is a
  stage-1 translation or permission fault: then the engine sends a page
  request (one page, its own page request group, last = 1) through the
  model, waits for the page group response (other descriptors and other
  queues keep running), and on SUCCESS retries. INVALID (or a response
  failure, or more than ``MAX_PAGE_REQUESTS`` for one address) fails the
  descriptor with PAGE_FAULT. Stage-2 faults and blocked PASIDs are never
  page-requested: the guest cannot fix them.
- **Opcodes.** NOP; MEMCPY; FILL (8-byte pattern, phase from the start of
  ``dst``); COMPARE (result 0 equal / 1 different, ``bytes_done`` the offset
  of the first difference); DRAIN (waits for the descriptors other queues
  have in flight, through the device's ``drain`` callback).

Work proceeds in runs of whole translations: a run ends at the first fault,
so ``bytes_done`` is exact and every fault is reported to the model once per
attempt.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from vuser.iommu import Access, Fault, FaultKind, IommuDevice, IommufdError, Stage
from vuser.iommu.uapi import PageResponseCode

from .devtlb import DeviceTlb
from .dma_layout import (
    MAX_LENGTH, CompletionRecord, CompletionStatus, DescFlags, DescPasid, Descriptor,
    FaultInfo, Opcode,
)

log = logging.getLogger(__name__)

__all__ = ["DmaEngine", "Outcome", "PriPort", "MAX_PAGE_REQUESTS", "copy_views", "gather",
           "scatter"]

PAGE = 4096
R, W = int(Access.READ), int(Access.WRITE)
#: Page requests for one address within one descriptor before it fails.
MAX_PAGE_REQUESTS = 4
#: Stage-1 faults a page request can fix (not present, permission).
_PRI_REASONS = frozenset({FaultKind.PAGING_ENTRY_INV, FaultKind.WRITE, FaultKind.READ})
#: Yield to the event loop after this many bytes of one descriptor.
_YIELD_BYTES = 1 << 20
_VALID_FLAGS = DescFlags.valid_mask()
_F_BLOCK = int(DescFlags.BLOCK_ON_FAULT)
_PASID_VALID, _PASID_MASK = DescPasid.VALID.mask, DescPasid.PASID.mask
_PASID_FIELDS = _PASID_VALID | _PASID_MASK
_OPCODES = frozenset(int(o) for o in Opcode)
#: Opcodes using ``src`` and ``dst`` (FILL uses ``dst`` only; NOP and DRAIN
#: none): each address + length must not wrap past 2^64.
_TWO_OPERANDS = frozenset({int(Opcode.MEMCPY), int(Opcode.COMPARE)})
_ADDR_END = 1 << 64


class PriPort(Protocol):
    """The device's PRI capability as the engine sees it."""

    def enabled(self) -> bool: ...

    def allocation(self) -> int: ...

    def response_failure(self) -> None: ...


@dataclass
class Outcome:
    """What a descriptor did: the completion record's contents."""

    status: CompletionStatus
    fault_info: int = 0
    result: int = 0
    bytes_done: int = 0
    fault_addr: int = 0

    def record(self) -> bytes:
        """The ``CompletionRecord`` bytes (reserved fields 0)."""
        return _pack_record(int(self.status), self.fault_info, 0, self.result,
                            self.bytes_done, self.fault_addr, 0)


INVALID = Outcome(CompletionStatus.INVALID_DESC)


@functools.lru_cache(maxsize=64)
def _success(n: int) -> Outcome:
    """The SUCCESS outcome of ``n`` bytes, shared like ``INVALID`` (outcomes are
    not changed once made, but for COMPARE's own, which never comes from here)."""
    return Outcome(CompletionStatus.SUCCESS, 0, 0, n)
#: The declared layouts' own codecs (``wire.Struct``), called directly on the
#: per-descriptor path: exact sizes, no instance for the record.
_pack_record = CompletionRecord._codec.pack
_unpack_desc = Descriptor._codec.unpack


def fault_outcome(f: Fault, at: int, done: int, access: int) -> Outcome:
    info = FaultInfo.WRITE if access & W else 0
    if f.stage == Stage.S2:
        info |= FaultInfo.STAGE2
    return Outcome(CompletionStatus.PAGE_FAULT, int(info), 0, done,
                   f.iova if f.iova is not None else at)


Views = list[memoryview]


def gather(views: Views) -> bytes:
    return bytes(views[0]) if len(views) == 1 else b"".join(views)


def scatter(views: Views, data: bytes | memoryview) -> None:
    pos = 0
    for v in views:
        n = len(v)
        v[:] = data[pos:pos + n]
        pos += n


def copy_views(dst: Views, src: Views) -> None:
    """Copy ``src`` into ``dst`` (the same number of bytes), slice to slice.

    The pieces need not line up: each step copies the overlap of the current
    source and destination views, so no intermediate ``bytes`` is built.
    """
    if len(src) == 1 and len(dst) == 1:
        dst[0][:] = src[0]
        return
    si = di = so = do = 0
    s, d = src[0], dst[0]
    ns, nd = len(s), len(d)
    while True:
        n = min(ns - so, nd - do)
        d[do:do + n] = s[so:so + n]
        so += n
        do += n
        if so == ns:
            si += 1
            if si == len(src):
                return
            s, so = src[si], 0
            ns = len(s)
        if do == nd:
            di += 1
            d, do = dst[di], 0
            nd = len(d)


def pattern_bytes(pattern: int, phase: int, n: int) -> bytes:
    """``n`` bytes of the 8-byte LE ``pattern`` starting at byte ``phase`` of it."""
    unit = pattern.to_bytes(8, "little")
    return (unit * ((phase + n) // 8 + 1))[phase:phase + n]


def _copy(_off: int, views: list[Views], _k: int) -> bool:
    """MEMCPY's body: source leg to destination leg."""
    src, dst = views
    if len(src) == 1 and len(dst) == 1:
        dst[0][:] = src[0]
    else:
        copy_views(dst, src)
    return True


class _Run:
    """Where a descriptor's walk over its legs stands (``DmaEngine._advance``)."""

    __slots__ = ("pasid", "block", "n", "legs", "body", "done", "since_yield", "tries",
                 "last_fault", "pending", "diff")

    def __init__(self, pasid: int | None, block: bool, n: int, legs: list[tuple[int, int]],
                 body: Callable[[int, list[Views], int], bool]) -> None:
        self.pasid, self.block, self.n, self.legs, self.body = pasid, block, n, legs, body
        self.done = self.since_yield = self.tries = 0
        self.last_fault: tuple[int, int] | None = None
        self.pending: tuple[Fault, int, int] | None = None
        #: COMPARE: the offset of the first difference.
        self.diff: int | None = None

    def outcome(self, out: Outcome) -> Outcome:
        if out.status == CompletionStatus.SUCCESS and self.diff is not None:
            out.result, out.bytes_done = 1, self.diff
        return out


class DmaEngine:
    """Executes descriptors for one device (see the module doc)."""

    def __init__(self, iommu: IommuDevice, devtlb: DeviceTlb, *, pri: PriPort) -> None:
        self.iommu = iommu
        self.devtlb = devtlb
        self.pri = pri
        #: The device keeps these equal to its ATS and PASID Enable bits.
        self.ats_on = False
        self.pasid_on = False
        self.outstanding = 0          # page requests awaiting their response
        self._slot_waiters: deque[asyncio.Future[None]] = deque()
        self._next_grpid = 0
        self.page_requests = 0
        self.page_responses = {"success": 0, "invalid": 0, "failure": 0}

    # -- translation -----------------------------------------------------------
    def translate(self, pasid: int | None, iova: int, n: int, access: int) -> Views | Fault:
        """Host memory for ``[iova, iova + n)``, or the first ``Fault``."""
        if not self.ats_on:
            iommu = self.iommu
            ctx = iommu.ctx
            # The model's translate straight from its context (IommuDevice.translate
            # without its frame); an unbound device answers its blocked fault.
            segs = ctx.translate(iommu.dev_id, pasid, iova, n, access) if ctx is not None \
                else iommu.translate(pasid, iova, n, access)
            if segs.__class__ is Fault:
                return segs  # type: ignore[return-value]
            if len(segs) == 1:
                return [segs[0].mem]  # type: ignore[index]
            return [s.mem for s in segs]  # type: ignore[union-attr]
        out: Views = []
        pos, end = iova, iova + n
        tlb = self.devtlb
        while pos < end:
            e = tlb.lookup(pasid, pos)
            if e is None or not (e.write if access & W else e.read):
                try:
                    t = self.iommu.ats_translate(pasid, pos, access)
                except IommufdError as err:  # ATS not supported by the model device
                    log.error("ATS translation refused: %s", err)
                    return Fault(FaultKind.CONTEXT_ENTRY_P, Stage.BLOCKED, pos, access,
                                 pasid=pasid)
                if isinstance(t, Fault):
                    return t
                e = tlb.insert(pasid, t)
            off = pos - e.iova
            k = min(e.size - off, end - pos)
            out.append(e.mem[off:off + k])
            pos += k
        return out

    # -- PRI -------------------------------------------------------------------
    def pri_eligible(self, f: Fault) -> bool:
        return f.stage == Stage.S1 and f.reason in _PRI_REASONS and self.pri.enabled()

    async def recover(self, f: Fault, pasid: int | None, access: int) -> bool:
        """Page-request the faulting page; True when answered SUCCESS."""
        if not self.pri_eligible(f):
            return False
        addr = f.iova
        code = await self.page_request(pasid, addr, access)
        return code == PageResponseCode.SUCCESS

    async def page_request(self, pasid: int | None, addr: int, access: int) -> int:
        """Send one page request (a group of one) and wait for its response code.

        Waits while the outstanding requests fill the PRI capability's
        allocation; a zero allocation or PRI disabled answers INVALID at once.
        """
        loop = asyncio.get_running_loop()
        while self.outstanding >= self.pri.allocation():
            if not self.pri.enabled() or self.pri.allocation() == 0:
                return int(PageResponseCode.INVALID)
            slot: asyncio.Future[None] = loop.create_future()
            self._slot_waiters.append(slot)
            await slot
        if not self.pri.enabled():
            return int(PageResponseCode.INVALID)
        grpid = self._next_grpid
        self._next_grpid = (grpid + 1) % 512
        fut: asyncio.Future[int] = loop.create_future()

        def on_response(code: int) -> None:
            if not fut.done():
                fut.set_result(int(code))

        self.outstanding += 1
        self.page_requests += 1
        try:
            self.iommu.page_request(pasid, addr & ~(PAGE - 1), access & (R | W), grpid, True,
                                    on_response)
            code = await fut
        finally:
            self.outstanding -= 1
            while self._slot_waiters:
                w = self._slot_waiters.popleft()
                if not w.done():
                    w.set_result(None)
        if code == PageResponseCode.SUCCESS:
            self.page_responses["success"] += 1
        elif code == PageResponseCode.INVALID:
            self.page_responses["invalid"] += 1
        else:
            self.page_responses["failure"] += 1
            self.pri.response_failure()
        return code

    # -- descriptors -------------------------------------------------------------
    def check(self, d: Descriptor) -> int | None | Outcome:
        """Validate ``d``: its PASID (None: untagged) or the INVALID_DESC outcome."""
        if d.flags & ~_VALID_FLAGS or not d.reserved_clear():
            return INVALID
        if d.opcode not in _OPCODES:
            return INVALID
        if d.pasid & ~_PASID_FIELDS:
            return INVALID
        pasid = None
        if d.pasid & _PASID_VALID:
            if not self.pasid_on:
                return INVALID
            pasid = d.pasid & _PASID_MASK
        n = d.length
        if n > MAX_LENGTH:
            return INVALID
        op = d.opcode
        if op in _TWO_OPERANDS:
            if d.src + n > _ADDR_END or d.dst + n > _ADDR_END:
                return INVALID
        elif op == Opcode.FILL and d.dst + n > _ADDR_END:
            return INVALID
        return pasid

    def start(self, d: Descriptor, pasid: int | None,
              drain: Callable[[], Awaitable[None]]) -> Outcome | Awaitable[Outcome]:
        """Run a checked descriptor as far as it goes without waiting.

        Returns its ``Outcome`` when it completed here (the common case: every
        address translated, or a fault nobody will fix), else an awaitable
        that finishes it (DRAIN, a page request to wait for, a yield after
        ``_YIELD_BYTES``), continuing where this call stopped, so that no
        translation or fault report is repeated.
        """
        op = d.opcode
        if op == Opcode.NOP:
            return Outcome(CompletionStatus.SUCCESS)
        if op == Opcode.DRAIN:
            return self._drained(drain)
        seed: tuple[Fault, int, int] | None = None
        if op == Opcode.MEMCPY:
            # ``_advance``'s first pass inline (the common case ends here): both
            # legs for the whole length; a fault seeds ``_advance`` with it, so
            # that it is handled exactly as there, and never reported twice.
            n, src, dst = d.length, d.src, d.dst
            ctx = self.iommu.ctx
            if n and not self.ats_on and ctx is not None:
                tr, dev = ctx.translate, self.iommu.dev_id
                a = tr(dev, pasid, src, n, R)
                if a.__class__ is Fault:
                    seed = (a, src, R)  # type: ignore[assignment]
                else:
                    b = tr(dev, pasid, dst, n, W)
                    if b.__class__ is Fault:
                        seed = (b, dst, W)  # type: ignore[assignment]
                    else:
                        if len(a) == 1 and len(b) == 1:  # type: ignore[arg-type]
                            b[0].mem[:] = a[0].mem  # type: ignore[index]
                        else:
                            copy_views([s.mem for s in b], [s.mem for s in a])  # type: ignore
                        return _success(n)
            run = _Run(pasid, bool(d.flags & _F_BLOCK), n, [(src, R), (dst, W)], _copy)
        elif op == Opcode.FILL:
            def fill(off: int, views: list[Views], k: int) -> bool:
                scatter(views[0], pattern_bytes(d.pattern, off % 8, k))
                return True
            run = _Run(pasid, bool(d.flags & _F_BLOCK), d.length, [(d.dst, W)], fill)
        else:  # COMPARE
            def compare(off: int, views: list[Views], k: int) -> bool:
                a, b = gather(views[0]), gather(views[1])
                if a == b:
                    return True
                run.diff = off + next(i for i in range(k) if a[i] != b[i])
                return False
            run = _Run(pasid, bool(d.flags & _F_BLOCK), d.length, [(d.src, R), (d.dst, R)],
                       compare)
        out = self._advance(run, seed)
        if out is None:
            return self._finish_run(run)
        return out if run.diff is None else run.outcome(out)

    async def execute(self, d: Descriptor, pasid: int | None,
                      drain: Callable[[], Awaitable[None]]) -> Outcome:
        """Run a checked descriptor to its end (``start``, awaited if need be)."""
        out = self.start(d, pasid, drain)
        return out if isinstance(out, Outcome) else await out

    @staticmethod
    async def _drained(drain: Callable[[], Awaitable[None]]) -> Outcome:
        await drain()
        return Outcome(CompletionStatus.SUCCESS)

    def _advance(self, run: _Run, seed: tuple[Fault, int, int] | None = None
                 ) -> Outcome | None:
        """Walk ``run`` in runs of clean translations until it ends (its
        ``Outcome``) or must wait (None: ``run.pending`` holds a fault to
        page-request, or it is due a yield).

        ``body(offset, views per leg, k)`` handles ``k`` bytes; False stops early.
        ``seed``: the fault (fault, leg address, access) that the caller's own
        first pass over the legs met, at offset 0 (``start``'s MEMCPY).
        """
        n, legs, pasid, body = run.n, run.legs, run.pasid, run.body
        translate = self.translate
        while run.done < n:
            if run.since_yield >= _YIELD_BYTES:
                run.since_yield = 0
                return None
            done = run.done
            k = n - done
            fault: tuple[Fault, int, int] | None = None   # (fault, leg address, access)
            views: list[Views] = []
            if seed is not None:   # the first pass was made: its outcome
                fault, seed = seed, None
                v, at = fault[0], fault[1]
                k = (v.iova - at) if v.iova is not None and at <= v.iova < at + k else 0
            while k:
                views = []
                for addr, access in legs:
                    at = addr + done
                    v = translate(pasid, at, k, access)
                    if v.__class__ is Fault:
                        fault = (v, at, access)  # type: ignore[assignment]
                        k = (v.iova - at) if v.iova is not None and at <= v.iova < at + k \
                            else 0  # type: ignore[union-attr]
                        break
                    views.append(v)  # type: ignore[arg-type]
                else:
                    break  # every leg is clean for k bytes
            if k:
                if not body(done, views, k):
                    return Outcome(CompletionStatus.SUCCESS, bytes_done=done)
                run.done = done + k
                run.since_yield += k
            if fault is None:
                continue
            f, at, access = fault
            where = f.iova if f.iova is not None else at
            key = (where & ~(PAGE - 1), access)
            run.tries = run.tries + 1 if key == run.last_fault else 1
            run.last_fault = key
            if not run.block or run.tries > MAX_PAGE_REQUESTS or not self.pri_eligible(f):
                return fault_outcome(f, where, run.done, access)
            run.pending = (f, where, access)
            return None
        return Outcome(CompletionStatus.SUCCESS, bytes_done=n)

    async def _finish_run(self, run: _Run) -> Outcome:
        """The waiting half of ``start``: page requests and yields, then more ``_advance``."""
        while True:
            if run.pending is not None:
                (f, where, access), run.pending = run.pending, None
                if not await self.recover(f, run.pasid, access):
                    return run.outcome(fault_outcome(f, where, run.done, access))
            else:
                await asyncio.sleep(0)
            out = self._advance(run)
            if out is not None:
                return run.outcome(out)

    # -- rings and completion records ---------------------------------------------
    def fetch(self, addr: int) -> Descriptor | Fault:
        """Read one descriptor from the ring (untagged)."""
        ctx = self.iommu.ctx
        if self.ats_on or ctx is None:
            v = self.translate(None, addr, Descriptor.SIZE, R)
            if v.__class__ is Fault:
                return v  # type: ignore[return-value]
            raw = v[0] if len(v) == 1 else gather(v)  # type: ignore[arg-type]
        else:   # ``translate``'s non-ATS branch, without its frame
            segs = ctx.translate(self.iommu.dev_id, None, addr, Descriptor.SIZE, R)
            if segs.__class__ is Fault:
                return segs  # type: ignore[return-value]
            raw = segs[0].mem if len(segs) == 1 else b"".join(  # type: ignore[index]
                [s.mem for s in segs])  # type: ignore[union-attr]
        # Exactly SIZE bytes were translated: the declared codec, unchecked.
        return Descriptor(*_unpack_desc(raw))

    def store_record(self, pasid: int | None, addr: int, out: Outcome,
                     block: bool) -> Fault | None | Awaitable[Fault | None]:
        """Store the completion record at ``addr`` in the descriptor's space.

        None when written, the ``Fault`` when it cannot be, or an awaitable
        when a page request may fix the fault (``block``, PRI).
        """
        if addr + CompletionRecord.SIZE > 1 << 64:
            return Fault(FaultKind.ADDR_BEYOND_MGAW, Stage.S1, addr, W, pasid=pasid)
        ctx = self.iommu.ctx
        if self.ats_on or ctx is None:
            v = self.translate(pasid, addr, CompletionRecord.SIZE, W)
        else:   # ``translate``'s non-ATS branch, without its frame
            v = ctx.translate(self.iommu.dev_id, pasid, addr, CompletionRecord.SIZE, W)
            if v.__class__ is not Fault:
                v = [v[0].mem] if len(v) == 1 else [s.mem for s in v]  # type: ignore
        if v.__class__ is Fault:
            if block and self.pri_eligible(v):  # type: ignore[arg-type]
                return self._store_record_later(pasid, addr, out, v)  # type: ignore[arg-type]
            return v  # type: ignore[return-value]
        if len(v) == 1:  # type: ignore[arg-type]
            # ``out.record()``, without its two frames
            v[0][:] = _pack_record(out.status, out.fault_info, 0, out.result,  # type: ignore
                                   out.bytes_done, out.fault_addr, 0)
        else:
            scatter(v, out.record())  # type: ignore[arg-type]
        return None

    async def _store_record_later(self, pasid: int | None, addr: int, out: Outcome,
                                  first: Fault) -> Fault | None:
        tries, r = 0, first
        while True:
            if tries >= MAX_PAGE_REQUESTS or not await self.recover(r, pasid, W):
                return r
            tries += 1
            v = self.translate(pasid, addr, CompletionRecord.SIZE, W)
            if v.__class__ is not Fault:
                scatter(v, out.record())  # type: ignore[arg-type]
                return None
            r = v  # type: ignore[assignment]

    async def write_record(self, pasid: int | None, addr: int, out: Outcome,
                           block: bool) -> Fault | None:
        """``store_record``, awaited if need be."""
        r = self.store_record(pasid, addr, out, block)
        if r is None or r.__class__ is Fault:
            return r  # type: ignore[return-value]
        return await r  # type: ignore[misc]

    def stats(self) -> dict[str, object]:
        return {"page_requests": self.page_requests, "outstanding": self.outstanding,
                "page_responses": dict(self.page_responses), "devtlb": self.devtlb.stats()}

