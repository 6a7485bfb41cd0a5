"""The sans-IO codec: framing, shapes, and limits checked at the header."""

from __future__ import annotations

import errno
import struct

import msgpack
import pytest

from vuser.rpc.codec import (
    Decoder, Invalid, Limits, Notification, Request, Response, StreamError, encode_notification,
    encode_request, encode_response, error_value,
)


def test_round_trip_all_three_shapes_byte_by_byte() -> None:
    data = (encode_request(1, "ioas_alloc", []) + encode_response(2, None, {"a": [1, b"x"]})
            + encode_notification("fault", {"iova": 1 << 63}))
    d = Decoder()
    events = []
    for i in range(len(data)):
        events += d.feed(data[i:i + 1])
        if i < len(data) - 1:
            assert d.pending or events, "a partial message must be pending"
    assert events == [Request(1, "ioas_alloc", []), Response(2, None, {"a": [1, b"x"]}),
                      Notification("fault", {"iova": 1 << 63})]
    assert not d.pending


def test_named_params_and_int_keys() -> None:
    d = Decoder()
    assert d.feed(encode_request(3, "m", {"x": 1})) == [Request(3, "m", {"x": 1})]
    [ev] = d.feed(msgpack.packb([0, 4, "m", {1: 2}]))
    assert isinstance(ev, Invalid) and ev.id == 4 and ev.errno == errno.EINVAL


@pytest.mark.parametrize("obj, rid, err", [
    (5, None, errno.EPROTO),
    ([], None, errno.EPROTO),
    ([0, 1, "m"], 1, errno.EPROTO),
    ([0, "x", "m", []], None, errno.EPROTO),
    ([0, 9, 5, []], 9, errno.EINVAL),
    ([0, 9, "m", 5], 9, errno.EINVAL),
    ([7, 1, 2, 3], None, errno.EPROTO),
    ([True, 1, "m", []], None, errno.EPROTO),
    ([0, -1, "m", []], None, errno.EPROTO),
    ([2, 5, 6], None, errno.EPROTO),
])
def test_invalid_shapes_are_events_not_errors(obj: object, rid: int | None, err: int) -> None:
    d = Decoder()
    [ev] = d.feed(msgpack.packb(obj))
    assert isinstance(ev, Invalid) and (ev.id, ev.errno) == (rid, err)
    # The stream is still in sync: the next message decodes.
    assert d.feed(encode_request(1, "ok", [])) == [Request(1, "ok", [])]


def test_200_mib_bin_refused_at_its_header() -> None:
    d = Decoder()
    head = b"\x94\x00\x01\xa1m\x91" + b"\xc6" + struct.pack(">I", 200 << 20)
    with pytest.raises(StreamError) as ei:
        d.feed(head)  # not one payload byte sent: refused at once
    assert ei.value.errno == errno.EMSGSIZE
    with pytest.raises(StreamError):
        d.feed(b"more")  # stays broken


@pytest.mark.parametrize("head", [
    b"\xdf" + struct.pack(">I", 1 << 31),             # map32 of 2^31 entries
    b"\xdd" + struct.pack(">I", (1 << 20) + 1),       # array32 over the limit
    b"\xdb" + struct.pack(">I", (1 << 20) + 1),       # str32 over the limit
    b"\x91" * 40,                                     # nesting deeper than 32
    b"\xd4\x01\x00",                                  # ext types are refused
    b"\xc1",                                          # never-used byte
])
def test_oversized_and_garbage_headers(head: bytes) -> None:
    with pytest.raises(StreamError) as ei:
        Decoder().feed(head)
    assert ei.value.errno in (errno.EMSGSIZE, errno.EPROTO)


def test_header_split_across_feeds_is_still_checked() -> None:
    d = Decoder()
    d.feed(b"\xc6\x0c")  # bin32, length bytes split
    with pytest.raises(StreamError):
        d.feed(b"\x80\x00\x00")  # 0x0c800000 = 200 MiB


def test_item_count_limit_per_message_resets_between_messages() -> None:
    lim = Limits(max_items=10)
    d = Decoder(lim)
    ok = encode_request(1, "m", [1, 2, 3])  # 7 objects
    assert len(d.feed(ok * 5)) == 5
    with pytest.raises(StreamError):
        d.feed(encode_request(2, "m", list(range(20))))


def test_buffer_limit_without_a_declared_length() -> None:
    # A message whose declared lengths are fine but whose total exceeds the buffer.
    d = Decoder(Limits(max_buffer=1 << 16, max_bin=1 << 20))
    with pytest.raises(StreamError) as ei:
        d.feed(encode_request(1, "m", [b"x" * 100_000]))
    assert ei.value.errno == errno.EMSGSIZE


def test_error_value_names_the_errno() -> None:
    assert error_value(errno.ENOENT, "gone", processed=2) == {
        "errno": "ENOENT", "code": errno.ENOENT, "message": "gone", "processed": 2}
