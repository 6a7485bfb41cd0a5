"""Guest images: a Debian kernel and an initramfs with busybox, modules and our tests.

Inputs (all hashed into the image's cache key):
- ``images/guest.toml``: suite, packages, modules, kernel command line;
- the kernel asked for (``kernel="debian:<suite>"``, default the recipe's own
  suite): another suite's ``linux-image`` metapackage and busybox are fetched
  from that suite instead, keeping only the kernel's own packages (newer
  suites split it into ``linux-binary``/``linux-modules``/``linux-base``, and
  the metapackage also pulls in an initramfs generator, which is not needed);
- ``images/init.sh``: the guest's ``/init``;
- the Debian packages (name and version), fetched by ``vuser.debian``;
- the guest tools (``vuser.guest.programs``: ``guest-tests/tools``, compiler, flags);
- the guest kernel modules (``vuser.guest.kmod``: ``guest-tests/kmod``, built
  against the kernel's own headers, vermagic checked);
- ``BUILDER_VERSION``, bumped when this module changes what it writes.

Output, under ``<cache>/guest/images/<key>/``: ``vmlinuz``, ``initrd.img``
(gzip newc written by ``vuser.guest.newc``) and ``image.json``, written last;
an image whose files do not match ``image.json`` (sizes, sha256) is rebuilt.

The initramfs holds ``/init``, ``/bin/busybox`` (applet links are made by
``/init``), ``/dev/console`` (c 5 1, opened by the kernel before ``/init``),
``/lib/modules/<name>.ko`` for the module closure and for our own modules
(which ``/init`` does not load: the test programs that drive them do, with
``finit_module``), ``/sbin/vuser-debug-exit``, and ``/etc/vuser/image.conf``
for ``/init``. The test programs are not in it: each run builds the ones it
runs (``vuser.guest.programs``, each cached on its own) and adds them as
``/tests/<name>`` in a per-run overlay (``GuestImage.overlays``, appended by
the launcher), so a program that does not build stops only itself.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
import tempfile
import time
import re
import tomllib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from elftools.elf.elffile import ELFFile

from vuser import debian
from vuser.errors import UserError
from vuser.guest import elfcases, kmod, paths, programs
from vuser.guest.kernel import KernelTree
from vuser.guest.newc import write_gzip
from vuser.guest.overlay import Overlay

__all__ = ["BUILDER_VERSION", "GuestImage", "Recipe", "build_image", "kernel_suite", "status",
           "load_recipe"]

BUILDER_VERSION = 4
MANIFEST = "image.json"
DEBUG_EXIT = "sbin/vuser-debug-exit"
#: What a guest needs of another suite's kernel closure (besides busybox).
KERNEL_PACKAGES = ("linux-image-*", "linux-binary-*", "linux-modules-*", "linux-base-*")


@dataclass(frozen=True)
class GuestImage:
    """A bootable guest: ``-kernel kernel -initrd initrd -append append``."""

    kernel: Path
    initrd: Path
    append: str
    tests: dict[str, list[str]]  # selected test program -> its declared cases
    kernel_release: str
    key: str
    kernel_config: Path | None = None  # the kernel package's boot/config-<release>
    overlays: tuple[Overlay, ...] = ()  # per-run files: /tests/<name>; the launcher appends them


@dataclass(frozen=True)
class Recipe:
    suite: str
    kernel_package: str
    busybox_package: str
    modules: tuple[str, ...]
    cmdline: str
    require: dict[str, list[str]]
    hugepages: int
    digest: str  # of guest.toml and init.sh (and the kernel, when not the recipe's own)
    init: bytes
    keep: tuple[str, ...] = ()  # vuser.debian.fetch(keep=): the packages taken from the closure

    def for_kernel(self, kernel: str | None) -> Recipe:
        """The recipe for a guest on ``kernel`` (``debian:<suite>``; None: this one's)."""
        if kernel is None:
            return self
        suite = kernel_suite(kernel)
        if suite == self.suite:
            return self
        digest = hashlib.sha256(f"{self.digest}\0kernel={kernel}".encode()).hexdigest()
        return replace(self, suite=suite, digest=digest,
                       keep=(*KERNEL_PACKAGES, self.busybox_package))


def kernel_suite(kernel: str) -> str:
    """``debian:sid`` -> ``sid``; ``UserError`` for anything else."""
    m = re.fullmatch(r"debian:([a-z][a-z0-9-]*)", kernel) if isinstance(kernel, str) else None
    if not m:
        raise UserError(f"guest kernel {kernel!r}: expected debian:<suite> (e.g. debian:sid)")
    return m.group(1)


def load_recipe(images: Path = paths.IMAGES) -> Recipe:
    """Read ``guest.toml`` and ``init.sh``; ``UserError`` on anything missing or wrong."""
    toml_path, init_path = images / "guest.toml", images / "init.sh"
    try:
        raw, init = toml_path.read_bytes(), init_path.read_bytes()
        data = tomllib.loads(raw.decode())
        deb, kern = data["debian"], data["kernel"]
        recipe = Recipe(
            suite=str(deb["suite"]), kernel_package=str(deb["kernel"]),
            busybox_package=str(deb["busybox"]),
            modules=tuple(str(m) for m in kern.get("modules", [])),
            cmdline=str(kern["cmdline"]),
            require={str(k): [str(x) for x in v] for k, v in kern.get("require", {}).items()},
            hugepages=int(data.get("init", {}).get("hugepages", 0)),
            digest=hashlib.sha256(raw + b"\0" + init).hexdigest(), init=init)
    except OSError as e:
        raise UserError(f"guest image recipe: {e.filename}: {e.strerror}") from None
    except (tomllib.TOMLDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
        raise UserError(f"guest image recipe {toml_path}: {type(e).__name__}: {e}") from None
    if not 0 <= recipe.hugepages <= 512:
        raise UserError(f"{toml_path}: init.hugepages={recipe.hugepages} is not in 0..512")
    if any(w.startswith("vuser.") for w in recipe.cmdline.split()):
        raise UserError(f"{toml_path}: kernel.cmdline must not set vuser.* (the builder does)")
    return recipe


class _Steps:
    """One rich status line on stderr for the slow steps (or nothing)."""

    def __init__(self, enabled: bool) -> None:
        self._console = None
        if enabled:
            from rich.console import Console

            self._console = Console(stderr=True)

    @contextmanager
    def step(self, text: str) -> Iterator[None]:
        if not self._console:
            yield
            return
        t0 = time.monotonic()
        with self._console.status(text):
            yield
        self._console.print(f"[green]✓[/] {text} ({time.monotonic() - t0:.1f} s)")

    def note(self, text: str) -> None:
        if self._console:
            self._console.print(text)


def _tree_dir(recipe: Recipe, cache: Path) -> Path:
    return cache / f"debian-{recipe.suite}"


def _image_key(recipe: Recipe, tree: debian.Tree, progs: programs.ProgramSet,
               kmod_digest: str = "") -> str:
    h = hashlib.sha256()
    h.update(f"vuser guest image v{BUILDER_VERSION}\0{recipe.digest}\0{progs.digest}\0"
             f"{kmod_digest}\0".encode())
    for p in sorted(tree.packages, key=lambda p: p.name):
        h.update(f"{p.name}={p.version}\0".encode())
    return h.hexdigest()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _load_manifest(out: Path) -> dict[str, Any] | None:
    """The image's manifest if the image is intact, else None."""
    try:
        m = json.loads((out / MANIFEST).read_text())
        for name in ("vmlinuz", "initrd.img"):
            f = m["files"][name]
            if (out / name).stat().st_size != f["size"] or _sha256(out / name) != f["sha256"]:
                return None
        if not isinstance(m["kernel_release"], str):
            return None
        return m
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _select(all_tests: dict[str, list[str]], tests: Sequence[str] | None) -> dict[str, list[str]]:
    if tests is None:
        return dict(all_tests)
    if isinstance(tests, str):
        raise UserError(f"tests must be a list of names, not the string {tests!r}")
    unknown = [t for t in tests if t not in all_tests]
    if unknown:
        raise UserError(f"no guest test {', '.join(unknown)}; "
                        f"there are: {', '.join(sorted(all_tests)) or 'none'}")
    if not tests:
        raise UserError("no guest test selected")
    return {t: all_tests[t] for t in dict.fromkeys(tests)}


def build_selected(tests: Sequence[str] | None, guest_tests: Path, cache: Path,
                   steps: _Steps, progress: bool
                   ) -> tuple[programs.ProgramSet, dict[str, list[str]], Overlay]:
    """Build the programs ``tests`` names (default: all) and the overlay that
    puts them at ``/tests/<name>``; see ``build_image`` for what a broken one does."""
    names = _select(dict.fromkeys(programs.program_names(guest_tests)), tests)
    progs = programs.build_programs(names, guest_tests, cache,
                                    status=steps.note if progress else None)
    if progs.failed and tests is not None:
        raise programs.BuildFailed("\n".join(progs.failed.values()))
    for why in progs.failed.values():
        steps.note(f"[yellow]left out: {why}")
    selected = {n: list(p.cases) for n, p in progs.tests.items()}
    if not selected:
        raise UserError("no guest test builds:\n" + "\n".join(progs.failed.values()))
    overlay = Overlay()
    for n, p in progs.tests.items():
        overlay.add_file(f"tests/{n}", p.path.read_bytes(), 0o755)
    return progs, selected, overlay


def build_image(tests: Sequence[str] | None = None, progress: bool = True, *,
                shell: bool = False, cache: Path | None = None,
                images: Path = paths.IMAGES, guest_tests: Path = paths.GUEST_TESTS,
                kernel: Any = None) -> GuestImage:
    """The guest image, built if it is not in the cache.

    ``tests`` selects the test programs the guest runs (default: all); they
    go on the kernel command line as ``vuser.tests=``. Only those are built,
    and they reach the guest through ``overlays``. A named program that does
    not build is a ``programs.BuildFailed`` with the compiler's message; with
    the default (all), such programs are left out, saying so. ``shell`` makes
    ``/init`` give an interactive shell instead. ``kernel`` is
    ``debian:<suite>`` (default: the recipe's suite), or a bzImage path or a
    ``vuser.guest.localkernel.LocalKernel`` (a user's kernel, imaged by
    ``vuser.guest.custom_image``). Errors are ``UserError``.
    """
    if kernel is not None and not (isinstance(kernel, str) and kernel.startswith("debian:")):
        from vuser.guest.custom_image import build_custom_image
        from vuser.guest.localkernel import LocalKernel

        local = kernel if isinstance(kernel, LocalKernel) else LocalKernel.find(kernel)
        return build_custom_image(local, tests, progress, shell=shell, cache=cache,
                                  images=images, guest_tests=guest_tests)
    cache = cache or paths.cache_root()
    steps = _Steps(progress)
    recipe = load_recipe(images).for_kernel(kernel)
    progs, selected, tests_overlay = build_selected(tests, guest_tests, cache, steps, progress)
    tree = debian.fetch(recipe.suite, [recipe.kernel_package, recipe.busybox_package],
                        _tree_dir(recipe, cache), show_progress=progress, keep=recipe.keep)
    kmods = kmod.build_modules(tree, recipe.suite, root=guest_tests / "kmod", cache=cache,
                               status=steps.note if progress else None)
    key = _image_key(recipe, tree, progs, kmods.digest)
    out = cache / "images" / key[:20]
    manifest = _load_manifest(out)
    if manifest is None:
        if out.exists():
            steps.note(f"[yellow]guest image {out} is damaged; building it again")
        with steps.step(f"building guest image {key[:12]}"):
            _build(recipe, tree, progs, key, out, kmods)
        manifest = _load_manifest(out)
        if manifest is None:
            raise UserError(f"guest image {out}: written but does not verify")
    words = [recipe.cmdline, f"vuser.tests={','.join(selected)}"]
    if shell:
        words.append("vuser.shell=1")
    config = KernelTree.find(tree.root).config
    return GuestImage(kernel=out / "vmlinuz", initrd=out / "initrd.img", append=" ".join(words),
                      tests=selected, kernel_release=manifest["kernel_release"], key=key,
                      kernel_config=config if config.is_file() else None,
                      overlays=(tests_overlay,))


def _busybox(root: Path) -> bytes:
    """``bin/busybox`` (bookworm) or ``usr/bin/busybox`` (merged /usr suites)."""
    path = next((root / p for p in ("bin/busybox", "usr/bin/busybox") if (root / p).is_file()),
                None)
    if path is None:
        raise UserError(f"{root}: no bin/busybox (is the busybox-static package there?)")
    with path.open("rb") as f:
        elfcases.check_static_x86_64(ELFFile(f), path)
    return path.read_bytes()


def _image_conf(recipe: Recipe, modules: list[str], own_modules: list[str] = ()) -> bytes:
    return (f"VUSER_MODULES={shlex.quote(' '.join(modules))}\n"
            f"VUSER_OWN_MODULES={shlex.quote(' '.join(own_modules))}\n"
            f"VUSER_HUGEPAGES={recipe.hugepages}\n"
            f"VUSER_IOMMU_ID={_iommu_id()}\n").encode()


def _iommu_id() -> str:
    """vuser-iommu's ``vendor:device`` as sysfs shows them (``/init`` sets its
    Bus Master Enable in a kernel-owned guest)."""
    from vuser.devices.viommu import VIommuDevice

    return f"{VIommuDevice.VENDOR_ID:#06x}:{VIommuDevice.DEVICE_ID:#06x}"


def _build(recipe: Recipe, tree: debian.Tree, progs: programs.ProgramSet, key: str,
           out: Path, kmods: kmod.KmodSet = kmod.KmodSet("", {}), *,
           kernel: KernelTree | None = None, modules: list[str] | None = None,
           extra: dict[str, str] | None = None) -> None:
    """Write the image into a fresh folder, then move it to ``out``. ``kernel``
    (default: the tree's own) and ``modules`` (default: the recipe's closure) come
    from ``vuser.guest.custom_image`` for a user's kernel; ``extra`` goes into
    ``image.json``."""
    if kernel is None:
        kernel = KernelTree.find(tree.root)
        kernel.check_config(recipe.require)
    if modules is None:
        modules = kernel.closure(list(recipe.modules))
    if "debug-exit" not in progs.tools:
        raise UserError("guest-tests/tools/debug-exit.c is missing: /init needs it to exit")
    clash = sorted(set(kmods.modules) & set(modules))
    if clash:
        raise UserError(f"guest-tests/kmod builds {', '.join(clash)}, which the kernel ships too")

    def fill(w) -> None:
        for d in ("bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "tmp", "root",
                  "etc/vuser", "lib/modules", "tests"):
            w.add_dir(d)
        w.add_device("dev/console", "c", 5, 1, 0o600)
        w.add_file("init", recipe.init, 0o755)
        w.add_file("bin/busybox", _busybox(tree.root), 0o755)
        w.add_symlink("bin/sh", "busybox")
        w.add_file("etc/vuser/image.conf",
                   _image_conf(recipe, modules, sorted(kmods.modules)))
        for m in modules:
            w.add_file(f"lib/modules/{m}.ko", kernel.module_bytes(m))
        for m, ko in sorted(kmods.modules.items()):
            w.add_file(f"lib/modules/{m}.ko", ko.read_bytes())
        w.add_file(DEBUG_EXIT, progs.tools["debug-exit"].read_bytes(), 0o755)

    initrd = write_gzip(fill)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    try:
        shutil.copyfile(kernel.vmlinuz, tmp / "vmlinuz")
        (tmp / "initrd.img").write_bytes(initrd)
        manifest = {
            "builder_version": BUILDER_VERSION, "key": key,
            "kernel_release": kernel.release,
            "packages": {p.name: p.version for p in tree.packages
                         if p.name in (recipe.busybox_package, f"linux-image-{kernel.release}")},
            "modules": modules,
            "own_modules": sorted(kmods.modules),
            "files": {n: {"size": (tmp / n).stat().st_size, "sha256": _sha256(tmp / n)}
                      for n in ("vmlinuz", "initrd.img")},
            "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **(extra or {}),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def status(cache: Path | None = None) -> dict[str, Any]:
    """What ``vuser doctor`` shows, without building or downloading anything.

    Keys: ``image`` (bool: an intact image for the current inputs is cached),
    ``path``, ``kernel`` (release or None), ``kernel_config`` (its config
    file, when the kernel package is unpacked), ``kernel_package``,
    ``tests_built`` (bool), ``tests`` (name -> number of cases), ``problem``
    (a one-line reason when something is missing, else None).
    """
    cache = cache or paths.cache_root()
    st: dict[str, Any] = {"image": False, "path": None, "kernel": None, "kernel_package": None,
                          "kernel_config": None, "tests_built": False, "tests": {},
                          "problem": None}
    try:
        recipe = load_recipe()
        progs = programs.cached_programs(paths.GUEST_TESTS, cache)
    except UserError as e:
        st["problem"] = str(e)
        return st
    if progs is not None:
        st["tests_built"] = bool(progs.tests)
        st["tests"] = {n: len(p.cases) for n, p in progs.tests.items()}
    tree = debian.Tree.load(_tree_dir(recipe, cache))
    if tree is None:
        st["problem"] = st["problem"] or f"Debian {recipe.suite} kernel not fetched yet"
        return st
    kpkg = next((p for p in tree.packages if p.name.startswith("linux-image-")
                 and p.name != recipe.kernel_package), None)
    if kpkg:
        st["kernel_package"] = f"{kpkg.name} {kpkg.version}"
        st["kernel"] = kpkg.name.removeprefix("linux-image-")
        config = tree.root / "boot" / f"config-{st['kernel']}"
        st["kernel_config"] = config if config.is_file() else None
    if progs is None:
        st["problem"] = "guest tests not built yet"
        return st
    try:
        kdigest = kmod.kmod_digest(tree) if kmod.module_names() else ""
    except UserError as e:
        st["problem"] = str(e)
        return st
    out = cache / "images" / _image_key(recipe, tree, progs, kdigest)[:20]
    manifest = _load_manifest(out)
    if manifest is None:
        st["problem"] = "guest image not built yet" if not out.exists() else f"{out} is damaged"
        return st
    st.update(image=True, path=str(out), kernel=manifest["kernel_release"])
    return st
