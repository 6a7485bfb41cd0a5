"""The server side of vfio-user, sans-IO: a request in, a reply out.

``ServerCore(backend, dma).handle(event)`` validates a received ``Request``
(argsz, flags, indexes, ranges, fd counts), calls the ``ServerBackend`` or the
DMA table with plain values, and returns the ``Reply`` or ``ErrorReply`` to
send (None for NO_REPLY). Validate first, then act: nothing reaches the
backend before every check has passed. ``region_access`` is the same for
REGION_READ/WRITE with plain values and no event objects, the ``access`` of
``Connection.serve_region`` (the path of every guest MMIO access).

Errno choices (a peer sees only the number; QEMU propagates or logs it):
- EINVAL: a malformed or invalid request: bad argsz, unknown or conflicting
  flags, fields that must be zero, an index out of range, an access beyond a
  region or against its READ/WRITE flags, SET_IRQS rules (linux/vfio.h
  ``vfio_set_irqs_validate_and_prepare``), fds where none belong, a command
  before VERSION. libvfio-user answers all of these EINVAL too.
- E2BIG: a message or data count above ``max_data_xfer_size``.
- ENOSYS: a command number we do not know or that a server does not handle
  (DMA_READ/WRITE, the obsolete DIRTY_PAGES). libvfio-user says EINVAL here;
  we follow QEMU, which answers unknown requests ENOSYS, because the two cases
  are worth telling apart and no client depends on either.
- DMA table: EEXIST for an overlapping map, ENOENT for an unmap that matches
  no mapping exactly, ENOSPC past ``max_dma_maps`` (spec; libvfio-user).
- ENOTTY: DEVICE_FEATURE (no features: no migration, no dma-buf), as the
  kernel answers an unknown VFIO_DEVICE_FEATURE. MIG_DATA_READ/WRITE: EINVAL,
  as libvfio-user without migration.
- EIO: the backend failed with something other than ``RemoteProtocolError``
  (a device bug); it is logged with its traceback and the server keeps going.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Protocol

from vuser.errors import LocalProtocolError, RemoteProtocolError
from vuser.backend import (
    VFIO_DEVICE_FLAGS_RESET, VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_BOOL,
    VFIO_IRQ_SET_DATA_EVENTFD, VFIO_IRQ_SET_DATA_NONE, VFIO_PCI_ERR_IRQ_INDEX,
    VFIO_PCI_REQ_IRQ_INDEX, VFIO_REGION_INFO_FLAG_CAPS, VFIO_REGION_INFO_FLAG_MMAP,
    VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE, DeviceInfo, RegionInfo,
    ServerBackend,
)
from vuser.protocol.caps import Capabilities, negotiate
from vuser.protocol.connection import close_fds
from vuser.protocol.consts import (
    HEADER_SIZE, MAX_WRITE_MULTI, VFIO_DMA_UNMAP_FLAG_ALL, VFIO_USER_F_DMA_REGION_READ,
    VFIO_USER_F_DMA_REGION_WRITE, WRITE_MULTI_DATA, Command,
)
from vuser.protocol.events import BadMessage, ErrorReply, Reply, Request
from vuser.protocol.messages import (
    RegionData, RegionInfoReply, RegionIoFdsReply, VfioDeviceInfo, VfioIrqInfo,
    VfioIrqSet, VfioRegionInfo, VfioUserDmaMap, VfioUserDmaUnmap, VfioUserRegionAccess,
    VfioUserRegionIoFds, VfioUserWriteMultiHead,
)

log = logging.getLogger(__name__)

VFIO_IRQ_SET_DATA_TYPE_MASK = 0x7
VFIO_IRQ_SET_ACTION_TYPE_MASK = 0x38
_DMA_MAP_FLAGS = VFIO_USER_F_DMA_REGION_READ | VFIO_USER_F_DMA_REGION_WRITE


class DmaTable(Protocol):
    """Where DMA_MAP/UNMAP land (``transport.dma.DmaSpace``). Errors are
    ``RemoteProtocolError``: EEXIST, ENOENT, ENOSPC, EINVAL."""

    def map(self, addr: int, size: int, flags: int, fd: int | None, offset: int) -> None:
        """Add a mapping; takes ownership of ``fd`` (closed on failure too)."""

    def unmap(self, addr: int, size: int) -> None: ...

    def unmap_all(self) -> None: ...


def _invalid(why: str) -> RemoteProtocolError:
    return RemoteProtocolError(errno.EINVAL, why)


def _one_bit(v: int) -> bool:
    return v != 0 and v & (v - 1) == 0


class ServerCore:
    """Answers one client's requests for ``backend`` (one per connection)."""

    def __init__(self, backend: ServerBackend, dma: DmaTable,
                 caps: Capabilities | None = None) -> None:
        self.backend = backend
        self.dma = dma
        self.caps = caps or Capabilities()
        self.peer_caps: Capabilities | None = None     # the client's, after VERSION
        self.advertised: Capabilities | None = None    # what our VERSION reply said
        self._device: DeviceInfo | None = None
        self._regions: dict[int, RegionInfo] = {}
        self._handlers: dict[Command, Callable[[Request, list[int]], tuple[Any, tuple]]] = {
            Command.VERSION: self._version,
            Command.DMA_MAP: self._dma_map,
            Command.DMA_UNMAP: self._dma_unmap,
            Command.DEVICE_GET_INFO: self._device_get_info,
            Command.DEVICE_GET_REGION_INFO: self._region_info,
            Command.DEVICE_GET_REGION_IO_FDS: self._region_io_fds,
            Command.DEVICE_GET_IRQ_INFO: self._irq_info,
            Command.DEVICE_SET_IRQS: self._set_irqs,
            Command.REGION_READ: self._region_read,
            Command.REGION_WRITE: self._region_write,
            Command.REGION_WRITE_MULTI: self._write_multi,
            Command.DEVICE_RESET: self._reset,
            Command.DEVICE_FEATURE: self._feature,
            Command.MIG_DATA_READ: self._mig_data,
            Command.MIG_DATA_WRITE: self._mig_data,
        }

    def handle(self, event: Request | BadMessage) -> Reply | ErrorReply | None:
        """The reply to send for ``event``, or None when none is owed.

        Closes every fd of ``event`` that it does not hand to the backend or
        the DMA table, whatever happens.
        """
        if isinstance(event, BadMessage):
            log.debug("msg %#x: rejected (%s)", event.msg_id, event.reason)
            if event.reply_expected:
                return ErrorReply(event.msg_id, event.command, event.errno)
            return None
        fds = list(event.fds)
        reply: Reply | ErrorReply
        try:
            handler = self._handlers.get(event.command)
            if handler is None:
                raise RemoteProtocolError(errno.ENOSYS, f"{event.command!r} not served")
            body, reply_fds = handler(event, fds)
            reply = Reply(event.msg_id, event.command, body, reply_fds)
        except RemoteProtocolError as e:
            log.debug("msg %#x %s: %s", event.msg_id, event.command.name, e)
            reply = ErrorReply(event.msg_id, event.command, e.errno)
        except Exception:
            log.exception("msg %#x %s: the device failed", event.msg_id, event.command.name)
            reply = ErrorReply(event.msg_id, event.command, errno.EIO)
        finally:
            if fds:
                close_fds(fds)
        if event.no_reply:
            if isinstance(reply, ErrorReply):
                log.warning("msg %#x %s (no reply wanted) failed: errno %d",
                            event.msg_id, event.command.name, reply.errno)
            return None
        return reply

    def region_access(self, msg_id: int, command: int, index: int, offset: int, count: int,
                      data: bytes | None, no_reply: bool) -> bytes | None:
        """REGION_READ (``data`` None) or REGION_WRITE with plain values: what
        ``handle`` does for such a ``Request`` (same checks, same backend calls,
        same log lines), for ``Connection.serve_region``. The bytes read, or
        None for a write; ``RemoteProtocolError`` with the errno to reply
        (EIO when the device failed)."""
        try:
            if data is None:
                self._check_access(index, offset, count, VFIO_REGION_INFO_FLAG_READ)
                out = self.backend.region_read(index, offset, count)
                if len(out) != count:
                    raise LocalProtocolError(f"region {index} read gave {len(out)} bytes, "
                                             f"not {count}")
                return out if out.__class__ is bytes else bytes(out)
            self._check_access(index, offset, count, VFIO_REGION_INFO_FLAG_WRITE)
            self.backend.region_write(index, offset, data)
            return None
        except RemoteProtocolError as e:
            log.debug("msg %#x %s: %s", msg_id, Command(command).name, e)
            err = e
        except Exception:
            log.exception("msg %#x %s: the device failed", msg_id, Command(command).name)
            err = RemoteProtocolError(errno.EIO, "the device failed")
        if no_reply:
            log.warning("msg %#x %s (no reply wanted) failed: errno %d",
                        msg_id, Command(command).name, err.errno)
        raise err

    # --- device facts (static for the life of a device) ---------------------

    def _device_info(self) -> DeviceInfo:
        if self._device is None:
            self._device = self.backend.device_info()
        return self._device

    def _region(self, index: int) -> RegionInfo:
        if not 0 <= index < self._device_info().num_regions:
            raise _invalid(f"region index {index} out of range")
        info = self._regions.get(index)
        if info is None:
            info = self._regions[index] = self.backend.region_info(index)
        return info

    def _check_access(self, index: int, offset: int, count: int, need: int) -> None:
        if count > self.caps.max_data_xfer_size:
            raise RemoteProtocolError(errno.E2BIG, f"access of {count} bytes")
        info = self._regions.get(index)     # cached: an index already checked in range
        if info is None:
            info = self._region(index)
        if offset + count > info.size:
            raise _invalid(f"access {offset:#x}+{count} beyond region {index} "
                           f"of {info.size:#x} bytes")
        if not info.flags & need:
            what = "read" if need == VFIO_REGION_INFO_FLAG_READ else "write"
            raise _invalid(f"region {index} does not allow {what}")

    # --- handlers: (request, fds) -> (reply body, reply fds) ------------------
    # A handler pops from ``fds`` what it hands over; the rest is closed.

    def _version(self, req: Request, fds: list[int]) -> tuple[Any, tuple]:
        size = req.size or HEADER_SIZE + len(req.body.encode())
        reply, self.peer_caps, self.advertised = negotiate(self.caps, req.body,
                                                           size - HEADER_SIZE)
        return reply, ()

    def _dma_map(self, req: Request, fds: list[int]) -> tuple[Any, tuple]:
        m: VfioUserDmaMap = req.body
        if m.argsz < VfioUserDmaMap.SIZE:
            raise _invalid(f"DMA_MAP argsz {m.argsz}")
        if m.flags & ~_DMA_MAP_FLAGS or not m.flags:
            raise _invalid(f"DMA_MAP flags {m.flags:#x}")
        if m.size == 0 or m.addr + m.size > 1 << 64:
            raise _invalid(f"DMA_MAP range {m.addr:#x}+{m.size:#x}")
        fd = fds.pop() if fds else None
        self.dma.map(m.addr, m.size, m.flags, fd, m.offset)
        return None, ()

    def _dma_unmap(self, req: Request, fds: list[int]) -> tuple[Any, tuple]:
        u: VfioUserDmaUnmap = req.body
        if u.argsz < VfioUserDmaUnmap.SIZE:
            raise _invalid(f"DMA_UNMAP argsz {u.argsz}")
        if u.flags & ~VFIO_DMA_UNMAP_FLAG_ALL:
            raise _invalid(f"DMA_UNMAP flags {u.flags:#x} (no dirty bitmaps)")
        if u.flags & VFIO_DMA_UNMAP_FLAG_ALL:
            if u.addr or u.size:
                raise _invalid("DMA_UNMAP_FLAG_ALL with an address or size")
            self.dma.unmap_all()
        else:
            self.dma.unmap(u.addr, u.size)
        return u, ()

    def _device_get_info(self, req: Request, fds: list[int]) -> tuple[Any, tuple]:
        q: VfioDeviceInfo = req.body
        if q.argsz < VfioDeviceInfo.SIZE:
            raise _invalid(f"DEVICE_GET_INFO argsz {q.argsz}")
        if q.flags:
            raise _invalid(f"DEVICE_GET_INFO flags {q.flags:#x}")
        info = self._device_info()
        return VfioDeviceInfo(flags=info.flags, num_regions=info.num_regions,
                              num_irqs=info.num_irqs), ()

    def _region_info(self, req: Request, fds: list[int]) -> tuple[Any, tuple]:
        q: VfioRegionInfo = req.body
        if q.argsz < VfioRegionInfo.SIZE:
            raise _invalid(f"GET_REGION_INFO argsz {q.argsz}")
        if q.flags:
            raise _invalid(f"GET_REGION_INFO flags {q.flags:#x}")
        info = self._region(q.index)
        if info.fd is not None and self.peer_caps is not None and \
                self.peer_caps.max_msg_fds == 0:
            info = replace(info, fd=None, sparse_areas=(),  # the client takes no fds
                           flags=info.flags & ~VFIO_REGION_INFO_FLAG_MMAP)
        flags = info.flags
        if info.fd is not None:
            flags |= VFIO_REGION_INFO_FLAG_MMAP
        elif flags & VFIO_REGION_INFO_FLAG_MMAP:
            raise LocalProtocolError(f"region {q.index} is MMAP without an fd")
        sparse = tuple(info.sparse_areas) or None
        if sparse:
            if info.fd is None or any(o + s > info.size for o, s in sparse):
                raise LocalProtocolError(f"region {q.index}: bad sparse areas {sparse}")
            flags |= VFIO_REGION_INFO_FLAG_CAPS
        needed = VfioRegionInfo.SIZE + (RegionInfoReply.caps_size(len(sparse)) if sparse else 0)
        head = VfioRegionInfo(argsz=needed, flags=flags, index=q.index,
                              cap_offset=VfioRegionInfo.SIZE if sparse else 0,
                              size=info.size, offset=info.mmap_offset)
        if q.argsz < needed:
            # Too small for the chain: say how much is needed, send no fd (QEMU
            # asks again with argsz = needed and takes the fd from that reply).
            return RegionInfoReply(head, None), ()
        return RegionInfoReply(head, sparse), (() if info.fd is None else (info.fd,))

    def _region_io_fds(self, req: Request, fds: list[int]) -> tuple[Any, tuple]:
        q: VfioUserRegionIoFds = req.body
        if q.argsz < VfioUserRegionIoFds.SIZE:
            raise _invalid(f"GET_REGION_IO_FDS argsz {q.argsz}")
        if q.flags:
            raise _invalid(f"GET_REGION_IO_FDS flags {q.flags:#x}")
        self._region(q.index)
        # No region offers ioeventfds or ioregionfds: zero sub-regions.
        return RegionIoFdsReply(VfioUserRegionIoFds(index=q.index, count=0)), ()

    def _irq_index(self, index: int) -> None:
        if not 0 <= index < self._device_info().num_irqs:
            raise _invalid(f"IRQ index {index} out of range")

    def _irq_info(self, req: Request, fds: list[int]) -> tuple[Any, tuple]:
        q: VfioIrqInfo = req.body
        if q.argsz < VfioIrqInfo.SIZE:
            raise _invalid(f"GET_IRQ_INFO argsz {q.argsz}")
        if q.flags:
            raise _invalid(f"GET_IRQ_INFO flags {q.flags:#x}")
        self._irq_index(q.index)
        info = self.backend.irq_info(q.index)
        return VfioIrqInfo(flags=info.flags, index=q.index, count=info.count), ()

    def _set_irqs(self, req: Request, fds: list[int]) -> tuple[Any, tuple]:
        s: VfioIrqSet = req.body.irq_set
        data: bytes = req.body.data
        if s.argsz != VfioIrqSet.SIZE + len(data):
            raise _invalid(f"SET_IRQS argsz {s.argsz} for {VfioIrqSet.SIZE + len(data)} bytes")
        self._irq_index(s.index)
        dtype = s.flags & VFIO_IRQ_SET_DATA_TYPE_MASK
        action = s.flags & VFIO_IRQ_SET_ACTION_TYPE_MASK
        if s.flags & ~(VFIO_IRQ_SET_DATA_TYPE_MASK | VFIO_IRQ_SET_ACTION_TYPE_MASK):
            raise _invalid(f"SET_IRQS unknown flags {s.flags:#x}")
        if not _one_bit(dtype) or not _one_bit(action):
            raise _invalid(f"SET_IRQS needs one data type and one action, flags {s.flags:#x}")
        count = self.backend.irq_info(s.index).count
        if s.start >= count or s.start + s.count > count:
            raise _invalid(f"SET_IRQS {s.start}+{s.count} beyond {count} vectors")
        if s.index in (VFIO_PCI_ERR_IRQ_INDEX, VFIO_PCI_REQ_IRQ_INDEX) and \
                action != VFIO_IRQ_SET_ACTION_TRIGGER:
            raise _invalid("ERR and REQ IRQs only take TRIGGER")
        if s.count == 0 and s.flags != VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER:
            raise _invalid("count 0 only with DATA_NONE | ACTION_TRIGGER")
        if len(data) != (s.count if dtype == VFIO_IRQ_SET_DATA_BOOL else 0):
            raise _invalid(f"SET_IRQS with {len(data)} data bytes")
        if dtype == VFIO_IRQ_SET_DATA_EVENTFD:
            if len(fds) not in (0, s.count):
                raise _invalid(f"SET_IRQS with {len(fds)} fds for {s.count} vectors")
        elif fds:
            raise _invalid(f"SET_IRQS without DATA_EVENTFD carries {len(fds)} fds")
        handed, fds[:] = fds[:], []
        self.backend.set_irqs(s.index, s.flags, s.start, s.count, handed, data)
        return None, ()

    def _region_read(self, req: Request, fds: list[int]) -> tuple[Any, tuple]:
        a: VfioUserRegionAccess = req.body
        self._check_access(a.region, a.offset, a.count, VFIO_REGION_INFO_FLAG_READ)
        data = self.backend.region_read(a.region, a.offset, a.count)
        if len(data) != a.count:
            raise LocalProtocolError(f"region {a.region} read gave {len(data)} bytes, "
                                     f"not {a.count}")
        return RegionData(a, bytes(data)), ()

    def _region_write(self, req: Request, fds: list[int]) -> tuple[Any, tuple]:
        w: RegionData = req.body
        a = w.access
        self._check_access(a.region, a.offset, a.count, VFIO_REGION_INFO_FLAG_WRITE)
        self.backend.region_write(a.region, a.offset, w.data)
        return a, ()

    def _write_multi(self, req: Request, fds: list[int]) -> tuple[Any, tuple]:
        entries = req.body.entries
        if len(entries) > MAX_WRITE_MULTI:
            raise _invalid(f"{len(entries)} writes in one REGION_WRITE_MULTI")
        for e in entries:
            if e.count > WRITE_MULTI_DATA:
                raise _invalid(f"write-multi entry of {e.count} bytes")
            self._check_access(e.region, e.offset, e.count, VFIO_REGION_INFO_FLAG_WRITE)
        for e in entries:
            self.backend.region_write(e.region, e.offset, e.data[:e.count])
        return VfioUserWriteMultiHead(wr_cnt=len(entries)), ()

    def _reset(self, req: Request, fds: list[int]) -> tuple[Any, tuple]:
        if not self._device_info().flags & VFIO_DEVICE_FLAGS_RESET:
            raise _invalid("the device has no reset")
        self.backend.reset()
        return None, ()

    def _feature(self, req: Request, fds: list[int]) -> tuple[Any, tuple]:
        if req.body.feature.argsz < 8:
            raise _invalid(f"DEVICE_FEATURE argsz {req.body.feature.argsz}")
        raise RemoteProtocolError(errno.ENOTTY, "no device features")

    def _mig_data(self, req: Request, fds: list[int]) -> tuple[Any, tuple]:
        mig = getattr(req.body, "mig", req.body)
        if mig.argsz < 8:
            raise _invalid(f"{req.command.name} argsz {mig.argsz}")
        raise _invalid("the device does not support migration")
