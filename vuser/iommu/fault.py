"""Fault queues: I/O page faults (PRI page requests) and their responses.

iommufd ``fault.c`` / ``eventq.c``. A ``FaultQueue`` (FAULT_QUEUE_ALLOC) is
named by IOPF-capable HWPTs (``hwpt_alloc(..., FAULT_ID_VALID, fault_id)``).
A device's page request reaches the queue of the HWPT its PASID is attached
to. Requests of one page-request group (same device, PASID and group index)
are held until the last one (LPIG), then queued together as records
``{flags, dev_id, label, pasid, grpid, perm, addr, length, cookie}`` sharing one
cookie. ``fault_respond(cookie, SUCCESS|INVALID)`` answers the group: the
requester's ``on_response(code)`` callback runs (a plain callable, so an
asyncio device model can resolve a future from it; the model never imports
asyncio).

The queue is bounded (``depth`` records). When a group does not fit it is
dropped and answered SUCCESS at once (VT-d answers overflowing requests with
success so that the device retries), ``lost_events`` counts the dropped
records, and the next record read carries ``FaultFlags.LOST_EVENTS``: overflow
is never silent. Detaching a PASID answers its pending groups INVALID
(``iommufd_auto_response_faults``).
"""

from __future__ import annotations

import errno
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .core import ContextCore
from .errors import fail
from .objects import IommufdObject, ObjType
from .pagetable.addresses import Iova
from .uapi import (
    FaultFlags, FaultQueueStatus, FaultRecord, PageResponseCode,
)

if TYPE_CHECKING:
    from .device import BoundDevice

DEFAULT_DEPTH = 256
MAX_DEPTH = 1 << 19
ResponseCallback = Callable[[int], None]
#: ``observer(event)`` with a plain dict: ``event`` is "queued" (``records``),
#: "refused" (no IOPF-capable HWPT: answered INVALID), "dropped" (overflow:
#: answered SUCCESS) or "response" (``fault_id``, ``cookie``, ``code``).
PageRequestObserver = Callable[[dict[str, Any]], None]


@dataclass
class _Request:
    addr: int
    perm: int
    last: bool
    on_response: ResponseCallback | None


@dataclass
class _Group:
    cookie: int
    bd: BoundDevice
    pasid: int | None
    grpid: int
    requests: list[_Request]


class FaultQueue(IommufdObject):
    """A bounded queue of page-request records awaiting responses."""

    TYPE = ObjType.FAULT

    def __init__(self, depth: int) -> None:
        super().__init__()
        self.depth = depth
        self.records: deque[FaultRecord] = deque()
        self.pending: dict[int, _Group] = {}
        self.partial: dict[tuple[int, int | None, int], list[_Request]] = {}
        self.lost_events = 0
        self._lost_mark = False
        self.delivered = 0
        self.responded = 0
        self._next_cookie = 1
        #: Called with the queue id whenever records arrive.
        self.on_event: Callable[[int], None] | None = None

    def answer(self, group: _Group, code: int) -> None:
        """Run the group's response callbacks and forget its unread records."""
        self.pending.pop(group.cookie, None)
        if any(r.cookie == group.cookie for r in self.records):
            self.records = deque(r for r in self.records if r.cookie != group.cookie)
        for req in group.requests:
            if req.on_response is not None:
                req.on_response(code)

    def release(self, ctx: Any) -> None:
        for g in list(self.pending.values()):
            self.answer(g, PageResponseCode.INVALID)
        self.partial.clear()

    def status(self) -> FaultQueueStatus:
        return FaultQueueStatus(self.depth, len(self.records), len(self.pending),
                                self.lost_events, self.delivered, self.responded)

    def describe(self) -> dict[str, object]:
        d = super().describe()
        d.update(self.status().to_dict())
        return d


def add_page_request_observer(ctx: ContextCore, cb: PageRequestObserver) -> None:
    """Model extension: call ``cb(event)`` for page requests and responses."""
    ctx._pr_observers = (*ctx._pr_observers, cb)


def remove_page_request_observer(ctx: ContextCore, cb: PageRequestObserver) -> None:
    ctx._pr_observers = tuple(o for o in ctx._pr_observers if o is not cb)


def _pr_event(ctx: ContextCore, event: dict[str, Any]) -> None:
    for cb in ctx._pr_observers:
        cb(event)


def fault_queue_alloc(ctx: ContextCore, depth: int = DEFAULT_DEPTH) -> int:
    """IOMMU_FAULT_QUEUE_ALLOC: a queue of at most ``depth`` records (1..2^19).

    Departure (docs/iommufd-fidelity.md): the kernel's fault queue has no
    depth; the model bounds it so that overflow can be observed.
    """
    if not isinstance(depth, int) or not 1 <= depth <= MAX_DEPTH:
        raise fail(errno.EINVAL, f"depth {depth!r} is not 1..{MAX_DEPTH}")
    q = FaultQueue(depth)
    ctx._step("fault_queue_alloc")
    return ctx._objects.commit(q).id


def fault_set_notify(ctx: ContextCore, fault_id: int,
                     callback: Callable[[int], None] | None) -> None:
    """Call ``callback(fault_id)`` whenever records arrive (the fd's POLLIN)."""
    ctx._objects.get(fault_id, FaultQueue).on_event = callback


def fault_read(ctx: ContextCore, fault_id: int, max_records: int = 0) -> list[FaultRecord]:
    """read() on the queue: up to ``max_records`` records (0: all), oldest first.

    Departure (docs/iommufd-fidelity.md): counted in records, not bytes.
    """
    q = ctx._objects.get(fault_id, FaultQueue)
    if not isinstance(max_records, int) or max_records < 0:
        raise fail(errno.EINVAL, f"bad max_records {max_records!r}")
    n = len(q.records) if max_records == 0 else min(max_records, len(q.records))
    return [q.records.popleft() for _ in range(n)]


def fault_respond(ctx: ContextCore, fault_id: int, cookie: int, code: int) -> None:
    """write() on the queue: answer the group ``cookie`` with SUCCESS (0) or INVALID (1).

    EINVAL for another code or a cookie that is not pending. Departure
    (docs/iommufd-fidelity.md): a group gets its cookie when queued, so it
    may be answered before it is read (the kernel gives it at read).
    """
    q = ctx._objects.get(fault_id, FaultQueue)
    if code not in (PageResponseCode.SUCCESS, PageResponseCode.INVALID):
        raise fail(errno.EINVAL, f"response code {code!r} is not SUCCESS or INVALID")
    group = q.pending.get(cookie) if isinstance(cookie, int) else None
    if group is None:
        raise fail(errno.EINVAL, f"no pending fault group with cookie {cookie!r}")
    q.responded += 1
    q.answer(group, int(code))
    if ctx._pr_observers:
        _pr_event(ctx, {"event": "response", "fault_id": fault_id, "cookie": cookie,
                        "code": int(code), "label": group.bd.dev.label,
                        "pasid": group.bd.vpasid(group.pasid), "grpid": group.grpid})


def fault_queue_status(ctx: ContextCore, fault_id: int) -> FaultQueueStatus:
    """Model extension: depth, queued records, pending groups, lost events."""
    return ctx._objects.get(fault_id, FaultQueue).status()


def page_request(ctx: ContextCore, dev_id: int, pasid: int | None, addr: Iova, perm: int,
                 grpid: int, last: bool, on_response: ResponseCallback | None = None) -> bool:
    """A device's PRI page request (PCIe PRI; VT-d page request descriptor).

    Goes to the fault queue of the HWPT that ``pasid`` (the emitted,
    physical PASID; None for the RID) is attached to. ``on_response`` is
    taken from the last request of the group and is called exactly once,
    perhaps right away. Returns True when queued (or held until the
    group's last request), False when answered at once: INVALID without
    an IOPF-capable HWPT, SUCCESS on overflow. EINVAL for a ``perm``
    outside R/W/X/PRIV or a ``grpid`` beyond 9 bits.
    """

    bd: BoundDevice = ctx._objects.get_of(dev_id, ObjType.DEVICE)
    if not isinstance(perm, int) or not 0 < perm < 16:
        raise fail(errno.EINVAL, f"bad perm {perm!r}")
    if not isinstance(grpid, int) or not 0 <= grpid < 512:
        raise fail(errno.EINVAL, f"page request group index {grpid!r} is not 9 bits")
    ctx._stats.page_requests += 1
    req = _Request(addr & ~0xFFF, perm, bool(last), on_response if last else None)
    hwpt = bd.attach.get(pasid)
    q = hwpt.fault if hwpt is not None else None
    key = (bd.id, pasid, grpid)
    if q is None:
        if ctx._pr_observers:
            _pr_event(ctx, {"event": "refused", "label": bd.dev.label,
                            "pasid": bd.vpasid(pasid), "addr": req.addr, "perm": perm,
                            "grpid": grpid, "last": bool(last)})
        if req.on_response is not None:
            req.on_response(PageResponseCode.INVALID)
        return False
    if not last:
        q.partial.setdefault(key, []).append(req)
        return True
    requests = q.partial.pop(key, []) + [req]
    if len(q.records) + len(requests) > q.depth:
        q.lost_events += len(requests)
        q._lost_mark = True
        if ctx._pr_observers:
            _pr_event(ctx, {"event": "dropped", "fault_id": q.id, "label": bd.dev.label,
                            "pasid": bd.vpasid(pasid), "grpid": grpid,
                            "records": len(requests)})
        if req.on_response is not None:
            req.on_response(PageResponseCode.SUCCESS)
        return False
    cookie = q._next_cookie
    q._next_cookie += 1
    vpasid = bd.vpasid(pasid)
    for i, r in enumerate(requests):
        flags = 0
        if pasid is not None:
            flags |= FaultFlags.PASID_VALID
        if r.last:
            flags |= FaultFlags.LAST_PAGE
        if i == 0 and q._lost_mark:
            flags |= FaultFlags.LOST_EVENTS
            q._lost_mark = False
        q.records.append(FaultRecord(
            flags=int(flags), dev_id=bd.id, label=bd.dev.label,
            pasid=vpasid if vpasid is not None else 0, grpid=grpid, perm=r.perm,
            addr=r.addr, length=4096, cookie=cookie))
    q.pending[cookie] = _Group(cookie, bd, pasid, grpid, requests)
    q.delivered += 1
    if ctx._pr_observers:
        _pr_event(ctx, {"event": "queued", "fault_id": q.id,
                        "records": [r.to_dict() for r in list(q.records)[-len(requests):]]})
    if q.on_event is not None:
        q.on_event(q.id)
    return True


def auto_respond(ctx: ContextCore, bd: BoundDevice, pasid: int | None) -> None:
    """Answer INVALID every pending group of ``(bd, pasid)`` (detach/replace)."""
    for q in ctx._objects.of_type(FaultQueue):
        for g in [g for g in q.pending.values() if g.bd is bd and g.pasid == pasid]:
            q.answer(g, PageResponseCode.INVALID)
        for key in [k for k in q.partial if k[0] == bd.id and k[1] == pasid]:
            del q.partial[key]
