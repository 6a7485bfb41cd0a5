"""Shared test kit: a small fake device and a client/server pair without sockets.

``Pair`` joins a client ``Connection`` to a server ``Connection`` + ``ServerCore``
(h11's ConnectionPair idea): fds crossing from client to server are dup()ed,
as SCM_RIGHTS would, so a test can check the server closed its copies.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import os
import struct
from typing import Any

from vuser.errors import RemoteProtocolError
from vuser.backend import (
    VFIO_IRQ_INFO_EVENTFD, VFIO_IRQ_INFO_MASKABLE, VFIO_IRQ_SET_DATA_EVENTFD,
    VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE, DeviceInfo, DmaError, DmaPort,
    IrqInfo, RegionInfo,
)
from vuser.protocol.caps import Capabilities
from vuser.protocol.connection import Connection
from vuser.protocol.consts import HEADER_SIZE, Command
from vuser.protocol.events import NEED_DATA, BadMessage, ConnectionClosed, ErrorReply, Reply
from vuser.protocol.messages import Header, Version
from vuser.protocol.server import ServerCore
from vuser.protocol.state import Role
from vuser.transport.dma import DmaSpace

RW = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE

# Fake device register map (region 0).
REG_SCRATCH = 0x08
REG_DMA_ADDR = 0x10      # u64
REG_DMA_LEN = 0x18       # u32
REG_DMA_SEED = 0x1C      # u32
REG_DOORBELL = 0x20      # write: start a DMA task
REG_DMA_READ = 0x24      # write: start a DMA *read* task into region 0 at 0x800
REG_DONE = 0x28          # u32: completed DMAs (errors included)
REG_ERRNO = 0x2C         # u32: errno of the last failed DMA


def fill(seed: int, n: int) -> bytes:
    return bytes((seed + i) & 0xFF for i in range(n))


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError as e:
        assert e.errno == errno.EBADF
        return False
    return True


def open_fds() -> set[int]:
    """This process's open fds, after collecting garbage (so that objects an
    earlier test left behind close theirs now, not in the middle of a count).
    Compare with ``<=``: nothing new may be open; unrelated fds may close."""
    gc.collect()
    return {int(n) for n in os.listdir("/proc/self/fd")}


class FakeBackend:
    """A small device implementing ``ServerBackend``.

    Regions: 0 = 4 KiB RW registers; 1 = 256 B read-only; 2 = 16 KiB memfd,
    mmap-able, sparse area [4 KiB, 12 KiB); 7 = 256 B RW config; others empty.
    IRQs: INTx 1 (maskable), MSI 0, MSI-X 4, ERR 1, REQ 1.
    A write to REG_DOORBELL DMAs ``fill(seed, len)`` to the DMA address in its
    own task, then signals MSI-X vector 0. Records every call in ``calls``.
    """

    def __init__(self) -> None:
        self.regs = bytearray(4096)
        self.rom = bytes(range(256))
        self.config = bytearray(256)
        self.bar2_fd = os.memfd_create("fake-bar2")
        os.ftruncate(self.bar2_fd, 16384)
        self.irq_fds: dict[tuple[int, int], int] = {}
        self.calls: list[tuple[Any, ...]] = []
        self.dma: DmaPort | None = None
        self.fail_with: BaseException | None = None
        self.tasks: set[asyncio.Task[Any]] = set()
        self.resets = 0
        self.connects = 0
        self.disconnects = 0

    def _maybe_fail(self) -> None:
        if self.fail_with is not None:
            exc, self.fail_with = self.fail_with, None
            raise exc

    def device_info(self) -> DeviceInfo:
        return DeviceInfo()

    def region_info(self, index: int) -> RegionInfo:
        if index == 0:
            return RegionInfo(flags=RW, size=4096)
        if index == 1:
            return RegionInfo(flags=VFIO_REGION_INFO_FLAG_READ, size=256)
        if index == 2:
            return RegionInfo(flags=RW, size=16384, fd=self.bar2_fd, mmap_offset=0,
                              sparse_areas=((4096, 8192),))
        if index == 7:
            return RegionInfo(flags=RW, size=256)
        return RegionInfo()

    def irq_info(self, index: int) -> IrqInfo:
        counts = {0: 1, 1: 0, 2: 4, 3: 1, 4: 1}
        flags = VFIO_IRQ_INFO_EVENTFD | (VFIO_IRQ_INFO_MASKABLE if index == 0 else 0)
        return IrqInfo(flags=flags, count=counts[index])

    def _mem(self, index: int) -> bytearray:
        return {0: self.regs, 7: self.config}[index]

    def region_read(self, index: int, offset: int, count: int) -> bytes:
        self.calls.append(("read", index, offset, count))
        self._maybe_fail()
        if index == 1:
            return self.rom[offset:offset + count]
        if index == 2:
            return os.pread(self.bar2_fd, count, offset)
        return bytes(self._mem(index)[offset:offset + count])

    def region_write(self, index: int, offset: int, data: bytes) -> None:
        self.calls.append(("write", index, offset, bytes(data)))
        self._maybe_fail()
        if index == 2:
            os.pwrite(self.bar2_fd, data, offset)
            return
        self._mem(index)[offset:offset + len(data)] = data
        if index == 0 and offset == REG_DOORBELL:
            self._spawn(self._dma_write_job())
        if index == 0 and offset == REG_DMA_READ:
            self._spawn(self._dma_read_job())

    def set_irqs(self, index: int, flags: int, start: int, count: int,
                 fds: list[int], data: bytes) -> None:
        self.calls.append(("set_irqs", index, flags, start, count, len(fds), bytes(data)))
        try:
            self._maybe_fail()
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        if flags & VFIO_IRQ_SET_DATA_EVENTFD:
            for i in range(count):
                old = self.irq_fds.pop((index, start + i), None)
                if old is not None:
                    os.close(old)
                if fds:
                    self.irq_fds[index, start + i] = fds[i]
        elif count == 0:
            for key in [k for k in self.irq_fds if k[0] == index]:
                os.close(self.irq_fds.pop(key))

    def reset(self) -> None:
        self.calls.append(("reset",))
        self._maybe_fail()
        self.resets += 1
        self.regs[:] = bytes(len(self.regs))

    def client_connected(self, dma: DmaPort) -> None:
        self.connects += 1
        self.dma = dma

    def client_disconnected(self) -> None:
        self.disconnects += 1
        self.dma = None
        for task in self.tasks:
            task.cancel()
        for fd in self.irq_fds.values():
            os.close(fd)
        self.irq_fds.clear()

    def close(self) -> None:
        self.client_disconnected()
        os.close(self.bar2_fd)

    # device work ----------------------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _u32(self, off: int) -> int:
        return struct.unpack_from("<I", self.regs, off)[0]

    def _done(self, err: int) -> None:
        struct.pack_into("<II", self.regs, REG_DONE, self._u32(REG_DONE) + 1, err)

    async def _dma_write_job(self) -> None:
        addr = struct.unpack_from("<Q", self.regs, REG_DMA_ADDR)[0]
        n, seed = self._u32(REG_DMA_LEN), self._u32(REG_DMA_SEED)
        err = 0
        try:
            assert self.dma is not None
            await self.dma.dma_write(addr, fill(seed, n))
        except DmaError as e:
            err = e.errno
        self._done(err)
        fd = self.irq_fds.get((2, 0))
        if fd is not None:
            os.eventfd_write(fd, 1)

    async def _dma_read_job(self) -> None:
        addr = struct.unpack_from("<Q", self.regs, REG_DMA_ADDR)[0]
        n = min(self._u32(REG_DMA_LEN), 0x800)
        err = 0
        try:
            assert self.dma is not None
            self.regs[0x800:0x800 + n] = await self.dma.dma_read(addr, n)
        except DmaError as e:
            err = e.errno
        self._done(err)


class Pair:
    """A client ``Connection`` talking to a server ``Connection`` + ``ServerCore``."""

    def __init__(self, backend: FakeBackend | None = None, *, negotiate: bool = True,
                 client_caps: Capabilities | None = None,
                 server_caps: Capabilities | None = None) -> None:
        self.backend = backend or FakeBackend()
        self.client = Connection(Role.CLIENT, client_caps)
        self.server = Connection(Role.SERVER, server_caps)
        self.dma = DmaSpace(max_maps=(server_caps or Capabilities()).max_dma_maps)
        self.core = ServerCore(self.backend, self.dma, server_caps)
        self.server_fds: list[int] = []   # the server's copies of the last fds sent
        if negotiate:
            reply = self.call(Command.VERSION, Version(caps=self.client.caps.to_json()))
            assert isinstance(reply, Reply), reply

    def close(self) -> None:
        self.dma.close()
        self.backend.close()

    def _to_server(self, data: bytes, fds: Any = ()) -> bytes:
        """Feed the server; answer everything; the bytes it sends back."""
        self.server_fds = [os.dup(fd) for fd in fds]
        self.server.receive_data(data, self.server_fds)
        out = bytearray()
        self.reply_fds: list[int] = []
        while True:
            event = self.server.next_event()
            if event is NEED_DATA or isinstance(event, ConnectionClosed):
                self.last_server_event = event
                break
            reply = self.core.handle(event)
            if reply is not None:
                data, rfds = self.server.send(reply)
                out += data
                self.reply_fds += [os.dup(fd) for fd in rfds]
        return bytes(out)

    def call(self, command: Command, body: Any = None, fds: Any = (), *,
             no_reply: bool = False) -> Reply | ErrorReply | BadMessage | None:
        """One request through both connections; the client's view of the reply."""
        req = self.client.request(command, body, fds, no_reply=no_reply)
        data, sent_fds = self.client.send(req)
        back = self._to_server(data, sent_fds)
        if no_reply:
            assert back == b"", "a NO_REPLY request was answered"
            return None
        self.client.receive_data(back, self.reply_fds)
        event = self.client.next_event()
        assert self.client.next_event() is NEED_DATA
        return event

    def ok(self, command: Command, body: Any = None, fds: Any = ()) -> Any:
        """``call`` that must succeed; the reply body."""
        event = self.call(command, body, fds)
        assert isinstance(event, Reply), event
        return event

    def error(self, command: Command, body: Any = None, fds: Any = ()) -> int:
        """``call`` that must fail; the errno."""
        event = self.call(command, body, fds)
        assert isinstance(event, ErrorReply), event
        return event.errno

    def raw(self, data: bytes, fds: Any = ()) -> list[tuple[Header, bytes]]:
        """Raw bytes to the server; its replies as (header, payload)."""
        back = self._to_server(data, fds)
        out = []
        while back:
            hdr = Header.unpack(back)
            out.append((hdr, back[HEADER_SIZE:hdr.size]))
            back = back[hdr.size:]
        return out

    def raw_error(self, data: bytes, fds: Any = ()) -> int:
        """Raw bytes that must get exactly one header-only error reply; its errno."""
        replies = self.raw(data, fds)
        assert len(replies) == 1, replies
        hdr, payload = replies[0]
        assert hdr.flags == 0x21 and hdr.size == 16 and payload == b"", hdr
        assert hdr.error > 0
        return hdr.error

    def still_serves(self) -> None:
        """A valid request after a bad one is answered normally."""
        from vuser.protocol.messages import VfioDeviceInfo
        [(hdr, payload)] = self.raw(message(Command.DEVICE_GET_INFO, VfioDeviceInfo().pack(),
                                            msg_id=0x5151))
        assert hdr.flags == 1 and hdr.msg_id == 0x5151, hdr
        assert VfioDeviceInfo.unpack(payload).num_regions == 9


def message(command: int, payload: bytes = b"", *, msg_id: int = 0x7777, flags: int = 0,
            size: int | None = None) -> bytes:
    """A raw message with a hand-set header."""
    size = HEADER_SIZE + len(payload) if size is None else size
    return Header(msg_id=msg_id, command=command, size=size, flags=flags).pack() + payload


def expect_errno(exc: BaseException, err: int) -> None:
    assert isinstance(exc, RemoteProtocolError) and exc.errno == err, exc
