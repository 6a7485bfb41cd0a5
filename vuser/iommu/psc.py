"""The first-stage paging-structure cache of the model's IOMMU.

VT-d lets hardware cache first-stage paging-structure entries (the spec's
"paging-structure caches": PML5E, PML4E, PDPE and PDE caches, tagged like
the IOTLB), so that a walk resumes below the deepest cached entry. The model
keeps, per (device, PASID), the present non-leaf entries of successful nested
walks: the table each points to and the rights accumulated down to it
(``lookup``, ``fill``; the walker takes them as ``walk_first_stage(start=,
tables=)``). Like IOTLB entries they are never re-read, so a changed upper
entry is used until invalidated.

Every IOTLB invalidation (``iotlb.Iotlb``) drops all of them for its whole
scope: a device and PASID (or all its PASIDs), a HWPT, a stage 2, or
everything, whatever its range and whatever its leaf-only hint (VT-d's IH,
iommufd's ``IOMMU_VTD_INV_FLAGS_LEAF``, which would let them stay): never less
than the spec requires. A walk that faults caches nothing. A full cache
(``capacity`` entries) is emptied; capacity 0 turns it off.
"""

from __future__ import annotations

from .pagetable.formats import LEVEL_SHIFT

__all__ = ["PagingStructureCache", "PscStart", "PscFill", "DEFAULT_PSC_CAPACITY"]

#: A hit: ``(level, table, rw, us, xd)``: the walk resumes reading ``level``'s
#: entry in the table at GPA ``table``, with the rights accumulated above it.
PscStart = tuple[int, int, bool, bool, bool]
#: What the walker reports per non-leaf entry: ``(level, table, rw, us, xd)``.
PscFill = tuple[int, int, bool, bool, bool]
#: Default bound (entries).
DEFAULT_PSC_CAPACITY = 1024

Owner = tuple[int, "int | None"]       # (dev_id, pasid)
#: ``lookup``'s probes for a table of ``levels`` levels: (level, shift), deepest first.
_PROBES = {n: tuple((lv, LEVEL_SHIFT[lv]) for lv in range(2, n + 1)) for n in range(1, 6)}


class PagingStructureCache:
    """Non-leaf first-stage entries by owner ``(dev_id, pasid)``, then by
    ``(hwpt_id, level, iova >> shift of level)``."""

    def __init__(self, capacity: int = DEFAULT_PSC_CAPACITY) -> None:
        if capacity < 0:
            raise ValueError(f"paging-structure cache capacity must be >= 0, not {capacity}")
        self.capacity = capacity
        self._owners: dict[Owner, dict[tuple[int, int, int], PscStart]] = {}
        #: Owners holding entries of a HWPT / of walks through a stage 2 (by id).
        self._by_hwpt: dict[int, set[Owner]] = {}
        self._by_s2: dict[int, set[Owner]] = {}
        self._size = 0
        self.hits = 0

    def __len__(self) -> int:
        return self._size

    def lookup(self, dev_id: int, pasid: int | None, hwpt_id: int, iova: int,
               levels: int) -> PscStart | None:
        """The deepest cached non-leaf entry on ``iova``'s path, as a walk start."""
        b = self._owners.get((dev_id, pasid))
        if b is None:
            return None
        for level, shift in _PROBES[levels]:
            v = b.get((hwpt_id, level, iova >> shift))
            if v is not None:
                self.hits += 1
                return v
        return None

    def fill(self, dev_id: int, pasid: int | None, hwpt_id: int, s2: object, iova: int,
             fills: list[PscFill]) -> None:
        """Cache the non-leaf entries a successful walk of ``iova`` used."""
        if self._size + len(fills) > self.capacity:
            self.flush()
            if len(fills) > self.capacity:
                return
        owner = (dev_id, pasid)
        b = self._owners.get(owner)
        if b is None:
            b = self._owners[owner] = {}
        self._by_hwpt.setdefault(hwpt_id, set()).add(owner)
        self._by_s2.setdefault(id(s2), set()).add(owner)
        for level, table, rw, us, xd in fills:
            key = (hwpt_id, level, iova >> LEVEL_SHIFT[level])
            if key not in b:
                self._size += 1
            b[key] = (level - 1, table, rw, us, xd)   # stored as the walk start it gives

    # -- invalidation (called by the IOTLB's) --------------------------------
    def drop_dev(self, dev_id: int, pasid: int | None | str) -> None:
        """Everything of one device's PASID (``"all"``: of all its PASIDs)."""
        self._drop([o for o in self._owners
                    if o[0] == dev_id and (pasid == "all" or o[1] == pasid)])

    def drop_hwpt(self, hwpt_id: int) -> None:
        """Everything of the owners that cached entries of ``hwpt_id``."""
        self._drop(self._by_hwpt.pop(hwpt_id, ()))

    def drop_s2(self, s2: object) -> None:
        """Everything of the owners that walked through stage 2 ``s2``."""
        self._drop(self._by_s2.pop(id(s2), ()))

    def flush(self) -> None:
        self._owners.clear()
        self._by_hwpt.clear()
        self._by_s2.clear()
        self._size = 0

    def _drop(self, owners: object) -> None:
        # The other index may still name a dropped owner: that only makes a
        # later drop look at an owner with nothing cached.
        for owner in list(owners):  # type: ignore[call-overload]
            b = self._owners.pop(owner, None)
            if b is not None:
                self._size -= len(b)
