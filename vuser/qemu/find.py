"""Finding a QEMU that has the ``vfio-user-pci`` client (QEMU >= 10.1).

Order of preference (issue 3, part 1):
1. ``$VUSER_QEMU``: used as given; if it lacks ``vfio-user-pci`` that is an error,
   not a reason to look elsewhere.
2. A system ``qemu-system-x86_64`` whose ``-device help`` lists ``vfio-user-pci``.
3. The private runtime provisioned from Debian (``vuser.qemu.provision``), unless
   provisioning is disabled (``$VUSER_NO_PROVISION=1`` or ``provision=False``).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from vuser.errors import UserError

log = logging.getLogger(__name__)

QEMU_ENV = "VUSER_QEMU"
NO_PROVISION_ENV = "VUSER_NO_PROVISION"
MIN_VERSION = (10, 1)
PROBE_TIMEOUT = 20.0

Source = Literal["env", "system", "provisioned"]


@dataclass(frozen=True)
class QemuBinary:
    """A usable QEMU: the argv prefix that runs it, and where it came from.

    ``argv`` may be longer than the binary (the provisioned runtime runs through
    its own loader with ``-L`` firmware folders); append QEMU options to it.
    """

    argv: tuple[str, ...]
    version: str
    source: Source
    path: Path

    @property
    def version_tuple(self) -> tuple[int, ...]:
        return parse_version(self.version)


def parse_version(text: str) -> tuple[int, ...]:
    """``(11, 1, 3)`` from ``QEMU emulator version 11.1.3 (Debian ...)`` or ``11.1.3``."""
    m = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    if not m:
        return ()
    return tuple(int(g) for g in m.groups() if g is not None)


def _run(argv: Sequence[str], what: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=PROBE_TIMEOUT,
                              stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise UserError(f"{what}: {argv[0]} not found") from None
    except PermissionError:
        raise UserError(f"{what}: {argv[0]} is not executable") from None
    except OSError as e:
        raise UserError(f"{what}: cannot run {argv[0]}: {e.strerror}") from None
    except subprocess.TimeoutExpired:
        raise UserError(f"{what}: {argv[0]} did not answer within {PROBE_TIMEOUT:.0f} s") from None


def probe(argv: Sequence[str], source: Source, path: Path) -> QemuBinary:
    """Check that ``argv`` runs a QEMU >= 10.1 whose ``vfio-user-pci`` answers ``,help``.

    Raises ``UserError`` with one line saying what is missing.
    """
    name = str(path)
    p = _run([*argv, "--version"], name)
    first = (p.stdout.strip().splitlines() or [""])[0]
    version = parse_version(first)
    if p.returncode != 0 or not version:
        err = (p.stderr.strip().splitlines() or [first or "no output"])[-1]
        raise UserError(f"{name} is not a working QEMU (--version: {err})")
    vtext = ".".join(map(str, version))
    p = _run([*argv, "-device", "help"], name)
    if "vfio-user-pci" not in p.stdout + p.stderr:
        raise UserError(f"{name} (QEMU {vtext}) has no vfio-user-pci device; "
                        f"QEMU >= {MIN_VERSION[0]}.{MIN_VERSION[1]} with vfio-user is needed")
    p = _run([*argv, "-device", "vfio-user-pci,help"], name)
    if p.returncode != 0 or "socket" not in p.stdout:
        err = (p.stderr.strip().splitlines() or ["no 'socket' property"])[-1]
        raise UserError(f"{name} (QEMU {vtext}): -device vfio-user-pci,help failed: {err}")
    if version[:2] < MIN_VERSION:
        raise UserError(f"{name} is QEMU {vtext}; vfio-user-pci needs >= "
                        f"{MIN_VERSION[0]}.{MIN_VERSION[1]}")
    return QemuBinary(tuple(argv), vtext, source, path)


def provisioning_disabled() -> bool:
    return os.environ.get(NO_PROVISION_ENV, "").strip() not in ("", "0", "no", "false")


def find_qemu(*, provision: bool = True, show_progress: bool = True,
              cache: Path | None = None) -> QemuBinary:
    """The QEMU to use, provisioning the private runtime if nothing else fits."""
    env = os.environ.get(QEMU_ENV)
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise UserError(f"${QEMU_ENV}={env}: no such file")
        return probe([str(path)], "env", path)

    reasons = []
    system = shutil.which("qemu-system-x86_64")
    if system:
        try:
            return probe([system], "system", Path(system))
        except UserError as e:
            log.debug("system QEMU unusable: %s", e)
            reasons.append(str(e))
    else:
        reasons.append("no qemu-system-x86_64 in PATH")

    from vuser.qemu.provision import provision_qemu, provisioned_qemu
    ready = provisioned_qemu(cache=cache)
    if ready is not None:
        return ready
    if not provision or provisioning_disabled():
        why = f"${NO_PROVISION_ENV} is set" if provisioning_disabled() else "provisioning disabled"
        raise UserError(f"no QEMU with vfio-user-pci ({reasons[0]}) and {why}; "
                        f"set ${QEMU_ENV} or allow provisioning")
    return provision_qemu(cache=cache, show_progress=show_progress)


def installed(cache: Path | None = None) -> QemuBinary | None:
    """The QEMU ``find_qemu`` would use without provisioning; None if it would have to.

    For ``vuser doctor``. Raises ``UserError`` if ``$VUSER_QEMU`` is set but unusable.
    """
    if os.environ.get(QEMU_ENV):
        return find_qemu(provision=False, cache=cache)
    try:
        return find_qemu(provision=False, cache=cache)
    except UserError:
        return None
