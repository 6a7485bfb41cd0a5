"""A Debian suite's own kernel-module toolchain, unpacked and run through its own loader.

When the host has no ``gcc-N`` of the version that built the guest kernel
(sid's 7.x kernels are built with a newer gcc than any the host has), modules
are built with the suite's own toolchain: ``linux-headers-<release>`` and its
dependency closure (``gcc-N-for-host``, binutils, ``linux-kbuild-*``, pahole
and their libraries), unpacked by ``vuser.debian`` into a private root.

Those programs need the suite's newer libc, so each dynamically linked
executable in the root is moved to ``<name>.elf`` and replaced by a
two-line shell script that runs it through the root's own loader::

    exec <root>/usr/lib64/ld-linux-x86-64.so.2 --library-path <root>/usr/lib/x86_64-linux-gnu \\
        --argv0 "$0" <name>.elf "$@"

``--argv0`` keeps the name the program was called by: gcc finds ``cc1``
relative to it, and kbuild's ``modpost``/``objtool`` dispatchers pick their
``.real-*`` variant from it (the variants are wrapped too, so ``exec`` of
them works). ``make`` then runs with ``<root>/usr/bin`` first in ``PATH``,
where the ``x86_64-linux-gnu-gcc-N`` named by the headers' ``.kernelvariables``
lives. The rewritten files are recorded in the tree's manifest, so the tree
stays "intact" for ``vuser.debian``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from vuser import debian
from vuser.errors import UserError

__all__ = ["LOADERS", "LIBDIRS", "Toolchain", "fix_headers_makefile", "prepare", "wrap_executables"]

LOADERS = ("usr/lib64/ld-linux-x86-64.so.2", "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
           "lib64/ld-linux-x86-64.so.2")
LIBDIRS = ("usr/lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu")
ELF_SUFFIX = ".elf"
WRAPPED_DIRS = ("usr/bin", "usr/libexec", "usr/lib/linux-kbuild-*")


@dataclass(frozen=True)
class Toolchain:
    """The unpacked headers (``make -C arch``) and the ``PATH`` entry of their compiler."""

    root: Path
    arch: Path
    bin: Path


def _is_dynamic_program(path: Path) -> bool:
    """An ELF file with a program interpreter (shared libraries are left alone)."""
    if ".so" in path.name or path.name.endswith(ELF_SUFFIX):
        return False
    try:
        with path.open("rb") as f:
            if f.read(4) != b"\x7fELF":
                return False
            f.seek(0)
            return any(seg.header.p_type == "PT_INTERP" for seg in ELFFile(f).iter_segments())
    except (OSError, ELFError):
        return False


def _loader(root: Path) -> tuple[Path, str]:
    loader = next((root / p for p in LOADERS if (root / p).exists()), None)
    if loader is None:
        raise UserError(f"{root}: no ld-linux-x86-64.so.2 (libc6 missing from the closure?)")
    return loader, ":".join(str(root / d) for d in LIBDIRS if (root / d).is_dir())


def wrap_executables(tree: debian.Tree) -> int:
    """Wrap every dynamically linked program under ``WRAPPED_DIRS`` (module doc);
    record the change in the tree's manifest. Returns how many were wrapped now
    (0 when the tree was wrapped before)."""
    root = tree.root
    loader, libpath = _loader(root)
    count = 0
    for pattern in WRAPPED_DIRS:
        for top in sorted(root.glob(pattern)):
            for path in sorted(top.rglob("*")):
                if path.is_symlink() or not path.is_file() or not os.access(path, os.X_OK):
                    continue
                if not _is_dynamic_program(path):
                    continue
                real = path.with_name(path.name + ELF_SUFFIX)
                path.rename(real)
                path.write_text(f"#!/bin/sh\nexec {loader} --library-path {libpath} "
                                f"--argv0 \"$0\" {real} \"$@\"\n")
                path.chmod(0o755)
                for p in (path, real):
                    tree.files[str(p.relative_to(root))] = p.stat().st_size
                count += 1
    if count:
        tree.write_manifest()
    return count


def fix_headers_makefile(tree: debian.Tree, arch: Path) -> None:
    """Point the arch headers' ``Makefile`` (``include /usr/src/...-common/Makefile``,
    and in 7.x also ``KBUILD_OUTPUT=/usr/src/...``) at the unpacked tree."""
    makefile = arch / "Makefile"
    text = makefile.read_text()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines or not all(re.fullmatch(r"(include |KBUILD_OUTPUT\s*=\s*)/\S+", ln) for ln in lines):
        raise UserError(f"{makefile}: expected Debian's include (and KBUILD_OUTPUT) lines, "
                        f"found {text[:120]!r}")
    fixed = re.sub(r"(?<![\w/.+-])/usr/src/", f"{tree.root.resolve()}/usr/src/", text)
    if fixed != text:
        makefile.write_text(fixed)
        tree.files[str(makefile.relative_to(tree.root))] = makefile.stat().st_size
        tree.write_manifest()  # the fix is part of the tree now: it stays "intact"


def prepare(suite: str, release: str, version: str, cache: Path,
            show_progress: bool = False) -> Toolchain:
    """Unpack ``linux-headers-<release>`` of ``suite`` with its closure into
    ``<cache>/toolchain-<suite>-<release>``, wrapped and fixed (module doc)."""
    arch_pkg = f"linux-headers-{release}"
    tree = debian.fetch(suite, [arch_pkg], cache / f"toolchain-{suite}-{release}",
                        show_progress=show_progress)
    tree.require_version(arch_pkg, version)
    arch = tree.root / "usr" / "src" / arch_pkg
    if not (arch / "Makefile").is_file():
        raise UserError(f"{tree.root}: unexpected header layout (no {arch / 'Makefile'})")
    wrap_executables(tree)
    fix_headers_makefile(tree, arch)
    return Toolchain(root=tree.root, arch=arch, bin=tree.root / "usr" / "bin")
