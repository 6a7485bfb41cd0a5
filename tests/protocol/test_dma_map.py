"""DMA_MAP and DMA_UNMAP through a client/server pair (libvfio-user test_dma_map,
test_dma_unmap in spirit): the table, its errnos, and the fds it consumes."""

import errno
import os

import pytest

from proto_helpers import Pair, is_open, message
from vuser.protocol.caps import Capabilities
from vuser.protocol.consts import VFIO_DMA_UNMAP_FLAG_ALL, Command
from vuser.protocol.events import Reply
from vuser.protocol.messages import VfioUserDmaMap, VfioUserDmaUnmap
from vuser.memory.seals import sealed_memfd

MiB = 1 << 20


@pytest.fixture
def pair():
    p = Pair()
    yield p
    p.close()


@pytest.fixture
def memfd():
    fd = sealed_memfd("guest-ram", 4 * MiB)
    yield fd
    os.close(fd)


def dma_map(addr, size, flags=3, offset=0, argsz=32):
    return VfioUserDmaMap(argsz=argsz, flags=flags, offset=offset, addr=addr, size=size)


def test_map_with_fd_then_unmap(pair, memfd):
    reply = pair.ok(Command.DMA_MAP, dma_map(0x100000, MiB, offset=MiB), [memfd])
    assert reply.body is None and reply.fds == ()
    server_copy = pair.server_fds[0]
    assert not is_open(server_copy)   # the mmap holds the file, not the fd
    [m] = pair.dma.mappings
    assert (m.addr, m.size, m.offset, m.flags) == (0x100000, MiB, MiB, 3)
    os.pwrite(memfd, b"guest", MiB + 0x10)
    assert m.file.mm[MiB + 0x10:MiB + 0x15] == b"guest"
    echo = pair.ok(Command.DMA_UNMAP, VfioUserDmaUnmap(addr=0x100000, size=MiB)).body
    assert echo == VfioUserDmaUnmap(addr=0x100000, size=MiB)
    assert pair.dma.mappings == ()
    pair.still_serves()


def test_map_without_fd_is_reached_by_messages(pair):
    pair.ok(Command.DMA_MAP, dma_map(0xC0000, 0x20000))
    [m] = pair.dma.mappings
    assert m.file is None


def test_overlapping_map_is_eexist(pair, memfd):
    pair.ok(Command.DMA_MAP, dma_map(0x100000, MiB), [memfd])
    for addr, size in [(0x100000, 0x1000), (0x80000, 0x81000), (0x1FF000, 0x2000),
                       (0, 4 * MiB)]:
        assert pair.error(Command.DMA_MAP, dma_map(addr, size), [memfd]) == errno.EEXIST
        assert not is_open(pair.server_fds[0]), "the rejected map's fd must be closed"
    assert len(pair.dma.mappings) == 1
    # Adjacent is fine.
    pair.ok(Command.DMA_MAP, dma_map(0x200000, 0x1000), [memfd])
    pair.ok(Command.DMA_MAP, dma_map(0xFF000, 0x1000), [memfd])
    assert len(pair.dma.mappings) == 3
    pair.still_serves()


def test_identical_remap_is_accepted(pair, memfd):
    pair.ok(Command.DMA_MAP, dma_map(0x100000, MiB), [memfd])
    pair.ok(Command.DMA_MAP, dma_map(0x100000, MiB), [memfd])
    assert len(pair.dma.mappings) == 1
    # Same range but another offset or flags is an overlap.
    assert pair.error(Command.DMA_MAP, dma_map(0x100000, MiB, offset=4096), [memfd]) \
        == errno.EEXIST
    assert pair.error(Command.DMA_MAP, dma_map(0x100000, MiB, flags=1), [memfd]) \
        == errno.EEXIST


def test_unmap_of_nothing_mapped_is_enoent(pair, memfd):
    pair.ok(Command.DMA_MAP, dma_map(0x100000, MiB), [memfd])
    for addr, size in [(0x300000, MiB), (0x0, 0x100000), (0x200000, 0x1000)]:
        assert pair.error(Command.DMA_UNMAP, VfioUserDmaUnmap(addr=addr, size=size)) \
            == errno.ENOENT
    assert len(pair.dma.mappings) == 1
    pair.ok(Command.DMA_UNMAP, VfioUserDmaUnmap(addr=0x100000, size=MiB))
    assert pair.error(Command.DMA_UNMAP, VfioUserDmaUnmap(addr=0x100000, size=MiB)) \
        == errno.ENOENT
    pair.still_serves()


def test_unmap_follows_qemu_ranges_and_splits(pair, memfd):
    """QEMU's unmaps need not match its maps: the straddled parts survive."""
    pair.ok(Command.DMA_MAP, dma_map(0x100000, MiB, offset=0), [memfd])
    pair.ok(Command.DMA_MAP, dma_map(0x200000, MiB, offset=MiB), [memfd])
    # a hole in the middle of the first map
    pair.ok(Command.DMA_UNMAP, VfioUserDmaUnmap(addr=0x101000, size=0x1000))
    # a range across the end of the first and the start of the second
    pair.ok(Command.DMA_UNMAP, VfioUserDmaUnmap(addr=0x1ff000, size=0x2000))
    spans = [(m.addr, m.size, m.offset) for m in pair.dma.mappings]
    assert spans == [(0x100000, 0x1000, 0), (0x102000, 0xfd000, 0x2000),
                     (0x201000, MiB - 0x1000, MiB + 0x1000)]
    # the pieces still reach the right file offsets
    os.pwrite(memfd, b"tail", MiB + 0x1000)
    seg = pair.dma.translate(0x201000, 4, write=False)[0]
    assert (seg.mapping.offset, seg.addr) == (MiB + 0x1000, 0x201000)
    assert pair.error(Command.DMA_UNMAP, VfioUserDmaUnmap(addr=0x101000, size=0x1000)) \
        == errno.ENOENT
    pair.still_serves()


def test_unmap_all(pair, memfd):
    for i in range(3):
        pair.ok(Command.DMA_MAP, dma_map(i * MiB, MiB), [memfd])
    pair.ok(Command.DMA_MAP, dma_map(8 * MiB, MiB))
    pair.ok(Command.DMA_UNMAP, VfioUserDmaUnmap(flags=VFIO_DMA_UNMAP_FLAG_ALL))
    assert pair.dma.mappings == ()
    assert pair.error(Command.DMA_UNMAP, VfioUserDmaUnmap(
        flags=VFIO_DMA_UNMAP_FLAG_ALL, addr=0x1000, size=0)) == errno.EINVAL


@pytest.mark.parametrize("body,why", [
    (dma_map(0x1000, 0x1000, argsz=24), "argsz below the struct"),
    (dma_map(0x1000, 0x1000, flags=0), "neither read nor write"),
    (dma_map(0x1000, 0x1000, flags=1 << 2), "unknown flag (libvfio-user's MMAP)"),
    (dma_map(0x1000, 0x1000, flags=3 | 1 << 31), "unknown high flag"),
    (dma_map(0x1000, 0), "size 0"),
    (dma_map((1 << 64) - 0x1000, 0x2000), "wraps past 2^64"),
])
def test_bad_map_requests_are_einval(pair, memfd, body, why):
    assert pair.error(Command.DMA_MAP, body, [memfd]) == errno.EINVAL, why
    assert not is_open(pair.server_fds[0])
    assert pair.dma.mappings == ()
    pair.still_serves()


@pytest.mark.parametrize("body,why", [
    (VfioUserDmaUnmap(argsz=16, addr=0, size=4096), "argsz below the struct"),
    (VfioUserDmaUnmap(flags=1, addr=0, size=4096), "GET_DIRTY_BITMAP unsupported"),
    (VfioUserDmaUnmap(flags=4, addr=0, size=4096), "unknown flag"),
])
def test_bad_unmap_requests_are_einval(pair, body, why):
    assert pair.error(Command.DMA_UNMAP, body) == errno.EINVAL, why


def test_map_beyond_the_file_is_einval(pair, memfd):
    assert pair.error(Command.DMA_MAP, dma_map(0, MiB, offset=3 * MiB + 4096), [memfd]) \
        == errno.EINVAL
    assert not is_open(pair.server_fds[0])


def test_map_of_an_unmappable_fd_fails_and_closes_it(pair):
    efd = os.eventfd(0)
    err = pair.error(Command.DMA_MAP, dma_map(0, 4096), [efd])
    assert err in (errno.ENODEV, errno.EINVAL, errno.EACCES)
    assert not is_open(pair.server_fds[0])
    os.close(efd)


def test_read_only_fd_cannot_back_a_writable_map(pair, tmp_path):
    path = tmp_path / "ro"
    path.write_bytes(bytes(8192))
    fd = os.open(path, os.O_RDONLY)
    assert pair.error(Command.DMA_MAP, dma_map(0, 4096, flags=3), [fd]) == errno.EACCES
    pair.ok(Command.DMA_MAP, dma_map(0, 4096, flags=1), [fd])
    os.close(fd)


def test_two_fds_with_a_map_are_einval_and_closed(pair, memfd):
    other = os.dup(memfd)
    # Our own client refuses to send this; a raw message gets through.
    raw = message(Command.DMA_MAP, dma_map(0, 4096).pack())
    assert pair.raw_error(raw, [memfd, other]) == errno.EINVAL
    assert not any(is_open(fd) for fd in pair.server_fds)
    assert pair.dma.mappings == ()
    os.close(other)
    pair.still_serves()


def test_max_dma_maps_is_enospc():
    pair = Pair(server_caps=Capabilities(max_dma_maps=2))
    pair.ok(Command.DMA_MAP, dma_map(0, 4096))
    pair.ok(Command.DMA_MAP, dma_map(4096, 4096))
    assert pair.error(Command.DMA_MAP, dma_map(8192, 4096)) == errno.ENOSPC
    pair.close()


def test_many_maps_of_one_file_share_one_mmap_and_hold_no_fds(pair, memfd):
    before = set(os.listdir("/proc/self/fd"))
    for i in range(256):
        pair.ok(Command.DMA_MAP, dma_map(i * 4096, 4096, offset=i * 4096), [memfd])
    files = {id(m.file) for m in pair.dma.mappings}
    assert len(files) == 1
    # One fd at most: the mmap object's own reference to the file.
    assert len(set(os.listdir("/proc/self/fd")) - before) <= 1
    pair.ok(Command.DMA_UNMAP, VfioUserDmaUnmap(flags=VFIO_DMA_UNMAP_FLAG_ALL))
    assert set(os.listdir("/proc/self/fd")) - before == set()


def test_map_reply_fits_qemus_buffer(pair, memfd):
    req = message(Command.DMA_MAP, dma_map(0, 4096).pack(), msg_id=3)
    [(hdr, payload)] = pair.raw(req, [memfd])
    assert hdr.size == 16 and hdr.size <= len(req)
    [(hdr, payload)] = pair.raw(message(Command.DMA_UNMAP,
                                        VfioUserDmaUnmap(addr=0, size=4096).pack()))
    assert hdr.size == 40  # the echo of the 24-byte request: QEMU accepts <= 40
    assert isinstance(pair.call(Command.DMA_MAP, dma_map(0, 4096)), Reply)


def test_argsz_and_payload_above_the_struct_are_accepted(pair, memfd):
    # libvfio-user's practice (docs/vfio-user-acceptance.md): argsz >= 32, a
    # longer payload's tail is ignored.
    raw = message(Command.DMA_MAP, dma_map(0x1000, 0x1000, argsz=48).pack() + bytes(16))
    [(hdr, _)] = pair.raw(raw, [memfd])
    assert hdr.flags == 1 and not hdr.error
    assert [(m.addr, m.size) for m in pair.dma.mappings] == [(0x1000, 0x1000)]
