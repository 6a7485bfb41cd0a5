"""Issue 14 defect 1: a client that shrinks its DMA memfd must not kill the server.

``vuser serve`` runs as a real process, so that a SIGBUS would show as a dead
process here instead of killing pytest. Its devices sit behind the IOMMU model,
which takes only fds sealed against shrinking (a DmaSpace without the model
reaches other fds by pread/pwrite: tests/transport/test_dma_space.py).
"""

import asyncio
import errno
import os
import signal
import struct
import subprocess
import sys

import pytest

from vuser.transport.client import Client, VfioUserError
from vuser.memory.seals import sealed_memfd

MiB = 1 << 20
TIMEOUT = 20


def serve(*devices):
    args = [a for d in devices for a in ("--device", d)]
    proc = subprocess.Popen([sys.executable, "-m", "vuser", "serve", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for _ in devices:
        line = proc.stdout.readline()
        assert "ready on" in line, f"vuser serve exited: {proc.stderr.read()}"
    return proc


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    try:
        assert proc.wait(TIMEOUT) == 0, proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()


async def reg(c, off):
    return struct.unpack("<I", await c.region_read(0, off, 4))[0]


async def set_reg(c, off, value):
    await c.region_write(0, off, struct.pack("<I", value))


async def sample_dma(c, addr, n):
    from vuser.devices.sample import SampleReg as R
    await set_reg(c, R.DMA_ADDR_LO, addr & 0xFFFF_FFFF)
    await set_reg(c, R.DMA_ADDR_HI, addr >> 32)
    await set_reg(c, R.DMA_LEN, n)
    await set_reg(c, R.DMA_SEED, 7)
    await set_reg(c, R.DOORBELL, 1)
    for _ in range(200):
        status = await reg(c, R.STATUS)
        if status & 0b10:  # DONE
            return status
        await asyncio.sleep(0.01)
    raise AssertionError("the DMA never completed")


def test_shrinking_a_mapped_memfd_does_not_kill_the_server(tmp_path):
    # vuser serve puts every device behind the IOMMU model: an unsealed fd is
    # refused at DMA_MAP, and a sealed one cannot shrink.
    pytest.importorskip("vuser.devices.sample", reason="needs the sample device")
    a, b = str(tmp_path / "a.sock"), str(tmp_path / "b.sock")
    proc = serve(f"sample@{a}", f"vuser-dma@{b}")
    fd = os.memfd_create("hostile")          # unsealed: the client can shrink it
    os.ftruncate(fd, 4 * MiB)
    sealed = sealed_memfd("sealed", 4 * MiB)
    try:
        async def attack():
            async with await Client.connect(a) as c, await Client.connect(b) as other:
                for client in (c, other):
                    with pytest.raises(VfioUserError) as e:
                        await client.dma_map(0x1_0000_0000, 4 * MiB, fd=fd)
                    assert e.value.errno == errno.EINVAL
                await c.dma_map(0x1_0000_0000, 4 * MiB, fd=sealed)
                os.ftruncate(fd, MiB)
                with pytest.raises(PermissionError):
                    os.ftruncate(sealed, MiB)
                assert await sample_dma(c, 0x1_0000_0000 + 3 * MiB, 4096) == 0b10  # DONE
                assert os.pread(sealed, 4, 3 * MiB) != bytes(4)
                assert (await other.device_info()).num_regions == 9
        asyncio.run(attack())
        assert proc.poll() is None
    finally:
        os.close(fd)
        os.close(sealed)
        stop(proc)
    assert not os.path.exists(a) and not os.path.exists(b)
