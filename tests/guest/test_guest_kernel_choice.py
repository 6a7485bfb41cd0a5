"""A guest on another Debian suite's kernel (``build_image(kernel="debian:sid")``).

Offline: the ``debian:<suite>`` spelling and what the recipe becomes for it
(bookworm's recipe stays exactly as it was, so its images keep their keys).
With the Debian archive: sid's split kernel packages are fetched without the
initramfs generator its metapackage pulls in, and vuser_dma.ko is built by
sid's own toolchain (gcc through sid's loader) with the vermagic of sid's
kernel modules.
"""

from __future__ import annotations

import shutil

import pytest

from vuser import debian
from vuser.errors import UserError
from vuser.guest import image, kmod
from vuser.guest.image import kernel_suite, load_recipe
from vuser.guest.kernel import KernelTree


def test_kernel_spelling():
    assert kernel_suite("debian:sid") == "sid"
    assert kernel_suite("debian:trixie-backports") == "trixie-backports"
    for bad in ("sid", "debian:", "debian:Sid", "fedora:42", "debian:sid extra", None):
        with pytest.raises(UserError, match="expected debian:<suite>"):
            kernel_suite(bad)


def test_recipe_for_another_kernel():
    recipe = load_recipe()
    assert recipe.for_kernel(None) is recipe
    assert recipe.for_kernel(f"debian:{recipe.suite}") is recipe
    sid = recipe.for_kernel("debian:sid")
    assert (sid.suite, sid.kernel_package, sid.busybox_package) == (
        "sid", recipe.kernel_package, recipe.busybox_package)
    assert sid.digest != recipe.digest and recipe.keep == ()
    assert set(sid.keep) == {"linux-image-*", "linux-binary-*", "linux-modules-*",
                             "linux-base-*", recipe.busybox_package}
    assert image._tree_dir(sid, image.paths.cache_root()).name == "debian-sid"


@pytest.fixture(scope="module")
def sid_tree():
    recipe = load_recipe().for_kernel("debian:sid")
    try:
        return debian.fetch(recipe.suite, [recipe.kernel_package, recipe.busybox_package],
                            image._tree_dir(recipe, image.paths.cache_root()),
                            show_progress=False, keep=recipe.keep)
    except UserError as e:
        # only a network failure is a missing prerequisite; a package apt cannot
        # resolve is a failure of ours and must not be hidden
        if any(w in str(e) for w in ("Failed to fetch", "Temporary failure resolving",
                                     "Could not connect")):
            pytest.skip(f"prerequisite missing: the Debian archive is unreachable: {e}")
        raise


@pytest.mark.timeout(900)
def test_sid_kernel_tree_and_module(sid_tree):
    names = {p.name for p in sid_tree.packages}
    assert not any(n.startswith(("dracut", "initramfs-tools", "systemd", "libc6")) for n in names)
    kernel = KernelTree.find(sid_tree.root)
    assert kernel.release.startswith("7.") and kernel.vmlinuz.name == "vmlinuz"
    assert f"linux-binary-{kernel.release}" in names and f"linux-modules-{kernel.release}" in names
    assert kernel.config_options()["INTEL_IOMMU_SVM"] == "y"
    assert kernel.module_bytes("uio_pci_generic")[:4] == b"\x7fELF"  # from .ko.xz
    shutil.which("make") or pytest.skip("prerequisite missing: make")
    built = kmod.build_modules(sid_tree, "sid", cache=image.paths.cache_root())
    ko = built.modules["vuser_dma"].read_bytes()
    assert kmod.vermagic(ko) == kmod.kernel_vermagic(kernel)
    assert kmod.vermagic(ko).startswith(kernel.release + " ")
