"""The ACPI DMA Remapping Reporting table (DMAR) for a kernel-owned vuser-iommu.

Linux finds VT-d units only through this table (Intel VT-d spec ch. 8). QEMU
builds one only for its own ``intel-iommu``, so for vuser-iommu the launcher
passes one with ``-acpitable file=...`` (QEMU keeps signature, revision and the
OEM fields, and rewrites length and checksum; ``hw/acpi/core.c``). The table
built here (§8.1-§8.5, all little-endian):

- header ``DMAR`` revision 1, host address width 48 - 1, flags 0 (no
  INTR_REMAP: the guest boots with ``intremap=off``);
- one DRHD (§8.3) with flags 0 (not INCLUDE_PCI_ALL, which would also put
  q35's own AHCI behind the unit), segment 0, the unit's register base, and
  one endpoint device scope (§8.3.1, type 1) per device behind it: start bus
  0 and the path (root port device, function), then (0, 0);
- one ATSR (§8.5) with ALL_PORTS, so the kernel allows ATS.

``build_dmar`` writes the bytes; ``parse_dmar`` reads them back, checking every
length and the checksum.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vuser.wire import Bytes, Pad, Struct, u8, u16, u32, u64

__all__ = ["AcpiHeader", "DmarHeader", "RemappingHeader", "Drhd", "DeviceScope", "PathEntry",
           "Atsr", "DRHD", "ATSR", "SCOPE_ENDPOINT", "ATSR_ALL_PORTS", "HOST_ADDRESS_WIDTH",
           "Scope", "DmarUnit", "Dmar", "build_dmar", "parse_dmar"]

DRHD = 0                 # remapping structure types (§8.2)
ATSR = 2
SCOPE_ENDPOINT = 1       # device scope type: PCI endpoint device (§8.3.1)
ATSR_ALL_PORTS = 0x01
HOST_ADDRESS_WIDTH = 48  # the table stores N - 1
PAGE_4K = 0x1000


class AcpiHeader(Struct, size=36):
    """The common ACPI system description table header (ACPI spec 5.2.6)."""

    signature: Bytes(4)
    length: u32
    revision: u8
    checksum: u8
    oem_id: Bytes(6)
    oem_table_id: Bytes(8)
    oem_revision: u32
    creator_id: Bytes(4)
    creator_revision: u32


class DmarHeader(AcpiHeader, size=48):
    """The DMAR's header (§8.1): the ACPI header, host address width, flags."""

    host_address_width: u8  # N - 1
    flags: u8               # bit 0 INTR_REMAP, bit 1 X2APIC_OPT_OUT, bit 2 DMA_CTRL_PLATFORM_OPT_IN
    _reserved: Pad(10)


class RemappingHeader(Struct, size=4):
    """Type and length, the start of every remapping structure (§8.2)."""

    type: u16
    length: u16


class Drhd(Struct, size=16):
    """DMA Remapping Hardware Unit Definition, without its device scopes (§8.3)."""

    type: u16 = DRHD
    length: u16
    flags: u8      # bit 0 INCLUDE_PCI_ALL
    size: u8       # bits 3:0: the register set is 2^N 4 KiB pages
    segment: u16
    register_base: u64


class DeviceScope(Struct, size=6):
    """A device scope entry without its path (§8.3.1)."""

    type: u8
    length: u8
    _reserved: Pad(2)
    enumeration_id: u8
    start_bus: u8


class PathEntry(Struct, size=2):
    """One hop of a device scope path: device and function on the bus so far."""

    device: u8
    function: u8


class Atsr(Struct, size=8):
    """Root Port ATS Capability Reporting, without device scopes (§8.5)."""

    type: u16 = ATSR
    length: u16
    flags: u8      # bit 0 ALL_PORTS
    _reserved: Pad(1)
    segment: u16


@dataclass(frozen=True)
class Scope:
    """A device scope: its type, start bus and path of (device, function)."""

    path: tuple[tuple[int, int], ...]
    type: int = SCOPE_ENDPOINT
    start_bus: int = 0


@dataclass(frozen=True)
class DmarUnit:
    """A DRHD as parsed."""

    register_base: int
    flags: int
    segment: int
    size: int
    scopes: tuple[Scope, ...]


@dataclass(frozen=True)
class Dmar:
    """A DMAR as parsed: header fields, DRHDs, ATSRs (flags, segment)."""

    header: DmarHeader
    units: tuple[DmarUnit, ...]
    atsrs: tuple[tuple[int, int], ...]

    @property
    def host_address_width(self) -> int:
        return self.header.host_address_width + 1


def _scope_bytes(scope: Scope) -> bytes:
    if not scope.path:
        raise ValueError("a device scope needs a path of at least one (device, function)")
    for dev, fn in scope.path:
        if not (0 <= dev < 32 and 0 <= fn < 8):
            raise ValueError(f"path entry ({dev}, {fn}) is not a device 0..31, function 0..7")
    body = b"".join(PathEntry(d, f).pack() for d, f in scope.path)
    head = DeviceScope(type=scope.type, length=DeviceScope.SIZE + len(body),
                       start_bus=scope.start_bus)
    return head.pack() + body


def _register_pages_log2(size: int) -> int:
    if size < PAGE_4K or size & (size - 1):
        raise ValueError(f"register set size {size:#x} is not a power of two >= 4 KiB")
    return (size // PAGE_4K).bit_length() - 1


def _checksum(data: bytes) -> int:
    return -sum(data) & 0xFF


def build_dmar(register_base: int, endpoints: Sequence[Sequence[tuple[int, int]]], *,
               register_size: int = PAGE_4K, oem_id: bytes = b"VUSER ",
               oem_table_id: bytes = b"VUSERDMR") -> bytes:
    """The DMAR bytes: one DRHD at ``register_base`` scoping each path of
    ``endpoints`` (start bus 0), and one ALL_PORTS ATSR. ``ValueError`` on a
    base that is not 4 KiB aligned or a path entry out of range."""
    if not 0 < register_base < 1 << 64 or register_base % PAGE_4K:
        raise ValueError(f"register base {register_base:#x} is not a 4 KiB aligned address")
    if not endpoints:
        raise ValueError("a DRHD without device scopes is ignored by the kernel")
    scopes = b"".join(_scope_bytes(Scope(tuple(p))) for p in endpoints)
    drhd = Drhd(length=Drhd.SIZE + len(scopes), flags=0,
                size=_register_pages_log2(register_size), segment=0,
                register_base=register_base).pack() + scopes
    atsr = Atsr(length=Atsr.SIZE, flags=ATSR_ALL_PORTS, segment=0).pack()
    header = DmarHeader(signature=b"DMAR", length=DmarHeader.SIZE + len(drhd) + len(atsr),
                        revision=1, checksum=0, oem_id=oem_id, oem_table_id=oem_table_id,
                        oem_revision=1, creator_id=b"VUSR", creator_revision=1,
                        host_address_width=HOST_ADDRESS_WIDTH - 1, flags=0)
    body = drhd + atsr
    first = header.pack() + body
    return header.replace(checksum=_checksum(first)).pack() + body


def _parse_scopes(data: bytes, offset: int, end: int) -> tuple[Scope, ...]:
    scopes = []
    while offset < end:
        head = DeviceScope.unpack(data, offset)
        if head.length < DeviceScope.SIZE + PathEntry.SIZE or (head.length - DeviceScope.SIZE) % 2 \
                or offset + head.length > end:
            raise ValueError(f"device scope at {offset} has a bad length {head.length}")
        path = tuple((p.device, p.function) for p in
                     (PathEntry.unpack(data, o) for o in
                      range(offset + DeviceScope.SIZE, offset + head.length, PathEntry.SIZE)))
        scopes.append(Scope(path, head.type, head.start_bus))
        offset += head.length
    return tuple(scopes)


def parse_dmar(data: bytes) -> Dmar:
    """Parse a DMAR; ``ValueError`` on a wrong signature, length or checksum."""
    header = DmarHeader.unpack(data)
    if header.signature != b"DMAR":
        raise ValueError(f"signature {header.signature!r} is not b'DMAR'")
    if header.length != len(data):
        raise ValueError(f"header length {header.length} but {len(data)} bytes")
    if sum(data) & 0xFF:
        raise ValueError(f"checksum does not add up (sum {sum(data) & 0xFF:#04x})")
    units, atsrs = [], []
    offset = DmarHeader.SIZE
    while offset < len(data):
        rs = RemappingHeader.unpack(data, offset)
        if rs.length < RemappingHeader.SIZE or offset + rs.length > len(data):
            raise ValueError(f"remapping structure at {offset} has a bad length {rs.length}")
        if rs.type == DRHD:
            d = Drhd.unpack(data, offset)
            units.append(DmarUnit(d.register_base, d.flags, d.segment, d.size,
                                  _parse_scopes(data, offset + Drhd.SIZE, offset + d.length)))
        elif rs.type == ATSR:
            a = Atsr.unpack(data, offset)
            atsrs.append((a.flags, a.segment))
        offset += rs.length
    return Dmar(header, tuple(units), tuple(atsrs))
