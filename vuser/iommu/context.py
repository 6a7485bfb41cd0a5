"""``IoasidContext``: the iommufd file, the unit of security (iommufd ``main.c``).

Its methods are the iommufd commands, named in snake_case, taking and
returning integer object ids and plain values; they raise ``IommufdError``
with the kernel's errno. The control RPC exposes exactly these methods. The
commands live with their objects, as functions taking the context first
(``ioas``, ``hwpt``, ``device``, ``fault``, ``viommu``, ``hw_info``,
``access``, and the DMA path in ``dma``); the class body below is the
dispatch table from method name to command (iommufd's ``iommufd_ioctl_ops``),
so a call costs what a method call costs. This module sets up the shared
state (``core.ContextCore``, which also has the ``fail_nth`` test hook) and
holds DESTROY, close and the object listings. How
each command's rules compare with the kernel's: docs/iommufd-fidelity.md.

The model is synchronous and single-threaded: callers (the asyncio server,
the RPC) call it from one thread.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any

from . import access, device, dma, fault, hw_info, hwpt, ioas, viommu
from .access import IoasAccess
from .core import ContextCore
from .device import BoundDevice
from .dma import default_clock
from .errors import fail
from .fault import FaultQueue
from .hwpt import HwptNested, HwptPaging
from .ioas import Ioas
from .iotlb import Iotlb
from .objects import ObjectTable
from .psc import DEFAULT_PSC_CAPACITY
from .registry import IommuRegistry
from .uapi import Stats
from .viommu import Vdevice, Veventq, Viommu

DEFAULT_IOTLB_CAPACITY = 4096


class IoasidContext(ContextCore):
    """One iommufd context over the devices of ``registry``.

    ``iotlb_capacity`` bounds the IOTLB (entries, LRU); ``psc_capacity``
    the first-stage paging-structure cache (entries; 0 turns it off, see
    ``iotlb``); ``clock`` stamps trace events (``time.monotonic`` by default).
    """

    #: The methods a control RPC may expose: plain arguments and results.
    #: (``set_trace``, ``add_fault_observer``, ``fault_set_notify`` and the
    #: ``access_*`` methods take callables or hand out memory, and stay
    #: in-process.)
    UAPI_METHODS = (
        "destroy", "objects", "object_info",
        "ioas_alloc", "ioas_map", "ioas_map_file", "ioas_unmap", "ioas_copy",
        "ioas_iova_ranges", "ioas_allow_iovas", "ioas_areas",
        "hwpt_alloc", "hwpt_invalidate", "hwpt_set_dirty_tracking", "hwpt_get_dirty_bitmap",
        "get_hw_info", "fault_queue_alloc", "fault_read", "fault_respond", "fault_queue_status",
        "ioas_option", "viommu_alloc", "vdevice_alloc", "vdevice_lookup",
        "veventq_alloc", "veventq_read", "fail_nth",
        "device_bind", "device_attach", "device_replace", "device_detach", "device_unbind",
        "device_lookup", "device_pasid_map", "device_ppasid", "device_info",
        "translate", "read", "write", "ats_translate", "page_request",
        "iotlb_invalidate", "devtlb_invalidate", "iotlb_set_capacity", "stats", "stats_reset",
    )

    # -- the dispatch table: each command lives in its object's file ---------------
    ioas_alloc = ioas.ioas_alloc
    ioas_map = ioas.ioas_map
    ioas_map_file = ioas.ioas_map_file
    ioas_unmap = ioas.ioas_unmap
    ioas_copy = ioas.ioas_copy
    ioas_iova_ranges = ioas.ioas_iova_ranges
    ioas_option = ioas.ioas_option
    ioas_allow_iovas = ioas.ioas_allow_iovas
    ioas_areas = ioas.ioas_areas

    hwpt_alloc = hwpt.hwpt_alloc
    hwpt_invalidate = hwpt.hwpt_invalidate
    hwpt_set_dirty_tracking = hwpt.hwpt_set_dirty_tracking
    hwpt_get_dirty_bitmap = hwpt.hwpt_get_dirty_bitmap

    device_bind = device.device_bind
    device_unbind = device.device_unbind
    device_attach = device.device_attach
    device_replace = device.device_replace
    device_detach = device.device_detach
    device_lookup = device.device_lookup
    device_pasid_map = device.device_pasid_map
    device_ppasid = device.device_ppasid
    device_info = device.device_info

    fault_queue_alloc = fault.fault_queue_alloc
    fault_set_notify = fault.fault_set_notify
    fault_read = fault.fault_read
    fault_respond = fault.fault_respond
    fault_queue_status = fault.fault_queue_status
    page_request = fault.page_request
    add_page_request_observer = fault.add_page_request_observer
    remove_page_request_observer = fault.remove_page_request_observer

    viommu_alloc = viommu.viommu_alloc
    vdevice_alloc = viommu.vdevice_alloc
    vdevice_lookup = viommu.vdevice_lookup
    veventq_alloc = viommu.veventq_alloc
    veventq_read = viommu.veventq_read

    access_create = access.access_create
    access_pin_pages = access.access_pin_pages
    access_unpin_pages = access.access_unpin_pages
    access_rw = access.access_rw

    get_hw_info = hw_info.get_hw_info

    translate = dma.translate
    read = dma.read
    write = dma.write
    ats_translate = dma.ats_translate
    iotlb_invalidate = dma.iotlb_invalidate
    devtlb_invalidate = dma.devtlb_invalidate
    iotlb_set_capacity = dma.iotlb_set_capacity
    stats = dma.stats
    stats_reset = dma.stats_reset
    set_trace = dma.set_trace
    tracing = property(dma.tracing)
    trace_note = dma.trace_note
    set_inject = dma.set_inject
    add_fault_observer = dma.add_fault_observer
    remove_fault_observer = dma.remove_fault_observer
    add_miss_resolver = dma.add_miss_resolver
    remove_miss_resolver = dma.remove_miss_resolver

    def __init__(self, registry: IommuRegistry, *, iotlb_capacity: int = DEFAULT_IOTLB_CAPACITY,
                 psc_capacity: int = DEFAULT_PSC_CAPACITY,
                 clock: Callable[[], float] = default_clock) -> None:
        self.registry = registry
        self._objects = ObjectTable()
        self._iotlb = Iotlb(iotlb_capacity, psc_capacity)
        self._stats = Stats()
        self._trace = None
        self._inject = None   # an instance attribute: the DMA path reads it on every access
        self._fault_observers = []
        self._clock = clock
        self._fail_left = 0
        self._rlimit_mode = 0
        self.closed = False

    # -- DESTROY -------------------------------------------------------------
    def destroy(self, obj_id: int) -> None:
        """IOMMU_DESTROY: destroy any object by id.

        ENOENT for an unknown id; EBUSY while the object is in use (an IOAS
        with HWPTs, hence with attached devices; a HWPT that is attached or
        has nested children; a vIOMMU with vDEVICEs or HWPTs; a fault queue
        named by a HWPT). Devices are released by ``device_unbind`` (EBUSY
        here): departure, because VFIO owns the device object.
        """
        obj = self._objects.get(obj_id)
        if isinstance(obj, BoundDevice):
            raise fail(errno.EBUSY, f"device {obj_id} is released by device_unbind")
        if obj.users:
            raise fail(errno.EBUSY, f"{obj.TYPE.value} {obj_id} is in use ({obj.users} users)")
        self._destroy_obj(obj)

    # -- close ----------------------------------------------------------------
    def close(self) -> None:
        """Close the context: unbind every device, then destroy leaves first.

        Every group owned here is released and every pinned page unpinned.
        """
        if self.closed:
            return
        for bd in sorted(self._objects.of_type(BoundDevice), key=lambda b: -b.id):
            self.device_unbind(bd.id)
        order = (IoasAccess, Vdevice, Veventq, HwptNested, Viommu, HwptPaging, FaultQueue, Ioas)
        while len(self._objects):
            progress = False
            for cls in order:
                for obj in sorted(self._objects.of_type(cls), key=lambda o: -o.id):
                    if obj.users == 0:
                        self._destroy_obj(obj)
                        progress = True
            if not progress:  # pragma: no cover - a refcount bug
                raise RuntimeError(f"objects still in use at close: "
                                   f"{[o.describe() for o in self._objects]}")
        self._iotlb.invalidate_all()
        self.closed = True

    def __enter__(self) -> IoasidContext:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- inspection -------------------------------------------------------------
    def objects(self) -> list[dict[str, Any]]:
        """Model extension: every object, as plain dicts, by id."""
        return [o.describe() for o in sorted(self._objects, key=lambda o: o.id)]

    def object_info(self, obj_id: int) -> dict[str, Any]:
        """Model extension: one object as a dict; ENOENT if unknown."""
        return self._objects.get(obj_id).describe()
