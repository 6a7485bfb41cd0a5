"""A kernel-owned vuser-iommu: what the launcher adds to a guest so that the
guest kernel's own ``intel_iommu`` driver runs the unit (README, "kernel-owned
vIOMMU").

Given where the firmware puts each device (``vuser.qemu.topology``):

- each device gets ``label=<its BDF>``, the source-id the kernel programs
  (a label that says otherwise is refused);
- vuser-iommu gets ``drhd_base=<its BAR0>`` (it stops with one error line if
  the firmware programs another address) and ``cm=0`` unless given;
- the DMAR (``vuser.qemu.dmar``) scopes every device but the unit itself;
- the kernel command line gets ``intel_iommu=on,sm_on intremap=off
  vuser.iommu=kernel``. ``intremap=off`` keeps the kernel from mapping the
  register range before PCI enumeration, which would take the BAR's place;
  ``vuser.iommu=kernel`` tells the guest's ``/init`` to set Bus Master Enable
  on the unit's function, so that QEMU carries out its interrupt messages.

Exactly one vuser-iommu is needed, and a kernel with ``CONFIG_INTEL_IOMMU``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from vuser.errors import UserError
from vuser.qemu import dmar
from vuser.qemu.topology import Topology

__all__ = ["IOMMU_TYPE", "KERNEL_ARGS", "KernelIommuPlan", "iommu_index", "check_kernel_config",
           "plan"]

IOMMU_TYPE = "vuser-iommu"
KERNEL_ARGS = ("intel_iommu=on,sm_on", "intremap=off", "vuser.iommu=kernel")
#: Kernel options this mode needs (=y), and ones whose absence only limits it.
REQUIRED_CONFIG = ("INTEL_IOMMU",)
INFORMATIONAL_CONFIG = {"INTEL_IOMMU_SVM": "SVA (shared virtual addressing) will not work"}


@dataclass(frozen=True)
class KernelIommuPlan:
    """The devices as served (with labels and unit options), the DMAR bytes,
    and the kernel command line words."""

    devices: tuple[str, ...]
    dmar: bytes
    kernel_args: tuple[str, ...]
    register_base: int


def _split(device: str) -> tuple[str, list[tuple[str, str]]]:
    dtype, *opts = device.split(",")
    return dtype, [(k, v) for k, _, v in (o.partition("=") for o in opts)]


def iommu_index(devices: Sequence[str]) -> int:
    """The position of the one vuser-iommu; ``UserError`` for none or several."""
    where = [i for i, d in enumerate(devices) if _split(d)[0] == IOMMU_TYPE]
    if len(where) != 1:
        have = "none" if not where else f"{len(where)}"
        raise UserError(f"a kernel-owned vIOMMU needs exactly one {IOMMU_TYPE} among the "
                        f"devices, not {have} ({', '.join(devices) or 'no devices'})")
    return where[0]


def check_kernel_config(config: Path | None, release: str = "") -> list[str]:
    """Refuse a kernel without ``CONFIG_INTEL_IOMMU=y`` (``UserError``, one
    line); return notes for the informational options it lacks. A kernel
    whose config is unknown (None) is not checked."""
    if config is None:
        return []
    try:
        text = Path(config).read_text(errors="replace")
    except OSError as e:
        raise UserError(f"cannot read the guest kernel's config {config}: {e.strerror}") from None
    opts = dict(re.findall(r"^CONFIG_(\w+)=(.*)$", text, re.MULTILINE))
    name = f"kernel {release}" if release else f"the kernel of {config}"
    missing = [f"CONFIG_{k}" for k in REQUIRED_CONFIG if opts.get(k) != "y"]
    if missing:
        raise UserError(f"a kernel-owned vIOMMU needs intel_iommu, but {name} has no "
                        f"{', '.join(missing)}=y ({config})")
    return [f"{name} has no CONFIG_{k}=y: {why}"
            for k, why in INFORMATIONAL_CONFIG.items() if opts.get(k) != "y"]


def _with_option(opts: list[tuple[str, str]], key: str, value: str) -> list[tuple[str, str]]:
    return [*(kv for kv in opts if kv[0] != key), (key, value)]


def plan(devices: Sequence[str], topology: Topology) -> KernelIommuPlan:
    """Labels, unit options, DMAR and kernel arguments for ``devices`` as the
    firmware placed them. ``UserError`` for a label that is not the BDF."""
    unit = iommu_index(devices)
    if len(topology.slots) != len(devices):
        raise UserError(f"the probe found {len(topology.slots)} devices, not {len(devices)}")
    base = topology.slots[unit].bar0
    served, endpoints = [], []
    for i, (device, slot) in enumerate(zip(devices, topology.slots)):
        dtype, opts = _split(device)
        given = dict(opts).get("label")
        if given is not None:
            try:
                ok = int(given, 0) == slot.bdf
            except ValueError:
                ok = False
            if not ok:
                raise UserError(f"{dtype} has label={given}, but a kernel-owned vIOMMU needs its "
                                f"label to be its guest BDF {slot.name}, label={slot.bdf:#x}")
        opts = _with_option(opts, "label", f"{slot.bdf:#x}")
        if i == unit:
            opts = _with_option(opts, "drhd_base", f"{base:#x}")
            if "cm" not in dict(opts):
                opts.append(("cm", "0"))
        else:
            endpoints.append([slot.root_port, (slot.device, slot.function)])
        served.append(",".join([dtype, *(f"{k}={v}" for k, v in opts)]))
    if not endpoints:
        raise UserError(f"a kernel-owned vIOMMU needs a device behind it besides {IOMMU_TYPE}")
    try:
        table = dmar.build_dmar(base, endpoints)
    except ValueError as e:
        raise UserError(f"cannot build the DMAR: {e}") from None
    return KernelIommuPlan(tuple(served), table, KERNEL_ARGS, base)
