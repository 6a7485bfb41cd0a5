"""A Debian kernel package, unpacked: the kernel image, its config, its modules.

Layouts (checked by unpacking the packages with ``dpkg-deb -x``):

- bookworm ``linux-image-<abi>-<flavour>``: ``boot/vmlinuz-<rel>``,
  ``boot/config-<rel>`` and ``lib/modules/<rel>/kernel/**.ko`` in one package.
  There is no ``modules.dep`` (``depmod`` runs at install time), so the
  dependencies come from each module's ``.modinfo`` ``depends=`` entry.
- trixie: the same, with modules under ``usr/lib/modules`` as ``.ko.xz``;
  those are decompressed here with ``lzma``.
- sid (7.x): the kernel is split into ``linux-binary-*`` (``usr/lib/modules/
  <rel>/vmlinuz``), ``linux-base-*`` (``usr/lib/modules/<rel>/config``,
  ``modules.builtin``) and ``linux-modules-*`` (``.ko.xz`` under
  ``usr/lib/modules/<rel>/kernel``); ``linux-image-*`` only depends on them.
  Unpacked into one folder they form the same tree, found here the same way.
"""

from __future__ import annotations

import gzip
import io
import lzma
import re
from dataclasses import dataclass, field
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from vuser.errors import UserError

__all__ = ["KernelError", "KernelTree", "modinfo", "module_name"]

_MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.gz", ".ko.zst")


class KernelError(UserError):
    """The kernel package cannot be used for a guest image."""


def module_name(path: str | Path) -> str:
    """``drivers/uio/uio-pci_generic.ko.xz`` -> ``uio_pci_generic`` (kmod's
    rule: dashes and underscores are the same)."""
    name = Path(path).name
    for suffix in _MODULE_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name.replace("-", "_")


def modinfo(ko: bytes, key: str, what: str = "module") -> str | None:
    """Entry ``key=`` of a module's ``.modinfo`` section, None if it has none."""
    try:
        sec = ELFFile(io.BytesIO(ko)).get_section_by_name(".modinfo")
    except ELFError as e:
        raise KernelError(f"{what}: not an ELF object ({e})") from None
    if sec is None:
        raise KernelError(f"{what}: no .modinfo section")
    prefix = key.encode() + b"="
    for entry in sec.data().split(b"\0"):
        if entry.startswith(prefix):
            return entry[len(prefix):].decode(errors="replace")
    return None


def _decompress(path: Path) -> bytes:
    raw = path.read_bytes()
    if path.name.endswith(".ko.xz"):
        try:
            return lzma.decompress(raw)
        except lzma.LZMAError as e:
            raise KernelError(f"{path}: corrupt xz module ({e})") from None
    if path.name.endswith(".ko.gz"):
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise KernelError(f"{path}: corrupt gzip module ({e})") from None
    if path.name.endswith(".ko.zst"):
        raise KernelError(f"{path}: zstd-compressed modules are not handled "
                          "(Python has no zstd before 3.14)")
    return raw


@dataclass
class KernelTree:
    """The kernel of one unpacked linux-image package (see module doc)."""

    release: str
    vmlinuz: Path
    config: Path
    modules_dir: Path
    _index: dict[str, Path] | None = field(default=None, repr=False)

    @classmethod
    def find(cls, root: str | Path) -> KernelTree:
        """Locate the kernel in ``root``, a ``dpkg-deb -x`` output folder (either layout)."""
        root = Path(root)
        images = sorted(root.glob("boot/vmlinuz-*"))
        split = sorted(root.glob("usr/lib/modules/*/vmlinuz"))
        if len(images) + len(split) > 1:
            raise KernelError(f"{root}: several kernels: "
                              f"{[p.name for p in images] + [p.parent.name for p in split]}")
        if images:
            release = images[0].name.removeprefix("vmlinuz-")
            vmlinuz, config = images[0], root / "boot" / f"config-{release}"
        elif split:
            release = split[0].parent.name
            vmlinuz, config = split[0], split[0].parent / "config"
        else:
            raise KernelError(f"{root}: no boot/vmlinuz-* or usr/lib/modules/*/vmlinuz "
                              "(not a linux-image package?)")
        if not config.is_file():
            raise KernelError(f"{root}: no {config.relative_to(root)} (for a split kernel: "
                              "is its linux-base package there?)")
        for base in ("lib/modules", "usr/lib/modules"):
            modules_dir = root / base / release
            if (modules_dir / "kernel").is_dir():
                break
        else:
            raise KernelError(f"{root}: no lib/modules/{release}/kernel (for a split kernel: "
                              "is its linux-modules package there?)")
        return cls(release=release, vmlinuz=vmlinuz, config=config, modules_dir=modules_dir)

    def config_options(self) -> dict[str, str]:
        """``CONFIG_X=v`` lines as ``{"X": "v"}``; ``# CONFIG_X is not set`` is absent."""
        opts = {}
        for line in self.config.read_text(errors="replace").splitlines():
            m = re.match(r"CONFIG_(\w+)=(.*)$", line)
            if m:
                opts[m.group(1)] = m.group(2).strip('"')
        return opts

    def check_config(self, required: dict[str, list[str]]) -> None:
        """Raise ``KernelError`` naming every option not set to an allowed value."""
        opts = self.config_options()
        bad = [f"CONFIG_{k}={opts.get(k, 'n')} (want {'/'.join(v)})"
               for k, v in required.items() if opts.get(k, "n") not in v]
        if bad:
            raise KernelError(f"kernel {self.release} lacks what the guest needs: "
                              + ", ".join(bad))

    def builtin(self) -> set[str]:
        """Names of the modules built into the kernel (``modules.builtin``)."""
        path = self.modules_dir / "modules.builtin"
        if not path.is_file():
            return set()
        return {module_name(line.strip()) for line in path.read_text().splitlines() if line.strip()}

    def index(self) -> dict[str, Path]:
        """Module name -> file, for every module in the package."""
        if self._index is None:
            idx: dict[str, Path] = {}
            for p in (self.modules_dir / "kernel").rglob("*.ko*"):
                if p.name.endswith(_MODULE_SUFFIXES):
                    idx[module_name(p)] = p
            self._index = idx
        return self._index

    def module_bytes(self, name: str) -> bytes:
        """The module ``name`` as an uncompressed ELF object."""
        try:
            path = self.index()[name]
        except KeyError:
            raise KernelError(f"kernel {self.release} has no module {name!r}") from None
        return _decompress(path)

    def depends(self, name: str) -> list[str]:
        """Direct dependencies of module ``name`` (``.modinfo`` ``depends=``)."""
        deps = modinfo(self.module_bytes(name), "depends", f"module {name}")
        return [module_name(d) for d in (deps or "").split(",") if d]

    def closure(self, names: list[str]) -> list[str]:
        """``names`` and everything they depend on, dependencies first; modules
        built into the kernel are left out (nothing to load)."""
        builtin = self.builtin()
        order: list[str] = []
        visiting: set[str] = set()

        def visit(name: str) -> None:
            name = module_name(name + ".ko")
            if name in order or name in builtin:
                return
            if name in visiting:
                raise KernelError(f"module dependency cycle through {name}")
            visiting.add(name)
            for dep in self.depends(name):
                visit(dep)
            visiting.discard(name)
            order.append(name)

        for n in names:
            visit(n)
        return order
