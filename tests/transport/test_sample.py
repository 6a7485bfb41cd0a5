"""The `sample` device (docs/sample-device.md) end to end over a real socket:
it DMAs into a memfd the client mapped and raises MSI-X through an eventfd."""

import asyncio
import os
import struct

import pytest

from vuser.backend import VFIO_REGION_INFO_FLAG_MMAP
from vuser.transport.client import Client
from vuser.transport.server import DeviceServer
from vuser.memory.seals import sealed_memfd

sample = pytest.importorskip(
    "vuser.devices.sample", reason="needs the sample device (vuser/devices/sample.py)")

MiB = 1 << 20
TIMEOUT = 10
STATUS_DONE, STATUS_ERROR = 1 << 1, 1 << 2
R = sample.SampleReg


@pytest.fixture
async def sample_served(tmp_path):
    device = sample.SampleDevice(label="7")
    path = str(tmp_path / "sample.sock")
    server = DeviceServer(device, path, name="sample")
    await server.start()
    yield device, path
    await server.close()
    device.close()


async def wait_readable(fd: int) -> int:
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    loop.add_reader(fd, lambda: fut.done() or fut.set_result(None))
    try:
        await asyncio.wait_for(fut, TIMEOUT)
    finally:
        loop.remove_reader(fd)
    return os.eventfd_read(fd)


async def reg(c: Client, off: int) -> int:
    return struct.unpack("<I", await c.region_read(0, off, 4))[0]


async def set_reg(c: Client, off: int, value: int) -> None:
    await c.region_write(0, off, struct.pack("<I", value))


async def program_dma(c: Client, addr: int, length: int, seed: int, vector: int) -> None:
    await set_reg(c, R.DMA_ADDR_LO, addr & 0xFFFF_FFFF)
    await set_reg(c, R.DMA_ADDR_HI, addr >> 32)
    await set_reg(c, R.DMA_LEN, length)
    await set_reg(c, R.DMA_SEED, seed)
    await set_reg(c, R.IRQ_VECTOR, vector)
    await set_reg(c, R.DOORBELL, 1)


async def test_sample_dma_into_memfd_and_msix(sample_served):
    device, path = sample_served
    memfd = sealed_memfd("guest-ram", 4 * MiB)
    efds = [os.eventfd(0) for _ in range(4)]
    async with await Client.connect(path) as c:
        config = await c.region_read(7, 0, 4)
        assert struct.unpack("<HH", config) == (0x5655, 0x0001)
        assert await reg(c, R.ID) == 0x56550001
        bar2 = await c.region_info(2)
        assert bar2.flags & VFIO_REGION_INFO_FLAG_MMAP and bar2.fd is not None
        os.close(bar2.fd)
        await c.dma_map(0x1_0000_0000, 4 * MiB, fd=memfd)
        await c.set_irq_eventfds(2, efds)
        await program_dma(c, 0x1_0000_0000 + 0x2000, 4096, seed=0x40, vector=2)
        assert await wait_readable(efds[2]) == 1
        assert os.pread(memfd, 4096, 0x2000) == sample.pattern(0x40, 4096)
        assert await reg(c, R.STATUS) == STATUS_DONE
        assert await reg(c, R.COMPLETIONS) == 1
    for fd in efds + [memfd]:
        os.close(fd)


async def test_sample_dma_without_fd_goes_by_messages(sample_served):
    device, path = sample_served
    buf = bytearray(8192)
    efd = os.eventfd(0)
    async with await Client.connect(path) as c:
        await c.dma_map(0x8000_0000, buffer=buf)
        await c.set_irq_eventfds(2, [efd])
        await program_dma(c, 0x8000_0000 + 100, 5000, seed=1, vector=0)
        assert await wait_readable(efd) == 1
        assert bytes(buf[100:5100]) == sample.pattern(1, 5000)
        assert c.dma_requests_served >= 1
    os.close(efd)


async def test_sample_dma_to_unmapped_memory_sets_error(sample_served):
    device, path = sample_served
    efd = os.eventfd(0)
    async with await Client.connect(path) as c:
        await c.set_irq_eventfds(2, [efd])
        await program_dma(c, 0xdead_b000, 64, seed=0, vector=0)
        assert await wait_readable(efd) == 1
        assert await reg(c, R.STATUS) == STATUS_DONE | STATUS_ERROR
    os.close(efd)
