"""An out-of-tree driver test with vuser, as another repository would write it.

It builds ./driver (vdma_demo.ko) against the guest kernel's headers, shares
the build directory with a guest whose kernel owns the vIOMMU, loads the
driver there, runs its DMA self-tests through the guest agent, and checks the
vIOMMU model's fault list from the host through the control RPC:

- a copy between two dma_map_single buffers goes through the kernel's IOMMU
  domain (IOVAs) and arrives, with no fault recorded;
- a FILL to an IOVA after dma_unmap_page (iommu.strict=1: the unmap
  invalidates at once) is blocked: the device reports a page fault at that
  IOVA, the page keeps its old bytes, and the model records the fault.

Run it with plain `pytest` (from here or from the repository root): the
fixture `vuser_boot` comes from vuser's pytest plugin.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from vuser.guest.extmod import build_external_module

HERE = Path(__file__).resolve().parent


def fields(line: str) -> dict[str, str]:
    return dict(w.split("=", 1) for w in line.split())


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("oot-dma-build")
    build_external_module(HERE / "driver", out)  # for the default guest kernel
    return out


def test_dma_after_unmap_is_blocked_and_recorded(vuser_boot, build_dir):
    guest = vuser_boot(devices=["vuser-iommu", "vuser-dma"], kernel_iommu=True,
                       shares=[build_dir], append="iommu.strict=1")
    guest.run(f"insmod {build_dir}/vdma_demo.ko", check=True)
    dev = guest.run("ls -d /sys/bus/pci/drivers/vdma_demo/0000:*", check=True).out.strip()
    # the guest kernel's intel_iommu (dmar0) translates for the device
    assert guest.run(f"ls /sys/class/iommu/dmar0/devices/{dev.rsplit('/', 1)[1]}").ok

    copy = fields(guest.run(f"echo copy > {dev}/selftest && cat {dev}/selftest",
                            check=True).out)
    assert copy["status"] == "1" and copy["same"] == "1", copy
    assert guest.control.faults()["total"] == 0

    stale = fields(guest.run(f"echo stale > {dev}/selftest && cat {dev}/selftest",
                             check=True).out)
    iova = int(stale["iova"], 16)
    assert stale["first"] == "1", stale            # mapped: SUCCESS
    assert stale["second"] == "2", stale           # unmapped: PAGE_FAULT
    assert int(stale["fault_addr"], 16) == iova and stale["landed"] == "0", stale

    faults = guest.control.faults()
    assert faults["total"] >= 1
    ours = [f for f in faults["recent"] if f["iova"] == iova]
    assert ours, faults["recent"]
    # an untagged request (no PASID) from the function the kernel knows, by its
    # source-id (kernel-owned mode labels each device with its BDF)
    bus, slot_fn = dev.rsplit("/", 1)[1].split(":")[1:]
    slot, fn = slot_fn.split(".")
    assert ours[-1]["pasid"] is None
    assert ours[-1]["label"] == int(bus, 16) << 8 | int(slot, 16) << 3 | int(fn)
    assert "DMAR" in guest.dmesg()  # the guest kernel's intel_iommu drove the unit
