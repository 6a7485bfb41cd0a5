"""The IOVA -> pinned-pages map of one IOAS (iommufd ``io_pagetable.c``).

Ranges are inclusive ``(iova, last)`` and computed with an overflow check, as
in the kernel. Areas never overlap and are never split: an unmap must cover
whole areas. ``find`` is O(log n) in the number of areas.

Besides areas the table holds:

- *reserved* ranges, by owner (an attached device: what lies outside its
  aperture, and its reserved regions). Fixed maps may not overlap them
  (EINVAL); adding them fails with EADDRINUSE when an area or an allowed range
  is in the way.
- *allowed* ranges (IOMMU_IOAS_ALLOW_IOVAS): automatic IOVAs stay inside
  them, and reservations may not narrow them.
- the IOVA *alignment* (``iopt_calculate_iova_alignment``): 1 byte while no
  paging domain, access or HUGE_PAGES=0 asks for more, else ``PAGE_SIZE``.
  Raising it fails with EADDRINUSE while an area is not aligned to it.

Everything here validates completely before it changes anything, except
``remove_covering``, which (as ``iopt_unmap_iova_range``) removes areas in
IOVA order until one sticks out.

The areas are a ``vuser.memory.intervals.IntervalMap``, the server's one
range table; the no-split rule is this module's own, on top of it.
"""

from __future__ import annotations

import errno
from bisect import bisect_left
from collections.abc import Iterable, Iterator

from vuser.memory.intervals import IntervalMap, merge_spans, overlaps

from .errors import IommufdError, fail
from .pages import Pages
from .uapi import PAGE_SIZE, U64_MAX, IoasMapFlags

#: The largest automatic-IOVA alignment (``HPAGE_SIZE`` on x86-64).
HPAGE_SIZE = 2 << 20

READABLE = int(IoasMapFlags.READABLE)
WRITEABLE = int(IoasMapFlags.WRITEABLE)


class Area:
    """``[iova, last]`` maps ``pages.mem[offset:offset + length]`` with ``prot``."""

    __slots__ = ("iova", "last", "pages", "offset", "prot", "num_accesses", "prevent_access")

    def __init__(self, iova: int, last: int, pages: Pages, offset: int, prot: int) -> None:
        self.iova, self.last, self.pages, self.offset, self.prot = iova, last, pages, offset, prot
        #: Pins held by access objects; an unmap waits for them (``num_accesses``).
        self.num_accesses = 0
        self.prevent_access = False

    @property
    def length(self) -> int:
        return self.last - self.iova + 1

    def describe(self) -> dict[str, int | bool | list[int] | None]:
        return {"iova": self.iova, "last": self.last, "prot": self.prot,
                "file_id": list(self.pages.file_id) if self.pages.file_id else None}


def check_range(iova: int, length: int) -> int:
    """Validate an ``(iova, length)`` pair; returns the inclusive ``last``."""
    if not isinstance(iova, int) or not isinstance(length, int) or iova < 0 or length < 0:
        raise fail(errno.EINVAL, "iova and length must be non-negative integers")
    if length == 0:
        raise fail(errno.EINVAL, "length is 0")
    last = iova + length - 1
    if last > U64_MAX:
        raise fail(errno.EOVERFLOW, f"{iova:#x} + {length:#x} overflows")
    return last


class IoPagetable:
    """Areas, allowed and reserved ranges of one IOAS."""

    def __init__(self) -> None:
        self._map: IntervalMap[Area] = IntervalMap()
        #: The area containing an address, in O(log n) (``IntervalMap.find``).
        self.find = self._map.find
        #: An area a caller found and may test first for its next address (a
        #: walk's table fetches stay in few areas): any area, or None. Every
        #: removal resets it, so it is always an area of this table; an insert
        #: cannot overlap it.
        self.recent: Area | None = None
        self.allowed: list[tuple[int, int]] = []
        self.reserved: dict[object, list[tuple[int, int]]] = {}
        #: Current IOVA alignment, and what asks for more than 1 byte.
        self.alignment = 1
        self.domains = 0
        self.disable_large_pages = False
        self.access_alignments: dict[object, int] = {}
        #: Access objects attached to this IOAS (``iopt->access_list``).
        self.accesses: list = []

    # -- lookups ----------------------------------------------------------
    def overlapping(self, iova: int, last: int) -> list[Area]:
        return self._map.overlapping(iova, last)

    def areas(self) -> Iterator[Area]:
        return iter(self._map)

    def __len__(self) -> int:
        return len(self._map)

    def _reserved_hit(self, iova: int, last: int) -> bool:
        return any(overlaps(s, e, iova, last) for rs in self.reserved.values() for s, e in rs)

    # -- alignment ----------------------------------------------------------
    def wanted_alignment(self, *, domains: int | None = None,
                         disable_large_pages: bool | None = None,
                         accesses: dict[object, int] | None = None) -> int:
        """``iopt_calculate_iova_alignment`` for the given (or current) users."""
        d = self.domains if domains is None else domains
        dl = self.disable_large_pages if disable_large_pages is None else disable_large_pages
        acc = self.access_alignments if accesses is None else accesses
        return max([PAGE_SIZE if (d or dl) else 1, *acc.values()])

    def check_alignment(self, new: int) -> None:
        """``iopt_check_iova_alignment``: EADDRINUSE if an area is not ``new``-aligned."""
        if new <= self.alignment:
            return
        for a in self._map.values():
            if a.iova % new or a.length % new:
                raise fail(errno.EADDRINUSE, f"area [{a.iova:#x}, {a.last:#x}] is not "
                                             f"{new:#x}-aligned")

    def set_alignment(self, new: int) -> None:
        self.check_alignment(new)
        self.alignment = new

    # -- checks -----------------------------------------------------------
    def check_fixed(self, iova: int, length: int) -> int:
        """iommufd ``iopt_check_iova``: EINVAL, EOVERFLOW, EINVAL, EEXIST."""
        if not isinstance(iova, int) or iova < 0 or iova % self.alignment:
            raise fail(errno.EINVAL, f"iova {iova!r} is not {self.alignment}-aligned")
        last = check_range(iova, length)
        if self._reserved_hit(iova, last):
            raise fail(errno.EINVAL, f"[{iova:#x}, {last:#x}] overlaps a reserved range")
        if self.overlapping(iova, last):
            raise fail(errno.EEXIST, f"[{iova:#x}, {last:#x}] overlaps a mapped area")
        return last

    def alloc_iova(self, length: int) -> int:
        """``iopt_alloc_iova``: lowest free IOVA for ``length`` bytes.

        The alignment is ``length`` rounded up to a power of two, at most
        2 MiB (the model takes every user address as 2 MiB aligned, the
        kernel's ``!addr`` case), searched in ``[4K, U64_MAX - 4K]`` (never
        IOVA 0); EINVAL when that is below the IOAS alignment, ENOSPC when
        no hole fits.
        """
        if length == 0 or length >= U64_MAX // 2:
            raise fail(errno.EOVERFLOW, f"length {length:#x} cannot be placed")
        align = min(1 << (length - 1).bit_length(), HPAGE_SIZE)
        if align < self.alignment:
            raise fail(errno.EINVAL, f"{length:#x} bytes cannot be {self.alignment:#x}-aligned")
        used = merge_spans(sorted([(a.iova, a.last) for a in self._map.values()]
                             + [r for rs in self.reserved.values() for r in rs]))
        # Never IOVA 0 nor the last page (the kernel searches [PAGE_SIZE,
        # ULONG_MAX - PAGE_SIZE]).
        lo_lim, hi_lim = PAGE_SIZE, U64_MAX - PAGE_SIZE
        windows = [(max(s, lo_lim), min(e, hi_lim))
                   for s, e in (sorted(self.allowed) if self.allowed else [(lo_lim, hi_lim)])
                   if s <= hi_lim and e >= lo_lim]
        for ws, wl in windows:
            cur = -(-ws // align) * align
            k = bisect_left(used, (ws, 0))
            if k > 0:
                k -= 1  # the previous span may reach into the window
            for us, ul in used[k:]:
                if cur + length - 1 > wl:
                    break
                if cur + length - 1 < us:
                    return cur
                if ul >= cur:
                    cur = -(-(ul + 1) // align) * align
            if cur + length - 1 <= wl:
                return cur
        raise fail(errno.ENOSPC, f"no free IOVA range of {length:#x} bytes")

    def check_covered(self, iova: int, last: int) -> list[tuple[Area, int, int]]:
        """Pieces ``(area, first, last)`` exactly covering ``[iova, last]``, else ENOENT."""
        areas = self.overlapping(iova, last)
        if not areas or areas[0].iova > iova or areas[-1].last < last:
            raise fail(errno.ENOENT, f"[{iova:#x}, {last:#x}] is not fully mapped")
        for prev, nxt in zip(areas, areas[1:]):
            if nxt.iova != prev.last + 1:
                raise fail(errno.ENOENT, f"hole at {prev.last + 1:#x}")
        return [(a, max(a.iova, iova), min(a.last, last)) for a in areas]

    def check_reserve(self, ranges: Iterable[tuple[int, int]]) -> None:
        """EADDRINUSE if reserving ``ranges`` would hit an area or an allowed range."""
        for s, e in ranges:
            if self.overlapping(s, e):
                raise fail(errno.EADDRINUSE, f"[{s:#x}, {e:#x}] is mapped")
            if any(overlaps(a, b, s, e) for a, b in self.allowed):
                raise fail(errno.EADDRINUSE, f"[{s:#x}, {e:#x}] is in an allowed range")

    # -- changes (callers validated first) --------------------------------
    def insert(self, area: Area) -> None:
        self._map.insert(area.iova, area.last, area)
        area.pages.pin()

    def remove_covering(self, iova: int, last: int) -> tuple[list[Area], IommufdError | None]:
        """``iopt_unmap_iova_range``: remove the areas inside ``[iova, last]``.

        Areas go in IOVA order; the first one that sticks out of the range
        stops the walk with ENOENT, and the areas before it stay removed (as
        in the kernel). Nothing removed at all is ENOENT too. Returns the
        removed areas and the error (None on success). The removed pages
        stay pinned: the caller flushes what caches them, then unpins them.
        """
        i, j = self._map.span(iova, last)
        k = i
        while k < j and self._map.at(k)[0] >= iova and self._map.at(k)[1] <= last:
            k += 1
        removed = self._map.delete_span(i, k)
        if removed:
            self.recent = None
        err = None
        if k < j:
            err = fail(errno.ENOENT, "unmap would split an area")
        elif not removed:
            err = fail(errno.ENOENT, f"nothing mapped in [{iova:#x}, {last:#x}]")
        return removed, err

    def remove_all(self) -> list[Area]:
        """Remove every area (pages still pinned, as for ``remove_covering``)."""
        self.recent = None
        return self._map.clear()

    @staticmethod
    def unpin(areas: list[Area]) -> None:
        for a in areas:
            a.pages.unpin()

    def add_reserved(self, owner: object, ranges: list[tuple[int, int]]) -> None:
        self.check_reserve(ranges)
        self.reserved.setdefault(owner, []).extend(ranges)

    def remove_reserved(self, owner: object) -> None:
        self.reserved.pop(owner, None)

    def set_allowed(self, ranges: list[tuple[int, int]]) -> None:
        for s, e in ranges:
            if self._reserved_hit(s, e):
                raise fail(errno.EADDRINUSE, f"[{s:#x}, {e:#x}] overlaps a reserved range")
        self.allowed = sorted(ranges)

    def iova_ranges(self) -> list[tuple[int, int]]:
        """The usable ranges: everything but the reserved ones, merged."""
        spans = sorted(r for rs in self.reserved.values() for r in rs)
        out: list[tuple[int, int]] = []
        cur = 0
        for s, e in spans:
            if s > cur:
                out.append((cur, s - 1))
            cur = max(cur, e + 1)
            if cur > U64_MAX:
                return out
        out.append((cur, U64_MAX))
        return out
