"""``Connection.mid_message`` is a plain attribute: after every call that can
change the buffer or the bytes to skip (``receive_data``, ``next_event``,
``serve_region``, ``abort``) it equals "part of a message is buffered or being
skipped", over random streams of good, bad, oversized and cut messages in
random chunks."""

from __future__ import annotations

import random
import struct

import pytest

from proto_helpers import message
from vuser.errors import RemoteProtocolError
from vuser.protocol.caps import Capabilities
from vuser.protocol.connection import Connection
from vuser.protocol.consts import VFIO_USER_F_NO_REPLY, Command
from vuser.protocol.events import NEED_DATA, ConnectionClosed, Reply, Request
from vuser.protocol.messages import Version
from vuser.protocol.state import Role

R, W = Command.REGION_READ, Command.REGION_WRITE
ACCESS = struct.Struct("<QII")
HDR = struct.Struct("<HHIHHI")

PIECES = [
    message(R, ACCESS.pack(8, 0, 4), msg_id=5),
    message(R, ACCESS.pack(8, 0, 4), msg_id=5, flags=VFIO_USER_F_NO_REPLY),
    message(W, ACCESS.pack(16, 1, 4) + b"abcd", msg_id=6),
    message(W, ACCESS.pack(16, 1, 4) + b"abcd", msg_id=6, flags=VFIO_USER_F_NO_REPLY),
    message(W, ACCESS.pack(16, 1, 8) + b"abcd", msg_id=6),          # count mismatch
    message(W, ACCESS.pack(0, 0, 8192) + bytes(8192), msg_id=6),     # over the limit: skipped
    HDR.pack(9, R, 1 << 20, 0, 0, 0) + bytes(600),                   # oversized: discarded
    HDR.pack(9, R, 8, 0, 0, 0),                                      # size under the header
    message(Command.DEVICE_RESET, msg_id=7),
    message(R, ACCESS.pack(8, 0, 4), msg_id=5, flags=1),             # a reply, unasked
]


def _check(conn: Connection) -> None:
    assert conn.mid_message == bool(conn._buf or conn._discard)


def _access(msg_id, command, region, offset, count, data, no_reply):
    if region == 1 and offset == 16 and data is None:
        raise RemoteProtocolError(22, "refused")
    return None if data is not None else bytes(count)


@pytest.mark.parametrize("seed", range(40))
def test_mid_message_is_the_buffers_state_after_every_call(seed):
    rnd = random.Random(seed)
    conn = Connection(Role.SERVER, Capabilities(max_data_xfer_size=4096))
    _check(conn)
    conn.receive_data(message(Command.VERSION, Version(caps={}).encode(), msg_id=1))
    _check(conn)
    req = conn.next_event()
    _check(conn)
    conn.send(Reply(req.msg_id, Command.VERSION, Version()))
    stream = b"".join(rnd.choice(PIECES) for _ in range(30))
    if rnd.random() < 0.5:
        stream = stream[:rnd.randrange(len(stream))]                 # cut somewhere
    i = 0
    closed = False
    while i < len(stream) and not closed:
        n = rnd.choice([1, 7, 16, 32, 36, 100, 5000])
        conn.receive_data(stream[i:i + n])
        i += n
        _check(conn)
        while True:
            if rnd.random() < 0.5:
                out = conn.serve_region(_access)
                _check(conn)
                if out is not None:
                    continue
            event = conn.next_event()
            _check(conn)
            if event is NEED_DATA:
                break
            if isinstance(event, ConnectionClosed):
                closed = True
                break
            if isinstance(event, Request) and rnd.random() < 0.02:
                conn.abort()                                         # a transport hanging up
                _check(conn)
                closed = True
                break
    if not closed:
        conn.receive_data(b"")                                       # EOF
        _check(conn)
        while not isinstance(conn.next_event(), ConnectionClosed):
            _check(conn)
        _check(conn)
        assert not conn.mid_message
