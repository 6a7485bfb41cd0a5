"""The model's IOTLB: cached translations with a size bound.

Entries are keyed by ``(dev_id, pasid, iova >> shift, level)`` (QEMU's
``{sid, pasid, gfn, level}``); a lookup probes only the levels that currently
hold entries, smallest page first. An entry caches the *combined*
translation of both stages: the IOVA page, its GPA, the host memory behind it
and the allowed accesses. Entries are stale until invalidated: nothing here
ever re-reads guest tables (docs/architecture.md "The model", invalidation).

Eviction is LRU (``capacity`` entries). Invalidation is by attached HWPT and
IOVA range (HWPT_INVALIDATE), by (device, PASID) (attach changes, per-PASID
flushes), by stage-2 HWPT and GPA range (host unmaps), or global. There is no
paging-structure cache: every miss walks from the root.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import NamedTuple

from .uapi import U64_MAX

_LEVEL_SHIFT = {1: 12, 2: 21, 3: 30}

Key = tuple[int, int | None, int, int]


class IotlbEntry:
    """One cached translation of a ``size``-byte IOVA page."""

    __slots__ = ("key", "dev_id", "pasid", "hwpt_id", "s2", "iova", "size", "gpa", "mem",
                 "ok", "level")

    def __init__(self, dev_id: int, pasid: int | None, hwpt_id: int, s2: object, iova: int,
                 size: int, gpa: int, mem: memoryview, ok: int) -> None:
        self.level = {4096: 1, 1 << 21: 2, 1 << 30: 3}[size]
        self.key: Key = (dev_id, pasid, iova >> _LEVEL_SHIFT[self.level], self.level)
        self.dev_id, self.pasid, self.hwpt_id, self.s2 = dev_id, pasid, hwpt_id, s2
        self.iova, self.size, self.gpa, self.mem, self.ok = iova, size, gpa, mem, ok


class FastPath(NamedTuple):
    """The warm-path probe of an ``Iotlb``, bound once per DMA.

    ``get(key)`` is the entry cached under ``key`` or None; ``touch(key)``
    marks it most recently used. Keys are ``(dev_id, pasid, addr >> shift,
    level)`` for the ``(shift, level)`` pairs of ``Iotlb.levels``. These are
    the cache's own lookups, so a caller pays no call of its own per page
    (bench/bench_iommu.py "warm translate").
    """

    get: Callable[[Key], IotlbEntry | None]
    touch: Callable[[Key], None]


class Iotlb:
    """A bounded LRU of ``IotlbEntry``.

    ``lookup`` is the ordinary probe. The DMA path's loop uses the explicit
    fast path instead: ``fast_path`` (bound lookups, valid for the IOTLB's
    life) and ``levels`` (the ``(shift, level)`` pairs that hold entries,
    smallest page first; read it again after an ``insert``). Both are plain
    attributes, read-only to callers, so that reading them costs no call.
    """

    def __init__(self, capacity: int = 4096) -> None:
        if capacity < 1:
            raise ValueError(f"IOTLB capacity must be >= 1, not {capacity}")
        self.capacity = capacity
        self._map: OrderedDict[Key, IotlbEntry] = OrderedDict()
        self._per_level = [0, 0, 0, 0]
        self.levels: tuple[tuple[int, int], ...] = ()
        self._by_hwpt: dict[int, dict[Key, IotlbEntry]] = {}
        self._by_s2: dict[int, dict[Key, IotlbEntry]] = {}
        self.evictions = 0
        #: Bound lookups for the DMA path's warm loop (see ``FastPath``).
        self.fast_path = FastPath(self._map.get, self._map.move_to_end)

    def __len__(self) -> int:
        return len(self._map)

    def lookup(self, dev_id: int, pasid: int | None, addr: int) -> IotlbEntry | None:
        m = self._map
        for shift, level in self.levels:
            e = m.get((dev_id, pasid, addr >> shift, level))
            if e is not None:
                m.move_to_end(e.key)
                return e
        return None

    def _levels_changed(self) -> None:
        self.levels = tuple((_LEVEL_SHIFT[lv], lv) for lv in (1, 2, 3) if self._per_level[lv])

    def insert(self, e: IotlbEntry) -> None:
        old = self._map.get(e.key)
        if old is not None:
            self._drop(old)
        while len(self._map) >= self.capacity:
            _k, victim = self._map.popitem(last=False)
            self._unindex(victim)
            self.evictions += 1
        self._map[e.key] = e
        self._by_hwpt.setdefault(e.hwpt_id, {})[e.key] = e
        self._by_s2.setdefault(id(e.s2), {})[e.key] = e
        self._per_level[e.level] += 1
        if self._per_level[e.level] == 1:
            self._levels_changed()

    def _unindex(self, e: IotlbEntry) -> None:
        for index, k in ((self._by_hwpt, e.hwpt_id), (self._by_s2, id(e.s2))):
            d = index.get(k)
            if d is not None:
                d.pop(e.key, None)
                if not d:
                    del index[k]
        self._per_level[e.level] -= 1
        if self._per_level[e.level] == 0:
            self._levels_changed()

    def _drop(self, e: IotlbEntry) -> None:
        del self._map[e.key]
        self._unindex(e)

    def _drop_where(self, entries: list[IotlbEntry], pred: Callable[[IotlbEntry], bool]) -> int:
        n = 0
        for e in entries:
            if pred(e):
                self._drop(e)
                n += 1
        return n

    # -- invalidation ------------------------------------------------------
    def invalidate_hwpt(self, hwpt_id: int, addr: int = 0, npages: int = U64_MAX) -> int:
        """Entries reached through ``hwpt_id`` overlapping the IOVA range."""
        entries = list(self._by_hwpt.get(hwpt_id, {}).values())
        if npages == U64_MAX:
            return self._drop_where(entries, lambda e: True)
        last = addr + npages * 4096 - 1
        return self._drop_where(entries, lambda e: e.iova <= last and addr <= e.iova + e.size - 1)

    def invalidate_s2(self, s2: object, first: int = 0, last: int = U64_MAX) -> int:
        """Entries whose stage-2 part (GPA range) lies in ``[first, last]`` of ``s2``."""
        entries = list(self._by_s2.get(id(s2), {}).values())
        return self._drop_where(entries, lambda e: e.gpa <= last and first <= e.gpa + e.size - 1)

    def invalidate_dev(self, dev_id: int, pasid: int | None | str = "all",
                       addr: int = 0, npages: int = U64_MAX) -> int:
        """Entries of one device (one PASID, or ``"all"``) in an IOVA range."""
        last = U64_MAX if npages == U64_MAX else addr + npages * 4096 - 1
        return self._drop_where(
            list(self._map.values()),
            lambda e: e.dev_id == dev_id and (pasid == "all" or e.pasid == pasid)
            and e.iova <= last and addr <= e.iova + e.size - 1)

    def invalidate_all(self) -> int:
        n = len(self._map)
        self._map.clear()
        self._by_hwpt.clear()
        self._by_s2.clear()
        self._per_level = [0, 0, 0, 0]
        self.levels = ()
        return n

    def set_capacity(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"IOTLB capacity must be >= 1, not {capacity}")
        self.capacity = capacity
        while len(self._map) > capacity:
            _k, victim = self._map.popitem(last=False)
            self._unindex(victim)
            self.evictions += 1

    def entries(self) -> list[IotlbEntry]:
        return list(self._map.values())
