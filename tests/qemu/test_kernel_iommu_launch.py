"""launch(kernel_iommu=True) end to end: real QEMU, the real guest image, the
guest kernel's own intel_iommu on vuser-iommu (guest-tests/kernel_iommu.c)."""

from __future__ import annotations

import dataclasses

import pytest

from vuser.errors import UserError
from vuser.guest import ktap
from vuser.qemu import topology
from vuser.qemu.launcher import launch
from vuser.qemu.topology import Topology

from qemu_helpers import alive, group_members

pytestmark = pytest.mark.timeout(600)

TWO = ["vuser-iommu", "vuser-dma"]
MOVED = ["vuser-dma", "sample", "vuser-iommu", "vuser-dma"]  # BAR0 and BDFs elsewhere


@pytest.fixture(scope="module")
def image(qemu_bin):
    from vuser.guest.image import build_image

    try:
        return build_image(tests=["kernel_iommu"], progress=False)
    except UserError as e:
        if not str(e).startswith("apt-get update"):
            raise
        pytest.skip(f"prerequisite missing: the Debian archive, to build the guest image: {e}")


def _torn_down(info) -> None:
    assert not info.workdir.exists(), "working directory (sockets, QMP, DMAR) left behind"
    assert not alive(info.qemu_pid) and not group_members(info.qemu_pid), "QEMU left running"
    assert not alive(info.server_pid) and not group_members(info.server_pid), "server left running"


def _cases(result) -> dict[str, str]:
    prog = ktap.parse(result.console).find("kernel_iommu")
    assert prog is not None, result.console[-3000:]
    return {c.name: c.status.value if c.status else "unfinished" for c in prog.subtests}


bar0: dict[str, int] = {}


@pytest.mark.parametrize("devices", [TWO, MOVED], ids=["iommu-first", "moved-bar"])
def test_the_kernel_owns_vuser_iommu_wherever_the_firmware_puts_it(image, qemu_bin, tmp_path,
                                                                    devices):
    infos = []
    r = launch(image, devices=devices, timeout=300, qemu=qemu_bin, kernel_iommu=True,
               probe_cache=tmp_path, on_ready=infos.append)
    assert r.ok, f"{r.error}\n{r.console[-3000:]}\n{r.server_log[-2000:]}"
    cases = _cases(r)
    assert cases and set(cases.values()) == {"pass"}, cases
    topo = r.topology
    assert isinstance(topo, Topology) and not topo.cached and topo.probe_s > 0
    unit = topo.slots[devices.index("vuser-iommu")]
    bar0[devices[0]] = unit.bar0
    assert f"register base {unit.bar0:#x} (firmware probe" in r.notes[-1]
    # The guest saw the unit at the probed address (kernel_iommu.c checks dmar0 against it).
    assert f"BAR0 {unit.bar0:#x}" in r.console
    _torn_down(infos[0])
    if len(bar0) == 2:  # both topologies ran: the address was found, not assumed
        assert bar0["vuser-iommu"] != bar0["vuser-dma"]


def test_a_cached_probe_costs_no_boot(image, qemu_bin, tmp_path):
    first = launch(image, devices=TWO, timeout=300, qemu=qemu_bin, kernel_iommu=True,
                   probe_cache=tmp_path)
    assert first.ok and not first.topology.cached, first.error
    again = launch(image, devices=TWO, timeout=300, qemu=qemu_bin, kernel_iommu=True,
                   probe_cache=tmp_path)
    assert again.ok and again.topology.cached, again.error
    assert again.topology.slots == first.topology.slots
    assert "(cached probe)" in again.notes[-1]


def test_a_wrong_drhd_base_fails_at_once_with_the_devices_line(image, qemu_bin, tmp_path):
    """A stale probe cache: vuser-iommu sees the firmware put BAR0 elsewhere and stops."""
    key = topology.probe_key(qemu_bin, TWO, memory_mib=512, accel="tcg", smp=1, qemu_extra=())
    probes = []
    real = topology.probe(lambda until, timeout: _firmware_boot(qemu_bin, until, timeout,
                                                                probes.append),
                          2, key=key, cache=tmp_path)
    assert len(probes) == 1
    _torn_down(probes[0])  # the firmware-only boot leaves nothing either
    skewed = dataclasses.replace(real.slots[0], bar0=real.slots[0].bar0 + 0x100000)
    topology._store(topology._cache_file(tmp_path, key), Topology((skewed, real.slots[1])))
    infos = []
    r = launch(image, devices=TWO, timeout=120, qemu=qemu_bin, kernel_iommu=True,
               probe_cache=tmp_path, on_ready=infos.append)
    # It stopped because the device refused, not at the timeout of a hung guest.
    assert r.server_died and not r.timed_out and not r.ok
    assert r.error == (f"the vuser server died (exit status 3) while the guest ran "
                       f"(QEMU does not reconnect to a restarted server): vuser-iommu: "
                       f"firmware placed BAR0 at {real.slots[0].bar0:#x} but the DMAR's DRHD base "
                       f"is {skewed.bar0:#x}")
    assert "kernel_iommu" not in r.console  # it never reached the tests
    _torn_down(infos[0])
    # The stale entry is gone: the next run probes again.
    assert not topology._cache_file(tmp_path, key).exists()


def _firmware_boot(qemu_bin, until, timeout, on_ready=None):
    """The probe's boot (as the launcher makes it), with an ``on_ready`` hook."""
    from vuser.qemu.launcher import _Run

    return _Run(None, TWO, timeout=timeout, memory_mib=512, accel="tcg", smp=1,
                extra_server_args=(), kernel_args=(), console_echo=None, console_input=None,
                qemu=qemu_bin, server_command=None, ready_timeout=20.0, on_ready=on_ready,
                qemu_extra=(), until=until).run()


def test_a_probe_that_cannot_boot_is_one_line(image, qemu_bin, tmp_path):
    started = []
    with pytest.raises(UserError) as e:
        launch(image, devices=TWO, timeout=60, qemu=qemu_bin, kernel_iommu=True,
               probe_cache=tmp_path, on_ready=started.append,
               qemu_extra=["-device", "no-such-device"])
    msg = str(e.value)
    assert msg.startswith("could not find where the firmware put the devices (a firmware-only "
                          "boot with QMP query-pci): QEMU failed: "), msg
    assert "no-such-device" in msg and "\n" not in msg
    assert not started and not list(tmp_path.glob("*.json"))


def test_a_kernel_without_intel_iommu_is_refused_before_anything_starts(image, qemu_bin,
                                                                         tmp_path):
    config = tmp_path / "config-6.1.0-noiommu"
    config.write_text("CONFIG_PCI=y\n# CONFIG_INTEL_IOMMU is not set\n")
    fake = dataclasses.replace(image, kernel_config=config, kernel_release="6.1.0-noiommu")
    started = []
    with pytest.raises(UserError) as e:
        launch(fake, devices=TWO, timeout=60, qemu=qemu_bin, kernel_iommu=True,
               probe_cache=tmp_path, on_ready=started.append)
    assert str(e.value) == ("a kernel-owned vIOMMU needs intel_iommu, but kernel 6.1.0-noiommu "
                            f"has no CONFIG_INTEL_IOMMU=y ({config})")
    assert not started and not list(tmp_path.glob("*.json"))  # no probe, no guest


@pytest.mark.parametrize("devices, have", [(["vuser-dma"], "none"),
                                           (["vuser-iommu", "vuser-iommu", "vuser-dma"], "2")])
def test_kernel_mode_needs_exactly_one_vuser_iommu(image, qemu_bin, tmp_path, devices, have):
    started = []
    with pytest.raises(UserError, match=f"needs exactly one vuser-iommu among the devices, "
                                        f"not {have} "):
        launch(image, devices=devices, timeout=60, qemu=qemu_bin, kernel_iommu=True,
               probe_cache=tmp_path, on_ready=started.append)
    assert not started and not list(tmp_path.glob("*.json"))


def test_a_label_that_is_not_the_bdf_is_refused(image, qemu_bin, tmp_path):
    started = []
    with pytest.raises(UserError, match=r"^vuser-dma has label=0x42, but a kernel-owned vIOMMU "
                                        r"needs its label to be its guest BDF 02:00.0, "
                                        r"label=0x200$"):
        launch(image, devices=["vuser-iommu", "vuser-dma,label=0x42"], timeout=60,
               qemu=qemu_bin, kernel_iommu=True, probe_cache=tmp_path, on_ready=started.append)
    assert not started
