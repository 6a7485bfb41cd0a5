"""Every vfio-user message, request and reply, as declared layouts.

Offsets and sizes follow the spec (QEMU ``docs/interop/vfio-user.rst``), the
structs it imports from ``linux/vfio.h``, and what QEMU 11 actually sends and
accepts (its client in ``hw/vfio-user/``). The header is ``Header``; a message's
*payload* is everything after it. Fixed payloads are ``vuser.wire.Struct``s;
payloads with a variable tail (JSON, data, a capability chain, an array) are
small frozen dataclasses around those structs.

``decode(command, kind, payload)`` and ``encode(command, kind, body)`` go
through the ``MESSAGES`` table. Decoding checks only *structure* (sizes, counts
that describe the tail, the capability chain) and raises
``RemoteProtocolError(EINVAL)``; the meaning of fields (argsz, flags, indexes)
is checked by ``server.ServerCore``. Encoding a body of the wrong type or with
an inconsistent count raises ``LocalProtocolError``.
"""

from __future__ import annotations

import errno
import json
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from vuser.errors import LocalProtocolError, RemoteProtocolError
from vuser.backend import VFIO_REGION_INFO_FLAG_CAPS
from vuser.protocol.consts import (
    HEADER_SIZE, VFIO_REGION_INFO_CAP_SPARSE_MMAP, VFIO_USER_MAJOR, VFIO_USER_MINOR,
    Command,
)
from vuser.wire import Bytes, Pad, Struct, u16, u32, u64


class Kind(Enum):
    REQUEST = "request"
    REPLY = "reply"


# --- fixed layouts -------------------------------------------------------------

class Header(Struct, size=HEADER_SIZE):
    """Spec "Header"; QEMU ``VFIOUserHdr``."""

    msg_id: u16
    command: u16
    size: u32       # whole message, header included
    flags: u32      # VFIO_USER_F_*
    error: u32      # positive errno; valid only with VFIO_USER_F_ERROR


class VfioUserVersion(Struct, size=4):
    """VERSION payload head; NUL-terminated JSON capabilities follow."""

    major: u16
    minor: u16


class VfioUserDmaMap(Struct, size=32):
    """DMA_MAP request (spec; ``vfio_iommu_type1_dma_map`` with an fd offset)."""

    argsz: u32 = 32
    flags: u32      # VFIO_USER_F_DMA_REGION_READ | _WRITE
    offset: u64     # file offset of ``addr`` in the fd; 0 without an fd
    addr: u64
    size: u64


class VfioUserDmaUnmap(Struct, size=24):
    """DMA_UNMAP request, echoed as its reply (``vfio_iommu_type1_dma_unmap``)."""

    argsz: u32 = 24
    flags: u32      # VFIO_DMA_UNMAP_FLAG_ALL
    addr: u64
    size: u64


class VfioDeviceInfo(Struct, size=16):
    """DEVICE_GET_INFO request and reply (``struct vfio_device_info``)."""

    argsz: u32 = 16
    flags: u32      # VFIO_DEVICE_FLAGS_*
    num_regions: u32
    num_irqs: u32


class VfioRegionInfo(Struct, size=32):
    """GET_REGION_INFO request and reply head (``struct vfio_region_info``)."""

    argsz: u32 = 32
    flags: u32      # VFIO_REGION_INFO_FLAG_*
    index: u32
    cap_offset: u32  # from the payload start; 0 without CAPS
    size: u64
    offset: u64     # mmap offset of region byte 0 in the region's fd


class VfioInfoCapHeader(Struct, size=8):
    """Capability chain link (``struct vfio_info_cap_header``)."""

    id: u16
    version: u16
    next: u32       # from the payload start; 0 ends the chain


class VfioRegionInfoCapSparseMmap(Struct, size=8):
    """Sparse mmap capability body head; ``nr_areas`` areas follow."""

    nr_areas: u32
    _reserved: Pad(4)


class VfioRegionSparseMmapArea(Struct, size=16):
    offset: u64
    size: u64


class VfioUserRegionIoFds(Struct, size=16):
    """GET_REGION_IO_FDS request and reply head."""

    argsz: u32 = 16
    flags: u32
    index: u32
    count: u32


class VfioUserSubRegionIoFd(Struct, size=40):
    """One GET_REGION_IO_FDS sub-region (ioeventfd or ioregionfd form)."""

    offset: u64
    size: u64
    fd_index: u32
    type: u32
    flags: u32
    _padding: Pad(4)
    datamatch: u64  # ``user_data`` for ioregionfd


class VfioIrqInfo(Struct, size=16):
    """GET_IRQ_INFO request and reply (``struct vfio_irq_info``)."""

    argsz: u32 = 16
    flags: u32      # VFIO_IRQ_INFO_*
    index: u32
    count: u32


class VfioIrqSet(Struct, size=20):
    """SET_IRQS request head (``struct vfio_irq_set``); BOOL data may follow."""

    argsz: u32 = 20
    flags: u32      # one VFIO_IRQ_SET_DATA_* | one VFIO_IRQ_SET_ACTION_*
    index: u32
    start: u32
    count: u32


class VfioUserRegionAccess(Struct, size=16):
    """REGION_READ/WRITE head (QEMU ``VFIOUserRegionRW`` without the header)."""

    offset: u64
    region: u32
    count: u32


#: The REGION_READ/WRITE fast path (``connection.py``) parses and builds the
#: header and the access head with one precompiled struct, made from the two
#: declared layouts above (no second declaration of either).
HEADER_CODEC: struct.Struct = Header._codec
REGION_HEAD_CODEC = struct.Struct("<" + Header._codec.format.lstrip("<")
                                  + VfioUserRegionAccess._codec.format.lstrip("<"))
assert REGION_HEAD_CODEC.size == HEADER_SIZE + VfioUserRegionAccess.SIZE


class VfioUserDmaRw(Struct, size=16):
    """DMA_READ/WRITE head. ``count`` is u64 and data starts at message byte 32
    (spec, libvfio-user and the QEMU 11 binary; older QEMU sources had a u32)."""

    addr: u64
    count: u64


class VfioUserWriteMultiHead(Struct, size=8):
    """REGION_WRITE_MULTI request head and whole reply."""

    wr_cnt: u64


class VfioUserWriteMultiEntry(Struct, size=24):
    """One coalesced write of at most 8 bytes."""

    offset: u64
    region: u32
    count: u32
    data: Bytes(8)


class VfioDeviceFeature(Struct, size=8):
    """DEVICE_FEATURE head (``struct vfio_device_feature``); data follows."""

    argsz: u32 = 8
    flags: u32      # feature index | VFIO_DEVICE_FEATURE_GET/SET/PROBE


class VfioUserMigData(Struct, size=8):
    """MIG_DATA_READ request; head of its reply and of MIG_DATA_WRITE."""

    argsz: u32 = 8
    size: u32


# --- payloads with a variable tail -------------------------------------------

def _bad(why: str) -> RemoteProtocolError:
    return RemoteProtocolError(errno.EINVAL, why)


#: Deepest JSON nesting accepted in VERSION: json-c's default tokener depth,
#: which is what libvfio-user parses with (QEMU's caps nest 3 deep).
MAX_JSON_DEPTH = 32
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_JSON_BRACKET = re.compile(rb"[\[\]{}]")


def _json_depth(text: bytes) -> int:
    """How deep the arrays and objects of ``text`` nest (strings skipped)."""
    depth = deepest = 0
    for m in _JSON_BRACKET.finditer(_JSON_STRING.sub(b"", text)):
        depth += 1 if m.group() in (b"[", b"{") else -1
        if depth > deepest:
            deepest = depth
            if deepest > MAX_JSON_DEPTH:
                break
    return deepest


@dataclass(frozen=True)
class Version:
    """VERSION request or reply: version and the JSON capabilities object.

    ``caps`` is the parsed top-level JSON object (``{"capabilities": {...}}``),
    or None when the message carries no JSON (size 20: peer defaults).
    """

    major: int = VFIO_USER_MAJOR
    minor: int = VFIO_USER_MINOR
    caps: dict[str, Any] | None = None

    def encode(self) -> bytes:
        head = VfioUserVersion(major=self.major, minor=self.minor).pack()
        if self.caps is None:
            return head
        return head + json.dumps(self.caps, separators=(",", ":")).encode() + b"\0"

    @classmethod
    def decode(cls, payload: bytes) -> Version:
        head = VfioUserVersion.unpack(payload)
        text = payload[VfioUserVersion.SIZE:]
        if not text:
            return cls(head.major, head.minor, None)
        if text[-1] != 0 or 0 in text[:-1]:
            raise _bad("version data is not one NUL-terminated string")
        if _json_depth(text[:-1]) > MAX_JSON_DEPTH:
            raise _bad(f"version JSON nests deeper than {MAX_JSON_DEPTH}")
        try:
            caps = json.loads(text[:-1].decode())
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise _bad("version data is not JSON") from None
        if not isinstance(caps, dict):
            raise _bad("version data is not a JSON object")
        return cls(head.major, head.minor, caps)


@dataclass(frozen=True)
class RegionInfoReply:
    """GET_REGION_INFO reply: region info, then (if present) the capability
    chain at ``info.cap_offset``. Only the sparse-mmap capability is known;
    ``sparse_areas`` is None when the reply carries no such capability."""

    info: VfioRegionInfo
    sparse_areas: tuple[tuple[int, int], ...] | None = None

    @staticmethod
    def caps_size(nr_areas: int) -> int:
        return (VfioInfoCapHeader.SIZE + VfioRegionInfoCapSparseMmap.SIZE
                + nr_areas * VfioRegionSparseMmapArea.SIZE)

    def encode(self) -> bytes:
        out = [self.info.pack()]
        if self.sparse_areas is not None:
            if self.info.cap_offset != VfioRegionInfo.SIZE:
                raise LocalProtocolError("the sparse-mmap capability goes right after the info")
            out.append(VfioInfoCapHeader(id=VFIO_REGION_INFO_CAP_SPARSE_MMAP, version=1,
                                         next=0).pack())
            out.append(VfioRegionInfoCapSparseMmap(nr_areas=len(self.sparse_areas)).pack())
            out += [VfioRegionSparseMmapArea(offset=o, size=s).pack()
                    for o, s in self.sparse_areas]
        return b"".join(out)

    @classmethod
    def decode(cls, payload: bytes) -> RegionInfoReply:
        info = VfioRegionInfo.unpack(payload)
        if not info.flags & VFIO_REGION_INFO_FLAG_CAPS or len(payload) == VfioRegionInfo.SIZE:
            return cls(info, None)  # no chain, or truncated to the head (argsz too small)
        sparse, off = None, info.cap_offset
        while off:
            if off < VfioRegionInfo.SIZE or off + VfioInfoCapHeader.SIZE > len(payload):
                raise _bad(f"capability at {off} outside the reply")
            cap = VfioInfoCapHeader.unpack(payload, off)
            if cap.id == VFIO_REGION_INFO_CAP_SPARSE_MMAP:
                body = off + VfioInfoCapHeader.SIZE
                if body + VfioRegionInfoCapSparseMmap.SIZE > len(payload):
                    raise _bad("sparse-mmap capability truncated")
                n = VfioRegionInfoCapSparseMmap.unpack(payload, body).nr_areas
                first = body + VfioRegionInfoCapSparseMmap.SIZE
                if first + n * VfioRegionSparseMmapArea.SIZE > len(payload):
                    raise _bad(f"sparse-mmap capability claims {n} areas")
                areas = (VfioRegionSparseMmapArea.unpack(payload, first + i * 16)
                         for i in range(n))
                sparse = tuple((a.offset, a.size) for a in areas)
            if cap.next and cap.next <= off:
                raise _bad("capability chain goes backwards")
            off = cap.next
        return cls(info, sparse)


@dataclass(frozen=True)
class RegionIoFdsReply:
    """GET_REGION_IO_FDS reply: head, then ``count`` 40-byte sub-regions."""

    info: VfioUserRegionIoFds
    subregions: tuple[VfioUserSubRegionIoFd, ...] = ()

    def encode(self) -> bytes:
        if self.info.count != len(self.subregions):
            raise LocalProtocolError("io-fds count does not match its sub-regions")
        return self.info.pack() + b"".join(s.pack() for s in self.subregions)

    @classmethod
    def decode(cls, payload: bytes) -> RegionIoFdsReply:
        info = VfioUserRegionIoFds.unpack(payload)
        size = VfioUserSubRegionIoFd.SIZE
        if len(payload) != info.SIZE + info.count * size:
            raise _bad(f"io-fds reply of {len(payload)} bytes for {info.count} sub-regions")
        subs = tuple(VfioUserSubRegionIoFd.unpack(payload, info.SIZE + i * size)
                     for i in range(info.count))
        return cls(info, subs)


@dataclass(frozen=True)
class SetIrqs:
    """SET_IRQS request: ``vfio_irq_set`` and its data (DATA_BOOL bytes).
    Eventfds travel as SCM_RIGHTS, never in ``data``."""

    irq_set: VfioIrqSet
    data: bytes = b""

    def encode(self) -> bytes:
        return self.irq_set.pack() + self.data

    @classmethod
    def decode(cls, payload: bytes) -> SetIrqs:
        return cls(VfioIrqSet.unpack(payload), bytes(payload[VfioIrqSet.SIZE:]))


def _checked_data(count: int, data: bytes, what: str) -> bytes:
    if count != len(data):
        raise _bad(f"{what} count {count} but {len(data)} data bytes")
    return data


@dataclass(frozen=True, slots=True)
class RegionData:
    """REGION_WRITE request and REGION_READ reply: access head, then data."""

    access: VfioUserRegionAccess
    data: bytes

    @classmethod
    def make(cls, region: int, offset: int, data: bytes) -> RegionData:
        return cls(VfioUserRegionAccess(offset=offset, region=region, count=len(data)), data)

    def encode(self) -> bytes:
        if self.access.count != len(self.data):
            raise LocalProtocolError("region access count does not match its data")
        return self.access.pack() + self.data

    @classmethod
    def decode(cls, payload: bytes) -> RegionData:
        access = VfioUserRegionAccess.unpack(payload)
        return cls(access, _checked_data(access.count, bytes(payload[16:]), "region"))


@dataclass(frozen=True)
class DmaData:
    """DMA_WRITE request and DMA_READ reply: address/count head, then data."""

    rw: VfioUserDmaRw
    data: bytes

    @classmethod
    def make(cls, addr: int, data: bytes) -> DmaData:
        return cls(VfioUserDmaRw(addr=addr, count=len(data)), data)

    def encode(self) -> bytes:
        if self.rw.count != len(self.data):
            raise LocalProtocolError("DMA count does not match its data")
        return self.rw.pack() + self.data

    @classmethod
    def decode(cls, payload: bytes) -> DmaData:
        rw = VfioUserDmaRw.unpack(payload)
        return cls(rw, _checked_data(rw.count, bytes(payload[16:]), "DMA"))


@dataclass(frozen=True)
class WriteMulti:
    """REGION_WRITE_MULTI request: ``wr_cnt`` entries of 24 bytes."""

    entries: tuple[VfioUserWriteMultiEntry, ...]

    def encode(self) -> bytes:
        return (VfioUserWriteMultiHead(wr_cnt=len(self.entries)).pack()
                + b"".join(e.pack() for e in self.entries))

    @classmethod
    def decode(cls, payload: bytes) -> WriteMulti:
        n = VfioUserWriteMultiHead.unpack(payload).wr_cnt
        size = VfioUserWriteMultiEntry.SIZE
        if len(payload) != 8 + n * size:
            raise _bad(f"write-multi of {len(payload)} bytes for {n} entries")
        return cls(tuple(VfioUserWriteMultiEntry.unpack(payload, 8 + i * size)
                         for i in range(n)))


@dataclass(frozen=True)
class DeviceFeature:
    """DEVICE_FEATURE request and reply: ``vfio_device_feature`` and data."""

    feature: VfioDeviceFeature
    data: bytes = b""

    def encode(self) -> bytes:
        return self.feature.pack() + self.data

    @classmethod
    def decode(cls, payload: bytes) -> DeviceFeature:
        return cls(VfioDeviceFeature.unpack(payload), bytes(payload[8:]))


@dataclass(frozen=True)
class MigData:
    """MIG_DATA_WRITE request and MIG_DATA_READ reply: argsz, size, data."""

    mig: VfioUserMigData
    data: bytes = b""

    def encode(self) -> bytes:
        if self.mig.size != len(self.data):
            raise LocalProtocolError("migration data size does not match its data")
        return self.mig.pack() + self.data

    @classmethod
    def decode(cls, payload: bytes) -> MigData:
        mig = VfioUserMigData.unpack(payload)
        return cls(mig, _checked_data(mig.size, bytes(payload[8:]), "migration data"))


# --- the table -------------------------------------------------------------------

@dataclass(frozen=True)
class Codec:
    """How one (command, kind) payload is parsed and built."""

    body_type: type | None          # None: header only
    decode: Callable[[bytes], Any]
    encode: Callable[[Any], bytes]
    optional: bool = False          # the payload may also be empty (body None)


def _header_only() -> Codec:
    def dec(payload: bytes) -> None:
        if payload:
            raise _bad(f"{len(payload)} unexpected payload bytes")
    return Codec(None, dec, lambda body: b"")


def _fixed(cls: type[Struct], optional: bool = False) -> Codec:
    def dec(payload: bytes) -> Struct:
        if len(payload) != cls.SIZE:
            raise _bad(f"{cls.__name__} payload is {len(payload)} bytes, not {cls.SIZE}")
        return cls.unpack(payload)
    return Codec(cls, dec, lambda body: body.pack(), optional)


def _at_least(cls: type[Struct]) -> Codec:
    """A request struct led by ``argsz``: a longer payload is accepted and its
    tail ignored (a client may send the argsz it was told, as libvfio-user's
    does for GET_REGION_INFO; linux/vfio.h structs grow at the end)."""
    def dec(payload: bytes) -> Struct:
        if len(payload) < cls.SIZE:
            raise _bad(f"{cls.__name__} payload is {len(payload)} bytes, under {cls.SIZE}")
        return cls.unpack(payload[:cls.SIZE])
    return Codec(cls, dec, lambda body: body.pack())


def _tail(cls: Any, head: type[Struct]) -> Codec:
    def dec(payload: bytes) -> Any:
        if len(payload) < head.SIZE:
            raise _bad(f"{cls.__name__} payload is {len(payload)} bytes, under {head.SIZE}")
        return cls.decode(payload)
    return Codec(cls, dec, lambda body: body.encode())


Q, R = Kind.REQUEST, Kind.REPLY
MESSAGES: dict[tuple[Command, Kind], Codec] = {
    (Command.VERSION, Q): _tail(Version, VfioUserVersion),
    (Command.VERSION, R): _tail(Version, VfioUserVersion),
    (Command.DMA_MAP, Q): _at_least(VfioUserDmaMap),
    (Command.DMA_MAP, R): _header_only(),
    (Command.DMA_UNMAP, Q): _at_least(VfioUserDmaUnmap),
    (Command.DMA_UNMAP, R): _fixed(VfioUserDmaUnmap, optional=True),
    (Command.DEVICE_GET_INFO, Q): _at_least(VfioDeviceInfo),
    (Command.DEVICE_GET_INFO, R): _fixed(VfioDeviceInfo),
    (Command.DEVICE_GET_REGION_INFO, Q): _at_least(VfioRegionInfo),
    (Command.DEVICE_GET_REGION_INFO, R): _tail(RegionInfoReply, VfioRegionInfo),
    (Command.DEVICE_GET_REGION_IO_FDS, Q): _at_least(VfioUserRegionIoFds),
    (Command.DEVICE_GET_REGION_IO_FDS, R): _tail(RegionIoFdsReply, VfioUserRegionIoFds),
    (Command.DEVICE_GET_IRQ_INFO, Q): _at_least(VfioIrqInfo),
    (Command.DEVICE_GET_IRQ_INFO, R): _fixed(VfioIrqInfo),
    (Command.DEVICE_SET_IRQS, Q): _tail(SetIrqs, VfioIrqSet),
    (Command.DEVICE_SET_IRQS, R): _header_only(),
    (Command.REGION_READ, Q): _fixed(VfioUserRegionAccess),
    (Command.REGION_READ, R): _tail(RegionData, VfioUserRegionAccess),
    (Command.REGION_WRITE, Q): _tail(RegionData, VfioUserRegionAccess),
    (Command.REGION_WRITE, R): _fixed(VfioUserRegionAccess, optional=True),
    (Command.DMA_READ, Q): _fixed(VfioUserDmaRw),
    (Command.DMA_READ, R): _tail(DmaData, VfioUserDmaRw),
    (Command.DMA_WRITE, Q): _tail(DmaData, VfioUserDmaRw),
    (Command.DMA_WRITE, R): _fixed(VfioUserDmaRw, optional=True),
    (Command.DEVICE_RESET, Q): _header_only(),
    (Command.DEVICE_RESET, R): _header_only(),
    (Command.REGION_WRITE_MULTI, Q): _tail(WriteMulti, VfioUserWriteMultiHead),
    (Command.REGION_WRITE_MULTI, R): _fixed(VfioUserWriteMultiHead, optional=True),
    (Command.DEVICE_FEATURE, Q): _tail(DeviceFeature, VfioDeviceFeature),
    (Command.DEVICE_FEATURE, R): _tail(DeviceFeature, VfioDeviceFeature),
    (Command.MIG_DATA_READ, Q): _fixed(VfioUserMigData),
    (Command.MIG_DATA_READ, R): _tail(MigData, VfioUserMigData),
    (Command.MIG_DATA_WRITE, Q): _tail(MigData, VfioUserMigData),
    (Command.MIG_DATA_WRITE, R): _header_only(),
}


def decode(command: Command, kind: Kind, payload: bytes) -> Any:
    """Parse a payload; ``RemoteProtocolError(EINVAL)`` if its structure is wrong."""
    codec = MESSAGES.get((command, kind))
    if codec is None:
        raise RemoteProtocolError(errno.ENOSYS, f"no {kind.value} layout for {command!r}")
    if codec.optional and not payload:
        return None
    try:
        return codec.decode(payload)
    except ValueError as e:  # a wire.Struct read past the end
        raise _bad(str(e)) from None


def encode(command: Command, kind: Kind, body: Any) -> bytes:
    """Build a payload; ``LocalProtocolError`` for a body that does not fit."""
    codec = MESSAGES.get((command, kind))
    if codec is None:
        raise LocalProtocolError(f"no {kind.value} layout for {command!r}")
    if body is None and (codec.body_type is None or codec.optional):
        return b""
    if codec.body_type is None or not isinstance(body, codec.body_type):
        want = codec.body_type.__name__ if codec.body_type else "no body"
        raise LocalProtocolError(f"{command.name} {kind.value} takes {want}, "
                                 f"not {type(body).__name__}")
    try:
        return codec.encode(body)
    except ValueError as e:  # a field that does not fit its width
        raise LocalProtocolError(f"{command.name} {kind.value}: {e}") from None
