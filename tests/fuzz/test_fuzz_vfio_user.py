"""Fuzz every vfio-user command against a served device, before and after VERSION.

One ``vuser-dma`` device (behind the IOMMU model, as ``vuser serve`` runs it)
takes hostile connections: structure-aware messages for each command, random
bytes, fd abuse (too many, the wrong kind, unsealed memory), and endings in
the middle of a message. After every example (``check_after``): a fresh client
negotiates and gets DEVICE_GET_INFO answered, nothing reached the log at
ERROR level or the loop's exception handler, and the process holds exactly
the fds it held before. Bounded by ``VUSER_FUZZ_EXAMPLES`` (conftest.py).
"""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest
from fuzz_kit import COUNTS, EXAMPLES, open_fd_count
from hypothesis import HealthCheck, given, settings
from vfio_strategies import make_fd, session

from vuser.devices.platform import Platform
from vuser.devices.vuser_dma import VuserDma
from vuser.protocol.consts import Command
from vuser.protocol.messages import Version
from vuser.transport.client import Client
from vuser.transport.server import DeviceServer

COMMANDS = [int(c) for c in Command] + [0, 19, 0x7FFF, 0xFFFF]
TIMEOUT = 10


@pytest.fixture(scope="module")
def served(loop, watch, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("fuzz") / "vdma.sock")
    platform = Platform()
    device = VuserDma(platform=platform)
    server = DeviceServer(device, path, name="fuzz")
    loop.run_until_complete(server.start())
    loop.run_until_complete(probe(server))   # warm up: lazily opened fds now exist
    yield server
    loop.run_until_complete(server.close())
    device.close()
    platform.close()


async def probe(server: DeviceServer) -> None:
    """A well-behaved client gets a valid answer; then the server is idle again."""
    await asyncio.wait_for(server.wait_idle(), TIMEOUT)
    async with await Client.connect(server.path, timeout=TIMEOUT) as c:
        info = await asyncio.wait_for(c.device_info(), TIMEOUT)
        assert info.num_regions >= 9
    await asyncio.wait_for(server.wait_idle(), TIMEOUT)


async def drain(sock: socket.socket) -> None:
    """Read replies (closing any fds they carry) until EOF or the socket is closed."""
    loop = asyncio.get_running_loop()
    while True:
        fut = loop.create_future()
        loop.add_reader(sock.fileno(), lambda: fut.done() or fut.set_result(None))
        try:
            await fut
        finally:
            loop.remove_reader(sock.fileno())
        try:
            data, anc, _, _ = sock.recvmsg(1 << 16, socket.CMSG_SPACE(64 * 4))
        except BlockingIOError:
            continue
        except OSError:
            return
        for level, kind, blob in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                for (fd,) in struct.iter_unpack("i", blob[:len(blob) - len(blob) % 4]):
                    socket.close(fd)
        if not data:
            return


async def send(sock: socket.socket, data: bytes, fds: list[int]) -> bool:
    loop = asyncio.get_running_loop()
    try:
        if fds:
            sock.sendmsg([data[:1]], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                       struct.pack(f"{len(fds)}i", *fds))])
            data = data[1:]
        if data:
            await asyncio.wait_for(loop.sock_sendall(sock, data), TIMEOUT)
        return True
    except (BrokenPipeError, ConnectionResetError, BlockingIOError):
        return False  # the server hung up on us: allowed


async def hostile(server: DeviceServer, plan: dict) -> None:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    await loop.sock_connect(sock, server.path)
    reader = asyncio.ensure_future(drain(sock))
    try:
        if plan["negotiate"]:
            hello = Version(0, 0, None).encode()
            await send(sock, struct.pack("<HHIII", 1, Command.VERSION, 16 + len(hello), 0, 0)
                       + hello, [])
        for raw, kinds in plan["messages"]:
            fds = [make_fd(k) for k in kinds]
            try:
                ok = await send(sock, raw, fds)
            finally:
                for fd in fds:
                    socket.close(fd)
            if not ok:
                break
        if plan["end"] == "mid-message":
            await send(sock, struct.pack("<HHIII", 2, Command.DEVICE_GET_INFO, 32, 0, 0)
                       + bytes(16)[:plan["cut"] % 32], [])
        elif plan["end"] == "shutdown":
            sock.shutdown(socket.SHUT_WR)
            await asyncio.wait_for(asyncio.shield(reader), TIMEOUT)
    finally:
        reader.cancel()
        try:
            await reader
        except asyncio.CancelledError:
            pass
        sock.close()


def check_after(loop, server, watch, baseline: int) -> None:
    loop.run_until_complete(probe(server))
    assert watch.take() == []
    assert open_fd_count() == baseline


@pytest.mark.parametrize("command", COMMANDS,
                         ids=[Command(c).name if c in set(Command) else f"cmd{c}"
                              for c in COMMANDS])
def test_fuzz_command(loop, watch, served, command):
    baseline = open_fd_count()
    name = Command(command).name if command in set(Command) else f"cmd{command}"

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(plan=session(command))
    def run(plan):
        COUNTS[f"vfio-user {name}"] += 1
        loop.run_until_complete(hostile(served, plan))
        check_after(loop, served, watch, baseline)

    run()
