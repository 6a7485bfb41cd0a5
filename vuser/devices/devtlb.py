"""A device TLB (PCIe ATS Address Translation Cache) for device models.

PCIe Base 6.0 §10 (ATS): a device with ATS enabled asks the translation agent
for translations (``IommuDevice.ats_translate``: one page, its permissions and
host memory), keeps them in its own cache and then issues translated
requests, which the IOMMU does not look at again. The cache is the device's,
not the IOMMU's: its entries live until the IOMMU sends an ATS invalidation
(the model calls ``invalidate`` as the device's ``devtlb_invalidate`` hook,
after HWPT_INVALIDATE, per-PASID flushes, detach, host unmaps and the
vIOMMU's device-TLB invalidation descriptors) or the device drops them
itself (LRU at ``capacity``, ATS disabled, a flush). Nothing here re-reads
the page tables, so after a PTE change without invalidation a device TLB
keeps using the old page even where the IOMMU's IOTLB has let it go.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from vuser.iommu import AtsTranslation
from vuser.iommu.uapi import ALL_PASIDS, U64_MAX

__all__ = ["DeviceTlb", "AtcEntry"]

_SIZES = (4096, 1 << 21, 1 << 30)


@dataclass(frozen=True, slots=True)
class AtcEntry:
    """One cached ATS translation of the ``size``-byte page at ``iova``."""

    pasid: int | None
    iova: int
    size: int
    gpa: int
    read: bool
    write: bool
    mem: memoryview


class DeviceTlb:
    """LRU cache of ``AtcEntry`` keyed by ``(pasid, iova page, size)``."""

    def __init__(self, capacity: int = 64) -> None:
        if capacity < 1:
            raise ValueError(f"device TLB capacity must be >= 1, not {capacity}")
        self.capacity = capacity
        self._map: OrderedDict[tuple[int | None, int, int], AtcEntry] = OrderedDict()
        self.hits = self.misses = self.invalidations = self.dropped = 0

    def __len__(self) -> int:
        return len(self._map)

    def entries(self) -> list[AtcEntry]:
        return list(self._map.values())

    def lookup(self, pasid: int | None, iova: int) -> AtcEntry | None:
        m = self._map
        for size in _SIZES:
            e = m.get((pasid, iova & ~(size - 1), size))
            if e is not None:
                m.move_to_end((pasid, e.iova, size))
                self.hits += 1
                return e
        self.misses += 1
        return None

    def insert(self, pasid: int | None, t: AtsTranslation) -> AtcEntry:
        e = AtcEntry(pasid, t.iova, t.size, t.gpa, t.read, t.write, t.mem)
        key = (pasid, t.iova, t.size)
        self._map.pop(key, None)
        while len(self._map) >= self.capacity:
            self._map.popitem(last=False)
        self._map[key] = e
        return e

    def invalidate(self, pasid: int | None, addr: int, npages: int) -> int:
        """The ``devtlb_invalidate`` hook: drop ``pasid``'s entries in the range.

        ``pasid`` None is the RID's (untagged) entries, ``ALL_PASIDS`` all of
        them; ``npages == U64_MAX`` is every address. Returns the entries dropped.
        """
        self.invalidations += 1
        last = U64_MAX if npages >= U64_MAX else addr + npages * 4096 - 1
        doomed = [k for k, e in self._map.items()
                  if (pasid == ALL_PASIDS or e.pasid == pasid)
                  and e.iova <= last and addr <= e.iova + e.size - 1]
        for k in doomed:
            del self._map[k]
        self.dropped += len(doomed)
        return len(doomed)

    def flush(self) -> int:
        n = len(self._map)
        self._map.clear()
        self.dropped += n
        return n

    def stats(self) -> dict[str, int]:
        return {"entries": len(self._map), "capacity": self.capacity, "hits": self.hits,
                "misses": self.misses, "invalidations": self.invalidations,
                "dropped": self.dropped}
