"""What a control socket serves: the RPC methods and their dispatch.

``Service`` holds one ``IoasidContext`` (the platform's, in ``vuser serve``)
and answers method calls from any number of connections:

- the model's uAPI, every name in ``IoasidContext.UAPI_METHODS``, with the
  model's own parameter names. Three take host objects and are adapted:
  ``ioas_map`` takes bytes (copied into a buffer the server owns) or nil (a
  zeroed one); ``ioas_map_file`` takes a file *path* the server opens;
  ``device_bind`` takes a label. DMA results lose their memoryviews
  (``convert``);
- introspection (``views``), subscriptions (``events``), tracing
  (``tracing``), fault injection (``injection``), and ``rpc_methods`` which
  lists every method with its parameters.

Every failure is a ``RemoteProtocolError`` whose errno goes back to the
client by name: ENOSYS for an unknown method, EINVAL for bad params (checked
before the call), the model's errno otherwise, EIO for a bug here (logged).
"""

from __future__ import annotations

import errno
import inspect
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import vuser
from vuser import ratelimit
from vuser.errors import RemoteProtocolError
from vuser.devices.introspect import DeviceIntrospection, PlatformIntrospection
from vuser.iommu import (
    DEFAULT_PROT, FaultKind, IoasidContext, IoasMapFlags, IommufdError, IommuRegistry, Stage,
    check_range,
)

from . import views
from .convert import RESULT_SHAPES, to_wire
from .events import TOPICS, Hub
from .injection import FaultInjector, S2Holes
from .method_docs import doc_of
from .params import Param, bind, params_of
from .tracing import DEFAULT_MAX_BYTES, TraceRecorder

log = logging.getLogger(__name__)

#: Largest buffer ``ioas_map`` allocates for a client (bytes).
MAX_OWNED_BUFFER = 256 << 20


@dataclass(frozen=True)
class Method:
    name: str
    fn: Callable[..., Any]
    params: tuple[Param, ...]
    group: str
    doc: str
    shape: Callable[[Any], Any] = to_wire
    needs_conn: bool = False
    details: str = ""

    def describe(self) -> dict[str, Any]:
        """Name, group, doc (its first paragraph), details (the rest), what it
        returns and each parameter with its meaning (``method_docs``)."""
        returns, meaning = doc_of(self.name)
        return {"name": self.name, "group": self.group, "doc": self.doc,
                "details": self.details, "returns": returns,
                "params": [dict(p.describe(), doc=meaning.get(p.name)) for p in self.params]}


def _first_line(fn: Callable[..., Any]) -> str:
    doc = inspect.getdoc(fn) or ""
    return " ".join(doc.split("\n\n", 1)[0].split())


def _details(fn: Callable[..., Any]) -> str:
    """A docstring after its first paragraph, each paragraph on one line."""
    paras = (inspect.getdoc(fn) or "").split("\n\n")[1:]
    return "\n\n".join(" ".join(p.split()) for p in paras if p.strip())


def rpc(group: str, *, conn: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Mark a ``Service`` method as an RPC method of ``group``."""
    def mark(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn._rpc = (group, conn)  # type: ignore[attr-defined]
        return fn
    return mark


def _errno_of(e: BaseException) -> tuple[int, str, dict[str, Any]]:
    if isinstance(e, RemoteProtocolError):
        extra = {}
        if isinstance(e, IommufdError) and e.processed is not None:
            extra["processed"] = e.processed
        return e.errno, e.msg, extra
    if isinstance(e, (ValueError, TypeError, OverflowError)):
        return errno.EINVAL, str(e), {}
    if isinstance(e, OSError) and e.errno:
        return e.errno, e.strerror or str(e), {}
    if isinstance(e, MemoryError):
        return errno.ENOMEM, "out of memory", {}
    return errno.EIO, f"internal error: {type(e).__name__}: {e}", {}


class RpcError(RemoteProtocolError):
    """A failed call: ``errno``, ``msg`` and extra fields for the response."""

    def __init__(self, err: int, msg: str, extra: dict[str, Any] | None = None) -> None:
        super().__init__(err, msg)
        self.extra = extra or {}


class Service:
    """The methods one control socket serves, over one context."""

    def __init__(self, ctx: IoasidContext, registry: IommuRegistry | None = None, *,
                 platform: PlatformIntrospection | None = None) -> None:
        self.ctx = ctx
        self.registry = registry if registry is not None else ctx.registry
        self.platform = platform
        self.hub = Hub(ctx, self._platform_devices)
        self.injector = FaultInjector(ctx)
        self.holes = S2Holes(ctx)
        self.recorder: TraceRecorder | None = None
        self._recorder_owner: Any = None
        self.methods: dict[str, Method] = {}
        self._add_uapi()
        self._add_own()

    @classmethod
    def for_platform(cls, platform: PlatformIntrospection) -> Service:
        """A service over ``platform.ctx`` and ``platform.registry`` that shows
        ``platform``'s devices and VMs (a ``vuser.devices.platform.Platform``)."""
        return cls(platform.ctx, platform.registry, platform=platform)

    # -- the method table ---------------------------------------------------------
    def _add_uapi(self) -> None:
        ctx = self.ctx
        adapted: dict[str, Callable[..., Any]] = {
            "ioas_map": self._ioas_map, "ioas_map_file": self._ioas_map_file,
            "device_bind": self._device_bind,
        }
        for name in IoasidContext.UAPI_METHODS:
            fn = adapted.get(name) or getattr(ctx, name)
            params = params_of(fn, skip=("on_response",), method=name)
            # An adapted method's first line says what the RPC takes; the model's
            # docstring says the rest (its checks and errnos).
            self.methods[name] = Method(
                name, fn, params, "uapi", _first_line(fn), RESULT_SHAPES.get(name, to_wire),
                details=_details(getattr(ctx, name)))

    def _add_own(self) -> None:
        for attr in dir(type(self)):
            fn = getattr(self, attr)
            mark = getattr(fn, "_rpc", None)
            if mark is None:
                continue
            group, conn = mark
            self.methods[attr] = Method(attr, fn, params_of(fn, skip=("conn",), method=attr), group,
                                        _first_line(fn), to_wire, conn, _details(fn))

    # -- dispatch --------------------------------------------------------------------
    def call(self, conn: Any, method: str, params: list[Any] | dict[str, Any]) -> Any:
        """Run one method; returns its msgpack result or raises ``RpcError``."""
        m = self.methods.get(method)
        if m is None:
            raise RpcError(errno.ENOSYS, f"no method {method!r}")
        try:
            kwargs = bind(method, m.params, params)
            if m.needs_conn:
                kwargs["conn"] = conn
            return m.shape(m.fn(**kwargs))
        except RpcError:
            raise
        except Exception as e:  # every failure becomes an errno reply
            err, msg, extra = _errno_of(e)
            if err == errno.EIO:
                log.exception("control method %s failed", method)
            raise RpcError(err, msg, extra) from None

    def disconnected(self, conn: Any) -> None:
        """A connection went away: drop its subscriptions, stop its trace."""
        self.hub.unsubscribe(conn)
        if self.recorder is not None and self._recorder_owner is conn:
            self._stop_trace()

    def close(self) -> None:
        if self.recorder is not None:
            self._stop_trace()
        self.injector.clear()
        self.holes.close()
        self.hub.close()

    # -- adapted uAPI ----------------------------------------------------------------
    def _ioas_map(self, ioas_id: int, buffer: bytes | None, length: int,
                  iova: int | None = None, flags: int = DEFAULT_PROT) -> int:
        """IOMMU_IOAS_MAP of a server-owned buffer: a copy of ``buffer``, or zeroes if nil."""
        check_range(0 if iova is None else iova, length)
        if length > MAX_OWNED_BUFFER:
            raise RpcError(errno.ENOMEM, f"server-owned buffers are at most "
                                         f"{MAX_OWNED_BUFFER:#x} bytes; use ioas_map_file")
        buf = bytearray(length) if buffer is None else bytearray(buffer)
        return self.ctx.ioas_map(ioas_id, buf, length, iova, flags)

    def _ioas_map_file(self, ioas_id: int, path: str, start: int, length: int,
                       iova: int | None = None, flags: int = DEFAULT_PROT) -> int:
        """IOMMU_IOAS_MAP_FILE of the file at ``path`` (opened by the server)."""
        writable = isinstance(flags, int) and flags & int(IoasMapFlags.WRITEABLE)
        try:
            fd = os.open(path, (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC)
        except OSError as e:
            raise RpcError(e.errno or errno.EBADF, f"cannot open {path}: {e.strerror}") from None
        try:
            return self.ctx.ioas_map_file(ioas_id, fd, start, length, iova, flags)
        finally:
            os.close(fd)

    def _device_bind(self, device: int) -> int:
        """VFIO_DEVICE_BIND_IOMMUFD of the device with this label; returns dev_id."""
        return self.ctx.device_bind(device)

    # -- meta ----------------------------------------------------------------------
    @rpc("meta")
    def rpc_methods(self) -> list[dict[str, Any]]:
        """Every method with its group, doc, what it returns, and its parameters with
        their kinds, defaults, the uAPI names they take and what they mean."""
        return [m.describe() for m in sorted(self.methods.values(), key=lambda m: m.name)]

    @rpc("meta")
    def server_info(self) -> dict[str, Any]:
        """The server's version, pid, topics and what it serves."""
        return {"version": vuser.__version__, "pid": os.getpid(), "topics": list(TOPICS),
                "platform": type(self.platform).__name__ if self.platform else None,
                "devices": len(self.registry.devices())}

    # -- introspection ---------------------------------------------------------------
    @rpc("view")
    def devices(self) -> list[dict[str, Any]]:
        """Every device: label, name, group, context, attachment per PASID."""
        return views.devices(self.ctx, self.registry, self._device_extra())

    @rpc("view")
    def groups(self) -> list[dict[str, Any]]:
        """Every IOMMU group: its labels and the context owning it."""
        return views.groups(self.ctx, self.registry)

    @rpc("view")
    def pasid_table(self, label: int) -> dict[str, Any]:
        """The PASID table of device ``label`` as the model sees it, with what a
        vIOMMU applied and the device's PASID/ATS/PRI capability and enable state."""
        features, applied = None, None
        for dev in self._platform_devices():
            if dev.device_label() == label:
                features = dev.pci_features().to_dict()
            if applied is None:
                applied = dev.pasid_view(label)
        return views.pasid_table(self.ctx, self.registry, label, features, applied)

    @rpc("view")
    def ioas_list(self) -> list[dict[str, Any]]:
        """Every IOAS with its mappings, usable IOVA ranges and HWPTs."""
        return views.ioas_list(self.ctx)

    @rpc("view")
    def hwpts(self) -> list[dict[str, Any]]:
        """Every HWPT with its parent chain (nested -> paging -> IOAS)."""
        return views.hwpts(self.ctx)

    @rpc("view")
    def counters(self) -> dict[str, Any]:
        """The model's counters (IOTLB included), each device's device-TLB counters,
        and the guest-caused log lines emitted and suppressed (``vuser.ratelimit``)."""
        return {"model": self.ctx.stats(), "devices": self._device_counters(),
                "log": ratelimit.stats()}

    @rpc("view")
    def faults(self, limit: int = 50) -> dict[str, Any]:
        """Recent DMA faults and page requests, and every fault queue's counters."""
        if limit < 0:
            raise RpcError(errno.EINVAL, "limit must be >= 0")
        recent = list(self.hub.recent_faults)
        prs = list(self.hub.recent_page_requests)
        return {"total": self.hub.fault_count,
                "recent": recent[-limit:] if limit else [],
                "page_requests": prs[-limit:] if limit else [],
                "queues": views.fault_queues(self.ctx)}

    # -- subscriptions ---------------------------------------------------------------
    @rpc("events", conn=True)
    def subscribe(self, conn: Any, topics: list[Any]) -> list[str]:
        """Receive notifications ``[2, topic, payload]`` for ``topics``; returns all of yours."""
        bad = [t for t in topics if t not in TOPICS]
        if bad:
            raise RpcError(errno.EINVAL, f"unknown topic(s) {bad!r}; topics: {', '.join(TOPICS)}")
        return self.hub.subscribe(conn, topics)

    @rpc("events", conn=True)
    def unsubscribe(self, conn: Any, topics: list[Any] | None = None) -> list[str]:
        """Stop notifications for ``topics`` (nil: all); returns the ones left."""
        bad = [t for t in topics or () if t not in TOPICS]
        if bad:
            raise RpcError(errno.EINVAL, f"unknown topic(s) {bad!r}")
        return self.hub.unsubscribe(conn, topics)

    # -- tracing -----------------------------------------------------------------------
    @rpc("trace", conn=True)
    def trace_start(self, conn: Any, path: str, max_events: int | None = None,
                    max_bytes: int | None = DEFAULT_MAX_BYTES, keep: bool = False
                    ) -> dict[str, Any]:
        """Record every translation, fault and invalidation to ``path`` (absolute).

        The trace stops with ``trace_stop``, or when this connection closes
        unless ``keep``. EBUSY while another trace records.
        """
        if self.recorder is not None:
            raise RpcError(errno.EBUSY, f"a trace is recording to {self.recorder.path}")
        if not os.path.isabs(path):
            raise RpcError(errno.EINVAL, f"trace path {path!r} is not absolute")
        for name, v in (("max_events", max_events), ("max_bytes", max_bytes)):
            if v is not None and v <= 0:
                raise RpcError(errno.EINVAL, f"{name} must be positive")
        rec = TraceRecorder(path, max_events=max_events, max_bytes=max_bytes,
                            meta={"pid": os.getpid(), "stats": self.ctx.stats()})
        self.recorder = rec
        self._recorder_owner = None if keep else conn
        self.hub.set_recorder(rec.hook)
        return rec.status()

    def adopt_trace(self, rec: TraceRecorder) -> None:
        """Make a recorder started outside (``vuser serve --trace``) this service's trace:
        ``trace status`` shows it, ``trace stop`` or ``close`` ends it."""
        if self.recorder is not None:
            raise RpcError(errno.EBUSY, f"a trace is recording to {self.recorder.path}")
        self.recorder = rec
        self._recorder_owner = None
        self.hub.set_recorder(rec.hook)

    @rpc("trace")
    def trace_stop(self) -> dict[str, Any]:
        """Stop recording; returns the path, events written and dropped, bytes."""
        if self.recorder is None:
            raise RpcError(errno.ENOENT, "no trace is recording")
        return self._stop_trace()

    @rpc("trace")
    def trace_status(self) -> dict[str, Any] | None:
        """The recording trace's status, or nil."""
        return self.recorder.status() if self.recorder is not None else None

    def _stop_trace(self) -> dict[str, Any]:
        rec, self.recorder, self._recorder_owner = self.recorder, None, None
        self.hub.set_recorder(None)
        assert rec is not None
        return rec.stop()

    # -- fault injection ---------------------------------------------------------------
    @rpc("inject")
    def inject_fault(self, label: int, pasid: int | None, iova: int, length: int,
                     count: int = 1, reason: int | str = int(FaultKind.PAGING_ENTRY_INV),
                     stage: int = int(Stage.S1)) -> int:
        """Make the next ``count`` translations of (label, PASID, range) fault.

        ``pasid`` is the guest's PASID, nil for the RID, -1 for any. ``reason``
        is the model's fault kind or a VT-d scalable-mode reason, by name or
        code (0x71 and "PAGING_ENTRY_INV" alike); ``stage`` 1 (the guest's) or
        2 (the host's).
        Returns the rule id.
        """
        return self.injector.add(label, pasid, iova, length, count, reason, stage)

    @rpc("inject")
    def inject_list(self) -> list[dict[str, Any]]:
        """The live injection rules and how often each fired."""
        return [r.to_dict() for r in self.injector.rules()]

    @rpc("inject")
    def inject_remove(self, rule_id: int) -> None:
        """Remove one injection rule."""
        self.injector.remove(rule_id)

    @rpc("inject")
    def inject_clear(self) -> int:
        """Remove every injection rule; returns how many there were."""
        return self.injector.clear()

    @rpc("inject")
    def s2_unmap(self, ioas_id: int, iova: int, length: int) -> dict[str, Any]:
        """Unmap a stage-2 (GPA) range under running DMA; returns the hole (see s2_restore)."""
        return self.holes.unmap(ioas_id, iova, length).to_dict()

    @rpc("inject")
    def s2_restore(self, hole_id: int) -> dict[str, Any]:
        """Map a hole's pages back at the same GPAs."""
        return self.holes.restore(hole_id).to_dict()

    @rpc("inject")
    def s2_holes(self) -> list[dict[str, Any]]:
        """The stage-2 holes cut by s2_unmap and not restored."""
        return [h.to_dict() for h in self.holes.holes()]

    # -- the device layer, through ``vuser.devices.introspect`` ---------------------------
    def _platform_devices(self) -> list[DeviceIntrospection]:
        return [] if self.platform is None else list(self.platform.devices())

    def _device_extra(self) -> dict[int, dict[str, Any]]:
        out: dict[int, dict[str, Any]] = {}
        if self.platform is None:
            return out
        for dev in self.platform.devices():
            label = dev.device_label()
            if label is None:
                continue
            vm = self.platform.vm_of(dev)
            out[label] = {"type": type(dev).__name__, "vm": vm.vm_id if vm else None}
        return out

    def _device_counters(self) -> dict[str, Any]:
        """Each device's own counters (device TLB, PRI, queues, vIOMMU queues), by label."""
        out: dict[str, Any] = {}
        for dev in self._platform_devices():
            label, counters = dev.device_label(), dev.counters()
            if label is not None and counters:
                out[f"{label:#x}"] = counters
        return out

    @rpc("view")
    def vms(self) -> list[dict[str, Any]]:
        """The platform's VMs: GPA IOAS, stage-2 parent HWPT, devices, guest RAM."""
        return [] if self.platform is None else [vm.describe() for vm in self.platform.vms()]

    @rpc("view")
    def device_state(self, label: int) -> dict[str, Any]:
        """A device model's own state (queues, device TLB, PRI, vIOMMU registers)."""
        for dev in self._platform_devices():
            if dev.device_label() == label:
                d = dict(dev.describe())
                d.setdefault("type", type(dev).__name__)
                return d
        raise RpcError(errno.ENOENT, f"no device model with label {label!r}")

    @rpc("view")
    def dma_queues(self) -> list[dict[str, Any]]:
        """Every DMA queue of every device: ring, HEAD, TAIL, COMPLETED, halted, error."""
        out: list[dict[str, Any]] = []
        for dev in self._platform_devices():
            label = dev.device_label()
            if label is not None:
                out += [dict(q.to_dict(), label=label) for q in dev.dma_queues()]
        return sorted(out, key=lambda q: (q["label"], q["queue"]))
