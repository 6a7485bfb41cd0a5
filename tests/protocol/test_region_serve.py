"""``Connection.serve_region`` with ``ServerCore.region_access`` (the answer-at-once
REGION_READ/WRITE path) gives what the general path gives (``next_event``,
``ServerCore.handle``, ``send``): the same reply bytes, the same device calls
and state, the same log lines, for good and bad accesses, on a ``PciDevice``
whose state changes between messages (bind, unbind as on a disconnect,
reset), fed in 1-byte, 32-byte and whole chunks."""

from __future__ import annotations

import errno
import logging
import struct
from types import SimpleNamespace

import pytest

from proto_helpers import message
from vuser.devices.base import PciDevice
from vuser.errors import LocalProtocolError
from vuser.pci.bar import Bar
from vuser.pci.region import Region, Register, RegisterFile
from vuser.protocol.caps import Capabilities
from vuser.protocol.connection import Connection
from vuser.protocol.consts import HEADER_SIZE, VFIO_USER_F_NO_REPLY, Command
from vuser.protocol.events import NEED_DATA
from vuser.protocol.messages import Header, Version
from vuser.protocol.server import ServerCore
from vuser.protocol.state import ConnState, Role

R, W, RESET = Command.REGION_READ, Command.REGION_WRITE, Command.DEVICE_RESET
ACCESS = struct.Struct("<QII")
XFER = 4096


class _BadLength(Region):
    """A device bug: reads give one byte too many."""

    def read(self, offset: int, count: int) -> bytes:
        return bytes(count + 1)

    def write(self, offset: int, data: bytes) -> None:
        raise ValueError("a device bug")


class Dev(PciDevice):
    """BAR0 registers (with side effects), BAR2 a buggy region, a ROM; BAR
    accesses need a bind (``bind``/``unbind`` stand for the model's)."""

    REQUIRE_BIND = True

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple] = []
        self.reads = 0
        self.regs = RegisterFile(0x1000, [
            Register(0x0, "ID", 0x1234_5678, wmask=0),
            Register(0x4, "SCRATCH", 0),
            Register(0x8, "COUNTER", wmask=0, read=self._count),
            Register(0xC, "DOORBELL", wmask=0, write=lambda v: self.calls.append(("bell", v))),
            Register(0x10, "BROKEN", wmask=0, read=self._broken),
        ])
        self.add_bar(0, Bar.mem32(0x1000), self.regs)
        self.add_bar(2, Bar.mem32(0x1000), _BadLength(0x1000))
        self.add_rom(b"\x55\xaa" + bytes(100))

    def _count(self) -> int:
        self.reads += 1
        return self.reads

    def _broken(self) -> int:
        raise KeyError("a device bug")

    def bind(self) -> None:
        self.iommu = SimpleNamespace(ctx=object())   # bound: what join_platform and a DMA_MAP give

    def unbind(self) -> None:
        self.iommu = SimpleNamespace(ctx=None)     # unbound

    def on_reset(self) -> None:
        self.calls.append(("reset",))

    def state(self) -> tuple:
        return (dict(self.regs.values), self.reads, list(self.calls), self.epoch,
                bytes(self.config.read(0, 64)))


def read(region: int, offset: int, count: int, *, msg_id: int = 5, flags: int = 0) -> bytes:
    return message(R, ACCESS.pack(offset, region, count), msg_id=msg_id, flags=flags)


def write(region: int, offset: int, data: bytes, *, msg_id: int = 6, flags: int = 0,
          count: int | None = None) -> bytes:
    count = len(data) if count is None else count
    return message(W, ACCESS.pack(offset, region, count) + data, msg_id=msg_id, flags=flags)


POSTED = VFIO_USER_F_NO_REPLY

#: Every kind of region access, good and bad; each is run alone, then all in a row.
ACCESSES = {
    "read-id": read(0, 0x0, 4),
    "read-three-regs": read(0, 0x0, 12),
    "read-undeclared": read(0, 0x40, 4),
    "read-counter-posted": read(0, 0x8, 4, flags=POSTED),
    "read-counter": read(0, 0x8, 4),
    "read-misaligned": read(0, 0x2, 4),
    "read-odd-count": read(0, 0x0, 3),
    "read-past-end": read(0, 0xFFC, 8),
    "read-offset-overflow": read(0, (1 << 64) - 4, 8),
    "read-too-big": read(0, 0, XFER + 4),
    "read-zero": read(0, 0x1000, 0),
    "read-device-bug": read(0, 0x10, 4),
    "read-device-bug-posted": read(0, 0x10, 4, flags=POSTED),
    "read-bad-length": read(2, 0, 4),
    "read-absent-bar": read(1, 0, 4),
    "read-absent-bar-zero": read(1, 0, 0),
    "read-rom": read(6, 0, 4),
    "read-config": read(7, 0, 64),
    "read-config-past-end": read(7, 0xFFC, 8),
    "read-vga": read(8, 0, 4),
    "read-bad-index": read(9, 0, 4),
    "read-huge-index": read(0xFFFF_FFFF, 0, 4),
    "write-scratch": write(0, 0x4, b"\x01\x02\x03\x04"),
    "write-scratch-posted": write(0, 0x4, b"\x05\x06\x07\x08", flags=POSTED),
    "write-doorbell": write(0, 0xC, b"\x2a\0\0\0"),
    "write-ro": write(0, 0x0, b"\xff\xff\xff\xff"),
    "write-misaligned": write(0, 0x6, b"abcd"),
    "write-past-end": write(0, 0x1000, b"abcd"),
    "write-rom": write(6, 0, b"abcd"),
    "write-rom-posted": write(6, 0, b"abcd", flags=POSTED),
    "write-device-bug": write(2, 0, b"abcd"),
    "write-config-command": write(7, 4, b"\x06\x00"),
    "write-bad-index": write(9, 0, b"abcd"),
    "write-zero": write(0, 0, b""),
    "write-count-mismatch": write(0, 0x4, b"abcd", count=8),
    "write-too-big": write(0, 0, bytes(XFER + 4)),
    "read-long": message(R, ACCESS.pack(0, 0, 4) + b"xx", msg_id=5),
    "read-as-reply": message(R, ACCESS.pack(0, 0, 4), msg_id=5, flags=1),
    "reset": message(RESET, msg_id=7),
}


def served(dev: Dev) -> tuple[Connection, ServerCore]:
    caps = Capabilities(max_data_xfer_size=XFER)
    conn = Connection(Role.SERVER, caps)
    core = ServerCore(dev, dma=None, caps=caps)   # no DMA_MAP/UNMAP in these streams
    conn.receive_data(message(Command.VERSION, Version(caps={}).encode(), msg_id=1))
    req = conn.next_event()
    conn.send(core.handle(req))
    assert conn.state is ConnState.READY
    return conn, core


def pump(conn: Connection, core: ServerCore, raw: bytes, chunk: int, fast: bool) -> bytes:
    out = bytearray()
    for i in range(0, len(raw), chunk):
        conn.receive_data(raw[i:i + chunk])
        while True:
            if fast:
                reply = conn.serve_region(core.region_access)
                if reply is not None:
                    out += reply
                    continue
            event = conn.next_event()
            if event is NEED_DATA:
                break
            answer = core.handle(event)
            if answer is not None:
                out += conn.send(answer)[0]
    return bytes(out)


def run(phases: list, chunk: int, fast: bool, caplog) -> tuple:
    """``phases``: raw message streams, or a ``Dev`` method name to call between them."""
    caplog.clear()
    dev = Dev()
    conn, core = served(dev)
    out = []
    for phase in phases:
        if isinstance(phase, str):
            getattr(dev, phase)()
        else:
            out.append(pump(conn, core, phase, chunk, fast))
    logs = [(r.name, r.levelname, r.getMessage()) for r in caplog.records]
    return out, dev.state(), conn.owed_replies, conn.mid_message, logs


def both(phases: list, chunk: int, caplog) -> tuple:
    fast, slow = run(phases, chunk, True, caplog), run(phases, chunk, False, caplog)
    assert fast == slow
    return fast


@pytest.fixture(autouse=True)
def _debug_logs(caplog):
    caplog.set_level(logging.DEBUG, logger="vuser")


@pytest.mark.parametrize("chunk", [1, 32, 1 << 20])
@pytest.mark.parametrize("name", sorted(ACCESSES))
def test_each_access_gets_the_general_paths_reply(name, chunk, caplog):
    raw = ACCESSES[name] + ACCESSES["read-id"]     # and the stream stays in sync
    both(["bind", raw], chunk, caplog)


@pytest.mark.parametrize("chunk", [1, 32, 1 << 20])
def test_all_accesses_in_a_row_with_bind_unbind_and_reset(chunk, caplog):
    stream = b"".join(ACCESSES[k] for k in sorted(ACCESSES))
    out, state, owed, mid, logs = both(
        [stream, "bind", stream, "unbind", stream, "reset", "bind", stream], chunk, caplog)
    assert owed == 0 and not mid
    assert state[3] == 5          # DEVICE_RESET once in each of the 4 streams, once by hand
    # unbound, bound, unbound again (config space differs: the first stream wrote COMMAND)
    assert errnos(out[0]) != errnos(out[1]) and errnos(out[2]) == errnos(out[0])


def errnos(raw: bytes) -> list[int]:
    """The errno of each reply in ``raw`` (0 for a success)."""
    found, pos = [], 0
    while pos < len(raw):
        hdr = Header.unpack(raw[pos:pos + HEADER_SIZE])
        found.append(hdr.error)
        pos += hdr.size
    return found


def test_the_replies_are_the_ones_expected(caplog):
    """Not only equal on both paths: right (an errno where one belongs)."""
    cases = {"read-id": 0, "read-three-regs": 0, "read-misaligned": errno.EINVAL,
             "read-past-end": errno.EINVAL, "read-offset-overflow": errno.EINVAL,
             "read-too-big": errno.E2BIG, "read-device-bug": errno.EIO,
             "read-bad-length": errno.EIO, "read-absent-bar": errno.EINVAL,
             "read-absent-bar-zero": errno.EINVAL, "read-bad-index": errno.EINVAL,
             "read-huge-index": errno.EINVAL, "write-ro": 0, "write-rom": errno.EINVAL,
             "write-device-bug": errno.EIO, "write-past-end": errno.EINVAL,
             "write-bad-index": errno.EINVAL, "write-count-mismatch": errno.EINVAL,
             "write-too-big": errno.E2BIG}
    for name, err in cases.items():
        (out,), *_ = run(["bind", ACCESSES[name]], 1 << 20, True, caplog)
        assert errnos(out) == [err], name
        (out,), *_ = run([ACCESSES[name]], 1 << 20, True, caplog)   # not bound
        if name not in ("read-bad-index", "read-huge-index", "write-bad-index",
                        "read-too-big", "write-too-big", "write-count-mismatch"):
            assert errnos(out) == [errno.EINVAL], f"{name} unbound"
    (out,), *_ = run(["bind", ACCESSES["read-id"]], 1 << 20, True, caplog)
    assert out[HEADER_SIZE + ACCESS.size:] == (0x1234_5678).to_bytes(4, "little")


def test_a_posted_failure_is_logged_and_not_answered(caplog):
    out, _, owed, _, logs = run(["bind", ACCESSES["write-rom-posted"]], 1 << 20, True, caplog)
    assert out == [b""] and owed == 0
    assert any("no reply wanted" in msg for _, _, msg in logs)


def test_a_reply_of_the_wrong_length_from_access_is_our_bug():
    conn, _ = served(Dev())
    conn.receive_data(ACCESSES["read-id"])
    with pytest.raises(LocalProtocolError):
        conn.serve_region(lambda *a: b"12345")
    conn.receive_data(ACCESSES["read-id"])
    with pytest.raises(LocalProtocolError):
        conn.serve_region(lambda *a: None)


def test_nothing_is_taken_that_serve_region_does_not_serve():
    conn, core = served(Dev())
    conn.receive_data(ACCESSES["read-id"][:31])          # incomplete
    assert conn.serve_region(core.region_access) is None and conn.mid_message
    conn.receive_data(ACCESSES["read-id"][31:], [0x7FFF_FFF0])   # fds: the general path
    assert conn.serve_region(core.region_access) is None
    assert conn.next_event().errno == errno.EINVAL
    client_side = Connection(Role.CLIENT)
    client_side.receive_data(ACCESSES["read-id"])
    assert client_side.serve_region(core.region_access) is None
    fresh = Connection(Role.SERVER)                       # before VERSION
    fresh.receive_data(ACCESSES["read-id"])
    assert fresh.serve_region(core.region_access) is None
    assert fresh.next_event().errno == errno.EINVAL
