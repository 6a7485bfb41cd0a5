"""Base address registers and the expansion ROM BAR, sized through write masks.

PCI Local Bus 3.0 §6.2.5.1 (BARs) and §6.2.5.2 (expansion ROM); PCIe Base 6.0
§7.5.1.2.1. Software sizes a BAR by writing all ones and reading back: the
address bits below the size are hardwired to 0 and the type bits are RO, so the
value read is ``~(size - 1)`` with the type bits. That is exactly a write mask
over the address bits, so sizing needs no code of its own:

- 32-bit memory: bits 31..4 address (wmask ``~(size-1) & ~0xf``), bit 3
  prefetchable, bits 2..1 type 00.
- 64-bit memory: a pair; the lower register as above with type 10, the upper
  register holds address bits 63..32 and is RW over ``~(size-1) >> 32`` (all
  ones for BARs below 4 GiB).
- I/O: bits 31..2 address, bit 0 = 1.
- ROM (offset 0x30): bits 31..11 address, bit 0 enable (RW); no ROM means the
  whole register is RO 0, which QEMU reads as size 0.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from vuser.errors import LocalProtocolError
from vuser.wire import BitLayout, Bits

from .config import ConfigSpace, Type0Header

__all__ = ["BarKind", "Bar", "BarReg", "RomReg", "bar_offset", "ROM_BAR_OFFSET", "define_rom_bar"]

ROM_BAR_OFFSET = Type0Header.offset_of("rom_address")


def bar_offset(index: int) -> int:
    """Config offset of BAR ``index`` (0..5)."""
    if not 0 <= index <= 5:
        raise LocalProtocolError(f"BAR index {index} is not 0..5")
    return Type0Header.offset_of("bar0") + 4 * index


class BarReg(BitLayout, width=32):
    """Low BAR register bits (PCI Local Bus 3.0 §6.2.5.1)."""

    IO_SPACE = Bits(0)          # RO: 1 = I/O BAR
    MEM_TYPE = Bits(1, 2)       # RO: 00 32-bit, 10 64-bit
    PREFETCH = Bits(3)          # RO

    MEM_TYPE_32 = 0b00
    MEM_TYPE_64 = 0b10
    MEM_ADDR_MASK = 0xFFFF_FFF0
    IO_ADDR_MASK = 0xFFFF_FFFC


class RomReg(BitLayout, width=32):
    """Expansion ROM base address register (PCI Local Bus 3.0 §6.2.5.2)."""

    ENABLE = Bits(0)            # RW
    ADDRESS = Bits(11, 31)      # RW above the size

    ADDR_MASK = 0xFFFF_F800


class BarKind(enum.Enum):
    MEM32 = "mem32"
    MEM64 = "mem64"
    IO = "io"


@dataclass(frozen=True)
class Bar:
    """One BAR's shape: kind, size (a power of two) and prefetchability."""

    kind: BarKind
    size: int
    prefetchable: bool = False

    def __post_init__(self) -> None:
        s = self.size
        if s <= 0 or s & (s - 1):
            raise LocalProtocolError(f"BAR size {s:#x} is not a power of two")
        if self.kind is BarKind.IO:
            if not 4 <= s <= 256:
                raise LocalProtocolError(f"I/O BAR size {s:#x} is not 4..256 bytes")
            if self.prefetchable:
                raise LocalProtocolError("an I/O BAR cannot be prefetchable")
        elif s < 16:
            raise LocalProtocolError(f"memory BAR size {s:#x} is below 16 bytes")
        elif self.kind is BarKind.MEM32 and s > 1 << 31:
            raise LocalProtocolError(f"32-bit BAR size {s:#x} exceeds 2 GiB")

    @classmethod
    def mem32(cls, size: int, prefetchable: bool = False) -> Bar:
        return cls(BarKind.MEM32, size, prefetchable)

    @classmethod
    def mem64(cls, size: int, prefetchable: bool = False) -> Bar:
        return cls(BarKind.MEM64, size, prefetchable)

    @classmethod
    def io(cls, size: int) -> Bar:
        return cls(BarKind.IO, size)

    @property
    def slots(self) -> int:
        """BAR registers used: 2 for a 64-bit BAR."""
        return 2 if self.kind is BarKind.MEM64 else 1

    def define(self, config: ConfigSpace, index: int) -> None:
        """Define the BAR register(s) at ``index`` (and ``index + 1`` if 64-bit)."""
        if index + self.slots > 6:
            raise LocalProtocolError(f"a {self.kind.value} BAR cannot start at index {index}")
        size_mask = ~(self.size - 1) & ((1 << 64) - 1)
        if self.kind is BarKind.IO:
            config.define_int(bar_offset(index), 4, BarReg.pack(IO_SPACE=1),
                              wmask=size_mask & BarReg.IO_ADDR_MASK)
            return
        mem_type = BarReg.MEM_TYPE_64 if self.kind is BarKind.MEM64 else BarReg.MEM_TYPE_32
        low = BarReg.pack(MEM_TYPE=mem_type, PREFETCH=int(self.prefetchable))
        config.define_int(bar_offset(index), 4, low, wmask=size_mask & BarReg.MEM_ADDR_MASK)
        if self.kind is BarKind.MEM64:
            config.define_int(bar_offset(index + 1), 4, 0, wmask=size_mask >> 32)


def define_rom_bar(config: ConfigSpace, size: int) -> None:
    """Define the ROM BAR for a ROM of ``size`` bytes (0: no ROM, register RO 0)."""
    if size == 0:
        config.define_int(ROM_BAR_OFFSET, 4, 0, wmask=0)
        return
    if size < 2048 or size & (size - 1):
        raise LocalProtocolError(f"ROM size {size:#x} is not a power of two >= 2 KiB")
    wmask = (~(size - 1) & RomReg.ADDR_MASK) | RomReg.ENABLE.mask
    config.define_int(ROM_BAR_OFFSET, 4, 0, wmask=wmask)
