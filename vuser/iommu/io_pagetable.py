"""The IOVA -> pinned-pages map of one IOAS (iommufd ``io_pagetable.c``).

Ranges are inclusive ``(iova, last)`` and computed with an overflow check, as
in the kernel. Areas never overlap and are never split: an unmap must cover
whole areas. Areas are kept sorted by start, and lookups bisect the starts, so
``find`` is O(log n) in the number of areas.

Besides areas the table holds:

- *reserved* ranges, by owner (an attached device: what lies outside its
  aperture, and its reserved regions). Fixed maps may not overlap them
  (EINVAL); adding them fails with EADDRINUSE when an area or an allowed range
  is in the way.
- *allowed* ranges (IOMMU_IOAS_ALLOW_IOVAS): automatic IOVAs stay inside
  them, and reservations may not narrow them.

Everything here validates completely before it changes anything.
"""

from __future__ import annotations

import errno
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator

from .errors import fail
from .pages import Pages
from .uapi import PAGE_SIZE, U64_MAX, IoasMapFlags

READABLE = int(IoasMapFlags.READABLE)
WRITEABLE = int(IoasMapFlags.WRITEABLE)


class Area:
    """``[iova, last]`` maps ``pages.mem[offset:offset + length]`` with ``prot``."""

    __slots__ = ("iova", "last", "pages", "offset", "prot")

    def __init__(self, iova: int, last: int, pages: Pages, offset: int, prot: int) -> None:
        self.iova, self.last, self.pages, self.offset, self.prot = iova, last, pages, offset, prot

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


def _overlaps(a: int, b: int, c: int, d: int) -> bool:
    return a <= d and c <= b


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Union of sorted inclusive spans, as sorted disjoint spans."""
    out: list[tuple[int, int]] = []
    for s, e in spans:
        if out and s <= out[-1][1] + 1:
            if e > out[-1][1]:
                out[-1] = (out[-1][0], e)
        else:
            out.append((s, e))
    return out


class IoPagetable:
    """Areas, allowed and reserved ranges of one IOAS."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._areas: list[Area] = []
        self.allowed: list[tuple[int, int]] = []
        self.reserved: dict[object, list[tuple[int, int]]] = {}
        self.alignment = PAGE_SIZE

    # -- lookups ----------------------------------------------------------
    def find(self, addr: int) -> Area | None:
        """The area containing ``addr``, in O(log n)."""
        i = bisect_right(self._starts, addr) - 1
        if i >= 0:
            a = self._areas[i]
            if a.last >= addr:
                return a
        return None

    def _span(self, iova: int, last: int) -> tuple[int, int]:
        """Indices ``[i, j)`` of the areas overlapping ``[iova, last]``."""
        i = bisect_right(self._starts, iova) - 1
        if i < 0 or self._areas[i].last < iova:
            i += 1
        j = bisect_right(self._starts, last)
        return i, max(i, j)

    def overlapping(self, iova: int, last: int) -> list[Area]:
        i, j = self._span(iova, last)
        return self._areas[i:j]

    def areas(self) -> Iterator[Area]:
        return iter(list(self._areas))

    def __len__(self) -> int:
        return len(self._areas)

    def _reserved_hit(self, iova: int, last: int) -> bool:
        return any(_overlaps(s, e, iova, last) for rs in self.reserved.values() for s, e in rs)

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
        """Lowest free IOVA for ``length`` bytes, aligned to its lowest set bit."""
        check_range(0, length)
        align = max(self.alignment, length & -length)
        used = _merge(sorted([(a.iova, a.last) for a in self._areas]
                             + [r for rs in self.reserved.values() for r in rs]))
        windows = sorted(self.allowed) if self.allowed else [(0, U64_MAX)]
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
            if any(_overlaps(a, b, s, e) for a, b in self.allowed):
                raise fail(errno.EADDRINUSE, f"[{s:#x}, {e:#x}] is in an allowed range")

    # -- changes (callers validated first) --------------------------------
    def insert(self, area: Area) -> None:
        i = bisect_left(self._starts, area.iova)
        self._starts.insert(i, area.iova)
        self._areas.insert(i, area)
        area.pages.pin()

    def remove_covering(self, iova: int, last: int) -> list[Area]:
        """Remove the areas inside ``[iova, last]``; ENOENT if none or one sticks out.

        The removed areas' pages stay pinned: the caller flushes what caches
        them, then calls ``unpin`` (as the kernel unmaps domains, then unpins).
        """
        i, j = self._span(iova, last)
        if i == j:
            raise fail(errno.ENOENT, f"nothing mapped in [{iova:#x}, {last:#x}]")
        if self._areas[i].iova < iova or self._areas[j - 1].last > last:
            raise fail(errno.ENOENT, "unmap would split an area")
        removed = self._areas[i:j]
        del self._areas[i:j]
        del self._starts[i:j]
        return removed

    def remove_all(self) -> list[Area]:
        """Remove every area (pages still pinned, as for ``remove_covering``)."""
        removed, self._areas, self._starts = self._areas, [], []
        return removed

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
