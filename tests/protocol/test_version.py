"""VERSION: capabilities, negotiation, and QEMU 11's checks on the reply."""

import errno
import json

import pytest

from proto_helpers import Pair, message
from vuser.errors import RemoteProtocolError
from vuser.protocol.caps import Capabilities, negotiate
from vuser.protocol.consts import Command
from vuser.protocol.events import ErrorReply, Reply
from vuser.protocol.messages import Version, VfioDeviceInfo, VfioUserVersion
from vuser.protocol.state import ConnState

# What QEMU 11.1.3 sends (its ``hw/vfio-user/proxy.c``), 190-odd bytes.
QEMU_CAPS = {"capabilities": {
    "migration": {"pgsize": 4096, "max_bitmap_size": 268435456}, "max_msg_fds": 16,
    "max_data_xfer_size": 1048576, "pgsizes": 4096, "max_dma_maps": 65535,
    "write_multiple": True}}


def version_message(caps, major=0, minor=0, msg_id=1):
    return message(Command.VERSION, Version(major, minor, caps).encode(), msg_id=msg_id)


def test_qemu_request_gets_a_reply_qemu_accepts():
    pair = Pair(negotiate=False)
    request = version_message(QEMU_CAPS)
    [(hdr, payload)] = pair.raw(request)
    assert hdr.flags == 1 and hdr.command == Command.VERSION and hdr.msg_id == 1
    assert hdr.size <= len(request), "QEMU: reply larger than recv buffer"
    assert hdr.size >= 20
    head = VfioUserVersion.unpack(payload)
    assert (head.major, head.minor) == (0, 0), "QEMU 11 requires minor == 0"
    assert payload[-1] == 0, "QEMU: corrupt version reply (no NUL)"
    caps = json.loads(payload[4:-1])["capabilities"]
    assert caps == {"max_msg_fds": 16, "max_data_xfer_size": 1 << 20, "write_multiple": True,
                    "max_dma_maps": 65535, "pgsizes": 4096}
    assert caps["max_msg_fds"] <= 16 and caps["max_data_xfer_size"] <= 64 << 20
    assert "twin_socket" not in caps
    assert pair.server.state is ConnState.READY
    assert pair.server.peer_caps.max_msg_fds == 16
    pair.raw(message(Command.DEVICE_GET_INFO, VfioDeviceInfo().pack()))


def test_reply_shrinks_to_fit_a_small_request():
    two_keys = Version(0, 0, {"capabilities": {"max_msg_fds": 16,
                                               "max_data_xfer_size": 1 << 20}})
    room = len(two_keys.encode())
    request = Version(0, 0, {"capabilities": {"max_msg_fds": 1}})
    reply, peer, seen = negotiate(Capabilities(), request, room)
    assert reply == two_keys  # the least important keys went first
    assert peer.max_msg_fds == 1
    assert seen == Capabilities.from_json(two_keys.caps)
    # Too small for any key: no JSON at all (20-byte reply, defaults).
    reply, _, seen = negotiate(Capabilities(), request, 20)
    assert reply.caps is None and len(reply.encode()) == 4
    assert seen == Capabilities.from_json(None)


def test_request_without_json_gets_a_20_byte_reply():
    pair = Pair(negotiate=False)
    [(hdr, payload)] = pair.raw(message(Command.VERSION, VfioUserVersion().pack()))
    assert hdr.size == 20 and payload == b"\0\0\0\0"
    # The client assumes spec defaults: 1 fd per message, 1 MiB transfers.
    assert pair.server.peer_caps == Capabilities.from_json(None)
    assert pair.server.peer_caps.max_msg_fds == 1


def test_write_multiple_offered_only_when_proposed():
    caps = {"capabilities": {"write_multiple": False}}
    reply, _, seen = negotiate(Capabilities(), Version(0, 0, caps), 4096)
    assert "write_multiple" not in reply.caps["capabilities"] and not seen.write_multiple


def test_client_pair_negotiates_and_records_server_caps():
    pair = Pair()
    assert pair.client.state is ConnState.READY and pair.server.state is ConnState.READY
    assert pair.client.peer_caps.max_msg_fds == 16
    assert pair.core.peer_caps.max_data_xfer_size == 1 << 20


@pytest.mark.parametrize("caps,why", [
    ({"capabilities": {"max_msg_fds": "8"}}, "string"),
    ({"capabilities": {"max_msg_fds": 1025}}, "above libvfio-user's ceiling of 1024"),
    ({"capabilities": {"max_msg_fds": -1}}, "negative"),
    ({"capabilities": {"max_msg_fds": True}}, "bool is not a number"),
    ({"capabilities": {"max_data_xfer_size": 0}}, "zero"),
    ({"capabilities": {"max_data_xfer_size": 1 << 64}}, "above 2^64 - 1"),
    ({"capabilities": {"pgsizes": 8192}}, "no 4 KiB pages"),
    ({"capabilities": {"pgsizes": 4097}}, "not a multiple of 4 KiB"),
    ({"capabilities": {"write_multiple": 1}}, "not a bool"),
    ({"capabilities": []}, "capabilities not an object"),
])
def test_bad_capabilities_are_einval_and_negotiation_can_be_retried(caps, why):
    pair = Pair(negotiate=False)
    assert pair.raw_error(version_message(caps)) == errno.EINVAL, why
    assert pair.server.state is ConnState.AWAIT_VERSION
    [(hdr, _)] = pair.raw(version_message(QEMU_CAPS))
    assert hdr.flags == 1
    assert pair.server.state is ConnState.READY


def test_other_major_is_einval():
    pair = Pair(negotiate=False)
    assert pair.raw_error(version_message(QEMU_CAPS, major=1)) == errno.EINVAL


def test_higher_minor_is_answered_with_minor_0():
    pair = Pair(negotiate=False)
    [(hdr, payload)] = pair.raw(version_message(QEMU_CAPS, minor=7))
    assert VfioUserVersion.unpack(payload).minor == 0


def test_second_version_and_commands_before_version_are_einval():
    pair = Pair(negotiate=False)
    assert pair.raw_error(message(Command.DEVICE_GET_INFO, VfioDeviceInfo().pack())) == errno.EINVAL
    pair.raw(version_message(QEMU_CAPS))
    assert pair.raw_error(version_message(QEMU_CAPS, msg_id=2)) == errno.EINVAL
    pair.still_serves()


def test_unknown_keys_and_twin_socket_are_ignored():
    caps = {"capabilities": {"twin_socket": {"supported": True}, "frobnicate": 3}}
    pair = Pair(negotiate=False)
    [(hdr, payload)] = pair.raw(version_message(caps))
    assert "twin_socket" not in json.loads(payload[4:-1])["capabilities"]


def test_client_rejects_a_server_reply_with_minor_not_0():
    pair = Pair(negotiate=False)
    req = pair.client.request(Command.VERSION, Version(caps=Capabilities().to_json()))
    pair.client.send(req)
    bad = message(Command.VERSION, Version(0, 1, None).encode(), msg_id=req.msg_id, flags=1)
    pair.client.receive_data(bad)
    event = pair.client.next_event()
    assert event.is_reply and event.errno == errno.EPROTO
    assert pair.client.state is ConnState.AWAIT_VERSION


def test_client_sees_version_error_reply():
    pair = Pair(negotiate=False)
    event = pair.call(Command.VERSION, Version(1, 0, None))
    assert isinstance(event, ErrorReply) and event.errno == errno.EINVAL
    assert pair.client.state is ConnState.AWAIT_VERSION
    assert isinstance(pair.call(Command.VERSION, Version(caps=Capabilities().to_json())), Reply)


def test_capabilities_default_to_the_spec_when_absent():
    caps = Capabilities.from_json({"capabilities": {}})
    assert (caps.max_msg_fds, caps.max_data_xfer_size, caps.max_dma_maps, caps.pgsizes,
            caps.write_multiple) == (1, 1 << 20, 65535, 4096, False)
    with pytest.raises(RemoteProtocolError):
        Capabilities.from_json({"capabilities": {"max_dma_maps": -1}})


def test_version_with_no_reply_is_rejected_silently():
    pair = Pair(negotiate=False)
    raw = message(Command.VERSION, Version(0, 0, QEMU_CAPS).encode(), flags=0x10)
    assert pair.raw(raw) == []
    assert pair.server.state is ConnState.AWAIT_VERSION


@pytest.mark.parametrize("depth", [33, 10_000, 200_000])
def test_deeply_nested_json_is_einval_not_recursion_error(depth):
    # Issue 14, defect 2: json.loads raised RecursionError out of the read path.
    pair = Pair(negotiate=False)
    text = b"[" * depth + b"]" * depth
    raw = message(Command.VERSION, VfioUserVersion().pack() + text + b"\0")
    assert pair.raw_error(raw) == errno.EINVAL
    pair.raw(version_message(QEMU_CAPS))
    pair.still_serves()


def test_nesting_up_to_json_c_depth_is_accepted():
    nested = 1
    for _ in range(30):          # 30 arrays + the two objects around them: depth 32
        nested = [nested]
    caps = {"capabilities": {"x-vendor": nested}}
    pair = Pair(negotiate=False)
    [(hdr, _)] = pair.raw(version_message(caps))
    assert hdr.flags == 1 and pair.server.state is ConnState.READY


def test_libvfio_user_client_version_is_accepted():
    # libvfio-user's client proposes max_msg_fds 32: what it can receive.
    caps = {"capabilities": {"max_msg_fds": 32, "max_data_xfer_size": 1 << 20,
                             "migration": {"pgsize": 4096}}}
    pair = Pair(negotiate=False)
    [(hdr, payload)] = pair.raw(version_message(caps))
    assert hdr.flags == 1 and not hdr.error
    assert pair.server.state is ConnState.READY
    assert pair.server.peer_caps.max_msg_fds == 32
    assert json.loads(payload[4:-1])["capabilities"]["max_msg_fds"] == 16  # what we take


def test_a_huge_max_data_xfer_size_is_accepted_and_ours_bounds_what_we_send():
    pair = Pair(negotiate=False)
    [(hdr, _)] = pair.raw(version_message({"capabilities": {"max_data_xfer_size": 1 << 40}}))
    assert hdr.flags == 1 and not hdr.error
