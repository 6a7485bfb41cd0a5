"""VT-d paging-entry formats, declared with ``vuser.wire.BitLayout``.

First stage (VT-d §9.7 "first-stage paging entries"): the x86-64 format, 4 or
5 levels, 512 entries of 8 bytes per 4 KiB table, leaves at level 1 (4 KiB),
level 2 with PS (2 MiB) and level 3 with PS (1 GiB). Bits 62:52 are ignored;
bits from the output-address width up to 51 are reserved, and so are the
large-page bits below the page size (bit 12 being PAT) and PS at levels 4-5
(VT-d §9.7, QEMU ``VTD_FPTE_*_RSVD_MASK``).

Second stage (VT-d §9.8, generic_pt ``vtdss.h``): R0 W1 X2, EMT 5:3, IPAT6,
PS7, A8, D9, SNP11, address 51:12. There is no P bit: an entry is present
when R or W is set. Reserved bits follow the same per-level pattern.

Level numbering follows the spec: level 1 holds 4 KiB leaves, level 4 is the
PML4, level 5 the PML5.
"""

from __future__ import annotations

from functools import lru_cache

from vuser.memory import PAGE_SHIFT, PAGE_SIZE
from vuser.wire import BitLayout, Bits

ENTRIES_PER_TABLE = 512
PTE_SIZE = 8

#: Input-address bit where each level's 9-bit index starts.
LEVEL_SHIFT = {1: 12, 2: 21, 3: 30, 4: 39, 5: 48}
#: Page size of a leaf at each level that may hold one.
LEAF_SIZE = {1: 1 << 12, 2: 1 << 21, 3: 1 << 30}

#: VTD_S1 ``addr_width`` -> first-stage levels (FLPM 0 = 4-level, 1 = 5-level).
FIRST_STAGE_LEVELS = {48: 4, 57: 5}
#: Second-stage adjusted guest address width -> levels (aw 1/2/3 in the spec).
SECOND_STAGE_LEVELS = {39: 3, 48: 4, 57: 5}

#: Default output (host or guest physical) address width of entries.
DEFAULT_OAW = 48


class FirstStagePte(BitLayout, width=64):
    """VT-d first-stage paging entry (x86-64 PML5E/PML4E/PDPTE/PDE/PTE).

    ``PS`` is the page-size bit at levels 2 and 3; in a level-1 PTE the same
    bit is PAT. ``EA`` is the extended-accessed flag, set with A when the
    PASID entry has EAFE.
    """

    P = Bits(0)
    RW = Bits(1)
    US = Bits(2)
    PWT = Bits(3)
    PCD = Bits(4)
    A = Bits(5)
    D = Bits(6)
    PS = Bits(7)
    G = Bits(8)
    EA = Bits(10)
    ADDR = Bits(12, 51)
    XD = Bits(63)


class SecondStagePte(BitLayout, width=64):
    """VT-d second-stage paging entry."""

    R = Bits(0)
    W = Bits(1)
    X = Bits(2)
    EMT = Bits(3, 5)
    IPAT = Bits(6)
    PS = Bits(7)
    A = Bits(8)
    D = Bits(9)
    SNP = Bits(11)
    ADDR = Bits(12, 51)


def _above(oaw: int) -> int:
    """Bits oaw..51: address bits the hardware does not implement."""
    return ((1 << 52) - 1) & ~((1 << oaw) - 1)


@lru_cache(maxsize=None)
def first_stage_reserved(oaw: int = DEFAULT_OAW) -> dict[tuple[int, bool], int]:
    """Reserved-bit masks keyed by ``(level, leaf)``."""
    hi = _above(oaw)
    ps = FirstStagePte.PS.mask
    return {
        (1, True): hi,
        (2, False): hi,
        (2, True): hi | 0x1FE000,        # bits 20:13 of a 2 MiB leaf
        (3, False): hi,
        (3, True): hi | 0x3FFFE000,      # bits 29:13 of a 1 GiB leaf
        (4, False): hi | ps,
        (5, False): hi | ps,
    }


@lru_cache(maxsize=None)
def second_stage_reserved(oaw: int = DEFAULT_OAW) -> dict[tuple[int, bool], int]:
    """Reserved-bit masks keyed by ``(level, leaf)``."""
    hi = _above(oaw)
    ps = SecondStagePte.PS.mask
    return {
        (1, True): hi,
        (2, False): hi,
        (2, True): hi | 0x1FF000,        # bits 20:12 of a 2 MiB leaf
        (3, False): hi,
        (3, True): hi | 0x3FFFF000,      # bits 29:12 of a 1 GiB leaf
        (4, False): hi | ps,
        (5, False): hi | ps,
    }


def leaf_address_mask(level: int, oaw: int = DEFAULT_OAW) -> int:
    """Mask of the output-address bits of a leaf (or table pointer) at ``level``."""
    low = LEAF_SIZE.get(level, PAGE_SIZE) - 1
    return ((1 << oaw) - 1) & ~low


def index_of(addr: int, level: int) -> int:
    """The 9-bit table index of ``addr`` at ``level``."""
    return (addr >> LEVEL_SHIFT[level]) & (ENTRIES_PER_TABLE - 1)


def is_canonical(addr: int, levels: int) -> bool:
    """x86-64 canonical form: bits 63..(top) all copy bit ``top``.

    ``top`` is 47 for 4-level and 56 for 5-level paging.
    """
    top = 47 if levels == 4 else 56
    hi = addr >> top
    return hi == 0 or hi == (1 << (64 - top)) - 1
