"""Devices and groups as the device layer registers them.

The model's notion of a device is an ``IommuDevice``: a DMA-capable function
with a *device label* (its stream id, u32, unique in the registry; the vIOMMU
uses it as the source-id), an IOMMU group, a PASID width, an aperture and
reserved regions. Device models create one with ``IommuRegistry.register``
and then use only its public methods (``translate``, ``read``, ``write``,
``page_request``, ``ats_translate``) and hooks (``devtlb_invalidate``); they
never reach into the model.

Security rules (docs/architecture.md "The model", devices and
groups; Linux drivers/iommu/iommufd/device.c):

- a device is unusable, MMIO included, until it is bound (``bound``);
- the first bind of any device of a group makes that context the group's
  owner and puts the whole group in a blocking domain;
- every device of a group binds to the owner context (else EPERM);
- DMA works only once the device (or the PASID) is attached; detach goes back
  to blocking; unbinding the last device of a group releases the group.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .errors import fail
from .pagetable.addresses import Iova
from .pagetable.results import Access, Fault, FaultKind, Stage
from .uapi import U64_MAX

if TYPE_CHECKING:
    from .context import IoasidContext
    from .dma import AtsTranslation, Segment

#: Called as ``hook(pasid, addr, npages)`` when the device's ATC entries for
#: ``pasid`` (None: the RID; ``ALL_PASIDS``: all) in ``[addr, addr + npages*4K)``
#: must go; ``npages == U64_MAX`` means all addresses.
DevTlbHook = Callable[[int | None, int, int], None]


class IommuGroup:
    """An IOMMU group: the unit of DMA isolation and of ownership."""

    def __init__(self, gid: int) -> None:
        self.gid = gid
        self.devices: list[IommuDevice] = []
        #: The context owning the group's DMA (None: released).
        self.owner: IoasidContext | None = None
        #: Kernel ``igroup->hwpt``: what the group's RIDs are attached to.
        self.rid_hwpt: Any = None
        self.rid_devices: set[Any] = set()

    @property
    def blocked(self) -> bool:
        """True while a context owns the group (DMA blocked unless attached)."""
        return self.owner is not None

    def describe(self) -> dict[str, Any]:
        return {"gid": self.gid, "labels": [d.label for d in self.devices],
                "owned": self.owner is not None}


class IommuDevice:
    """A DMA-capable function registered by the device layer.

    ``aperture`` is the inclusive IOVA range the device can address;
    ``reserved`` lists inclusive ranges it must never DMA to (e.g. the x86
    MSI window). Both narrow the IOVA ranges of an IOAS it attaches to.
    """

    def __init__(self, registry: IommuRegistry, name: str, label: int, group: IommuGroup, *,
                 pasid_width: int = 0, aperture: tuple[int, int] = (0, U64_MAX),
                 reserved: list[tuple[int, int]] | None = None, dirty_tracking: bool = True,
                 ats: bool = False, pri: bool = False, pasid_exec: bool = False,
                 pasid_priv: bool = False) -> None:
        self.registry, self.name, self.label, self.group = registry, name, label, group
        self.pasid_width = pasid_width
        #: PCI PASID capability: Execute / Privileged Mode enabled.
        self.pasid_exec, self.pasid_priv = pasid_exec, pasid_priv
        self.aperture = aperture
        self.reserved = list(reserved or [])
        self.dirty_tracking, self.ats, self.pri = dirty_tracking, ats, pri
        #: Set while bound: the owning context and the iommufd device id.
        self.ctx: IoasidContext | None = None
        self.dev_id = 0
        #: Device-TLB (ATC) invalidation hook, set by an ATS-capable model.
        self.devtlb_invalidate: DevTlbHook | None = None

    @property
    def bound(self) -> bool:
        """True once bound to a context: only then may MMIO be served."""
        return self.ctx is not None

    def _blocked(self, pasid: int | None, iova: int, access: int) -> Fault:
        reason = FaultKind.CONTEXT_ENTRY_P if pasid is None else FaultKind.PASID_ENTRY_P
        return Fault(reason, Stage.BLOCKED, iova, int(access), pasid=pasid,
                     label=self.label)

    # -- the device model's DMA API ----------------------------------------
    def translate(self, pasid: int | None, iova: Iova, length: int,
                  access: int) -> list[Segment] | Fault:
        """Translate a DMA request; see ``IoasidContext.translate``."""
        ctx = self.ctx
        if ctx is None:
            return self._blocked(pasid, iova, access)
        return ctx.translate(self.dev_id, pasid, iova, length, access)

    def read(self, pasid: int | None, iova: Iova, length: int,
             access: int = Access.READ) -> bytes | Fault:
        ctx = self.ctx
        if ctx is None:
            return self._blocked(pasid, iova, access)
        return ctx.read(self.dev_id, pasid, iova, length, access)

    def write(self, pasid: int | None, iova: Iova, data: bytes | bytearray | memoryview,
              access: int = Access.WRITE) -> None | Fault:
        ctx = self.ctx
        if ctx is None:
            return self._blocked(pasid, iova, access)
        return ctx.write(self.dev_id, pasid, iova, data, access)

    def ats_translate(self, pasid: int | None, iova: Iova,
                      access: int = Access.READ) -> AtsTranslation | Fault:
        ctx = self.ctx
        if ctx is None:
            return self._blocked(pasid, iova, access)
        return ctx.ats_translate(self.dev_id, pasid, iova, access)

    def page_request(self, pasid: int | None, addr: Iova, perm: int, grpid: int, last: bool,
                     on_response: Callable[[int], None] | None = None) -> bool:
        """A PRI page request; see ``IoasidContext.page_request``.

        Unbound devices get an immediate INVALID response.
        """
        ctx = self.ctx
        if ctx is None:
            if on_response is not None and last:
                on_response(1)
            return False
        return ctx.page_request(self.dev_id, pasid, addr, perm, grpid, last, on_response)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "label": self.label, "group": self.group.gid,
                "pasid_width": self.pasid_width, "aperture": list(self.aperture),
                "reserved": [list(r) for r in self.reserved], "ats": self.ats, "pri": self.pri,
                "dirty_tracking": self.dirty_tracking, "bound": self.bound,
                "dev_id": self.dev_id if self.bound else None}

    def __repr__(self) -> str:
        return f"IommuDevice({self.name!r}, label={self.label:#x}, group={self.group.gid})"


class IommuRegistry:
    """All devices and groups that contexts of one server may bind."""

    def __init__(self) -> None:
        self._devices: dict[int, IommuDevice] = {}
        self._groups: dict[int, IommuGroup] = {}
        self._next_label = 1
        self._next_gid = 1

    def new_group(self) -> IommuGroup:
        g = IommuGroup(self._next_gid)
        self._next_gid += 1
        self._groups[g.gid] = g
        return g

    def register(self, name: str, *, label: int | None = None, group: IommuGroup | None = None,
                 pasid_width: int = 0, aperture: tuple[int, int] = (0, U64_MAX),
                 reserved: list[tuple[int, int]] | None = None, dirty_tracking: bool = True,
                 ats: bool = False, pri: bool = False, pasid_exec: bool = False,
                 pasid_priv: bool = False) -> IommuDevice:
        """Register a device; a new singleton group unless ``group`` is given.

        ``label`` (u32) is allocated when None; EEXIST if taken. EINVAL for a
        PASID width outside 0..20, an empty aperture or a foreign group.
        """
        if label is None:
            while self._next_label in self._devices:
                self._next_label += 1
            label = self._next_label
        if not isinstance(label, int) or not 0 <= label < 1 << 32:
            raise fail(errno.EINVAL, f"label {label!r} is not a u32")
        if label in self._devices:
            raise fail(errno.EEXIST, f"label {label:#x} is taken")
        if not 0 <= pasid_width <= 20:
            raise fail(errno.EINVAL, f"PASID width {pasid_width} is not 0..20")
        lo, hi = aperture
        if not 0 <= lo <= hi <= U64_MAX:
            raise fail(errno.EINVAL, f"bad aperture {aperture!r}")
        for s, e in reserved or []:
            if not 0 <= s <= e <= U64_MAX:
                raise fail(errno.EINVAL, f"bad reserved range {(s, e)!r}")
        if group is not None and self._groups.get(group.gid) is not group:
            raise fail(errno.EINVAL, "group belongs to another registry")
        if group is not None and group.owner is not None:
            raise fail(errno.EBUSY, f"group {group.gid} is owned by a context")
        g = group if group is not None else self.new_group()
        dev = IommuDevice(self, name, label, g, pasid_width=pasid_width, aperture=aperture,
                          reserved=reserved, dirty_tracking=dirty_tracking, ats=ats, pri=pri,
                          pasid_exec=pasid_exec, pasid_priv=pasid_priv)
        g.devices.append(dev)
        self._devices[label] = dev
        return dev

    def unregister(self, dev: IommuDevice) -> None:
        """Forget a device; EBUSY while it is bound."""
        if self._devices.get(dev.label) is not dev:
            raise fail(errno.ENOENT, f"{dev!r} is not registered")
        if dev.bound:
            raise fail(errno.EBUSY, f"{dev!r} is bound")
        del self._devices[dev.label]
        dev.group.devices.remove(dev)
        if not dev.group.devices:
            del self._groups[dev.group.gid]

    def by_label(self, label: int) -> IommuDevice:
        try:
            return self._devices[label]
        except (KeyError, TypeError):
            raise fail(errno.ENOENT, f"no device with label {label!r}") from None

    def devices(self) -> list[IommuDevice]:
        return list(self._devices.values())

    def groups(self) -> list[IommuGroup]:
        return list(self._groups.values())
