"""Access objects: in-process users of an IOAS without a domain (iommufd
``iommufd_access_*`` in ``device.c`` and ``io_pagetable.c``).

An access is how an emulated device (VFIO's emulated path) reaches IOAS
memory without an IOMMU: it pins ranges (``access_pin_pages``) or copies
through them (``access_rw``). It must give an ``unmap(iova, length)``
callback to pin: when IOAS_UNMAP meets a pinned area, the area stops taking
new pins and every access on the IOAS is called to unpin; the unmap retries,
and gives EDEADLOCK after 100 rounds of an access that does not let go
(``iopt_unmap_iova_range``). A pinning access raises the IOAS alignment to
4 KiB (``access->iova_alignment``).

The callback is a plain callable, so these methods are in-process only (not
in ``IoasidContext.UAPI_METHODS``); the kernel's access is an in-kernel API
too, reached by its selftest through ``IOMMU_TEST_OP_CREATE_ACCESS``.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .core import ContextCore
from .errors import fail
from .io_pagetable import READABLE, WRITEABLE, Area, check_range
from .objects import IommufdObject, ObjType
from .uapi import PAGE_SIZE

if TYPE_CHECKING:
    from .ioas import Ioas

#: ``unmap(iova, length)``: the access must unpin what it holds in the range.
UnmapCallback = Callable[[int, int], None]
#: Rounds of unmap notifications before IOAS_UNMAP gives up (EDEADLOCK).
MAX_UNMAP_TRIES = 100


class IoasAccess(IommufdObject):
    """``struct iommufd_access`` attached to one IOAS."""

    TYPE = ObjType.ACCESS

    def __init__(self, ioas: Ioas, unmap: UnmapCallback | None) -> None:
        super().__init__()
        self.ioas, self.unmap = ioas, unmap
        #: Pins by range: ``(iova, length) -> [pin, ...]``, a pin being the
        #: ``(area, first, last)`` pieces it holds.
        self.pins: dict[tuple[int, int], list[list[tuple[Area, int, int]]]] = {}

    @property
    def alignment(self) -> int:
        return PAGE_SIZE if self.unmap is not None else 1

    def release(self, ctx: Any) -> None:
        for pins in self.pins.values():
            for pieces in pins:
                _unpin(pieces)
        self.pins.clear()
        iopt = self.ioas.iopt
        iopt.access_alignments.pop(self, None)
        iopt.alignment = iopt.wanted_alignment()
        iopt.accesses.remove(self)
        self.ioas.users -= 1

    def describe(self) -> dict[str, object]:
        d = super().describe()
        d.update(ioas=self.ioas.id, pins=sorted(list(k) for k in self.pins))
        return d


def _unpin(pieces: list[tuple[Area, int, int]]) -> None:
    for area, _f, _l in pieces:
        area.num_accesses -= 1
        area.pages.unpin()


def _contig(access: IoasAccess, iova: int, length: int, write: bool
            ) -> list[tuple[Area, int, int]]:
    """The areas exactly covering the range: EINVAL, EOVERFLOW, then per area
    EINVAL (being unmapped), EPERM (protection), and ENOENT for a hole."""
    last = check_range(iova, length)
    pieces = []
    cur = iova
    for a in access.ioas.iopt.overlapping(iova, last):
        if a.iova > cur:
            break
        if a.prevent_access:
            raise fail(errno.EINVAL, f"area at {a.iova:#x} is being unmapped")
        if not a.prot & (WRITEABLE if write else READABLE):
            raise fail(errno.EPERM, f"area at {a.iova:#x} does not allow this access")
        pieces.append((a, cur, min(a.last, last)))
        cur = a.last + 1
    if cur <= last:
        raise fail(errno.ENOENT, f"[{iova:#x}, {last:#x}] is not fully mapped")
    return pieces


def access_create(ctx: ContextCore, ioas_id: int, unmap: UnmapCallback | None = None) -> int:
    """``iommufd_access_create`` + ``iommufd_access_attach``; returns the id.

    With ``unmap`` the access may pin (and the IOAS alignment becomes
    4 KiB: EADDRINUSE if an area is not aligned); without it, it may only
    ``access_rw``. ENOENT the IOAS.
    """
    ioas: Ioas = ctx._objects.get_of(ioas_id, ObjType.IOAS)
    acc = IoasAccess(ioas, unmap)
    iopt = ioas.iopt
    new = {**iopt.access_alignments, acc: acc.alignment}
    iopt.check_alignment(iopt.wanted_alignment(accesses=new))
    ctx._step("access_create")
    ctx._objects.commit(acc)
    iopt.access_alignments[acc] = acc.alignment
    iopt.alignment = iopt.wanted_alignment()
    iopt.accesses.append(acc)
    ioas.users += 1
    return acc.id


def access_pin_pages(ctx: ContextCore, access_id: int, iova: int, length: int,
                     write: bool = False) -> list[memoryview]:
    """``iommufd_access_pin_pages``: pin ``[iova, iova + length)``; returns the
    host memory of each area piece, in order.

    EINVAL no unmap callback, length 0, or an area being unmapped;
    EOVERFLOW wrap; EPERM an area without the permission; ENOENT a hole.
    Pins nest; ``access_unpin_pages`` with the same range undoes one.
    """
    acc = ctx._objects.get(access_id, IoasAccess)
    if acc.unmap is None:
        raise fail(errno.EINVAL, "an access without an unmap callback cannot pin")
    pieces = _contig(acc, iova, length, write)
    ctx._step("access_pin_pages")
    for area, _f, _l in pieces:
        area.num_accesses += 1
        area.pages.pin()
    acc.pins.setdefault((iova, length), []).append(pieces)
    return [a.pages.mem[a.offset + f - a.iova:a.offset + l - a.iova + 1]
            for a, f, l in pieces]


def access_unpin_pages(ctx: ContextCore, access_id: int, iova: int, length: int) -> None:
    """``iommufd_access_unpin_pages``: undo one pin of exactly this range (ENOENT else)."""
    acc = ctx._objects.get(access_id, IoasAccess)
    pins = acc.pins.get((iova, length))
    if not pins:
        raise fail(errno.ENOENT, f"[{iova:#x}, +{length:#x}) is not pinned by this access")
    _unpin(pins.pop())
    if not pins:
        del acc.pins[(iova, length)]


def access_rw(ctx: ContextCore, access_id: int, iova: int, data: bytes | int,
              write: bool = False) -> bytes | None:
    """``iommufd_access_rw``: copy ``data`` to IOVA (``write``) or read ``data``
    bytes. EINVAL length 0 or an area being unmapped, EOVERFLOW wrap, EPERM
    protection, ENOENT a hole."""
    acc = ctx._objects.get(access_id, IoasAccess)
    length = len(data) if write else int(data)  # type: ignore[arg-type]
    pieces = _contig(acc, iova, length, write)
    out = bytearray()
    for a, f, l in pieces:
        lo, hi = a.offset + f - a.iova, a.offset + l - a.iova + 1
        if write:
            a.pages.mem[lo:hi] = data[f - iova:l - iova + 1]  # type: ignore[index]
        else:
            out += a.pages.mem[lo:hi]
    return None if write else bytes(out)


def notify_unmap(ioas: Ioas, areas: list[Area]) -> None:
    """``iommufd_access_notify_unmap``: stop new pins and call every access."""
    for a in areas:
        a.prevent_access = True
        for acc in list(ioas.iopt.accesses):
            if acc.unmap is not None:
                acc.unmap(a.iova, a.length)
