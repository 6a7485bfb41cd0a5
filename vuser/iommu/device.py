"""Bound devices and their commands (iommufd ``device.c``, VFIO cdev ioctls).

``device_bind`` (BIND_IOMMUFD) makes an ``IommuDevice`` an object of the
context; ``device_attach`` / ``device_replace`` / ``device_detach``
(ATTACH/DETACH_IOMMUFD_PT and iommufd's PASID attach) connect it, or one of
its PASIDs, to an IOAS (through an automatic paging HWPT) or to a HWPT;
``device_unbind`` releases it. The group rules are in ``registry``.

Attach rules, as in iommufd ``device.c`` and its selftest
(``iommufd_device_pasid``), checked in the kernel's order:

- the ``pt_id`` comes first (ENOENT; EINVAL for an object that is not an
  IOAS or HWPT);
- attaching a RID or PASID that is attached already gives EBUSY, also to the
  same HWPT: use ``device_replace``, which needs an attachment (EINVAL),
  does nothing for the same HWPT, and on any failure leaves the old one in
  place;
- a PASID needs a PASID-compatible HWPT (allocated with the PASID flag), and
  the RID's HWPT must be PASID-compatible too; a RID HWPT that is not
  PASID-compatible is refused while PASIDs are attached (EINVAL).
  Automatic HWPTs are allocated with no flags (``iommufd_device_auto_get_domain``),
  so they are never PASID-compatible: a PASID cannot attach to an IOAS;
- then the PASID must be inside the device's PASID width (EINVAL);
- the RIDs of one group share one HWPT (EINVAL otherwise); replacing the
  RID's HWPT moves the whole group;
- a RID attach reserves, in the IOAS, what lies outside the device's
  aperture plus its reserved regions (EADDRINUSE if mapped or allowed); a
  PASID attach reserves nothing (``attach_resv`` is RID-only). Departure: the
  model has no domain geometry, so the aperture is the device's and is
  reserved at attach (the kernel reserves the domain's when it joins the IOAS);
- a nested HWPT's VT-d stage-1 data is checked at attach (EINVAL);
- detaching what is not attached does nothing (VFIO's DETACH_IOMMUFD_PT);
- an automatic HWPT is freed when its last device moves away.

Each device has a vPASID -> pPASID table (identity unless set). ``translate``
takes the PASID the device emits (the pPASID); faults and page requests
report the vPASID.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any

from .core import ContextCore
from .errors import IommufdError, fail
from .fault import auto_respond
from .hwpt import Hwpt, HwptNested, HwptPaging, check_vtd_s1, paging_of
from .invalidation import flush_dev
from .ioas import Ioas
from .objects import IommufdObject, ObjType
from .registry import IommuDevice
from .uapi import U64_MAX

if TYPE_CHECKING:
    from .viommu import Vdevice


class BoundDevice(IommufdObject):
    """``struct iommufd_device``: a device bound to this context."""

    TYPE = ObjType.DEVICE

    def __init__(self, dev: IommuDevice) -> None:
        super().__init__()
        self.dev = dev
        #: What each PASID (None: the RID) is attached to.
        self.attach: dict[int | None, Hwpt] = {}
        self.v2p: dict[int, int] = {}
        self.p2v: dict[int, int] = {}
        self.vdevices: set[Vdevice] = set()
        self._resv: dict[Ioas, int] = {}

    def vpasid(self, pasid: int | None) -> int | None:
        """The guest's name for the PASID the device emitted."""
        if pasid is None:
            return None
        return self.p2v.get(pasid, pasid)

    def reserved_ranges(self) -> list[tuple[int, int]]:
        lo, hi = self.dev.aperture
        out = list(self.dev.reserved)
        if lo > 0:
            out.append((0, lo - 1))
        if hi < U64_MAX:
            out.append((hi + 1, U64_MAX))
        return out

    def describe(self) -> dict[str, object]:
        d = super().describe()
        d.update(label=self.dev.label, name=self.dev.name,
                 attach=sorted(([p, h.id] for p, h in self.attach.items()),
                               key=lambda a: -1 if a[0] is None else a[0]),
                 pasid_map=sorted([v, p] for v, p in self.v2p.items()))
        return d


def get_device(ctx: ContextCore, dev_id: int) -> BoundDevice:
    """``iommufd_get_device``: the bound device ``dev_id``, else ENOENT."""
    return ctx._objects.get(dev_id, BoundDevice)


# -- bind / unbind --------------------------------------------------------
def device_bind(ctx: ContextCore, device: IommuDevice | int) -> int:
    """VFIO_DEVICE_BIND_IOMMUFD: bind a device (object or label); returns dev_id.

    The first bind in a group makes this context its owner and blocks the
    whole group's DMA. EBUSY if the device is bound already; EPERM if its
    group belongs to another context; EINVAL for another registry's device.
    Departure (docs/iommufd-fidelity.md): the model has no per-fd state,
    so a second bind is EBUSY where VFIO gives EINVAL for the same fd.
    """
    dev = ctx.registry.by_label(device) if isinstance(device, int) else device
    if not isinstance(dev, IommuDevice) or dev.registry is not ctx.registry:
        raise fail(errno.EINVAL, "not a device of this context's registry")
    if dev.ctx is not None:
        raise fail(errno.EBUSY, f"{dev.name} is already bound")
    group = dev.group
    if group.owner is not None and group.owner is not ctx:
        raise fail(errno.EPERM, f"group {group.gid} is owned by another context")
    bd = ctx._objects.commit(BoundDevice(dev))
    group.owner = ctx  # type: ignore[assignment]
    dev.ctx, dev.dev_id = ctx, bd.id  # type: ignore[assignment]
    return bd.id


def device_unbind(ctx: ContextCore, dev_id: int) -> None:
    """Unbind: detach every PASID and the RID, destroy the device's vDEVICEs.

    Unbinding the last bound device of a group releases the group.
    """
    bd = get_device(ctx, dev_id)
    for pasid in [p for p in bd.attach if p is not None] + (
            [None] if None in bd.attach else []):
        _detach(ctx, bd, pasid)
    for vdev in list(bd.vdevices):
        ctx._destroy_obj(vdev)
    flush_dev(ctx, bd, "all")
    ctx._objects.remove(bd)
    dev = bd.dev
    dev.ctx, dev.dev_id = None, 0
    if not any(d.ctx is ctx for d in dev.group.devices):
        dev.group.owner = None


# -- attach / replace / detach ---------------------------------------------
def _check_pasid(ctx: ContextCore, bd: BoundDevice, pasid: int | None) -> None:
    """``iommu_attach_device_pasid``: the PASID must fit the device (EINVAL)."""
    if pasid is None:
        return
    if not bd.dev.pasid_width:
        raise fail(errno.EINVAL, f"{bd.dev.name} has no PASID capability")
    if not isinstance(pasid, int) or not 0 < pasid < 1 << bd.dev.pasid_width:
        raise fail(errno.EINVAL, f"PASID {pasid!r} outside 1..2^{bd.dev.pasid_width}-1")


def _pasid_arg(pasid: int | None) -> None:
    if pasid is not None and (not isinstance(pasid, int) or pasid < 0):
        raise fail(errno.EINVAL, f"bad PASID {pasid!r}")


def _check_compat(ctx: ContextCore, bd: BoundDevice, pasid: int | None, hwpt: Hwpt,
                  replacing: bool = False) -> None:
    """``iommufd_hw_pagetable_attach`` / ``iommufd_device_do_replace``:
    group, reserved-range, PASID-compatibility, PASID-range, dirty and
    VT-d stage-1 rules, in that order."""
    if pasid is None:
        g = bd.dev.group
        if not replacing and g.rid_hwpt is not None and g.rid_hwpt is not hwpt:
            raise fail(errno.EINVAL, "the group's RIDs are attached elsewhere")
        s2 = paging_of(hwpt)
        if not bd._resv.get(s2.ioas):
            s2.ioas.iopt.check_reserve(bd.reserved_ranges())
    if pasid is not None:
        if not hwpt.pasid_compat:
            raise fail(errno.EINVAL, f"HWPT {hwpt.id} is not PASID-compatible")
        rid = bd.attach.get(None)
        if rid is not None and not rid.pasid_compat:
            raise fail(errno.EINVAL, "the RID's HWPT is not PASID-compatible")
    else:
        if not hwpt.pasid_compat and any(p is not None for p in bd.attach):
            raise fail(errno.EINVAL, f"HWPT {hwpt.id} is not PASID-compatible and "
                                     "PASIDs are attached")
    _check_pasid(ctx, bd, pasid)
    s2 = paging_of(hwpt)
    if s2.enforce_dirty and not bd.dev.dirty_tracking:
        raise fail(errno.EINVAL, f"{bd.dev.name} cannot track dirty pages")
    if isinstance(hwpt, HwptNested):
        check_vtd_s1(hwpt)


def _link(ctx: ContextCore, bd: BoundDevice, pasid: int | None, hwpt: Hwpt) -> None:
    """Record an attachment (all checks done)."""
    if pasid is None:
        ioas = paging_of(hwpt).ioas
        if not bd._resv.get(ioas):
            ioas.iopt.add_reserved(bd, bd.reserved_ranges())
        bd._resv[ioas] = bd._resv.get(ioas, 0) + 1
    bd.attach[pasid] = hwpt
    hwpt.users += 1
    hwpt.attached.add((bd, pasid))
    if pasid is None:
        g = bd.dev.group
        g.rid_hwpt = hwpt
        g.rid_devices.add(bd)


def _unlink(ctx: ContextCore, bd: BoundDevice, pasid: int | None) -> Hwpt:
    """Undo ``_link``, flush the caches and answer pending page requests."""
    hwpt = bd.attach.pop(pasid)
    hwpt.users -= 1
    hwpt.attached.discard((bd, pasid))
    if pasid is None:
        ioas = paging_of(hwpt).ioas
        bd._resv[ioas] -= 1
        if not bd._resv[ioas]:
            del bd._resv[ioas]
            ioas.iopt.remove_reserved(bd)
    if pasid is None:
        g = bd.dev.group
        g.rid_devices.discard(bd)
        if not g.rid_devices:
            g.rid_hwpt = None
    flush_dev(ctx, bd, pasid)
    if hwpt.fault is not None:
        auto_respond(ctx, bd, pasid)
    return hwpt


def _put_auto(ctx: ContextCore, hwpt: Hwpt) -> None:
    if hwpt.auto and hwpt.users == 0:
        ctx._destroy_obj(hwpt)


def _resolve_pt(ctx: ContextCore, bd: BoundDevice, pasid: int | None, pt_id: int,
                try_attach: Any) -> tuple[Hwpt, bool]:
    """The HWPT for ``pt_id``, checked with ``try_attach``: the HWPT itself,
    or an automatic one for an IOAS.

    Returns ``(hwpt, new)``; a new automatic HWPT is not committed yet.
    Existing automatic HWPTs are tried first; EINVAL means "incompatible,
    try the next", as in ``iommufd_device_auto_get_domain``.
    """
    pt = ctx._objects.get(pt_id)
    if isinstance(pt, (HwptPaging, HwptNested)):
        try_attach(pt)
        return pt, False
    if not isinstance(pt, Ioas):
        raise fail(errno.EINVAL, f"object {pt_id} is a {pt.TYPE.value}, not an IOAS/HWPT")
    for hwpt in list(pt.hwpts):
        if not hwpt.auto:
            continue
        try:
            try_attach(hwpt)
        except IommufdError as e:
            if e.errno == errno.EINVAL:
                continue
            raise
        return hwpt, False
    hwpt = HwptPaging(pt)  # flags 0: not PASID-compatible
    hwpt.auto = True
    hwpt.check_domain_add()
    ctx._step("auto domain")
    try_attach(hwpt)
    return hwpt, True


def _commit_auto(ctx: ContextCore, hwpt: HwptPaging) -> None:
    ctx._objects.commit(hwpt)
    hwpt.link()


def device_attach(ctx: ContextCore, dev_id: int, pt_id: int, pasid: int | None = None) -> int:
    """Attach the RID (``pasid=None``) or a PASID to an IOAS or HWPT.

    Returns the HWPT id actually attached (the automatic one for an
    IOAS). Errors in the kernel's order (``iommufd_device_change_pt``,
    ``iommufd_hw_pagetable_attach``): ENOENT ids; EINVAL a ``pt_id``
    that is not an IOAS/HWPT; EBUSY if attached already, to this HWPT or
    another (use ``device_replace``); EINVAL another HWPT on the group's
    RIDs; EADDRINUSE when the device's aperture would narrow mapped or
    allowed IOVAs (RID only); EINVAL a HWPT that is not PASID-compatible
    for a PASID (an IOAS always, its automatic HWPT has no PASID flag),
    or with PASIDs attached for the RID; EINVAL a PASID the device cannot
    carry; EINVAL bad VT-d stage-1 data.
    """
    bd = get_device(ctx, dev_id)
    _pasid_arg(pasid)
    cur = bd.attach.get(pasid)

    def check(h: Hwpt) -> None:
        if cur is not None:
            raise fail(errno.EBUSY, f"{'RID' if pasid is None else f'PASID {pasid}'} is "
                                    f"attached to HWPT {cur.id}; replace it")
        _check_compat(ctx, bd, pasid, h)
        ctx._step("attach handle")

    hwpt, new = _resolve_pt(ctx, bd, pasid, pt_id, check)
    if new:
        _commit_auto(ctx, hwpt)  # type: ignore[arg-type]
    _link(ctx, bd, pasid, hwpt)
    return hwpt.id


def device_replace(ctx: ContextCore, dev_id: int, pt_id: int, pasid: int | None = None) -> int:
    """Replace what the RID or a PASID is attached to, atomically.

    Errors in the kernel's order (``iommufd_device_do_replace``): ENOENT
    ids; EINVAL a ``pt_id`` that is not an IOAS/HWPT; EINVAL nothing
    attached; replacing with the same HWPT succeeds and changes
    nothing; then the attach checks (reserved ranges, PASID
    compatibility, PASID range, stage-1 data). Every check runs before
    any change, so on failure the old HWPT stays. Replacing the RID
    moves every attached RID of the group. The old automatic HWPT is
    freed when unused. Returns the new HWPT id.
    """
    bd = get_device(ctx, dev_id)
    _pasid_arg(pasid)
    cur = bd.attach.get(pasid)
    targets = [bd] if pasid is not None else sorted(bd.dev.group.rid_devices,
                                                    key=lambda b: b.id)

    def check(h: Hwpt) -> None:
        if cur is None:
            raise fail(errno.EINVAL, "nothing attached to replace")
        if h is cur:
            return
        for t in targets:
            _check_compat(ctx, t, pasid, h, replacing=True)
        ctx._step("replace handle")

    hwpt, new = _resolve_pt(ctx, bd, pasid, pt_id, check)
    assert cur is not None
    if hwpt is cur:
        return cur.id
    if new:
        _commit_auto(ctx, hwpt)  # type: ignore[arg-type]
    for t in targets:
        # Checks passed for every target, so re-linking cannot fail.
        _unlink(ctx, t, pasid)
        _link(ctx, t, pasid, hwpt)
    _put_auto(ctx, cur)
    return hwpt.id


def device_detach(ctx: ContextCore, dev_id: int, pasid: int | None = None) -> None:
    """VFIO_DEVICE_DETACH_IOMMUFD_PT: the RID or PASID goes back to blocking.

    ENOENT for the device. Detaching what is not attached does nothing,
    as VFIO does (``vfio_iommufd_physical_detach_ioas`` and the PASID
    variant return early). Pending page requests of that PASID are
    answered INVALID; the old automatic HWPT is freed when unused.
    """
    bd = get_device(ctx, dev_id)
    _pasid_arg(pasid)
    if pasid not in bd.attach:
        return
    _detach(ctx, bd, pasid)


def _detach(ctx: ContextCore, bd: BoundDevice, pasid: int | None) -> None:
    hwpt = _unlink(ctx, bd, pasid)
    _put_auto(ctx, hwpt)


# -- lookups and the vPASID table --------------------------------------------
def device_lookup(ctx: ContextCore, label: int) -> int:
    """The dev_id of the device with this label, bound here; else ENOENT."""
    dev = ctx.registry.by_label(label)
    if dev.ctx is not ctx:
        raise fail(errno.ENOENT, f"label {label:#x} is not bound to this context")
    return dev.dev_id


def device_pasid_map(ctx: ContextCore, dev_id: int, vpasid: int, ppasid: int | None) -> None:
    """Set (or, with ``ppasid=None``, clear) vPASID -> pPASID for a device.

    EINVAL for values outside the device's PASID width; EEXIST when the
    pPASID already has another vPASID.
    """
    bd = get_device(ctx, dev_id)
    _check_pasid(ctx, bd, vpasid)
    if ppasid is None:
        p = bd.v2p.pop(vpasid, None)
        if p is not None:
            bd.p2v.pop(p, None)
        return
    _check_pasid(ctx, bd, ppasid)
    if bd.p2v.get(ppasid, vpasid) != vpasid:
        raise fail(errno.EEXIST, f"pPASID {ppasid} already maps vPASID {bd.p2v[ppasid]}")
    old = bd.v2p.get(vpasid)
    if old is not None:
        bd.p2v.pop(old, None)
    bd.v2p[vpasid] = ppasid
    bd.p2v[ppasid] = vpasid


def device_ppasid(ctx: ContextCore, dev_id: int, vpasid: int) -> int:
    """The pPASID for a vPASID (identity when unmapped)."""
    return get_device(ctx, dev_id).v2p.get(vpasid, vpasid)


def device_info(ctx: ContextCore, dev_id: int) -> dict[str, Any]:
    """Model extension: the device, its attachments and PASID table."""
    bd = get_device(ctx, dev_id)
    d = bd.dev.describe()
    d.update(bd.describe())
    return d
