"""VT-d event messages as memory writes: the kernel-owned vIOMMU's interrupts (VT-d §5.1.6, §10.4).

A VT-d unit signals its fault, invalidation completion and page request
events with an MSI of its own: a 4-byte write of the DATA register's value
to the UADDR:ADDR address (§10.4.10-12, §10.4.35-37, §10.4.43-45). When the
guest kernel owns vuser-iommu, nothing enables the function's MSI-X, so
``MsiSender`` sends that write as a VFIO_USER_DMA_WRITE on the function's
own vfio-user connection; QEMU carries it out on the function's bus-master
address space, where the APIC's MSI window takes it as an interrupt
(docs/vuser-iommu.md, "Interrupts").

A message is sent only

- to an address inside the MSI window 0xfee00000-0xfeefffff (others are not
  sent: a misprogrammed address would become a stray memory write; counted
  and logged, at most once per ``LOG_EVERY`` of them);
- while Bus Master Enable is set in the function's Command register (QEMU
  refuses a function's DMA otherwise); ``retry`` is called when BME goes
  from 0 to 1.

A message that cannot be sent leaves the event pending (IP set); a
DMA_WRITE that QEMU refuses does too, with one log line (again at most one
per ``LOG_EVERY``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from vuser.errors import LocalProtocolError
from vuser.backend import DmaError

from .viommu_regs import EventSource

log = logging.getLogger(__name__)

__all__ = ["MsiSender", "MSI_WINDOW_BASE", "MSI_WINDOW_LAST", "LOG_EVERY"]

#: The x86 interrupt address range (Intel SDM vol. 3, §11.11.1).
MSI_WINDOW_BASE = 0xFEE0_0000
MSI_WINDOW_LAST = 0xFEEF_FFFF
#: Out-of-window messages: one log line per this many.
LOG_EVERY = 100


class MessagePort(Protocol):
    """The connection's DMA_WRITE (``transport.dma.MessageDma``)."""

    async def dma_write_message(self, addr: int, data: bytes) -> None: ...


class MsiSender:
    """Sends event messages by DMA_WRITE (see the module doc)."""

    def __init__(self, bus_master: Callable[[], bool],
                 spawn: Callable[[Coroutine[Any, Any, None]], object]) -> None:
        self.bus_master, self.spawn = bus_master, spawn
        self.port: MessagePort | None = None
        self.sent = 0
        self.refused = 0
        self.outside_window = 0
        self.waited_for_bme = 0

    def send(self, event: EventSource) -> bool:
        """Start sending ``event``'s message; False: it stays pending for now."""
        addr, data = event.message()
        if not MSI_WINDOW_BASE <= addr <= MSI_WINDOW_LAST:
            if self.outside_window % LOG_EVERY == 0:
                log.warning("vIOMMU: event message to %#x is outside the MSI window "
                            "%#x-%#x: not sent (%d so far)", addr, MSI_WINDOW_BASE,
                            MSI_WINDOW_LAST, self.outside_window + 1)
            self.outside_window += 1
            return False
        if not self.bus_master():
            self.waited_for_bme += 1
            return False
        port = self.port
        if port is None:
            return False
        event.in_flight = True
        try:
            self.spawn(self._write(port, event, addr, data))
        except LocalProtocolError as e:   # no event loop (synchronous callers)
            event.in_flight = False
            log.debug("vIOMMU: event message not sent: %s", e)
        return False

    async def _write(self, port: MessagePort, event: EventSource, addr: int, data: int) -> None:
        ok = False
        try:
            await port.dma_write_message(addr, data.to_bytes(4, "little"))
            ok = True
        except DmaError as e:
            if self.refused % LOG_EVERY == 0:
                log.warning("vIOMMU: event message %#x to %#x refused by the client (%s): "
                            "left pending (%d so far)", data, addr, e, self.refused + 1)
            self.refused += 1
        finally:
            if ok:
                self.sent += 1
                event.delivered()
            else:
                event.in_flight = False

    def describe(self) -> dict[str, int]:
        return {"sent": self.sent, "refused": self.refused,
                "outside_window": self.outside_window, "waited_for_bme": self.waited_for_bme}
