"""Cache invalidation of one context: the IOTLB and the device TLBs.

Every path that drops translations ends here, so the counters and the trace
see each one alike: a device's (or one PASID's) entries (``flush_dev``:
detach, replace, vIOMMU invalidation, the model's ``iotlb_invalidate``), a
nested HWPT's range (``hwpt_flush``: IOMMU_HWPT_INVALIDATE), and what a
host unmap of an IOAS range invalidates (``s2_unmapped``). ``run_entries``
is the entry loop both HWPT_INVALIDATE data types share (``processed``
counts the entries done before the first bad one).
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .core import ContextCore
from .errors import IommufdError, fail
from .objects import ObjType
from .trace import TraceEvent
from .uapi import ALL_PASIDS, U64_MAX, copy_struct_from_user

if TYPE_CHECKING:  # annotations only
    from .device import BoundDevice
    from .hwpt import Hwpt
    from .ioas import Ioas

#: Kernel bound on HWPT_INVALIDATE entry_num.
MAX_INVALIDATE_ENTRIES = 1 << 19


def run_entries(entries: Any, struct: Any, valid_flags: int,
                act: Callable[[int, Any], None]) -> int:
    """Check and act on each HWPT_INVALIDATE entry in order; returns how many.

    EINVAL a list longer than 2^19 or not a list; per entry: EINVAL/E2BIG
    the length rules of ``copy_struct_from_user``, EOPNOTSUPP flags outside
    ``valid_flags`` or reserved bits, EINVAL an unaligned ``addr`` or
    ``npages=U64_MAX`` with ``addr``. ``act(done, entry)`` raises with
    ``processed=done`` for its own refusals.
    """
    if not isinstance(entries, (list, tuple)) or len(entries) > MAX_INVALIDATE_ENTRIES:
        raise fail(errno.EINVAL, "entries must be a list of at most 2^19")
    for done, raw in enumerate(entries):
        try:
            inv = copy_struct_from_user(struct, raw)
        except IommufdError as e:
            raise IommufdError(e.errno, f"entry {done}: {e}", processed=done) from None
        if inv.flags & ~valid_flags or inv.reserved:
            raise IommufdError(errno.EOPNOTSUPP, f"entry {done}: flags {inv.flags:#x}",
                               processed=done)
        if inv.addr & 0xFFF or (inv.npages == U64_MAX and inv.addr):
            raise IommufdError(errno.EINVAL, f"entry {done}: bad range", processed=done)
        act(done, inv)
    return len(entries)


def devtlb_flush(ctx: ContextCore, bd: BoundDevice, pasid: int | None, addr: int,
           npages: int) -> None:
    """Tell ``bd``'s device TLB (ATS) to drop a range, if it has one."""
    hook = bd.dev.devtlb_invalidate
    if hook is not None:
        ctx._stats.devtlb_invalidations += 1
        hook(pasid, addr, npages)


def trace_inval(ctx: ContextCore, bd: BoundDevice | None, pasid: int | None, addr: int,
                count: int, npages: int) -> None:
    """Trace one invalidation that dropped ``count`` IOTLB entries."""
    if ctx._trace is not None:
        ctx._trace(TraceEvent(
            ctx._clock(), "invalidate", bd.dev.label if bd else None,
            bd.vpasid(pasid) if bd and pasid not in (None, ALL_PASIDS) else pasid, addr,
            None, 0, False, count=count,
            length=U64_MAX if npages == U64_MAX else npages * 4096))


def flush_dev(ctx: ContextCore, bd: BoundDevice, pasid: int | None | str, addr: int = 0,
              npages: int = U64_MAX, *, devtlb_too: bool = True) -> int:
    """Drop ``(bd, pasid)``'s IOTLB entries (``pasid`` "all": every PASID and
    the RID) and tell its device TLB unless ``devtlb_too`` is False."""
    n = ctx._iotlb.invalidate_dev(bd.id, pasid, addr, npages)
    ctx._stats.invalidations += 1
    ctx._stats.invalidated_entries += n
    p = ALL_PASIDS if isinstance(pasid, str) else pasid
    if devtlb_too:
        devtlb_flush(ctx, bd, p, addr, npages)
    trace_inval(ctx, bd, p, addr, n, npages)
    return n


def hwpt_flush(ctx: ContextCore, hwpt: Hwpt, addr: int, npages: int) -> int:
    """HWPT_INVALIDATE of one range: IOTLB entries through ``hwpt``, then device TLBs."""
    n = ctx._iotlb.invalidate_hwpt(hwpt.id, addr, npages)
    ctx._stats.invalidations += 1
    ctx._stats.invalidated_entries += n
    for bd, pasid in sorted(hwpt.attached, key=lambda a: (a[0].id, a[1] or 0)):
        devtlb_flush(ctx, bd, pasid, addr, npages)
    trace_inval(ctx, None, None, addr, n, npages)
    return n


def s2_unmapped(ctx: ContextCore, ioas: Ioas, first: int, last: int) -> None:
    """Host unmap of ``[first, last]``: flush everything that depends on it.

    Stage-2-only entries in the range go; every stage-1 cache nested on a
    parent over this IOAS is flushed entirely (its IOVAs say nothing about
    GPAs), device TLBs included. Dirty records of the range are dropped.
    """
    npages = U64_MAX if last - first + 1 >= 1 << 63 else (last - first + 1) // 4096
    nested = [h for h in ctx._objects.of_kind(ObjType.HWPT_NESTED) if h.parent.ioas is ioas]
    n = 0
    for hwpt in ioas.hwpts:
        n += ctx._iotlb.invalidate_s2(hwpt, first, last)
        for bd, pasid in hwpt.attached:
            devtlb_flush(ctx, bd, pasid, first, npages)
        if hwpt.dirty:
            hwpt.dirty.difference_update(
                [p for p in hwpt.dirty if first <= p << 12 <= last])
    for h in nested:
        n += ctx._iotlb.invalidate_hwpt(h.id)
        for bd, pasid in h.attached:
            devtlb_flush(ctx, bd, pasid, 0, U64_MAX)
    ctx._stats.invalidations += 1
    ctx._stats.invalidated_entries += n
    trace_inval(ctx, None, None, first, n, npages)
