"""DEVICE_GET_INFO, GET_REGION_INFO, GET_REGION_IO_FDS and GET_IRQ_INFO, with
the checks QEMU 11 applies to their replies (``hw/vfio-user/``)."""

import errno
import os

import pytest

from proto_helpers import FakeBackend, Pair, is_open, message
from vuser.backend import (
    VFIO_IRQ_INFO_EVENTFD, VFIO_IRQ_INFO_MASKABLE, VFIO_REGION_INFO_FLAG_CAPS,
    VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
    RegionInfo,
)
from vuser.protocol.consts import Command
from vuser.protocol.messages import (
    RegionInfoReply, VfioDeviceInfo, VfioIrqInfo, VfioRegionInfo, VfioUserRegionIoFds,
)


@pytest.fixture
def pair():
    p = Pair()
    yield p
    p.close()


# --- DEVICE_GET_INFO ---------------------------------------------------------------

def test_device_info(pair):
    info = pair.ok(Command.DEVICE_GET_INFO, VfioDeviceInfo()).body
    assert info == VfioDeviceInfo(argsz=16, flags=3, num_regions=9, num_irqs=5)
    assert info.flags & 2, "QEMU requires VFIO_DEVICE_FLAGS_PCI"
    assert 8 <= info.num_regions <= 100 and 3 <= info.num_irqs <= 50


def test_device_info_reply_is_32_bytes(pair):
    req = message(Command.DEVICE_GET_INFO, VfioDeviceInfo().pack())
    [(hdr, payload)] = pair.raw(req)
    assert hdr.size == 32 == len(req)


@pytest.mark.parametrize("body", [VfioDeviceInfo(argsz=8), VfioDeviceInfo(flags=1)])
def test_device_info_bad_argsz_or_flags(pair, body):
    assert pair.error(Command.DEVICE_GET_INFO, body) == errno.EINVAL
    pair.still_serves()


# --- GET_REGION_INFO -------------------------------------------------------------

def test_plain_region(pair):
    reply = pair.ok(Command.DEVICE_GET_REGION_INFO, VfioRegionInfo(index=0))
    assert reply.fds == ()
    assert reply.body == RegionInfoReply(VfioRegionInfo(
        argsz=32, flags=VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE, index=0,
        size=4096))


def test_unimplemented_region_has_size_0(pair):
    info = pair.ok(Command.DEVICE_GET_REGION_INFO, VfioRegionInfo(index=8)).body.info
    assert (info.size, info.flags) == (0, 0)


def test_sparse_mmap_region_two_step_like_qemu(pair):
    # First ask with argsz 32: the reply says how much is needed, carries no fd.
    first = pair.ok(Command.DEVICE_GET_REGION_INFO, VfioRegionInfo(argsz=32, index=2))
    head = first.body.info
    needed = 32 + 8 + 8 + 16
    assert head.argsz == needed and first.fds == () and first.body.sparse_areas is None
    assert head.flags & VFIO_REGION_INFO_FLAG_CAPS
    assert 32 <= head.cap_offset <= head.argsz, "QEMU: cap_offset in the valid area"
    # Then with the full argsz: the chain and exactly one fd.
    second = pair.ok(Command.DEVICE_GET_REGION_INFO, VfioRegionInfo(argsz=needed, index=2))
    info = second.body.info
    assert info.flags == (VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE
                          | VFIO_REGION_INFO_FLAG_MMAP | VFIO_REGION_INFO_FLAG_CAPS)
    assert (info.size, info.offset, info.cap_offset) == (16384, 0, 32)
    assert second.body.sparse_areas == ((4096, 8192),)
    [fd] = second.fds
    assert os.fstat(fd).st_ino == os.fstat(pair.backend.bar2_fd).st_ino
    os.close(fd)
    # The backend keeps its fd: the server sends it, never closes it.
    assert is_open(pair.backend.bar2_fd)


def test_region_info_reply_never_exceeds_argsz(pair):
    for argsz in (32, 40, 63, 64, 200):
        req = message(Command.DEVICE_GET_REGION_INFO, VfioRegionInfo(argsz=argsz, index=2).pack())
        [(hdr, _)] = pair.raw(req)
        assert hdr.size <= 16 + argsz
        for fd in pair.reply_fds:
            os.close(fd)


def test_mmap_region_without_sparse_areas_is_mmap_flagged_with_fd():
    backend = FakeBackend()
    backend.region_info = lambda i: RegionInfo(flags=3, size=16384, fd=backend.bar2_fd)
    pair = Pair(backend)
    reply = pair.ok(Command.DEVICE_GET_REGION_INFO, VfioRegionInfo(index=2))
    assert reply.body.info.flags & VFIO_REGION_INFO_FLAG_MMAP
    assert not reply.body.info.flags & VFIO_REGION_INFO_FLAG_CAPS
    assert len(reply.fds) == 1
    os.close(reply.fds[0])
    pair.close()


@pytest.mark.parametrize("body,why", [
    (VfioRegionInfo(argsz=16, index=0), "argsz below the struct"),
    (VfioRegionInfo(flags=1, index=0), "flags must be zero"),
    (VfioRegionInfo(index=9), "index == num_regions"),
    (VfioRegionInfo(index=0xFFFFFFFF), "huge index"),
])
def test_bad_region_info_requests(pair, body, why):
    assert pair.error(Command.DEVICE_GET_REGION_INFO, body) == errno.EINVAL, why
    pair.still_serves()


def test_backend_bug_in_region_info_is_eio_not_a_crash():
    backend = FakeBackend()
    backend.region_info = lambda i: RegionInfo(flags=VFIO_REGION_INFO_FLAG_MMAP, size=4096)
    pair = Pair(backend)
    assert pair.error(Command.DEVICE_GET_REGION_INFO, VfioRegionInfo(index=0)) == errno.EIO
    pair.still_serves()
    pair.close()


# --- GET_REGION_IO_FDS ------------------------------------------------------------

def test_io_fds_none_offered(pair):
    reply = pair.ok(Command.DEVICE_GET_REGION_IO_FDS, VfioUserRegionIoFds(index=0))
    assert reply.body.info == VfioUserRegionIoFds(argsz=16, flags=0, index=0, count=0)
    assert reply.body.subregions == () and reply.fds == ()


@pytest.mark.parametrize("body", [
    VfioUserRegionIoFds(argsz=8, index=0), VfioUserRegionIoFds(flags=1, index=0),
    VfioUserRegionIoFds(index=9)])
def test_bad_io_fds_requests(pair, body):
    assert pair.error(Command.DEVICE_GET_REGION_IO_FDS, body) == errno.EINVAL


# --- GET_IRQ_INFO --------------------------------------------------------------------

def test_irq_info(pair):
    msix = pair.ok(Command.DEVICE_GET_IRQ_INFO, VfioIrqInfo(index=2)).body
    assert msix == VfioIrqInfo(argsz=16, flags=VFIO_IRQ_INFO_EVENTFD, index=2, count=4)
    intx = pair.ok(Command.DEVICE_GET_IRQ_INFO, VfioIrqInfo(index=0)).body
    assert intx.flags == VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_MASKABLE and intx.count == 1
    req = message(Command.DEVICE_GET_IRQ_INFO, VfioIrqInfo(index=3).pack())
    [(hdr, _)] = pair.raw(req)
    assert hdr.size == 32 == len(req)


@pytest.mark.parametrize("body", [
    VfioIrqInfo(argsz=15, index=0), VfioIrqInfo(flags=1, index=0), VfioIrqInfo(index=5)])
def test_bad_irq_info_requests(pair, body):
    assert pair.error(Command.DEVICE_GET_IRQ_INFO, body) == errno.EINVAL
    pair.still_serves()


def test_region_info_request_padded_to_argsz_like_libvfio_user(pair):
    # libvfio-user's client sends the second request with a payload of argsz
    # (64) bytes: accepted, answered per spec (the chain and the fd).
    needed = 32 + 8 + 8 + 16
    payload = VfioRegionInfo(argsz=needed, index=2).pack() + bytes(needed - 32)
    [(hdr, body)] = pair.raw(message(Command.DEVICE_GET_REGION_INFO, payload))
    assert hdr.flags == 1 and not hdr.error and hdr.size == 16 + needed
    reply = RegionInfoReply.decode(body)
    assert reply.sparse_areas == ((4096, 8192),) and reply.info.argsz == needed
    [fd] = pair.reply_fds
    os.close(fd)
    pair.still_serves()


def test_a_client_that_takes_no_fds_gets_region_info_without_one():
    # max_msg_fds 0 says the client receives no fds: the mmap-able region is
    # described as plain (no MMAP, no sparse areas) and no fd is sent.
    from vuser.protocol.caps import Capabilities
    pair = Pair(client_caps=Capabilities(max_msg_fds=0))
    reply = pair.ok(Command.DEVICE_GET_REGION_INFO, VfioRegionInfo(argsz=200, index=2))
    assert reply.fds == () and reply.body.sparse_areas is None
    assert not reply.body.info.flags & (VFIO_REGION_INFO_FLAG_MMAP | VFIO_REGION_INFO_FLAG_CAPS)
    assert reply.body.info.size == 16384
    pair.close()
