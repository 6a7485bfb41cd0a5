"""What the control RPC may ask of a device and of the platform.

The control RPC (``vuser.rpc``) depends on this interface and on the model's
public surface, never on device classes or their ``describe()`` keys
(docs/architecture.md, "Control"). Every ``PciDevice`` implements
``DeviceIntrospection`` (the base class gives the defaults: no queues, no
counters, no completions); ``Platform`` implements ``PlatformIntrospection``
(its context, registry, devices and VMs).

- ``device_label``: the label the model knows the device by (None before the
  device joined a platform).
- ``describe``: the device's own state (the ``device_state`` method), free-form.
- ``counters``: flat ``name -> number`` counters for ``vuser ctl stats``.
- ``dma_queues``: one ``QueueState`` per descriptor ring.
- ``pci_features``: PASID, ATS and PRI, capability apart from enable state.
- ``pasid_view``: what a vIOMMU applied for a label's PASIDs (None: not a
  vIOMMU, or not translating for that label).
- ``completions``: the device's DMA completion source, or None.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol, runtime_checkable

from vuser.iommu import IoasidContext, IommuRegistry

from .vtd_layout import VtdFaultReason

__all__ = ["QueueState", "Feature", "PciFeatures", "CompletionSource", "DeviceIntrospection",
           "VmIntrospection", "PlatformIntrospection", "flat_counters", "VtdFaultReason"]


@dataclass(frozen=True)
class QueueState:
    """One descriptor ring of a DMA device (its registers and worker state)."""

    queue: int
    ring: int
    size: int
    head: int
    tail: int
    enabled: bool
    busy: bool
    halted: bool
    error: int
    completed: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Feature:
    """A PCIe extended capability: present, and enabled by the guest."""

    cap: bool
    enabled: bool


@dataclass(frozen=True)
class PciFeatures:
    pasid: Feature
    ats: Feature
    pri: Feature

    def to_dict(self) -> dict[str, dict[str, bool]]:
        return asdict(self)


class CompletionSource(Protocol):
    """A device that reports each DMA descriptor it ends (``to_dict()`` records)."""

    def add_completion_observer(self, cb: Callable[[Any], None]) -> None: ...

    def remove_completion_observer(self, cb: Callable[[Any], None]) -> None: ...


@runtime_checkable
class DeviceIntrospection(Protocol):
    def device_label(self) -> int | None: ...

    def describe(self) -> dict[str, Any]: ...

    def counters(self) -> dict[str, int]: ...

    def dma_queues(self) -> list[QueueState]: ...

    def pci_features(self) -> PciFeatures: ...

    def pasid_view(self, label: int) -> dict[str, Any] | None: ...

    def completions(self) -> CompletionSource | None: ...


@runtime_checkable
class VmIntrospection(Protocol):
    vm_id: int

    def describe(self) -> dict[str, Any]: ...


@runtime_checkable
class PlatformIntrospection(Protocol):
    ctx: IoasidContext
    registry: IommuRegistry

    def devices(self) -> Sequence[DeviceIntrospection]: ...

    def vms(self) -> Sequence[VmIntrospection]: ...

    def vm_of(self, device: Any) -> VmIntrospection | None: ...


def flat_counters(prefix: str, values: Mapping[str, Any]) -> dict[str, int]:
    """``{prefix_key: n}``, nested maps flattened the same way."""
    out: dict[str, int] = {}
    for k, v in values.items():
        name = f"{prefix}_{k}" if prefix else k
        if isinstance(v, Mapping):
            out.update(flat_counters(name, v))
        else:
            out[name] = v
    return out
