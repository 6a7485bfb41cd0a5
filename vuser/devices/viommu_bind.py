"""Guest PASID entries become model calls (docs/architecture.md "Devices").

The vIOMMU's "PASID cache" is what it has told the model. ``PasidBinder``
keeps, per device label and PASID (``None``: requests without a PASID, i.e.
the RID through the context entry's RID_PASID), the ``Target`` it applied,
and changes it only when the guest invalidates (PASID-cache or context-cache
invalidation, or TE toggling), as hardware would (VT-d §6.5.2.2):

- PGTT first-stage: a nested HWPT (VTD_S1 over the VM's NEST_PARENT stage-2
  HWPT, FSPTPTR as ``pgtbl_addr``, FSPM -> ``addr_width`` 48/57, SRE/WPE/EAFE
  as flags, IOPF-capable through the vIOMMU's fault queue) attached to
  ``(label, pasid)``. Nested HWPTs are shared by every attachment with the
  same tables and flags, and destroyed with their last attachment.
- PGTT pass-through: the stage-2 parent itself.
- anything else (not present, unreadable, reserved bits, bad programming):
  blocking (``device_detach``), remembering the fault reason so that a DMA
  that hits it is recorded with that reason.

With caching mode off (CAP.CM = 0, ``cm=0``) the vIOMMU drops instead of
re-reading on an invalidation (``drop``: the entry is detached and marked
not cached, the RID too) and fetches on demand when a DMA misses (``fetch``,
VT-d §6.2.1): a present entry is applied and so cached until invalidated;
a not-present or erroneous one is never cached (§6.1), so the next DMA
walks the tables again.

Attaching uses ``device_attach`` and falls back to ``device_replace`` when
something else is attached (EBUSY). A model error (say a PASID beyond the
device's width) blocks the PASID (reason SPT.4) and is logged; it never
propagates. Turning translation off, or releasing the VM, puts every RID back
on the stage-2 parent and every PASID back to blocking.

At most ``MAX_BOUND`` (label, PASID) pairs are attached at once: a guest
that asks for more gets SPT.4 (invalid programming) on the extra ones.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum

from vuser import ratelimit
from vuser.iommu import IoasidContext, IommufdError
from vuser.iommu.uapi import ALL_PASIDS, U64_MAX, HwptAllocFlags, HwptDataType, VtdS1Flags

from .viommu_tables import ContextInfo, LookupResult, TableFault, TableReader
from .vtd_layout import VtdFaultReason

log = logging.getLogger(__name__)

__all__ = ["PasidBinder", "Target", "Kind", "MAX_BOUND", "UNCACHED"]

MAX_BOUND = 4096
#: Guest-physical address width of table pointers (the model's output width).
GPA_BITS = 48


class Kind(Enum):
    BLOCK = "block"
    PASS = "pass-through"
    S1 = "first-stage"


S1Key = tuple[int, int, int]   # (pgtbl_addr, addr_width, VTD_S1 flags)


@dataclass(frozen=True)
class Target:
    """What one (label, PASID) is attached to, and the entry's DID and FPD."""

    kind: Kind
    did: int = 0
    fpd: bool = False
    reason: int = 0                 # BLOCK: the fault reason DMA gets
    s1: S1Key | None = None
    cached: bool = True             # False: dropped (CM = 0), fetched on the next DMA


#: A dropped entry (CM = 0): blocking in the model until a DMA fetches it.
UNCACHED = Target(Kind.BLOCK, cached=False)


#: What a PASID is before the vIOMMU touches it, and a RID under TE = 0.
BLOCKED = Target(Kind.BLOCK, reason=VtdFaultReason.PASID_P)
DEFAULT_RID = Target(Kind.PASS)


@dataclass
class _Device:
    label: int
    dev_id: int
    pasid_width: int
    context: ContextInfo | TableFault | None = None
    targets: dict[int | None, Target] = field(default_factory=dict)


class PasidBinder:
    """The applied translation state of one vIOMMU (see the module doc)."""

    def __init__(self, ctx: IoasidContext, s2_hwpt_id: int, fault_id: int | None) -> None:
        self.ctx = ctx
        self.s2_hwpt_id = s2_hwpt_id
        self.fault_id = fault_id
        self._devices: dict[int, _Device] = {}
        self._hwpts: dict[S1Key, int] = {}
        self._users: dict[int, int] = {}
        self.bound = 0
        self.model_errors = 0
        self._refused = 0

    # -- devices -------------------------------------------------------------
    def set_devices(self, devices: dict[int, tuple[int, int]]) -> list[int]:
        """The VM's devices now: ``{label: (dev_id, pasid_width)}``; returns the new labels.

        Devices that left (unbound by the platform, which detached them) are
        forgotten; their HWPT references are dropped.
        """
        new = []
        for label in [lb for lb, d in self._devices.items()
                      if devices.get(lb, (None,))[0] != d.dev_id]:
            d = self._devices.pop(label)
            for t in d.targets.values():
                self._unref(t)
        for label, (dev_id, width) in devices.items():
            if label not in self._devices:
                self._devices[label] = _Device(label, dev_id, width)
                new.append(label)
        return new

    def labels(self) -> list[int]:
        return sorted(self._devices)

    def target(self, label: int, pasid: int | None) -> Target | None:
        """The cached target of ``(label, pasid)``; None when nothing is cached."""
        d = self._devices.get(label)
        t = d.targets.get(pasid) if d is not None else None
        return t if t is not None and t.cached else None

    def context(self, label: int) -> ContextInfo | TableFault | None:
        d = self._devices.get(label)
        return d.context if d is not None else None

    def dev_id(self, label: int) -> int | None:
        d = self._devices.get(label)
        return d.dev_id if d is not None else None

    def attachments(self) -> list[tuple[int, int | None, Target]]:
        """Every (label, pasid, target) applied, for invalidations and inspection."""
        return [(d.label, p, t) for d in self._devices.values() for p, t in d.targets.items()]

    # -- syncing from the guest's tables -------------------------------------------
    def sync(self, reader: TableReader, label: int, pasids: Iterable[int] | None = None,
             did: int | None = None) -> int:
        """Re-read and apply the entries of ``label``; returns how many changed.

        ``pasids=None``: every PASID (a directory scan plus what is applied)
        and the RID. Otherwise those PASIDs, and the RID if its RID_PASID is
        among them. ``did``: only entries whose new or applied DID is ``did``
        (domain-selective), plus entries not applied yet.
        """
        d = self._devices.get(label)
        if d is None:
            return 0
        ci = reader.context(label)
        d.context = ci
        changed = 0
        if isinstance(ci, TableFault):
            block = Target(Kind.BLOCK, reason=ci.reason, fpd=ci.fpd)
            scope = (set(d.targets) if pasids is None else set(pasids)) | {None}
            for p in sorted(scope, key=lambda p: -1 if p is None else p):
                if p is None or p in d.targets:
                    changed += self._apply(d, p, block)
            return changed
        found: dict[int, LookupResult] = {}
        if pasids is None:
            found = dict(reader.scan(ci))
            wanted = set(found) | {p for p in d.targets if p is not None}
        else:
            wanted = set(pasids)
        rid_in_scope = pasids is None or ci.rid_pasid in wanted
        results: dict[int, LookupResult] = {}
        for p in sorted(wanted | ({ci.rid_pasid} if rid_in_scope else set())):
            results[p] = found[p] if p in found else reader.pasid(ci, p)
        if rid_in_scope:
            changed += self._apply_if(d, None, self._target(results[ci.rid_pasid]), did)
        for p in sorted(wanted):
            if p == 0 or p >= 1 << d.pasid_width:
                continue  # the device cannot emit it (the model refuses it)
            changed += self._apply_if(d, p, self._target(results[p]), did)
        if self._refused:
            ratelimit.log(log, logging.WARNING,
                          "vIOMMU: label %#x: %d PASIDs beyond %d attachments blocked",
                          label, self._refused, MAX_BOUND)
            self._refused = 0
        return changed

    # -- caching mode off: drop on invalidation, fetch on a miss -----------------------
    def drop(self, label: int, pasids: Iterable[int | None] | None = None,
             did: int | None = None, context: bool = False) -> int:
        """Forget cached entries of ``label`` (CM = 0 invalidation); returns how many.

        ``pasids=None``: every PASID and the RID (a PASID in ``pasids`` equal
        to the context's RID_PASID takes the RID along); ``did``: only entries
        with that DID; ``context``: the context entry too. A dropped RID is
        detached (blocking) until a DMA fetches it again.
        """
        d = self._devices.get(label)
        if d is None:
            return 0
        rid_pasid = d.context.rid_pasid if isinstance(d.context, ContextInfo) else None
        if pasids is None:
            scope = set(d.targets) | {None}
        else:
            scope = set(pasids)
            if rid_pasid is not None and rid_pasid in scope:
                scope.add(None)
        n = 0
        for p in sorted(scope, key=lambda p: -1 if p is None else p):
            t = d.targets.get(p)
            if t is not None and not t.cached:
                continue
            if did is not None and (t is None or t.did != did):
                continue
            if p is not None and t is None:
                continue
            n += self._apply(d, p, UNCACHED)
        if context:
            d.context = None
        return n

    def fetch(self, reader: TableReader, label: int, pasid: int | None) -> bool:
        """A DMA of ``(label, pasid)`` missed (CM = 0): read the context entry
        (unless cached) and the PASID entry, apply it if it is valid. Returns
        whether something is attached now."""
        d = self._devices.get(label)
        if d is None:
            return False
        if pasid is not None and not 0 < pasid < 1 << d.pasid_width:
            return False
        ci = d.context if isinstance(d.context, ContextInfo) else reader.context(label)
        if isinstance(ci, TableFault):
            d.context = None
            return False
        d.context = ci
        t = self._target(reader.pasid(ci, ci.rid_pasid if pasid is None else pasid))
        if t.kind is Kind.BLOCK:
            return False                  # not present or erroneous: not cached
        self._apply(d, pasid, t)
        applied = d.targets.get(pasid)
        return applied is not None and applied.kind is not Kind.BLOCK

    def _apply_if(self, d: _Device, pasid: int | None, new: Target, did: int | None) -> int:
        if did is not None:
            old = d.targets.get(pasid)
            if new.did != did and (old is None or old.did != did) and old is not None:
                return 0
        return self._apply(d, pasid, new)

    @staticmethod
    def _target(r: LookupResult) -> Target:
        if isinstance(r, TableFault):
            return Target(Kind.BLOCK, reason=r.reason, fpd=r.fpd)
        if not r.first_stage:
            return Target(Kind.PASS, r.did, r.fpd)
        if r.fsptptr >> GPA_BITS:
            return Target(Kind.BLOCK, r.did, r.fpd, VtdFaultReason.PASID_RSVD)
        flags = ((VtdS1Flags.SRE if r.sre else 0) | (VtdS1Flags.WPE if r.wpe else 0)
                 | (VtdS1Flags.EAFE if r.eafe else 0))
        return Target(Kind.S1, r.did, r.fpd, s1=(r.fsptptr, r.addr_width, int(flags)))

    # -- model calls ----------------------------------------------------------------
    def _apply(self, d: _Device, pasid: int | None, new: Target) -> int:
        stored = d.targets.get(pasid)
        old = stored or (DEFAULT_RID if pasid is None else BLOCKED)
        if old == new:
            return 0
        if new.kind is not Kind.BLOCK and old.kind is Kind.BLOCK and self.bound >= MAX_BOUND:
            self._refused += 1
            new = Target(Kind.BLOCK, new.did, new.fpd, VtdFaultReason.PASID_INVALID)
        try:
            if new.kind is Kind.BLOCK:
                self._detach(d.dev_id, pasid)
            else:
                hwpt = self.s2_hwpt_id if new.kind is Kind.PASS else self._hwpt(new, d.dev_id)
                self._attach(d.dev_id, pasid, hwpt)
        except IommufdError as e:
            self.model_errors += 1
            ratelimit.log(log, logging.WARNING, "vIOMMU: label %#x PASID %s: %s: blocked",
                          d.label, pasid, e)
            if new.s1 in self._hwpts and not self._users[self._hwpts[new.s1]]:
                self._destroy(new.s1)  # allocated for this attach, never used
            new = Target(Kind.BLOCK, new.did, new.fpd, VtdFaultReason.PASID_INVALID)
            self._detach(d.dev_id, pasid, quiet=True)
        self._ref(new)
        if stored is not None:
            self._unref(stored)
        if pasid is not None and (new == BLOCKED or not new.cached):
            d.targets.pop(pasid, None)
        else:
            d.targets[pasid] = new
        log.debug("vIOMMU: label %#x PASID %s: %s", d.label, pasid, new)
        return 1

    def _attach(self, dev_id: int, pasid: int | None, hwpt: int) -> None:
        try:
            self.ctx.device_attach(dev_id, hwpt, pasid)
        except IommufdError as e:
            if e.errno != errno.EBUSY:
                raise
            self.ctx.device_replace(dev_id, hwpt, pasid)

    def _detach(self, dev_id: int, pasid: int | None, quiet: bool = False) -> None:
        try:
            self.ctx.device_detach(dev_id, pasid)
        except IommufdError as e:
            if e.errno != errno.EINVAL and not quiet:  # EINVAL: nothing attached
                raise

    def _hwpt(self, t: Target, dev_id: int) -> int:
        assert t.s1 is not None
        hwpt = self._hwpts.get(t.s1)
        if hwpt is None:
            pgtbl, width, flags = t.s1
            alloc = HwptAllocFlags.PASID
            if self.fault_id is not None:
                alloc |= HwptAllocFlags.FAULT_ID_VALID
            hwpt = self.ctx.hwpt_alloc(
                dev_id, self.s2_hwpt_id, int(alloc), HwptDataType.VTD_S1,
                {"flags": flags, "pgtbl_addr": pgtbl, "addr_width": width},
                fault_id=self.fault_id)
            self._hwpts[t.s1] = hwpt
            self._users[hwpt] = 0
        return hwpt

    def _ref(self, t: Target) -> None:
        if t.kind is not Kind.BLOCK:
            self.bound += 1
        if t.kind is Kind.S1:
            self._users[self._hwpts[t.s1]] += 1  # type: ignore[index]

    def _unref(self, t: Target) -> None:
        if t.kind is not Kind.BLOCK:
            self.bound -= 1
        if t.kind is Kind.S1 and t.s1 in self._hwpts:
            hwpt = self._hwpts[t.s1]
            self._users[hwpt] -= 1
            if self._users[hwpt] <= 0:
                self._destroy(t.s1)

    def _destroy(self, key: S1Key) -> None:
        hwpt = self._hwpts.pop(key)
        self._users.pop(hwpt, None)
        try:
            self.ctx.destroy(hwpt)
        except IommufdError as e:  # still attached somewhere: the context's close takes it
            log.warning("vIOMMU: HWPT %d not destroyed: %s", hwpt, e)

    # -- resets -----------------------------------------------------------------------
    def reset(self, bound: dict[int, bool] | None = None) -> None:
        """Translation off: RIDs back on the stage-2 parent, PASIDs blocked.

        ``bound`` says, per label, whether the device is still bound (only
        then are model calls made); by default all are.
        """
        for d in list(self._devices.values()):
            live = bound is None or bound.get(d.label, False)
            if live:
                for p in sorted(d.targets, key=lambda p: -1 if p is None else p, reverse=True):
                    self._apply(d, p, DEFAULT_RID if p is None else BLOCKED)
            for t in d.targets.values():
                self._unref(t)
            d.targets.clear()
            d.context = None

    def release(self) -> None:
        """Forget every device (they are gone) and destroy the nested HWPTs."""
        for d in self._devices.values():
            for t in d.targets.values():
                self._unref(t)
        self._devices.clear()
        for key in list(self._hwpts):
            self._destroy(key)

    # -- invalidations that reach the model's IOTLB -----------------------------------
    def flush(self, label: int | None, pasid: int | None | str, addr: int = 0,
              npages: int = U64_MAX, did: int | None = None) -> int:
        """Invalidate IOTLB entries only: device TLBs (ATS) keep theirs until a
        device-TLB descriptor (VT-d §6.5.2.4), unlike iommufd's HWPT_INVALIDATE.

        ``label=None``: every device; ``pasid="all"``: every PASID and the
        RID; ``did``: only attachments whose entry has that DID. Returns how
        many (device, PASID) flushes were issued.
        """
        n = 0
        for d in self._devices.values():
            if label is not None and d.label != label:
                continue
            if did is None and pasid == "all":
                n += self._flush(d.dev_id, ALL_PASIDS, addr, npages)
                continue
            for p, t in list(d.targets.items()):
                if t.kind is Kind.BLOCK or (did is not None and t.did != did):
                    continue
                if pasid != "all" and p != pasid and not (
                        p is None and isinstance(d.context, ContextInfo)
                        and d.context.rid_pasid == pasid):
                    continue
                n += self._flush(d.dev_id, p, addr, npages)
        return n

    def flush_device(self, label: int, pasid: int | None | str, addr: int,
                     npages: int) -> int:
        """A device-TLB invalidation for ``label``: its ATS cache only; the
        IOTLB keeps its entries (VT-d §6.5.2.5)."""
        d = self._devices.get(label)
        if d is None:
            return 0
        try:
            self.ctx.devtlb_invalidate(d.dev_id, ALL_PASIDS if pasid == "all" else pasid,
                                       addr, npages, vpasid=True)
        except IommufdError as e:
            log.warning("vIOMMU: device-TLB flush of %#x PASID %s failed: %s", label, pasid, e)
            return 0
        return 1

    def _flush(self, dev_id: int, pasid: int | None, addr: int, npages: int) -> int:
        try:
            self.ctx.iotlb_invalidate(dev_id, pasid, addr, npages, vpasid=True, devtlb=False)
        except IommufdError as e:
            log.warning("vIOMMU: flush of device %d PASID %s failed: %s", dev_id, pasid, e)
            return 0
        return 1
