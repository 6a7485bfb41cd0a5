"""The private QEMU runtime: Debian's ``qemu-system-x86`` from the suite that has QEMU >= 10.1.

The package and its dependency closure (no recommends) are unpacked by
``vuser.debian`` into ``<cache>/qemu/<suite>-root``. The binary is run through
the suite's own dynamic loader, so the host's older libc never meets the newer
libraries::

    <root>/usr/lib64/ld-linux-x86-64.so.2 --library-path <root>/usr/lib/x86_64-linux-gnu
        <root>/usr/bin/qemu-system-x86_64 -L <root>/usr/share/qemu -L <root>/usr/share/seabios

Firmware: q35 with SeaBIOS needs ``bios-256k.bin`` (package seabios) and the
option ROMs of ``qemu-system-data`` (``linuxboot_dma.bin``, ``kvmvapic.bin``).
The launcher runs with ``-nodefaults``, so no NIC and no iPXE ROM: ``ipxe-qemu``
is left out.
"""

from __future__ import annotations

import logging
from pathlib import Path

from vuser import debian
from vuser.errors import UserError
from vuser.qemu.find import QemuBinary, probe

log = logging.getLogger(__name__)

SUITE = "sid"
PACKAGES = ("qemu-system-x86",)
EXCLUDE = ("ipxe-qemu",)
LOADERS = ("usr/lib64/ld-linux-x86-64.so.2", "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
           "lib64/ld-linux-x86-64.so.2")
LIBDIRS = ("usr/lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu")
FIRMWARE_DIRS = ("usr/share/qemu", "usr/share/seabios")


def runtime_root(cache: Path | None = None) -> Path:
    return (cache or debian.cache_root()) / "qemu" / f"{SUITE}-root"


def runtime_argv(root: Path) -> tuple[str, ...]:
    """The argv prefix that runs the unpacked QEMU through the suite's loader."""
    loader = next((root / p for p in LOADERS if (root / p).exists()), None)
    if loader is None:
        raise UserError(f"{root}: no ld-linux-x86-64.so.2 in the unpacked libc6")
    qemu = root / "usr/bin/qemu-system-x86_64"
    if not qemu.is_file():
        raise UserError(f"{root}: usr/bin/qemu-system-x86_64 missing")
    libpath = ":".join(str(root / d) for d in LIBDIRS if (root / d).is_dir())
    argv = [str(loader), "--library-path", libpath, str(qemu)]
    for fw in FIRMWARE_DIRS:
        if (root / fw).is_dir():
            argv += ["-L", str(root / fw)]
    return tuple(argv)


def provisioned_qemu(cache: Path | None = None) -> QemuBinary | None:
    """The already provisioned runtime if it is intact and works, else None. No network."""
    root = runtime_root(cache)
    tree = debian.Tree.load(root)
    if tree is None or tree.problems():
        return None
    try:
        return probe(runtime_argv(root), "provisioned", root / "usr/bin/qemu-system-x86_64")
    except UserError:
        return None


def provision_qemu(cache: Path | None = None, *, show_progress: bool = True) -> QemuBinary:
    """Unpack (or reuse) the runtime and check it with ``-device vfio-user-pci,help``.

    Idempotent: an intact runtime costs three quick QEMU probes. A runtime that
    passes the file check but fails the probe (garbled content) is unpacked once
    more from the cached packages, without network access.
    """
    root = runtime_root(cache)
    for attempt in (1, 2):
        tree = debian.fetch(SUITE, PACKAGES, root, cache=cache, exclude=EXCLUDE,
                            show_progress=show_progress, reextract=attempt == 2)
        try:
            return probe(runtime_argv(tree.root), "provisioned",
                         tree.root / "usr/bin/qemu-system-x86_64")
        except UserError as e:
            if attempt == 2:
                raise UserError(f"provisioned QEMU in {root} does not work: {e}") from None
            log.warning("provisioned QEMU broken (%s); unpacking again", e)
    raise AssertionError("unreachable")
