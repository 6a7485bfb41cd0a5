"""vuser.guest.kmod: guest kernel modules built against the guest kernel's headers.

Offline: package naming, the Kbuild list, vermagic reading and checking, and
the one-line Makefile fix on a fake header tree. With the Debian archive (the
same prerequisite as the guest boot tests): the real vuser_dma.ko, built
against linux-headers of the image's kernel, whose vermagic must equal that of
the kernel's own modules.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from guest_helpers import fake_module, need_gcc
from vuser import debian
from vuser.errors import UserError
from vuser.guest import image, kmod
from vuser.guest.kernel import KernelTree

REL = "6.1.0-50-cloud-amd64"


def test_header_packages():
    assert kmod.header_packages(REL) == ("linux-headers-6.1.0-50-cloud-amd64",
                                         "linux-headers-6.1.0-50-common", "linux-kbuild-6.1")
    assert kmod.header_packages("6.12.48-1-amd64")[2] == "linux-kbuild-6.12"
    # sid names its ABI after the upload and its kbuild after the ABI
    assert kmod.header_packages("7.2.13+deb14-cloud-amd64") == (
        "linux-headers-7.2.13+deb14-cloud-amd64", "linux-headers-7.2.13+deb14-common",
        "linux-kbuild-7.2.13+deb14")
    with pytest.raises(kmod.KmodError, match="not Debian's"):
        kmod.header_packages("6.1.0")


def test_module_names_from_kbuild(tmp_path):
    assert kmod.module_names(tmp_path) == []
    (tmp_path / "Kbuild").write_text("# comment\nobj-m += a.o\nobj-m := b.o c.o\nccflags-y := -O2\n")
    assert kmod.module_names(tmp_path) == ["a", "b", "c"]
    assert kmod.module_names() == ["vuser_dma"]  # the real guest-tests/kmod


def test_sources_include_the_generated_layout_header():
    names = [p.name for p in kmod.module_sources()]
    assert {"Kbuild", "vuser_dma.c", "vuser_dma_ioctl.h", "vdma_layout.h"} <= set(names)


def test_vermagic_read_and_checked(tmp_path):
    need_gcc()
    ko = fake_module(tmp_path, "m", "", REL)
    assert kmod.vermagic(ko) == f"{REL} SMP"
    kmod.check_vermagic(ko, "m", f"{REL} SMP ")  # whitespace does not matter
    with pytest.raises(kmod.KmodError, match="vermagic '6.1.0-50-cloud-amd64 SMP' but the "
                                             "guest kernel wants '6.1.0-51-amd64 SMP'.*refuse"):
        kmod.check_vermagic(ko, "m", "6.1.0-51-amd64 SMP")
    with pytest.raises(kmod.KmodError, match="not an ELF object"):
        kmod.vermagic(b"not elf")


def _fake_headers(root: Path, common_makefile: str = "# top Makefile\n") -> debian.Tree:
    arch = root / "usr/src" / f"linux-headers-{REL}"
    common = root / "usr/src/linux-headers-6.1.0-50-common"
    arch.mkdir(parents=True)
    common.mkdir(parents=True)
    (arch / "Makefile").write_text("include /usr/src/linux-headers-6.1.0-50-common/Makefile\n")
    (common / "Makefile").write_text(common_makefile)
    pkgs = [debian.DebPackage(n, "6.1.176-1", f"{n}.deb", 1) for n in kmod.header_packages(REL)]
    tree = debian.Tree(root, "bookworm", sorted(kmod.header_packages(REL)), pkgs,
                       debian.tree_files(root))
    tree.write_manifest()
    return tree


def test_prepare_headers_points_the_makefile_at_the_unpacked_tree(tmp_path, monkeypatch):
    root = tmp_path / f"headers-bookworm-{REL}"
    _fake_headers(root)
    calls = []

    def fake_fetch(suite, packages, where, **kw):
        calls.append((packages, kw.get("closure")))
        return debian.Tree.load(where)

    monkeypatch.setattr(kmod.debian, "fetch", fake_fetch)
    arch = kmod.prepare_headers("bookworm", REL, "6.1.176-1", tmp_path)
    assert calls == [(list(kmod.header_packages(REL)), False)]  # only these, no closure
    common = (root / "usr/src/linux-headers-6.1.0-50-common").resolve()
    assert (arch / "Makefile").read_text() == f"include {common}/Makefile\n"
    assert debian.Tree.load(root).problems() == []  # the fix is recorded: the tree is intact
    assert kmod.prepare_headers("bookworm", REL, "6.1.176-1", tmp_path) == arch  # idempotent
    with pytest.raises(kmod.KmodError, match="version 6.1.176-1 but the guest kernel is 6.1.177-1"):
        kmod.prepare_headers("bookworm", REL, "6.1.177-1", tmp_path)
    (arch / "Makefile").write_text("all:\n\techo something else\n")
    with pytest.raises(kmod.KmodError, match="expected Debian's one-line include"):
        kmod.prepare_headers("bookworm", REL, "6.1.176-1", tmp_path)


@pytest.fixture(scope="module")
def image_tree(tmp_path_factory):
    """The guest image's real kernel tree (fetched; a skip if the archive is unreachable)."""
    recipe = image.load_recipe()
    cache = image.paths.cache_root()
    try:
        return debian.fetch(recipe.suite, [recipe.kernel_package, recipe.busybox_package],
                            image._tree_dir(recipe, cache), show_progress=False)
    except UserError as e:
        if "Failed to fetch" in str(e) or "resolve" in str(e) or "connect" in str(e):
            pytest.skip(f"prerequisite missing: the Debian archive is unreachable: {e}")
        raise


def test_real_module_builds_against_the_guest_kernel(image_tree, tmp_path):
    shutil.which("make") or pytest.skip("prerequisite missing: make")
    kernel = KernelTree.find(image_tree.root)
    cache = image.paths.cache_root()
    built = kmod.build_modules(image_tree, "bookworm", cache=cache)
    ko = built.modules["vuser_dma"]
    assert kmod.vermagic(ko.read_bytes()) == kmod.kernel_vermagic(kernel)
    assert kmod.vermagic(ko.read_bytes()).startswith(kernel.release + " ")
    # Cached: the same file; damaged: built again.
    assert kmod.build_modules(image_tree, "bookworm", cache=cache).modules["vuser_dma"] == ko
    ko.write_bytes(b"\x7fELF truncated")
    again = kmod.build_modules(image_tree, "bookworm", cache=cache).modules["vuser_dma"]
    assert kmod.vermagic(again.read_bytes()) == kmod.kernel_vermagic(kernel)


def test_a_module_that_does_not_compile_is_a_clear_error(image_tree, tmp_path):
    src = tmp_path / "kmod"
    src.mkdir()
    (src / "Kbuild").write_text("obj-m += broken.o\n")
    (src / "broken.c").write_text("#include <linux/module.h>\nint x = undeclared_thing;\n"
                                  'MODULE_LICENSE("GPL");\n')
    with pytest.raises(kmod.KmodError, match="building the guest kernel modules failed:"
                                             "(.|\n)*undeclared_thing"):
        kmod.build_modules(image_tree, "bookworm", root=src, cache=image.paths.cache_root())
