"""Where the firmware puts each vfio-user device: bus, device, function and BAR0.

No QEMU option fixes a ``vfio-user-pci`` BAR address or the bus behind a root
port: SeaBIOS assigns both, deterministically for a given topology, and Linux
keeps what the firmware assigned. A kernel-owned vuser-iommu needs its BAR0
address (the DRHD register base) and every device's BDF (the source-id, and
the device's label) before the guest boots, so ``probe()`` boots the same
topology once without a kernel (SeaBIOS assigns the BARs, then finds nothing
to boot), asks QMP ``query-pci`` until each device's BAR0 is mapped (QEMU
reports a BAR only while memory decode is on; ``hw/pci/pci.c``), and stops.

The answer is cached under ``<cache>/probes/``, keyed by everything that
shapes it: the QEMU binary and version, the device types and options in
order (without ``label`` and ``drhd_base``, which the launcher sets from the
answer), memory, accelerator, CPUs and extra machine options. A stale entry
is caught at boot by vuser-iommu itself (its ``drhd_base`` check).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vuser.errors import UserError

log = logging.getLogger(__name__)

__all__ = ["Slot", "Topology", "parse_query_pci", "probe_key", "probe", "forget",
           "LAUNCHER_OPTIONS", "PROBE_TIMEOUT_S", "default_cache", "strip_options"]

PROBE_VERSION = 1                 # bump when what a probe records changes
PROBE_TIMEOUT_S = 60.0
POLL_S = 0.1
#: Device options the launcher derives from the probe: not part of its key.
LAUNCHER_OPTIONS = ("label", "drhd_base")
_UNMAPPED = (-1, (1 << 64) - 1)   # query-pci's address of a BAR that is not mapped


@dataclass(frozen=True)
class Slot:
    """One vfio-user device: the root port above it (device, function on bus
    0), its own bus/device/function, and its BAR0 address."""

    root_port: tuple[int, int]
    bus: int
    device: int
    function: int
    bar0: int

    @property
    def bdf(self) -> int:
        """``bus << 8 | device << 3 | function``: the requester id."""
        return self.bus << 8 | self.device << 3 | self.function

    @property
    def name(self) -> str:
        return f"{self.bus:02x}:{self.device:02x}.{self.function}"


@dataclass(frozen=True)
class Topology:
    """Every device's ``Slot``, in the order of the launcher's device list."""

    slots: tuple[Slot, ...]
    cached: bool = False
    probe_s: float = 0.0  # how long the probe took (0 when cached)


def default_cache() -> Path:
    """``<vuser cache>/probes``."""
    from vuser import debian

    return debian.cache_root() / "probes"


def _device_id(i: int) -> str:
    return f"vuser{i}"  # the qdev id vuser.qemu.cmdline gives device i


def parse_query_pci(answer: Any, count: int) -> Topology | None:
    """The ``Topology`` of devices ``vuser0..vuser{count-1}`` in a ``query-pci``
    answer, or None while any of them is missing or its BAR0 is not mapped."""
    found: dict[str, Slot] = {}

    def walk(devices: list[dict[str, Any]], parent: tuple[int, int] | None) -> None:
        for d in devices:
            here = (int(d["slot"]), int(d["function"]))
            qdev = d.get("qdev_id", "")
            bar0 = next((r["address"] for r in d.get("regions", ()) if r.get("bar") == 0), None)
            if qdev.startswith("vuser") and parent is not None and bar0 is not None \
                    and bar0 not in _UNMAPPED:
                found[qdev] = Slot(parent, int(d["bus"]), here[0], here[1], int(bar0))
            bridge = d.get("pci_bridge")
            if bridge and int(d["bus"]) == 0:
                walk(bridge.get("devices", []), here)

    try:
        for bus in answer:
            walk(bus.get("devices", []), None)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise UserError(f"QMP query-pci gave an answer this launcher cannot read: {e!r}") from None
    if any(_device_id(i) not in found for i in range(count)):
        return None
    return Topology(tuple(found[_device_id(i)] for i in range(count)))


def strip_options(device: str) -> str:
    """``TYPE[,k=v...]`` without the options the launcher derives from a probe."""
    dtype, *opts = device.split(",")
    return ",".join([dtype, *(o for o in opts if o.partition("=")[0] not in LAUNCHER_OPTIONS)])


def probe_key(qemu: Any, devices: Sequence[str], *, memory_mib: int, accel: str, smp: int,
              qemu_extra: Sequence[str]) -> str:
    """The cache key of a probe: everything that shapes the firmware's assignment."""
    try:
        st = Path(qemu.path).stat()  # a rebuilt binary of the same version probes again
        stamp = [st.st_size, st.st_mtime_ns]
    except OSError:
        stamp = None
    data = {"v": PROBE_VERSION, "qemu": [list(qemu.argv), str(qemu.version), stamp],
            "devices": [strip_options(d) for d in devices], "memory_mib": memory_mib,
            "accel": accel, "smp": smp, "extra": list(qemu_extra)}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _cache_file(cache: Path, key: str) -> Path:
    return cache / f"{key[:24]}.json"


def _valid(slot: Slot) -> bool:
    values = (*slot.root_port, slot.bus, slot.device, slot.function, slot.bar0)
    return (len(slot.root_port) == 2 and all(type(v) is int for v in values)
            and 0 <= slot.root_port[0] < 32 and 0 <= slot.root_port[1] < 8
            and 0 <= slot.bus < 256 and 0 <= slot.device < 32 and 0 <= slot.function < 8
            and 0 < slot.bar0 < 1 << 64)


def _load(path: Path, count: int) -> Topology | None:
    """A cached answer, or None when there is none or it is damaged."""
    try:
        raw = json.loads(path.read_text())
        slots = tuple(Slot(tuple(s["root_port"]), s["bus"], s["device"], s["function"], s["bar0"])
                      for s in raw["slots"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if len(slots) != count or not all(_valid(s) for s in slots):
        return None
    return Topology(slots, cached=True)


def _store(path: Path, topo: Topology) -> None:
    """Cache an answer; a cache that cannot be written only costs the next probe."""
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"slots": [asdict(s) for s in topo.slots],
                                   "probe_s": round(topo.probe_s, 3)}) + "\n")
        tmp.replace(path)
    except OSError as e:
        log.warning("cannot cache the firmware probe in %s: %s", path.parent, e.strerror)


def forget(cache: Path, key: str) -> None:
    """Drop a cached probe (after the device said it is wrong)."""
    try:
        _cache_file(cache, key).unlink()
    except FileNotFoundError:
        pass


def probe(boot: Callable[[Callable[[Path], bool], float], Any], count: int, *, key: str,
          cache: Path, timeout: float = PROBE_TIMEOUT_S) -> Topology:
    """The firmware's assignment for ``count`` devices, from the cache or a
    firmware-only boot.

    ``boot(until, timeout)`` runs the topology without a kernel and calls
    ``until(qmp_socket)`` every ``POLL_S`` until it returns True; it returns
    the launcher's ``GuestResult``. ``UserError`` when the firmware does not
    assign every BAR0 within ``timeout``.
    """
    path = _cache_file(cache, key)
    topo = _load(path, count)
    if topo is not None:
        log.debug("probe: cached %s", path)
        return topo
    from vuser.qemu import qmp

    box: dict[str, Topology] = {}
    last = [0.0]

    def until(qmp_path: Path) -> bool:
        now = time.monotonic()
        if now - last[0] < POLL_S:
            return False
        last[0] = now
        try:
            answer = qmp.call(qmp_path, "query-pci", timeout=2.0)[0]
        except qmp.QmpError as e:
            log.debug("probe: %s", e)
            return False
        topo = parse_query_pci(answer, count)
        if topo is not None:
            box["topology"] = topo
        return topo is not None

    t0 = time.monotonic()
    result = boot(until, timeout)
    took = time.monotonic() - t0
    if "topology" not in box:
        why = result.error or "QEMU stopped"
        raise UserError(f"could not find where the firmware put the devices (a firmware-only "
                        f"boot with QMP query-pci): {why}")
    topo = Topology(box["topology"].slots, cached=False, probe_s=took)
    _store(path, topo)
    return topo
