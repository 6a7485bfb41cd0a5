"""Interrupts: the five VFIO IRQ indexes, eventfd delivery and SET_IRQS semantics.

Indexes (linux/vfio.h): INTx 0, MSI 1, MSI-X 2, ERR 3, REQ 4. INTx, MSI and
MSI-X are exclusive (one "active" at a time, like vfio-pci's ``irq_type``);
ERR and REQ are independent single triggers. Delivery writes an 8-byte 1 to the
eventfd the client gave for that vector (QEMU wires it to KVM or its own
handler).

SET_IRQS (``set_irqs``) validates everything first, then acts, and owns the fds
it is handed: they are closed on error, on replace, on disable, on ``reset`` and
on ``close_all`` (client disconnect). Rules, each violation ``EINVAL`` (as
libvfio-user ``dev_set_irqs_validate`` and vfio-pci
``vfio_set_irqs_validate_and_prepare`` answer):

- index 0..4; no flag outside DATA_* | ACTION_*; exactly one DATA_* and one
  ACTION_*; ``start``/``count`` inside the index's vector count;
- ``count == 0`` only with ACTION_TRIGGER | DATA_NONE: disables the index;
- DATA_NONE: no data, no fds; DATA_BOOL: ``count`` bytes, no fds;
  DATA_EVENTFD: no data, ``count`` fds or none (none, or an fd of -1,
  de-assigns), no fd twice;
- ERR/REQ take ACTION_TRIGGER only; MASK/UNMASK need the index active, and
  DATA_EVENTFD with them only as INTx UNMASK (the KVM resample fd);
- enabling INTx, MSI or MSI-X while another of them is active fails; a
  NONE/BOOL trigger of one of them needs it active.

INTx follows vfio-pci: it is a level (``intx_assert``/``intx_deassert``,
reflected in Status.INTERRUPT by the device); it is delivered when asserted,
not disabled by Command.INTX_DISABLE and not masked, and delivering it masks it
(VFIO_IRQ_INFO_AUTOMASKED) until UNMASK, which re-delivers if it is still
asserted. MSI/MSI-X vectors can be masked through SET_IRQS; a masked vector's
event sets its pending bit (read through the PBA) and is sent on unmask.
"""

from __future__ import annotations

import enum
import errno
import logging
import os
from collections.abc import Callable, Sequence
from typing import Protocol

from vuser.errors import LocalProtocolError, RemoteProtocolError
from vuser.backend import (
    VFIO_IRQ_INFO_AUTOMASKED, VFIO_IRQ_INFO_EVENTFD, VFIO_IRQ_INFO_MASKABLE,
    VFIO_IRQ_INFO_NORESIZE, VFIO_IRQ_SET_ACTION_MASK, VFIO_IRQ_SET_ACTION_TRIGGER,
    VFIO_IRQ_SET_ACTION_UNMASK, VFIO_IRQ_SET_DATA_BOOL, VFIO_IRQ_SET_DATA_EVENTFD,
    VFIO_IRQ_SET_DATA_NONE, IrqInfo,
)

__all__ = ["IrqIndex", "Interrupts", "FdWatcher", "DATA_TYPE_MASK", "ACTION_TYPE_MASK"]

log = logging.getLogger(__name__)

DATA_TYPE_MASK = VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_DATA_BOOL | VFIO_IRQ_SET_DATA_EVENTFD
ACTION_TYPE_MASK = (VFIO_IRQ_SET_ACTION_MASK | VFIO_IRQ_SET_ACTION_UNMASK
                    | VFIO_IRQ_SET_ACTION_TRIGGER)
_ONE = (1).to_bytes(8, "little")


class IrqIndex(enum.IntEnum):
    INTX = 0
    MSI = 1
    MSIX = 2
    ERR = 3
    REQ = 4


_EXCLUSIVE = (IrqIndex.INTX, IrqIndex.MSI, IrqIndex.MSIX)
_INFO_FLAGS = {
    IrqIndex.INTX: VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_MASKABLE | VFIO_IRQ_INFO_AUTOMASKED,
    IrqIndex.MSI: VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_MASKABLE | VFIO_IRQ_INFO_NORESIZE,
    IrqIndex.MSIX: VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_MASKABLE,
    IrqIndex.ERR: VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_NORESIZE,
    IrqIndex.REQ: VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_NORESIZE,
}


class FdWatcher(Protocol):
    """Calls ``callback()`` when ``fd`` is readable (the device's event loop)."""

    def watch(self, fd: int, callback: Callable[[], None]) -> None: ...

    def unwatch(self, fd: int) -> None: ...


def _invalid(msg: str) -> RemoteProtocolError:
    return RemoteProtocolError(errno.EINVAL, msg)


class _Vectors:
    """Per-vector eventfd, mask and pending state of one index."""

    __slots__ = ("fds", "masked", "pending")

    def __init__(self, n: int) -> None:
        self.fds: list[int | None] = [None] * n
        self.masked = [False] * n
        self.pending = [False] * n


class Interrupts:
    """The IRQ indexes of one function (see the module doc)."""

    def __init__(self, *, intx: bool = True, msi: int = 0, msix: int = 0,
                 on_intx_level: Callable[[bool], None] | None = None,
                 watcher: FdWatcher | None = None) -> None:
        self._counts = {IrqIndex.INTX: int(intx), IrqIndex.MSI: msi, IrqIndex.MSIX: msix,
                        IrqIndex.ERR: 1, IrqIndex.REQ: 1}
        self._vec = {i: _Vectors(n) for i, n in self._counts.items()}
        self.active: IrqIndex | None = None
        self.intx_level = False
        self.intx_masked = False
        self.intx_disabled = False
        self.intx_unmask_fd: int | None = None
        self._on_intx_level = on_intx_level
        self.watcher = watcher

    # -- shape ---------------------------------------------------------------

    def set_count(self, index: IrqIndex, count: int) -> None:
        """Set the vector count of ``index`` (device construction, no fds held)."""
        if self.owned_fds():
            raise LocalProtocolError("cannot resize IRQ indexes while eventfds are held")
        self._counts[index] = count
        self._vec[index] = _Vectors(count)

    def count(self, index: int) -> int:
        return self._counts[IrqIndex(index)]

    def info(self, index: int) -> IrqInfo:
        if not 0 <= index < len(IrqIndex):
            raise _invalid(f"IRQ index {index} out of range")
        i = IrqIndex(index)
        return IrqInfo(flags=_INFO_FLAGS[i], count=self._counts[i])

    def owned_fds(self) -> set[int]:
        fds = {fd for v in self._vec.values() for fd in v.fds if fd is not None}
        if self.intx_unmask_fd is not None:
            fds.add(self.intx_unmask_fd)
        return fds

    def eventfd(self, index: IrqIndex, vector: int = 0) -> int | None:
        return self._vec[index].fds[vector]

    def pending_bits(self, index: IrqIndex) -> int:
        """Pending bits of ``index`` as an integer, bit ``n`` = vector ``n`` (the PBA)."""
        return sum(1 << n for n, p in enumerate(self._vec[index].pending) if p)

    def vector_masked(self, index: IrqIndex, vector: int) -> bool:
        return self._vec[index].masked[vector]

    # -- SET_IRQS ------------------------------------------------------------

    def set_irqs(self, index: int, flags: int, start: int, count: int,
                 fds: Sequence[int], data: bytes) -> None:
        """VFIO_USER_DEVICE_SET_IRQS: validate, then act. Takes ownership of ``fds``."""
        try:
            self._validate(index, flags, start, count, fds, data)
        except RemoteProtocolError:
            self._close_received(fds)
            raise
        i = IrqIndex(index)
        action, dtype = flags & ACTION_TYPE_MASK, flags & DATA_TYPE_MASK
        if action == VFIO_IRQ_SET_ACTION_TRIGGER:
            if count == 0:
                self._disable(i)
            elif dtype == VFIO_IRQ_SET_DATA_EVENTFD:
                self._assign(i, start, list(fds) or [-1] * count)
            else:
                for n in self._selected(start, count, dtype, data):
                    self._trigger(i, n)
        elif dtype == VFIO_IRQ_SET_DATA_EVENTFD:  # INTx UNMASK with a resample fd
            self._set_unmask_fd(fds[0] if fds else -1)
        else:
            for n in self._selected(start, count, dtype, data):
                self._set_masked(i, n, action == VFIO_IRQ_SET_ACTION_MASK)

    def _validate(self, index: int, flags: int, start: int, count: int,
                  fds: Sequence[int], data: bytes) -> None:
        if not 0 <= index < len(IrqIndex):
            raise _invalid(f"IRQ index {index} out of range")
        i = IrqIndex(index)
        if flags & ~(DATA_TYPE_MASK | ACTION_TYPE_MASK):
            raise _invalid(f"unknown SET_IRQS flags {flags:#x}")
        action, dtype = flags & ACTION_TYPE_MASK, flags & DATA_TYPE_MASK
        if action.bit_count() != 1 or dtype.bit_count() != 1:
            raise _invalid(f"SET_IRQS flags {flags:#x}: need one action and one data type")
        n = self._counts[i]
        if start < 0 or count < 0 or start >= n or start + count > n:
            raise _invalid(f"{i.name} vectors {start}+{count} beyond {n}")
        if count == 0 and (action != VFIO_IRQ_SET_ACTION_TRIGGER
                           or dtype != VFIO_IRQ_SET_DATA_NONE):
            raise _invalid("count 0 needs ACTION_TRIGGER | DATA_NONE")
        if dtype == VFIO_IRQ_SET_DATA_EVENTFD:
            if data:
                raise _invalid("DATA_EVENTFD carries its fds out of band, not as data")
            if len(fds) not in (0, count):
                raise _invalid(f"{len(fds)} fds for {count} vectors")
            real = [fd for fd in fds if fd != -1]
            if any(fd < -1 for fd in fds) or len(set(real)) != len(real):
                raise _invalid("bad or repeated fd")
            if set(real) & self.owned_fds():
                raise _invalid("fd already in use by this device")
        else:
            if fds:
                raise _invalid(f"fds with a non-EVENTFD SET_IRQS (flags {flags:#x})")
            want = count if dtype == VFIO_IRQ_SET_DATA_BOOL else 0
            if len(data) != want:
                raise _invalid(f"{len(data)} data bytes, expected {want}")
        if i not in _EXCLUSIVE:
            if action != VFIO_IRQ_SET_ACTION_TRIGGER:
                raise _invalid(f"{i.name} supports ACTION_TRIGGER only")
            return
        if action != VFIO_IRQ_SET_ACTION_TRIGGER:
            if self.active is not i:
                raise _invalid(f"cannot mask/unmask {i.name}: not enabled")
            if dtype == VFIO_IRQ_SET_DATA_EVENTFD and not (
                    i is IrqIndex.INTX and action == VFIO_IRQ_SET_ACTION_UNMASK):
                raise _invalid("DATA_EVENTFD with MASK/UNMASK is only INTx UNMASK")
        elif count and self.active not in (None, i):
            raise _invalid(f"cannot use {i.name} while {self.active.name} is enabled")  # type: ignore[union-attr]
        elif count and dtype != VFIO_IRQ_SET_DATA_EVENTFD and self.active is not i:
            raise _invalid(f"cannot trigger {i.name}: not enabled")

    def _close_received(self, fds: Sequence[int]) -> None:
        owned = self.owned_fds()
        for fd in set(fds):
            if fd >= 0 and fd not in owned:
                _close(fd)

    @staticmethod
    def _selected(start: int, count: int, dtype: int, data: bytes) -> list[int]:
        if dtype == VFIO_IRQ_SET_DATA_BOOL:
            return [start + k for k in range(count) if data[k]]
        return list(range(start, start + count))

    # -- acting --------------------------------------------------------------

    def _assign(self, i: IrqIndex, start: int, fds: list[int]) -> None:
        if i is IrqIndex.INTX and fds[0] == -1:
            self._disable(i)  # vfio-pci: de-assigning the INTx trigger disables INTx
            return
        if i in _EXCLUSIVE and self.active is None:
            self.active = i
            self._vec[i] = _Vectors(self._counts[i])
            self.intx_masked = False
        vec = self._vec[i]
        for k, fd in enumerate(fds):
            old = vec.fds[start + k]
            if old is not None:
                _close(old)
            vec.fds[start + k] = None if fd == -1 else fd
        log.debug("%s eventfds %d..%d set", i.name, start, start + len(fds) - 1)
        if i is IrqIndex.INTX:
            self._intx_update()

    def _disable(self, i: IrqIndex) -> None:
        if i in _EXCLUSIVE:
            if self.active is not i:
                return
            self.active = None
            if i is IrqIndex.INTX:
                self.intx_masked = False
                self._set_unmask_fd(-1)
        vec = self._vec[i]
        for fd in vec.fds:
            if fd is not None:
                _close(fd)
        self._vec[i] = _Vectors(self._counts[i])
        log.debug("%s disabled", i.name)

    def _trigger(self, i: IrqIndex, n: int) -> None:
        if i in (IrqIndex.MSI, IrqIndex.MSIX):
            self._deliver(i, n)
        else:  # INTx loopback (vfio_send_intx_eventfd), ERR, REQ
            _signal(self._vec[i].fds[n])

    def _set_masked(self, i: IrqIndex, n: int, masked: bool) -> None:
        if i is IrqIndex.INTX:
            self.intx_masked = masked
            self._intx_update()
            return
        vec = self._vec[i]
        vec.masked[n] = masked
        if not masked and vec.pending[n]:
            vec.pending[n] = False
            _signal(vec.fds[n])

    def _set_unmask_fd(self, fd: int) -> None:
        old = self.intx_unmask_fd
        if old is not None:
            if self.watcher is not None:
                self.watcher.unwatch(old)
            _close(old)
        self.intx_unmask_fd = None if fd == -1 else fd
        if fd != -1 and self.watcher is not None:
            self.watcher.watch(fd, self._on_resample)

    def _on_resample(self) -> None:
        """The KVM resample eventfd fired (guest EOI): drain it and unmask INTx."""
        fd = self.intx_unmask_fd
        if fd is None:
            return
        try:
            os.read(fd, 8)
        except OSError:
            pass
        if self.active is IrqIndex.INTX:
            self._set_masked(IrqIndex.INTX, 0, False)

    def _deliver(self, i: IrqIndex, n: int) -> bool:
        vec = self._vec[i]
        if vec.masked[n]:
            vec.pending[n] = True
            return False
        return _signal(vec.fds[n])

    def _intx_update(self) -> bool:
        if (self.intx_level and not self.intx_disabled and not self.intx_masked
                and self.active is IrqIndex.INTX and self._vec[IrqIndex.INTX].fds[0] is not None):
            self.intx_masked = True  # automasked until UNMASK
            return _signal(self._vec[IrqIndex.INTX].fds[0])
        return False

    # -- the device's side ---------------------------------------------------

    def signal(self, index: IrqIndex, vector: int = 0) -> bool:
        """Raise MSI/MSI-X ``vector`` (if ``index`` is active) or ERR/REQ; sent or not."""
        if index is IrqIndex.INTX:
            raise LocalProtocolError("INTx is a level: use intx_assert()")
        if not 0 <= vector < self._counts[index]:
            return False
        if index in (IrqIndex.MSI, IrqIndex.MSIX):
            return self.active is index and self._deliver(index, vector)
        return _signal(self._vec[index].fds[vector])

    def intx_assert(self) -> None:
        if not self._counts[IrqIndex.INTX]:
            raise LocalProtocolError("this function has no INTx pin")
        if not self.intx_level:
            self.intx_level = True
            if self._on_intx_level:
                self._on_intx_level(True)
        self._intx_update()

    def intx_deassert(self) -> None:
        if self.intx_level:
            self.intx_level = False
            if self._on_intx_level:
                self._on_intx_level(False)

    def set_intx_disable(self, disabled: bool) -> None:
        """Command.INTX_DISABLE changed (PCI Local Bus 3.0 §6.2.2)."""
        self.intx_disabled = disabled
        self._intx_update()

    def reset(self) -> None:
        """DEVICE_RESET: INTx/MSI/MSI-X off (their fds closed), INTx level low.

        The ERR and REQ triggers survive, as with vfio-pci's VFIO_DEVICE_RESET:
        QEMU registers them once, at realize.
        """
        if self.active is not None:
            self._disable(self.active)
        self.intx_deassert()
        self.intx_disabled = False

    def close_all(self) -> None:
        """Client gone: every eventfd closed, every index off. The INTx level stays."""
        for i in IrqIndex:
            if i in _EXCLUSIVE:
                if self.active is i:
                    self._disable(i)
            else:
                self._disable(i)


def _signal(fd: int | None) -> bool:
    if fd is None:
        return False
    try:
        os.write(fd, _ONE)
    except OSError as e:
        log.warning("eventfd %d: signal failed: %s", fd, e)
        return False
    return True


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError as e:
        log.warning("closing IRQ fd %d: %s", fd, e)
