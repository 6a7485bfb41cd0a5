"""The REGION_READ/WRITE fast path of ``Connection`` gives what the general path
gives, for every message it might see: the same events, the same replies, the
same errors, and anything it does not take falls through."""

from __future__ import annotations

import struct

import pytest

from proto_helpers import message
from vuser.errors import LocalProtocolError
from vuser.protocol.caps import Capabilities
from vuser.protocol.connection import Connection
from vuser.protocol.consts import VFIO_USER_F_NO_REPLY, Command
from vuser.protocol.events import NEED_DATA, BadMessage, Reply, Request
from vuser.protocol.messages import RegionData, Version, VfioUserRegionAccess
from vuser.protocol.state import ConnState, Role

R, W = Command.REGION_READ, Command.REGION_WRITE
ACCESS = struct.Struct("<QII")


def ready_server(fast: bool) -> Connection:
    conn = Connection(Role.SERVER, Capabilities(max_data_xfer_size=4096))
    conn.receive_data(message(Command.VERSION, Version(caps={}).encode(), msg_id=1))
    req = conn.next_event()
    conn.send(Reply(req.msg_id, Command.VERSION, Version()))
    assert conn.state is ConnState.READY
    conn._serves_regions = fast    # the switch under test: off = the general path only
    return conn


MESSAGES = {
    "read": message(R, ACCESS.pack(8, 0, 4), msg_id=5),
    "read-posted-flag": message(R, ACCESS.pack(8, 0, 4), msg_id=5, flags=VFIO_USER_F_NO_REPLY),
    "read-long": message(R, ACCESS.pack(8, 0, 4) + b"xx", msg_id=5),
    "read-short": message(R, ACCESS.pack(8, 0, 4)[:12], msg_id=5),
    "read-as-reply": message(R, ACCESS.pack(8, 0, 4), msg_id=5, flags=1),
    "write": message(W, ACCESS.pack(16, 1, 4) + b"abcd", msg_id=6),
    "write-posted": message(W, ACCESS.pack(16, 1, 4) + b"abcd", msg_id=6,
                            flags=VFIO_USER_F_NO_REPLY),
    "write-count-mismatch": message(W, ACCESS.pack(16, 1, 8) + b"abcd", msg_id=6),
    "write-no-data": message(W, ACCESS.pack(16, 1, 0), msg_id=6),
    "write-too-big": message(W, ACCESS.pack(0, 0, 8192) + bytes(8192), msg_id=6),
    "write-head-short": message(W, b"\0" * 8, msg_id=6),
    "reset": message(Command.DEVICE_RESET, msg_id=7),
}


def events(conn: Connection, raw: bytes, chunk: int) -> list:
    out = []
    for i in range(0, len(raw), chunk):
        conn.receive_data(raw[i:i + chunk])
        while (event := conn.next_event()) is not NEED_DATA:
            out.append(event)
    return out


@pytest.mark.parametrize("chunk", [1, 32, 1 << 16])
@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_the_fast_path_gives_the_general_paths_events(name, chunk):
    raw = MESSAGES[name] + MESSAGES["read"]          # followed by a good one: still in sync
    fast, slow = ready_server(True), ready_server(False)
    assert events(fast, raw, chunk) == events(slow, raw, chunk)
    assert fast._pending_in == slow._pending_in
    assert (fast.mid_message, fast.owed_replies) == (slow.mid_message, slow.owed_replies)


def test_a_read_reply_is_the_same_bytes_and_checked_the_same():
    fast, slow = ready_server(True), ready_server(False)
    for conn in (fast, slow):
        conn.receive_data(MESSAGES["read"] * 2)
        conn.next_event(), conn.next_event()
    good = Reply(5, R, RegionData(VfioUserRegionAccess(offset=8, region=0, count=4), b"1234"))
    assert fast.send(good) == slow.send(good)
    too_long = Reply(5, R, RegionData(VfioUserRegionAccess(offset=8, region=0, count=5),
                                      b"12345"))
    for conn in (fast, slow):   # larger than the requester's buffer: our bug, refused
        with pytest.raises(LocalProtocolError):
            conn.send(too_long)
    assert fast._pending_in == slow._pending_in and fast.owed_replies == 1


def test_a_write_reply_is_the_same_bytes_and_needs_a_pending_write():
    fast, slow = ready_server(True), ready_server(False)
    for conn in (fast, slow):
        conn.receive_data(MESSAGES["write"])
        assert isinstance(conn.next_event(), Request)
    head = VfioUserRegionAccess(offset=16, region=1, count=4)
    assert fast.send(Reply(6, W, head)) == slow.send(Reply(6, W, head))
    for conn in (fast, slow):
        with pytest.raises(LocalProtocolError):
            conn.send(Reply(6, W, head))     # answered already


def test_fds_take_the_general_path():
    fast = ready_server(True)
    fast.receive_data(MESSAGES["read"], [0x7FFF_FFF0])   # a bogus fd number: closed, rejected
    event = fast.next_event()
    assert isinstance(event, BadMessage) and event.reply_expected
