"""Build VT-d first- or second-stage tables in a memory buffer.

For tests, benchmarks and host-side experiments: a ``PageTableBuilder`` owns a
window of memory (a ``memoryview`` whose byte 0 is at address ``base``),
allocates 4 KiB tables from it with a bump allocator, and writes entries in
the declared formats (``formats.FirstStagePte`` / ``SecondStagePte``). For
nested experiments the window is guest memory and addresses are GPAs; the
model then reads the same bytes through stage 2.
"""

from __future__ import annotations

import struct

from .formats import (
    DEFAULT_OAW, LEAF_SIZE, LEVEL_SHIFT, PAGE_SIZE, FirstStagePte, SecondStagePte,
    leaf_address_mask,
)

_QWORD = struct.Struct("<Q")


class PageTableBuilder:
    """Writes page tables of one format into ``mem``.

    ``fmt`` is ``"first"`` (x86-64 / VT-d first stage) or ``"second"``.
    Tables are allocated from ``[alloc_start, alloc_end)`` (addresses, not
    offsets); the root is allocated at construction.
    """

    def __init__(self, mem: memoryview | bytearray, *, base: int = 0, alloc_start: int | None = None,
                 alloc_end: int | None = None, fmt: str = "first", levels: int = 4,
                 oaw: int = DEFAULT_OAW) -> None:
        if fmt not in ("first", "second"):
            raise ValueError(f"fmt must be 'first' or 'second', not {fmt!r}")
        if levels not in ((4, 5) if fmt == "first" else (3, 4, 5)):
            raise ValueError(f"{fmt}-stage tables cannot have {levels} levels")
        self.mem = mem if isinstance(mem, memoryview) else memoryview(mem)
        self.base, self.fmt, self.levels, self.oaw = base, fmt, levels, oaw
        start = base if alloc_start is None else alloc_start
        self._next = (start + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
        self._end = base + len(self.mem) if alloc_end is None else alloc_end
        self.tables = 0
        self.root = self.alloc_table()

    # -- memory ---------------------------------------------------------
    def read_entry(self, addr: int) -> int:
        return _QWORD.unpack_from(self.mem, addr - self.base)[0]

    def write_entry(self, addr: int, value: int) -> None:
        _QWORD.pack_into(self.mem, addr - self.base, value)

    def alloc_table(self) -> int:
        addr = self._next
        if addr + PAGE_SIZE > self._end:
            raise MemoryError("page-table window exhausted")
        self._next += PAGE_SIZE
        off = addr - self.base
        self.mem[off:off + PAGE_SIZE] = bytes(PAGE_SIZE)
        self.tables += 1
        return addr

    # -- entries --------------------------------------------------------
    def _table_entry(self, table: int) -> int:
        if self.fmt == "first":
            return FirstStagePte.pack(P=1, RW=1, US=1, ADDR=table >> 12)
        return SecondStagePte.pack(R=1, W=1, ADDR=table >> 12)

    def leaf_entry(self, oa: int, level: int, *, write: bool = True, user: bool = True,
                   xd: bool = False, accessed: bool = False, dirty: bool = False) -> int:
        """The leaf entry mapping output address ``oa`` at ``level``."""
        if oa & (LEAF_SIZE[level] - 1):
            raise ValueError(f"output {oa:#x} not aligned to the level-{level} page")
        ps = 1 if level > 1 else 0
        if self.fmt == "first":
            return FirstStagePte.pack(P=1, RW=int(write), US=int(user), PS=ps, A=int(accessed),
                                      D=int(dirty), XD=int(xd), ADDR=oa >> 12)
        return SecondStagePte.pack(R=1, W=int(write), PS=ps, A=int(accessed), D=int(dirty),
                                   ADDR=oa >> 12)

    def entry_address(self, iova: int, level: int) -> int | None:
        """Address of the entry for ``iova`` at ``level``, or None if not reached."""
        table = self.root
        for lvl in range(self.levels, level, -1):
            e = self.read_entry(table + ((iova >> LEVEL_SHIFT[lvl]) & 511) * 8)
            if not self._present(e) or (lvl <= 3 and e & FirstStagePte.PS.mask):
                return None
            table = e & leaf_address_mask(1, self.oaw)
        return table + ((iova >> LEVEL_SHIFT[level]) & 511) * 8

    def _present(self, e: int) -> bool:
        return bool(e & 1) if self.fmt == "first" else bool(e & 3)

    def map(self, iova: int, oa: int, size: int, *, page_size: int = PAGE_SIZE,
            **perm: bool) -> None:
        """Map ``[iova, iova + size)`` to ``oa`` with leaves of ``page_size``."""
        level = {v: k for k, v in LEAF_SIZE.items()}.get(page_size)
        if level is None:
            raise ValueError(f"page size {page_size:#x} is not 4K, 2M or 1G")
        if (iova | oa | size) & (page_size - 1):
            raise ValueError("iova, output and size must be page aligned")
        for off in range(0, size, page_size):
            self.set_leaf(iova + off, self.leaf_entry(oa + off, level, **perm), level)

    def set_leaf(self, iova: int, entry: int, level: int) -> int:
        """Store ``entry`` as the level-``level`` entry for ``iova``; returns its address."""
        table = self.root
        for lvl in range(self.levels, level, -1):
            addr = table + ((iova >> LEVEL_SHIFT[lvl]) & 511) * 8
            e = self.read_entry(addr)
            if not self._present(e):
                nxt = self.alloc_table()
                self.write_entry(addr, self._table_entry(nxt))
                table = nxt
            elif lvl <= 3 and e & FirstStagePte.PS.mask:
                raise ValueError(f"{iova:#x} is already covered by a level-{lvl} page")
            else:
                table = e & leaf_address_mask(1, self.oaw)
        addr = table + ((iova >> LEVEL_SHIFT[level]) & 511) * 8
        self.write_entry(addr, entry)
        return addr

    def unmap(self, iova: int, level: int = 1) -> None:
        """Clear the level-``level`` entry for ``iova`` (tables are kept)."""
        addr = self.entry_address(iova, level)
        if addr is not None:
            self.write_entry(addr, 0)
