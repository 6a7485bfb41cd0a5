"""The ``sample`` device: a small PCIe endpoint proving the vfio-user path.

Exactly ``docs/sample-device.md``: register BAR0, mmap-able RAM in BAR2/3,
MSI-X (4 vectors) in BAR4, PM/PCIe/vendor capabilities, inert PASID/ATS/PRI
and the label in a vendor capability and a VSEC. A doorbell DMAs a byte
pattern into guest memory from its own task, then raises MSI-X vector
IRQ_VECTOR (or asserts INTx).
"""

from __future__ import annotations

import logging

from vuser import ratelimit
from vuser.errors import UserError
from vuser.iommu import IommufdError
from vuser.pci.bar import Bar
from vuser.pci.caps_ext import Ats, Pasid, Pri, Vsec
from vuser.pci.caps_std import PciExpress, PowerManagement, VendorSpecific
from vuser.pci.region import RamRegion, Register, RegisterFile
from vuser.backend import DmaError
from vuser.wire import BitLayout, Bits

from .base import PciDevice
from .platform import Platform

__all__ = ["SampleDevice", "SampleReg", "SampleStatus", "pattern"]

log = logging.getLogger(__name__)


class SampleReg:
    """BAR0 register offsets (docs/sample-device.md)."""

    ID = 0x00
    VERSION = 0x04
    SCRATCH = 0x08
    STATUS = 0x0C
    DMA_ADDR_LO = 0x10
    DMA_ADDR_HI = 0x14
    DMA_LEN = 0x18
    DMA_SEED = 0x1C
    DOORBELL = 0x20
    IRQ_VECTOR = 0x24
    COMPLETIONS = 0x28


class SampleStatus(BitLayout, width=32):
    BUSY = Bits(0)
    DONE = Bits(1)
    ERROR = Bits(2)


def pattern(seed: int, n: int) -> bytes:
    """The DMA pattern: byte ``i`` is ``(seed + i) & 0xff``."""
    cycle = bytes((seed + i) & 0xFF for i in range(256))
    return (cycle * (n // 256 + 1))[:n]


def _parse_label(label: int | str) -> int:
    try:
        value = int(label, 0) if isinstance(label, str) else int(label)
    except ValueError:
        raise UserError(f"sample: label {label!r} is not an integer") from None
    if not 0 <= value < 1 << 32:
        raise UserError(f"sample: label {value} does not fit in 32 bits")
    return value


class SampleDevice(PciDevice):
    """vendor 0x5655, device 0x0001; options: ``label`` (u32; by default the
    platform allocates a free one, or 0 without a platform)."""

    DEVICE_ID = 0x0001
    CLASS_CODE = 0xFF0000
    REVISION = 0x01
    INTERRUPT_PIN = 1

    BAR0_SIZE = 0x1000
    BAR2_SIZE = 0x4000
    MSIX_VECTORS = 4
    MAX_DMA_LEN = 1 << 20
    VERSION = 1

    def __init__(self, *, platform: Platform | None = None,
                 label: int | str | None = None) -> None:
        super().__init__()
        want = None if label is None else _parse_label(label)
        if platform is not None:
            try:
                # Its PASID/ATS/PRI capabilities are inert: the model sees
                # an untagged-only device.
                self.join_platform(platform, label=want, name="sample",
                                   pasid_width=0, ats=False, pri=False)
            except IommufdError as e:
                raise UserError(f"sample: {e.msg}") from None
            self.label = self.iommu.label
        else:
            self.label = 0 if want is None else want
        self._job = 0                   # doorbell count: the DMA a completion belongs to
        self._job_vector = 0
        R = SampleReg
        self.regs = RegisterFile(self.BAR0_SIZE, [
            Register(R.ID, "ID", (self.VENDOR_ID << 16) | self.DEVICE_ID, wmask=0),
            Register(R.VERSION, "VERSION", self.VERSION, wmask=0),
            Register(R.SCRATCH, "SCRATCH"),
            Register(R.STATUS, "STATUS", wmask=0, write=self._status_written),
            Register(R.DMA_ADDR_LO, "DMA_ADDR_LO"),
            Register(R.DMA_ADDR_HI, "DMA_ADDR_HI"),
            Register(R.DMA_LEN, "DMA_LEN"),
            Register(R.DMA_SEED, "DMA_SEED"),
            Register(R.DOORBELL, "DOORBELL", wmask=0, write=self._doorbell),
            Register(R.IRQ_VECTOR, "IRQ_VECTOR"),
            Register(R.COMPLETIONS, "COMPLETIONS", wmask=0),
        ])
        self.add_bar(0, Bar.mem32(self.BAR0_SIZE), self.regs)
        self.ram = RamRegion(self.BAR2_SIZE, "vuser-sample-bar2")
        self.add_bar(2, Bar.mem64(self.BAR2_SIZE, prefetchable=True), self.ram)
        self.add_capability(PowerManagement())
        self.add_msix(bar=4, vectors=self.MSIX_VECTORS, table_offset=0, pba_offset=0x800)
        self.add_capability(PciExpress(ee_tlp_prefix=True))
        self.add_capability(VendorSpecific(self.label))
        self.add_capability(Pasid(width=20))
        self.add_capability(Ats())
        self.add_capability(Pri())
        self.add_capability(Vsec(self.label))

    # -- registers -------------------------------------------------------------

    def _status_written(self, value: int) -> None:
        """DONE and ERROR are RW1C; clearing DONE lowers INTx."""
        clear = value & (SampleStatus.DONE.mask | SampleStatus.ERROR.mask)
        self.regs["STATUS"] = self.regs["STATUS"] & ~clear
        if clear & SampleStatus.DONE.mask:
            self.lower_intx()

    def _doorbell(self, value: int) -> None:
        if value != 1:
            return
        if SampleStatus.BUSY.get(self.regs["STATUS"]):
            log.debug("sample: doorbell while busy ignored")
            return
        addr = (self.regs["DMA_ADDR_HI"] << 32) | self.regs["DMA_ADDR_LO"]
        length, seed, vector = self.regs["DMA_LEN"], self.regs["DMA_SEED"], self.regs["IRQ_VECTOR"]
        self.regs["STATUS"] = SampleStatus.BUSY.mask
        self.lower_intx()
        self._job += 1
        self._job_vector = vector
        self.spawn(self._run_dma(self._job, addr, length, seed, vector), name="sample-dma")

    # -- DMA -------------------------------------------------------------------

    async def _run_dma(self, job: int, addr: int, length: int, seed: int, vector: int) -> None:
        error = False
        try:
            if length > self.MAX_DMA_LEN:
                ratelimit.log(log, logging.INFO, "sample: DMA_LEN %#x above %#x", length,
                              self.MAX_DMA_LEN)
                error = True
            elif length:
                await self.dma.dma_write(addr, pattern(seed, length))
        except DmaError as e:
            ratelimit.log(log, logging.INFO, "sample: DMA to %#x+%#x failed: %s", addr, length, e)
            error = True
        except Exception:
            log.exception("sample: DMA to %#x+%#x crashed", addr, length)
            error = True
        self._complete(job, error, vector)

    def _complete(self, job: int, error: bool, vector: int) -> None:
        """Finish DMA ``job`` unless a reset or a disconnect already ended it."""
        if job != self._job or not SampleStatus.BUSY.get(self.regs["STATUS"]):
            return
        self.regs["STATUS"] = SampleStatus.pack(DONE=1, ERROR=int(error))
        self.regs["COMPLETIONS"] = (self.regs["COMPLETIONS"] + 1) & 0xFFFF_FFFF
        self.raise_irq(vector)

    def client_disconnected(self) -> None:
        """The client is gone: a DMA in flight is cancelled and completes with ERROR."""
        super().client_disconnected()
        self._complete(self._job, error=True, vector=self._job_vector)
