"""The server's platform: one ioasid context, its VMs and their devices.

docs/architecture.md ("Devices", "Guest memory"): every device of a server
shares one ``IoasidContext``; devices of one VM share one GPA IOAS and
recognise each other by the memfd behind their DMA_MAPs (``fstat``:
``(st_dev, st_ino)``).

- ``Platform`` (one per server process) owns the ``IommuRegistry`` and the
  ``IoasidContext``, the named IOMMU groups (``group=G``), the registered
  ``PciDevice``s by label, and the VMs.
- ``Vm``: a GPA IOAS (``ioas_id``) holding its connections' fd-backed
  DMA_MAPs, the newest map of a range winning (``GpaSpace``), and a
  NEST_PARENT paging HWPT over it (``s2_hwpt_id``): every device's default
  domain, so untagged DMA is pass-through GPA DMA until the vIOMMU says
  otherwise.
- ``DeviceBinding``: one connection's DMA_MAP/DMA_UNMAP sink (the transport's
  ``DmaSpace`` calls it for maps that carry an fd). The first such map
  selects the VM by the file's identity, or creates it; the device is then
  bound to the context and its RID attached to the VM's stage-2 parent
  (``device_bind``/``device_attach``, as in iommufd's ``device.c``). When
  the connection goes, the device is unbound: every PASID and the RID go
  back to blocking, and its group is released with its last bound device.

Every device attached to the VM's stage-2 parent sees the whole union of the
VM's maps, as devices sharing an IOAS do in iommufd: a connection's DMA_UNMAP
takes memory away only when no other connection of the VM still maps it.

A device that finds the setup it was given is wrong in a way no guest can
recover from (vuser-iommu's ``drhd_base``) calls ``Platform.fatal``: the
error is kept (``fatal_error``) and the ``on_fatal`` callbacks run; ``vuser
serve`` registers one that stops the server, which prints the error line
and exits with ``FATAL_EXIT``.

A VM is released when its last device leaves: the ``on_release`` callbacks
run first (the vIOMMU forgets what it built), then whatever is left over the
parent and unused (nested HWPTs, vIOMMUs) is destroyed, then the parent HWPT
and the IOAS.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from vuser.errors import RemoteProtocolError
from vuser.iommu import IoasidContext, IommufdError, IommuDevice, IommuGroup, IommuRegistry
from vuser.iommu.uapi import HwptAllocFlags

from .gpa_space import READABLE, WRITEABLE, GpaSpace

if TYPE_CHECKING:
    from .base import PciDevice

log = logging.getLogger(__name__)

__all__ = ["Platform", "Vm", "DeviceBinding", "FATAL_EXIT"]

#: Exit status of ``vuser serve`` after ``Platform.fatal``.
FATAL_EXIT = 3

FileIdent = tuple[int, int]


class Vm:
    """One VM: its GPA IOAS, the stage-2 parent over it, its devices."""

    def __init__(self, platform: Platform, vm_id: int) -> None:
        self.platform = platform
        self.vm_id = vm_id
        ctx = platform.ctx
        #: The VM's GPA IOAS: guest RAM as QEMU's DMA_MAPs describe it.
        self.ioas_id = ctx.ioas_alloc()
        #: NEST_PARENT (and PASID-capable) paging HWPT over ``ioas_id``. It is
        #: allocated through the first device that binds into the VM (iommufd
        #: HWPT_ALLOC needs a device); 0 until then.
        self.s2_hwpt_id = 0
        #: Whether ``s2_hwpt_id`` was allocated PASID-capable (it needs a
        #: device with PASIDs to allocate it so).
        self.s2_pasid = False
        self.gpa = GpaSpace(ctx, self.ioas_id)
        self._devices: list[PciDevice] = []
        #: ``cb(vm)`` before the VM's parent HWPT and IOAS are destroyed.
        self.on_release: list[Callable[[Vm], None]] = []
        #: ``cb(vm, device)`` after a device bound into the VM (RID on the parent).
        self.on_join: list[Callable[[Vm, PciDevice], None]] = []
        self.released = False

    def devices(self) -> list[PciDevice]:
        """The ``PciDevice``s whose connections joined this VM."""
        return list(self._devices)

    def gpa_read(self, gpa: int, n: int) -> bytes:
        """Host-side read of guest RAM; ``DmaError`` (EFAULT) on a hole."""
        return self.gpa.read(gpa, n)

    def gpa_write(self, gpa: int, data: bytes) -> None:
        """Host-side write of guest RAM; ``DmaError`` (EFAULT hole, EPERM read-only)."""
        self.gpa.write(gpa, data)

    def describe(self) -> dict[str, Any]:
        return {"vm_id": self.vm_id, "ioas_id": self.ioas_id, "s2_hwpt_id": self.s2_hwpt_id,
                "files": [list(f) for f in self.gpa.files()],
                "labels": [d.iommu.label for d in self._devices],
                "ram": [s.describe() for s in self.gpa.segments()]}

    def __repr__(self) -> str:
        return f"Vm({self.vm_id}, ioas={self.ioas_id}, s2={self.s2_hwpt_id})"


class Platform:
    """Everything devices of one server share (see the module doc)."""

    def __init__(self, registry: IommuRegistry | None = None,
                 ctx: IoasidContext | None = None) -> None:
        self.registry = registry or IommuRegistry()
        self.ctx = ctx or IoasidContext(self.registry)
        self._vms: dict[int, Vm] = {}
        self._file_vm: dict[FileIdent, Vm] = {}
        self._next_vm = 1
        self._groups: dict[str, IommuGroup] = {}
        self._devices: dict[int, PciDevice] = {}
        self._bindings: dict[int, DeviceBinding] = {}
        self.fatal_error: str | None = None
        self.on_fatal: list[Callable[[str], None]] = []

    def fatal(self, message: str) -> None:
        """A device cannot go on (see the module doc); the first message is kept."""
        if self.fatal_error is not None:
            return
        self.fatal_error = message
        if not self.on_fatal:
            log.error("%s", message)
        for cb in list(self.on_fatal):
            cb(message)

    # -- VMs --------------------------------------------------------------
    def vms(self) -> list[Vm]:
        return list(self._vms.values())

    def vm_of_file(self, ident: FileIdent) -> Vm | None:
        return self._file_vm.get(tuple(ident))  # type: ignore[arg-type]

    def vm_for_file(self, ident: FileIdent) -> Vm:
        """The VM whose guest RAM is file ``(st_dev, st_ino)``; created on first sight."""
        ident = (int(ident[0]), int(ident[1]))
        vm = self._file_vm.get(ident)
        if vm is None:
            vm = self._new_vm()
            self._file_vm[ident] = vm
        return vm

    def _new_vm(self) -> Vm:
        vm = Vm(self, self._next_vm)
        self._next_vm += 1
        self._vms[vm.vm_id] = vm
        log.info("VM %d: GPA IOAS %d", vm.vm_id, vm.ioas_id)
        return vm

    def vm_of(self, device: PciDevice) -> Vm | None:
        b = self._bindings.get(device.iommu.label)
        return b.vm if b is not None else None

    def _release_vm(self, vm: Vm) -> None:
        """Destroy an unused VM's objects (no device left)."""
        if vm.released or vm._devices:
            return
        for cb in list(vm.on_release):
            try:
                cb(vm)
            except Exception:
                log.exception("VM %d: on_release callback failed", vm.vm_id)
        vm.gpa.clear()
        try:
            if vm.s2_hwpt_id:
                self._destroy_children(vm.s2_hwpt_id)
                self.ctx.destroy(vm.s2_hwpt_id)
            self.ctx.destroy(vm.ioas_id)
        except IommufdError as e:
            # Someone (the RPC, the vIOMMU) still holds objects over it:
            # leave them to the context's close.
            log.warning("VM %d: objects stay until the context closes (%s)", vm.vm_id, e)
        vm.released = True
        del self._vms[vm.vm_id]
        for ident in [i for i, v in self._file_vm.items() if v is vm]:
            del self._file_vm[ident]
        log.info("VM %d released", vm.vm_id)

    def _destroy_children(self, s2_id: int) -> None:
        """Destroy what was built over a dead VM's parent and is no longer used:
        nested HWPTs (leaves first), then vIOMMUs without vDEVICEs."""
        for kind in ("hwpt_nested", "viommu"):
            for o in self.ctx.objects():
                if o["type"] == kind and o.get("parent") == s2_id and not o["users"]:
                    self.ctx.destroy(o["id"])
        for o in self.ctx.objects():  # nested HWPTs made through such a vIOMMU
            if o["type"] == "hwpt_nested" and o.get("parent") == s2_id and not o["users"]:
                self.ctx.destroy(o["id"])

    # -- groups and devices -------------------------------------------------
    def group(self, name: str) -> IommuGroup:
        """The IOMMU group named ``name`` (``group=G``), created on first use."""
        g = self._groups.get(name)
        if g is None:
            g = self._groups[name] = self.registry.new_group()
        return g

    def register(self, device: PciDevice, name: str, *, label: int | None = None,
                 group: IommuGroup | str | None = None, **kw: Any) -> IommuDevice:
        """Register ``device`` with the model; ``IommufdError`` (EEXIST) for a taken label."""
        g = self.group(group) if isinstance(group, str) else group
        idev = self.registry.register(name, label=label, group=g, **kw)
        self._devices[idev.label] = device
        return idev

    def unregister(self, device: PciDevice) -> None:
        idev = device.iommu
        b = self._bindings.get(idev.label)
        if b is not None:
            b.close()
        if idev.bound and idev.ctx is self.ctx:   # bound by hand (the control RPC)
            self.ctx.device_unbind(idev.dev_id)
        if self._devices.get(idev.label) is device:
            del self._devices[idev.label]
            self.registry.unregister(idev)

    def devices(self) -> list[PciDevice]:
        return list(self._devices.values())

    def device_by_label(self, label: int) -> PciDevice:
        try:
            return self._devices[label]
        except KeyError:
            raise IommufdError(errno.ENOENT, f"no device with label {label!r}") from None

    def untagged_is_gpa(self, device: PciDevice) -> bool:
        """True when ``device``'s untagged DMA addresses are GPAs, untranslated.

        That is: the device is bound and its RID is attached to its VM's
        stage-2 parent (pass-through), or it is unbound while no context owns
        its group (no VM known yet: the issue-2 world).
        """
        idev = device.iommu
        if not idev.bound:
            return idev.group.owner is None
        vm = self.vm_of(device)
        if vm is None or idev.ctx is not self.ctx:
            return False
        attach = self.ctx.device_info(idev.dev_id)["attach"]
        return [None, vm.s2_hwpt_id] in attach

    # -- connections ----------------------------------------------------------
    def connect(self, device: PciDevice) -> DeviceBinding:
        """The DMA sink of a new connection of ``device`` (the previous one must be gone)."""
        old = self._bindings.get(device.iommu.label)
        if old is not None:
            old.close()
        b = DeviceBinding(self, device)
        self._bindings[device.iommu.label] = b
        return b

    def close(self) -> None:
        """Drop every connection and VM and close the context."""
        for b in list(self._bindings.values()):
            b.close()
        for vm in list(self._vms.values()):
            self._release_vm(vm)
        self.ctx.close()

    def describe(self) -> dict[str, Any]:
        return {"vms": [vm.describe() for vm in self._vms.values()],
                "devices": [{"label": label, "type": type(d).__name__,
                             "vm": (v.vm_id if (v := self.vm_of(d)) else None)}
                            for label, d in sorted(self._devices.items())],
                "groups": {name: g.gid for name, g in self._groups.items()}}


class DeviceBinding:
    """One connection's fd-backed DMA_MAPs, fed to its VM (``DmaSink``).

    The transport's ``DmaSpace`` validates each DMA_MAP/UNMAP against the
    connection's own table first, then calls ``map``/``unmap`` with exactly
    the pieces that change, and ``close`` when the connection goes.
    """

    def __init__(self, platform: Platform, device: PciDevice) -> None:
        self.platform, self.device = platform, device
        self.vm: Vm | None = None
        self.dev_id = 0
        self.closed = False

    def map(self, addr: int, size: int, fd: int, offset: int, *, readable: bool,
            writable: bool) -> None:
        """DMA_MAP with an fd: the VM's GPA IOAS maps it (the fd stays the caller's).

        ``readable``/``writable``: the device's permissions on the range, as the
        protocol layer decoded them from the message's flags."""
        if self.closed:
            raise RemoteProtocolError(errno.ENOTCONN, "connection closed")
        try:
            st = os.fstat(fd)
        except OSError as e:
            raise RemoteProtocolError(errno.EBADF, f"DMA fd: {e}") from None
        ident = (st.st_dev, st.st_ino)
        first, last = addr, addr + size - 1
        prot = (READABLE if readable else 0) | (WRITEABLE if writable else 0)
        owner = self.platform.vm_of_file(ident)
        if self.vm is not None and owner is not None and owner is not self.vm:
            raise RemoteProtocolError(errno.EINVAL, f"the DMA fd is VM {owner.vm_id}'s memory, "
                                      f"this connection is in VM {self.vm.vm_id}")
        vm = self.vm or owner
        GpaSpace.check_aligned(first, last, offset)
        new_vm = vm is None
        joined = False
        try:
            if vm is None:
                vm = self.platform._new_vm()
            if self.vm is None:
                self._join(vm)
                joined = True
            vm.gpa.add(self, first, last, ident, fd, offset, prot)
            self.platform._file_vm.setdefault(ident, vm)
        except BaseException:
            if joined:
                self._leave()
            elif new_vm and vm is not None:
                self.platform._release_vm(vm)
            raise

    def unmap(self, addr: int, size: int) -> None:
        """DMA_UNMAP of a range this connection mapped with an fd."""
        if self.vm is None:
            log.error("%s: unmap of %#x+%#x without a VM", self._name(), addr, size)
            return
        try:
            self.vm.gpa.remove(self, addr, addr + size - 1)
        except RemoteProtocolError:
            log.exception("%s: VM %d: unmap of %#x+%#x failed", self._name(), self.vm.vm_id,
                          addr, size)

    def close(self) -> None:
        """The connection is gone: unbind the device (maps were unmapped first)."""
        if self.closed:
            return
        self.closed = True
        if self.vm is not None:
            self.vm.gpa.forget(self)
            self._leave()
        if self.platform._bindings.get(self.device.iommu.label) is self:
            del self.platform._bindings[self.device.iommu.label]

    # -- internals ----------------------------------------------------------
    def _name(self) -> str:
        return f"{type(self.device).__name__}[{self.device.iommu.label:#x}]"

    def _join(self, vm: Vm) -> None:
        """Bind the device and attach its RID to the VM's stage-2 parent."""
        ctx, idev = self.platform.ctx, self.device.iommu
        dev_id = ctx.device_bind(idev)
        new_s2 = False
        try:
            if not vm.s2_hwpt_id or (idev.pasid_width and not vm.s2_pasid):
                new_s2 = self._new_parent(vm, dev_id, bool(idev.pasid_width))
            ctx.device_attach(dev_id, vm.s2_hwpt_id)
        except IommufdError:
            if new_s2 and not vm._devices:
                ctx.destroy(vm.s2_hwpt_id)
                vm.s2_hwpt_id, vm.s2_pasid = 0, False
            ctx.device_unbind(dev_id)
            raise
        self.vm, self.dev_id = vm, dev_id
        vm._devices.append(self.device)
        log.info("%s: bound (dev_id %d), RID on VM %d's stage-2 HWPT %d", self._name(),
                 dev_id, vm.vm_id, vm.s2_hwpt_id)
        for cb in list(vm.on_join):
            cb(vm, self.device)

    def _new_parent(self, vm: Vm, dev_id: int, pasid: bool) -> bool:
        """Allocate the VM's stage-2 parent through ``dev_id``.

        A VM whose first device had no PASIDs got a parent that PASID
        attachments cannot use; the first PASID-capable device to join
        allocates a PASID-capable one, and the devices already in the VM move
        to it (iommufd replace) before the old one goes.
        """
        ctx = self.platform.ctx
        flags = HwptAllocFlags.NEST_PARENT | (HwptAllocFlags.PASID if pasid else 0)
        new = ctx.hwpt_alloc(dev_id, vm.ioas_id, int(flags))
        old = vm.s2_hwpt_id
        if old:
            moved = []
            try:
                for other in vm._devices:
                    b = self.platform._bindings[other.iommu.label]
                    ctx.device_replace(b.dev_id, new)
                    moved.append(b.dev_id)
            except IommufdError:
                for d in moved:
                    ctx.device_replace(d, old)
                ctx.destroy(new)
                raise
            ctx.destroy(old)
            log.info("VM %d: stage-2 parent %d replaced by PASID-capable %d", vm.vm_id, old, new)
        vm.s2_hwpt_id, vm.s2_pasid = new, pasid
        return True

    def _leave(self) -> None:
        vm = self.vm
        assert vm is not None
        idev = self.device.iommu
        if idev.bound and idev.dev_id == self.dev_id:
            self.platform.ctx.device_unbind(self.dev_id)
        if self.device in vm._devices:
            vm._devices.remove(self.device)
        self.vm, self.dev_id = None, 0
        log.info("%s: unbound from VM %d", self._name(), vm.vm_id)
        if not vm._devices:
            self.platform._release_vm(vm)
