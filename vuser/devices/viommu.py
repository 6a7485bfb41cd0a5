"""The ``vuser-iommu`` device: a VT-d scalable-mode vIOMMU as a PCI function.

docs/vuser-iommu.md is the guest's manual; docs/architecture.md ("Devices") the design.
This module assembles the parts and holds what ties them to the model:

- ``viommu_regs``: BAR0 (``RegisterBank``) and the three interrupt events
  (fault, invalidation completion, page request): MSI-X vectors 0, 1, 2 while
  the function's MSI-X is enabled, else VT-d's own messages (``viommu_msi``:
  a DWORD DMA write of DATA to ADDR, for a guest kernel that owns the unit);
- ``viommu_tables``: root/context/PASID table lookups through the VM's stage 2;
- ``viommu_bind``: guest PASID entries become attachments in the model;
- ``viommu_qi``: the invalidation queue (``Invalidator`` is implemented here);
- ``viommu_prq``: page requests into the guest's queue, page group responses;
- ``viommu_faults``: the fault recording registers.

The function belongs to the VM of its own connection: the platform puts it
there when QEMU DMA_MAPs guest RAM to it. From then on it manages every other
device of that VM whose label fits a 16-bit source-id. It registers in the
model as a device too (it never DMAs through it) with a 20-bit PASID width,
so that when it is the first device of its VM the stage-2 parent is
allocated PASID-capable.

With caching mode (``cm=1``, the default) translation state changes only when
the guest says so: GCMD.TE (on: every device's entries are read and applied;
off: RIDs back to pass-through on the stage-2 parent, PASIDs blocked),
context-cache and PASID-cache invalidations. With ``cm=0`` TE on starts with
empty caches, a DMA that misses fetches its entry (the model's miss
resolver, ``_miss``) and invalidations drop what they name.

``drhd_base``: the BAR0 address the firmware programs is checked against the
DRHD base of the guest's DMAR table; a mismatch is ``Platform.fatal``.

Faults the model reports for the VM's devices are recorded (``FRCD``) while
TE is set, with the scalable-mode reason, unless FPD is set on the path or
the fault is a first-stage not-present/permission fault that the device
answers with a PRI page request in the same event-loop turn (a recoverable
fault is not logged, VT-d §7.1). Stage-2 faults at the final GPA are the
host's and are not recorded.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from vuser import ratelimit
from vuser.errors import UserError
from vuser.iommu import Access, Fault, FaultKind, IommufdError, Stage
from vuser.iommu.uapi import U64_MAX, FaultFlags, FaultRecord
from vuser.pci.bar import Bar, BarReg, bar_offset
from vuser.pci.config import Command, Type0Header
from vuser.pci.caps_ext import Vsec
from vuser.pci.caps_std import MsiX, PciExpress, PowerManagement, VendorSpecific
from vuser.pci.irq import IrqIndex
from vuser.backend import DmaError

from .base import PciDevice
from .introspect import flat_counters
from .viommu_bind import Kind, PasidBinder
from .viommu_faults import FaultRecorder
from .viommu_msi import MsiSender
from .viommu_prq import PageRequestQueue
from .viommu_qi import ALL_ADDRESSES, InvalidationQueue
from .viommu_regs import PASID_BITS, EventSource, RegisterBank, define_vtd_registers
from .viommu_tables import ContextInfo, TableFault, TableReader
from .vtd_layout import (
    REGS_SIZE, Ccmd, VtdFaultReason, Fsts, Gcmd, Ics, IotlbReg, Iva, Reg,
)

log = logging.getLogger(__name__)

__all__ = ["VIommuDevice", "VECTOR_FAULT", "VECTOR_INVALIDATION", "VECTOR_PAGE_REQUEST"]

VECTOR_FAULT = 0
VECTOR_INVALIDATION = 1
VECTOR_PAGE_REQUEST = 2
#: Depth of the model fault queue behind the page request queue.
FAULT_QUEUE_DEPTH = 4096
#: Default labels of vIOMMU functions start here, above every source-id.
OWN_LABEL_BASE = 0x1_0000
_PRI_REASONS = frozenset({FaultKind.PAGING_ENTRY_INV, FaultKind.WRITE, FaultKind.READ})
#: CCMD/context-cache invalidation FM: function bits ignored in the SID.
_FM_IGNORE = {0: 0, 1: 0b100, 2: 0b110, 3: 0b111}


def _parse_drhd_base(value: int | str) -> int:
    try:
        base = int(value, 0) if isinstance(value, str) else int(value)
    except ValueError:
        raise UserError(f"vuser-iommu: drhd_base {value!r} is not an integer") from None
    if not 0 < base < 1 << 32 or base % REGS_SIZE:
        raise UserError(f"vuser-iommu: drhd_base {base:#x} is not a {REGS_SIZE:#x}-aligned "
                        "32-bit address (BAR0 is a 32-bit memory BAR)")
    return base


def _parse_label(label: int | str) -> int:
    try:
        value = int(label, 0) if isinstance(label, str) else int(label)
    except ValueError:
        raise UserError(f"vuser-iommu: label {label!r} is not an integer") from None
    if not 0 <= value < 1 << 32:
        raise UserError(f"vuser-iommu: label {value} does not fit in 32 bits")
    return value


class VIommuDevice(PciDevice):
    """vendor 0x5655, device 0x0003, class 0x0806 (IOMMU).

    Options (docs/vuser-iommu.md):

    - ``label``: the function's own label in the model (default: the first
      free one from 0x10000, outside the 16-bit source-ids it manages, so it
      never takes a label a DMA device asks for);
    - ``drhd_base``: the register base the guest's DMAR table gives for this
      unit; the BAR0 address the firmware programs must equal it, else the
      server stops (``Platform.fatal``);
    - ``cm``: CAP.CM, caching mode (1, the default, or 0).
    """

    DEVICE_ID = 0x0003
    CLASS_CODE = 0x080600
    REVISION = 0x01
    INTERRUPT_PIN = 0
    MESSAGE_DMA_FALLBACK = False
    MSIX_VECTORS = 3

    def __init__(self, *, label: int | str | None = None,
                 drhd_base: int | str | None = None, cm: int | str = 1) -> None:
        super().__init__()
        self._want_label = None if label is None else _parse_label(label)
        self.drhd_base = None if drhd_base is None else _parse_drhd_base(drhd_base)
        if str(cm) not in ("0", "1"):
            raise UserError(f"vuser-iommu: cm={cm!r}: caching mode is 0 or 1")
        self.cm = int(cm)
        self.regs = RegisterBank(REGS_SIZE)
        define_vtd_registers(self.regs, {
            Reg.GCMD: self._gcmd_written, Reg.CCMD: self._ccmd_written,
            Reg.FSTS: self._fsts_written, Reg.FECTL: self._fectl_written,
            Reg.IQT: self._iqt_written, Reg.ICS: self._ics_written,
            Reg.IECTL: self._iectl_written, Reg.PECTL: self._pectl_written,
            Reg.IOTLB: self._iotlb_written, Reg.FRCD: self._frcd_written,
        }, cm=self.cm)
        self.add_bar(0, Bar.mem32(REGS_SIZE), self.regs)
        self.config.add_write_hook(bar_offset(0), 4, self._bar0_written)
        self.add_capability(PowerManagement())
        self.add_msix(bar=4, vectors=self.MSIX_VECTORS, table_offset=0, pba_offset=0x800)
        self.add_capability(PciExpress())
        self.msi = MsiSender(lambda: self.bus_master,
                             lambda coro: self.spawn(coro, name="viommu-msi"))
        self.fault_event = EventSource(self.regs, Reg.FECTL, lambda: self._signal(VECTOR_FAULT))
        self.inv_event = EventSource(self.regs, Reg.IECTL,
                                     lambda: self._signal(VECTOR_INVALIDATION))
        self.prq_event = EventSource(self.regs, Reg.PECTL,
                                     lambda: self._signal(VECTOR_PAGE_REQUEST))
        self._events = (self.fault_event, self.inv_event, self.prq_event)
        self._bme = False
        self.faults = FaultRecorder(self.regs, self.fault_event)
        self.qi = InvalidationQueue(self.regs, self.faults, self,
                                    lambda coro: self.spawn(coro, name="viommu-qi"))
        self.rtaddr = 0                       # latched by GCMD.SRTP
        self.binder: PasidBinder | None = None
        self.prq: PageRequestQueue | None = None
        self._vm: Any = None
        self._fault_id: int | None = None
        self._deferred: list[tuple[Fault, int]] = []
        self._deferred_armed = False

    def join_platform(self, platform: Any, **kw: Any) -> Any:
        if kw.get("label") is None:
            kw["label"] = self._want_label
        if kw["label"] is None:
            taken = {d.label for d in platform.registry.devices()}
            kw["label"] = next(lb for lb in range(OWN_LABEL_BASE, 1 << 32) if lb not in taken)
        kw.setdefault("pasid_width", PASID_BITS)
        kw.setdefault("ats", False)
        kw.setdefault("pri", False)
        idev = super().join_platform(platform, **kw)
        # Every vuser device shows its label (docs/architecture.md "Devices"); this one's
        # is known only now.
        self.add_capability(VendorSpecific(idev.label))
        self.add_capability(Vsec(idev.label))
        return idev

    # -- interrupts (docs/vuser-iommu.md, "Interrupts") ----------------------------------
    @property
    def msix_in_use(self) -> bool:
        """The function's MSI-X is enabled (userspace-owned: the vectors signal events)."""
        if self.irqs.active is IrqIndex.MSIX:
            return True
        cap = self.caps.find(MsiX)
        return cap is not None and bool(cap.enabled(self.config))  # type: ignore[attr-defined]

    def _signal(self, vector: int) -> bool:
        """Send event ``vector``: an MSI-X vector if enabled, else the VT-d message."""
        if self.msix_in_use:
            self.raise_irq(vector)
            return True
        return self.msi.send(self._events[vector])

    # -- the register base the DMAR gives (drhd_base) -----------------------------------
    @property
    def bar0_address(self) -> int:
        return self.config.peek(bar_offset(0), 4) & BarReg.MEM_ADDR_MASK

    def _bar0_written(self, offset: int, count: int) -> None:
        if offset <= bar_offset(0) and offset + count >= bar_offset(0) + 4:
            self._check_drhd_base()     # a partial write waits for the whole dword

    def _check_drhd_base(self) -> None:
        """With memory decode on, BAR0 must be at ``drhd_base`` (sizing writes aside)."""
        if self.drhd_base is None or self.platform is None:
            return
        if not Command.MEMORY.get(self.config.peek(Type0Header.offset_of("command"), 2)):
            return
        addr = self.bar0_address
        if addr == (~(REGS_SIZE - 1)) & BarReg.MEM_ADDR_MASK:
            return                      # all-ones written: the size probe
        if addr != self.drhd_base:
            self.platform.fatal(f"vuser-iommu: firmware placed BAR0 at {addr:#x} but the "
                                f"DMAR's DRHD base is {self.drhd_base:#x}")

    def _command_written(self, offset: int, count: int) -> None:
        super()._command_written(offset, count)
        self._check_drhd_base()
        bme = self.bus_master
        was, self._bme = getattr(self, "_bme", False), bme
        if bme and not was:
            for event in self._events:   # messages held back while BME was clear
                event.retry()

    def client_connected(self, dma: Any) -> None:
        super().client_connected(dma)
        self.msi.port = getattr(dma, "message_dma", None)

    def client_disconnected(self) -> None:
        self.msi.port = None
        for event in self._events:
            event.in_flight = False        # the write task is cancelled with the others
        super().client_disconnected()

    # -- the VM and the model ---------------------------------------------------------
    @property
    def translation_enabled(self) -> bool:
        return bool(Gcmd.TE.get(self.regs.get(Reg.GSTS)))

    def _attach_vm(self) -> bool:
        """Adopt the VM of this function's connection; False while there is none."""
        if self._vm is not None and not self._vm.released:
            return True
        vm = self.vm
        if vm is None or not vm.s2_hwpt_id or self.platform is None:
            return False
        ctx = self.platform.ctx
        self._fault_id = ctx.fault_queue_alloc(FAULT_QUEUE_DEPTH)
        ctx.fault_set_notify(self._fault_id, self._page_requests_arrived)
        self.binder = PasidBinder(ctx, vm.s2_hwpt_id, self._fault_id)
        self.prq = PageRequestQueue(self.regs, self.prq_event, ctx, self._fault_id)
        ctx.add_fault_observer(self._model_fault)
        if not self.cm:
            ctx.add_miss_resolver(self._miss)
        vm.on_release.append(self._vm_released)
        vm.on_join.append(self._device_joined)
        self._vm = vm
        self.qi.read = vm.gpa_read
        log.info("vIOMMU %#x: managing VM %d", self.iommu.label, vm.vm_id)
        return True

    def _refresh(self) -> PasidBinder | None:
        """The binder with the VM's current devices, or None without a VM."""
        if not self._attach_vm():
            return None
        assert self.binder is not None
        devices = {}
        for dev in self._vm.devices():
            idev = getattr(dev, "iommu", None)
            if dev is self or idev is None or not idev.bound or idev.label > 0xFFFF:
                continue
            devices[idev.label] = (idev.dev_id, idev.pasid_width)
        new = self.binder.set_devices(devices)
        if not self.cm and self.translation_enabled:
            for label in new:               # nothing cached yet: DMA fetches
                self.binder.drop(label)
        return self.binder

    def _reader(self) -> TableReader:
        return TableReader(self._vm.gpa_read, self.rtaddr)

    def _release_model(self) -> None:
        """Give back every model object this function made."""
        if self._vm is None:
            return
        ctx = self.platform.ctx  # type: ignore[union-attr]
        if self.prq is not None:
            self.prq.drop_all()
        if self.binder is not None:
            if self._vm.released:
                self.binder.release()
            else:
                self._refresh()
                self.binder.reset()
                self.binder.release()
        try:
            ctx.remove_fault_observer(self._model_fault)
        except ValueError:
            pass
        ctx.remove_miss_resolver(self._miss)
        if self._fault_id is not None:
            try:
                ctx.destroy(self._fault_id)
            except IommufdError as e:
                log.warning("vIOMMU: fault queue %d not destroyed: %s", self._fault_id, e)
        if self._vm_released in self._vm.on_release:
            self._vm.on_release.remove(self._vm_released)
        if self._device_joined in self._vm.on_join:
            self._vm.on_join.remove(self._device_joined)
        self._vm = self.binder = self.prq = self._fault_id = None
        self.qi.read = None

    def _vm_released(self, _vm: Any) -> None:
        self._release_model()

    def _device_joined(self, _vm: Any, device: Any) -> None:
        """A device bound into the VM (its RID on the stage-2 parent): with CM=0
        and TE set, nothing of it is cached yet, so its DMA must miss."""
        if device is not self and not self.cm and self.translation_enabled:
            self._refresh()

    # -- GCMD / GSTS (§10.4.4) ----------------------------------------------------------
    def _gcmd_written(self, raw: int) -> None:
        self._attach_vm()
        gsts = self.regs.get(Reg.GSTS)
        if Gcmd.SRTP.get(raw):
            self.rtaddr = self.regs.get(Reg.RTADDR)
            gsts |= Gcmd.SRTP.mask            # RTPS
            log.debug("vIOMMU: root table %#x", self.rtaddr)
        if Gcmd.QIE.get(raw) != Gcmd.QIE.get(gsts):
            if Gcmd.QIE.get(raw):
                self.regs.set(Reg.IQH, 0)
                gsts |= Gcmd.QIE.mask
            else:
                gsts &= ~Gcmd.QIE.mask
        te_on = bool(Gcmd.TE.get(raw))
        te_changed = te_on != bool(Gcmd.TE.get(gsts))
        gsts = Gcmd.TE.put(gsts, int(te_on))
        self.regs.set(Reg.GSTS, gsts)
        if te_changed:
            self._set_translation(te_on)
        self.qi.kick()

    def _set_translation(self, on: bool) -> None:
        log.info("vIOMMU: translation %s", "enabled" if on else "disabled")
        binder = self._refresh()
        if binder is None:
            return
        if on and not self.cm:
            for label in binder.labels():     # empty caches: every DMA fetches
                binder.drop(label, context=True)
        elif on:
            reader = self._reader()
            for label in binder.labels():
                binder.sync(reader, label)
        else:
            binder.reset()

    # -- register-based invalidation (§6.5.1) ----------------------------------------
    def _ccmd_written(self, _raw: int) -> None:
        v = self.regs.get(Reg.CCMD)
        if not Ccmd.ICC.get(v):
            return
        g = Ccmd.CIRG.get(v)
        if g:
            self.context_cache(g, Ccmd.DID.get(v), Ccmd.SID.get(v), Ccmd.FM.get(v))
        self.regs.set(Reg.CCMD, Ccmd.CAIG.put(v & ~Ccmd.ICC.mask, g))

    def _iotlb_written(self, _raw: int) -> None:
        v = self.regs.get(Reg.IOTLB)
        if not IotlbReg.IVT.get(v):
            return
        g = IotlbReg.IIRG.get(v)
        iva = self.regs.get(Reg.IVA)
        if g == 3:
            npages = 1 << Iva.AM.get(iva)
            self.iotlb(g, IotlbReg.DID.get(v), (iva & Iva.ADDR.mask) & ~((npages << 12) - 1),
                       npages)
        elif g:
            self.iotlb(g, IotlbReg.DID.get(v), 0, (1 << 64) - 1)
        self.regs.set(Reg.IOTLB, IotlbReg.IAIG.put(v & ~IotlbReg.IVT.mask, g))

    # -- status and event control --------------------------------------------------------
    def _fsts_written(self, raw: int) -> None:
        self.faults.status_written(raw)
        if Fsts.IQE.get(raw):
            self._attach_vm()
            self.qi.kick()   # IQE cleared: fetching resumes at IQH

    def _frcd_written(self, raw: int) -> None:
        self.faults.frcd_written(raw)

    def _fectl_written(self, raw: int) -> None:
        self.fault_event.ctl_written(raw)

    def _iectl_written(self, raw: int) -> None:
        self.inv_event.ctl_written(raw)

    def _pectl_written(self, raw: int) -> None:
        self.prq_event.ctl_written(raw)

    def _ics_written(self, _raw: int) -> None:
        if not Ics.IWC.get(self.regs.get(Reg.ICS)):
            self.inv_event.cancel()

    def _iqt_written(self, _raw: int) -> None:
        self._attach_vm()
        self.qi.kick()

    # -- trace events (docs/vuser-iommu.md, "Tracing") ---------------------------------
    def _note(self, kind: str, label: int | None, pasid: int | None, addr: int = 0,
              npages: int = 0, **info: Any) -> None:
        ctx = self.platform.ctx if self.platform is not None else None
        if ctx is None or not ctx.tracing:
            return
        length = U64_MAX if npages == ALL_ADDRESSES else npages << 12
        ctx.trace_note(kind, label, pasid, addr, length, info=info)

    # -- Invalidator (viommu_qi) ----------------------------------------------------------
    def context_cache(self, g: int, did: int, sid: int, fm: int) -> None:
        """Context-cache invalidation: global and domain-selective re-read every
        device (scalable-mode context entries carry no DID), device-selective
        those matching SID under the function mask."""
        self._note("inv-context-cache", sid if g == 3 else None, None, g=g, did=did, fm=fm)
        binder = self._refresh()
        if binder is None or not self.translation_enabled:
            return
        ign = _FM_IGNORE[fm]
        reader = self._reader()
        for label in binder.labels():
            if g == 3 and (label & ~ign) != (sid & ~ign):
                continue
            if self.cm:
                binder.sync(reader, label)
            else:
                binder.drop(label, context=True)

    def pasid_cache(self, g: int, did: int, pasid: int) -> None:
        """PASID-cache invalidation: 0 domain, 1 PASID-selective (of the domain), 3 global."""
        self._note("inv-pasid-cache", None, pasid if g == 1 else None, g=g, did=did)
        binder = self._refresh()
        if binder is None or not self.translation_enabled:
            return
        if not self.cm:
            for label in binder.labels():
                if g == 0:
                    binder.drop(label, did=did)
                elif g == 1:
                    binder.drop(label, [pasid], did=did)
                else:
                    binder.drop(label)
            return
        reader = self._reader()
        for label in binder.labels():
            if g == 0:
                binder.sync(reader, label, did=did)
            elif g == 1:
                binder.sync(reader, label, [pasid], did=did)
            else:
                binder.sync(reader, label)

    def _miss(self, dev_id: int, label: int, pasid: int | None) -> bool:
        """The model's miss resolver (CM = 0): fetch the entry a DMA needs."""
        if not self.translation_enabled or self._vm is None or self.binder is None:
            return False
        binder = self._refresh()
        if binder is None or binder.dev_id(label) != dev_id:
            return False
        return binder.fetch(self._reader(), label, pasid)

    def iotlb(self, g: int, did: int, addr: int, npages: int) -> None:
        """IOTLB invalidation: 1 global, 2 domain, 3 page-selective in the domain."""
        self._note("inv-iotlb", None, None, addr, npages, g=g, did=did)
        binder = self._refresh()
        if binder is not None:
            binder.flush(None, "all", addr, npages, did=None if g == 1 else did)

    def pasid_iotlb(self, g: int, did: int, pasid: int, addr: int, npages: int) -> None:
        """PASID-based IOTLB invalidation of (DID, PASID): 2 all addresses, 3 a range."""
        self._note("inv-piotlb", None, pasid, addr, npages, g=g, did=did)
        binder = self._refresh()
        if binder is not None:
            binder.flush(None, pasid, addr, npages, did=did)

    def device_tlb(self, sid: int, pasid: int | None | str, addr: int, npages: int) -> None:
        """(PASID-based) device-TLB invalidation of the device named by ``sid``."""
        self._note("inv-devtlb", sid, pasid if isinstance(pasid, int) else None, addr, npages,
                   all_pasids=pasid == "all")
        binder = self._refresh()
        if binder is not None:
            binder.flush_device(sid, pasid, addr, npages)

    def wait(self, status: tuple[int, int] | None, interrupt: bool) -> bool:
        """Invalidation wait: status write through stage 2, then ICS.IWC and its event."""
        if status is not None:
            addr, data = status
            if not self._attach_vm():
                return False
            try:
                self._vm.gpa_write(addr, data.to_bytes(4, "little"))
            except (DmaError, ValueError, OverflowError) as e:
                ratelimit.log(log, logging.INFO, "vIOMMU: wait status write to %#x failed: %s",
                              addr, e)
                return False
        if interrupt:
            old = self.regs.set_bits(Reg.ICS, Ics.IWC.mask)
            if not Ics.IWC.get(old):
                self.inv_event.raise_event()
        return True

    def page_response(self, rid: int, pasid: int | None, prgi: int, code: int) -> None:
        matched = self.prq.respond(rid, pasid, prgi, code) if self.prq is not None else False
        self._note("page-response", rid, pasid, prgi=prgi, code=code, matched=matched)

    # -- page requests -------------------------------------------------------------
    def _page_requests_arrived(self, _fault_id: int) -> None:
        if self.prq is None:
            return
        self.prq.deliver(self._vm.gpa_write if self._vm is not None else None,
                         self._pre_enabled, self._pre_fault, self._request_seen)

    def _request_seen(self, r: FaultRecord) -> None:
        """A page request claims the fault it answers (not logged, VT-d §7.1)."""
        pasid = r.pasid if r.flags & FaultFlags.PASID_VALID else None
        self._suppress(r.label, pasid, r.addr)
        self._note("page-request", r.label, pasid, r.addr & ~0xFFF, 1, prgi=r.grpid,
                   read=bool(r.perm & Access.READ), write=bool(r.perm & Access.WRITE),
                   last=bool(r.flags & FaultFlags.LAST_PAGE))

    def _pre_enabled(self, label: int) -> bool | None:
        ci = self.binder.context(label) if self.binder is not None else None
        if ci is None and not self.cm and self._vm is not None and self.translation_enabled:
            ci = self._reader().context(label)    # CM=0: not cached, fetched for the request
        return ci.pre if isinstance(ci, ContextInfo) else None

    def _pre_fault(self, r: FaultRecord) -> None:
        pasid = r.pasid if r.flags & FaultFlags.PASID_VALID else None
        self.faults.record(r.label, pasid, VtdFaultReason.PRE_CLEAR, r.addr, r.perm)

    # -- faults from the model -------------------------------------------------------------
    def _model_fault(self, f: Fault) -> None:
        """A fault observer of the context: keep this VM's translation faults."""
        binder = self.binder
        if binder is None or not self.translation_enabled or f.label is None:
            return
        if binder.dev_id(f.label) != f.dev_id:
            return
        reason = f.vtd_reason
        if reason is None:
            return
        ci = binder.context(f.label)
        fpd = bool(getattr(ci, "fpd", False))
        t = binder.target(f.label, f.pasid)
        if t is not None:
            fpd = t.fpd
            if f.stage == Stage.BLOCKED and t.kind is Kind.BLOCK:
                reason = t.reason
        elif f.stage == Stage.BLOCKED:
            reason, fpd = self._uncached_reason(f.label, f.pasid, reason, fpd)
        if fpd:
            return
        if f.stage == Stage.S1 and f.reason in _PRI_REASONS:
            self._defer(f, reason)
            return
        self._record(f, reason)

    def _uncached_reason(self, label: int, pasid: int | None, reason: int,
                         fpd: bool) -> tuple[int, bool]:
        """Why a (label, PASID) the vIOMMU never applied is blocked: hardware
        would walk the tables on this miss, so walk them for the reason.
        (Finding a valid entry does not attach it: with CAP.CM set, the
        not-present state may stay cached until the guest invalidates.)"""
        reader = self._reader()
        ci = reader.context(label)
        if isinstance(ci, TableFault):
            return ci.reason, ci.fpd
        if pasid is None:
            return reason, ci.fpd
        r = reader.pasid(ci, pasid)
        if isinstance(r, TableFault):
            return r.reason, r.fpd
        return VtdFaultReason.PASID_P, r.fpd

    def _record(self, f: Fault, reason: int) -> None:
        addr = f.iova
        self.faults.record(f.label or 0, f.pasid, reason, addr, f.access)

    def _defer(self, f: Fault, reason: int) -> None:
        """Record at the end of this loop turn unless a page request claims it."""
        self._deferred.append((f, reason))
        if self._deferred_armed:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._flush_deferred()
            return
        self._deferred_armed = True
        loop.call_soon(self._flush_deferred)

    def _suppress(self, label: int, pasid: int | None, addr: int) -> None:
        page = addr >> 12
        self._deferred = [(f, r) for f, r in self._deferred
                          if not (f.label == label and f.pasid == pasid
                                  and (f.iova >> 12) == page)]

    def _flush_deferred(self) -> None:
        self._deferred_armed = False
        pending, self._deferred = self._deferred, []
        for f, reason in pending:
            self._record(f, reason)

    # -- lifetimes ----------------------------------------------------------------------
    def on_reset(self) -> None:
        """DEVICE_RESET: registers to defaults (done by the region), translation off."""
        self.rtaddr = 0
        for event in self._events:
            event.in_flight = False        # its write task was cancelled
        self.faults.reset()
        self._deferred.clear()
        self.qi.running = False
        if self.prq is not None:
            self.prq.drop_all()
        binder = self._refresh()
        if binder is not None:
            binder.reset()

    def close(self) -> None:
        self._release_model()
        super().close()

    # -- inspection (tests, the control RPC) ---------------------------------------------
    def pasid_view(self, label: int) -> dict[str, Any] | None:
        """What this unit applied for ``label`` (None: not a device it manages):
        per PASID (None: the RID) the kind, DID, FPD and, when blocked, the
        fault reason; ``cached`` False for an entry dropped under CM=0."""
        binder = self.binder
        if binder is None or binder.dev_id(label) is None:
            return None
        ci = binder.context(label)
        return {
            "viommu": self.iommu.label if self.iommu is not None else None,
            "cm": self.cm, "translation": self.translation_enabled,
            "rid_pasid": ci.rid_pasid if isinstance(ci, ContextInfo) else None,
            "entries": [{"pasid": p, "kind": t.kind.value, "did": t.did, "fpd": t.fpd,
                         "reason": t.reason if t.kind is Kind.BLOCK else None,
                         "cached": t.cached}
                        for lb, p, t in binder.attachments() if lb == label],
        }

    def counters(self) -> dict[str, int]:
        """Invalidation-queue, page-request-queue and interrupt counters."""
        out = flat_counters("qi", {"processed": self.qi.processed, "errors": self.qi.errors})
        if self.prq is not None:
            out.update(flat_counters("prq", {"written": self.prq.written,
                                             "overflows": self.prq.overflows,
                                             "responses": self.prq.responses}))
        out.update(flat_counters("msi", self.msi.describe()))
        return out

    def describe(self) -> dict[str, Any]:
        binder = self.binder
        return {
            "label": self.iommu.label if self.iommu is not None else None,
            "vm": self._vm.vm_id if self._vm is not None else None,
            "translation": self.translation_enabled, "rtaddr": self.rtaddr,
            "attachments": [] if binder is None else [
                {"label": lb, "pasid": p, "kind": t.kind.value, "did": t.did,
                 "reason": t.reason, "cached": t.cached} for lb, p, t in binder.attachments()],
            "faults": [r.__dict__ for r in self.faults.records()],
            "qi": {"processed": self.qi.processed, "errors": self.qi.errors},
            "cm": self.cm, "drhd_base": self.drhd_base, "msi": self.msi.describe(),
            "prq": None if self.prq is None else {
                "written": self.prq.written, "overflows": self.prq.overflows,
                "responses": self.prq.responses},
        }
