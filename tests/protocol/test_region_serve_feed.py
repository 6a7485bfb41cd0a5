"""``serve_region(access, received)`` is ``receive_data(received)`` then
``serve_region(access)``: the same replies, events, state and errors, over
random streams in random chunks, EOF and data after EOF included."""

from __future__ import annotations

import random

import pytest

from test_mid_message import PIECES, _access
from proto_helpers import message
from vuser.errors import LocalProtocolError
from vuser.protocol.caps import Capabilities
from vuser.protocol.connection import Connection
from vuser.protocol.consts import Command
from vuser.protocol.events import NEED_DATA, ConnectionClosed, Reply
from vuser.protocol.messages import Version
from vuser.protocol.state import Role


def _ready() -> Connection:
    conn = Connection(Role.SERVER, Capabilities(max_data_xfer_size=4096))
    conn.receive_data(message(Command.VERSION, Version(caps={}).encode(), msg_id=1))
    req = conn.next_event()
    conn.send(Reply(req.msg_id, Command.VERSION, Version()))
    return conn


def _run(rnd_seed: int, fed: bool) -> list:
    rnd = random.Random(rnd_seed)
    conn = _ready()
    stream = b"".join(rnd.choice(PIECES) for _ in range(30))
    stream = stream[:rnd.randrange(len(stream) + 1)]
    chunks = []
    i = 0
    while i < len(stream):
        n = rnd.choice([1, 7, 16, 32, 36, 100, 5000])
        chunks.append(stream[i:i + n])
        i += n
    chunks += [b"", b"late"]                    # EOF, then data after it
    out: list = []
    for chunk in chunks:
        try:
            if fed:
                got = conn.serve_region(_access, chunk)
            else:
                conn.receive_data(chunk)
                got = conn.serve_region(_access)
        except LocalProtocolError as e:
            out.append(("error", str(e)))
            continue
        out.append(("served", got))
        while True:
            if got is None:
                event = conn.next_event()
                out.append(event)
                if event is NEED_DATA or isinstance(event, ConnectionClosed):
                    break
            got = conn.serve_region(_access)
            out.append(("served", got))
    out.append((conn.mid_message, bytes(conn._buf), conn._discard, conn.owed_replies))
    return out


@pytest.mark.parametrize("seed", range(40))
def test_feeding_through_serve_region_is_receive_data_first(seed):
    fed, plain = _run(seed, True), _run(seed, False)
    assert fed == plain
    assert ("error", "data received after EOF") in fed
