"""A vfio-user client in Python on the same sans-IO core (tests, benchmarks).

    async with await Client.connect(path) as c:
        info = await c.device_info()
        await c.dma_map(0x10000, 1 << 20, fd=memfd)        # shared memory
        await c.dma_map(0x200000, buffer=bytearray(4096))  # served by messages
        await c.region_write(0, 0x08, b"\\x01\\0\\0\\0")
        await c.set_irq_eventfds(VFIO_PCI_MSIX_IRQ_INDEX, [efd])

A failed request raises ``VfioUserError`` (an ``OSError`` with the server's
errno). The client answers the server's DMA_READ/DMA_WRITE from the buffers
given to ``dma_map(buffer=...)`` (EFAULT outside them, EPERM against the map's
flags), from its reader callback, so they are served while any request of ours
is waiting. Fds handed to the client stay the caller's; fds it receives
(``Region.fd``) become the caller's.
"""

from __future__ import annotations

import asyncio
import errno
import mmap
import os
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from vuser.errors import RemoteProtocolError
from vuser.memory.intervals import IntervalMap
from vuser.backend import (
    VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_EVENTFD, VFIO_IRQ_SET_DATA_NONE,
)
from vuser.protocol.caps import Capabilities
from vuser.protocol.connection import Connection, close_fds
from vuser.protocol.consts import (
    VFIO_DMA_UNMAP_FLAG_ALL, VFIO_USER_F_DMA_REGION_READ, VFIO_USER_F_DMA_REGION_WRITE,
    WRITE_MULTI_DATA, Command,
)
from vuser.protocol.events import (
    BadMessage, ConnectionClosed, ErrorReply, Event, Reply, Request,
)
from vuser.protocol.messages import (
    DmaData, RegionData, SetIrqs, Version, VfioDeviceInfo, VfioIrqInfo, VfioIrqSet,
    VfioRegionInfo, VfioUserDmaMap, VfioUserDmaRw, VfioUserDmaUnmap, VfioUserRegionAccess,
    VfioUserWriteMultiEntry, WriteMulti,
)
from vuser.protocol.state import Role
from vuser.transport.channel import Channel

__all__ = ["Client", "VfioUserError", "Region", "DMA_RW"]

DMA_RW = VFIO_USER_F_DMA_REGION_READ | VFIO_USER_F_DMA_REGION_WRITE


class VfioUserError(OSError):
    """The server answered a request with an error reply."""

    def __init__(self, command: Command, err: int) -> None:
        super().__init__(err, f"{command.name}: {os.strerror(err) if err else 'error'}")
        self.command = command


@dataclass(frozen=True)
class Region:
    """A GET_REGION_INFO answer. ``fd`` (if any) is the caller's to close."""

    index: int
    flags: int
    size: int
    offset: int
    sparse_areas: tuple[tuple[int, int], ...] | None
    fd: int | None


@dataclass
class _Local:
    addr: int
    buf: memoryview
    flags: int


class Client:
    """One connection to a vfio-user server (see the module doc)."""

    def __init__(self, sock: socket.socket, *, caps: Capabilities | None = None,
                 trace: int = 0, name: str = "client") -> None:
        self.conn = Connection(Role.CLIENT, caps)
        self.channel = Channel(sock, self.conn, self._on_event, name=name, trace=trace)
        self._waiters: dict[int, asyncio.Future[Event]] = {}
        self._local: IntervalMap[_Local] = IntervalMap()
        self.closed_event = asyncio.Event()
        self.dma_requests_served = 0

    @classmethod
    async def connect(cls, path: str, *, caps: Capabilities | None = None,
                      trace: int = 0, timeout: float | None = 10.0) -> Client:
        """Connect to ``path`` and negotiate the version."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, path), timeout)
        except BaseException:
            sock.close()
            raise
        client = cls(sock, caps=caps, trace=trace)
        client.channel.start()
        try:
            await client.negotiate(timeout=timeout)
        except BaseException:
            await client.close()
            raise
        return client

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def close(self) -> None:
        self.channel.close()
        self._fail_waiters(ConnectionResetError(errno.ECONNRESET, "connection closed"))
        self.closed_event.set()

    @property
    def server_caps(self) -> Capabilities:
        if self.conn.peer_caps is None:
            raise RuntimeError("VERSION not negotiated yet")
        return self.conn.peer_caps

    # --- requests -------------------------------------------------------------------

    async def request(self, command: Command, body: Any = None, fds: Sequence[int] = (), *,
                      no_reply: bool = False, timeout: float | None = None) -> Reply | None:
        """Send one request; its ``Reply`` (None with ``no_reply``).

        Raises ``VfioUserError`` for an error reply, ``RemoteProtocolError``
        for a malformed one, ``ConnectionError`` if the server goes away.
        """
        if self.channel.closed:
            raise ConnectionResetError(errno.ECONNRESET, "connection closed")
        req = self.conn.request(command, body, fds, no_reply=no_reply)
        if no_reply:
            self.channel.send(req)
            return None
        self.channel.send(req)  # raises on misuse; the reply comes in a later callback
        fut: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        self._waiters[req.msg_id] = fut
        event = await asyncio.wait_for(fut, timeout)
        if isinstance(event, ErrorReply):
            raise VfioUserError(command, event.errno or errno.EIO)
        if isinstance(event, BadMessage):
            raise RemoteProtocolError(errno.EPROTO, event.reason)
        assert isinstance(event, Reply)
        return event

    async def negotiate(self, timeout: float | None = None) -> Capabilities:
        await self.request(Command.VERSION, Version(caps=self.conn.caps.to_json()),
                           timeout=timeout)
        return self.server_caps

    async def device_info(self) -> VfioDeviceInfo:
        return (await self.request(Command.DEVICE_GET_INFO, VfioDeviceInfo())).body

    async def region_info(self, index: int) -> Region:
        """GET_REGION_INFO, asking again with a larger argsz as QEMU does."""
        argsz = VfioRegionInfo.SIZE
        while True:
            reply = await self.request(Command.DEVICE_GET_REGION_INFO,
                                       VfioRegionInfo(argsz=argsz, index=index))
            info = reply.body.info
            if info.argsz <= argsz:
                fd = reply.fds[0] if reply.fds else None
                close_fds(reply.fds[1:])
                return Region(index, info.flags, info.size, info.offset,
                              reply.body.sparse_areas, fd)
            close_fds(reply.fds)
            argsz = info.argsz

    async def map_region(self, index: int) -> mmap.mmap:
        """mmap a whole mmap-able region (its fd is closed once mapped)."""
        region = await self.region_info(index)
        if region.fd is None:
            raise VfioUserError(Command.DEVICE_GET_REGION_INFO, errno.ENODEV)
        try:
            return mmap.mmap(region.fd, region.size, mmap.MAP_SHARED,
                             mmap.PROT_READ | mmap.PROT_WRITE, offset=region.offset)
        finally:
            os.close(region.fd)

    async def irq_info(self, index: int) -> VfioIrqInfo:
        return (await self.request(Command.DEVICE_GET_IRQ_INFO, VfioIrqInfo(index=index))).body

    async def region_read(self, index: int, offset: int, count: int) -> bytes:
        out, chunk = bytearray(), self._xfer()
        for pos in range(0, max(count, 1), chunk):
            n = min(chunk, count - pos)
            reply = await self.request(Command.REGION_READ, VfioUserRegionAccess(
                offset=offset + pos, region=index, count=n))
            if len(reply.body.data) != n:
                raise RemoteProtocolError(errno.EPROTO, f"read {len(reply.body.data)} of {n}")
            out += reply.body.data
        return bytes(out)

    async def region_write(self, index: int, offset: int, data: bytes, *,
                           posted: bool = False) -> None:
        """REGION_WRITE; ``posted`` sends it NO_REPLY, as QEMU does for memory BARs."""
        chunk = self._xfer()
        for pos in range(0, max(len(data), 1), chunk):
            await self.request(Command.REGION_WRITE,
                               RegionData.make(index, offset + pos, data[pos:pos + chunk]),
                               no_reply=posted)

    async def region_write_multi(self, writes: Iterable[tuple[int, int, bytes]], *,
                                 posted: bool = False) -> None:
        """REGION_WRITE_MULTI of ``(region, offset, data)`` writes of ≤ 8 bytes."""
        entries = []
        for region, offset, data in writes:
            if len(data) > WRITE_MULTI_DATA:
                raise ValueError(f"write-multi entries carry at most 8 bytes, not {len(data)}")
            entries.append(VfioUserWriteMultiEntry(offset=offset, region=region,
                                                   count=len(data), data=bytes(data)))
        await self.request(Command.REGION_WRITE_MULTI, WriteMulti(tuple(entries)),
                           no_reply=posted)

    async def set_irqs(self, index: int, flags: int, start: int = 0, count: int = 0,
                       fds: Sequence[int] = (), data: bytes = b"") -> None:
        """SET_IRQS; eventfd runs longer than the server's ``max_msg_fds`` are
        split into several messages, as QEMU does."""
        per = max(self.server_caps.max_msg_fds, 1)
        if not fds or len(fds) <= per:
            irq_set = VfioIrqSet(argsz=VfioIrqSet.SIZE + len(data), flags=flags, index=index,
                                 start=start, count=count)
            await self.request(Command.DEVICE_SET_IRQS, SetIrqs(irq_set, data), fds)
            return
        for pos in range(0, len(fds), per):
            run = fds[pos:pos + per]
            await self.set_irqs(index, flags, start + pos, len(run), run)

    async def set_irq_eventfds(self, index: int, fds: Sequence[int], start: int = 0) -> None:
        """Trigger ``fds`` for vectors ``start``... of ``index``."""
        await self.set_irqs(index, VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
                            start, len(fds), fds)

    async def disable_irqs(self, index: int) -> None:
        await self.set_irqs(index, VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER, 0, 0)

    async def reset(self) -> None:
        await self.request(Command.DEVICE_RESET)

    # --- DMA -----------------------------------------------------------------------

    async def dma_map(self, addr: int, size: int | None = None, *, fd: int | None = None,
                      offset: int = 0, flags: int = DMA_RW,
                      buffer: bytearray | memoryview | None = None) -> None:
        """DMA_MAP of ``fd`` (shared memory), or of ``buffer`` without an fd:
        the server then reaches it through DMA_READ/WRITE that we answer."""
        if (fd is None) == (buffer is None):
            raise ValueError("dma_map takes exactly one of fd= and buffer=")
        if buffer is not None:
            view = memoryview(buffer).cast("B")
            if view.readonly:
                raise ValueError("the DMA buffer must be writable")
            size = len(view) if size is None else size
            if size > len(view):
                raise ValueError("size exceeds the buffer")
        if not size:
            raise ValueError("a DMA map needs a size")
        await self.request(Command.DMA_MAP, VfioUserDmaMap(
            flags=flags, offset=offset if fd is not None else 0, addr=addr, size=size),
            () if fd is None else (fd,))
        if buffer is not None:
            self._drop_local(addr, size)  # an identical re-map replaces the buffer
            self._local.insert(addr, addr + size - 1, _Local(addr, view[:size], flags))

    async def dma_unmap(self, addr: int, size: int) -> None:
        await self.request(Command.DMA_UNMAP, VfioUserDmaUnmap(addr=addr, size=size))
        self._drop_local(addr, size)

    def _drop_local(self, addr: int, size: int) -> None:
        entry = self._local.find_entry(addr)
        if entry is not None and entry[:2] == (addr, addr + size - 1):
            self._local.delete_at(addr)

    async def dma_unmap_all(self) -> None:
        await self.request(Command.DMA_UNMAP, VfioUserDmaUnmap(flags=VFIO_DMA_UNMAP_FLAG_ALL))
        self._local.clear()

    def _xfer(self) -> int:
        return min(self.server_caps.max_data_xfer_size, self.conn.caps.max_data_xfer_size)

    # --- events ---------------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        if isinstance(event, ConnectionClosed):
            self._fail_waiters(ConnectionResetError(errno.ECONNRESET, "server closed the socket"))
            self.closed_event.set()
        elif isinstance(event, Request):
            self._serve_dma(event)
        elif isinstance(event, BadMessage) and not event.is_reply:
            if event.reply_expected:
                self.channel.send(ErrorReply(event.msg_id, event.command, event.errno))
        else:
            fut = self._waiters.pop(event.msg_id, None)
            if fut is not None and not fut.done():
                fut.set_result(event)
            elif isinstance(event, Reply):
                close_fds(event.fds)

    def _fail_waiters(self, exc: BaseException) -> None:
        for fut in self._waiters.values():
            if not fut.done():
                fut.set_exception(exc)
        self._waiters.clear()

    def _serve_dma(self, req: Request) -> None:
        """Answer the server's DMA_READ/DMA_WRITE from our local buffers."""
        self.dma_requests_served += 1
        body = req.body
        rw = body if req.command is Command.DMA_READ else body.rw
        write = req.command is Command.DMA_WRITE
        try:
            view = self._local_view(rw.addr, rw.count, write)
        except OSError as e:
            if not req.no_reply:
                self.channel.send(ErrorReply(req.msg_id, req.command, e.errno))
            return
        if write:
            view[:] = body.data
            if not req.no_reply:
                self.channel.send(Reply(req.msg_id, req.command, VfioUserDmaRw(
                    addr=rw.addr, count=rw.count)))
        elif not req.no_reply:
            self.channel.send(Reply(req.msg_id, req.command, DmaData.make(rw.addr, bytes(view))))

    def _local_view(self, addr: int, n: int, write: bool) -> memoryview:
        entry = self._local.find_entry(addr)
        if entry is None or addr + n - 1 > entry[1]:
            raise OSError(errno.EFAULT, "not in a local DMA buffer")
        m = entry[2]
        need = VFIO_USER_F_DMA_REGION_WRITE if write else VFIO_USER_F_DMA_REGION_READ
        if not m.flags & need:
            raise OSError(errno.EPERM, "DMA against the map's flags")
        return m.buf[addr - m.addr:addr - m.addr + n]
