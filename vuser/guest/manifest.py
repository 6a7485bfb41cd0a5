"""The guest test manifest: which devices (and how long) each guest test program needs.

``tests/guest/guest_tests.toml`` holds one table per program of
``guest-tests/<name>.c``::

    [enumerate]
    devices = ["sample,label=0x21", "vuser-dma,label=0x22"]
    timeout = 300       # seconds the guest may run
    alone = false       # true: never share a guest with other programs

``devices`` are ``vuser serve --device`` specs without the socket path
(``TYPE[,key=value...]``), each plugged in behind its own pcie-root-port.
Programs with the same device list can share one guest (a *boot group*);
both the pytest plugin (``vuser.guest.pytest_plugin``) and ``vuser run``
boot once per group.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from vuser.errors import UserError
from vuser.guest import paths

__all__ = ["MANIFEST_PATH", "DEFAULT_TIMEOUT_S", "ProgramSpec", "BootPlan", "load_manifest",
           "boot_groups"]

MANIFEST_PATH = paths.SOURCE_ROOT / "tests" / "guest" / "guest_tests.toml"
DEFAULT_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class ProgramSpec:
    name: str
    devices: tuple[str, ...]
    timeout: float
    alone: bool = False


@dataclass(frozen=True)
class BootPlan:
    """One guest: its devices, the programs it runs in order, and its timeout."""

    devices: tuple[str, ...]
    programs: tuple[str, ...]
    timeout: float


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
        unknown = set(entry) - {"devices", "timeout", "alone"}
        if unknown:
            raise UserError(f"{path}: [{name}] has unknown keys {sorted(unknown)}")
        devices = entry.get("devices", [])
        timeout = entry.get("timeout", DEFAULT_TIMEOUT_S)
        alone = entry.get("alone", False)
        if not isinstance(devices, list) or not all(isinstance(d, str) and d for d in devices):
            raise UserError(f"{path}: [{name}] devices must be a list of device types")
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0:
            raise UserError(f"{path}: [{name}] timeout must be a positive number")
        if not isinstance(alone, bool):
            raise UserError(f"{path}: [{name}] alone must be true or false")
        specs[name] = ProgramSpec(name, tuple(devices), float(timeout), alone)
    return specs


def boot_groups(specs: dict[str, ProgramSpec], names: list[str]) -> list[BootPlan]:
    """The guests that run ``names``: one per device list (``alone`` ones by
    themselves), in the order the names first appear. ``UserError`` for a
    name the manifest does not list."""
    missing = [n for n in names if n not in specs]
    if missing:
        raise UserError(f"{MANIFEST_PATH.name} has no [{missing[0]}]: which devices does its "
                        "guest need? (or give them with --device)")
    groups: dict[tuple[str, ...], list[str]] = {}
    for n in dict.fromkeys(names):
        spec = specs[n]
        key = (f"alone:{n}",) if spec.alone else spec.devices
        groups.setdefault(key, []).append(n)
    return [BootPlan(specs[members[0]].devices, tuple(members),
                     sum(specs[m].timeout for m in members)) for members in groups.values()]
