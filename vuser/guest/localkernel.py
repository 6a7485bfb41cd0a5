"""A kernel the user gives (``vuser run --kernel PATH --modules DIR``): release, modules, config.

The release comes from the bzImage's setup header (``vuser.guest.bzimage``).

The modules tree ``DIR`` may be laid out as

- ``make modules_install INSTALL_MOD_PATH=DIR``: ``DIR/lib/modules/<release>/``
  (or ``DIR/usr/lib/modules/<release>/``, as Debian's newer packages have it);
- that release folder itself: ``DIR/modules.order``, ``DIR/kernel/...``;
- a kernel build tree: ``DIR/.config``, ``DIR/modules.order``, the ``.ko``
  files next to their sources, ``DIR/include/config/kernel.release``.

Without ``--modules``, a kernel at ``ROOT/boot/vmlinuz-<release>`` (an unpacked
Debian package) takes ``ROOT/lib/modules/<release>``, and one at
``TREE/arch/x86/boot/bzImage`` takes its build tree ``TREE``.

A tree made for another release is refused in one line, both by its folder
name (or ``kernel.release``) and by the ``vermagic=`` of a module in it, whose
first word is the release the module was built for.

The config is, in this order: the one embedded in the bzImage
(``CONFIG_IKCONFIG``), the build tree's ``.config``, ``config`` in the release
folder (Debian's split packages), ``ROOT/boot/config-<release>`` or
``config-<release>`` beside the kernel. When none is found (or the embedded one
cannot be decompressed, see ``bzimage``), ``config_note`` says the options were
not checked.

The build tree for out-of-tree modules (``vuser_dma.ko``): ``--kernel-build``,
else a build tree given as ``DIR``, else ``<release folder>/build`` when it
holds a ``Makefile``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from vuser.guest.bzimage import BzImage, BzImageError
from vuser.guest.kernel import _MODULE_SUFFIXES, KernelError, KernelTree, modinfo, module_name

__all__ = ["LocalKernel", "parse_config"]


def parse_config(text: str) -> dict[str, str]:
    """``CONFIG_X=v`` lines as ``{"X": "v"}``; ``# CONFIG_X is not set`` is absent."""
    opts = {}
    for line in text.splitlines():
        m = re.match(r"CONFIG_(\w+)=(.*)$", line)
        if m:
            opts[m.group(1)] = m.group(2).strip('"')
    return opts


def _is_build_tree(d: Path) -> bool:
    return (d / "Makefile").is_file() and (d / ".config").is_file()


def _release_folders(d: Path) -> list[Path]:
    return sorted(p for base in ("lib/modules", "usr/lib/modules")
                  for p in (d / base).glob("*") if p.is_dir())


@dataclass
class LocalKernel(KernelTree):
    """A user's bzImage and its modules (module doc); a ``KernelTree`` to the image builder."""

    bzimage: BzImage | None = field(default=None, repr=False)
    config_text: str | None = field(default=None, repr=False)
    config_source: str = ""  # "embedded IKCONFIG", or the file it came from
    config_note: str = ""  # why the options could not be checked ("" when they can)
    build_tree: Path | None = None
    modules_given: bool = False

    # -- finding
    @classmethod
    def find(cls, kernel: str | Path, modules: str | Path | None = None,
             kernel_build: str | Path | None = None) -> LocalKernel:
        """Read the kernel and locate its modules, config and build tree;
        ``KernelError`` (one line) for a missing file or a tree of another release."""
        path = Path(kernel).expanduser()
        try:
            bz = BzImage.read(path)
        except BzImageError as e:
            raise KernelError(str(e)) from None
        release = bz.release
        build = None
        if modules is not None:
            mdir, build = cls._modules_dir(Path(modules).expanduser(), release)
        else:
            mdir, build = cls._beside(path, release)
        if kernel_build is not None:
            build = Path(kernel_build).expanduser()
            if not (build / "Makefile").is_file():
                raise KernelError(f"--kernel-build {build}: no Makefile there (give a kernel "
                                  "build tree, or the headers of one)")
        elif build is None and mdir is not None and (mdir / "build" / "Makefile").is_file():
            build = (mdir / "build").resolve()
        k = cls(release=release, vmlinuz=path, config=Path(os.devnull),
                modules_dir=mdir if mdir is not None else Path(os.devnull), bzimage=bz,
                build_tree=build, modules_given=mdir is not None)
        if mdir is not None:
            k._check_vermagic(modules if modules is not None else mdir)
        k._find_config(path, mdir, build if build is not None and modules is not None else None)
        return k

    @staticmethod
    def _modules_dir(d: Path, release: str) -> tuple[Path, Path | None]:
        """The release folder of ``DIR`` (module doc), and DIR itself if it is a build tree."""
        if not d.is_dir():
            raise KernelError(f"modules tree {d} does not exist" if not d.exists()
                              else f"modules tree {d} is not a directory")
        folders = _release_folders(d)
        if folders:
            match = [p for p in folders if p.name == release]
            if not match:
                raise KernelError(f"modules tree {d} is for kernel "
                                  f"{', '.join(p.name for p in folders)}, not for {release} "
                                  "(the release in the bzImage's header)")
            return match[0], None
        if _is_build_tree(d):
            rel_file = d / "include" / "config" / "kernel.release"
            built = rel_file.read_text().strip() if rel_file.is_file() else None
            if built is not None and built != release:
                raise KernelError(f"build tree {d} is for kernel {built}, not for {release} "
                                  "(the release in the bzImage's header)")
            return d, d
        if any((d / n).exists() for n in ("modules.order", "modules.builtin", "kernel")):
            if re.fullmatch(r"\d+\.\d+\S*", d.name) and d.name != release:
                raise KernelError(f"modules tree {d} is for kernel {d.name}, not for {release} "
                                  "(the release in the bzImage's header)")
            return d, None
        raise KernelError(f"{d} is not a modules tree (no lib/modules/<release>, no "
                          "modules.order or kernel/, not a build tree with .config)")

    @staticmethod
    def _beside(path: Path, release: str) -> tuple[Path | None, Path | None]:
        """Without --modules: an unpacked package's lib/modules, or the bzImage's build tree."""
        parts = path.resolve().parts
        if parts[-4:-1] == ("arch", "x86", "boot"):
            tree = Path(*parts[:-4])
            if _is_build_tree(tree):
                return tree, tree
        if path.parent.name == "boot":
            for base in ("lib/modules", "usr/lib/modules"):
                d = path.parent.parent / base / release
                if d.is_dir():
                    return d, None
        return None, None

    def _check_vermagic(self, given: str | Path) -> None:
        """The first word of a module's vermagic must be the kernel's release."""
        for name in ("uio", "uio_pci_generic", *sorted(self.index())[:1]):
            if name in self.index():
                magic = modinfo(self.module_bytes(name), "vermagic", f"module {name}") or ""
                built_for = magic.split()[0] if magic.split() else "?"
                if built_for != self.release:
                    raise KernelError(f"modules tree {given} does not match kernel "
                                      f"{self.release}: its module {name} was built for "
                                      f"{built_for} (vermagic)")
                return

    def _find_config(self, path: Path, mdir: Path | None, build: Path | None) -> None:
        notes = []
        try:
            text = self.bzimage.ikconfig()
        except BzImageError as e:
            text = None
            notes.append(f"no embedded config read ({str(e).split(': ', 1)[-1]})")
        else:
            if text is None:
                notes.append("no embedded config (CONFIG_IKCONFIG)")
        if text is not None:
            self.config_text, self.config_source = text, "embedded IKCONFIG"
            return
        candidates = []
        if build is not None:
            candidates.append(build / ".config")
        if mdir is not None:
            candidates.append(mdir / ".config" if _is_build_tree(mdir) else mdir / "config")
            candidates += [p / "boot" / f"config-{self.release}" for p in mdir.parents[:4]]
        candidates.append(path.parent / f"config-{self.release}")
        for c in candidates:
            if c.is_file():
                self.config_text, self.config_source = c.read_text(errors="replace"), str(c)
                self.config = c
                return
        self.config_note = (f"kernel {self.release}: its config was not found ("
                            + "; ".join(notes + ["no .config or config-" + self.release
                                                 + " beside it or its modules"])
                            + "): the kernel options the programs need were not checked")

    # -- KernelTree
    def config_options(self) -> dict[str, str]:
        return parse_config(self.config_text) if self.config_text is not None else {}

    def check_config(self, required: dict[str, list[str]]) -> None:
        if self.config_text is not None:
            super().check_config(required)

    def builtin(self) -> set[str]:
        return super().builtin() if self.modules_given else set()

    def index(self) -> dict[str, Path]:
        """Every module file under the release folder or build tree (symlinks not followed)."""
        if self._index is None:
            idx: dict[str, Path] = {}
            if self.modules_given:
                for top, dirs, files in os.walk(self.modules_dir):
                    dirs[:] = [d for d in dirs if not d.startswith(".")]
                    for f in files:
                        if f.endswith(_MODULE_SUFFIXES):
                            idx.setdefault(module_name(f), Path(top) / f)
            self._index = idx
        return self._index

    def closure(self, names: list[str]) -> list[str]:
        """As ``KernelTree.closure``; without a modules tree nothing can be loaded,
        so every module is taken to be built in (``missing_assumed_builtin`` says which)."""
        if not self.modules_given:
            return []
        missing = [n for n in names if module_name(n + ".ko") not in self.index()
                   and module_name(n + ".ko") not in self.builtin()]
        if missing:
            raise KernelError(f"kernel {self.release}: module {missing[0]} is neither in "
                              f"{self.modules_dir} nor built in (modules.builtin)")
        return super().closure(names)
