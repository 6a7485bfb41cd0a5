"""vIOMMU and vDEVICE objects (iommufd ``viommu.c``).

A vIOMMU stands for the guest-visible IOMMU instance over one NEST_PARENT
paging HWPT; nested HWPTs may be allocated on it, and it records each
device's virtual id (vDEVICE: the vSID/vRID the guest uses, for the model the
label the guest sees). The model supports the core-managed DEFAULT type only.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any

from .errors import fail
from .hwpt import HwptPaging
from .objects import IommufdObject, ObjectTable, ObjType
from .uapi import U64_MAX, ViommuType

if TYPE_CHECKING:
    from .device import BoundDevice


class Viommu(IommufdObject):
    """``struct iommufd_viommu`` over a nesting parent."""

    TYPE = ObjType.VIOMMU

    def __init__(self, parent: HwptPaging, viommu_type: int) -> None:
        super().__init__()
        self.parent = parent
        self.viommu_type = viommu_type
        self.vdevs: dict[int, Vdevice] = {}

    def release(self, ctx: Any) -> None:
        self.parent.users -= 1

    def describe(self) -> dict[str, object]:
        d = super().describe()
        d.update(parent=self.parent.id, viommu_type=self.viommu_type,
                 vdevices={v: vd.bd.id for v, vd in self.vdevs.items()})
        return d


class Vdevice(IommufdObject):
    """``struct iommufd_vdevice``: a device's virtual id on a vIOMMU."""

    TYPE = ObjType.VDEVICE

    def __init__(self, viommu: Viommu, bd: BoundDevice, virt_id: int) -> None:
        super().__init__()
        self.viommu, self.bd, self.virt_id = viommu, bd, virt_id

    def release(self, ctx: Any) -> None:
        self.viommu.users -= 1
        del self.viommu.vdevs[self.virt_id]
        self.bd.vdevices.discard(self)

    def describe(self) -> dict[str, object]:
        d = super().describe()
        d.update(viommu=self.viommu.id, dev_id=self.bd.id, virt_id=self.virt_id)
        return d


class ViommuCommands:
    """VIOMMU_ALLOC / VDEVICE_ALLOC of ``IoasidContext``."""

    _objects: ObjectTable

    def viommu_alloc(self, dev_id: int, hwpt_id: int,
                     viommu_type: int = ViommuType.DEFAULT) -> int:
        """IOMMU_VIOMMU_ALLOC over a NEST_PARENT paging HWPT; returns its id.

        EOPNOTSUPP for a type other than DEFAULT (0); EINVAL when the HWPT is
        not a nesting parent; ENOENT ids.
        """
        from .device import BoundDevice

        self._objects.get(dev_id, BoundDevice)
        parent = self._objects.get(hwpt_id, HwptPaging)
        if viommu_type != ViommuType.DEFAULT:
            raise fail(errno.EOPNOTSUPP, f"vIOMMU type {viommu_type!r} is not supported")
        if not parent.nest_parent:
            raise fail(errno.EINVAL, f"HWPT {hwpt_id} is not a NEST_PARENT")
        v = self._objects.commit(Viommu(parent, int(viommu_type)))
        parent.users += 1
        return v.id

    def vdevice_alloc(self, viommu_id: int, dev_id: int, virt_id: int) -> int:
        """IOMMU_VDEVICE_ALLOC: record ``virt_id`` (u64) for a device; returns its id.

        EEXIST when the virtual id is taken on this vIOMMU or the device
        already has one there; EINVAL for a value outside u64. Unbinding the
        device destroys its vDEVICEs silently.
        """
        from .device import BoundDevice

        viommu = self._objects.get(viommu_id, Viommu)
        bd = self._objects.get(dev_id, BoundDevice)
        if not isinstance(virt_id, int) or not 0 <= virt_id <= U64_MAX:
            raise fail(errno.EINVAL, f"virt_id {virt_id!r} is not a u64")
        if virt_id in viommu.vdevs:
            raise fail(errno.EEXIST, f"virt_id {virt_id:#x} is taken")
        if any(vd.viommu is viommu for vd in bd.vdevices):
            raise fail(errno.EEXIST, f"device {dev_id} already has a vDEVICE here")
        vd = self._objects.commit(Vdevice(viommu, bd, virt_id))
        viommu.vdevs[virt_id] = vd
        viommu.users += 1
        bd.vdevices.add(vd)
        return vd.id

    def vdevice_lookup(self, viommu_id: int, virt_id: int) -> int:
        """Model extension: the dev_id behind a virtual id, else ENOENT."""
        viommu = self._objects.get(viommu_id, Viommu)
        vd = viommu.vdevs.get(virt_id)
        if vd is None:
            raise fail(errno.ENOENT, f"no vDEVICE {virt_id!r}")
        return vd.bd.id
