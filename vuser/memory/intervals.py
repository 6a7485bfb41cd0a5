"""``IntervalMap``: disjoint inclusive ranges ``[first, last]`` with a value each.

The one range table of the server: a connection's DMA_MAPs
(``transport.dma``), a VM's guest RAM and its connections' claims
(``memory.guest``) and an IOAS's areas (``iommu.io_pagetable``) are all one
of these, each layer adding only its own rule (QEMU's straddling unmaps,
newest-map-wins per VM, iommufd's no-split unmap).

Entries are kept sorted by ``first`` in parallel lists and found by
bisection: ``find`` is O(log n), ``insert``/``delete`` O(n) memmoves, which
for the table sizes here (at most ``MAX_DMA_MAPS``) beat a balanced tree.
The map never checks for overlap on insert (callers validate first, then
act); ``overlapping`` and ``gaps`` are the checks.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterator
from typing import Generic, TypeVar

__all__ = ["IntervalMap", "overlaps", "merge_spans", "U64_END"]

T = TypeVar("T")

#: One past the largest 64-bit address.
U64_END = 1 << 64


def overlaps(a: int, b: int, c: int, d: int) -> bool:
    """Whether inclusive ranges ``[a, b]`` and ``[c, d]`` meet."""
    return a <= d and c <= b


def merge_spans(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Union of sorted inclusive spans, as sorted disjoint spans."""
    out: list[tuple[int, int]] = []
    for s, e in spans:
        if out and s <= out[-1][1] + 1:
            if e > out[-1][1]:
                out[-1] = (out[-1][0], e)
        else:
            out.append((s, e))
    return out


class IntervalMap(Generic[T]):
    """Sorted, disjoint ``[first, last] -> value`` entries (see module doc)."""

    __slots__ = ("_firsts", "_lasts", "_values")

    def __init__(self) -> None:
        self._firsts: list[int] = []
        self._lasts: list[int] = []
        self._values: list[T] = []

    def __len__(self) -> int:
        return len(self._values)

    def __iter__(self) -> Iterator[T]:
        return iter(list(self._values))

    def values(self) -> list[T]:
        return list(self._values)

    def entries(self) -> list[tuple[int, int, T]]:
        return list(zip(self._firsts, self._lasts, self._values))

    # -- lookups ------------------------------------------------------------
    def find(self, addr: int) -> T | None:
        """The value whose range holds ``addr``, in O(log n)."""
        i = bisect_right(self._firsts, addr) - 1
        if i >= 0 and self._lasts[i] >= addr:
            return self._values[i]
        return None

    def find_entry(self, addr: int) -> tuple[int, int, T] | None:
        i = bisect_right(self._firsts, addr) - 1
        if i >= 0 and self._lasts[i] >= addr:
            return self._firsts[i], self._lasts[i], self._values[i]
        return None

    def span(self, first: int, last: int) -> tuple[int, int]:
        """Indices ``[i, j)`` of the entries meeting ``[first, last]``."""
        i = bisect_right(self._firsts, first) - 1
        if i < 0 or self._lasts[i] < first:
            i += 1
        j = bisect_right(self._firsts, last)
        return i, max(i, j)

    def overlapping(self, first: int, last: int) -> list[T]:
        i, j = self.span(first, last)
        return self._values[i:j]

    def overlapping_entries(self, first: int, last: int) -> list[tuple[int, int, T]]:
        i, j = self.span(first, last)
        return list(zip(self._firsts[i:j], self._lasts[i:j], self._values[i:j]))

    def gaps(self, first: int, last: int) -> list[tuple[int, int]]:
        """The parts of ``[first, last]`` no entry covers, in order."""
        out, cur = [], first
        i, j = self.span(first, last)
        for k in range(i, j):
            if self._firsts[k] > cur:
                out.append((cur, self._firsts[k] - 1))
            cur = self._lasts[k] + 1
        if cur <= last:
            out.append((cur, last))
        return out

    def covers(self, first: int, last: int) -> bool:
        """Whether ``[first, last]`` is covered without a hole."""
        return not self.gaps(first, last)

    # -- changes --------------------------------------------------------------
    def insert(self, first: int, last: int, value: T) -> None:
        """Add an entry; the caller has checked that nothing overlaps it."""
        i = bisect_left(self._firsts, first)
        self._firsts.insert(i, first)
        self._lasts.insert(i, last)
        self._values.insert(i, value)

    def delete_at(self, first: int) -> T:
        """Remove the entry starting at ``first``; ``KeyError`` if none does."""
        i = bisect_left(self._firsts, first)
        if i == len(self._firsts) or self._firsts[i] != first:
            raise KeyError(first)
        del self._firsts[i], self._lasts[i]
        return self._values.pop(i)

    def delete_span(self, i: int, j: int) -> list[T]:
        """Remove the entries at indices ``[i, j)`` (from ``span``); returns them."""
        out = self._values[i:j]
        del self._firsts[i:j], self._lasts[i:j], self._values[i:j]
        return out

    def clear(self) -> list[T]:
        out = self._values
        self._firsts, self._lasts, self._values = [], [], []
        return out

    def at(self, i: int) -> tuple[int, int, T]:
        return self._firsts[i], self._lasts[i], self._values[i]
