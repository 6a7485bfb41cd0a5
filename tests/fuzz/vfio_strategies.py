"""Hypothesis strategies for hostile vfio-user clients.

Messages are built *structure-aware*: each command's payload is its declared
layout (``vuser.protocol.messages``) with fields drawn from values that sit on
the edges of the server's checks (0, 1, sizes, powers of two, all-ones, valid
region and IRQ indexes), then maybe mutated (truncated, extended, a byte
flipped), under a header whose size, flags and id may lie. Random bytes,
hostile fd sets and mid-message disconnects come on top.
"""

from __future__ import annotations

import json
import os
import socket

from hypothesis import strategies as st

from vuser.protocol.consts import Command
from vuser.protocol.messages import (
    Header, VfioDeviceFeature, VfioDeviceInfo, VfioIrqInfo, VfioIrqSet, VfioRegionInfo,
    VfioUserDmaMap, VfioUserDmaRw, VfioUserDmaUnmap, VfioUserMigData, VfioUserRegionAccess,
    VfioUserRegionIoFds, VfioUserVersion, VfioUserWriteMultiEntry, VfioUserWriteMultiHead,
)
from vuser.memory.seals import sealed_memfd
from vuser.wire import Bytes, Struct

MiB = 1 << 20
#: Guest RAM size of the memfds the fuzzer hands over.
RAM = 2 * MiB

#: The layout that leads each command's request payload, and whether data follows.
LAYOUTS: dict[int, tuple[type[Struct] | None, bool]] = {
    Command.DMA_MAP: (VfioUserDmaMap, False),
    Command.DMA_UNMAP: (VfioUserDmaUnmap, False),
    Command.DEVICE_GET_INFO: (VfioDeviceInfo, False),
    Command.DEVICE_GET_REGION_INFO: (VfioRegionInfo, False),
    Command.DEVICE_GET_REGION_IO_FDS: (VfioUserRegionIoFds, False),
    Command.DEVICE_GET_IRQ_INFO: (VfioIrqInfo, False),
    Command.DEVICE_SET_IRQS: (VfioIrqSet, True),
    Command.REGION_READ: (VfioUserRegionAccess, False),
    Command.REGION_WRITE: (VfioUserRegionAccess, True),
    Command.DMA_READ: (VfioUserDmaRw, False),
    Command.DMA_WRITE: (VfioUserDmaRw, True),
    Command.DEVICE_RESET: (None, False),
    Command.DIRTY_PAGES: (None, True),
    Command.REGION_WRITE_MULTI: (VfioUserWriteMultiHead, True),
    Command.DEVICE_FEATURE: (VfioDeviceFeature, True),
    Command.MIG_DATA_READ: (VfioUserMigData, False),
    Command.MIG_DATA_WRITE: (VfioUserMigData, True),
}

#: Field names whose small valid values matter most to the device code.
_INDEXES = {"index", "region"}


def edge_ints(bits: int) -> st.SearchStrategy[int]:
    top = (1 << bits) - 1
    edges = [0, 1, 2, 3, 4, 7, 8, 16, 20, 24, 32, 48, 64, 0x100, 0x1000, 0x10000,
             top, top >> 1, (top >> 1) + 1, top - 0xFFF]
    return st.one_of(st.sampled_from([e for e in edges if e <= top]),
                     st.integers(0, top))


def field_value(name: str, kind) -> st.SearchStrategy:
    if isinstance(kind, Bytes):
        return st.binary(min_size=0, max_size=kind.n)
    if name in _INDEXES:
        return st.one_of(st.integers(0, 9), edge_ints(kind.bits))
    if name == "addr":
        return st.one_of(st.sampled_from([0, 0x1000, 0x10_0000, RAM - 0x1000]),
                         edge_ints(kind.bits))
    if name in ("size", "count"):
        return st.one_of(st.sampled_from([1, 2, 4, 8, 0x1000, RAM]), edge_ints(kind.bits))
    return edge_ints(kind.bits)


@st.composite
def layout(draw, cls: type[Struct]) -> bytes:
    values = [draw(field_value(n, k)) for n, k in zip(cls._names, cls._kinds)]
    return cls._codec.pack(*values)


_json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(1 << 70), 1 << 70),
                          st.floats(allow_nan=False), st.text(max_size=8))
_json_values = st.recursive(_json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12)
_CAP_KEYS = ["max_msg_fds", "max_data_xfer_size", "max_dma_maps", "pgsizes",
             "write_multiple", "migration", "twin_socket"]


@st.composite
def version_payload(draw) -> bytes:
    head = VfioUserVersion(major=draw(st.sampled_from([0] * 6 + [1, 0xFFFF])),
                           minor=draw(edge_ints(16))).pack()
    kind = draw(st.sampled_from(["none", "caps", "caps", "json", "deep", "deep", "garbage"]))
    if kind == "none":
        return head
    if kind == "caps":
        caps = draw(st.dictionaries(st.sampled_from(_CAP_KEYS),
                                    st.one_of(edge_ints(64), _json_values), max_size=5))
        text = json.dumps({"capabilities": caps}).encode()
    elif kind == "json":
        text = json.dumps(draw(_json_values)).encode()
    elif kind == "deep":
        n = draw(st.sampled_from([100_000, 33, 32, 5000]))
        text = b"[" * n + b"]" * n
    else:
        text = draw(st.binary(max_size=64))
    return head + text + draw(st.sampled_from([b"\0"] * 6 + [b"", b"\0\0"]))


@st.composite
def payload(draw, command: int) -> bytes:
    if command == Command.VERSION:
        body = draw(version_payload())
    elif command not in LAYOUTS:
        body = draw(st.binary(max_size=64))
    else:
        cls, tail = LAYOUTS[command]
        body = draw(layout(cls)) if cls is not None else b""
        if command == Command.REGION_WRITE_MULTI:
            n = draw(st.integers(0, 3))
            body = VfioUserWriteMultiHead(wr_cnt=draw(st.sampled_from([n, n + 1, 201]))).pack()
            body += b"".join(draw(layout(VfioUserWriteMultiEntry)) for _ in range(n))
        elif tail:
            body += draw(st.binary(max_size=24))
    return body


@st.composite
def corrupt(draw, body: bytes) -> bytes:
    """One corruption of a payload: truncated, extended or a byte flipped."""
    mutation = draw(st.sampled_from(["truncate", "extend", "flip"]))
    if mutation == "truncate" and body:
        return body[:draw(st.integers(0, len(body) - 1))]
    if mutation == "flip" and body:
        i = draw(st.integers(0, len(body) - 1))
        return body[:i] + bytes([body[i] ^ draw(st.integers(1, 255))]) + body[i + 1:]
    return body + draw(st.binary(min_size=1, max_size=48))


@st.composite
def message(draw, command: int) -> bytes:
    """Two in three messages are well framed with edge values in their fields;
    the others get one corruption: of the payload, or a header that lies."""
    body = draw(payload(command))
    size, flags = 16 + len(body), 0
    fault = draw(st.sampled_from(["none"] * 6 + ["payload", "size", "flags"]))
    if fault == "payload":
        body = draw(corrupt(body))
        size = 16 + len(body)
    elif fault == "size":
        size = draw(st.sampled_from([
            draw(st.integers(0, 15)), draw(st.integers(16, size)), size + draw(st.integers(1, 64)),
            0xFFFF_FFFF, (1 << 20) + 33, 64 << 20]))
    elif fault == "flags":
        flags = draw(st.sampled_from([0x10, 0x1, 0x21, 0x2, 0x10 | 0x20]) | edge_ints(32))
    hdr = Header(msg_id=draw(edge_ints(16)), command=command, size=size, flags=flags)
    return hdr.pack() + body


def make_fd(kind: str) -> int:
    """A fresh fd of ``kind`` (the caller closes it once sent)."""
    if kind == "sealed":
        return sealed_memfd("fuzz-ram", RAM)
    if kind == "unsealed":
        fd = os.memfd_create("fuzz-unsealed", os.MFD_CLOEXEC)
        os.ftruncate(fd, RAM)
        return fd
    if kind == "eventfd":
        return os.eventfd(0, os.EFD_CLOEXEC)
    if kind == "pipe":
        r, w = os.pipe()
        os.close(w)
        return r
    if kind == "socket":
        return socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).detach()
    return os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)


FD_KINDS = ["sealed", "unsealed", "eventfd", "pipe", "socket", "devnull"]


@st.composite
def fd_plan(draw) -> list[str]:
    """The kinds of fds sent with one message (usually none, sometimes too many)."""
    if draw(st.integers(0, 9)) < 7:     # hypothesis favours small draws: mostly none
        return []
    n = draw(st.sampled_from([1, 1, 2, 3, 17, 40]))
    return draw(st.lists(st.sampled_from(FD_KINDS), min_size=n, max_size=n))


@st.composite
def session(draw, command: int) -> dict:
    """One hostile connection for ``command``: before or after VERSION,
    1-4 messages of that command (or random bytes), fds, and how it ends."""
    msgs = []
    for _ in range(draw(st.integers(1, 4))):
        if draw(st.integers(0, 7)) == 7:
            raw = draw(st.binary(min_size=1, max_size=80))
        else:
            raw = draw(message(command))
        msgs.append((raw, draw(fd_plan())))
    return {
        # VERSION is checked before anything else once negotiated: mostly before.
        "negotiate": draw(st.integers(0, 3)) == 3 if command == Command.VERSION
        else draw(st.booleans()),
        "messages": msgs,
        "end": draw(st.sampled_from(["close", "close", "mid-message", "shutdown"])),
        "cut": draw(st.integers(1, 47)),
    }
