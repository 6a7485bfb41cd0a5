"""A device's untagged DMA port: every access through the ioasid model.

``PciDevice.dma`` (the ``DmaPort`` of issue 2) is an ``IommuDmaPort`` while a
client is connected: ``dma_read``/``dma_write`` call the device's
``IommuDevice.read``/``write`` with ``pasid=None`` (untagged DMA, the RID),
so the model's translation (pass-through on the VM's stage-2 parent, or
whatever the vIOMMU attached) decides where it lands. A ``Fault`` becomes
``DmaError(EFAULT)``.

Guest memory QEMU maps *without* an fd (anonymous RAM, ROM) is not in the
model: it can only be reached by DMA_READ/DMA_WRITE messages. A device whose
class sets ``MESSAGE_DMA_FALLBACK`` (the ``sample`` device) keeps the issue-2
behaviour there: when the model faults and the device's untagged addresses
are GPAs (``Platform.untagged_is_gpa``: pass-through, or no VM known yet),
the access goes to the connection's message port instead. That port refuses
the fd-backed ranges (the transport hands those to the model only), so the
fallback never bypasses a translation. Model-backed devices (``vuser-dma``)
have no fallback: DMA to fd-less memory faults.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from vuser.iommu import Fault, Stage
from vuser.backend import DmaError, DmaPort

if TYPE_CHECKING:
    from .base import PciDevice

__all__ = ["IommuDmaPort", "fault_error"]


def fault_error(f: Fault, addr: int, n: int) -> DmaError:
    """The ``DmaError`` for a model fault on ``[addr, addr + n)``."""
    return DmaError(errno.EFAULT, addr, n,
                    f"DMA of {n} bytes at {addr:#x} faulted: reason {int(f.reason):#x} "
                    f"at stage {Stage(f.stage).name}, IOVA {f.iova:#x}"
                    + (f", GPA {f.gpa:#x}" if f.gpa is not None else ""))


class IommuDmaPort:
    """``DmaPort`` of ``device`` through its ``IommuDevice`` (see module doc)."""

    def __init__(self, device: PciDevice, fallback: DmaPort | None) -> None:
        self.device = device
        self.fallback = fallback
        self.fallbacks = 0

    def _fallback_for(self, f: Fault) -> DmaPort | None:
        dev = self.device
        if self.fallback is None or not dev.MESSAGE_DMA_FALLBACK:
            return None
        if f.stage not in (Stage.S2, Stage.BLOCKED):
            return None
        platform = dev.platform
        if platform is None or not platform.untagged_is_gpa(dev):
            return None
        self.fallbacks += 1
        return self.fallback

    async def dma_read(self, addr: int, n: int) -> bytes:
        r = self.device.iommu.read(None, addr, n)
        if r.__class__ is Fault:
            port = self._fallback_for(r)  # type: ignore[arg-type]
            if port is None:
                raise fault_error(r, addr, n)  # type: ignore[arg-type]
            return await port.dma_read(addr, n)
        return r  # type: ignore[return-value]

    async def dma_write(self, addr: int, data: bytes) -> None:
        r = self.device.iommu.write(None, addr, data)
        if r is not None:
            port = self._fallback_for(r)
            if port is None:
                raise fault_error(r, addr, len(data))
            await port.dma_write(addr, data)
