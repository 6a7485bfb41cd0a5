"""The kernel-owned vIOMMU's host side without a guest: the query-pci answer,
the probe cache, labels and unit options, the DMAR, the kernel config check."""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import pytest

from vuser.errors import UserError
from vuser.qemu import kernel_iommu, topology
from vuser.qemu.dmar import Scope, parse_dmar
from vuser.qemu.topology import Slot, Topology, parse_query_pci, probe_key


def _dev(bus, slot, qdev="", bar0=None, bridge=None):
    d = {"bus": bus, "slot": slot, "function": 0, "qdev_id": qdev, "class_info": {"class": 0},
         "id": {"vendor": 0x5655, "device": 3},
         "regions": [] if bar0 is None else [{"bar": 0, "address": bar0, "size": 4096,
                                              "type": "memory"}]}
    if bridge is not None:
        d["pci_bridge"] = {"bus": {"number": 0, "secondary": bridge[0], "subordinate": bridge[0]},
                           "devices": bridge[1]}
    return d


# The shape of QEMU 11's answer for vuser-iommu, vuser-dma behind rp0, rp1 (trimmed).
ANSWER = [{"bus": 0, "devices": [
    _dev(0, 0),
    _dev(0, 1, "rp0", bar0=0xFE600000, bridge=(1, [_dev(1, 0, "vuser0", bar0=0xFE400000)])),
    _dev(0, 2, "rp1", bar0=0xFE601000, bridge=(2, [_dev(2, 0, "vuser1", bar0=0xFE200000)])),
    _dev(0, 31),
]}]


def test_query_pci_gives_root_ports_bdfs_and_bar0():
    topo = parse_query_pci(ANSWER, 2)
    assert topo.slots == (Slot((1, 0), 1, 0, 0, 0xFE400000), Slot((2, 0), 2, 0, 0, 0xFE200000))
    assert [s.bdf for s in topo.slots] == [0x100, 0x200]
    assert [s.name for s in topo.slots] == ["01:00.0", "02:00.0"]


def test_query_pci_before_the_firmware_is_done_is_none():
    early = copy.deepcopy(ANSWER)
    early[0]["devices"][2]["pci_bridge"]["devices"][0]["regions"][0]["address"] = -1
    assert parse_query_pci(early, 2) is None  # BAR0 not mapped yet (memory decode off)
    early[0]["devices"][2]["pci_bridge"]["devices"] = []
    assert parse_query_pci(early, 2) is None  # bridge not set up yet
    assert parse_query_pci(ANSWER, 3) is None  # a device missing


def test_query_pci_answer_of_another_shape_is_one_line():
    with pytest.raises(UserError, match="query-pci gave an answer this launcher cannot read"):
        parse_query_pci([{"devices": [{"bus": 0}]}], 1)


QEMU = SimpleNamespace(argv=("/usr/bin/qemu-system-x86_64",), version="11.1.3",
                       path="/nonexistent/qemu")


def key(devices, **kw):
    args = dict(memory_mib=512, accel="tcg", smp=1, qemu_extra=())
    args.update(kw)
    return probe_key(QEMU, devices, **args)


def test_probe_key_follows_what_shapes_the_firmware_assignment():
    base = key(["vuser-iommu", "vuser-dma"])
    assert key(["vuser-iommu", "vuser-dma,label=0x200"]) == base  # the launcher sets labels
    assert key(["vuser-iommu,drhd_base=0xfe400000", "vuser-dma"]) == base
    assert key(["vuser-dma", "vuser-iommu"]) != base
    assert key(["vuser-iommu", "vuser-dma", "sample"]) != base
    assert key(["vuser-iommu", "vuser-dma"], memory_mib=1024) != base
    assert key(["vuser-iommu", "vuser-dma"], qemu_extra=("-machine", "q35,x=1")) != base
    other = SimpleNamespace(argv=QEMU.argv, version="11.2.0", path=QEMU.path)
    assert probe_key(other, ["vuser-iommu", "vuser-dma"], memory_mib=512, accel="tcg", smp=1,
                     qemu_extra=()) != base


def test_probe_cache_hit_costs_no_boot_and_forget_drops_it(tmp_path):
    boots = []

    def boot(until, timeout):
        boots.append(timeout)
        assert until(tmp_path / "no-qmp.sock") is False  # QMP not there: keep waiting
        return SimpleNamespace(error="guest timed out after 1 s")

    with pytest.raises(UserError, match=r"could not find where the firmware put the devices .*"
                                        r"guest timed out after 1 s"):
        topology.probe(boot, 2, key="k" * 64, cache=tmp_path)
    assert len(boots) == 1
    # A cached answer: no boot at all.
    stored = Topology((Slot((1, 0), 1, 0, 0, 0xFE400000), Slot((2, 0), 2, 0, 0, 0xFE200000)))
    topology._store(tmp_path / f"{'k' * 24}.json", stored)
    topo = topology.probe(boot, 2, key="k" * 64, cache=tmp_path)
    assert topo.cached and topo.slots == stored.slots
    assert len(boots) == 1
    # A cache entry for another device count is not used.
    with pytest.raises(UserError):
        topology.probe(boot, 3, key="k" * 64, cache=tmp_path)
    topology.forget(tmp_path, "k" * 64)
    assert not list(tmp_path.glob("*.json"))
    topology.forget(tmp_path, "k" * 64)  # already gone: fine


@pytest.mark.parametrize("text", [
    "{not json",
    '{"slots": [{"root_port": [1, 0], "bus": 1, "device": 0, "function": 0}]}',
    '{"slots": [{"root_port": [1, 0], "bus": "1", "device": 0, "function": 0, "bar0": 4096}]}',
    '{"slots": [{"root_port": [1, 0], "bus": 1, "device": 40, "function": 0, "bar0": 4096}]}',
    '{"slots": [{"root_port": [1], "bus": 1, "device": 0, "function": 0, "bar0": 4096}]}',
    '{"slots": [{"root_port": [1, 0], "bus": 1, "device": 0, "function": 0, "bar0": 0}]}',
])
def test_damaged_cache_entry_is_probed_again(tmp_path, text):
    (tmp_path / f"{'d' * 24}.json").write_text(text)
    boots = []

    def boot(until, timeout):
        boots.append(1)
        return SimpleNamespace(error="QEMU failed: x")

    with pytest.raises(UserError, match="QEMU failed: x"):
        topology.probe(boot, 1, key="d" * 64, cache=tmp_path)
    assert boots == [1]


def test_a_cache_that_cannot_be_written_only_costs_the_next_probe(tmp_path, monkeypatch):
    early = copy.deepcopy(ANSWER)
    early[0]["devices"][1]["pci_bridge"]["devices"][0]["regions"][0]["address"] = -1
    answers = iter([early, ANSWER])
    monkeypatch.setattr(topology, "POLL_S", 0.0)

    def boot(until, timeout):
        from vuser.qemu import qmp

        monkeypatch.setattr(qmp, "call", lambda *a, **kw: [next(answers)])
        while not until(tmp_path / "qmp.sock"):
            pass
        return SimpleNamespace(error="stopped")

    blocked = tmp_path / "file"
    blocked.write_text("")
    topo = topology.probe(boot, 2, key="e" * 64, cache=blocked / "probes")
    assert not topo.cached and [s.bar0 for s in topo.slots] == [0xFE400000, 0xFE200000]


TOPO = Topology((Slot((1, 0), 1, 0, 0, 0xFE400000), Slot((2, 0), 2, 0, 0, 0xFE200000)))


def test_plan_labels_unit_options_dmar_and_kernel_args():
    p = kernel_iommu.plan(["vuser-iommu", "vuser-dma"], TOPO)
    assert p.devices == ("vuser-iommu,label=0x100,drhd_base=0xfe400000,cm=0",
                         "vuser-dma,label=0x200")
    assert p.kernel_args == ("intel_iommu=on,sm_on", "intremap=off", "vuser.iommu=kernel")
    assert p.register_base == 0xFE400000
    dmar = parse_dmar(p.dmar)
    assert [u.register_base for u in dmar.units] == [0xFE400000]
    # The unit itself is not in its own scope; the vuser-dma is, behind root port 00:02.0.
    assert dmar.units[0].scopes == (Scope(((2, 0), (0, 0))),)


def test_plan_keeps_options_a_given_cm_and_an_equal_label():
    p = kernel_iommu.plan(["vuser-iommu,cm=1,label=0x100", "vuser-dma,queues=2,label=512"], TOPO)
    assert p.devices == ("vuser-iommu,cm=1,label=0x100,drhd_base=0xfe400000",
                         "vuser-dma,queues=2,label=0x200")


@pytest.mark.parametrize("devices, message", [
    (["vuser-iommu", "vuser-dma,label=0x42"],
     r"^vuser-dma has label=0x42, but a kernel-owned vIOMMU needs its label to be its guest BDF "
     r"02:00.0, label=0x200$"),
    (["vuser-iommu", "vuser-dma,label=two"], "vuser-dma has label=two, but"),
    (["vuser-dma", "sample"], r"^a kernel-owned vIOMMU needs exactly one vuser-iommu among the "
                              r"devices, not none \(vuser-dma, sample\)$"),
    (["vuser-iommu", "vuser-iommu"], r"needs exactly one vuser-iommu among the devices, not 2"),
])
def test_plan_refuses_with_one_line(devices, message):
    with pytest.raises(UserError, match=message):
        kernel_iommu.plan(devices, TOPO)


def test_a_unit_with_nothing_behind_it_is_refused():
    with pytest.raises(UserError, match="needs a device behind it besides vuser-iommu"):
        kernel_iommu.plan(["vuser-iommu"], Topology(TOPO.slots[:1]))


def test_kernel_config_needs_intel_iommu(tmp_path):
    cfg = tmp_path / "config-6.1.0-fake"
    cfg.write_text("CONFIG_PCI=y\n# CONFIG_INTEL_IOMMU is not set\n")
    with pytest.raises(UserError) as e:
        kernel_iommu.check_kernel_config(cfg, "6.1.0-fake")
    assert str(e.value) == (f"a kernel-owned vIOMMU needs intel_iommu, but kernel 6.1.0-fake has "
                            f"no CONFIG_INTEL_IOMMU=y ({cfg})")
    cfg.write_text("CONFIG_INTEL_IOMMU=y\n")
    assert kernel_iommu.check_kernel_config(cfg, "6.1.0-fake") == [
        "kernel 6.1.0-fake has no CONFIG_INTEL_IOMMU_SVM=y: SVA (shared virtual addressing) "
        "will not work"]
    cfg.write_text("CONFIG_INTEL_IOMMU=y\nCONFIG_INTEL_IOMMU_SVM=y\n")
    assert kernel_iommu.check_kernel_config(cfg, "6.1.0-fake") == []
    assert kernel_iommu.check_kernel_config(None) == []  # unknown kernel: not checked
    with pytest.raises(UserError, match="cannot read the guest kernel's config"):
        kernel_iommu.check_kernel_config(tmp_path / "missing")


def test_the_debian_image_kernel_passes_the_check():
    """The provisioned image's own config (Debian ships boot/config-<release>)."""
    from vuser.guest.image import build_image

    try:
        image = build_image(tests=["kernel_iommu"], progress=False)
    except UserError as e:
        pytest.skip(f"prerequisite missing: the guest image: {e}")
    assert image.kernel_config is not None and image.kernel_config.is_file()
    assert kernel_iommu.check_kernel_config(image.kernel_config, image.kernel_release) == []


def test_cached_topology_file_is_json(tmp_path):
    topology._store(tmp_path / "x.json", TOPO)
    raw = json.loads((tmp_path / "x.json").read_text())
    assert raw["slots"][0] == {"root_port": [1, 0], "bus": 1, "device": 0, "function": 0,
                               "bar0": 0xFE400000}
