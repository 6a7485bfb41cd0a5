"""The DMA path: ``translate`` and what hangs off it (docs/architecture.md
"Data flow", "The model").

``translate(dev_id, pasid, iova, length, access)`` returns the host memory
behind a device's DMA as ``Segment``s (memoryview slices of the pinned
buffers, with their IOVA and GPA for tracing), or a ``Fault``. It never
raises on guest-caused problems. The warm path is an IOTLB probe and a
memoryview slice; a miss walks the first stage (for a nested HWPT) through
the stage-2 parent, resolves the GPA in the parent's IOAS, and caches the
combined translation.

Also here: ``read``/``write`` conveniences, ATS translation requests, the
IOTLB invalidations that are not HWPT_INVALIDATE (per page, per PASID,
global), the flushes that follow host-side stage-2 unmaps and attach
changes (device-TLB hooks included), counters, the fault observers and the
trace hook.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from .core import ContextCore
from .viommu import vevent_fault
from .device import BoundDevice, get_device
from .errors import fail
from .hwpt import HwptNested, HwptPaging
from .invalidation import devtlb_flush, flush_dev, trace_inval
from .io_pagetable import READABLE, WRITEABLE
from .iotlb import IotlbEntry
from .psc import PscFill
from .pagetable.addresses import Gpa, Iova
from .pagetable.results import Access, Fault, FaultKind, Stage
from .pagetable.walker import second_stage_ok, walk_first_stage_raw
from .trace import TraceEvent, TraceHook
from .uapi import ALL_PASIDS, U64_MAX

_ADDR_END = 1 << 64
_W = int(Access.WRITE)
#: Allowed-access sets of an IOAS area by its prot (READABLE 4 | WRITEABLE 2).
_AREA_OK = tuple(second_stage_ok(bool(p & READABLE), bool(p & WRITEABLE)) for p in range(8))


class Segment(NamedTuple):
    """A piece of a translated DMA: ``mem`` is host memory for ``[iova, iova + len)``."""

    iova: Iova
    gpa: Gpa
    mem: memoryview


#: Builds a ``Segment`` without the Python-level ``__new__`` of named tuples.
_new_tuple = tuple.__new__
#: ``translate``: the first page has not been probed yet.
_UNPROBED = object()


@dataclass(frozen=True)
class AtsTranslation:
    """An ATS translation completion: one page and what it allows."""

    iova: Iova
    size: int
    gpa: Gpa
    read: bool
    write: bool
    mem: memoryview


FaultObserver = Callable[[Fault], None]
#: ``hook(dev_id, pasid, iova, length, access)``: a ``Fault`` to report instead
#: of translating, or None (see ``vuser.iommu.inject``).
InjectHook = Callable[[int, "int | None", int, int, int], "Fault | None"]
#: ``resolver(dev_id, label, pasid)``: called when a DMA finds nothing attached
#: to ``(dev_id, pasid)`` (``pasid`` as fault reports give it); it may attach something (a vIOMMU fetching a table
#: entry on demand) and returns whether it did. The walk is then retried.
MissResolver = Callable[[int, int, "int | None"], bool]


# -- translation ---------------------------------------------------------
def translate(ctx: ContextCore, dev_id: int, pasid: int | None, iova: Iova, length: int,
              access: int) -> list[Segment] | Fault:
    """Translate a DMA of ``length`` bytes at ``iova`` from ``(dev_id, pasid)``.

    ``pasid`` is the PASID the device emits (None: untagged, the RID);
    ``access`` is an ``Access`` combination (READ, WRITE, EXEC, PRIV).
    Returns the segments in order, or the first ``Fault`` (nothing is
    returned for the pages before it). Faults are counted, traced and
    passed to the fault observers. ENOENT (raised) for an unknown
    ``dev_id``; ``ValueError`` for a negative length or bad ``access``:
    both are bugs of the caller, not of the guest.
    """
    stats = ctx._stats
    stats.translations += 1
    end = iova + length
    if length <= 0 or iova < 0 or end > _ADDR_END:
        return _translate_edge(ctx, dev_id, pasid, iova, length, int(access))
    # The IOTLB's fast path: its own bound lookups, no call of ours per page.
    tlb = ctx._iotlb
    get, touch = tlb.fast_path
    trace = ctx._trace
    #: The first page's probe, made here, for the loop below (``_UNPROBED``: none).
    first: Any = _UNPROBED
    if ctx._inject is not None:
        if access.__class__ is not int:
            access = int(access)
        f = ctx._inject(dev_id, pasid, iova, length, access)
        if f is not None:
            return _report(ctx, get_device(ctx, dev_id), pasid, f)
    if trace is None:
        # The common case first: one cached page holds the whole DMA.
        # (``access`` may still be an ``Access`` here: its shifts and masks are int's.)
        first = None
        for shift, level in tlb.levels:
            e = get((dev_id, pasid, iova >> shift, level))
            if e is not None:
                if (e.ok >> access) & 1 and end - e.iova <= e.size:
                    touch(e.key)
                    stats.hits += 1
                    off = iova - e.iova
                    if access & _W and e.s2.dirty_tracking:
                        e.s2.mark_dirty(e.gpa + off, length)
                    return [_new_tuple(Segment, (iova, e.gpa + off, e.mem[off:off + length]))]
                first = e
                break
        if first is None and not (iova ^ (end - 1)) >> 12:
            # Nothing cached and the DMA inside one 4 KiB page: the page the
            # miss caches (4 KiB or larger, aligned) holds all of it.
            if access.__class__ is not int:
                access = int(access)
            e = _miss(ctx, dev_id, pasid, iova, access)
            if e.__class__ is Fault:
                return e
            off = iova - e.iova
            if access & _W and e.s2.dirty_tracking:
                e.s2.mark_dirty(e.gpa + off, length)
            return [_new_tuple(Segment, (iova, e.gpa + off, e.mem[off:off + length]))]
    if access.__class__ is not int:
        access = int(access)
    probe = tlb.levels
    runs = tlb.runs
    segs: list[Segment] = []
    addr = iova
    while True:
        # A DMA that leaves its 4 KiB page first asks for a run of pages
        # (``iotlb.Run``); tracing sees every page, so it takes the page path.
        if runs and end - addr > 4096 - (addr & 4095) and trace is None:
            r = runs.get((dev_id, pasid, addr >> 12))
            if r is not None and (r.ok >> access) & 1:
                off = addr - r.iova
                n = r.size - off
                if n > end - addr:
                    n = end - addr
                first = _UNPROBED
                stats.hits += ((addr + n - 1) >> 12) - (addr >> 12) + 1
                segs.append(_new_tuple(Segment, (addr, r.gpa + off, r.mem[off:off + n])))
                if access & _W and r.s2.dirty_tracking:
                    r.s2.mark_dirty(r.gpa + off, n)
                addr += n
                if addr >= end:
                    return segs
                continue
        if first is not _UNPROBED:   # the first page, probed above
            e, first = first, _UNPROBED
        else:
            e = None
            for shift, level in probe:
                e = get((dev_id, pasid, addr >> shift, level))
                if e is not None:
                    break
        if e is not None and (e.ok >> access) & 1:
            if e.level == 1 and e.run is None and trace is None \
                    and end - addr > 4096 - (addr & 4095) and tlb.build_run(e) is not None:
                continue  # served by the new run
            touch(e.key)
            stats.hits += 1
            if trace is not None:
                _trace_translate(ctx, e, addr, Stage.IOTLB, True)
        else:
            e = _miss(ctx, dev_id, pasid, addr, access)
            if isinstance(e, Fault):
                return e
            probe = tlb.levels
        off = addr - e.iova
        n = e.size - off
        if n > end - addr:
            n = end - addr
        segs.append(_new_tuple(Segment, (addr, e.gpa + off, e.mem[off:off + n])))
        if access & _W and e.s2.dirty_tracking:
            e.s2.mark_dirty(e.gpa + off, n)
        addr += n
        if addr >= end:
            return segs


def _translate_edge(ctx: ContextCore, dev_id: int, pasid: int | None, iova: int, length: int,
                    access: int) -> list[Segment] | Fault:
    if not isinstance(iova, int) or not isinstance(length, int) or length < 0 or iova < 0:
        raise ValueError(f"bad DMA range iova={iova!r} length={length!r}")
    if length == 0:
        return []
    bd = get_device(ctx, dev_id)
    return _report(ctx, bd, pasid, Fault(FaultKind.ADDR_BEYOND_MGAW, Stage.S1, iova,
                                          access))


def _miss(ctx: ContextCore, dev_id: int, pasid: int | None, addr: int, access: int
          ) -> IotlbEntry | Fault:
    """Walk, check and cache one page; the slow half of ``translate``."""
    stats = ctx._stats
    stats.misses += 1
    if not 0 < access < 16:
        raise ValueError(f"bad access {access!r}")
    bd = ctx._objects.find(dev_id)
    if bd.__class__ is not BoundDevice:
        bd = get_device(ctx, dev_id)   # ENOENT
    hwpt = bd.attach.get(pasid)
    if hwpt is None and ctx._miss_resolvers:
        label, vp = bd.dev.label, bd.vpasid(pasid)
        if any(r(dev_id, label, vp) for r in ctx._miss_resolvers):
            hwpt = bd.attach.get(pasid)
    if hwpt is None:
        reason = FaultKind.CONTEXT_ENTRY_P if pasid is None else FaultKind.PASID_ENTRY_P
        return _report(ctx, bd, pasid, Fault(reason, Stage.BLOCKED, addr, access))
    s2: HwptPaging
    if hwpt.__class__ is HwptNested:
        s2 = hwpt.parent
        stats.walks += 1
        tlb = ctx._iotlb
        psc = tlb.psc
        table, levels, modes, eafe = hwpt.walk_args
        # The paging-structure cache: resume below its deepest entry, and
        # fill it from a successful walk (the psc module doc).
        if psc.capacity:
            fills: list[PscFill] | None = []
            start = psc.lookup(dev_id, pasid, hwpt.id, addr, levels)
        else:
            fills = start = None
        t = walk_first_stage_raw(s2, addr, access, table, levels, modes, eafe, start, fills)
        if t.__class__ is Fault:
            stats.memory_reads += t.reads   # type: ignore[union-attr]
            return _report(ctx, bd, pasid, t)   # type: ignore[arg-type]
        t_iova, output, size, _level, ok, reads, writes, _dirty, _locs = t   # type: ignore[misc]
        stats.memory_reads += reads
        if writes:
            stats.memory_writes += writes
        if fills:
            psc.fill(dev_id, pasid, hwpt.id, s2, addr, fills)
        gpa = output + (addr - t_iova)
        # The page is most often in the area the walk's table fetches used
        # (guest RAM): test it before searching (``IoPagetable.recent``).
        iopt = s2.ioas.iopt
        area = iopt.recent
        if area is None or not area.iova <= gpa <= area.last:
            area = iopt.find(gpa)
    else:
        assert isinstance(hwpt, HwptPaging)
        s2 = hwpt
        tlb = ctx._iotlb
        gpa, size, ok = addr, 1 << 30, 0xFFFF
        area = s2.ioas.iopt.find(gpa)
    if area is None:
        return _report(ctx, bd, pasid, Fault(FaultKind.PAGING_ENTRY_INV, Stage.S2, addr,
                                             access, gpa))
    s2ok = _AREA_OK[area.prot]
    if not (s2ok >> access) & 1:
        reason = FaultKind.WRITE if access & _W and (s2ok >> (access & ~_W)) & 1 \
            else FaultKind.READ
        return _report(ctx, bd, pasid, Fault(reason, Stage.S2, addr, access, gpa))
    while size > 4096:
        base = gpa & ~(size - 1)
        if base >= area.iova and base + size - 1 <= area.last:
            break
        size >>= 9
    base_gpa = gpa & ~(size - 1)
    e = tlb.add(dev_id, pasid, hwpt.id, s2, addr & ~(size - 1), size, base_gpa, ok & s2ok,
                area.pages.mem, area.offset + (base_gpa - area.iova))
    if ctx._trace is not None:
        _trace_translate(ctx, e, addr, Stage.S1 if s2 is not hwpt else Stage.S2, False)
    return e


def _report(ctx: ContextCore, bd: BoundDevice, pasid: int | None, f: Fault) -> Fault:
    """Fill in the device fields of a fault, count it, tell the observers."""
    f = f.with_(pasid=bd.vpasid(pasid), label=bd.dev.label, dev_id=bd.id)
    ctx._stats.faults += 1
    hwpt = bd.attach.get(pasid)
    if f.stage == Stage.S1 and isinstance(hwpt, HwptNested) and hwpt.viommu is not None:
        vevent_fault(ctx, bd, hwpt, f)
    for cb in list(ctx._fault_observers):
        cb(f)
    if ctx._trace is not None:
        ctx._trace(TraceEvent(ctx._clock(), "fault", f.label, f.pasid,
                               f.iova, f.gpa, int(f.stage), False, int(f.reason),
                               vtd=f.vtd_reason))
    return f


def _trace_translate(ctx: ContextCore, e: IotlbEntry, addr: int, stage: Stage, hit: bool) -> None:
    bd = ctx._objects.find(e.dev_id)
    if isinstance(bd, BoundDevice):
        label, vp = bd.dev.label, bd.vpasid(e.pasid)
    else:
        label, vp = None, e.pasid
    assert ctx._trace is not None
    ctx._trace(TraceEvent(ctx._clock(), "translate", label, vp, addr,
                           e.gpa + (addr - e.iova), int(stage), hit))


# -- conveniences for device code ------------------------------------------
def read(ctx: ContextCore, dev_id: int, pasid: int | None, iova: Iova, length: int,
         access: int = Access.READ) -> bytes | Fault:
    """DMA read: the bytes, or the ``Fault``."""
    segs = translate(ctx, dev_id, pasid, iova, length, access)
    if isinstance(segs, Fault):
        return segs
    if len(segs) == 1:
        return bytes(segs[0].mem)
    return b"".join(s.mem for s in segs)


def write(ctx: ContextCore, dev_id: int, pasid: int | None, iova: Iova,
          data: bytes | bytearray | memoryview, access: int = Access.WRITE) -> None | Fault:
    """DMA write of ``data``: all of it, or nothing and the ``Fault``."""
    segs = translate(ctx, dev_id, pasid, iova, len(data), access)
    if isinstance(segs, Fault):
        return segs
    src = memoryview(data).cast("B") if not isinstance(data, bytes) else data
    pos = 0
    for s in segs:
        n = len(s.mem)
        s.mem[:] = src[pos:pos + n]
        pos += n
    return None


def ats_translate(ctx: ContextCore, dev_id: int, pasid: int | None, iova: Iova,
                  access: int = Access.READ) -> AtsTranslation | Fault:
    """A PCIe ATS translation request for the page holding ``iova``.

    The device may cache the answer in its device TLB until the model
    calls its ``devtlb_invalidate`` hook. EOPNOTSUPP if the device has no
    ATS. A write request sets the dirty flags, so ``write`` is then True.
    """
    bd = get_device(ctx, dev_id)
    if not bd.dev.ats:
        raise fail(errno.EOPNOTSUPP, f"{bd.dev.name} has no ATS")
    access = int(access)
    segs = translate(ctx, dev_id, pasid, iova, 1, access)
    if isinstance(segs, Fault):
        return segs
    e = ctx._iotlb.lookup(dev_id, pasid, iova)
    assert e is not None  # translate just cached it
    return AtsTranslation(e.iova, e.size, e.gpa, bool((e.ok >> Access.READ) & 1),
                          bool((e.ok >> Access.WRITE) & 1), e.mem)


# -- invalidation ------------------------------------------------------------
def iotlb_invalidate(ctx: ContextCore, dev_id: int | None = None, pasid: int | None = ALL_PASIDS,
                     addr: int = 0, npages: int = U64_MAX, *, vpasid: bool = False,
                     devtlb: bool = True) -> int:
    """Model extension: per-page, per-PASID, per-device or global invalidation.

    ``dev_id=None`` flushes everything. Otherwise ``pasid`` selects one
    PASID (``None``: the RID; ``ALL_PASIDS`` (-1): all of them), and
    ``vpasid=True`` reads it as the guest's vPASID (the table is applied,
    as for invalidations that arrive with a device label). ``addr`` (4K
    aligned) and ``npages`` select a range; ``npages=U64_MAX`` is all.
    The device TLBs concerned are told too, as iommufd's HWPT_INVALIDATE
    does; ``devtlb=False`` leaves them alone, as a VT-d IOTLB or PASID-IOTLB
    invalidation descriptor does (VT-d §6.5.2.4: device TLBs need their
    own descriptor). Returns the entries dropped.
    """
    if not isinstance(addr, int) or addr < 0 or addr & 0xFFF or not isinstance(npages, int) \
            or npages <= 0 or npages > U64_MAX:
        raise fail(errno.EINVAL, "addr must be 4K aligned and npages positive")
    if dev_id is None:
        n = ctx._iotlb.invalidate_all()
        ctx._stats.invalidations += 1
        ctx._stats.invalidated_entries += n
        if devtlb:
            for bd in ctx._objects.of_type(BoundDevice):
                devtlb_flush(ctx, bd, ALL_PASIDS, 0, U64_MAX)
        trace_inval(ctx, None, None, 0, n, U64_MAX)
        return n
    bd = get_device(ctx, dev_id)
    if pasid == ALL_PASIDS:
        return flush_dev(ctx, bd, "all", addr, npages, devtlb_too=devtlb)
    if vpasid and pasid is not None:
        pasid = bd.v2p.get(pasid, pasid)
    return flush_dev(ctx, bd, pasid, addr, npages, devtlb_too=devtlb)


def devtlb_invalidate(ctx: ContextCore, dev_id: int, pasid: int | None = ALL_PASIDS, addr: int = 0,
                      npages: int = U64_MAX, *, vpasid: bool = False) -> None:
    """Model extension: tell one device's TLB (ATS) to drop a range, and
    nothing else: the IOTLB keeps its entries, as with a VT-d device-TLB or
    PASID device-TLB invalidation descriptor. Arguments as for
    ``iotlb_invalidate``."""
    if not isinstance(addr, int) or addr < 0 or addr & 0xFFF or not isinstance(npages, int) \
            or npages <= 0 or npages > U64_MAX:
        raise fail(errno.EINVAL, "addr must be 4K aligned and npages positive")
    bd = get_device(ctx, dev_id)
    if vpasid and pasid not in (None, ALL_PASIDS):
        pasid = bd.v2p.get(pasid, pasid)
    devtlb_flush(ctx, bd, pasid, addr, npages)


def iotlb_set_capacity(ctx: ContextCore, capacity: int) -> None:
    """Resize the IOTLB (entries); the least recently used go first."""
    if not isinstance(capacity, int) or capacity < 1:
        raise fail(errno.EINVAL, f"capacity {capacity!r} must be >= 1")
    ctx._iotlb.set_capacity(capacity)


# -- inspection ---------------------------------------------------------------
def stats(ctx: ContextCore) -> dict[str, int]:
    """Counters: translations, hits, misses, walks, faults, invalidations,
    memory reads/writes of walks, evictions, paging-structure-cache hits, and
    the sizes of the IOTLB and the paging-structure cache."""
    tlb = ctx._iotlb
    ctx._stats.evictions = tlb.evictions
    d = ctx._stats.to_dict()
    d.update(iotlb_entries=len(tlb), iotlb_capacity=tlb.capacity, psc_hits=tlb.psc.hits,
             psc_entries=len(tlb.psc))
    return d


def stats_reset(ctx: ContextCore) -> None:
    """Zero every counter (the IOTLB keeps its entries)."""
    ctx._stats.__init__()  # type: ignore[misc]
    ctx._iotlb.evictions = 0
    ctx._iotlb.psc.hits = 0


def set_trace(ctx: ContextCore, hook: TraceHook | None) -> None:
    """Install (or remove, with None) the trace hook; see ``TraceEvent``."""
    ctx._trace = hook


def tracing(ctx: ContextCore) -> bool:
    return ctx._trace is not None


def trace_note(ctx: ContextCore, kind: str, label: int | None, pasid: int | None, iova: int = 0,
               length: int = 0, count: int = 0, info: dict[str, Any] | None = None) -> None:
    """Give the trace hook an event of an emulated IOMMU (see ``TraceEvent``)."""
    if ctx._trace is not None:
        ctx._trace(TraceEvent(ctx._clock(), kind, label, pasid, iova, None, 0, False,
                               None, count, length, info))


def set_inject(ctx: ContextCore, hook: InjectHook | None) -> None:
    """Install (or remove, with None) the fault-injection hook; see ``inject``."""
    ctx._inject = hook


def add_fault_observer(ctx: ContextCore, cb: FaultObserver) -> None:
    """Call ``cb(fault)`` for every fault the DMA path returns."""
    ctx._fault_observers.append(cb)


def remove_fault_observer(ctx: ContextCore, cb: FaultObserver) -> None:
    ctx._fault_observers.remove(cb)


def add_miss_resolver(ctx: ContextCore, cb: MissResolver) -> None:
    """Ask ``cb`` before reporting a DMA with nothing attached (see ``MissResolver``)."""
    ctx._miss_resolvers = (*ctx._miss_resolvers, cb)


def remove_miss_resolver(ctx: ContextCore, cb: MissResolver) -> None:
    ctx._miss_resolvers = tuple(r for r in ctx._miss_resolvers if r is not cb)


def default_clock() -> float:
    return time.monotonic()
