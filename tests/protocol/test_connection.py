"""Connection: framing, fd attribution, reply matching, and our own misuse."""

import errno
import os

import pytest

from proto_helpers import Pair, is_open, message
from vuser.errors import LocalProtocolError
from vuser.backend import VFIO_REGION_INFO_FLAG_READ
from vuser.protocol.caps import Capabilities
from vuser.protocol.connection import Connection
from vuser.protocol.consts import HEADER_SIZE, MAX_MSG_SIZE, Command
from vuser.protocol.events import (
    NEED_DATA, BadMessage, ConnectionClosed, ErrorReply, Reply, Request,
)
from vuser.protocol.messages import (
    DmaData, RegionData, RegionInfoReply, Version, VfioDeviceInfo, VfioRegionInfo,
    VfioUserDmaMap, VfioUserDmaRw, VfioUserRegionAccess,
)
from vuser.protocol.state import ConnState, Role


def ready_server() -> Connection:
    conn = Connection(Role.SERVER)
    conn.receive_data(message(Command.VERSION, Version().encode(), msg_id=0))
    req = conn.next_event()
    conn.send(Reply(req.msg_id, Command.VERSION, Version()))
    return conn


def get_info(msg_id: int, **kw) -> bytes:
    return message(Command.DEVICE_GET_INFO, VfioDeviceInfo().pack(), msg_id=msg_id, **kw)


def test_a_message_fed_byte_by_byte_is_parsed_once():
    conn = ready_server()
    for b in get_info(5):
        assert conn.next_event() is NEED_DATA
        conn.receive_data(bytes([b]))
    event = conn.next_event()
    assert isinstance(event, Request) and event.msg_id == 5 and event.size == 32
    assert conn.next_event() is NEED_DATA


def test_several_messages_in_one_chunk_come_out_in_order():
    conn = ready_server()
    conn.receive_data(get_info(1) + get_info(2) + get_info(3)[:20])
    assert [conn.next_event().msg_id for _ in range(2)] == [1, 2]
    assert conn.next_event() is NEED_DATA
    conn.receive_data(get_info(3)[20:])
    assert conn.next_event().msg_id == 3


def test_fds_belong_to_the_message_their_chunk_starts_in():
    conn = ready_server()
    a, b = os.eventfd(0), os.eventfd(0)
    dma_map = message(Command.DMA_MAP, VfioUserDmaMap(flags=3, size=4096).pack(), msg_id=7)
    stream = get_info(6) + dma_map
    # A chunk starting in message 7 (after message 6 and 8 bytes of 7) brings b.
    conn.receive_data(stream[:40])
    first = conn.next_event()
    assert first.msg_id == 6 and first.fds == ()
    conn.receive_data(stream[40:50], [b])
    assert conn.next_event() is NEED_DATA
    conn.receive_data(stream[50:])
    second = conn.next_event()
    assert second.msg_id == 7 and second.fds == (b,)
    # A chunk starting at message 6 brings a: a belongs to 6, which takes no
    # fds: rejected and a closed; message 7 in the same chunk has none.
    conn.receive_data(get_info(8) + dma_map, [a])
    bad = conn.next_event()
    assert isinstance(bad, BadMessage) and bad.msg_id == 8 and bad.errno == errno.EINVAL
    assert not is_open(a)
    assert conn.next_event().fds == ()
    os.close(b)


def test_eof_mid_message_closes_buffered_fds():
    conn = ready_server()
    fd = os.eventfd(0)
    dma_map = message(Command.DMA_MAP, VfioUserDmaMap(flags=3, size=4096).pack())
    conn.receive_data(dma_map[:30], [fd])
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"")
    event = conn.next_event()
    assert event == ConnectionClosed(partial=True)
    assert not is_open(fd)
    assert conn.state is ConnState.CLOSED
    with pytest.raises(LocalProtocolError):
        conn.receive_data(b"more")


def test_clean_eof_between_messages():
    conn = ready_server()
    conn.receive_data(b"")
    assert conn.next_event() == ConnectionClosed(partial=False)
    assert conn.next_event() == ConnectionClosed()


def test_eof_fails_our_pending_requests():
    pair = Pair()
    req = pair.server.request(Command.DMA_READ, VfioUserDmaRw(addr=0, count=4))
    pair.server.send(req)
    pair.server.receive_data(b"")
    assert pair.server.next_event() == ConnectionClosed(partial=False, pending=(req.msg_id,))


def test_oversized_message_is_skipped_and_answered_e2big():
    conn = ready_server()
    fd = os.eventfd(0)
    big = MAX_MSG_SIZE + 100
    conn.receive_data(message(Command.REGION_WRITE, b"", size=big, msg_id=9), [fd])
    event = conn.next_event()
    assert isinstance(event, BadMessage) and event.errno == errno.E2BIG
    assert event.reply_expected and not is_open(fd)
    conn.send(ErrorReply(9, Command.REGION_WRITE, errno.E2BIG))
    # The body arrives in pieces and is dropped, then the stream is in sync again.
    body = bytes(big - HEADER_SIZE)
    for i in range(0, len(body), 65536):
        conn.receive_data(body[i:i + 65536])
        assert conn.next_event() is NEED_DATA
    conn.receive_data(get_info(10))
    assert conn.next_event().msg_id == 10


def test_size_under_header_consumes_the_header_only():
    conn = ready_server()
    conn.receive_data(get_info(1, size=8) + get_info(2))
    bad = conn.next_event()
    assert isinstance(bad, BadMessage) and bad.errno == errno.EINVAL
    # The 16 bytes after the bad header are its would-be payload: taken as
    # the next header, they are garbage too; then message 2 parses.
    events = []
    while (e := conn.next_event()) is not NEED_DATA:
        events.append(e)
    assert events[-1].msg_id == 2


def test_no_reply_requests_owe_nothing():
    conn = ready_server()
    conn.receive_data(message(Command.REGION_WRITE,
                              RegionData.make(0, 0, b"1234").encode(), flags=0x10, msg_id=3))
    event = conn.next_event()
    assert event.no_reply and conn.owed_replies == 0
    with pytest.raises(LocalProtocolError, match="no pending"):
        conn.send(Reply(3, Command.REGION_WRITE, None))


def test_unexpected_reply_is_dropped_not_answered():
    conn = ready_server()
    fd = os.eventfd(0)
    conn.receive_data(message(Command.DEVICE_SET_IRQS, b"", flags=1, msg_id=0xbad2), [fd])
    event = conn.next_event()
    assert isinstance(event, BadMessage) and event.is_reply and not event.reply_expected
    assert not is_open(fd)
    assert conn.owed_replies == 0


def test_reply_matching_by_id_and_command():
    pair = Pair()
    req = pair.server.request(Command.DMA_READ, VfioUserDmaRw(addr=0x1000, count=4))
    pair.server.send(req)
    wrong_cmd = message(Command.DMA_WRITE, VfioUserDmaRw(addr=0x1000, count=4).pack(),
                        msg_id=req.msg_id, flags=1)
    pair.server.receive_data(wrong_cmd)
    event = pair.server.next_event()
    assert isinstance(event, BadMessage) and event.is_reply and event.errno == errno.EPROTO
    assert pair.server.awaiting_replies == ()


def test_reply_larger_than_the_request_allows_is_a_bad_reply():
    pair = Pair()
    req = pair.server.request(Command.DMA_READ, VfioUserDmaRw(addr=0x1000, count=4))
    pair.server.send(req)
    pair.server.receive_data(message(
        Command.DMA_READ, DmaData.make(0x1000, b"12345678").encode(), msg_id=req.msg_id,
        flags=1))
    event = pair.server.next_event()
    assert isinstance(event, BadMessage) and "at most 36" in event.reason


def test_fds_in_a_reply_that_takes_none_are_closed():
    pair = Pair()
    req = pair.server.request(Command.DMA_WRITE, DmaData.make(0, b"x"))
    pair.server.send(req)
    fd = os.eventfd(0)
    pair.server.receive_data(message(Command.DMA_WRITE, VfioUserDmaRw(count=1).pack(),
                                     msg_id=req.msg_id, flags=1), [fd])
    assert isinstance(pair.server.next_event(), BadMessage)
    assert not is_open(fd)


def test_error_reply_is_delivered_with_its_errno():
    pair = Pair()
    req = pair.server.request(Command.DMA_READ, VfioUserDmaRw(addr=0, count=1))
    pair.server.send(req)
    pair.server.receive_data(message(Command.DMA_READ, msg_id=req.msg_id, flags=0x21)
                             [:8] + (0x21).to_bytes(4, "little") + (14).to_bytes(4, "little"))
    assert pair.server.next_event() == ErrorReply(req.msg_id, Command.DMA_READ, errno.EFAULT)


class TestOurMisuseIsLocalProtocolError:
    def test_reply_larger_than_the_requesters_buffer(self):
        conn = ready_server()
        conn.receive_data(message(Command.REGION_READ,
                                  VfioUserRegionAccess(region=0, count=4).pack(), msg_id=1))
        conn.next_event()
        with pytest.raises(LocalProtocolError, match="exceeds"):
            conn.send(Reply(1, Command.REGION_READ, RegionData.make(0, 0, b"12345")))
        conn.send(Reply(1, Command.REGION_READ, RegionData.make(0, 0, b"1234")))

    def test_region_info_reply_limited_by_argsz(self):
        conn = ready_server()
        conn.receive_data(message(Command.DEVICE_GET_REGION_INFO,
                                  VfioRegionInfo(argsz=32).pack(), msg_id=1))
        conn.next_event()
        head = VfioRegionInfo(argsz=72, flags=8 | VFIO_REGION_INFO_FLAG_READ, cap_offset=32)
        with pytest.raises(LocalProtocolError, match="exceeds"):
            conn.send(Reply(1, Command.DEVICE_GET_REGION_INFO, RegionInfoReply(head, ((0, 1),))))

    def test_fds_only_in_region_info_replies(self):
        conn = ready_server()
        conn.receive_data(get_info(1))
        conn.next_event()
        with pytest.raises(LocalProtocolError, match="fds"):
            conn.send(Reply(1, Command.DEVICE_GET_INFO, VfioDeviceInfo(), (0,)))

    def test_error_reply_needs_a_positive_errno(self):
        conn = ready_server()
        conn.receive_data(get_info(1))
        conn.next_event()
        with pytest.raises(LocalProtocolError, match="positive"):
            conn.send(ErrorReply(1, Command.DEVICE_GET_INFO, 0))
        data, fds = conn.send(ErrorReply(1, Command.DEVICE_GET_INFO, errno.EINVAL))
        assert len(data) == 16 and fds == []

    def test_reply_without_request_or_twice(self):
        conn = ready_server()
        with pytest.raises(LocalProtocolError):
            conn.send(Reply(1, Command.DEVICE_GET_INFO, VfioDeviceInfo()))
        conn.receive_data(get_info(1))
        conn.next_event()
        conn.send(Reply(1, Command.DEVICE_GET_INFO, VfioDeviceInfo()))
        with pytest.raises(LocalProtocolError):
            conn.send(Reply(1, Command.DEVICE_GET_INFO, VfioDeviceInfo()))

    def test_version_reply_must_be_0_0(self):
        conn = Connection(Role.SERVER)
        conn.receive_data(message(Command.VERSION, Version().encode(), msg_id=0))
        conn.next_event()
        with pytest.raises(LocalProtocolError, match="minor"):
            conn.send(Reply(0, Command.VERSION, Version(0, 1)))

    def test_version_reply_no_larger_than_the_request(self):
        conn = Connection(Role.SERVER)
        conn.receive_data(message(Command.VERSION, Version().encode(), msg_id=0))
        conn.next_event()
        with pytest.raises(LocalProtocolError, match="exceeds"):
            conn.send(Reply(0, Command.VERSION, Version(0, 0, {"capabilities": {}})))

    def test_roles_send_only_their_commands(self):
        client = Connection(Role.CLIENT)
        with pytest.raises(LocalProtocolError, match="does not send"):
            client.send(client.request(Command.DMA_READ, VfioUserDmaRw()))
        with pytest.raises(LocalProtocolError, match="before VERSION"):
            client.send(client.request(Command.DEVICE_GET_INFO, VfioDeviceInfo()))
        server = ready_server()
        with pytest.raises(LocalProtocolError, match="does not send"):
            server.send(server.request(Command.DEVICE_GET_INFO, VfioDeviceInfo()))

    def test_limits_of_what_we_send(self):
        pair = Pair(client_caps=Capabilities(max_data_xfer_size=4096))
        with pytest.raises(LocalProtocolError, match="max_data_xfer_size"):
            pair.client.send(pair.client.request(
                Command.REGION_WRITE, RegionData.make(0, 0, bytes(4097))))
        with pytest.raises(LocalProtocolError, match="fds"):
            pair.client.send(pair.client.request(Command.DEVICE_GET_INFO, VfioDeviceInfo(),
                                                 (0,)))

    def test_message_ids_skip_pending_ones_and_wrap(self):
        pair = Pair()
        pair.server._next_id = 0xFFFF
        a = pair.server.request(Command.DMA_READ, VfioUserDmaRw(count=1))
        pair.server.send(a)
        pair.server._next_id = 0xFFFF
        b = pair.server.request(Command.DMA_READ, VfioUserDmaRw(count=1))
        assert (a.msg_id, b.msg_id) == (0xFFFF, 0)
        with pytest.raises(LocalProtocolError, match="still waiting"):
            pair.server.send(Request(0xFFFF, Command.DMA_READ, VfioUserDmaRw(count=1)))
