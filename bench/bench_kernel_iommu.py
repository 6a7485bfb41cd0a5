"""Kernel-owned vIOMMU: what the firmware probe costs, and each program's guest run.

- ``probe``: a firmware-only boot of the topology (server start, QEMU,
  SeaBIOS assigning BARs, QMP ``query-pci`` until every BAR0 is mapped),
  fresh each time (best and median of ``--n``), then the same from the
  probe cache;
- ``guests``: each kernel-owned table of ``tests/guest/guest_tests.toml`` in
  a guest of its own (``launch(kernel_iommu=True)``, cached probe, the table's
  kernel): the guest run from server start to isa-debug-exit.

Run: ``.venv/bin/python bench/bench_kernel_iommu.py [--n N] [--no-guests]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vuser.guest.image import build_image  # noqa: E402
from vuser.guest.manifest import load_manifest  # noqa: E402
from vuser.qemu import topology  # noqa: E402
from vuser.qemu.find import find_qemu  # noqa: E402
from vuser.qemu.launcher import _Run, launch  # noqa: E402

TOPOLOGIES = (["vuser-iommu", "vuser-dma"], ["vuser-dma", "sample", "vuser-iommu", "vuser-dma"])


def probe_once(qemu, devices: list[str], cache: Path) -> tuple[float, topology.Topology]:
    def boot(until, timeout):
        return _Run(None, devices, timeout=timeout, memory_mib=512, accel="tcg", smp=1,
                    extra_server_args=(), kernel_args=(), console_echo=None, console_input=None,
                    qemu=qemu, server_command=None, ready_timeout=20.0, on_ready=None,
                    qemu_extra=(), until=until).run()

    t = time.perf_counter()
    topo = topology.probe(boot, len(devices), key="bench" * 13, cache=cache)
    return time.perf_counter() - t, topo


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=5, help="fresh probes per topology")
    ap.add_argument("--no-guests", action="store_true", help="only the probe")
    args = ap.parse_args()
    qemu = find_qemu(show_progress=False)
    print(f"QEMU {qemu.version}, TCG")
    for devices in TOPOLOGIES:
        fresh = []
        for _ in range(args.n):
            with tempfile.TemporaryDirectory() as d:
                took, topo = probe_once(qemu, devices, Path(d))
                fresh.append(took)
                cached, again = probe_once(qemu, devices, Path(d))
                assert again.cached and again.slots == topo.slots
        unit = topo.slots[devices.index("vuser-iommu")]
        print(f"probe {', '.join(devices)}: BAR0 {unit.bar0:#x}; fresh best "
              f"{min(fresh):.2f} s, median {statistics.median(fresh):.2f} s; cached "
              f"{cached * 1e3:.2f} ms")
    if args.no_guests:
        return 0
    specs = load_manifest()
    for name, spec in specs.items():
        if not spec.kernel_iommu:
            continue
        image = build_image(tests=[spec.program_name], progress=False, kernel=spec.kernel)
        r = launch(image, devices=list(spec.devices), timeout=spec.timeout, qemu=qemu,
                   kernel_iommu=True, kernel_args=spec.append)
        state = "ok" if r.ok else f"FAILED: {r.error or f'exit status {r.exit_status}'}"
        extra = f" ({' '.join(spec.append)})" if spec.append else ""
        print(f"guest {name}{extra}, kernel {image.kernel_release}: {r.duration_s:.1f} s, {state}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
