"""``GuestMemory``: one VM's guest RAM, as its connections' fd-backed DMA_MAPs say.

QEMU sends every vfio-user device of a VM the same guest RAM, one DMA_MAP
per memory section, each with the RAM block's fd. The VM's IOAS must hold
that memory once, however many connections mapped it, and keep it while any
of them still does. Two tables do that, both ``IntervalMap``s:

- *claims*, per connection (``owner``): the pieces of its DMA_MAPs, each
  stamped with a sequence number when mapped. A connection's claims never
  overlap (its ``DmaSpace`` refused that with EEXIST).
- the *view*: disjoint segments, each the newest claim over its bytes, with
  ``refs`` the number of claims covering it. Every segment is exactly one
  IOAS area (``IoasPort.map_file``); segments are split where a claim or an
  unmap ends, and a changed segment is unmapped whole and mapped again
  (iommufd's no-split rule stays the IOAS's own), which also flushes every
  translation cached through it.

Newest map wins. Each connection sees QEMU's memory-map changes at its own
time: while the guest flips the legacy 0xc0000-0xfffff area through its PAM
registers, one connection can map the new section before another has
received the unmap of the old one. A map is therefore never refused because
another connection's claim says something else: it replaces that part of the
view, and the IOAS with it. The stale claim stays its owner's; its later
unmap removes only that claim, and the view falls back to the newest claim
still covering each byte (the newer map is kept). Only a map into another
VM's file is refused, by the platform.

Ownership (the contract):

- The fd of a DMA_MAP belongs to the transport, which closes it when the
  message is handled. ``add`` duplicates it once per file (``(st_dev,
  st_ino)``): that duplicate is owned here, kept while any claim uses the
  file (a stale claim may become the view again and need a new area), and
  closed when the last such claim goes, or by ``clear``.
- The mmaps are owned by the IOAS: ``map_file`` makes one per area (with its
  own duplicate of the fd, as Python's mmap keeps one), and the area's unmap
  (through ``unmap`` or the IOAS's destruction) releases both. Nothing here
  keeps a view of guest RAM.
- Host-side access (``read``/``write``: the vIOMMU's tables, its fault and
  page-request queues, completion writes) goes through ``IoasPort.rw``, an
  access on the same IOAS: the one path, the same areas devices reach.

Only files sealed against shrinking (``F_SEAL_SHRINK``) are taken: an IOAS
area is an mmap of the file, and a client that shrank an unsealed file would
make the next access raise SIGBUS in the server (``docs/vfio-user-acceptance.md``,
"DMA_MAP").
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Protocol

from vuser.errors import RemoteProtocolError

from . import page_aligned
from .intervals import IntervalMap
from .seals import shrink_sealed

log = logging.getLogger(__name__)

__all__ = ["GuestMemory", "GpaSegment", "IoasPort", "READABLE", "WRITEABLE", "FileIdent"]

READABLE, WRITEABLE = 4, 2   # IOMMU_IOAS_MAP_READABLE / _WRITEABLE
FileIdent = tuple[int, int]


class IoasPort(Protocol):
    """The IOAS that mirrors the view (``devices.gpa_space`` binds it to a context).

    ``map_file``/``unmap`` raise ``RemoteProtocolError`` (an errno for QEMU);
    ``rw`` raises ``DmaError`` for a hole (EFAULT) or a protection (EPERM).
    """

    def map_file(self, fd: int, offset: int, size: int, iova: int, prot: int) -> None: ...

    def unmap(self, iova: int, size: int) -> None: ...

    def rw(self, iova: int, data: bytes | int, write: bool) -> bytes | None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class _Claim:
    """A piece of one connection's DMA_MAP: GPA ``g`` is file offset ``g + delta``."""

    ident: FileIdent
    delta: int
    prot: int
    seq: int


@dataclass
class GpaSegment:
    """``[first, last]`` of guest RAM: file ``ident`` from ``offset``; ``refs`` claims."""

    first: int
    last: int
    ident: FileIdent
    offset: int
    prot: int
    refs: int = 1

    @property
    def size(self) -> int:
        return self.last - self.first + 1

    def file_offset(self, gpa: int) -> int:
        return self.offset + (gpa - self.first)

    def same_backing(self, other: GpaSegment) -> bool:
        return (self.first, self.last, self.ident, self.offset, self.prot) == \
            (other.first, other.last, other.ident, other.offset, other.prot)

    def describe(self) -> dict[str, object]:
        return {"gpa": self.first, "last": self.last, "file": list(self.ident),
                "offset": self.offset, "writable": bool(self.prot & WRITEABLE),
                "refs": self.refs}


class _File:
    def __init__(self, fd: int) -> None:
        self.fd, self.claims = fd, 0


class GuestMemory:
    """A VM's claims, its view and the view's IOAS areas (see module doc)."""

    def __init__(self, ioas: IoasPort) -> None:
        self.ioas = ioas
        self._view: IntervalMap[GpaSegment] = IntervalMap()
        self._claims: dict[Hashable, IntervalMap[_Claim]] = {}
        self._files: dict[FileIdent, _File] = {}
        self._seq = itertools.count(1)

    # -- lookups ------------------------------------------------------------
    def segments(self) -> list[GpaSegment]:
        return self._view.values()

    def files(self) -> list[FileIdent]:
        return list(self._files)

    def has_file(self, ident: FileIdent) -> bool:
        return ident in self._files

    def __len__(self) -> int:
        return len(self._view)

    def find(self, gpa: int) -> GpaSegment | None:
        return self._view.find(gpa)

    # -- maps ---------------------------------------------------------------
    @staticmethod
    def check_aligned(first: int, last: int, offset: int) -> None:
        """EINVAL unless the map and its file offset are page aligned (IOAS_MAP_FILE)."""
        if not page_aligned(first, last + 1, offset):
            raise RemoteProtocolError(errno.EINVAL, f"fd-backed DMA map {first:#x}..{last:#x} "
                                      f"(offset {offset:#x}) is not page aligned")

    def add(self, owner: Hashable, first: int, last: int, ident: FileIdent, fd: int,
            offset: int, prot: int) -> None:
        """``owner`` maps ``[first, last]`` of file ``fd`` from ``offset``; ``fd`` stays
        the caller's. EINVAL unaligned or not shrink-sealed; the IOAS's errno if
        it refuses an area (nothing changed then)."""
        self.check_aligned(first, last, offset)
        if not shrink_sealed(fd):
            raise RemoteProtocolError(errno.EINVAL, f"DMA map {first:#x}..{last:#x}: the fd is "
                                      "not sealed against shrinking (F_SEAL_SHRINK)")
        claims = self._claims.get(owner)
        if claims is not None and claims.overlapping(first, last):
            raise RemoteProtocolError(errno.EEXIST, f"DMA map {first:#x}..{last:#x} overlaps "
                                      "this connection's own map")
        if claims is None:
            claims = self._claims[owner] = IntervalMap()
        file = self._files.get(ident)
        if file is None:
            file = self._files[ident] = _File(os.dup(fd))
        claims.insert(first, last, _Claim(ident, offset - first, prot, next(self._seq)))
        file.claims += 1
        try:
            self._refresh(first, last)
        except BaseException:
            claims.delete_at(first)
            if not claims:
                del self._claims[owner]
            self._file_put(ident)
            raise

    def remove(self, owner: Hashable, first: int, last: int) -> None:
        """``owner`` unmaps ``[first, last]``: its claims there go (split at the
        edges), and the view falls back to the newest claim left on each byte.

        If the IOAS refuses an area of the new view (an mmap limit), the old
        areas stay, the error is raised, and the view is brought in line at
        the range's next change (or ``clear``); the claims are gone either way.
        """
        claims = self._claims.get(owner)
        if claims is None:
            return
        gone = []
        for c0, c1, c in claims.overlapping_entries(first, last):
            claims.delete_at(c0)
            gone.append(c.ident)
            for p0, p1 in ((c0, first - 1), (last + 1, c1)):
                if p0 <= p1:
                    claims.insert(p0, p1, c)
                    self._files[c.ident].claims += 1
        if not claims:
            del self._claims[owner]
        self._refresh(first, last)
        for ident in gone:
            self._file_put(ident)

    def forget(self, owner: Hashable) -> None:
        """Drop whatever ``owner`` still claims (its connection is gone)."""
        claims = self._claims.get(owner)
        while claims:
            c0, c1, _ = claims.at(0)
            try:
                self.remove(owner, c0, c1)   # the claim goes even if this raises
            except RemoteProtocolError:
                log.exception("guest RAM %#x..%#x: the IOAS refused the new view", c0, c1)
            claims = self._claims.get(owner)

    def clear(self) -> None:
        """Drop every segment, claim and file, and the port's access (the VM is going away)."""
        for s in self._view.clear():
            self.ioas.unmap(s.first, s.size)
        self.ioas.close()
        self._claims.clear()
        for f in self._files.values():
            os.close(f.fd)
        self._files.clear()

    # -- host-side access ---------------------------------------------------
    def read(self, gpa: int, n: int) -> bytes:
        """Guest RAM bytes ``[gpa, gpa + n)``; ``DmaError`` (EFAULT) on a hole."""
        if n == 0:
            return b""
        out = self.ioas.rw(gpa, n, False)
        assert out is not None
        return out

    def write(self, gpa: int, data: bytes) -> None:
        """Store into guest RAM, all or nothing; ``DmaError`` (EFAULT hole, EPERM read-only)."""
        if data:
            self.ioas.rw(gpa, data, True)

    # -- the view -------------------------------------------------------------
    def _winner(self, gpa: int) -> tuple[_Claim | None, int]:
        """The newest claim holding ``gpa`` and how many claims hold it."""
        best, refs = None, 0
        for claims in self._claims.values():
            c = claims.find(gpa)
            if c is not None:
                refs += 1
                if best is None or c.seq > best.seq:
                    best = c
        return best, refs

    def _refresh(self, first: int, last: int) -> None:
        """Recompute the view over ``[first, last]`` and bring the IOAS in line.

        Segments straddling an edge are split there; inside, a segment ends
        wherever a claim does. Unchanged segments keep their area; the rest
        are unmapped whole, then the new ones mapped. If the IOAS refuses a
        new area, what was unmapped is mapped back and the error raised.
        """
        lo_seg, hi_seg = self._view.find_entry(first), self._view.find_entry(last)
        lo = lo_seg[0] if lo_seg else first
        hi = hi_seg[1] if hi_seg else last
        cuts = {lo, first, last + 1, hi + 1}
        for claims in self._claims.values():
            for c0, c1, _ in claims.overlapping_entries(first, last):
                cuts.update((max(c0, first), min(c1, last) + 1))
        bounds = sorted(cuts)
        want: list[GpaSegment] = []
        for a, b in zip(bounds, bounds[1:]):
            if a < first or a > last:       # outside the range: the old segment's piece
                old = self._view.find(a)
                if old is not None:
                    want.append(GpaSegment(a, b - 1, old.ident, old.file_offset(a), old.prot,
                                           old.refs))
                continue
            c, refs = self._winner(a)
            if c is not None:
                want.append(GpaSegment(a, b - 1, c.ident, a + c.delta, c.prot, refs))
        i, j = self._view.span(lo, hi)
        have = [v for _, _, v in (self._view.at(k) for k in range(i, j))]
        wanted = {(w.first, w.last): w for w in want}
        keep = {(s.first, s.last) for s in have
                if (w := wanted.get((s.first, s.last))) is not None and s.same_backing(w)}
        drop = [s for s in have if (s.first, s.last) not in keep]
        new = [w for w in want if (w.first, w.last) not in keep]
        for s in drop:
            self.ioas.unmap(s.first, s.size)
        done: list[GpaSegment] = []
        try:
            for w in new:
                self.ioas.map_file(self._files[w.ident].fd, w.offset, w.size, w.first, w.prot)
                done.append(w)
        except BaseException:
            for w in done:
                self.ioas.unmap(w.first, w.size)
            for s in drop:  # best effort: the areas it had a moment ago
                self.ioas.map_file(self._files[s.ident].fd, s.offset, s.size, s.first, s.prot)
            raise
        self._view.delete_span(i, j)
        for w in want:
            self._view.insert(w.first, w.last, w)
        if new or drop:
            log.debug("guest RAM %#x..%#x: %d areas replaced by %d", first, last,
                      len(drop), len(new))

    def _file_put(self, ident: FileIdent) -> None:
        f = self._files[ident]
        f.claims -= 1
        if f.claims == 0:
            os.close(f.fd)
            del self._files[ident]

