"""Our client and our server over a real UNIX socket: fds cross with SCM_RIGHTS,
device DMA lands in client memory, disconnects lose nothing and leak nothing."""

import asyncio
import errno
import fcntl
import mmap
import os
import socket
import struct

import pytest

from proto_helpers import (
    REG_DMA_ADDR, REG_DMA_READ, REG_DONE, REG_DOORBELL, REG_SCRATCH, FakeBackend, fill, message,
    open_fds,
)
from vuser.protocol.caps import Capabilities
from vuser.protocol.consts import Command
from vuser.protocol.messages import Version, VfioDeviceInfo, VfioUserDmaMap
from vuser.transport.client import Client, VfioUserError
from vuser.transport.server import DeviceServer
from vuser.memory.seals import sealed_memfd

MiB = 1 << 20
TIMEOUT = 10


async def eventfd_fired(fd: int) -> int:
    """Wait until the eventfd is signalled; its counter."""
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    loop.add_reader(fd, lambda: fut.done() or fut.set_result(None))
    try:
        await asyncio.wait_for(fut, TIMEOUT)
    finally:
        loop.remove_reader(fd)
    return os.eventfd_read(fd)


async def start_dma(client: Client, addr: int, n: int, seed: int = 0, *, read=False) -> None:
    await client.region_write(0, REG_DMA_ADDR, struct.pack("<QII", addr, n, seed))
    await client.region_write(0, REG_DMA_READ if read else REG_DOORBELL, b"\1\0\0\0")


async def dmas_done(client: Client, count: int) -> int:
    """Poll the fake device until ``count`` DMAs finished; the last errno."""
    for _ in range(TIMEOUT * 100):
        done, err = struct.unpack("<II", await client.region_read(0, REG_DONE, 8))
        if done >= count:
            return err
        await asyncio.sleep(0.01)
    raise TimeoutError("the device DMA did not finish")


async def test_memfd_dma_and_msix_eventfd(served):
    server, backend, path = served
    memfd = sealed_memfd("guest-ram", 2 * MiB)
    efds = [os.eventfd(0) for _ in range(4)]
    async with await Client.connect(path) as c:
        assert (await c.device_info()).num_regions == 9
        await c.dma_map(0x4000_0000, 2 * MiB, fd=memfd)
        await c.set_irq_eventfds(2, efds)
        # The server got its own copies (not ours), close-on-exec so that they
        # never leak into a process vuser starts.
        assert set(backend.irq_fds.values()).isdisjoint(efds)
        assert all(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
                   for fd in backend.irq_fds.values())
        await start_dma(c, 0x4000_0000 + 0x1000, 300, seed=7)
        assert await eventfd_fired(efds[0]) == 1
        assert os.pread(memfd, 300, 0x1000) == fill(7, 300)
        assert await dmas_done(c, 1) == 0
    for fd in efds + [memfd]:
        os.close(fd)


async def test_region_fd_received_and_mmapped(served):
    server, backend, path = served
    async with await Client.connect(path) as c:
        region = await c.region_info(2)
        assert region.sparse_areas == ((4096, 8192),) and region.fd is not None
        os.close(region.fd)
        mm = await c.map_region(2)
        mm[4096:4101] = b"bar 2"
        assert os.pread(backend.bar2_fd, 5, 4096) == b"bar 2"
        mm.close()


async def test_no_fd_map_is_served_by_messages_without_deadlock(served):
    server, backend, path = served
    buf = bytearray(64 * 1024)
    efd = os.eventfd(0)
    async with await Client.connect(path) as c:
        await c.dma_map(0x10_0000, buffer=buf)
        await c.set_irq_eventfds(2, [efd])
        await start_dma(c, 0x10_0000 + 16, 5000, seed=3)
        # While the device's DMA_WRITE is in flight we keep issuing
        # synchronous requests; both directions progress.
        for _ in range(20):
            await c.region_read(0, REG_SCRATCH, 4)
        assert await eventfd_fired(efd) == 1
        assert bytes(buf[16:5016]) == fill(3, 5000)
        # And a device DMA read of client memory through DMA_READ.
        buf[0:256] = bytes(range(256))
        await start_dma(c, 0x10_0000, 256, read=True)
        assert await dmas_done(c, 2) == 0
        assert backend.regs[0x800:0x900] == bytes(range(256))
        assert c.dma_requests_served >= 2
    os.close(efd)


async def test_message_dma_is_chunked_to_the_clients_max_data_xfer_size(served):
    server, backend, path = served
    buf = bytearray(16384)
    caps = Capabilities(max_data_xfer_size=4096)
    async with await Client.connect(path, caps=caps) as c:
        await c.dma_map(0x20_0000, buffer=buf)
        await start_dma(c, 0x20_0000, 10000, seed=9)
        assert await dmas_done(c, 1) == 0
        assert c.dma_requests_served == 3
        assert bytes(buf[:10000]) == fill(9, 10000)


async def test_dma_to_unmapped_address_fails_in_the_device_only(served):
    server, backend, path = served
    async with await Client.connect(path) as c:
        await start_dma(c, 0xdead_0000, 16)
        assert await dmas_done(c, 1) == errno.EFAULT
        # A message-DMA the client refuses (outside its buffer): errno from its reply.
        await c.dma_map(0x1000, buffer=bytearray(4096), flags=1)
        await start_dma(c, 0x1000, 16)
        assert await dmas_done(c, 2) == errno.EPERM  # read-only map, checked server-side
        assert (await c.device_info()).num_irqs == 5


async def test_error_replies_raise_vfio_user_error(served):
    server, backend, path = served
    async with await Client.connect(path) as c:
        with pytest.raises(VfioUserError) as e:
            await c.region_read(9, 0, 4)
        assert e.value.errno == errno.EINVAL and e.value.command is Command.REGION_READ
        with pytest.raises(VfioUserError) as e:
            await c.dma_unmap(0x1000, 0x1000)
        assert e.value.errno == errno.ENOENT


async def test_posted_writes_stay_ordered(served):
    server, backend, path = served
    async with await Client.connect(path) as c:
        for i in range(200):
            await c.region_write(0, REG_SCRATCH, struct.pack("<I", i), posted=True)
        assert struct.unpack("<I", await c.region_read(0, REG_SCRATCH, 4))[0] == 199
        await c.region_write_multi([(0, REG_SCRATCH, b"\x01\x02")], posted=True)
        assert await c.region_read(0, REG_SCRATCH, 2) == b"\x01\x02"


async def test_disconnect_drops_dma_and_eventfds_and_keeps_device_state(served):
    server, backend, path = served
    before = open_fds()
    memfd = sealed_memfd("ram", MiB)
    efd = os.eventfd(0)
    c = await Client.connect(path)
    await c.dma_map(0, MiB, fd=memfd)
    await c.set_irq_eventfds(2, [efd])
    await c.region_write(0, REG_SCRATCH, b"kept")
    session = server.session
    assert len(session.dma.mappings) == 1 and backend.irq_fds
    await c.close()
    await asyncio.wait_for(server.wait_idle(), TIMEOUT)
    assert session.dma.mappings == () and session.dma.closed
    assert backend.irq_fds == {} and backend.disconnects == 1
    os.close(memfd)
    os.close(efd)
    assert open_fds() <= before
    async with await Client.connect(path) as c2:
        assert await c2.region_read(0, REG_SCRATCH, 4) == b"kept"
    assert backend.connects == 2


async def test_disconnect_in_the_middle_of_a_message(served):
    server, backend, path = served
    before = open_fds()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    await asyncio.sleep(0)
    version = message(Command.VERSION, Version().encode(), msg_id=1)
    sock.sendall(version)
    memfd = os.memfd_create("half")
    half = message(Command.DMA_MAP, VfioUserDmaMap(flags=3, size=4096).pack(), msg_id=2)[:30]
    sock.sendmsg([half], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", memfd))])
    await asyncio.sleep(0.05)
    sock.close()
    os.close(memfd)
    await asyncio.wait_for(server.wait_idle(), TIMEOUT)
    assert backend.disconnects == 1
    assert open_fds() <= before
    async with await Client.connect(path) as c:
        assert (await c.device_info()).num_regions == 9


async def test_fds_with_a_request_that_takes_none_are_closed_by_the_server(served):
    server, backend, path = served
    async with await Client.connect(path) as c:
        await c.device_info()
        before = open_fds()
        memfd = os.memfd_create("stray")
        raw = message(Command.DEVICE_GET_INFO, VfioDeviceInfo().pack(), msg_id=0x99)
        c.channel.sock.sendmsg([raw], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                        struct.pack("i", memfd))])
        os.close(memfd)
        # The error reply is unexpected for our client (we bypassed it) and is
        # dropped; the next request proves the server went on.
        assert (await c.device_info()).num_irqs == 5
        assert open_fds() <= before


async def test_a_second_client_waits_for_the_first(served):
    server, backend, path = served
    first = await Client.connect(path)
    second = asyncio.create_task(Client.connect(path))
    await asyncio.sleep(0.2)
    assert not second.done(), "a second client was served while the first is connected"
    await first.close()
    c2 = await asyncio.wait_for(second, TIMEOUT)
    assert (await c2.device_info()).num_regions == 9
    await c2.close()


async def test_pending_device_dma_ends_when_the_client_goes(served):
    server, backend, path = served
    c = await Client.connect(path)
    c._serve_dma = lambda req: None      # a client that never answers DMA requests
    await c.dma_map(0x1000, buffer=bytearray(4096))
    await start_dma(c, 0x1000, 64)
    for _ in range(100):
        if c.dma_requests_served or server.session._waiters:
            break
        await asyncio.sleep(0.01)
    assert server.session._waiters, "the device DMA did not reach the client"
    await c.close()
    await asyncio.wait_for(server.wait_idle(), TIMEOUT)
    await asyncio.sleep(0)
    assert not backend.tasks


async def test_200_connect_disconnect_cycles_leak_no_fds(served):
    server, backend, path = served
    before = open_fds()
    memfd = sealed_memfd("ram", MiB)
    for i in range(200):
        efd = os.eventfd(0)
        c = await Client.connect(path)
        await c.dma_map(0, MiB, fd=memfd)
        await c.dma_map(2 * MiB, buffer=bytearray(4096))
        await c.set_irq_eventfds(2, [efd])
        if i % 3 == 0:
            region = await c.region_info(2)
            os.close(region.fd)
        if i % 5 == 0:   # sometimes leave in the middle of a message
            c.channel.sock.send(message(Command.DEVICE_GET_INFO, b"")[:10])
        await c.close()
        os.close(efd)
        await asyncio.wait_for(server.wait_idle(), TIMEOUT)
    os.close(memfd)
    assert server.sessions_served == 200 and backend.disconnects == 200
    assert open_fds() <= before


async def test_server_close_removes_its_socket(tmp_path):
    from proto_helpers import FakeBackend
    from vuser.transport.server import DeviceServer
    backend = FakeBackend()
    path = str(tmp_path / "s.sock")
    server = DeviceServer(backend, path)
    await server.start()
    c = await Client.connect(path)
    await server.close()
    assert not os.path.exists(path)
    await asyncio.wait_for(c.closed_event.wait(), TIMEOUT)
    with pytest.raises(ConnectionError):
        await c.device_info()
    await c.close()
    backend.close()


async def test_mmap_region_helper_requires_an_fd(served):
    server, backend, path = served
    async with await Client.connect(path) as c:
        with pytest.raises(VfioUserError):
            await c.map_region(0)
        mm = await c.map_region(2)
        assert isinstance(mm, mmap.mmap) and len(mm) == 16384
        mm.close()


async def test_fds_stay_with_their_message_when_messages_arrive_together(served):
    """An fd-less DMA_MAP and one with an fd, queued before the server reads:
    the kernel would hand both messages and the fd to one recvmsg(); the fd
    must still go to the second map (what QEMU does while it boots)."""
    server, backend, path = served
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    memfd = sealed_memfd("ram", 2 * 4096)
    sock.sendall(message(Command.VERSION, Version().encode(), msg_id=1))
    sock.sendall(message(Command.DMA_MAP, VfioUserDmaMap(
        argsz=32, flags=3, addr=0x10000, size=4096).pack(), msg_id=2))
    sock.sendmsg([message(Command.DMA_MAP, VfioUserDmaMap(
        argsz=32, flags=3, offset=4096, addr=0x20000, size=4096).pack(), msg_id=3)],
        [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", memfd))])
    os.close(memfd)
    sock.setblocking(False)
    replies, loop = b"", asyncio.get_running_loop()
    while len(replies) < 16 or len(replies) < struct.unpack_from("<I", replies, 4)[0] + 32:
        chunk = await asyncio.wait_for(loop.sock_recv(sock, 4096), TIMEOUT)
        assert chunk, "the server hung up"
        replies += chunk
    version_size = struct.unpack_from("<I", replies, 4)[0]
    for at in (version_size, version_size + 16):
        msg_id, _, size, flags, err = struct.unpack_from("<HHIII", replies, at)
        assert not flags & 0x20, f"DMA_MAP {msg_id} failed with errno {err}"
    maps = {m.addr: m for m in server.session.dma.mappings}
    assert maps[0x10000].file is None and maps[0x20000].file is not None
    sock.close()
    await asyncio.wait_for(server.wait_idle(), TIMEOUT)


@pytest.mark.parametrize("first", [
    [message(Command.DEVICE_RESET, msg_id=2)],                        # 16 bytes
    [message(Command.REGION_READ, bytes(8), msg_id=2)],               # 24 bytes, EINVAL
    [message(Command.REGION_READ, bytes(16), msg_id=2)],              # 32 bytes, a read
    [message(Command.DEVICE_RESET, msg_id=2), message(Command.DEVICE_RESET, msg_id=4)],
], ids=["reset-16B", "short-read-24B", "read-32B", "two-resets"])
async def test_fds_go_to_the_last_message_of_a_boundary_read(served, first):
    """Between messages the channel reads 36 bytes (one recvmsg per REGION_READ
    or 4-byte REGION_WRITE). Messages shorter than that, queued right before a
    DMA_MAP with an fd, put the map's head and its fd into that read: the fd
    must go to the map, and the short messages are answered on their own."""
    server, backend, path = served
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    memfd = sealed_memfd("ram", 4096)
    sock.sendall(message(Command.VERSION, Version().encode(), msg_id=1))
    sock.setblocking(False)
    loop = asyncio.get_running_loop()

    async def replies(n: int) -> list[tuple[int, int, int]]:
        got, out = b"", []
        while len(out) < n:
            got += await asyncio.wait_for(loop.sock_recv(sock, 4096), TIMEOUT)
            while len(got) >= 16 and len(got) >= struct.unpack_from("<I", got, 4)[0]:
                msg_id, _, size, flags, err = struct.unpack_from("<HHIII", got)
                out.append((msg_id, flags, err))
                got = got[size:]
        return out

    await replies(1)                  # VERSION: the server is between messages now
    for m in first:
        sock.sendall(m)
    sock.sendmsg([message(Command.DMA_MAP, VfioUserDmaMap(
        argsz=32, flags=3, addr=0x20000, size=4096).pack(), msg_id=3)],
        [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", memfd))])
    os.close(memfd)
    got = await replies(len(first) + 1)
    assert [r[0] for r in got] == [struct.unpack_from("<H", m)[0] for m in first] + [3]
    assert not got[-1][1] & 0x20, f"DMA_MAP failed with errno {got[-1][2]}"
    maps = {m.addr: m for m in server.session.dma.mappings}
    assert maps[0x20000].file is not None
    sock.close()
    await asyncio.wait_for(server.wait_idle(), TIMEOUT)


@pytest.mark.parametrize("trace", [0, 1])
async def test_region_replies_stay_whole_and_in_order_when_the_client_reads_late(
        tmp_path, trace):
    """2,000 reads of 4 KiB sent before the client reads any reply: the server's
    socket fills, the replies answered at once (``serve_region``) or through
    events (tracing on) are queued, and every one arrives whole, in order."""
    backend = FakeBackend()
    backend.regs[:] = fill(7, 4096)
    path = str(tmp_path / "late.sock")
    server = DeviceServer(backend, path, name="late", trace=trace)
    await server.start()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await asyncio.get_running_loop().run_in_executor(None, _late_reader, sock, path)
    finally:
        sock.close()
        await server.close()
        backend.close()


def _late_reader(sock: socket.socket, path: str) -> None:
    sock.settimeout(TIMEOUT)
    sock.connect(path)
    sock.sendall(message(Command.VERSION, Version(caps={}).encode(), msg_id=1))
    hdr = sock.recv(16, socket.MSG_WAITALL)
    sock.recv(struct.unpack_from("<HHI", hdr)[2] - 16, socket.MSG_WAITALL)
    n = 2000
    reads = b"".join(message(Command.REGION_READ, struct.pack("<QII", 0, 0, 4096),
                             msg_id=i + 2) for i in range(n))
    sock.sendall(reads)                    # 64 KB of requests for 8 MB of replies
    want = fill(7, 4096)
    for i in range(n):
        head = sock.recv(32, socket.MSG_WAITALL)
        msg_id, command, size, flags, err = struct.unpack_from("<HHIII", head)
        assert (msg_id, command, size, flags, err) == (i + 2, Command.REGION_READ, 32 + 4096,
                                                        1, 0)
        assert sock.recv(4096, socket.MSG_WAITALL) == want
