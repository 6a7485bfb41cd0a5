"""Capability declarations, their automatic placement and the chain walkers.

A capability is declared once, as a subclass of ``Capability``:

- ``Layout``: its bytes as a ``vuser.wire.Struct`` (header included), with the
  spec's RO/RW/RW1C attribute noted on each field;
- ``ID``, ``NAME``, ``SPEC`` (section), ``EXTENDED`` and, for extended ones,
  ``VERSION``;
- ``values()``: reset values of its fields, ``rw()`` and ``w1c()``: the RW and
  RW1C bits of each field (everything else is RO);
- optionally ``on_write(config)``: behaviour after a peer write into it.

``CapabilityChain.add`` places it (standard list from 0x40, extended list from
0x100, DWORD aligned, in order of addition, PCI Local Bus 3.0 §6.7 and PCIe
Base 6.0 §7.6), writes header, values and masks into the config space and links
the previous capability's next pointer to it. ``walk_standard`` and
``walk_extended`` follow the chains in raw config bytes, as a guest does.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar, NamedTuple

from vuser.errors import LocalProtocolError
from vuser.wire import BitLayout, Bits, Struct

from .config import PCI_CONFIG_SPACE_SIZE, ConfigSpace, Status, Type0Header

__all__ = [
    "Capability", "ExtCapHeader", "CapabilityChain", "CapEntry",
    "walk_standard", "walk_extended", "STD_CAP_START", "EXT_CAP_START",
]

STD_CAP_START = 0x40
EXT_CAP_START = 0x100
_CAP_PTR = Type0Header.offset_of("capabilities_ptr")
_STATUS = Type0Header.offset_of("status")


class ExtCapHeader(BitLayout, width=32):
    """Extended capability header (PCIe Base 6.0 §7.6.3)."""

    ID = Bits(0, 15)
    VERSION = Bits(16, 19)
    NEXT = Bits(20, 31)


class Capability:
    """Base of capability declarations (see the module doc)."""

    NAME: ClassVar[str] = ""
    ID: ClassVar[int] = 0
    EXTENDED: ClassVar[bool] = False
    VERSION: ClassVar[int] = 0
    SPEC: ClassVar[str] = ""
    Layout: ClassVar[type[Struct]]

    offset: int | None = None

    @classmethod
    def size(cls) -> int:
        return cls.Layout.SIZE

    def values(self) -> dict[str, int]:
        """Reset values of the non-header fields."""
        return {}

    def rw(self) -> dict[str, int]:
        """RW bits per field."""
        return {}

    def w1c(self) -> dict[str, int]:
        """RW1C bits per field."""
        return {}

    def on_write(self, config: ConfigSpace) -> None:
        """Behaviour after a peer write touched this capability (default: none)."""

    def on_reset(self, config: ConfigSpace) -> None:
        """Drop state kept outside config space after ``config.reset()`` (default: none)."""

    # -- building ------------------------------------------------------------

    def header_fields(self, next_ptr: int) -> dict[str, int]:
        if self.EXTENDED:
            return {"header": ExtCapHeader.pack(ID=self.ID, VERSION=self.VERSION, NEXT=next_ptr)}
        return {"cap_id": self.ID, "next": next_ptr}

    def image(self, next_ptr: int = 0) -> bytes:
        return self.Layout(**self.values(), **self.header_fields(next_ptr)).pack()

    def masks(self) -> tuple[bytes, bytes]:
        """(wmask, w1cmask) bytes; the header is always RO."""
        return self.Layout(**self.rw()).pack(), self.Layout(**self.w1c()).pack()

    def field_offset(self, name: str) -> int:
        """Config offset of field ``name`` of the placed capability."""
        if self.offset is None:
            raise LocalProtocolError(f"{self.NAME} is not placed")
        return self.offset + self.Layout.offset_of(name)

    def read_field(self, config: ConfigSpace, name: str) -> int:
        return config.peek(self.field_offset(name), _field_size(self.Layout, name))

    def poke_field(self, config: ConfigSpace, name: str, value: int) -> None:
        config.poke(self.field_offset(name), _field_size(self.Layout, name), value)

    def __repr__(self) -> str:
        where = "unplaced" if self.offset is None else f"@{self.offset:#x}"
        return f"<{self.NAME} cap {self.ID:#x} {where}>"


def _field_size(layout: type[Struct], name: str) -> int:
    names = layout.fields()
    i = names.index(name)
    end = layout.offset_of(names[i + 1]) if i + 1 < len(names) else layout.SIZE
    return end - layout.offset_of(name)


class CapabilityChain:
    """The standard and extended capability lists of one config space."""

    def __init__(self, config: ConfigSpace) -> None:
        self.config = config
        self.standard: list[Capability] = []
        self.extended: list[Capability] = []

    def __iter__(self) -> Iterator[Capability]:
        yield from self.standard
        yield from self.extended

    def reset(self) -> None:
        """Config space back to its defined values, then each capability's ``on_reset``."""
        self.config.reset()
        for cap in self:
            cap.on_reset(self.config)

    def find(self, cap_type: type[Capability]) -> Capability | None:
        for cap in self:
            if isinstance(cap, cap_type):
                return cap
        return None

    def add(self, cap: Capability, offset: int | None = None) -> int:
        """Place ``cap`` (at ``offset`` or the next free DWORD) and link it; its offset."""
        if cap.offset is not None:
            raise LocalProtocolError(f"{cap!r} is already placed")
        chain = self.extended if cap.EXTENDED else self.standard
        if cap.EXTENDED:
            if not self.config.is_express:
                raise LocalProtocolError(f"{cap.NAME}: extended capabilities need PCIe config space")
            lo, hi = EXT_CAP_START, self.config.size
        else:
            lo, hi = STD_CAP_START, PCI_CONFIG_SPACE_SIZE
        if offset is None:
            offset = max((c.offset + c.size() for c in chain), default=lo)  # type: ignore[operator]
            offset = (offset + 3) & ~3
        if offset % 4 or offset < lo or offset + cap.size() > hi:
            raise LocalProtocolError(f"{cap.NAME} ({cap.size()} B) does not fit at {offset:#x}")
        if cap.EXTENDED and not chain and offset != EXT_CAP_START:
            raise LocalProtocolError("the first extended capability must be at 0x100")
        for other in self:
            assert other.offset is not None
            if offset < other.offset + other.size() and other.offset < offset + cap.size():
                raise LocalProtocolError(f"{cap.NAME} at {offset:#x} overlaps {other!r}")
        wmask, w1cmask = cap.masks()
        self.config.define(offset, cap.image(0), wmask, w1cmask)
        cap.offset = offset
        if chain:
            self._link(chain[-1], offset)
        elif not cap.EXTENDED:
            self.config.define_int(_CAP_PTR, 1, offset)
            status = self.config.defaults[_STATUS] | Status.CAP_LIST.mask
            self.config.define_int(_STATUS, 1, status & 0xFF)
        chain.append(cap)
        self.config.add_write_hook(offset, cap.size(), lambda _o, _n: cap.on_write(self.config))
        return offset

    def _link(self, prev: Capability, offset: int) -> None:
        assert prev.offset is not None
        if prev.EXTENDED:
            header = self.config.peek(prev.offset, 4)
            self.config.define_int(prev.offset, 4, ExtCapHeader.NEXT.put(header, offset))
        else:
            self.config.define_int(prev.offset + 1, 1, offset)


class CapEntry(NamedTuple):
    """A capability as a walker finds it (``version`` is 0 for standard ones)."""

    offset: int
    cap_id: int
    version: int = 0


def walk_standard(config: bytes) -> list[CapEntry]:
    """Follow the standard list from 0x34 as a guest does (PCI Local Bus 3.0 §6.7)."""
    status = int.from_bytes(config[_STATUS:_STATUS + 2], "little")
    if not status & Status.CAP_LIST.mask:
        return []
    found: list[CapEntry] = []
    ptr = config[_CAP_PTR] & ~3
    while ptr:
        if ptr < STD_CAP_START or ptr + 2 > PCI_CONFIG_SPACE_SIZE or len(found) > 48:
            raise ValueError(f"broken capability list at {ptr:#x}")
        found.append(CapEntry(ptr, config[ptr]))
        ptr = config[ptr + 1] & ~3
    return found


def walk_extended(config: bytes) -> list[CapEntry]:
    """Follow the extended list from 0x100 (PCIe Base 6.0 §7.6.3)."""
    if len(config) <= EXT_CAP_START:
        return []
    found: list[CapEntry] = []
    ptr = EXT_CAP_START
    while ptr:
        if ptr < EXT_CAP_START or ptr + 4 > len(config) or len(found) > 960:
            raise ValueError(f"broken extended capability list at {ptr:#x}")
        header = int.from_bytes(config[ptr:ptr + 4], "little")
        if header == 0:
            break
        found.append(CapEntry(ptr, ExtCapHeader.ID.get(header), ExtCapHeader.VERSION.get(header)))
        ptr = ExtCapHeader.NEXT.get(header) & ~3
    return found
