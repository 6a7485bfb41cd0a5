"""``PciDevice``: a PCI(e) function assembled from ``vuser.pci``, as a ``ServerBackend``.

Region indexes follow linux/vfio.h: 0..5 the BARs, 6 the expansion ROM, 7 the
config space, 8 VGA (absent, size 0). An access outside a region, to an index
above 8 or to a BAR with no region gets ``RemoteProtocolError(EINVAL)``, as in
libvfio-user (``is_valid_region_access``, ``handle_device_get_region_info``).

A subclass declares its identity as class attributes and, in ``__init__``,
calls ``add_bar``, ``add_msix``/``add_msi``, ``add_capability`` and ``add_rom``.
Device work that may wait (DMA) runs in tasks started by ``spawn``: a
``region_write`` must return without doing DMA (docs/architecture.md "Data flow").

Lifetimes:
- ``reset()`` (DEVICE_RESET): device tasks cancelled (``epoch`` bumped), config
  space back to defaults, INTx/MSI/MSI-X off with their eventfds closed, every
  region's ``reset``, then the subclass's ``on_reset``.
- ``client_disconnected()``: device tasks cancelled (``epoch`` kept), every
  eventfd closed, DMA detached; config space and registers kept.
- Without a client, ``self.dma`` raises ``DmaError(ENOTCONN)``.

The ioasid model (issue 5, ``platform``): each device joins a ``Platform``
(``join_platform``; ``vuser serve`` gives all devices one, a device left
alone gets a private one when a client connects) and is registered there as
an ``IommuDevice`` (``self.iommu``: label, group, PASID width, ATS, PRI,
taken from its capabilities unless given). With a client, ``self.dma`` is an
``IommuDmaPort``: untagged DMA through the model (``iommu_port``). The
transport asks ``dma_sink()`` for the connection's DMA_MAP sink, which binds
the device into its VM. A class with ``REQUIRE_BIND`` refuses BAR and ROM
accesses (EINVAL, as vfio refuses a device fd before BIND_IOMMUFD) until it
is bound; config space stays readable.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, ClassVar

from vuser.errors import LocalProtocolError, RemoteProtocolError
from vuser.pci.bar import Bar, define_rom_bar
from vuser.pci.caps_ext import Ats, Pasid, Pri
from vuser.pci.caps import Capability, CapabilityChain
from vuser.pci.caps_std import Msi, MsiX
from vuser.pci.config import (
    PCI_CONFIG_SPACE_SIZE, PCIE_CONFIG_SPACE_SIZE, Command, ConfigSpace, Status, Type0Header,
)
from vuser.pci.irq import Interrupts, IrqIndex
from vuser.pci.region import MsixRegion, Region, RomRegion
from vuser.backend import (
    VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_NUM_REGIONS, VFIO_PCI_ROM_REGION_INDEX,
    VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE, DeviceInfo, DmaError, DmaPort,
    IrqInfo, RegionInfo,
)

from .introspect import CompletionSource, Feature, PciFeatures, QueueState

__all__ = ["PciDevice", "NO_DMA", "VUSER_VENDOR_ID"]

log = logging.getLogger(__name__)

VUSER_VENDOR_ID = 0x5655  # "VU": experimental, see docs/sample-device.md
_H = Type0Header.offset_of
#: Offset of the Command register (read on every DMA descriptor: Bus Master Enable).
_COMMAND = _H("command")
_NO_REGION = Region(0)         # what an empty access to an absent region reaches

if TYPE_CHECKING:
    from vuser.iommu import IommuDevice, IommuGroup

    from .platform import DeviceBinding, Platform


class _NoDma:
    """The DMA port of a device with no client: every access fails."""

    async def dma_read(self, addr: int, n: int) -> bytes:
        raise DmaError(errno.ENOTCONN, addr, n, "no client connected")

    async def dma_write(self, addr: int, data: bytes) -> None:
        raise DmaError(errno.ENOTCONN, addr, len(data), "no client connected")


NO_DMA: DmaPort = _NoDma()


class _LoopWatcher:
    """``FdWatcher`` on the running asyncio loop (the INTx resample eventfd)."""

    def __init__(self) -> None:
        self._loops: dict[int, asyncio.AbstractEventLoop] = {}

    def watch(self, fd: int, callback: Callable[[], None]) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            log.debug("no event loop: resample fd %d not watched", fd)
            return
        loop.add_reader(fd, callback)
        self._loops[fd] = loop

    def unwatch(self, fd: int) -> None:
        loop = self._loops.pop(fd, None)
        if loop is not None and not loop.is_closed():
            loop.remove_reader(fd)


class PciDevice:
    """Base of vuser's PCI(e) functions; implements ``ServerBackend``."""

    VENDOR_ID: ClassVar[int] = VUSER_VENDOR_ID
    DEVICE_ID: ClassVar[int] = 0
    CLASS_CODE: ClassVar[int] = 0xFF0000
    REVISION: ClassVar[int] = 0
    SUBSYSTEM_VENDOR_ID: ClassVar[int] = VUSER_VENDOR_ID
    SUBSYSTEM_ID: ClassVar[int] = 0
    INTERRUPT_PIN: ClassVar[int] = 1      # INTA; 0 = no INTx
    EXPRESS: ClassVar[bool] = True        # 4 KiB config space, extended capabilities
    #: BAR/ROM accesses are refused until the device is bound (model-backed devices).
    REQUIRE_BIND: ClassVar[bool] = False
    #: Untagged DMA the model cannot reach may go by DMA_READ/WRITE messages
    #: (the issue-2 fallback for fd-less memory; see ``iommu_port``).
    MESSAGE_DMA_FALLBACK: ClassVar[bool] = True

    def __init__(self) -> None:
        self.config = ConfigSpace(PCIE_CONFIG_SPACE_SIZE if self.EXPRESS else PCI_CONFIG_SPACE_SIZE)
        self.caps = CapabilityChain(self.config)
        self.irqs = Interrupts(intx=bool(self.INTERRUPT_PIN), on_intx_level=self._on_intx_level,
                               watcher=_LoopWatcher())
        self.bars: list[Bar | None] = [None] * 6
        self.regions: dict[int, Region] = {}
        self.dma: DmaPort = NO_DMA
        self.epoch = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self.platform: Platform | None = None
        self.iommu: IommuDevice = None  # type: ignore[assignment]  # set by join_platform
        self._own_platform = False
        self._define_header()

    # -- construction ----------------------------------------------------------

    def _define_header(self) -> None:
        cs = self.config
        cs.define_int(_H("vendor_id"), 2, self.VENDOR_ID)
        cs.define_int(_H("device_id"), 2, self.DEVICE_ID)
        cs.define_int(_H("command"), 2, 0, wmask=(
            Command.IO.mask | Command.MEMORY.mask | Command.MASTER.mask | Command.PARITY.mask
            | Command.SERR.mask | Command.INTX_DISABLE.mask))
        cs.define_int(_H("status"), 2, 0, w1cmask=Status.W1C)
        cs.define_int(_H("revision_id"), 1, self.REVISION)
        cs.define_int(_H("class_code_lo"), 3, self.CLASS_CODE)
        cs.define_int(_H("cache_line_size"), 1, 0, wmask=0xFF)
        cs.define_int(_H("subsystem_vendor_id"), 2, self.SUBSYSTEM_VENDOR_ID)
        cs.define_int(_H("subsystem_id"), 2, self.SUBSYSTEM_ID)
        cs.define_int(_H("interrupt_line"), 1, 0, wmask=0xFF)
        cs.define_int(_H("interrupt_pin"), 1, self.INTERRUPT_PIN)
        define_rom_bar(cs, 0)
        cs.add_write_hook(_H("command"), 2, self._command_written)

    def add_bar(self, index: int, bar: Bar, region: Region) -> None:
        """Declare BAR ``index`` (``index + 1`` too for a 64-bit BAR) served by ``region``."""
        slots = range(index, index + bar.slots)
        if index < 0 or index + bar.slots > 6 or any(self._bar_slot_used(i) for i in slots):
            raise LocalProtocolError(f"BAR {index} ({bar.kind.value}) is taken or out of range")
        if region.size != bar.size:
            raise LocalProtocolError(f"BAR {index}: region of {region.size:#x} for a "
                                     f"{bar.size:#x} BAR")
        bar.define(self.config, index)
        self.bars[index] = bar
        self.regions[index] = region

    def _bar_slot_used(self, i: int) -> bool:
        if self.bars[i] is not None:
            return True
        return i > 0 and (prev := self.bars[i - 1]) is not None and prev.slots == 2

    def add_rom(self, image: bytes) -> None:
        size = 2048
        while size < len(image):
            size *= 2
        define_rom_bar(self.config, size)
        self.regions[VFIO_PCI_ROM_REGION_INDEX] = RomRegion(image, size)

    def add_capability(self, cap: Capability, offset: int | None = None) -> int:
        return self.caps.add(cap, offset)

    def add_msix(self, bar: int, vectors: int, table_offset: int = 0,
                 pba_offset: int | None = None) -> MsiX:
        """MSI-X with its table and PBA alone in a 32-bit memory BAR ``bar``."""
        table_end = table_offset + vectors * MsixRegion.ENTRY_SIZE
        if pba_offset is None:
            pba_offset = (table_end + 7) & ~7
        size = 4096
        while size < max(table_end, pba_offset + ((vectors + 63) // 64) * 8):
            size *= 2
        self.add_bar(bar, Bar.mem32(size),
                     MsixRegion(size, vectors, table_offset, pba_offset, self.irqs))
        cap = MsiX(vectors, bar, table_offset, pba_offset)
        self.add_capability(cap)
        self.irqs.set_count(IrqIndex.MSIX, vectors)
        return cap

    def add_msi(self, vectors: int = 1) -> Msi:
        cap = Msi(vectors)
        self.add_capability(cap)
        self.irqs.set_count(IrqIndex.MSI, vectors)
        return cap

    # -- the platform (ioasid model) ---------------------------------------------

    def join_platform(self, platform: Platform, *, label: int | None = None,
                      group: IommuGroup | str | None = None, name: str | None = None,
                      pasid_width: int | None = None, ats: bool | None = None,
                      pri: bool | None = None, **iommu: Any) -> IommuDevice:
        """Register with ``platform``'s model; returns the ``IommuDevice``.

        ``label`` defaults to ``self.label`` if the device has one (else the
        registry allocates one); PASID width, ATS and PRI default to what the
        capabilities advertise. ``IommufdError``: EEXIST for a taken label.
        """
        if self.platform is not None:
            raise LocalProtocolError(f"{type(self).__name__} already joined a platform")
        if label is None:
            label = getattr(self, "label", None)
        pasid = self.caps.find(Pasid)
        if pasid_width is None:
            pasid_width = pasid.width if pasid is not None else 0  # type: ignore[attr-defined]
        if ats is None:
            ats = self.caps.find(Ats) is not None
        if pri is None:
            pri = self.caps.find(Pri) is not None
        self.iommu = platform.register(self, name or type(self).__name__, label=label,
                                       group=group, pasid_width=pasid_width, ats=ats, pri=pri,
                                       **iommu)
        self.platform = platform
        return self.iommu

    def _ensure_platform(self) -> Platform:
        if self.platform is None:
            from .platform import Platform
            self.join_platform(Platform())
            self._own_platform = True
        assert self.platform is not None
        return self.platform

    def dma_sink(self) -> DeviceBinding:
        """A new connection's sink for DMA_MAPs with an fd (``transport.dma.DmaSink``)."""
        return self._ensure_platform().connect(self)

    @property
    def vm(self) -> Any:
        """The ``Vm`` this device's connection joined, or None."""
        return self.platform.vm_of(self) if self.platform is not None else None

    # -- introspection (``DeviceIntrospection``, for the control RPC) ----------------
    def device_label(self) -> int | None:
        """The label the model knows this device by; None before ``join_platform``."""
        return self.iommu.label if self.iommu is not None else None

    def describe(self) -> dict[str, Any]:
        """The device's own state (subclasses add theirs; the base has none)."""
        return {}

    def counters(self) -> dict[str, int]:
        """Flat counters of device-side state (the base has none)."""
        return {}

    def dma_queues(self) -> list[QueueState]:
        """The device's descriptor rings (the base has none)."""
        return []

    def pci_features(self) -> PciFeatures:
        """PASID, ATS and PRI: whether each capability is present, and enabled
        in config space."""
        def feature(cls: type[Pasid] | type[Ats] | type[Pri]) -> Feature:
            cap = self.caps.find(cls)
            return Feature(cap is not None, bool(cap is not None and cap.enabled(self.config)))
        return PciFeatures(feature(Pasid), feature(Ats), feature(Pri))

    def pasid_view(self, label: int) -> dict[str, Any] | None:
        """What this device, as a vIOMMU, applied for ``label`` (the base is none)."""
        return None

    def completions(self) -> CompletionSource | None:
        """The device's DMA completion source (the base ends no descriptors)."""
        return None

    # -- ServerBackend ---------------------------------------------------------

    def device_info(self) -> DeviceInfo:
        return DeviceInfo()

    def region_info(self, index: int) -> RegionInfo:
        if index == VFIO_PCI_CONFIG_REGION_INDEX:
            return RegionInfo(flags=VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE,
                              size=self.config.size)
        if not 0 <= index < VFIO_PCI_NUM_REGIONS:
            raise RemoteProtocolError(errno.EINVAL, f"region index {index} out of range")
        region = self.regions.get(index)
        return RegionInfo() if region is None else region.info()

    def irq_info(self, index: int) -> IrqInfo:
        return self.irqs.info(index)

    def region_read(self, index: int, offset: int, count: int) -> bytes:
        if index == VFIO_PCI_CONFIG_REGION_INDEX:
            return self.config.read(offset, count)
        return self._region(index, offset, count).checked_read(offset, count)

    def region_write(self, index: int, offset: int, data: bytes) -> None:
        if index == VFIO_PCI_CONFIG_REGION_INDEX:
            self.config.write(offset, data)
            return
        self._region(index, offset, len(data)).checked_write(offset, data)

    def _region(self, index: int, offset: int, count: int) -> Region:
        """The region a BAR/ROM access reaches, once the bind (``REQUIRE_BIND``)
        and the index are checked; its ``checked_read``/``checked_write`` check
        the bounds. An absent region takes only empty accesses."""
        if self.REQUIRE_BIND and (self.iommu is None or self.iommu.ctx is None):  # not bound
            raise RemoteProtocolError(errno.EINVAL, f"region {index}: the device is not bound "
                                      "(no DMA_MAP of guest RAM with an fd yet)")
        if not 0 <= index < VFIO_PCI_NUM_REGIONS:
            raise RemoteProtocolError(errno.EINVAL, f"region index {index} out of range")
        region = self.regions.get(index)
        if region is None:
            if offset or count:
                raise RemoteProtocolError(errno.EINVAL, f"region {index} is not implemented")
            return _NO_REGION
        return region

    def set_irqs(self, index: int, flags: int, start: int, count: int,
                 fds: list[int], data: bytes) -> None:
        self.irqs.set_irqs(index, flags, start, count, fds, data)

    def reset(self) -> None:
        """DEVICE_RESET (see the module doc)."""
        self._cancel_tasks()
        self.epoch += 1
        self.caps.reset()
        self.irqs.reset()
        self._command_written(0, 0)
        for region in self.regions.values():
            region.reset()
        self.on_reset()
        log.debug("%s: reset", type(self).__name__)

    def on_reset(self) -> None:
        """Subclass hook: reset device state kept outside regions (default: none)."""

    def client_connected(self, dma: DmaPort) -> None:
        """``dma`` is the connection's own port: the message fallback only."""
        from .iommu_port import IommuDmaPort
        self._ensure_platform()
        self.dma = IommuDmaPort(self, dma)

    def client_disconnected(self) -> None:
        self._cancel_tasks()
        self.irqs.close_all()
        self.dma = NO_DMA

    # -- for device models -------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str | None = None) -> asyncio.Task[Any]:
        """Run device work as its own task: tracked, errors logged, cancelled on reset."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            coro.close()
            raise LocalProtocolError("spawn() needs a running event loop") from None
        task = loop.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("%s: task %s failed", type(self).__name__, task.get_name(),
                      exc_info=exc)

    def _cancel_tasks(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    async def idle(self) -> None:
        """Wait until no device task is running (tests, orderly shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def raise_irq(self, vector: int = 0) -> bool:
        """Signal an interrupt the way the function is set up; whether one went out.

        MSI-X or MSI if the client enabled that index (vector ``vector``);
        nothing if the guest enabled MSI/MSI-X in config space but no eventfds
        were given yet; otherwise the INTx level is asserted (if there is a pin),
        delivered per ``Interrupts`` rules.
        """
        active = self.irqs.active
        if active in (IrqIndex.MSIX, IrqIndex.MSI):
            return self.irqs.signal(active, vector)
        for cap_type in (MsiX, Msi):
            cap = self.caps.find(cap_type)
            if cap is not None and cap.enabled(self.config):  # type: ignore[attr-defined]
                return False
        if not self.irqs.count(IrqIndex.INTX):
            return False
        self.irqs.intx_assert()
        return True

    def lower_intx(self) -> None:
        self.irqs.intx_deassert()

    @property
    def bus_master(self) -> bool:
        return bool(Command.MASTER.get(self.config.peek(_COMMAND, 2)))

    def close(self) -> None:
        """Release every host resource (eventfds, memfds); the device is unusable after."""
        self._cancel_tasks()
        self.irqs.close_all()
        for region in self.regions.values():
            region.close()
        if self.platform is not None and self.iommu is not None:
            self.platform.unregister(self)
            if self._own_platform:
                self.platform.close()

    # -- internals -----------------------------------------------------------------

    def _command_written(self, _offset: int, _count: int) -> None:
        command = self.config.peek(_H("command"), 2)
        self.irqs.set_intx_disable(bool(Command.INTX_DISABLE.get(command)))

    def _on_intx_level(self, level: bool) -> None:
        off = _H("status")
        self.config.poke(off, 2, Status.INTERRUPT.put(self.config.peek(off, 2), int(level)))
