"""Page-table walkers for the VT-d first- and second-stage formats.

``walk_first_stage`` reads guest tables only through a stage-2 port: every
table fetch, and every accessed/dirty update, is a GPA handed to
``s2.fetch(gpa, write)`` (nested translation, VT-d §3.8: the first-stage
tables are themselves second-stage inputs). A stage-2 fault met there comes
back as a ``Fault`` with ``stage=S2, s1_fetch=True``.

``walk_second_stage`` reads real second-stage tables from a flat host-physical
memory (for experiments; the model's own stage 2 is the IOAS interval map, see
``hwpt.HwptPaging``). ``SecondStageTables`` wraps it as a stage-2 port, so
nested walks over real tables count the full two-dimensional cost (24 reads
for 4-level over 4-level).

Accessed/dirty flags are set only on a successful walk: a faulting request
leaves the tables untouched. A is set on every entry used (and EA when EAFE),
D on the leaf of a write. Permissions follow x86-64 paging without SMEP/SMAP:
R/W and U/S are ANDed over the levels, XD is ORed; supervisor (PRIV) requests
need SRE, and ignore R/W unless WPE.
"""

from __future__ import annotations

import struct
from functools import lru_cache
from typing import Protocol

from .formats import (
    DEFAULT_OAW, LEVEL_SHIFT, FirstStagePte, SecondStagePte,
    first_stage_reserved, is_canonical, leaf_address_mask, second_stage_reserved,
)
from .results import Access, Fault, FaultKind, Stage, Translation

_QWORD = struct.Struct("<Q")  # one paging entry as stored in memory

_P = FirstStagePte.P.mask
_RW = FirstStagePte.RW.mask
_US = FirstStagePte.US.mask
_A = FirstStagePte.A.mask
_D = FirstStagePte.D.mask
_PS = FirstStagePte.PS.mask
_EA = FirstStagePte.EA.mask
_XD = FirstStagePte.XD.mask

_SR = SecondStagePte.R.mask
_SW = SecondStagePte.W.mask
_SPS = SecondStagePte.PS.mask
_SA = SecondStagePte.A.mask
_SD = SecondStagePte.D.mask

R, W, X, PRIV = int(Access.READ), int(Access.WRITE), int(Access.EXEC), int(Access.PRIV)


class Stage2Port(Protocol):
    """How a first-stage walk reaches guest memory.

    ``fetch`` returns ``(mem, offset, reads)``: the 8 bytes of the entry at
    ``gpa`` are ``mem[offset:offset + 8]`` and ``reads`` is the number of
    stage-2 table reads it took; or a stage-2 ``Fault``. ``write=True`` asks
    for write permission (an A/D update) and lets stage 2 log the page dirty.
    """

    def fetch(self, gpa: int, write: bool) -> tuple[memoryview, int, int] | Fault: ...


@lru_cache(maxsize=None)
def first_stage_ok(rw: bool, us: bool, xd: bool, sre: bool, wpe: bool, dirty: bool) -> int:
    """The ``Translation.ok`` set for a first-stage leaf's combined rights."""
    ok = 0
    for a in range(16):
        if a & PRIV:
            if not sre:
                continue
        elif not us:
            continue
        if a & W and not (dirty and (rw or (a & PRIV and not wpe))):
            continue
        if a & X and xd:
            continue
        ok |= 1 << a
    return ok


@lru_cache(maxsize=None)
def second_stage_ok(r: bool, w: bool, dirty: bool = True) -> int:
    """The ``Translation.ok`` set for second-stage rights (PRIV is ignored)."""
    ok = 0
    for a in range(16):
        if a & (R | X) and not r:
            continue
        if a & W and not (w and dirty):
            continue
        ok |= 1 << a
    return ok


def _first_stage_denied(access: int, rw: bool, us: bool, xd: bool,
                        sre: bool, wpe: bool) -> int:
    """The fault reason for ``access`` under these rights, or 0."""
    if access & PRIV:
        if not sre:
            return FaultKind.FS_PRIV_VIOLATION
    elif not us:
        return FaultKind.FS_PRIV_VIOLATION
    if access & W and not rw and (not access & PRIV or wpe):
        return FaultKind.WRITE
    if access & X and xd:
        return FaultKind.READ  # execute denied: no finer legacy code
    return 0


#: All-ones of the bits above the canonical top bit (47 or 56), by levels.
_CANON_ONES = {4: (1 << (64 - 47)) - 1, 5: (1 << (64 - 56)) - 1}


@lru_cache(maxsize=None)
def _fs_constants(oaw: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Reserved-bit masks by ``level * 2 + leaf`` and output-address masks by
    level, for ``oaw``, as tuples (indexing a tuple is the walk's cheapest
    lookup). A combination the format has no entry for is all reserved."""
    rsvd = first_stage_reserved(oaw)
    return (tuple(rsvd.get((i >> 1, bool(i & 1)), ~0) for i in range(12)),
            tuple(leaf_address_mask(lv, oaw) if lv else 0 for lv in range(6)))


#: ``LEVEL_SHIFT`` as a tuple indexed by level.
_SHIFT = tuple(LEVEL_SHIFT.get(lv, 0) for lv in range(6))


#: ``first_stage_ok`` by ``rw | us << 1 | xd << 2 | sre << 3 | wpe << 4 | dirty << 5``.
_FS_OK = tuple(first_stage_ok(bool(i & 1), bool(i & 2), bool(i & 4), bool(i & 8),
                              bool(i & 16), bool(i & 32)) for i in range(64))


def walk_first_stage(s2: Stage2Port, iova: int, access: int, *, root: int,
                     levels: int = 4, sre: bool = False, wpe: bool = False,
                     eafe: bool = False, oaw: int = DEFAULT_OAW,
                     start: tuple[int, int, bool, bool, bool] | None = None,
                     tables: list[tuple[int, int, bool, bool, bool]] | None = None,
                     ) -> Translation | Fault:
    """Translate ``iova`` (IOVA -> GPA) through the first-stage tables at ``root``.

    A paging-structure cache (VT-d "paging-structure caches"; the model's is
    in ``iotlb``) plugs in here: ``start = (level, table, rw, us, xd)``
    resumes the walk at ``level``'s entry in the table at GPA ``table``, with
    the rights accumulated above it; on success, ``tables`` (a list) gets
    ``(level, table, rw, us, xd)`` for every non-leaf entry this walk read:
    the table it points to and the rights accumulated down to it. The
    accessed flags of the entries above ``start`` are not touched (they were
    set by the walk that cached them).
    """
    rsvd, leaf_masks = _fs_constants(oaw)
    t = walk_first_stage_raw(s2, iova, access, root & leaf_masks[1], levels,
                             walk_modes(sre, wpe), eafe, start, tables, rsvd, leaf_masks)
    if t.__class__ is Fault:
        return t  # type: ignore[return-value]
    base, output, size, level, ok, reads, writes, dirty, locs = t  # type: ignore[misc]
    return Translation(base, output, size, level, ok, reads, writes, dirty,
                       [loc[0] for loc in locs])


def walk_modes(sre: bool, wpe: bool) -> int:
    """``walk_first_stage_raw``'s ``modes`` for a PASID entry's SRE and WPE."""
    return bool(sre) << 3 | bool(wpe) << 4


#: ``walk_first_stage_raw``'s result: ``(iova, output, size, level, ok, reads,
#: writes, dirty, locs)`` as in ``Translation``, ``locs`` a list of ``(gpa, mem,
#: offset, pte)`` per entry read (``Translation.path`` is their GPAs).
RawTranslation = tuple[int, int, int, int, int, int, int, bool, list]


def walk_first_stage_raw(s2: Stage2Port, iova: int, access: int, table: int, levels: int,
                         modes: int, eafe: bool,
                         start: tuple[int, int, bool, bool, bool] | None,
                         tables: list[tuple[int, int, bool, bool, bool]] | None,
                         rsvd: tuple[int, ...] = _fs_constants(DEFAULT_OAW)[0],
                         leaf_masks: tuple[int, ...] = _fs_constants(DEFAULT_OAW)[1],
                         ) -> RawTranslation | Fault:
    """``walk_first_stage`` with positional arguments and a tuple result, for
    the model's miss path (no keyword parsing, no ``Translation``).

    ``table`` is the root already masked to its table address; ``modes`` is
    ``sre << 3 | wpe << 4``; ``rsvd`` and ``leaf_masks`` are ``_fs_constants``
    of the output-address width (default: 48 bits). Same checks, same
    accessed/dirty updates, same faults.
    """
    top = iova >> (47 if levels == 4 else 56)
    if top and top != _CANON_ONES[levels]:
        return Fault(FaultKind.FS_NON_CANONICAL, Stage.S1, iova, access, level=levels)
    table_mask = leaf_masks[1]
    reads = 0
    if start is None:
        level, rw, us, xd = levels, True, True, False
    else:
        level, table, rw, us, xd = start
    locs: list[tuple[int, memoryview, int, int]] = []
    nonleaf: list[tuple[int, int, bool, bool, bool]] | None = [] if tables is not None else None
    # The bits set in every entry read, and in any: the rights R/W, U/S (AND)
    # and XD (OR) of this walk's entries, and whether all have A already.
    every, anyp = -1, 0
    while True:
        gpa = table + ((iova >> _SHIFT[level]) & 511) * 8
        got = s2.fetch(gpa, False)
        if got.__class__ is Fault:
            return got.with_(s1_fetch=True, iova=iova, access=access, level=level,
                             reads=reads + got.reads)
        mem, off, n2 = got
        reads += 1 + n2
        pte = _QWORD.unpack_from(mem, off)[0]
        if not pte & _P:
            return Fault(FaultKind.PAGING_ENTRY_INV, Stage.S1, iova, access, level=level,
                         reads=reads)
        leaf = level == 1 or (level <= 3 and bool(pte & _PS))
        if pte & rsvd[level * 2 + leaf]:
            return Fault(FaultKind.PAGING_ENTRY_RSVD, Stage.S1, iova, access, level=level,
                         reads=reads)
        locs.append((gpa, mem, off, pte))
        every &= pte
        anyp |= pte
        if leaf:
            break
        table = pte & table_mask
        if nonleaf is not None:
            nonleaf.append((level, table, rw and bool(every & _RW), us and bool(every & _US),
                            xd or bool(anyp & _XD)))
        level -= 1
    rw = rw and bool(every & _RW)
    us = us and bool(every & _US)
    xd = xd or bool(anyp & _XD)
    # Allowed once D is set (``first_stage_ok`` with dirty) is exactly "not
    # denied": the reason is looked for only when it is not.
    rights = rw | (us << 1) | (xd << 2) | modes
    ok_dirty = _FS_OK[rights | 32]
    if not (ok_dirty >> access) & 1:
        denied = _first_stage_denied(access, rw, us, xd, bool(modes & 8), bool(modes & 16))
        assert denied
        return Fault(denied, Stage.S1, iova, access, level=level, reads=reads)
    # Accessed/dirty updates, through stage 2 with write permission.
    writes = 0
    a_bits = _A | (_EA if eafe else 0)
    last = len(locs) - 1
    leaf_pte = locs[last][3]
    dirty = bool(leaf_pte & _D)
    if every & a_bits != a_bits or (access & W and not dirty):   # else nothing to set
        for i, (gpa, mem, off, pte) in enumerate(locs):
            want = a_bits | (_D if i == last and access & W else 0)
            if pte & want == want:
                continue
            got = s2.fetch(gpa, True)
            if got.__class__ is Fault:
                return Fault(FaultKind.FS_BIT_UPDATE_FAILED, Stage.S2, iova, access, gpa,
                             level + last - i, s1_fetch=True, reads=reads)
            wmem, woff, _n2 = got  # the locked update reuses the fetch's stage-2 translation
            cur = _QWORD.unpack_from(wmem, woff)[0]
            _QWORD.pack_into(wmem, woff, cur | want)
            writes += 1
            if i == last and want & _D:
                dirty = True
    if nonleaf:
        tables.extend(nonleaf)   # type: ignore[union-attr]
    size = 1 << _SHIFT[level]
    return (iova & ~(size - 1), leaf_pte & leaf_masks[level], size, level,
            ok_dirty if dirty else _FS_OK[rights], reads, writes, dirty, locs)


def walk_second_stage(mem: memoryview, addr: int, access: int, *, root: int,
                      levels: int = 4, ad: bool = False, oaw: int = DEFAULT_OAW,
                      base: int = 0) -> Translation | Fault:
    """Translate ``addr`` (GPA -> HPA) through second-stage tables in ``mem``.

    ``mem`` is host-physical memory: physical address ``p`` is ``mem[p - base]``.
    ``ad`` enables accessed/dirty updates (the PASID entry's SSADE).
    """
    if addr >> (12 + 9 * levels):
        return Fault(FaultKind.ADDR_BEYOND_MGAW, Stage.S2, None, access, addr, level=levels)
    rsvd = second_stage_reserved(oaw)
    table_mask = leaf_address_mask(1, oaw)
    table = root & table_mask
    reads = 0
    r = w = True
    path: list[int] = []
    offs: list[int] = []
    level = levels
    size_mem = len(mem)
    while True:
        pa = table + ((addr >> LEVEL_SHIFT[level]) & 511) * 8
        off = pa - base
        if off < 0 or off + 8 > size_mem:
            return Fault(FaultKind.PAGING_ENTRY_INV, Stage.S2, None, access, addr, level=level,
                         reads=reads)
        pte = _QWORD.unpack_from(mem, off)[0]
        reads += 1
        if not pte & (_SR | _SW):
            return Fault(FaultKind.PAGING_ENTRY_INV, Stage.S2, None, access, addr, level=level,
                         reads=reads)
        leaf = level == 1 or (level <= 3 and bool(pte & _SPS))
        if pte & rsvd[(level, leaf)]:
            return Fault(FaultKind.PAGING_ENTRY_RSVD, Stage.S2, None, access, addr, level=level,
                         reads=reads)
        r = r and bool(pte & _SR)
        w = w and bool(pte & _SW)
        path.append(pa)
        offs.append(off)
        if leaf:
            break
        table = pte & table_mask
        level -= 1
    if access & (R | X) and not r:
        return Fault(FaultKind.READ, Stage.S2, None, access, addr, level=level, reads=reads)
    if access & W and not w:
        return Fault(FaultKind.WRITE, Stage.S2, None, access, addr, level=level, reads=reads)
    writes = 0
    last = len(offs) - 1
    dirty = True
    if ad:
        dirty = bool(_QWORD.unpack_from(mem, offs[last])[0] & _SD)
        for i, off in enumerate(offs):
            want = _SA | (_SD if i == last and access & W else 0)
            cur = _QWORD.unpack_from(mem, off)[0]
            if cur & want != want:
                _QWORD.pack_into(mem, off, cur | want)
                writes += 1
                if want & _SD:
                    dirty = True
    size = 1 << LEVEL_SHIFT[level]
    leaf_pte = _QWORD.unpack_from(mem, offs[last])[0]
    return Translation(
        iova=addr & ~(size - 1), output=leaf_pte & leaf_address_mask(level, oaw),
        size=size, level=level, ok=second_stage_ok(r, w, dirty),
        reads=reads, writes=writes, dirty=dirty, path=path,
    )


class SecondStageTables:
    """A stage-2 port made of real second-stage tables in host memory."""

    def __init__(self, mem: memoryview | bytearray, root: int, *, levels: int = 4,
                 ad: bool = False, oaw: int = DEFAULT_OAW, base: int = 0) -> None:
        self.mem = memoryview(mem).cast("B") if not isinstance(mem, memoryview) else mem
        self.root, self.levels, self.ad, self.oaw, self.base = root, levels, ad, oaw, base

    def walk(self, gpa: int, access: int) -> Translation | Fault:
        return walk_second_stage(self.mem, gpa, access, root=self.root, levels=self.levels,
                                 ad=self.ad, oaw=self.oaw, base=self.base)

    def fetch(self, gpa: int, write: bool) -> tuple[memoryview, int, int] | Fault:
        t = self.walk(gpa, W if write else R)
        if t.__class__ is Fault:
            return t
        return self.mem, t.output + (gpa - t.iova) - self.base, t.reads


def walk_nested(s2: Stage2Port, iova: int, access: int, **first_stage: int | bool
                ) -> Translation | Fault:
    """A full nested translation: first stage, then stage 2 of the final GPA.

    The result's ``output`` is the stage-2 memory offset of ``iova`` itself (not
    of the page base) and ``reads`` counts every memory read of both stages.
    """
    t = walk_first_stage(s2, iova, access, **first_stage)  # type: ignore[arg-type]
    if t.__class__ is Fault:
        return t
    gpa = t.output + (iova - t.iova)
    got = s2.fetch(gpa, bool(access & W))
    if got.__class__ is Fault:
        return got.with_(iova=iova, access=access, reads=t.reads + got.reads)
    _mem, off, n2 = got
    t.reads += n2
    t.output = off
    return t
