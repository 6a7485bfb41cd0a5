"""vIOMMU, vDEVICE and vEVENTQ objects (iommufd ``viommu.c``, ``eventq.c``).

A vIOMMU stands for the guest-visible IOMMU instance over one NEST_PARENT
paging HWPT; nested HWPTs may be allocated on it, and it records each
device's virtual id (vDEVICE: the vRID/vSID the guest uses).

Types. Mainline rejects ``IOMMU_VIOMMU_TYPE_DEFAULT`` (0) and every type the
driver does not implement, and the VT-d driver implements none: so on the
model, as on a VT-d host, DEFAULT, ARM_SMMUV3 and TEGRA241_CMDQV give
EOPNOTSUPP. The model adds one documented vuser type, ``VUSER_VTD``
(``0x76550001``), which has what a VT-d vIOMMU would need: nested HWPTs,
``hwpt_invalidate`` on the vIOMMU with entries naming a vDEVICE and a vPASID
(data type ``VUSER_VTD``), and a vEVENTQ of type ``VUSER_VTD`` that receives
the stage-1 faults of its vDEVICEs, tagged with the vRID and the vPASID
(docs/iommufd-fidelity.md, "vuser types").

vEVENTQ (``eventq.c``): at most ``depth`` events wait; one more is dropped
and a single header with ``LOST_EVENTS`` (no payload) sits at the tail of the
queue; every event, lost or not, takes the next ``sequence`` (0..INT_MAX,
wrapping), so a reader sees how many went missing. ``veventq_read(id,
count)`` returns whole records (8-byte header, then the payload) that fit in
``count`` bytes; a record that does not fit stays queued.
"""

from __future__ import annotations

import errno
from collections import deque
from typing import TYPE_CHECKING, Any

from .core import ContextCore
from .errors import IommufdError, fail
from .hwpt import HwptPaging
from .invalidation import flush_dev, run_entries
from .objects import IommufdObject, ObjType
from .uapi import (
    U64_MAX, VTD_INV_FLAGS_LEAF, HwptInvalidateDataType, IommuVeventVuserVtd,
    IommuViommuVuserVtdInvalidate, VeventHeader, VeventqFlags, VeventqType, ViommuType,
)

if TYPE_CHECKING:
    from .device import BoundDevice
    from .pagetable.results import Fault

#: sequence wraps at INT_MAX, as ``veventq->sequence``.
INT_MAX = (1 << 31) - 1


class Viommu(IommufdObject):
    """``struct iommufd_viommu`` over a nesting parent."""

    TYPE = ObjType.VIOMMU

    def __init__(self, parent: HwptPaging, viommu_type: int) -> None:
        super().__init__()
        self.parent = parent
        self.viommu_type = viommu_type
        self.vdevs: dict[int, Vdevice] = {}
        self.veventqs: dict[int, Veventq] = {}

    def release(self, ctx: Any) -> None:
        self.parent.users -= 1

    def cache_invalidate(self, ctx: ContextCore, entries: Any, data_type: int) -> int:
        """HWPT_INVALIDATE on a VUSER_VTD vIOMMU (``viommu->ops->cache_invalidate``).

        Each entry (``IommuViommuVuserVtdInvalidate``) names a vDEVICE by
        ``virt_id`` and a vPASID (``flags`` PASID_VALID 2; without it, the
        RID): the IOTLB entries of that device and (translated) pPASID in
        ``[addr, addr + npages * 4K)`` go, and its device TLB is told.
        EINVAL another data type; per entry: the rules of
        ``invalidation.run_entries``, then ENOENT an unknown ``virt_id``.
        """
        if data_type != HwptInvalidateDataType.VUSER_VTD:
            raise fail(errno.EINVAL, f"invalidation data type {data_type!r} is not VUSER_VTD")

        def act(done: int, inv: Any) -> None:
            vd = self.vdevs.get(inv.virt_id)
            if vd is None:
                raise IommufdError(errno.ENOENT, f"entry {done}: no vDEVICE {inv.virt_id:#x}",
                                   processed=done)
            if inv.npages:
                bd = vd.bd
                pasid = bd.v2p.get(inv.pasid, inv.pasid) if inv.flags & VINV_PASID_VALID \
                    else None
                flush_dev(ctx, bd, pasid, inv.addr, inv.npages)

        return run_entries(entries, IommuViommuVuserVtdInvalidate, _VINV_FLAGS, act)

    def describe(self) -> dict[str, object]:
        d = super().describe()
        d.update(parent=self.parent.id, viommu_type=self.viommu_type,
                 vdevices={v: vd.bd.id for v, vd in self.vdevs.items()},
                 veventqs={t: q.id for t, q in self.veventqs.items()})
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


class Veventq(IommufdObject):
    """``struct iommufd_veventq``: events of one type from one vIOMMU."""

    TYPE = ObjType.VEVENTQ

    def __init__(self, viommu: Viommu, veventq_type: int, depth: int) -> None:
        super().__init__()
        self.viommu, self.veventq_type, self.depth = viommu, veventq_type, depth
        #: ``(flags, sequence, payload)``; the lost-events header has flags LOST_EVENTS.
        self.deliver: deque[tuple[int, int, bytes]] = deque()
        self.num_events = 0
        self.sequence = 0

    def report(self, payload: bytes) -> None:
        """``iommufd_viommu_report_event`` + ``iommufd_vevent_handler``."""
        if self.deliver and self.deliver[-1][0] & VeventqFlags.LOST_EVENTS:
            self.deliver.pop()  # the lost-events header moves to the tail
        if self.num_events == self.depth:
            self.deliver.append((int(VeventqFlags.LOST_EVENTS), self.sequence, b""))
        else:
            self.deliver.append((0, self.sequence, payload))
            self.num_events += 1
        self.sequence = (self.sequence + 1) & INT_MAX

    def read(self, count: int) -> bytes:
        """``iommufd_veventq_fops_read``: whole records that fit in ``count`` bytes."""
        out = bytearray()
        while self.deliver:
            flags, seq, payload = self.deliver[0]
            if len(out) + VeventHeader.SIZE + len(payload) > count:
                break
            self.deliver.popleft()
            out += VeventHeader(flags=flags, sequence=seq).pack() + payload
            if not flags & VeventqFlags.LOST_EVENTS:
                self.num_events -= 1
        return bytes(out)

    def release(self, ctx: Any) -> None:
        self.viommu.users -= 1
        del self.viommu.veventqs[self.veventq_type]

    def describe(self) -> dict[str, object]:
        d = super().describe()
        d.update(viommu=self.viommu.id, veventq_type=self.veventq_type, depth=self.depth,
                 queued=len(self.deliver), num_events=self.num_events, sequence=self.sequence)
        return d


def viommu_alloc(ctx: ContextCore, dev_id: int, hwpt_id: int, viommu_type: int) -> int:
    """IOMMU_VIOMMU_ALLOC over a NEST_PARENT paging HWPT; returns its id.

    Checks in the kernel's order (``iommufd_viommu_alloc_ioctl``):
    EOPNOTSUPP for DEFAULT (0); ENOENT the device; EOPNOTSUPP a type the
    VT-d driver lacks (all upstream ones: only the vuser type
    ``VUSER_VTD`` is accepted); ENOENT unless ``hwpt_id`` is a paging
    HWPT; EINVAL when it is not a nesting parent.
    """
    if viommu_type == ViommuType.DEFAULT:
        raise fail(errno.EOPNOTSUPP, "vIOMMU type DEFAULT is not allocatable")
    ctx._objects.get_of(dev_id, ObjType.DEVICE)
    if viommu_type != ViommuType.VUSER_VTD:
        raise fail(errno.EOPNOTSUPP, f"vIOMMU type {viommu_type!r} is not supported by VT-d")
    parent = ctx._objects.get(hwpt_id, HwptPaging)
    if not parent.nest_parent:
        raise fail(errno.EINVAL, f"HWPT {hwpt_id} is not a NEST_PARENT")
    v = Viommu(parent, int(viommu_type))
    ctx._step("viommu_alloc")
    ctx._objects.commit(v)
    parent.users += 1
    return v.id


def vdevice_alloc(ctx: ContextCore, viommu_id: int, dev_id: int, virt_id: int) -> int:
    """IOMMU_VDEVICE_ALLOC: record ``virt_id`` (u64) for a device; returns its id.

    Checks in the kernel's order (``iommufd_vdevice_alloc_ioctl``):
    EINVAL ``virt_id`` beyond u64; ENOENT the vIOMMU, then the device;
    EEXIST when the device has a vDEVICE already (on any vIOMMU), then
    when ``virt_id`` is taken on this vIOMMU. Unbinding the device
    destroys its vDEVICE silently (a later DESTROY of it is ENOENT).
    """

    if not isinstance(virt_id, int) or not 0 <= virt_id <= U64_MAX:
        raise fail(errno.EINVAL, f"virt_id {virt_id!r} is not a u64")
    viommu = ctx._objects.get(viommu_id, Viommu)
    bd: BoundDevice = ctx._objects.get_of(dev_id, ObjType.DEVICE)
    if bd.vdevices:
        raise fail(errno.EEXIST, f"device {dev_id} already has a vDEVICE")
    if virt_id in viommu.vdevs:
        raise fail(errno.EEXIST, f"virt_id {virt_id:#x} is taken")
    vd = Vdevice(viommu, bd, virt_id)
    ctx._step("vdevice_alloc")
    ctx._objects.commit(vd)
    viommu.vdevs[virt_id] = vd
    viommu.users += 1
    bd.vdevices.add(vd)
    return vd.id


def vdevice_lookup(ctx: ContextCore, viommu_id: int, virt_id: int) -> int:
    """Model extension: the dev_id behind a virtual id, else ENOENT."""
    viommu = ctx._objects.get(viommu_id, Viommu)
    vd = viommu.vdevs.get(virt_id)
    if vd is None:
        raise fail(errno.ENOENT, f"no vDEVICE {virt_id!r}")
    return vd.bd.id


# -- vEVENTQ ----------------------------------------------------------------
def veventq_alloc(ctx: ContextCore, viommu_id: int, veventq_type: int, depth: int) -> int:
    """IOMMU_VEVENTQ_ALLOC: a queue of ``depth`` events of one type; returns its id.

    Checks in the kernel's order (``iommufd_veventq_alloc``): EOPNOTSUPP
    type DEFAULT (0); EINVAL depth 0; ENOENT the vIOMMU; EEXIST a queue
    of that type on that vIOMMU. (The kernel returns an fd as well; the
    model's fd is ``veventq_read``.) Only ``VUSER_VTD`` queues receive
    events.
    """
    if not isinstance(veventq_type, int) or veventq_type == VeventqType.DEFAULT:
        raise fail(errno.EOPNOTSUPP, "vEVENTQ type DEFAULT is not allocatable")
    if not isinstance(depth, int) or not 0 < depth < 1 << 32:
        raise fail(errno.EINVAL, f"depth {depth!r} is not 1..2^32-1")
    viommu = ctx._objects.get(viommu_id, Viommu)
    if veventq_type in viommu.veventqs:
        raise fail(errno.EEXIST, f"vIOMMU {viommu_id} has a type {veventq_type} vEVENTQ")
    q = Veventq(viommu, veventq_type, depth)
    ctx._step("veventq_alloc")
    ctx._objects.commit(q)
    viommu.veventqs[veventq_type] = q
    viommu.users += 1
    return q.id


def veventq_read(ctx: ContextCore, veventq_id: int, count: int) -> bytes:
    """read() on a vEVENTQ: whole records (header + payload) within ``count`` bytes.

    Records are ``VeventHeader`` ``{flags, sequence}`` then, unless the
    flags say LOST_EVENTS, the type's payload (``IommuVeventVuserVtd``).
    A record that does not fit stays queued (an empty result).
    """
    q = ctx._objects.get(veventq_id, Veventq)
    if not isinstance(count, int) or count < 0:
        raise fail(errno.EINVAL, f"bad count {count!r}")
    return q.read(count)


def vevent_fault(ctx: ContextCore, bd: BoundDevice, hwpt: Any, f: Fault) -> None:
    """Queue a stage-1 fault of a vDEVICE's nested HWPT on its vIOMMU's
    VUSER_VTD vEVENTQ, tagged with the vRID and the vPASID."""
    viommu = hwpt.viommu
    q = viommu.veventqs.get(int(VeventqType.VUSER_VTD))
    vd = next((v for v in bd.vdevices if v.viommu is viommu), None)
    if q is None or vd is None:
        return
    q.report(IommuVeventVuserVtd(
        virt_id=vd.virt_id, addr=f.iova,
        pasid=f.pasid if f.pasid is not None else 0, reason=int(f.reason),
        perm=int(f.access) & 0xFF, flags=int(f.pasid is not None)).pack())


#: ``IommuViommuVuserVtdInvalidate.flags``: LEAF (1) and PASID_VALID (2).
VINV_PASID_VALID = 2
_VINV_FLAGS = VTD_INV_FLAGS_LEAF | VINV_PASID_VALID
