"""DmaSpace: the DMA_MAP table behind device DMA, and its one translate step."""

import errno
import fcntl
import os

import pytest

from vuser.errors import RemoteProtocolError
from vuser.backend import DmaError
from vuser.transport.dma import DmaSpace
from vuser.memory.seals import sealed_memfd, shrink_sealed
from fdhelp import fd_is_open

MiB = 1 << 20
R, W, RW = 1, 2, 3


class RecordingMessages:
    """A MessageDma that serves a dict of bytearrays and records every call."""

    def __init__(self, base: int, size: int) -> None:
        self.base, self.mem, self.calls = base, bytearray(size), []

    async def dma_read_message(self, addr, n):
        self.calls.append(("read", addr, n))
        return bytes(self.mem[addr - self.base:addr - self.base + n])

    async def dma_write_message(self, addr, data):
        self.calls.append(("write", addr, len(data)))
        self.mem[addr - self.base:addr - self.base + len(data)] = data


@pytest.fixture
def memfd():
    fd = sealed_memfd("guest", 4 * MiB)
    yield fd
    os.close(fd)


def mapped(space, addr, size, flags, fd, offset=0):
    space.map(addr, size, flags, None if fd is None else os.dup(fd), offset)


async def test_write_and_read_through_the_mmap(memfd):
    space = DmaSpace()
    mapped(space, 0x10000, MiB, RW, memfd, offset=2 * MiB)
    await space.dma_write(0x10000 + 0x123, b"through the mmap")
    assert os.pread(memfd, 16, 2 * MiB + 0x123) == b"through the mmap"
    os.pwrite(memfd, b"from the guest", 2 * MiB + 0x400)
    assert await space.dma_read(0x10400, 14) == b"from the guest"
    space.close()


async def test_an_access_spanning_adjacent_mappings(memfd):
    space = DmaSpace()
    mapped(space, 0x1000, 0x1000, RW, memfd, offset=0x10000)
    mapped(space, 0x2000, 0x1000, RW, memfd, offset=0x50000)
    segs = space.translate(0x1ff0, 0x20, write=True)
    assert [(s.addr, s.length) for s in segs] == [(0x1ff0, 0x10), (0x2000, 0x10)]
    await space.dma_write(0x1ff0, bytes(range(0x20)))
    assert os.pread(memfd, 0x10, 0x10ff0) == bytes(range(0x10))
    assert os.pread(memfd, 0x10, 0x50000) == bytes(range(0x10, 0x20))
    space.close()


async def test_unmapped_bytes_are_efault_and_nothing_is_written(memfd):
    space = DmaSpace()
    mapped(space, 0x1000, 0x1000, RW, memfd)
    mapped(space, 0x3000, 0x1000, RW, memfd, offset=0x1000)
    for addr, n in [(0x0, 4), (0x1ffe, 4), (0x2000, 1), (0x1000, 0x3000), ((1 << 64) - 2, 4)]:
        with pytest.raises(DmaError) as e:
            await space.dma_write(addr, b"\xff" * n)
        assert e.value.errno == errno.EFAULT and e.value.addr == addr
    assert os.pread(memfd, 0x2000, 0) == bytes(0x2000), "a failed DMA wrote something"
    space.close()


async def test_permissions_are_eperm(memfd):
    space = DmaSpace()
    mapped(space, 0x1000, 0x1000, R, memfd)
    mapped(space, 0x2000, 0x1000, W, memfd, offset=0x1000)
    with pytest.raises(DmaError) as e:
        await space.dma_write(0x1000, b"x")
    assert e.value.errno == errno.EPERM
    with pytest.raises(DmaError) as e:
        await space.dma_read(0x2000, 1)
    assert e.value.errno == errno.EPERM
    assert await space.dma_read(0x1000, 1) == b"\0"
    await space.dma_write(0x2000, b"w")
    space.close()


async def test_mappings_without_fd_go_through_messages_in_order(memfd):
    messages = RecordingMessages(0x2000, 0x1000)
    space = DmaSpace(messages)
    mapped(space, 0x1000, 0x1000, RW, memfd)
    space.map(0x2000, 0x1000, RW, None, 0)
    data = bytes(range(256)) * 32
    await space.dma_write(0x1800, data[:0x1000])
    assert os.pread(memfd, 0x800, 0x800) == data[:0x800]
    assert messages.mem[:0x800] == data[0x800:0x1000]
    assert messages.calls == [("write", 0x2000, 0x800)]
    assert await space.dma_read(0x1800, 0x1000) == data[:0x1000]
    assert messages.calls[-1] == ("read", 0x2000, 0x800)
    space.close()


async def test_no_message_port_is_efault():
    space = DmaSpace()
    space.map(0x2000, 0x1000, RW, None, 0)
    with pytest.raises(DmaError) as e:
        await space.dma_read(0x2000, 4)
    assert e.value.errno == errno.EFAULT


async def test_closed_space_is_enotconn(memfd):
    space = DmaSpace()
    mapped(space, 0x1000, 0x1000, RW, memfd)
    space.close()
    with pytest.raises(DmaError) as e:
        await space.dma_read(0x1000, 1)
    assert e.value.errno == errno.ENOTCONN
    with pytest.raises(RemoteProtocolError):
        mapped(space, 0x1000, 0x1000, RW, memfd)


def test_mmaps_are_released_with_the_last_mapping(memfd):
    def maps_of_memfd():
        with open("/proc/self/maps") as f:
            return sum("memfd:guest" in line for line in f)

    space = DmaSpace()
    before_fds = set(os.listdir("/proc/self/fd"))
    mapped(space, 0x1000, 0x1000, RW, memfd)
    mapped(space, 0x2000, 0x1000, RW, memfd, offset=0x1000)
    assert maps_of_memfd() == 1
    space.unmap(0x1000, 0x1000)
    assert maps_of_memfd() == 1
    space.unmap(0x2000, 0x1000)
    assert maps_of_memfd() == 0
    assert set(os.listdir("/proc/self/fd")) == before_fds


async def test_a_file_that_grew_is_mapped_again():
    memfd = sealed_memfd("growable", 4 * MiB, add=fcntl.F_SEAL_SHRINK)
    space = DmaSpace()
    mapped(space, 0, 0x1000, RW, memfd)
    os.ftruncate(memfd, 8 * MiB)
    mapped(space, 0x800000, MiB, RW, memfd, offset=7 * MiB)
    await space.dma_write(0x800000, b"grown")
    assert os.pread(memfd, 5, 7 * MiB) == b"grown"
    space.close()
    os.close(memfd)


async def test_non_regular_fd_at_an_unaligned_offset_goes_through_file_io():
    # Not a sealed file: pread/pwrite at the file offset (/dev/zero reads zeros).
    fd = os.open("/dev/zero", os.O_RDWR)
    space = DmaSpace()
    space.map(0x5000, 0x2000, RW, fd, 0x1234)
    await space.dma_write(0x5000, b"discarded")
    assert await space.dma_read(0x5000, 16) == bytes(16)
    space.close()


def test_an_fd_that_is_no_memory_is_refused():
    r, w = os.pipe()
    space = DmaSpace()
    with pytest.raises(RemoteProtocolError) as e:
        space.map(0, 0x1000, R, r, 0)
    assert e.value.errno == errno.EINVAL
    assert not fd_is_open(r)
    os.close(w)
    space.close()


# --- issue 14 defect 1: a client that shrinks its DMA file -------------------

async def test_shrunk_unsealed_file_fails_efault_instead_of_sigbus():
    # An unsealed memfd is reached with pread/pwrite: after the client shrinks
    # it, DMA past the new end is EFAULT (an mmap would have raised SIGBUS and
    # killed the process, taking every device with it).
    fd = os.memfd_create("shrinkable")
    os.ftruncate(fd, 4 * MiB)
    assert not shrink_sealed(fd)
    space = DmaSpace()
    mapped(space, 0x10000000, 4 * MiB, RW, fd)
    await space.dma_write(0x10000000 + 3 * MiB, b"before")
    assert os.pread(fd, 6, 3 * MiB) == b"before"
    os.ftruncate(fd, MiB)
    for op in (space.dma_read(0x10000000 + 3 * MiB, 6),
               space.dma_write(0x10000000 + 3 * MiB, b"after")):
        with pytest.raises(DmaError) as e:
            await op
        assert e.value.errno == errno.EFAULT
    assert os.fstat(fd).st_size == MiB  # the write did not grow the file back
    await space.dma_write(0x10000000, b"still")  # what is left still works
    assert await space.dma_read(0x10000000, 5) == b"still"
    space.close()
    os.close(fd)


async def test_sealed_file_is_mmapped_and_cannot_shrink(memfd):
    assert shrink_sealed(memfd)
    space = DmaSpace()
    mapped(space, 0, MiB, RW, memfd)
    [m] = space.mappings
    assert m.file.mm is not None and m.file.fd is None
    with pytest.raises(OSError):
        os.ftruncate(memfd, 4096)
    space.close()


def test_read_only_unsealed_fd_cannot_back_a_writable_map(tmp_path):
    path = tmp_path / "ro"
    path.write_bytes(bytes(8192))
    space = DmaSpace()
    with pytest.raises(RemoteProtocolError) as e:
        space.map(0, 4096, RW, os.open(path, os.O_RDONLY), 0)
    assert e.value.errno == errno.EACCES
    space.map(0, 4096, R, os.open(path, os.O_RDONLY), 0)
    space.close()


class _Sink:
    def __init__(self):
        self.calls = []

    def map(self, *a, **kw):
        self.calls.append((a, kw))

    def unmap(self, *a):
        pass

    def close(self):
        pass


def test_a_sink_gets_only_shrink_sealed_fds(memfd):
    # The IOMMU model hands out views of its mmap: an unsealed fd is refused.
    sink = _Sink()
    space = DmaSpace(sink=sink)
    fd = os.memfd_create("unsealed")
    os.ftruncate(fd, MiB)
    with pytest.raises(RemoteProtocolError) as e:
        space.map(0, MiB, RW, os.dup(fd), 0)
    assert e.value.errno == errno.EINVAL and "F_SEAL_SHRINK" in e.value.msg
    assert sink.calls == [] and space.mappings == ()
    space.map(0, MiB, RW, os.dup(memfd), 0)
    assert len(sink.calls) == 1
    space.close()
    os.close(fd)


def test_a_sink_gets_plain_permissions_not_wire_flags(memfd):
    # The flags word is vfio-user's; the device layer gets read/write decoded from it.
    sink = _Sink()
    space = DmaSpace(sink=sink)
    space.map(0, MiB, R, os.dup(memfd), 0)
    space.map(MiB, MiB, RW, os.dup(memfd), MiB)
    assert [kw for _, kw in sink.calls] == [{"readable": True, "writable": False},
                                            {"readable": True, "writable": True}]
    assert [(a[0], a[1], a[3]) for a, _ in sink.calls] == [(0, MiB, 0), (MiB, MiB, MiB)]
    space.close()
