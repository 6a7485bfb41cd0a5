"""Helpers for the guest tests (a plain module: tests/guest is no package)."""

from __future__ import annotations

import gzip
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class Entry:
    name: str
    ino: int
    mode: int
    nlink: int
    rdev: tuple[int, int]
    data: bytes

    @property
    def kind(self) -> str:
        return {stat.S_IFDIR: "dir", stat.S_IFREG: "file", stat.S_IFLNK: "symlink",
                stat.S_IFCHR: "char", stat.S_IFBLK: "block"}[stat.S_IFMT(self.mode)]


def read_newc(raw: bytes) -> list[Entry]:
    """A tiny independent newc reader (buffer-format.rst), ending at TRAILER!!!."""
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    out, off = [], 0
    while True:
        assert raw[off:off + 6] == b"070701", f"bad magic at {off}"
        f = [int(raw[off + 6 + 8 * i: off + 14 + 8 * i], 16) for i in range(13)]
        ino, mode, _uid, _gid, nlink, _mtime, size, _dmaj, _dmin, rmaj, rmin, namesize, _chk = f
        name_off = off + 110
        name = raw[name_off:name_off + namesize - 1].decode()
        assert raw[name_off + namesize - 1] == 0, "name not NUL-terminated"
        data_off = name_off + namesize
        data_off += -data_off % 4
        data = raw[data_off:data_off + size]
        off = data_off + size
        off += -off % 4
        if name == "TRAILER!!!":
            assert off == len(raw), "bytes after the trailer"
            return out
        out.append(Entry(name, ino, mode, nlink, (rmaj, rmin), data))


def need_gcc() -> str:
    gcc = shutil.which("gcc")
    if not gcc:
        pytest.skip("prerequisite missing: no gcc on this host")
    return gcc


def compile_c(tmp: Path, source: str, name: str, *flags: str) -> Path:
    """Compile ``source`` with the host gcc (skip if there is none)."""
    gcc = need_gcc()
    src = tmp / f"{name}.c"
    src.write_text(source)
    out = tmp / name
    p = subprocess.run([gcc, *flags, "-o", str(out), str(src)], capture_output=True, text=True)
    if p.returncode != 0 and "-static" in flags and "cannot find -lc" in p.stderr:
        pytest.skip("prerequisite missing: no static libc (libc6-dev) for gcc -static")
    assert p.returncode == 0, p.stderr
    return out


def fake_module(work: Path, name: str, depends: str, release: str) -> bytes:
    """A relocatable ELF object carrying a .modinfo like a kernel module's."""
    src = work / f"{name}.c"
    info = f"name={name}\\0depends={depends}\\0vermagic={release} SMP\\0"
    src.write_text(f'__attribute__((section(".modinfo"), used)) static const char m[] = "{info}";\n')
    out = work / f"{name}.o"
    subprocess.run([need_gcc(), "-c", "-o", str(out), str(src)], check=True)
    return out.read_bytes()


def fake_debian_tree(root: Path, recipe, release: str = "6.1.0-99-cloud-amd64"):
    """An extracted 'linux-image + busybox-static' tree, with vuser.debian's manifest.

    The kernel config sets every option the recipe requires; the modules are
    objects with the real names and dependencies; busybox is a static stub.
    """
    from vuser import debian

    work = root.parent / (root.name + "-work")
    work.mkdir(parents=True)
    (root / "boot").mkdir(parents=True)
    (root / "boot" / f"vmlinuz-{release}").write_bytes(b"MZ" + b"\0" * 4094)
    config = "".join(f"CONFIG_{k}={v[0]}\n" for k, v in recipe.require.items())
    (root / "boot" / f"config-{release}").write_text(config)
    drv = root / "lib" / "modules" / release / "kernel" / "drivers" / "uio"
    drv.mkdir(parents=True)
    (drv / "uio.ko").write_bytes(fake_module(work, "uio", "", release))
    (drv / "uio_pci_generic.ko").write_bytes(fake_module(work, "uio_pci_generic", "uio", release))
    busybox = compile_c(work, "int main(void) { return 0; }", "busybox", "-static")
    (root / "bin").mkdir()
    shutil.copy(busybox, root / "bin" / "busybox")
    shutil.rmtree(work)
    pkgs = [debian.DebPackage(f"linux-image-{release}", "6.1.999-1", "k.deb", 1),
            debian.DebPackage(recipe.kernel_package, "6.1.999-1", "m.deb", 1),
            debian.DebPackage(recipe.busybox_package, "1:1.35.0-4", "b.deb", 1)]
    tree = debian.Tree(root, recipe.suite, sorted([recipe.kernel_package, recipe.busybox_package]),
                       pkgs, debian.tree_files(root))
    tree.write_manifest()
    return tree
