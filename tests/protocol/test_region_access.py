"""REGION_READ, REGION_WRITE (posted or not) and REGION_WRITE_MULTI."""

import errno

import pytest

from proto_helpers import Pair, message
from vuser.protocol.consts import MAX_DATA_XFER_SIZE, Command
from vuser.protocol.events import BadMessage
from vuser.protocol.messages import (
    RegionData, VfioUserRegionAccess, VfioUserWriteMultiEntry, VfioUserWriteMultiHead,
    WriteMulti,
)


@pytest.fixture
def pair():
    p = Pair()
    yield p
    p.close()


def access(region, offset, count):
    return VfioUserRegionAccess(offset=offset, region=region, count=count)


def entry(region, offset, data):
    return VfioUserWriteMultiEntry(offset=offset, region=region, count=len(data),
                                   data=data.ljust(8, b"\0"))


def test_write_then_read(pair):
    echo = pair.ok(Command.REGION_WRITE, RegionData.make(0, 0x08, b"\xde\xad\xbe\xef")).body
    assert echo == access(0, 0x08, 4)
    reply = pair.ok(Command.REGION_READ, access(0, 0x08, 4)).body
    assert reply == RegionData.make(0, 0x08, b"\xde\xad\xbe\xef")


def test_config_read_of_the_whole_space_like_qemu(pair):
    pair.backend.config[:4] = b"\x55\x56\x01\x00"
    req = message(Command.REGION_READ, access(7, 0, 256).pack())
    [(hdr, payload)] = pair.raw(req)
    assert hdr.size == 32 + 256, "QEMU sizes the reply buffer 32 + count"
    assert payload[16:20] == b"\x55\x56\x01\x00"


def test_zero_length_access(pair):
    assert pair.ok(Command.REGION_READ, access(0, 4096, 0)).body.data == b""


def test_posted_write_gets_no_reply_and_is_ordered_before_a_read(pair):
    assert pair.call(Command.REGION_WRITE, RegionData.make(0, 0x08, b"\1\2\3\4"),
                     no_reply=True) is None
    assert pair.ok(Command.REGION_READ, access(0, 0x08, 4)).body.data == b"\1\2\3\4"


def test_failed_posted_write_is_logged_not_answered(pair, caplog):
    assert pair.call(Command.REGION_WRITE, RegionData.make(1, 0, b"\1"), no_reply=True) is None
    assert "no reply wanted" in caplog.text
    pair.still_serves()


@pytest.mark.parametrize("command,body,err,why", [
    (Command.REGION_READ, access(9, 0, 4), errno.EINVAL, "index == num_regions"),
    (Command.REGION_READ, access(0xFFFFFFFF, 0, 4), errno.EINVAL, "huge index"),
    (Command.REGION_READ, access(0, 4093, 4), errno.EINVAL, "beyond the end"),
    (Command.REGION_READ, access(0, 1 << 63, 4), errno.EINVAL, "far beyond the end"),
    (Command.REGION_READ, access(8, 0, 1), errno.EINVAL, "region of size 0"),
    (Command.REGION_WRITE, RegionData.make(0, 4095, b"ab"), errno.EINVAL, "beyond the end"),
    (Command.REGION_WRITE, RegionData.make(1, 0, b"ab"), errno.EINVAL, "read-only region"),
    (Command.REGION_WRITE, RegionData.make(9, 0, b"ab"), errno.EINVAL, "index out of range"),
])
def test_bad_accesses(pair, command, body, err, why):
    assert pair.error(command, body) == err, why
    assert not [c for c in pair.backend.calls if c[0] in ("read", "write")], "backend reached"
    pair.still_serves()


def test_read_above_max_data_xfer_size_is_e2big(pair):
    # Our client refuses to send it; a raw message gets through.
    raw = message(Command.REGION_READ, access(0, 0, MAX_DATA_XFER_SIZE + 1).pack())
    assert pair.raw_error(raw) == errno.E2BIG
    pair.still_serves()


def test_write_with_count_not_matching_its_data_is_einval(pair):
    raw = message(Command.REGION_WRITE, access(0, 0, 8).pack() + b"1234")
    assert pair.raw_error(raw) == errno.EINVAL
    pair.still_serves()


def test_oversized_write_is_e2big_and_skipped(pair):
    data = bytes(MAX_DATA_XFER_SIZE + 1)
    raw = message(Command.REGION_WRITE, access(0, 0, len(data)).pack() + data)
    assert pair.raw_error(raw) == errno.E2BIG
    pair.still_serves()


def test_write_multi(pair):
    body = WriteMulti((entry(0, 0x08, b"\x11\x22"), entry(0, 0x0C, b"\x33" * 8),
                       entry(7, 0x04, b"\x06")))
    reply = pair.ok(Command.REGION_WRITE_MULTI, body).body
    assert reply == VfioUserWriteMultiHead(wr_cnt=3)
    assert pair.backend.regs[0x08:0x14] == b"\x11\x22\0\0" + b"\x33" * 8
    assert pair.backend.config[4] == 6
    # QEMU sends it NO_REPLY.
    assert pair.call(Command.REGION_WRITE_MULTI, WriteMulti((entry(0, 8, b"\x44"),)),
                     no_reply=True) is None
    assert pair.backend.regs[8] == 0x44


@pytest.mark.parametrize("entries,why", [
    ((entry(0, 0x08, b"\1"), entry(1, 0, b"\2")), "read-only region in the middle"),
    ((entry(0, 0x08, b"\1"), entry(0, 4095, b"\2\3")), "beyond the region"),
    ((VfioUserWriteMultiEntry(offset=0, region=0, count=9, data=bytes(8)),), "count > 8"),
    ((entry(0, 0, b"\1"),) * 201, "more than 200 writes"),
])
def test_write_multi_validates_every_entry_before_writing_any(pair, entries, why):
    assert pair.error(Command.REGION_WRITE_MULTI, WriteMulti(entries)) == errno.EINVAL, why
    assert not [c for c in pair.backend.calls if c[0] == "write"], why
    pair.still_serves()


def test_device_failure_is_eio_and_the_server_keeps_serving(pair):
    pair.backend.fail_with = RuntimeError("device bug")
    assert pair.error(Command.REGION_READ, access(0, 0, 4)) == errno.EIO
    pair.still_serves()


def test_client_rejects_a_read_reply_longer_than_asked(pair):
    req = pair.client.request(Command.REGION_READ, access(0, 0, 2))
    pair.client.send(req)
    pair.client.receive_data(message(Command.REGION_READ,
                                     RegionData.make(0, 0, b"123").encode(),
                                     msg_id=req.msg_id, flags=1))
    event = pair.client.next_event()
    assert isinstance(event, BadMessage) and event.errno == errno.EPROTO
