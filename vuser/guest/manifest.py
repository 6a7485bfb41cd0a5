"""The guest test manifest: which devices (and how long) each guest test program needs.

``tests/guest/guest_tests.toml`` holds one table per program of
``guest-tests/<name>.c``::

    [enumerate]
    devices = ["sample,label=0x21", "vuser-dma,label=0x22"]
    timeout = 300       # seconds the guest may run
    alone = false       # true: never share a guest with other programs
    iommu = "user"      # "kernel": the guest kernel owns the vuser-iommu
    append = []         # extra kernel command line words, e.g. ["iommu.strict=1"]
    demo = true         # `vuser run` runs it by default (in manifest order)
    kernel = "debian:sid"   # the guest kernel (default: the image recipe's)
    program = "enumerate"   # the program a table runs (default: its own name)
    opt_in = false      # true: only when asked for (`make soak`); not collected by pytest,
                        # not in `vuser run --all`

``devices`` are ``vuser serve --device`` specs without the socket path
(``TYPE[,key=value...]``), each plugged in behind its own pcie-root-port.
``program`` lets one program run in several tables, e.g. once more on
another kernel (``[kernel_sva_sid]`` with ``program = "kernel_sva"`` and
``kernel = "debian:sid"``).
Programs share one guest (a *boot group*) when their devices, ``iommu``,
``append`` and ``kernel`` are all equal; both the pytest plugin
(``vuser.guest.pytest_plugin``) and ``vuser run`` boot once per group.
With ``iommu = "kernel"`` the launcher gives the guest kernel the vIOMMU
(``vuser.qemu.launcher.launch(kernel_iommu=True)``).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from vuser.errors import UserError
from vuser.guest import paths

__all__ = ["MANIFEST_PATH", "DEFAULT_TIMEOUT_S", "IOMMU_MODES", "ProgramSpec", "BootPlan",
           "load_manifest", "boot_groups", "demo_programs"]

MANIFEST_PATH = paths.SOURCE_ROOT / "tests" / "guest" / "guest_tests.toml"
DEFAULT_TIMEOUT_S = 300.0
IOMMU_MODES = ("user", "kernel")
_KEYS = {"devices", "timeout", "alone", "iommu", "append", "demo", "kernel", "program", "opt_in"}


@dataclass(frozen=True)
class ProgramSpec:
    name: str
    devices: tuple[str, ...]
    timeout: float
    alone: bool = False
    iommu: str = "user"
    append: tuple[str, ...] = ()
    demo: bool = False
    kernel: str | None = None  # "debian:<suite>"; None: the image recipe's
    program: str = ""  # guest-tests/<program>.c; "": the table's name
    opt_in: bool = False  # run only when named (not by pytest, not by --all)

    @property
    def kernel_iommu(self) -> bool:
        return self.iommu == "kernel"

    @property
    def program_name(self) -> str:
        return self.program or self.name

    def boot_key(self) -> tuple:
        """Programs with equal keys can share a guest."""
        if self.alone:
            return (f"alone:{self.name}",)
        key = (self.devices, self.iommu, self.append)
        return key if self.kernel is None else (*key, self.kernel)


@dataclass(frozen=True)
class BootPlan:
    """One guest: its devices, the programs it runs in order, its timeout,
    its vIOMMU mode and extra kernel command line words."""

    devices: tuple[str, ...]
    programs: tuple[str, ...]
    timeout: float
    iommu: str = "user"
    append: tuple[str, ...] = ()
    kernel: str | None = None

    @property
    def kernel_iommu(self) -> bool:
        return self.iommu == "kernel"


def load_manifest(path: Path = MANIFEST_PATH) -> dict[str, ProgramSpec]:
    """Parse the manifest; ``UserError`` naming the bad entry."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise UserError(f"{path}: {e}") from None
    specs = {}
    for name, entry in data.items():
        if not isinstance(entry, dict):
            raise UserError(f"{path}: [{name}] must be a table")
        unknown = set(entry) - _KEYS
        if unknown:
            raise UserError(f"{path}: [{name}] has unknown keys {sorted(unknown)}")
        devices = entry.get("devices", [])
        timeout = entry.get("timeout", DEFAULT_TIMEOUT_S)
        alone = entry.get("alone", False)
        iommu = entry.get("iommu", "user")
        append = entry.get("append", [])
        demo = entry.get("demo", False)
        kernel = entry.get("kernel")
        program = entry.get("program", "")
        opt_in = entry.get("opt_in", False)
        if not isinstance(devices, list) or not all(isinstance(d, str) and d for d in devices):
            raise UserError(f"{path}: [{name}] devices must be a list of device types")
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0:
            raise UserError(f"{path}: [{name}] timeout must be a positive number")
        if not isinstance(alone, bool):
            raise UserError(f"{path}: [{name}] alone must be true or false")
        if iommu not in IOMMU_MODES:
            raise UserError(f"{path}: [{name}] iommu must be \"user\" or \"kernel\", not {iommu!r}")
        if not isinstance(append, list) or not all(isinstance(w, str) and w and not w.isspace()
                                                   and w.split() == [w] for w in append):
            raise UserError(f"{path}: [{name}] append must be a list of kernel command line "
                            "words (no spaces)")
        if any(w.startswith("vuser.") for w in append):
            raise UserError(f"{path}: [{name}] append must not set vuser.* (the launcher does)")
        if not isinstance(demo, bool):
            raise UserError(f"{path}: [{name}] demo must be true or false")
        if not isinstance(opt_in, bool):
            raise UserError(f"{path}: [{name}] opt_in must be true or false")
        if kernel is not None:
            from vuser.guest.image import kernel_suite

            try:
                kernel_suite(kernel)
            except UserError as e:
                raise UserError(f"{path}: [{name}] {e}") from None
        if not isinstance(program, str) or (program and not program.isidentifier()):
            raise UserError(f"{path}: [{name}] program must be the name of a guest-tests program")
        specs[name] = ProgramSpec(name, tuple(devices), float(timeout), alone, iommu,
                                  tuple(append), demo, kernel, program, opt_in)
    return specs


def demo_programs(specs: dict[str, ProgramSpec]) -> list[str]:
    """The programs marked ``demo = true``, in manifest order (``vuser run``'s default)."""
    return [n for n, s in specs.items() if s.demo]


def boot_groups(specs: dict[str, ProgramSpec], names: list[str]) -> list[BootPlan]:
    """The guests that run ``names``: one per (devices, iommu, append, kernel)
    (``alone`` ones by themselves), in the order the names first appear; a
    plan's ``programs`` are the programs the tables run.
    ``UserError`` for a name the manifest does not list."""
    missing = [n for n in names if n not in specs]
    if missing:
        raise UserError(f"{MANIFEST_PATH.name} has no [{missing[0]}]: which devices does its "
                        "guest need? (or give them with --device)")
    groups: dict[tuple, list[str]] = {}
    for n in dict.fromkeys(names):
        groups.setdefault(specs[n].boot_key(), []).append(n)
    plans = []
    for members in groups.values():
        first = specs[members[0]]
        plans.append(BootPlan(first.devices, tuple(specs[m].program_name for m in members),
                              sum(specs[m].timeout for m in members), first.iommu, first.append,
                              first.kernel))
    return plans
