"""Requests broken at the header or fd level (libvfio-user test_request_errors in
spirit): each gets the exact errno, its fds are closed, and the next valid
request is answered."""

import errno
import os

import pytest

from proto_helpers import Pair, is_open, message
from vuser.protocol.consts import MAX_MSG_SIZE, Command
from vuser.protocol.events import ConnectionClosed
from vuser.protocol.messages import (
    VfioDeviceInfo, VfioIrqInfo, VfioRegionInfo, VfioUserDmaMap, VfioUserRegionAccess,
)


@pytest.fixture
def pair():
    p = Pair()
    yield p
    p.close()


def test_size_under_the_header(pair):
    # Like libvfio-user's test_too_small: only the header is sent.
    assert pair.raw_error(message(Command.DEVICE_SET_IRQS, size=15)) == errno.EINVAL
    pair.still_serves()


def test_size_over_the_limit_with_body(pair):
    # Unlike libvfio-user, the body is skipped, so the stream stays in sync.
    big = MAX_MSG_SIZE + 1
    raw = message(Command.REGION_WRITE, bytes(big - 16))
    assert pair.raw_error(raw) == errno.E2BIG
    pair.still_serves()


def test_short_payload(pair):
    raw = message(Command.DEVICE_SET_IRQS, b"")
    assert pair.raw_error(raw) == errno.EINVAL
    pair.still_serves()


@pytest.mark.parametrize("command,payload", [
    (Command.DEVICE_GET_INFO, VfioDeviceInfo().pack()[:12]),
    (Command.DEVICE_GET_REGION_INFO, VfioRegionInfo().pack()[:31]),
    (Command.DEVICE_GET_IRQ_INFO, VfioIrqInfo().pack()[:15]),
    (Command.REGION_READ, VfioUserRegionAccess(count=4).pack() + b"1234"),
    (Command.DMA_MAP, VfioUserDmaMap().pack()[:24]),
])
def test_wrong_payload_sizes(pair, command, payload):
    assert pair.raw_error(message(command, payload)) == errno.EINVAL
    pair.still_serves()


@pytest.mark.parametrize("command", [0, 14, 19, 0xFFFF])
def test_unknown_or_obsolete_command_is_enosys(pair, command):
    assert pair.raw_error(message(command, b"\0" * 8)) == errno.ENOSYS
    pair.still_serves()


@pytest.mark.parametrize("command", [Command.DMA_READ, Command.DMA_WRITE])
def test_server_to_client_commands_sent_to_a_server_are_enosys(pair, command):
    assert pair.raw_error(message(command, bytes(16))) == errno.ENOSYS
    pair.still_serves()


def test_unknown_message_type_is_einval(pair):
    raw = message(Command.DEVICE_GET_INFO, VfioDeviceInfo().pack(), flags=0x2)
    assert pair.raw_error(raw) == errno.EINVAL
    pair.still_serves()


def test_unsolicited_reply_is_dropped(pair):
    fd = os.eventfd(0)
    raw = message(Command.DEVICE_SET_IRQS, b"", flags=0x1, msg_id=0xbad2)
    assert pair.raw(raw, [fd]) == []
    assert not is_open(pair.server_fds[0])
    os.close(fd)
    pair.still_serves()


def test_errors_in_no_reply_requests_stay_silent(pair):
    raw = message(Command.REGION_READ, b"", flags=0x10)
    assert pair.raw(raw) == []
    pair.still_serves()


@pytest.mark.parametrize("command,payload", [
    (Command.DEVICE_GET_INFO, VfioDeviceInfo().pack()),
    (Command.REGION_READ, VfioUserRegionAccess(region=0, count=4).pack()),
    (Command.VERSION, b"\0\0\0\0"),
    (Command.DEVICE_RESET, b""),
])
def test_fds_where_none_are_expected_are_closed(pair, command, payload):
    fds = [os.eventfd(0), os.memfd_create("x")]
    assert pair.raw_error(message(command, payload), fds) == errno.EINVAL
    assert pair.server_fds and not any(is_open(fd) for fd in pair.server_fds)
    assert pair.backend.calls == [] and pair.backend.resets == 0
    for fd in fds:
        os.close(fd)
    pair.still_serves()


def test_bad_request_closes_fds_like_libvfio_user(pair):
    # libvfio-user test_bad_request_closes_fds: a DATA_BOOL SET_IRQS with two fds.
    from vuser.protocol.messages import SetIrqs, VfioIrqSet
    body = SetIrqs(VfioIrqSet(argsz=21, flags=0x22, index=2, start=0, count=1), b"\1")
    fds = [os.eventfd(0), os.eventfd(0)]
    before = set(os.listdir("/proc/self/fd"))
    assert pair.raw_error(message(Command.DEVICE_SET_IRQS, body.encode()), fds) == errno.EINVAL
    assert set(os.listdir("/proc/self/fd")) <= before
    for fd in fds:
        os.close(fd)


def test_disconnect_mid_message_closes_the_half_messages_fds(pair):
    fd = os.memfd_create("half")
    raw = message(Command.DMA_MAP, VfioUserDmaMap(flags=3, size=4096).pack())
    pair.raw(raw[:20], [fd])
    half_copy = pair.server_fds[0]
    assert is_open(half_copy)          # buffered with the incomplete message
    pair.raw(b"")
    assert pair.last_server_event == ConnectionClosed(partial=True)
    assert not is_open(half_copy)
    assert pair.dma.mappings == ()
    os.close(fd)
