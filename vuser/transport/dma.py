"""Device DMA into the client's memory: the DMA_MAP table and the ``DmaPort``.

``DmaSpace`` is one connection's view of the client's memory (spec
"VFIO_USER_DMA_MAP"/"_UNMAP"):
- ``map``/``unmap``/``unmap_all`` keep the table the client builds with
  DMA_MAP/UNMAP: EEXIST when a map overlaps another (an identical re-map is
  accepted, as libvfio-user does, because QEMU aborts on a failed map after
  realize), ENOENT when an unmap covers nothing mapped (a mapping that
  straddles an edge of the unmapped range is split, as QEMU needs), ENOSPC
  past ``max_dma_maps``.
- A mapping with an fd whose file is sealed against shrinking (``seals.py``:
  QEMU's memfd guest RAM) is reached through an ``mmap(MAP_SHARED)`` of it.
  Mappings of one such file share one mmap of the whole file, keyed by
  (st_dev, st_ino) — QEMU sends an fd per section, and one per IOTLB entry
  under a vIOMMU, far more than RLIMIT_NOFILE. The received fd is closed at
  once; the mmap holds the file until its last mapping goes.
- A mapping with any other fd (an unsealed memfd, a tmpfs or hugetlbfs file,
  a device) is reached with ``pread``/``pwrite`` on one duplicate of the fd
  per file: a client that shrinks the file makes DMA past the new end fail
  EFAULT instead of killing the process with SIGBUS. The cost is a system
  call and a copy per access (the mmap path copies once, too).
- A mapping without an fd (anonymous guest RAM, ROM) is reached by DMA_READ /
  DMA_WRITE messages to the client, through a ``MessageDma``.

``translate(addr, n, write)`` is the one function that turns a bus address
range into pieces of those mappings. The table is a
``vuser.memory.intervals.IntervalMap``; the straddling-unmap rule above is
this module's own.

With a ``DmaSink`` (issue 5: the device's ``DeviceBinding``), mappings with an
fd are not mmapped here: after this table has validated them, the sink gets
exactly the pieces that change (``map``, ``unmap`` of the part of a mapping an
unmap covers, ``close``) and feeds the VM's guest RAM (``vuser.memory.guest``,
which mirrors it into the VM's GPA IOAS).
Device DMA then reaches that memory only through the ioasid model; this
space's own port serves the fd-less mappings and refuses the others (EFAULT).

With a sink, only shrink-sealed fds are accepted (EINVAL otherwise): the
IOMMU model hands out views of the mmap itself, and has no file path.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import mmap
import os
import stat
from dataclasses import dataclass
from typing import Protocol

from vuser.errors import RemoteProtocolError
from vuser.memory import PAGE_SIZE
from vuser.memory.intervals import U64_END, IntervalMap
from vuser.memory.seals import shrink_sealed
from vuser.backend import DmaError
from vuser.protocol.connection import close_fds
from vuser.protocol.consts import (
    MAX_DMA_MAPS, VFIO_USER_F_DMA_REGION_READ, VFIO_USER_F_DMA_REGION_WRITE,
)

log = logging.getLogger(__name__)

__all__ = ["DmaSpace", "DmaMapping", "DmaSink", "Segment", "MessageDma"]


class MessageDma(Protocol):
    """DMA by DMA_READ/DMA_WRITE messages (the transport chunks them)."""

    async def dma_read_message(self, addr: int, n: int) -> bytes: ...

    async def dma_write_message(self, addr: int, data: bytes) -> None: ...


class DmaSink(Protocol):
    """Where a connection's fd-backed mappings go (``devices.platform.DeviceBinding``).

    ``map`` raises ``RemoteProtocolError`` (the DMA_MAP's errno) and leaves
    ``fd`` to the caller; ``unmap`` is only given ranges ``map`` accepted.
    """

    def map(self, addr: int, size: int, fd: int, offset: int, *, readable: bool,
            writable: bool) -> None: ...

    def unmap(self, addr: int, size: int) -> None: ...

    def close(self) -> None: ...


class _File:
    """One client file, shared by the mappings into it: an mmap of it (sealed
    files), or a duplicate of its fd for pread/pwrite (``fd``, any other)."""

    def __init__(self, mm: mmap.mmap | None, key: tuple[int, ...] | None,
                 fd: int | None = None) -> None:
        self.mm, self.key, self.refs = mm, key, 0
        self.fd = fd

    def close(self) -> None:
        if self.mm is not None:
            self.mm.close()
        if self.fd is not None:
            close_fds((self.fd,))
            self.fd = None

    def read(self, at: int, n: int, addr: int) -> bytes:
        if self.mm is not None:
            return self.mm[at:at + n]
        assert self.fd is not None
        try:
            data = os.pread(self.fd, n, at)
        except OSError as e:
            raise DmaError(errno.EFAULT, addr, n, f"DMA read of the client's file: {e}") from None
        if len(data) != n:
            raise DmaError(errno.EFAULT, addr, n, "the client's file ends before the mapping")
        return data

    def write(self, at: int, data: memoryview, addr: int) -> None:
        if self.mm is not None:
            self.mm[at:at + len(data)] = data
            return
        assert self.fd is not None
        n = len(data)
        try:
            st = os.fstat(self.fd)
            if stat.S_ISREG(st.st_mode) and at + n > st.st_size:
                # pwrite would grow a file the client shrank: refuse instead.
                raise DmaError(errno.EFAULT, addr, n, "the client's file ends before the mapping")
            done = os.pwrite(self.fd, data, at)
        except OSError as e:
            raise DmaError(errno.EFAULT, addr, n, f"DMA write to the client's file: {e}") from None
        if done != n:
            raise DmaError(errno.EFAULT, addr, n, f"short DMA write ({done} of {n} bytes)")


@dataclass(frozen=True)
class DmaMapping:
    """One DMA_MAP: ``size`` bytes of client memory at bus address ``addr``."""

    addr: int
    size: int
    flags: int          # VFIO_USER_F_DMA_REGION_READ | _WRITE
    offset: int         # file offset of ``addr``
    file: _File | None  # None: reached by DMA_READ/WRITE messages
    ident: tuple[int, int] | None = None  # (st_dev, st_ino) of the file
    sunk: bool = False  # handed to the DmaSink: reached through the model only

    @property
    def last(self) -> int:
        return self.addr + self.size - 1


@dataclass(frozen=True)
class Segment:
    """``length`` bytes at ``addr``, all inside ``mapping``."""

    mapping: DmaMapping
    addr: int
    length: int


class DmaSpace:
    """The client's memory as one connection sees it; a ``DmaPort`` for devices."""

    def __init__(self, message_dma: MessageDma | None = None, *,
                 max_maps: int = MAX_DMA_MAPS, sink: DmaSink | None = None) -> None:
        self.message_dma = message_dma
        self.sink = sink
        self.max_maps = max_maps
        self._maps: IntervalMap[DmaMapping] = IntervalMap()
        self._files: dict[tuple[int, ...], _File] = {}
        self.closed = False

    @property
    def mappings(self) -> tuple[DmaMapping, ...]:
        return tuple(self._maps.values())

    # --- the table (DMA_MAP / DMA_UNMAP) -------------------------------------

    def map(self, addr: int, size: int, flags: int, fd: int | None, offset: int) -> None:
        """Add a mapping; always consumes ``fd``. ``RemoteProtocolError`` on failure."""
        try:
            self._map(addr, size, flags, fd, offset)
        finally:
            if fd is not None:
                close_fds((fd,))

    def _map(self, addr: int, size: int, flags: int, fd: int | None, offset: int) -> None:
        if self.closed:
            raise RemoteProtocolError(errno.ENOTCONN, "DMA space closed")
        _check_range(addr, size)
        ident = None
        if fd is not None:
            st = _fstat(fd)
            ident = (st.st_dev, st.st_ino)
        overlap = self._maps.overlapping(addr, addr + size - 1)
        if overlap:
            old = overlap[-1]
            if (old.addr, old.size, old.flags, old.ident) == (addr, size, flags, ident) and \
                    (fd is None or old.offset == offset):
                return  # the same mapping again: accepted, as libvfio-user does
            raise RemoteProtocolError(errno.EEXIST, f"DMA map {addr:#x}+{size:#x} overlaps "
                                      f"{old.addr:#x}+{old.size:#x}")
        if len(self._maps) >= self.max_maps:
            raise RemoteProtocolError(errno.ENOSPC, f"more than {self.max_maps} DMA maps")
        file = None
        sunk = fd is not None and self.sink is not None
        if sunk:
            assert self.sink is not None and fd is not None
            if not shrink_sealed(fd):
                raise RemoteProtocolError(
                    errno.EINVAL, f"DMA map {addr:#x}+{size:#x}: the fd is not sealed against "
                    "shrinking (F_SEAL_SHRINK); use memory-backend-memfd with seal=on")
            self.sink.map(addr, size, fd, offset,
                          readable=bool(flags & VFIO_USER_F_DMA_REGION_READ),
                          writable=bool(flags & VFIO_USER_F_DMA_REGION_WRITE))
        elif fd is not None:
            file = self._open(fd, offset, size, bool(flags & VFIO_USER_F_DMA_REGION_WRITE))
        file_refs(file, +1)
        self._maps.insert(addr, addr + size - 1,
                          DmaMapping(addr, size, flags, offset, file, ident, sunk))
        log.debug("dma map %#x+%#x flags %d %s", addr, size, flags,
                  "fd" if file else "message")

    def _open(self, fd: int, offset: int, size: int, writable: bool) -> _File:
        st = _fstat(fd)
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        regular = stat.S_ISREG(st.st_mode)
        if regular and offset + size > st.st_size:
            raise RemoteProtocolError(errno.EINVAL, f"DMA map {offset:#x}+{size:#x} "
                                      f"beyond the file's {st.st_size:#x} bytes")
        sealed = regular and shrink_sealed(fd)
        key = (st.st_dev, st.st_ino, writable, sealed)
        file = self._files.get(key)
        try:
            if not sealed:  # pread/pwrite: cannot fault (module doc)
                _check_file_io(fd, offset, writable)
                if file is None:
                    file = self._files[key] = _File(None, key, os.dup(fd))
                return file
            if file is None or file.mm is None or len(file.mm) < offset + size:
                mm = mmap.mmap(fd, st.st_size, mmap.MAP_SHARED, prot)
                file = self._files[key] = _File(mm, key)
            return file
        except OSError as e:
            raise RemoteProtocolError(e.errno or errno.EINVAL, f"mmap of the DMA fd: {e}") from None
        except (ValueError, OverflowError) as e:
            raise RemoteProtocolError(errno.EINVAL, f"mmap of the DMA fd: {e}") from None

    def unmap(self, addr: int, size: int) -> None:
        """Remove what is mapped in ``[addr, addr + size)``; ENOENT if nothing is.

        QEMU's unmaps need not match its maps one-to-one (memory sections are
        re-split as the flat view changes, and a vIOMMU unmaps IOTLB ranges),
        so at this boundary a mapping that straddles an edge of the range is
        split and keeps its part outside. This departs from iommufd's
        no-split rule on purpose (issue 5: "follow QEMU's ranges").
        """
        _check_range(addr, size)
        last = addr + size - 1
        lo, hi = self._maps.span(addr, last)
        if lo >= hi:
            raise RemoteProtocolError(errno.ENOENT, f"no DMA mapping in {addr:#x}+{size:#x}")
        keep = []
        first, final = self._maps.at(lo)[2], self._maps.at(hi - 1)[2]
        if (first.sunk and first.addr < addr and addr % PAGE_SIZE) or \
                (final.sunk and final.last > last and (last + 1) % PAGE_SIZE):
            raise RemoteProtocolError(errno.EINVAL, f"DMA unmap {addr:#x}+{size:#x} would split "
                                      "an fd-backed mapping inside a page")
        if first.addr < addr:
            keep.append(_piece(first, first.addr, addr - 1))
        if final.last > last:
            keep.append(_piece(final, last + 1, final.last))
        for m in keep:
            file_refs(m.file, +1)
        gone = self._maps.delete_span(lo, hi)
        for m in reversed(gone):
            if m.sunk:  # the sink loses only the covered part
                first, final_ = max(m.addr, addr), min(m.last, last)
                self._sink_unmap(first, final_ - first + 1)
            self._release(m, sink=False)
        for m in keep:
            self._maps.insert(m.addr, m.last, m)
        log.debug("dma unmap %#x+%#x (%d mappings touched)", addr, size, hi - lo)

    def unmap_all(self) -> None:
        while self._maps:
            self._release(self._maps.delete_at(self._maps.at(len(self._maps) - 1)[0]))

    def close(self) -> None:
        """The client is gone: drop every mapping; later DMA fails ENOTCONN."""
        self.unmap_all()
        self.closed = True
        if self.sink is not None:
            self.sink.close()

    def _sink_unmap(self, addr: int, size: int) -> None:
        assert self.sink is not None
        self.sink.unmap(addr, size)

    def _release(self, m: DmaMapping, sink: bool = True) -> None:
        """``m`` left the table: the sink loses it (unless done), its file a user."""
        if m.sunk and sink:
            self._sink_unmap(m.addr, m.size)
        file_refs(m.file, -1)
        if m.file is not None and m.file.refs == 0:
            if m.file.key is not None and self._files.get(m.file.key) is m.file:
                del self._files[m.file.key]
            m.file.close()

    # --- translation: the one narrow function --------------------------------

    def translate(self, addr: int, n: int, write: bool) -> list[Segment]:
        """The mappings that cover ``[addr, addr + n)``, in order.

        Raises ``DmaError``: EFAULT where no mapping covers a byte, EPERM where
        a mapping lacks the READ/WRITE permission, ENOTCONN once closed.
        """
        segments, pos = [], 0
        while pos < n:
            seg = self._segment(addr + pos, n - pos, write, addr, n)
            segments.append(seg)
            pos += seg.length
        return segments

    def _segment(self, addr: int, n: int, write: bool, whole: int, whole_n: int) -> Segment:
        if self.closed:
            raise DmaError(errno.ENOTCONN, whole, whole_n, "the client is gone")
        m = self._maps.find(addr)
        if m is None or addr + n > U64_END:
            raise DmaError(errno.EFAULT, whole, whole_n, f"DMA to unmapped {addr:#x}")
        if m.sunk:
            raise DmaError(errno.EFAULT, whole, whole_n,
                           f"{addr:#x} is fd-backed: reached through the IOMMU model only")
        need = VFIO_USER_F_DMA_REGION_WRITE if write else VFIO_USER_F_DMA_REGION_READ
        if not m.flags & need:
            raise DmaError(errno.EPERM, whole, whole_n,
                           f"DMA {'write' if write else 'read'} to {addr:#x} not permitted")
        return Segment(m, addr, min(n, m.addr + m.size - addr))

    # --- DmaPort --------------------------------------------------------------

    async def dma_read(self, addr: int, n: int) -> bytes:
        self.translate(addr, n, write=False)  # all of it is reachable, or nothing happens
        out, pos = bytearray(), 0
        while pos < n:
            seg = self._segment(addr + pos, n - pos, False, addr, n)
            m = seg.mapping
            if m.file is not None:
                at = m.offset + (seg.addr - m.addr)
                out += m.file.read(at, seg.length, addr)
            else:
                out += await self._messages(addr, n).dma_read_message(seg.addr, seg.length)
            pos += seg.length
        return bytes(out)

    async def dma_write(self, addr: int, data: bytes) -> None:
        n = len(data)
        self.translate(addr, n, write=True)
        view, pos = memoryview(data), 0
        while pos < n:
            seg = self._segment(addr + pos, n - pos, True, addr, n)
            m = seg.mapping
            if m.file is not None:
                at = m.offset + (seg.addr - m.addr)
                m.file.write(at, view[pos:pos + seg.length], addr)
            else:
                await self._messages(addr, n).dma_write_message(
                    seg.addr, bytes(view[pos:pos + seg.length]))
            pos += seg.length

    def _messages(self, addr: int, n: int) -> MessageDma:
        if self.message_dma is None:
            raise DmaError(errno.EFAULT, addr, n, "no client to send DMA messages to")
        return self.message_dma


def _piece(m: DmaMapping, start: int, last: int) -> DmaMapping:
    """The part ``[start, last]`` of mapping ``m``."""
    return DmaMapping(start, last - start + 1, m.flags, m.offset + (start - m.addr),
                      m.file, m.ident, m.sunk)


def _check_range(addr: int, size: int) -> None:
    if size == 0 or addr + size > U64_END:
        raise RemoteProtocolError(errno.EINVAL, f"bad DMA range {addr:#x}+{size:#x}")


def file_refs(file: _File | None, delta: int) -> None:
    if file is not None:
        file.refs += delta


def _check_file_io(fd: int, offset: int, writable: bool) -> None:
    """The checks mmap would make, for an fd reached by pread/pwrite."""
    mode = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
    if mode == os.O_WRONLY or (writable and mode == os.O_RDONLY):
        raise RemoteProtocolError(errno.EACCES, "the DMA fd is not open for "
                                  f"{'reading and writing' if writable else 'reading'}")
    try:
        os.pread(fd, 0, offset)
    except OSError as e:  # ESPIPE: a pipe, socket or eventfd is no memory
        raise RemoteProtocolError(errno.EINVAL, f"the DMA fd cannot be read: {e}") from None


def _fstat(fd: int) -> os.stat_result:
    try:
        return os.fstat(fd)
    except OSError as e:
        raise RemoteProtocolError(errno.EBADF, f"DMA fd: {e}") from None
