"""Guest kernel modules (``guest-tests/kmod/``), built against the guest kernel's own headers.

Debian 12 splits a kernel's build tree into three packages, all of the same
source version as the ``linux-image`` package:

- ``linux-headers-<abi>-<flavour>``: ``usr/src/linux-headers-<release>/`` with
  ``.config``, ``Module.symvers``, the generated headers, and a one-line
  ``Makefile`` that includes the common tree's Makefile by an absolute path
  (``include /usr/src/linux-headers-<abi>-common/Makefile``);
- ``linux-headers-<abi>-common``: the source headers and the top Makefile;
- ``linux-kbuild-6.1``: ``scripts/`` and ``tools/`` (fixdep, modpost, objtool),
  reached through symlinks from the arch tree.

They are unpacked (not installed) with ``vuser.debian`` into the cache. The
only fix needed is that absolute include: it is pointed at the unpacked common
tree, and the tree's manifest is updated to record the fixed file. The module
is then built with ``make -C <arch tree> M=<build dir> modules`` and the
host's ``gcc-<N>`` named by the tree's ``.kernelvariables``.

When the host has no ``gcc-<N>`` of the kernel's (sid's 7.x kernels are
built with a newer gcc than the host's), the suite's own toolchain is used
instead: ``linux-headers-<release>`` with its whole dependency closure, run
through the suite's loader (``vuser.guest.toolchain``).

Before a module goes into an image its ``.modinfo`` ``vermagic=`` must equal
the guest kernel's own (read from a module the kernel package ships, which is
what the kernel compares against, ``kernel/module/version.c``); a mismatch
fails the build here instead of ``insmod`` failing in the guest.

Built modules are cached under ``<cache>/guest/kmod/<digest>/``, keyed by the
module sources, the kernel package version and the compiler.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


from vuser import debian
from vuser.errors import UserError
from vuser.guest import paths, toolchain
from vuser.guest.kernel import KernelError, KernelTree, modinfo

__all__ = ["KMOD_DIR", "KmodError", "KmodSet", "build_for_tree", "build_modules", "header_packages",
           "kmod_digest", "module_sources", "prepare_headers", "vermagic"]

KMOD_DIR = paths.GUEST_TESTS / "kmod"
#: Generated layout headers the modules include (``vuser.guest.layout_header``).
LAYOUT_HEADERS = (paths.GUEST_TESTS / "lib" / "vdma_layout.h",)
_RECIPE = 1  # bump when the build steps change what they produce
_STAMP = "kmod.ok"
_MAKE_TIMEOUT_S = 300


class KmodError(UserError):
    """A guest kernel module cannot be built, or does not fit the guest kernel."""


@dataclass(frozen=True)
class KmodSet:
    """The built modules: name -> ``.ko`` path, and the digest they are cached under."""

    digest: str
    modules: dict[str, Path]


def module_sources(root: Path = KMOD_DIR) -> list[Path]:
    """The module sources: ``Kbuild``, every ``.c``/``.h`` directly under ``root``,
    and the generated layout headers they include (from ``root/../lib``)."""
    if not root.is_dir():
        return []
    own = sorted(p for p in root.iterdir() if p.is_file()
                 and (p.name == "Kbuild" or p.suffix in (".c", ".h")))
    layouts = [root.parent / "lib" / h.name for h in LAYOUT_HEADERS]
    return own + [p for p in layouts if p.is_file()]


def module_names(root: Path = KMOD_DIR) -> list[str]:
    """Modules the ``Kbuild`` file builds (``obj-m += a.o b.o``)."""
    kbuild = root / "Kbuild"
    if not kbuild.is_file():
        return []
    names = []
    for line in kbuild.read_text().splitlines():
        m = re.match(r"\s*obj-m\s*[:+]?=\s*(.*)$", line)
        if m:
            names += [w[:-2] for w in m.group(1).split() if w.endswith(".o")]
    return names


def header_packages(release: str) -> tuple[str, str, str]:
    """The arch headers, common headers and kbuild packages of a kernel release:
    ``6.1.0-50-cloud-amd64`` (kbuild ``linux-kbuild-6.1``) or sid's
    ``7.2.13+deb14-cloud-amd64`` (kbuild ``linux-kbuild-7.2.13+deb14``)."""
    m = re.fullmatch(r"((\d+)\.(\d+)\.\d+(-\d+|\+deb\d+))-([a-z0-9-]+)", release)
    if not m:
        raise KmodError(f"kernel release {release!r} is not Debian's <abi>-<flavour> form")
    abi, major, minor = m.group(1), m.group(2), m.group(3)
    kbuild = f"linux-kbuild-{abi}" if m.group(4).startswith("+") else f"linux-kbuild-{major}.{minor}"
    return (f"linux-headers-{release}", f"linux-headers-{abi}-common", kbuild)


def vermagic(ko: bytes, what: str = "module") -> str:
    """The ``vermagic=`` entry of a module's ``.modinfo`` section."""
    try:
        value = modinfo(ko, "vermagic", what)
    except KernelError as e:
        raise KmodError(str(e)) from None
    if value is None:
        raise KmodError(f"{what}: .modinfo has no vermagic")
    return value


def kernel_vermagic(kernel: KernelTree) -> str:
    """The vermagic the guest kernel accepts: that of the modules it ships."""
    for probe in ("uio", "uio_pci_generic"):
        if probe in kernel.index():
            return vermagic(kernel.module_bytes(probe), f"kernel module {probe}")
    name = next(iter(sorted(kernel.index())), None)
    if name is None:
        raise KmodError(f"kernel {kernel.release} ships no module to read its vermagic from")
    return vermagic(kernel.module_bytes(name), f"kernel module {name}")


def check_vermagic(ko: bytes, name: str, want: str) -> None:
    """``KmodError`` unless the module's vermagic is ``want`` (the guest kernel's)."""
    got = vermagic(ko, name)
    if got.split() != want.split():
        raise KmodError(f"module {name} has vermagic {got.strip()!r} but the guest kernel "
                        f"wants {want.strip()!r}: it was built against other headers, and "
                        "the guest would refuse it")


def _image_kernel_version(image_tree: debian.Tree, release: str) -> str:
    pkg = image_tree.package(f"linux-image-{release}")
    if pkg is None:
        raise KmodError(f"the guest image tree has no linux-image-{release} package")
    return pkg.version


def _compiler(kernel: KernelTree, suite: str) -> tuple[str | None, str]:
    """(host ``gcc-N`` to build with, its id); ``N`` is the compiler that built the
    kernel (``CONFIG_GCC_VERSION``), as the headers' ``.kernelvariables`` also say.
    Without that gcc on the host: (None, an id naming the suite's own toolchain)."""
    opts = kernel.config_options()
    try:
        want = f"gcc-{int(opts['GCC_VERSION']) // 10000}"
    except (KeyError, ValueError):
        raise KmodError(f"kernel {kernel.release} was not built with gcc "
                        f"({opts.get('CC_VERSION_TEXT', 'no CONFIG_GCC_VERSION')})") from None
    gcc = shutil.which(want)
    if not gcc:
        return None, f"{want} of Debian {suite} (linux-headers-{kernel.release}'s closure)"
    p = subprocess.run([gcc, "-dumpfullversion"], capture_output=True, text=True)
    if p.returncode != 0:
        raise KmodError(f"{gcc} does not run: {p.stderr.strip() or p.returncode}")
    return want, f"{want} {p.stdout.strip()}"


def kmod_digest(image_tree: debian.Tree, root: Path = KMOD_DIR, compiler: str | None = None) -> str:
    """sha256 over the module sources, the guest kernel package and the compiler
    (default: the host's ``gcc-N`` matching the kernel's)."""
    kernel = KernelTree.find(image_tree.root)
    if compiler is None:
        compiler = _compiler(kernel, image_tree.suite)[1]
    h = hashlib.sha256()
    h.update(f"{_RECIPE}\0{kernel.release}\0{_image_kernel_version(image_tree, kernel.release)}"
             f"\0{compiler}\0".encode())
    for p in module_sources(root):
        h.update(f"{p.name}\0".encode())
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def prepare_headers(suite: str, release: str, version: str, cache: Path,
                    show_progress: bool = False) -> Path:
    """Unpack the kernel's three header packages; return the fixed arch headers folder."""
    arch_pkg, common_pkg, kbuild_pkg = header_packages(release)
    tree = debian.fetch(suite, [arch_pkg, common_pkg, kbuild_pkg],
                        cache / f"headers-{suite}-{release}", closure=False,
                        show_progress=show_progress)
    for name in (arch_pkg, common_pkg):
        try:
            tree.require_version(name, version)
        except UserError as e:
            raise KmodError(str(e)) from None
    arch = tree.root / "usr" / "src" / f"linux-headers-{release}"
    common = tree.root / "usr" / "src" / common_pkg
    makefile = arch / "Makefile"
    if not makefile.is_file() or not (common / "Makefile").is_file():
        raise KmodError(f"{tree.root}: unexpected header layout (no {makefile} or "
                        f"{common / 'Makefile'})")
    fixed = f"include {common.resolve()}/Makefile\n"
    text = makefile.read_text()
    if text != fixed:
        if not re.fullmatch(r"include /\S+/Makefile\s*", text):
            raise KmodError(f"{makefile}: expected Debian's one-line include, found {text[:80]!r}")
        makefile.write_text(fixed)
        tree.files[str(makefile.relative_to(tree.root))] = makefile.stat().st_size
        tree.write_manifest()  # the fix is part of the tree now: it stays "intact"
    return arch


def _make(arch: Path, gcc: str | None, build: Path, path: Path | None = None) -> None:
    """kbuild; ``gcc`` None: the compiler the headers name, found in ``path``."""
    env = dict(os.environ, LC_ALL="C")
    if path is not None:
        env["PATH"] = f"{path}{os.pathsep}{env.get('PATH', '')}"
    cmd = ["make", "-C", str(arch), f"M={build}", *([f"CC={gcc}"] if gcc else []), "modules"]
    if not shutil.which("make"):
        raise KmodError("make not found: guest kernel modules are built with kbuild "
                        "(apt-get install make)")
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=_MAKE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise KmodError(f"building the guest kernel modules took over {_MAKE_TIMEOUT_S} s") from None
    if p.returncode != 0:
        lines = (p.stderr.strip() or p.stdout.strip()).splitlines()
        errs = [ln for ln in lines if "error" in ln.lower()] or lines
        raise KmodError("building the guest kernel modules failed:\n" + "\n".join(errs[-15:]))


def build_modules(image_tree: debian.Tree, suite: str, *, root: Path = KMOD_DIR,
                  cache: Path | None = None,
                  status: Callable[[str], None] | None = None) -> KmodSet:
    """Build (or take from the cache) every module of ``root/Kbuild`` for the image's kernel.

    Each module's vermagic is checked against the guest kernel's before it is
    returned; ``KmodError`` explains any failure.
    """
    names = module_names(root)
    if not names:
        return KmodSet("", {})
    cache = cache or paths.cache_root()
    kernel = KernelTree.find(image_tree.root)
    version = _image_kernel_version(image_tree, kernel.release)
    want = kernel_vermagic(kernel)
    gcc, compiler_id = _compiler(kernel, suite)
    digest = kmod_digest(image_tree, root, compiler_id)
    out = cache / "kmod" / digest[:20]

    def load() -> KmodSet:
        mods = {}
        for n in names:
            ko = out / f"{n}.ko"
            check_vermagic(ko.read_bytes(), n, want)
            mods[n] = ko
        return KmodSet(digest, mods)

    if (out / _STAMP).is_file():
        try:
            return load()
        except (OSError, KmodError):
            shutil.rmtree(out, ignore_errors=True)  # damaged: build again
    if status:
        status(f"building guest kernel module(s) {', '.join(names)} for {kernel.release}")
    if gcc:
        arch, bin_dir = prepare_headers(suite, kernel.release, version, cache,
                                        show_progress=status is not None), None
    else:
        try:
            tc = toolchain.prepare(suite, kernel.release, version, cache,
                                   show_progress=status is not None)
        except UserError as e:
            raise KmodError(f"the guest kernel's toolchain (Debian {suite}): {e}") from None
        arch, bin_dir = tc.arch, tc.bin
    _build_into(out, digest, names, root, arch, gcc, bin_dir, want)
    return load()


def _build_into(out: Path, digest: str, names: list[str], root: Path, arch: Path,
                gcc: str | None, bin_dir: Path | None, want: str | None,
                release: str = "") -> None:
    """kbuild the modules of ``root`` against ``arch`` in a fresh folder, check
    each one's vermagic (``want``, or only its release when None), move it to ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    build = tmp / "build"
    try:
        build.mkdir()
        for src in module_sources(root):
            shutil.copy2(src, build / src.name)
        _make(arch, gcc, build, bin_dir)
        for n in names:
            ko = build / f"{n}.ko"
            if not ko.is_file():
                raise KmodError(f"kbuild succeeded but produced no {n}.ko")
            _check(ko.read_bytes(), n, want, release)
            shutil.copy2(ko, tmp / ko.name)
        shutil.rmtree(build)
        (tmp / _STAMP).write_text(digest + "\n")
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _check(ko: bytes, name: str, want: str | None, release: str) -> None:
    if want is not None:
        check_vermagic(ko, name, want)
        return
    got = vermagic(ko, name).split()
    if not got or got[0] != release:
        raise KmodError(f"module {name} was built for {got[0] if got else '?'}, not for the "
                        f"guest kernel {release}: the build tree is another kernel's")


def build_for_tree(build_tree: Path, kernel: KernelTree, *, root: Path = KMOD_DIR,
                   cache: Path | None = None,
                   status: Callable[[str], None] | None = None) -> KmodSet:
    """Build every module of ``root/Kbuild`` against a user's kernel build tree
    (``make -C build_tree M=...``, the tree's own ``CC``, else the host's gcc);
    cached by the sources, the tree's ``.config`` and ``Module.symvers``, and the
    host's gcc. The vermagic must be that of the kernel's own modules (or,
    without any, start with its release)."""
    names = module_names(root)
    if not names:
        return KmodSet("", {})
    cache = cache or paths.cache_root()
    want = kernel_vermagic(kernel) if kernel.index() else None
    h = hashlib.sha256(f"{_RECIPE}\0tree\0{kernel.release}\0{want}\0{build_tree.resolve()}"
                       f"\0{_host_gcc()}\0".encode())
    for f in (".config", "Module.symvers", "Makefile"):
        p = build_tree / f
        h.update(hashlib.sha256(p.read_bytes()).digest() if p.is_file() else b"-")
    for p in module_sources(root):
        h.update(f"{p.name}\0".encode() + hashlib.sha256(p.read_bytes()).digest())
    digest = h.hexdigest()
    out = cache / "kmod" / digest[:20]
    if (out / _STAMP).is_file():
        try:
            for n in names:
                _check((out / f"{n}.ko").read_bytes(), n, want, kernel.release)
            return KmodSet(digest, {n: out / f"{n}.ko" for n in names})
        except (OSError, KmodError):
            shutil.rmtree(out, ignore_errors=True)
    if status:
        status(f"building guest kernel module(s) {', '.join(names)} against {build_tree}")
    _build_into(out, digest, names, root, build_tree, None, None, want, kernel.release)
    return KmodSet(digest, {n: out / f"{n}.ko" for n in names})


def _host_gcc() -> str:
    gcc = shutil.which("gcc")
    if not gcc:
        return "no gcc"
    p = subprocess.run([gcc, "-dumpfullversion"], capture_output=True, text=True)
    return f"gcc {p.stdout.strip()}"
