"""Serve one device on one UNIX socket, one client at a time (asyncio).

``DeviceServer(backend, path)`` listens on ``path``. It accepts one client and
leaves the next waiting in the listen backlog until the first is gone (QEMU
connects once per device). Each client gets a fresh ``Connection``,
``ServerCore`` and ``DmaSpace``; on disconnect every DMA mapping is dropped,
every fd received is closed, ``backend.client_disconnected()`` runs, and the
device keeps its state for the next client (spec "VFIO_USER_DMA_UNMAP").

Device DMA to mappings without an fd goes out as DMA_READ/DMA_WRITE requests
with our own message ids, chunked to the peer's ``max_data_xfer_size``; the
reader keeps serving requests while a device task awaits the reply, for at
most the ``message`` timeout (then that DMA fails ETIMEDOUT).

The socket is created mode 0600 whatever the umask: whoever can connect can
map memory into the device and program its DMA (README, "Trust model").
A client that holds the socket without progress is dropped after the
channel's ``Timeouts`` (``transport/channel.py``), so the next one can connect.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import stat
from typing import Any

from vuser.backend import DmaError, ServerBackend
from vuser.protocol.caps import Capabilities
from vuser.protocol.connection import Connection, close_fds
from vuser.protocol.consts import Command
from vuser.protocol.events import (
    BadMessage, ConnectionClosed, ErrorReply, Event, Reply, Request,
)
from vuser.protocol.messages import DmaData, VfioUserDmaRw
from vuser.protocol.server import ServerCore
from vuser.protocol.state import ConnState, Role
from vuser.transport.channel import Channel, Timeouts
from vuser.transport.dma import DmaSpace

log = logging.getLogger(__name__)

__all__ = ["DeviceServer"]


class DeviceServer:
    """One device (``backend``) served on the UNIX socket ``path``."""

    def __init__(self, backend: ServerBackend, path: str, *, name: str = "device",
                 caps: Capabilities | None = None, trace: int = 0,
                 timeouts: Timeouts | None = None) -> None:
        self.backend, self.path, self.name = backend, path, name
        self.caps = caps or Capabilities()
        self.timeouts = timeouts or Timeouts()
        self.trace = trace
        self.session: _Session | None = None
        self.sessions_served = 0
        self._listen: socket.socket | None = None
        self._ino: tuple[int, int] | None = None
        self._closed = False
        self._idle = asyncio.Event()

    async def start(self) -> None:
        """Bind mode 0600 and listen (``OSError`` if ``path`` is taken)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            os.fchmod(sock.fileno(), 0o600)  # bind() creates the file with this mode & ~umask
            sock.bind(self.path)
            sock.listen(8)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        st = os.stat(self.path)
        self._listen, self._ino = sock, (st.st_dev, st.st_ino)
        self._idle.set()
        self._accept_next()

    def _accept_next(self) -> None:
        if self._listen is not None and not self._closed:
            asyncio.get_running_loop().add_reader(self._listen.fileno(), self._accept)

    def _accept(self) -> None:
        assert self._listen is not None
        try:
            sock, _ = self._listen.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            log.warning("%s: accept failed: %s", self.name, e)
            return
        # One client at a time: stop accepting until this one is gone.
        asyncio.get_running_loop().remove_reader(self._listen.fileno())
        self._idle.clear()
        self.sessions_served += 1
        self.session = _Session(self, sock)
        self.session.start()

    def _session_ended(self) -> None:
        self.session = None
        self._idle.set()
        self._accept_next()

    async def wait_idle(self) -> None:
        """Until no client is connected."""
        await self._idle.wait()

    async def close(self) -> None:
        """Drop the client, stop listening and remove the socket file."""
        if self._closed:
            return
        self._closed = True
        if self.session is not None:
            self.session.end("server shutting down")
        if self._listen is not None:
            asyncio.get_running_loop().remove_reader(self._listen.fileno())
            self._listen.close()
            self._listen = None
            try:
                st = os.stat(self.path)
                if stat.S_ISSOCK(st.st_mode) and (st.st_dev, st.st_ino) == self._ino:
                    os.unlink(self.path)
            except FileNotFoundError:
                pass


class _Session:
    """One client of a ``DeviceServer``; also the ``MessageDma`` of its DmaSpace."""

    def __init__(self, server: DeviceServer, sock: socket.socket) -> None:
        self.server = server
        self.conn = Connection(Role.SERVER, server.caps)
        sink_factory = getattr(server.backend, "dma_sink", None)  # devices with a Platform
        self.dma = DmaSpace(self, max_maps=server.caps.max_dma_maps,
                            sink=sink_factory() if sink_factory is not None else None)
        self.core = ServerCore(server.backend, self.dma, server.caps)
        self.channel = Channel(sock, self.conn, self._on_event,
                               name=f"{server.name}#{server.sessions_served}",
                               trace=server.trace, timeouts=server.timeouts,
                               serve_region=self.core.region_access)
        self._waiters: dict[int, asyncio.Future[Event]] = {}
        self._ended = False

    def start(self) -> None:
        log.info("%s: client connected", self.server.name)
        self.channel.start()
        try:
            self.server.backend.client_connected(self.dma)
        except Exception:
            log.exception("%s: client_connected failed", self.server.name)

    def _on_event(self, event: Event) -> None:
        try:
            if event.__class__ is Request:  # the common case first: MMIO
                reply = self.core.handle(event)
                if reply is not None:
                    self.channel.send(reply)
            elif isinstance(event, ConnectionClosed):
                self.end("mid-message" if event.partial else "")
            elif isinstance(event, (Reply, ErrorReply)) or (
                    isinstance(event, BadMessage) and event.is_reply):
                fut = self._waiters.pop(event.msg_id, None)
                if fut is not None and not fut.done():
                    fut.set_result(event)
                elif isinstance(event, Reply):
                    close_fds(event.fds)
            else:
                reply = self.core.handle(event)
                if reply is not None:
                    self.channel.send(reply)
        except Exception:  # LocalProtocolError or worse: our bug, not the client's
            log.exception("%s: internal error; dropping the client", self.server.name)
            self.end("internal error")

    def end(self, why: str) -> None:
        """Tear the session down (idempotent); the device keeps its state."""
        if self._ended:
            return
        self._ended = True
        self.channel.close()
        for fut in self._waiters.values():
            if not fut.done():
                fut.set_exception(DmaError(errno.ENOTCONN, 0, 0, "the client disconnected"))
        self._waiters.clear()
        self.dma.close()
        try:
            self.server.backend.client_disconnected()
        except Exception:
            log.exception("%s: client_disconnected failed", self.server.name)
        log.info("%s: client disconnected%s", self.server.name, f" ({why})" if why else "")
        self.server._session_ended()

    # --- MessageDma: DMA_READ / DMA_WRITE requests to the client -------------

    def _chunk(self) -> int:
        peer = self.conn.peer_caps or Capabilities.from_json(None)
        return min(peer.max_data_xfer_size, self.server.caps.max_data_xfer_size)

    async def _exchange(self, command: Command, body: Any, addr: int, n: int) -> Any:
        if self._ended or self.conn.state is not ConnState.READY:
            raise DmaError(errno.ENOTCONN, addr, n, "no negotiated client")
        req = self.conn.request(command, body)
        self.channel.send(req)  # the reply comes in a later reader callback
        fut: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        self._waiters[req.msg_id] = fut
        try:
            event = await asyncio.wait_for(fut, self.server.timeouts.message)
        except asyncio.TimeoutError:
            self._waiters.pop(req.msg_id, None)
            raise DmaError(errno.ETIMEDOUT, addr, n,
                           f"no reply to {command.name} in {self.server.timeouts.message} s"
                           ) from None
        if isinstance(event, ErrorReply):
            raise DmaError(event.errno or errno.EIO, addr, n,
                           f"client answered {command.name} with errno {event.errno}")
        if isinstance(event, BadMessage):
            raise DmaError(errno.EPROTO, addr, n, f"bad {command.name} reply: {event.reason}")
        return event.body

    async def dma_read_message(self, addr: int, n: int) -> bytes:
        out, chunk = bytearray(), self._chunk()
        for pos in range(0, n, chunk):
            count = min(chunk, n - pos)
            body = await self._exchange(Command.DMA_READ,
                                        VfioUserDmaRw(addr=addr + pos, count=count), addr, n)
            if body.rw.addr != addr + pos or len(body.data) != count:
                raise DmaError(errno.EPROTO, addr, n,
                               f"DMA_READ reply of {len(body.data)} bytes, asked {count}")
            out += body.data
        return bytes(out)

    async def dma_write_message(self, addr: int, data: bytes) -> None:
        chunk = self._chunk()
        for pos in range(0, len(data), chunk):
            await self._exchange(Command.DMA_WRITE,
                                 DmaData.make(addr + pos, data[pos:pos + chunk]), addr, len(data))
