"""Fault injection for experiments: injected translation faults, stage-2 holes.

Two tools:

- ``FaultInjector`` rules (``vuser.iommu.inject``): the next N translations
  of (label, PASID, range) fault with a chosen reason and stage.
- ``S2Holes``: unmap a stage-2 (GPA) range under a running guest, and put it
  back. The model never splits an area on unmap (iommufd semantics), and
  QEMU maps guest RAM as a few large areas, so a hole is cut with the public
  uAPI alone: the pieces of the areas around the hole are IOAS_COPYed to a
  scratch IOAS, the areas are unmapped (every cache depending on them is
  flushed, as after any host unmap), and the pieces are copied back. The
  hole's own pages are copied to a *held* IOAS first, so ``restore`` can map
  them again at the same GPAs; the held IOAS keeps them pinned meanwhile.
"""

from __future__ import annotations

import errno
from dataclasses import asdict, dataclass
from typing import Any

from vuser.iommu import FaultInjector, IoasidContext, IommufdError

PAGE = 4096


@dataclass
class Hole:
    id: int
    ioas: int
    iova: int
    length: int
    held_ioas: int
    #: ``(iova, length, prot)`` of the held pieces, for ``restore``.
    pieces: list[tuple[int, int, int]]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["pieces"] = [list(p) for p in self.pieces]
        return d


class S2Holes:
    """Holes cut in IOASes of one context, by id."""

    def __init__(self, ctx: IoasidContext) -> None:
        self.ctx = ctx
        self._holes: dict[int, Hole] = {}
        self._next = 1

    def unmap(self, ioas_id: int, iova: int, length: int) -> Hole:
        """Unmap GPA ``[iova, iova + length)`` of ``ioas_id``, splitting areas.

        EINVAL unless page aligned; ENOENT unless the range is fully mapped.
        """
        ctx = self.ctx
        if iova % PAGE or length % PAGE or length <= 0:
            raise IommufdError(errno.EINVAL, "iova and length must be page aligned, length > 0")
        last = iova + length - 1
        areas = [a for a in ctx.ioas_areas(ioas_id) if a["iova"] <= last and a["last"] >= iova]
        areas.sort(key=lambda a: a["iova"])
        pos = iova
        for a in areas:
            if a["iova"] > pos:
                break
            pos = a["last"] + 1
        if not areas or pos <= last:
            raise IommufdError(errno.ENOENT, f"[{iova:#x}, {last:#x}] is not fully mapped")
        held = ctx.ioas_alloc()
        scratch = ctx.ioas_alloc()
        pieces: list[tuple[int, int, int]] = []
        keep: list[tuple[int, int, int]] = []
        try:
            for a in areas:
                lo, hi = max(a["iova"], iova), min(a["last"], last)
                ctx.ioas_copy(held, ioas_id, lo, hi - lo + 1, dst_iova=lo, flags=a["prot"])
                pieces.append((lo, hi - lo + 1, a["prot"]))
                for s, e in ((a["iova"], iova - 1), (last + 1, a["last"])):
                    if s <= e:
                        ctx.ioas_copy(scratch, ioas_id, s, e - s + 1, dst_iova=s, flags=a["prot"])
                        keep.append((s, e - s + 1, a["prot"]))
        except IommufdError:
            ctx.destroy(held)
            ctx.destroy(scratch)
            raise
        # Validated and prepared: from here on nothing can fail.
        for a in areas:
            ctx.ioas_unmap(ioas_id, a["iova"], a["last"] - a["iova"] + 1)
        for s, n, prot in keep:
            ctx.ioas_copy(ioas_id, scratch, s, n, dst_iova=s, flags=prot)
        ctx.destroy(scratch)
        hole = Hole(self._next, ioas_id, iova, length, held, pieces)
        self._next += 1
        self._holes[hole.id] = hole
        return hole

    def restore(self, hole_id: int) -> Hole:
        """Map the hole's pages back at the same GPAs; ENOENT for an unknown hole,
        EEXIST if something else was mapped there meanwhile."""
        hole = self._holes.get(hole_id) if isinstance(hole_id, int) else None
        if hole is None:
            raise IommufdError(errno.ENOENT, f"no stage-2 hole {hole_id!r}")
        done: list[tuple[int, int]] = []
        try:
            for s, n, prot in hole.pieces:
                self.ctx.ioas_copy(hole.ioas, hole.held_ioas, s, n, dst_iova=s, flags=prot)
                done.append((s, n))
        except IommufdError:
            for s, n in done:
                self.ctx.ioas_unmap(hole.ioas, s, n)
            raise
        del self._holes[hole_id]
        self.ctx.destroy(hole.held_ioas)
        return hole

    def holes(self) -> list[Hole]:
        return list(self._holes.values())

    def close(self) -> None:
        """Forget the holes; their held pages are released with the held IOASes."""
        for hole in list(self._holes.values()):
            try:
                self.ctx.destroy(hole.held_ioas)
            except IommufdError:
                pass
        self._holes.clear()


__all__ = ["FaultInjector", "Hole", "S2Holes"]
