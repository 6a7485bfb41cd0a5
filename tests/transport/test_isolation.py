"""Issue 14 defects 4 and 5: the device socket's mode, and clients that hold it.

A client that never says VERSION, sends one byte at a time, announces a huge
message and stalls, or (with ``idle`` set) goes quiet, is dropped after the
configured timeout with one log line; meanwhile another device in the same
process answers, and afterwards a new client gets a clean device.
"""

import asyncio
import logging
import os
import stat

import pytest

from proto_helpers import FakeBackend, message
from vuser.protocol.consts import Command
from vuser.protocol.messages import Header, Version, VfioDeviceInfo
from vuser.transport.channel import Timeouts
from vuser.transport.client import Client
from vuser.transport.server import DeviceServer

SHORT = 0.3          # the timeouts under test (seconds)
TIMEOUT = 10         # how long a test waits for anything at all


@pytest.fixture
async def two(tmp_path):
    """Two devices in this process with short timeouts: ``(servers, backends)``."""
    backends = [FakeBackend(), FakeBackend()]
    servers = [DeviceServer(b, str(tmp_path / f"d{i}.sock"), name=f"dev{i}",
                            timeouts=Timeouts(handshake=SHORT, message=SHORT, idle=None))
               for i, b in enumerate(backends)]
    for s in servers:
        await s.start()
    yield servers, backends
    for s in servers:
        await s.close()
    for b in backends:
        b.close()


async def raw(path):
    reader, writer = await asyncio.open_unix_connection(path)
    return reader, writer


async def negotiated_raw(path):
    reader, writer = await raw(path)
    writer.write(message(Command.VERSION, Version().encode(), msg_id=1))
    hdr = Header.unpack(await asyncio.wait_for(reader.readexactly(16), TIMEOUT))
    await reader.readexactly(hdr.size - 16)
    return reader, writer


async def dropped(server, reader, caplog, why):
    """The server closes on the client, logs ``why`` once, and accepts again."""
    await asyncio.wait_for(reader.read(), TIMEOUT)   # returns only at EOF: the server hung up
    await asyncio.wait_for(server.wait_idle(), TIMEOUT)
    lines = [r.getMessage() for r in caplog.records
             if r.levelno == logging.WARNING and "dropping the client" in r.getMessage()]
    assert len(lines) == 1 and why in lines[0], lines


async def other_device_answers(path, rounds=20):
    async with await Client.connect(path) as c:
        for _ in range(rounds):
            assert (await c.device_info()).num_regions >= 1


@pytest.mark.parametrize("umask", [0o022, 0o000])
async def test_device_socket_is_0600_whatever_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        server = DeviceServer(FakeBackend(), str(tmp_path / "m.sock"))
        await server.start()
    finally:
        os.umask(old)
    st = os.stat(server.path)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    await server.close()
    server.backend.close()


async def test_a_client_that_never_says_version_is_dropped(two, caplog):
    (a, b), _ = two
    reader, writer = await raw(a.path)
    await other_device_answers(b.path)
    await dropped(a, reader, caplog, "no VERSION")
    writer.close()
    async with await Client.connect(a.path) as c:   # a clean device for the next one
        assert (await c.device_info()).num_regions >= 1


async def test_one_byte_at_a_time_is_dropped_and_never_delays_another_device(two, caplog):
    (a, b), _ = two
    reader, writer = await negotiated_raw(a.path)
    request = message(Command.DEVICE_GET_INFO, VfioDeviceInfo().pack(), msg_id=2)

    async def trickle():
        for byte in request[:-1]:        # never the last byte
            if writer.is_closing():
                return
            writer.write(bytes([byte]))
            await asyncio.sleep(SHORT / 10)
    task = asyncio.create_task(trickle())
    await other_device_answers(b.path, rounds=50)   # served while ``a`` is held
    await dropped(a, reader, caplog, "a message left incomplete")
    task.cancel()
    writer.close()
    async with await Client.connect(a.path) as c:
        assert (await c.device_info()).num_regions >= 1


async def test_a_4_gib_header_that_stalls_is_dropped(two, caplog):
    (a, b), _ = two
    reader, writer = await negotiated_raw(a.path)
    writer.write(Header(msg_id=3, command=Command.REGION_WRITE, size=0xFFFF_FFFF).pack()
                 + bytes(100))
    hdr = Header.unpack(await asyncio.wait_for(reader.readexactly(16), TIMEOUT))
    assert hdr.msg_id == 3 and hdr.error  # answered E2BIG at the header...
    await other_device_answers(b.path)
    await dropped(a, reader, caplog, "a message left incomplete")  # ...then dropped
    writer.close()


async def test_idle_timeout_is_off_by_default_and_configurable(tmp_path, caplog):
    quiet = DeviceServer(FakeBackend(), str(tmp_path / "q.sock"),
                         timeouts=Timeouts(handshake=SHORT, message=SHORT))
    strict = DeviceServer(FakeBackend(), str(tmp_path / "s.sock"), name="strict",
                          timeouts=Timeouts(handshake=SHORT, message=SHORT, idle=SHORT))
    for s in (quiet, strict):
        await s.start()
    try:
        r1, w1 = await negotiated_raw(quiet.path)
        r2, w2 = await negotiated_raw(strict.path)
        await dropped(strict, r2, caplog, "idle")
        assert quiet.session is not None       # QEMU may stay silent for hours
        w1.write(message(Command.DEVICE_GET_INFO, VfioDeviceInfo().pack(), msg_id=9))
        hdr = Header.unpack(await asyncio.wait_for(r1.readexactly(16), TIMEOUT))
        assert hdr.msg_id == 9 and not hdr.error
        w1.close()
        w2.close()
    finally:
        for s in (quiet, strict):
            await s.close()
            s.backend.close()


async def test_a_client_that_never_answers_dma_read_fails_that_dma(tmp_path):
    # A DMA_READ to a client that never replies fails ETIMEDOUT; the device goes on.
    import errno

    from vuser.backend import DmaError
    backend = FakeBackend()
    server = DeviceServer(backend, str(tmp_path / "r.sock"),
                          timeouts=Timeouts(handshake=SHORT, message=SHORT))
    await server.start()
    try:
        reader, writer = await negotiated_raw(server.path)
        from vuser.protocol.messages import VfioUserDmaMap
        writer.write(message(Command.DMA_MAP, VfioUserDmaMap(flags=3, addr=0x1000,
                                                             size=0x1000).pack(), msg_id=4))
        hdr = Header.unpack(await asyncio.wait_for(reader.readexactly(16), TIMEOUT))
        assert hdr.msg_id == 4 and not hdr.error
        with pytest.raises(DmaError) as e:
            await server.session.dma.dma_read(0x1000, 8)   # we never answer it
        assert e.value.errno == errno.ETIMEDOUT
        writer.close()
    finally:
        await server.close()
        backend.close()


async def test_a_negotiated_quiet_client_leaves_no_timer_and_is_still_dropped_when_it_stalls(
        two, caplog):
    """Once VERSION is in and nothing is pending, no deadline applies: the
    handshake timer is dropped (the event loop would read the clock for it on
    every turn), and a message left incomplete later still arms one."""
    (server, _), _ = two
    reader, writer = await negotiated_raw(server.path)
    writer.write(message(Command.REGION_READ, bytes(16), msg_id=2))     # 0 bytes at 0
    hdr = Header.unpack(await asyncio.wait_for(reader.readexactly(16), TIMEOUT))
    assert (hdr.msg_id, hdr.size, hdr.error) == (2, 32, 0)
    await reader.readexactly(16)
    assert server.session.channel._timer is None
    writer.write(b"\x03\x00")                                           # then a stall
    await dropped(server, reader, caplog, "a message left incomplete")
    writer.close()
