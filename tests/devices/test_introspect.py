"""Every device type implements the interface the control RPC reads it through
(``vuser.devices.introspect``), with the types and names the RPC relies on."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from vuser.devices import DEVICE_TYPES
from vuser.devices.introspect import (
    DeviceIntrospection, Feature, PciFeatures, PlatformIntrospection, QueueState,
)
from vuser.devices.platform import Platform
from vuser.rpc import Service, render


@pytest.fixture
def platform():
    p = Platform()
    yield p
    p.close()


def _on(platform, name, **options):
    """A device of type ``name`` on ``platform`` (the vIOMMU joins it later, as in serve)."""
    cls = DEVICE_TYPES[name]
    if "platform" in inspect.signature(cls).parameters:
        return cls(platform=platform, **options)
    dev = cls(**options)
    dev.join_platform(platform)
    return dev


@pytest.fixture(params=sorted(DEVICE_TYPES))
def device(request, platform):
    dev = _on(platform, request.param)
    yield dev
    dev.close()


def test_every_device_type_implements_the_interface(device, platform) -> None:
    assert isinstance(device, DeviceIntrospection)
    assert isinstance(platform, PlatformIntrospection)
    assert device.device_label() == device.iommu.label
    assert isinstance(device.describe(), dict)
    feats = device.pci_features()
    assert isinstance(feats, PciFeatures)
    assert all(isinstance(getattr(feats, f.name), Feature) for f in dataclasses.fields(feats))
    assert set(feats.to_dict()) == {"pasid", "ats", "pri"}
    assert all(isinstance(q, QueueState) for q in device.dma_queues())
    assert all(isinstance(k, str) and isinstance(v, int) for k, v in device.counters().items())
    assert device.pasid_view(device.device_label()) is None  # nothing applied yet
    src = device.completions()
    assert src is None or callable(src.add_completion_observer)


def test_the_interface_lists_what_each_device_has(platform) -> None:
    """The RPC shows what the devices return, so a renamed counter or queue
    field shows here, not as an empty ``vuser ctl`` table."""
    dma = _on(platform, "vuser-dma", queues=2)
    iommu = _on(platform, "vuser-iommu")
    sample = _on(platform, "sample")
    try:
        assert [q.queue for q in dma.dma_queues()] == [0, 1]
        assert {"queue0_completed", "queue1_completed", "devtlb_hits", "devtlb_misses",
                "page_requests", "outstanding"} <= set(dma.counters())
        assert {"qi_processed", "qi_errors", "msi_sent", "msi_refused"} <= set(iommu.counters())
        assert sample.counters() == {} and sample.dma_queues() == []
        assert dma.completions() is dma and sample.completions() is None
        assert dma.pci_features() == PciFeatures(Feature(True, False), Feature(True, False),
                                                 Feature(True, False))

        service = Service.for_platform(platform)
        counters = service.call(None, "counters", {})["devices"]
        assert counters[f"{dma.iommu.label:#x}"] == dma.counters()
        assert counters[f"{iommu.iommu.label:#x}"] == iommu.counters()
        queues = service.call(None, "dma_queues", {})
        assert queues == [dict(q.to_dict(), label=dma.iommu.label) for q in dma.dma_queues()]
        table = render.dma_queues(queues).splitlines()
        assert table[0].split()[:3] == ["LABEL", "QUEUE", "RING"] and len(table) == 3
        state = service.call(None, "device_state", {"label": sample.iommu.label})
        assert state == {"type": "SampleDevice"}
        assert service.call(None, "vms", {}) == []  # no DMA_MAP yet: no VM
        service.close()
    finally:
        for d in (dma, iommu, sample):
            d.close()
