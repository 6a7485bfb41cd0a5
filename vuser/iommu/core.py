"""``ContextCore``: the state of one iommufd context (iommufd
``struct iommufd_ctx``).

Each object file (``ioas``, ``hwpt``, ``device``, ``fault``, ``viommu``,
``access``, ``hw_info``, and the DMA path in ``dma``) holds its object's
commands as functions taking this core first (``ioas_map(ctx, ...)``), as
iommufd's handlers take the ``ucmd``. The core declares the shared state
once, here: the registry, the object table, the IOTLB, the counters, the
trace hook and its clock, the hooks and observers of the DMA path and of
page requests, the IOMMU_OPTION account mode, and the ``fail_nth`` hook
that every allocating command steps through. ``IoasidContext`` sets the
state up and dispatches its methods to the commands.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import TYPE_CHECKING

from .errors import fail
from .iotlb import Iotlb
from .objects import IommufdObject, ObjectTable
from .trace import TraceHook
from .uapi import Stats

if TYPE_CHECKING:  # annotations only
    from .dma import FaultObserver, InjectHook, MissResolver
    from .fault import PageRequestObserver
    from .registry import IommuRegistry


class ContextCore:
    """The context's shared state and its allocation hook."""

    registry: IommuRegistry
    _objects: ObjectTable
    _iotlb: Iotlb
    _stats: Stats
    _trace: TraceHook | None
    _clock: Callable[[], float]
    _fault_observers: list[FaultObserver]
    _inject: InjectHook | None = None
    _miss_resolvers: tuple[MissResolver, ...] = ()
    _pr_observers: tuple[PageRequestObserver, ...] = ()
    #: IOMMU_OPTION RLIMIT_MODE (``ictx->account_mode``).
    _rlimit_mode: int = 0
    _fail_left: int = 0

    def fail_nth(self, n: int) -> None:
        """Test hook (iommufd selftest's ``fail_nth``): fail the ``n``-th internal
        allocation or step from now with ENOMEM; 0 turns it off.

        Every command that allocates calls ``_step`` at each allocation (an
        object, an area, an attach handle) before it changes anything, so
        an injected failure leaves the context's observable state as it was
        before the call (tests/iommu/test_fidelity_fail_nth.py sweeps it).
        """
        if not isinstance(n, int) or n < 0:
            raise fail(errno.EINVAL, f"bad fail_nth {n!r}")
        self._fail_left = n

    def _step(self, what: str) -> None:
        if self._fail_left:
            self._fail_left -= 1
            if not self._fail_left:
                raise fail(errno.ENOMEM, f"fail_nth: {what}")

    def _destroy_obj(self, obj: IommufdObject) -> None:
        self._objects.remove(obj)
        obj.release(self)  # type: ignore[arg-type]
