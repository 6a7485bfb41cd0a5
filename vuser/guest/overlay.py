"""Per-run initramfs overlays: files added to a cached image without rebuilding it.

Documentation/driver-api/early-userspace/buffer-format.rst: the initramfs
buffer may hold several cpio archives one after another, each compressed on
its own; the kernel unpacks them in order, and a later file replaces an
earlier one of the same name. So a run's own files (programs, a shared
directory, a command) go into a small gzip newc archive that the launcher
appends to the image's ``initrd.img`` (``vuser.qemu.launcher.launch(overlays=...)``);
the cached image stays as it is.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from vuser.errors import UserError
from vuser.guest.newc import NewcWriter, write_gzip

__all__ = ["Overlay", "concatenate"]


@dataclass
class Overlay:
    """Files for the guest's root, by archive path (``tests/foo``, ``etc/x.conf``)."""

    files: dict[str, tuple[bytes, int]] = field(default_factory=dict)
    dirs: set[str] = field(default_factory=set)

    def add_file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self.files[_name(name)] = (data, mode)

    def add_dir(self, name: str) -> None:
        self.dirs.add(_name(name))

    def add_tree(self, source: Path, dest: str) -> int:
        """Copy the host directory ``source`` to ``dest`` (regular files, dirs,
        modes kept); symlinks and special files are left out. Returns the bytes copied."""
        source = Path(source)
        if not source.is_dir():
            raise UserError(f"{source} is not a directory")
        total = 0
        self.add_dir(dest)
        for root, dirnames, filenames in os.walk(source):
            rel = PurePosixPath(dest) / Path(root).relative_to(source).as_posix()
            for d in sorted(dirnames):
                if not (Path(root) / d).is_symlink():
                    self.add_dir(str(rel / d))
            for f in sorted(filenames):
                p = Path(root) / f
                st = p.lstat()
                if not stat.S_ISREG(st.st_mode):
                    continue
                data = p.read_bytes()
                total += len(data)
                self.add_file(str(rel / f), data, stat.S_IMODE(st.st_mode))
        return total

    def __bool__(self) -> bool:
        return bool(self.files or self.dirs)

    def archive(self) -> bytes:
        """The overlay as one gzip newc archive (same input, same bytes)."""
        def build(w: NewcWriter) -> None:
            for d in sorted(self.dirs):
                w.add_dir(d)
            for name in sorted(self.files):
                data, mode = self.files[name]
                w.add_file(name, data, mode)
        return write_gzip(build, level=1)


def _name(name: str) -> str:
    p = PurePosixPath(name.lstrip("/"))
    if not p.parts or ".." in p.parts:
        raise UserError(f"bad guest path {name!r}")
    return str(p)


def concatenate(base: Path, overlays: list[Overlay], out: Path) -> Path:
    """Write ``base`` followed by each non-empty overlay's archive to ``out``."""
    with open(out, "wb") as f, open(base, "rb") as b:
        while chunk := b.read(1 << 20):
            f.write(chunk)
        for o in overlays:
            if o:
                f.write(o.archive())
    return out
