"""Regions behind BARs and the ROM: registers, memfd-backed RAM, MSI-X table/PBA.

A ``Region`` is what a REGION_READ/REGION_WRITE on index 0..6 reaches. Bounds
are checked once, in ``Region.access_check`` (``RemoteProtocolError(EINVAL)``,
like libvfio-user's ``is_valid_region_access``); ``checked_read`` and
``checked_write`` are that check followed by ``read``/``write``, what the
device calls. The kinds then decide what an access means:

- ``RegisterFile``: little-endian registers of 4 bytes with read/write
  callbacks; accesses must be DWORD aligned and a multiple of 4 bytes (one
  callback per register, in address order), else EINVAL. Undeclared offsets
  read 0 and ignore writes.
- ``RamRegion``: plain memory in a memfd (``os.memfd_create``), mmap-able by
  the client: ``info()`` gives the fd and one sparse-mmap area covering it.
- ``MsixRegion``: the MSI-X table (stored, not interpreted: QEMU emulates it)
  and the PBA (read-only, from ``Interrupts.pending_bits``).
- ``RomRegion``: read-only bytes (expansion ROM); writes are EINVAL.
"""

from __future__ import annotations

import errno
import mmap
import os
from collections.abc import Callable
from dataclasses import dataclass

from vuser.errors import LocalProtocolError, RemoteProtocolError
from vuser.backend import (
    VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
    RegionInfo,
)

from .irq import Interrupts, IrqIndex

__all__ = ["Region", "Register", "RegisterFile", "RamRegion", "MsixRegion", "RomRegion"]

RW = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE


class Region:
    """Base of BAR/ROM region handlers: ``size`` bytes, ``read``/``write``."""

    flags = RW

    def __init__(self, size: int) -> None:
        self.size = size

    def info(self) -> RegionInfo:
        return RegionInfo(flags=self.flags, size=self.size)

    def access_check(self, offset: int, count: int) -> None:
        if offset < 0 or count < 0 or offset + count > self.size:
            raise RemoteProtocolError(
                errno.EINVAL, f"access {offset:#x}+{count} beyond region of {self.size:#x}")

    def checked_read(self, offset: int, count: int) -> bytes:
        """``access_check``, then ``read`` (nothing to read for 0 bytes)."""
        self.access_check(offset, count)
        return self.read(offset, count) if count else b""

    def checked_write(self, offset: int, data: bytes) -> None:
        """``access_check``, then ``write`` (nothing to write for 0 bytes)."""
        self.access_check(offset, len(data))
        if data:
            self.write(offset, data)

    def read(self, offset: int, count: int) -> bytes:
        """Bounds already checked."""
        raise NotImplementedError

    def write(self, offset: int, data: bytes) -> None:
        """Bounds already checked."""
        raise NotImplementedError

    def reset(self) -> None:
        """DEVICE_RESET (default: nothing)."""

    def close(self) -> None:
        """Release host resources (default: nothing)."""


@dataclass
class Register:
    """One 32-bit register: reset value, RW bits, optional behaviour.

    ``read()`` overrides the stored value; ``write(value)`` receives the
    written value after the RW bits were stored (RO bits keep their value).
    """

    offset: int
    name: str
    reset: int = 0
    wmask: int = 0xFFFF_FFFF
    read: Callable[[], int] | None = None
    write: Callable[[int], None] | None = None


def _misaligned(offset: int, count: int) -> RemoteProtocolError:
    return RemoteProtocolError(
        errno.EINVAL, f"register access {offset:#x}+{count} is not DWORD aligned")


class RegisterFile(Region):
    """DWORD registers at fixed offsets (see the module doc)."""

    def __init__(self, size: int, registers: list[Register]) -> None:
        super().__init__(size)
        self.registers: dict[int, Register] = {}
        for reg in registers:
            if reg.offset % 4 or not 0 <= reg.offset < size or reg.offset in self.registers:
                raise LocalProtocolError(f"register {reg.name} at bad offset {reg.offset:#x}")
            self.registers[reg.offset] = reg
        self.values = {off: reg.reset for off, reg in self.registers.items()}
        self._by_name = {reg.name: reg.offset for reg in registers}
        self._last_dword = size - 4     # the highest offset a 4-byte access may start at

    def checked_read(self, offset: int, count: int) -> bytes:
        """``Region.checked_read``; a 4-byte access within bounds and aligned (every
        check passed, the bounds first as ``access_check`` has them) is one lookup."""
        if count == 4 and 0 <= offset <= self._last_dword and not offset & 3:
            reg = self.registers.get(offset)
            if reg is None:
                return b"\0\0\0\0"
            read = reg.read
            return ((read() if read else self.values[offset]) & 0xFFFF_FFFF).to_bytes(4, "little")
        self.access_check(offset, count)
        return self.read(offset, count) if count else b""

    def checked_write(self, offset: int, data: bytes) -> None:
        """``Region.checked_write``, with the same 4-byte case as ``checked_read``."""
        if len(data) == 4 and 0 <= offset <= self._last_dword and not offset & 3:
            reg = self.registers.get(offset)
            if reg is not None:
                value = int.from_bytes(data, "little")
                wmask = reg.wmask
                if wmask:
                    self.values[offset] = (self.values[offset] & ~wmask) | (value & wmask)
                if reg.write:
                    reg.write(value)
            return
        self.access_check(offset, len(data))
        if data:
            self.write(offset, data)

    def __getitem__(self, name: str) -> int:
        return self.values[self._by_name[name]]

    def __setitem__(self, name: str, value: int) -> None:
        """Device-side store (masks ignored)."""
        self.values[self._by_name[name]] = value & 0xFFFF_FFFF

    def read(self, offset: int, count: int) -> bytes:
        if offset % 4 or count % 4:
            raise _misaligned(offset, count)
        if count == 4:          # one register: nearly every access
            reg = self.registers.get(offset)
            value = 0 if reg is None else (reg.read() if reg.read else self.values[offset])
            return (value & 0xFFFF_FFFF).to_bytes(4, "little")
        out = bytearray()
        for off in range(offset, offset + count, 4):
            reg = self.registers.get(off)
            value = 0 if reg is None else (reg.read() if reg.read else self.values[off])
            out += (value & 0xFFFF_FFFF).to_bytes(4, "little")
        return bytes(out)

    def write(self, offset: int, data: bytes) -> None:
        if offset % 4 or len(data) % 4:
            raise _misaligned(offset, len(data))
        for k in range(0, len(data), 4):
            reg = self.registers.get(offset + k)
            if reg is None:
                continue
            value = int.from_bytes(data[k:k + 4], "little")
            old = self.values[reg.offset]
            self.values[reg.offset] = (old & ~reg.wmask) | (value & reg.wmask)
            if reg.write:
                reg.write(value)

    def reset(self) -> None:
        self.values = {off: reg.reset for off, reg in self.registers.items()}


class RamRegion(Region):
    """``size`` bytes of memfd-backed memory the client may mmap (one sparse area)."""

    flags = RW | VFIO_REGION_INFO_FLAG_MMAP

    def __init__(self, size: int, name: str = "vuser-bar") -> None:
        super().__init__(size)
        self.fd = os.memfd_create(name, os.MFD_CLOEXEC)
        try:
            os.ftruncate(self.fd, size)
            self.mem = mmap.mmap(self.fd, size)
        except OSError:
            os.close(self.fd)
            raise

    def info(self) -> RegionInfo:
        return RegionInfo(flags=self.flags, size=self.size, fd=self.fd, mmap_offset=0,
                          sparse_areas=((0, self.size),))

    def read(self, offset: int, count: int) -> bytes:
        return self.mem[offset:offset + count]

    def write(self, offset: int, data: bytes) -> None:
        self.mem[offset:offset + len(data)] = data

    def close(self) -> None:
        if self.fd >= 0:
            self.mem.close()
            os.close(self.fd)
            self.fd = -1


class MsixRegion(Region):
    """MSI-X table at ``table_offset`` and PBA at ``pba_offset`` (PCIe Base 6.0 §7.7.2.5)."""

    ENTRY_SIZE = 16

    def __init__(self, size: int, vectors: int, table_offset: int, pba_offset: int,
                 irqs: Interrupts) -> None:
        super().__init__(size)
        self.vectors, self.irqs = vectors, irqs
        self.table_offset, self.pba_offset = table_offset, pba_offset
        self.table_size = vectors * self.ENTRY_SIZE
        self.pba_size = ((vectors + 63) // 64) * 8
        if (table_offset + self.table_size > size or pba_offset + self.pba_size > size
                or (table_offset < pba_offset + self.pba_size
                    and pba_offset < table_offset + self.table_size)):
            raise LocalProtocolError("MSI-X table and PBA do not fit apart in the BAR")
        self.table = bytearray(self.table_size)
        self.reset()

    def reset(self) -> None:
        # Vector Control resets to masked (PCIe Base 6.0 §7.7.2.2).
        for n in range(self.vectors):
            self.table[n * 16 + 12] = 1

    def read(self, offset: int, count: int) -> bytes:
        out = bytearray(count)
        pba = self.irqs.pending_bits(IrqIndex.MSIX).to_bytes(self.pba_size, "little")
        for span_start, span in ((self.table_offset, self.table), (self.pba_offset, pba)):
            lo, hi = max(offset, span_start), min(offset + count, span_start + len(span))
            if lo < hi:
                out[lo - offset:hi - offset] = span[lo - span_start:hi - span_start]
        return bytes(out)

    def write(self, offset: int, data: bytes) -> None:
        lo = max(offset, self.table_offset)
        hi = min(offset + len(data), self.table_offset + self.table_size)
        if lo < hi:  # PBA and the gaps ignore writes
            self.table[lo - self.table_offset:hi - self.table_offset] = data[lo - offset:hi - offset]


class RomRegion(Region):
    """Expansion ROM contents, padded to ``size`` (a power of two)."""

    flags = VFIO_REGION_INFO_FLAG_READ

    def __init__(self, data: bytes, size: int) -> None:
        super().__init__(size)
        if len(data) > size:
            raise LocalProtocolError(f"ROM image of {len(data)} bytes exceeds {size}")
        self.data = bytes(data).ljust(size, b"\xff")

    def read(self, offset: int, count: int) -> bytes:
        return self.data[offset:offset + count]

    def write(self, offset: int, data: bytes) -> None:
        raise RemoteProtocolError(errno.EINVAL, "the ROM is read-only")
