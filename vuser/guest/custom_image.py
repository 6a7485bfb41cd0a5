"""A guest image on a user's kernel (``vuser run --kernel PATH [--modules DIR]``).

The image is the recipe's (``images/guest.toml``: busybox, ``/init``; the test
programs come in a per-run overlay, as for Debian's kernels) with the user's
bzImage, and in its initramfs only the modules the run needs: the recipe's
list and the ``extra`` ones asked for, with their ``depends=`` closure from
the given tree; modules listed in its ``modules.builtin`` count as present. ``.ko.xz``/``.ko.gz`` are decompressed
on the host (busybox ``insmod`` cannot); ``.ko.zst`` is refused by name
(Python has zstd only from 3.14).

``vuser_dma.ko`` is built against the kernel's build tree when there is one
(``vuser.guest.kmod.build_for_tree``, host gcc); otherwise the image has none
and ``kmod_note`` says why.

Cached under ``<cache>/guest/images/<key>/`` like the Debian images, keyed by
the bzImage's bytes, its config, the name and bytes of every module put in,
the built ``vuser_dma.ko``, the tools and the recipe. The kernel's config, when found,
is copied next to it as ``config`` for the kernel-owned vIOMMU check.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vuser import debian
from vuser.errors import UserError
from vuser.guest import image, kmod, paths
from vuser.guest.localkernel import LocalKernel

__all__ = ["CustomImage", "build_custom_image"]


@dataclass(frozen=True)
class CustomImage(image.GuestImage):
    """A ``GuestImage`` plus what is known about the kernel's config and modules."""

    config_note: str = ""  # non-empty: the options were not checked, and why
    config_source: str = ""
    kmod_note: str = ""  # non-empty: vuser_dma.ko is unavailable, and why
    modules: tuple[str, ...] = ()
    kernel_tree: Any = field(default=None, repr=False)  # the LocalKernel: run-time modules


def build_custom_image(local: LocalKernel, tests: Sequence[str] | None = None,
                       progress: bool = True, *, shell: bool = False,
                       extra_modules: Sequence[str] = (), cache: Path | None = None,
                       images: Path = paths.IMAGES,
                       guest_tests: Path = paths.GUEST_TESTS) -> CustomImage:
    """The image for ``local`` (module doc), built if not cached. ``UserError`` on failure."""
    cache = cache or paths.cache_root()
    steps = image._Steps(progress)
    recipe = image.load_recipe(images)
    progs, selected, tests_overlay = image.build_selected(tests, guest_tests, cache, steps,
                                                         progress)
    tree = debian.fetch(recipe.suite, [recipe.kernel_package, recipe.busybox_package],
                        image._tree_dir(recipe, cache), show_progress=progress, keep=recipe.keep)
    modules = local.closure([*recipe.modules, *extra_modules])
    kmods, kmod_note = kmod.KmodSet("", {}), ""
    if kmod.module_names(guest_tests / "kmod"):
        if local.build_tree is None:
            kmod_note = (f"vuser_dma.ko is unavailable for kernel {local.release}: no build tree "
                         "(give --kernel-build DIR, or --modules with lib/modules/<release>/build)")
        else:
            kmods = kmod.build_for_tree(local.build_tree, local, root=guest_tests / "kmod",
                                        cache=cache, status=steps.note if progress else None)
    h = hashlib.sha256(f"vuser custom image v{image.BUILDER_VERSION}\0{recipe.digest}\0"
                       f"{progs.digest}\0{kmods.digest}\0".encode())
    h.update(hashlib.sha256(local.bzimage.data).digest())
    h.update(hashlib.sha256((local.config_text or "").encode()).digest())
    for m in modules:
        h.update(f"{m}\0".encode() + hashlib.sha256(local.module_bytes(m)).digest())
    for p in sorted(tree.packages, key=lambda p: p.name):
        if p.name == recipe.busybox_package:
            h.update(f"{p.name}={p.version}\0".encode())
    key = h.hexdigest()
    out = cache / "images" / key[:20]
    manifest = image._load_manifest(out)
    if manifest is None:
        with steps.step(f"building guest image {key[:12]} for kernel {local.release}"):
            image._build(recipe, tree, progs, key, out, kmods, kernel=local, modules=modules,
                         extra={"kernel_path": str(local.vmlinuz),
                                "config_source": local.config_source})
            if local.config_text is not None:
                (out / "config").write_text(local.config_text)
        manifest = image._load_manifest(out)
        if manifest is None:
            raise UserError(f"guest image {out}: written but does not verify")
    words = [recipe.cmdline, f"vuser.tests={','.join(selected)}"]
    if shell:
        words.append("vuser.shell=1")
    config = out / "config"
    return CustomImage(kernel=out / "vmlinuz", initrd=out / "initrd.img", append=" ".join(words),
                       tests=selected, kernel_release=local.release, key=key,
                       kernel_config=config if config.is_file() else None,
                       config_note=local.config_note, config_source=local.config_source,
                       kmod_note=kmod_note, modules=tuple(json.loads(
                           (out / image.MANIFEST).read_text())["modules"]),
                       overlays=(tests_overlay,), kernel_tree=local)
