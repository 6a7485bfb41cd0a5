"""DmaSpace: the DMA_MAP table behind device DMA, and its one translate step."""

import errno
import os

import pytest

from vuser.errors import RemoteProtocolError
from vuser.protocol.backend import DmaError
from vuser.transport.dma import DmaSpace

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
    fd = os.memfd_create("guest")
    os.ftruncate(fd, 4 * MiB)
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


async def test_a_file_that_grew_is_mapped_again(memfd):
    space = DmaSpace()
    mapped(space, 0, 0x1000, RW, memfd)
    os.ftruncate(memfd, 8 * MiB)
    mapped(space, 0x800000, MiB, RW, memfd, offset=7 * MiB)
    await space.dma_write(0x800000, b"grown")
    assert os.pread(memfd, 5, 7 * MiB) == b"grown"
    space.close()


async def test_non_regular_fd_at_an_unaligned_offset():
    fd = os.open("/dev/zero", os.O_RDWR)
    space = DmaSpace()
    space.map(0x5000, 0x2000, RW, fd, 0x1234)
    await space.dma_write(0x5000, b"shared zero page")
    assert await space.dma_read(0x5000, 16) == b"shared zero page"
    space.close()
