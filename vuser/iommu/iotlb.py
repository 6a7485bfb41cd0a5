"""The model's IOTLB: cached translations with a size bound.

Entries are keyed by ``(dev_id, pasid, iova >> shift, level)`` (QEMU's
``{sid, pasid, gfn, level}``); a lookup probes only the levels that currently
hold entries, smallest page first. An entry caches the *combined*
translation of both stages: the IOVA page, its GPA, the host memory behind it
and the allowed accesses. Entries are stale until invalidated: nothing here
ever re-reads guest tables (docs/architecture.md "The model", invalidation).

Eviction is LRU (``capacity`` entries). Invalidation is by attached HWPT and
IOVA range (HWPT_INVALIDATE), by (device, PASID) (attach changes, per-PASID
flushes), by stage-2 HWPT and GPA range (host unmaps), or global.

*Runs.* Consecutive 4 KiB entries of one (device, PASID) whose IOVAs, GPAs
and host memory are all contiguous, with the same rights and the same HWPT,
can be served as one ``Run`` (one memoryview slice over all of them) so that
a DMA over many pages costs one lookup instead of one per page. A run is
derived from its entries and never outlives one: dropping, replacing,
evicting or invalidating any entry kills its run, so a run never holds a
translation the per-page entries would not. Runs stay inside one 2 MiB IOVA
block (at most 512 pages). Using a run does not refresh its entries' LRU
positions.

The first-stage paging-structure cache (``psc``) lives beside the entries:
every invalidation here drops its part of it too.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import NamedTuple

from .psc import DEFAULT_PSC_CAPACITY, PagingStructureCache
from .uapi import U64_MAX

_LEVEL_SHIFT = {1: 12, 2: 21, 3: 30}
_SIZE_LEVEL = {4096: 1, 1 << 21: 2, 1 << 30: 3}
#: ``Iotlb.levels`` for each set of non-empty levels (bit ``lv`` of the index).
_LEVELS = tuple(tuple((_LEVEL_SHIFT[lv], lv) for lv in (1, 2, 3) if mask >> lv & 1)
                for mask in range(16))
_PAGE = 4096
#: Runs never cross a 2 MiB IOVA boundary.
_RUN_BLOCK = 1 << 21

Key = tuple[int, int | None, int, int]
RunKey = tuple[int, int | None, int]


class IotlbEntry:
    """One cached translation of a ``size``-byte IOVA page.

    ``mem`` is ``base[boff:boff + size]``: ``base`` is the pinned buffer the
    page lies in (so that neighbours can be joined into a ``Run``).
    """

    __slots__ = ("key", "dev_id", "pasid", "hwpt_id", "s2", "iova", "size", "gpa", "mem",
                 "ok", "level", "base", "boff", "run")

    def __init__(self, dev_id: int, pasid: int | None, hwpt_id: int, s2: object, iova: int,
                 size: int, gpa: int, mem: memoryview, ok: int,
                 base: memoryview | None = None, boff: int = 0) -> None:
        self.level = _SIZE_LEVEL[size]
        self.key: Key = (dev_id, pasid, iova >> _LEVEL_SHIFT[self.level], self.level)
        self.dev_id, self.pasid, self.hwpt_id, self.s2 = dev_id, pasid, hwpt_id, s2
        self.iova, self.size, self.gpa, self.mem, self.ok = iova, size, gpa, mem, ok
        self.base, self.boff = base, boff
        self.run: Run | None = None


#: Makes an ``IotlbEntry`` without running ``__init__`` (``Iotlb.add`` sets every slot).
_new_entry = object.__new__


class Run:
    """Consecutive 4 KiB entries served as one translation (see module doc)."""

    __slots__ = ("iova", "size", "gpa", "mem", "ok", "s2", "entries")

    def __init__(self, entries: list[IotlbEntry]) -> None:
        first = entries[0]
        self.entries = entries
        self.iova, self.gpa, self.ok, self.s2 = first.iova, first.gpa, first.ok, first.s2
        self.size = len(entries) * _PAGE
        assert first.base is not None
        self.mem = first.base[first.boff:first.boff + self.size]


def _joins(a: IotlbEntry, b: IotlbEntry) -> bool:
    """Whether 4 KiB entry ``b`` continues ``a`` in IOVA, GPA and host memory."""
    return (b.level == 1 and b.hwpt_id == a.hwpt_id and b.ok == a.ok and b.base is a.base
            and b.base is not None and b.iova == a.iova + _PAGE and b.gpa == a.gpa + _PAGE
            and b.boff == a.boff + _PAGE)


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

    def __init__(self, capacity: int = 4096, psc_capacity: int = DEFAULT_PSC_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError(f"IOTLB capacity must be >= 1, not {capacity}")
        self.capacity = capacity
        #: The first-stage paging-structure cache, invalidated with the entries.
        self.psc = PagingStructureCache(psc_capacity)
        self._map: OrderedDict[Key, IotlbEntry] = OrderedDict()
        self._per_level = [0, 0, 0, 0]
        self.levels: tuple[tuple[int, int], ...] = ()
        self._by_hwpt: dict[int, dict[Key, IotlbEntry]] = {}
        self._by_s2: dict[int, dict[Key, IotlbEntry]] = {}
        self.evictions = 0
        #: Runs by ``(dev_id, pasid, iova >> 12)`` of each of their pages.
        self.runs: dict[RunKey, Run] = {}
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
        pl = self._per_level
        self.levels = _LEVELS[(pl[1] > 0) << 1 | (pl[2] > 0) << 2 | (pl[3] > 0) << 3]

    def insert(self, e: IotlbEntry) -> None:
        m = self._map
        key = e.key
        old = m.pop(key, None)
        if old is not None:
            self._unindex(old, False)
        while len(m) >= self.capacity:
            _k, victim = m.popitem(last=False)
            self._unindex(victim, False)
            self.evictions += 1
        m[key] = e
        hwpt_id, s2 = e.hwpt_id, id(e.s2)
        d = self._by_hwpt.get(hwpt_id)
        if d is None:
            d = self._by_hwpt[hwpt_id] = {}
        d[key] = e
        d = self._by_s2.get(s2)
        if d is None:
            d = self._by_s2[s2] = {}
        d[key] = e
        pl = self._per_level
        pl[e.level] += 1
        # ``_levels_changed``, once for the evictions too (inline: every miss comes here)
        self.levels = _LEVELS[(pl[1] > 0) << 1 | (pl[2] > 0) << 2 | (pl[3] > 0) << 3]

    def add(self, dev_id: int, pasid: int | None, hwpt_id: int, s2: object, iova: int,
            size: int, gpa: int, ok: int, base: memoryview, boff: int) -> IotlbEntry:
        """``insert(IotlbEntry(...))`` for the miss path, in one call: the entry is
        built here (``mem`` is ``base[boff:boff + size]``) and an evicted
        entry is forgotten inline. Returns the new entry."""
        e = _new_entry(IotlbEntry)
        level = _SIZE_LEVEL[size]
        key = (dev_id, pasid, iova >> _LEVEL_SHIFT[level], level)
        e.key = key
        e.level = level
        e.dev_id = dev_id
        e.pasid = pasid
        e.hwpt_id = hwpt_id
        e.s2 = s2
        e.iova = iova
        e.size = size
        e.gpa = gpa
        e.mem = base[boff:boff + size]
        e.ok = ok
        e.base = base
        e.boff = boff
        e.run = None
        m = self._map
        pl = self._per_level
        by_hwpt, by_s2 = self._by_hwpt, self._by_s2
        old = m.pop(key, None)
        if old is not None:
            self._unindex(old, False)
        # Counted and indexed before the evictions: a victim of the same level,
        # HWPT or stage 2 then leaves its count non-zero and its index dicts
        # non-empty (no level recomputation, no dict deleted and re-created).
        pl[level] += 1
        relevel = pl[level] == 1
        d = by_hwpt.get(hwpt_id)
        if d is None:
            d = by_hwpt[hwpt_id] = {}
        d[key] = e
        s2k = id(s2)
        d = by_s2.get(s2k)
        if d is None:
            d = by_s2[s2k] = {}
        d[key] = e
        while len(m) >= self.capacity:
            _k, v = m.popitem(last=False)
            # ``_unindex(v, False)``, inline: with a one-entry IOTLB every miss evicts
            if v.run is not None:
                self._kill_run(v.run)
            vk = v.key
            d = by_hwpt.get(v.hwpt_id)
            if d is not None:
                d.pop(vk, None)
                if not d:
                    del by_hwpt[v.hwpt_id]
            s2v = id(v.s2)
            d = by_s2.get(s2v)
            if d is not None:
                d.pop(vk, None)
                if not d:
                    del by_s2[s2v]
            pl[v.level] -= 1
            if not pl[v.level]:
                relevel = True
            self.evictions += 1
        m[key] = e
        if relevel:
            self.levels = _LEVELS[(pl[1] > 0) << 1 | (pl[2] > 0) << 2 | (pl[3] > 0) << 3]
        return e

    # -- runs ------------------------------------------------------------------
    def build_run(self, e: IotlbEntry) -> Run | None:
        """Join cached 4 KiB entries around ``e`` into a ``Run``; None if none joins.

        The run is the longest chain of entries present now, contiguous with
        ``e`` (``_joins``) and inside ``e``'s 2 MiB IOVA block. Runs its
        entries belonged to are killed first.
        """
        if e.level != 1 or e.base is None:
            return None
        m, dev_id, pasid = self._map, e.dev_id, e.pasid
        block = e.iova & ~(_RUN_BLOCK - 1)
        chain = [e]
        cur = e
        while cur.iova > block:
            prev = m.get((dev_id, pasid, (cur.iova >> 12) - 1, 1))
            if prev is None or not _joins(prev, cur):
                break
            chain.append(prev)
            cur = prev
        chain.reverse()
        cur = e
        while cur.iova + _PAGE < block + _RUN_BLOCK:
            nxt = m.get((dev_id, pasid, (cur.iova >> 12) + 1, 1))
            if nxt is None or not _joins(cur, nxt):
                break
            chain.append(nxt)
            cur = nxt
        if len(chain) < 2:
            return None
        for c in chain:
            if c.run is not None:
                self._kill_run(c.run)
        r = Run(chain)
        runs = self.runs
        for c in chain:
            c.run = r
            runs[(dev_id, pasid, c.iova >> 12)] = r
        return r

    def _kill_run(self, r: Run) -> None:
        runs = self.runs
        for c in r.entries:
            c.run = None
            runs.pop((c.dev_id, c.pasid, c.iova >> 12), None)
        r.entries = []

    def _unindex(self, e: IotlbEntry, relevel: bool = True) -> None:
        """Forget ``e`` everywhere but ``_map``; ``relevel=False`` leaves
        ``levels`` for the caller to recompute."""
        if e.run is not None:
            self._kill_run(e.run)
        key = e.key
        index, k = self._by_hwpt, e.hwpt_id
        d = index.get(k)
        if d is not None:
            d.pop(key, None)
            if not d:
                del index[k]
        index, k = self._by_s2, id(e.s2)
        d = index.get(k)
        if d is not None:
            d.pop(key, None)
            if not d:
                del index[k]
        pl, level = self._per_level, e.level
        pl[level] -= 1
        if relevel and pl[level] == 0:
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
        """Entries reached through ``hwpt_id`` overlapping the IOVA range (and
        every paging-structure-cache entry of the HWPT)."""
        self.psc.drop_hwpt(hwpt_id)
        entries = list(self._by_hwpt.get(hwpt_id, {}).values())
        if npages == U64_MAX:
            return self._drop_where(entries, lambda e: True)
        last = addr + npages * 4096 - 1
        return self._drop_where(entries, lambda e: e.iova <= last and addr <= e.iova + e.size - 1)

    def invalidate_s2(self, s2: object, first: int = 0, last: int = U64_MAX) -> int:
        """Entries whose stage-2 part (GPA range) lies in ``[first, last]`` of ``s2``
        (and every paging-structure-cache entry of walks through ``s2``)."""
        self.psc.drop_s2(s2)
        entries = list(self._by_s2.get(id(s2), {}).values())
        return self._drop_where(entries, lambda e: e.gpa <= last and first <= e.gpa + e.size - 1)

    def invalidate_dev(self, dev_id: int, pasid: int | None | str = "all",
                       addr: int = 0, npages: int = U64_MAX) -> int:
        """Entries of one device (one PASID, or ``"all"``) in an IOVA range (and
        every paging-structure-cache entry of that device or PASID)."""
        self.psc.drop_dev(dev_id, pasid)
        last = U64_MAX if npages == U64_MAX else addr + npages * 4096 - 1
        return self._drop_where(
            list(self._map.values()),
            lambda e: e.dev_id == dev_id and (pasid == "all" or e.pasid == pasid)
            and e.iova <= last and addr <= e.iova + e.size - 1)

    def invalidate_all(self) -> int:
        self.psc.flush()
        n = len(self._map)
        for e in self._map.values():
            e.run = None
        self.runs.clear()
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
