"""The device contract: what the vfio-user server core asks of a device.

Both sides import this module and nothing else of each other: the protocol
core (``vuser.protocol.server``) and the transport call a ``ServerBackend``
with plain values; the devices (``vuser.pci``, ``vuser.devices``) implement
it and reach guest memory through a ``DmaPort``. The core never sees
registers or config space; a backend never sees bytes on the wire
(docs/architecture.md, "Layers"). Modelled on rust-vmm's ``ServerBackend``
trait and libvfio-user's region/IRQ callbacks; the region, IRQ and device
flag values are linux/vfio.h's, which both vfio-user and the devices speak.

Rules for implementations:
- Bad requests (index out of range, access beyond a region, unsupported IRQ
  flags) raise ``RemoteProtocolError(errno)``; the core turns it into an error
  reply and keeps serving.
- ``set_irqs`` takes ownership of the fds it is handed, even when it raises
  (it must close them then). All other fds stay owned by the caller.
- ``region_write`` may not block or perform DMA inline: DMA is asynchronous
  work the device starts as its own task (QEMU's client waits for the reply
  to a region access while it serves the device's DMA messages on the same
  socket; see docs/architecture.md, "Data flow").
- ``client_disconnected`` drops per-connection state (IRQ eventfds) and keeps
  device state (registers, config space).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

# vfio_device_info.flags (linux/vfio.h)
VFIO_DEVICE_FLAGS_RESET = 1 << 0
VFIO_DEVICE_FLAGS_PCI = 1 << 1

# vfio_region_info.flags
VFIO_REGION_INFO_FLAG_READ = 1 << 0
VFIO_REGION_INFO_FLAG_WRITE = 1 << 1
VFIO_REGION_INFO_FLAG_MMAP = 1 << 2
VFIO_REGION_INFO_FLAG_CAPS = 1 << 3

# vfio_irq_info.flags
VFIO_IRQ_INFO_EVENTFD = 1 << 0
VFIO_IRQ_INFO_MASKABLE = 1 << 1
VFIO_IRQ_INFO_AUTOMASKED = 1 << 2
VFIO_IRQ_INFO_NORESIZE = 1 << 3

# vfio_irq_set.flags
VFIO_IRQ_SET_DATA_NONE = 1 << 0
VFIO_IRQ_SET_DATA_BOOL = 1 << 1
VFIO_IRQ_SET_DATA_EVENTFD = 1 << 2
VFIO_IRQ_SET_ACTION_MASK = 1 << 3
VFIO_IRQ_SET_ACTION_UNMASK = 1 << 4
VFIO_IRQ_SET_ACTION_TRIGGER = 1 << 5

# VFIO PCI region and IRQ indexes (linux/vfio.h)
VFIO_PCI_BAR0_REGION_INDEX = 0
VFIO_PCI_BAR5_REGION_INDEX = 5
VFIO_PCI_ROM_REGION_INDEX = 6
VFIO_PCI_CONFIG_REGION_INDEX = 7
VFIO_PCI_VGA_REGION_INDEX = 8
VFIO_PCI_NUM_REGIONS = 9

VFIO_PCI_INTX_IRQ_INDEX = 0
VFIO_PCI_MSI_IRQ_INDEX = 1
VFIO_PCI_MSIX_IRQ_INDEX = 2
VFIO_PCI_ERR_IRQ_INDEX = 3
VFIO_PCI_REQ_IRQ_INDEX = 4
VFIO_PCI_NUM_IRQS = 5


@dataclass(frozen=True)
class DeviceInfo:
    """VFIO_USER_DEVICE_GET_INFO reply body (QEMU: regions >= 8, irqs >= 3)."""

    flags: int = VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET
    num_regions: int = VFIO_PCI_NUM_REGIONS
    num_irqs: int = VFIO_PCI_NUM_IRQS


@dataclass(frozen=True)
class RegionInfo:
    """One region as GET_REGION_INFO describes it.

    ``fd`` (owned by the backend) backs the whole region when the region is
    mmap-able; ``sparse_areas`` are ``(offset, size)`` pairs inside it that the
    client may mmap (VFIO_REGION_INFO_CAP_SPARSE_MMAP). ``mmap_offset`` is the
    file offset of region byte 0 in ``fd``.
    """

    flags: int = 0
    size: int = 0
    fd: int | None = None
    mmap_offset: int = 0
    sparse_areas: tuple[tuple[int, int], ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class IrqInfo:
    """GET_IRQ_INFO reply body."""

    flags: int = 0
    count: int = 0


class ServerBackend(Protocol):
    """A device as seen by the server core. See the module doc for the rules."""

    def device_info(self) -> DeviceInfo: ...

    def region_info(self, index: int) -> RegionInfo: ...

    def irq_info(self, index: int) -> IrqInfo: ...

    def region_read(self, index: int, offset: int, count: int) -> bytes: ...

    def region_write(self, index: int, offset: int, data: bytes) -> None: ...

    def set_irqs(self, index: int, flags: int, start: int, count: int,
                 fds: list[int], data: bytes) -> None: ...

    def reset(self) -> None: ...

    def client_connected(self, dma: "DmaPort") -> None: ...

    def client_disconnected(self) -> None: ...


class DmaPort(Protocol):
    """Device-side DMA into the client's memory, given to the backend on connect.

    Addresses are what the device emits on the bus (GPA, or IOVA once the
    IOMMU model sits in the path). Both calls are coroutines because ranges
    mapped without an fd go through DMA_READ/DMA_WRITE messages; they raise
    ``DmaError`` (errno) on an unmapped or forbidden range.
    """

    async def dma_read(self, addr: int, n: int) -> bytes: ...

    async def dma_write(self, addr: int, data: bytes) -> None: ...


class DmaError(Exception):
    """A DMA access failed; ``errno`` says why (EFAULT unmapped, EPERM...)."""

    def __init__(self, err: int, addr: int, n: int, msg: str = "") -> None:
        self.errno, self.addr, self.n = err, addr, n
        super().__init__(msg or f"DMA of {n} bytes at {addr:#x} failed (errno {err})")
