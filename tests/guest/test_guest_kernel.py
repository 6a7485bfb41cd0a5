"""vuser.guest.kernel: package layouts, module closure, .ko.xz, config checks."""

from __future__ import annotations

import lzma
import subprocess
from pathlib import Path

import pytest

from guest_helpers import need_gcc
from vuser.guest.kernel import KernelError, KernelTree, module_name

REL = "6.1.0-99-test-amd64"


def module(tmp: Path, name: str, depends: str) -> bytes:
    """A relocatable ELF object carrying a .modinfo like a kernel module's."""
    src = tmp / f"{name}.c"
    info = f"name={name}\\0depends={depends}\\0vermagic={REL} SMP\\0"
    src.write_text(f'__attribute__((section(".modinfo"), used)) static const char m[] = "{info}";\n')
    out = tmp / f"{name}.o"
    subprocess.run([need_gcc(), "-c", "-o", str(out), str(src)], check=True)
    return out.read_bytes()


@pytest.fixture
def tree(tmp_path) -> Path:
    """bookworm's layout: boot/ and lib/modules/<rel>/kernel, no modules.dep."""
    root = tmp_path / "root"
    (root / "boot").mkdir(parents=True)
    (root / "boot" / f"vmlinuz-{REL}").write_bytes(b"MZ fake bzImage")
    (root / "boot" / f"config-{REL}").write_text(
        "CONFIG_UIO=m\nCONFIG_HUGETLBFS=y\n# CONFIG_VFIO_NOIOMMU is not set\nCONFIG_CMDLINE=\"x\"\n")
    mods = root / "lib" / "modules" / REL
    drv = mods / "kernel" / "drivers"
    drv.mkdir(parents=True)
    work = tmp_path / "work"
    work.mkdir()
    (drv / "top.ko").write_bytes(module(work, "top", "base,mid-dash,builtin_one"))
    (drv / "base.ko.xz").write_bytes(lzma.compress(module(work, "base", "")))
    (drv / "mid-dash.ko").write_bytes(module(work, "mid_dash", "base"))
    (drv / "loop_a.ko").write_bytes(module(work, "loop_a", "loop_b"))
    (drv / "loop_b.ko").write_bytes(module(work, "loop_b", "loop_a"))
    (drv / "broken.ko.xz").write_bytes(b"not xz at all")
    (drv / "squashed.ko.zst").write_bytes(b"\x28\xb5\x2f\xfd")
    (mods / "modules.builtin").write_text("kernel/drivers/builtin_one.ko\n")
    return root


def test_find_bookworm_layout(tree):
    k = KernelTree.find(tree)
    assert k.release == REL
    assert k.vmlinuz.name == f"vmlinuz-{REL}" and k.modules_dir == tree / "lib/modules" / REL
    assert k.config_options()["UIO"] == "m" and k.config_options()["CMDLINE"] == "x"
    assert "VFIO_NOIOMMU" not in k.config_options()


def test_closure_is_dependencies_first_without_builtins(tree):
    k = KernelTree.find(tree)
    assert k.closure(["top"]) == ["base", "mid_dash", "top"]
    assert k.closure(["mid-dash", "base"]) == ["base", "mid_dash"]
    assert k.module_bytes("base").startswith(b"\x7fELF")  # decompressed from .ko.xz


def test_closure_errors(tree):
    k = KernelTree.find(tree)
    with pytest.raises(KernelError, match="cycle"):
        k.closure(["loop_a"])
    with pytest.raises(KernelError, match="no module 'nope'"):
        k.closure(["nope"])
    with pytest.raises(KernelError, match="corrupt xz"):
        k.module_bytes("broken")
    with pytest.raises(KernelError, match="zstd"):
        k.module_bytes("squashed")


def test_config_requirements(tree):
    k = KernelTree.find(tree)
    k.check_config({"UIO": ["m", "y"], "HUGETLBFS": ["y"]})
    with pytest.raises(KernelError, match=r"CONFIG_VFIO_NOIOMMU=n \(want y\).*CONFIG_UIO=m \(want y\)"):
        k.check_config({"VFIO_NOIOMMU": ["y"], "UIO": ["y"]})


def test_trixie_layout_usr_lib_modules(tree, tmp_path):
    usr = tree / "usr" / "lib"
    usr.mkdir(parents=True)
    (tree / "lib").rename(usr / "modules_tmp")
    (usr / "modules_tmp" / "modules").rename(usr / "modules")
    k = KernelTree.find(tree)
    assert k.modules_dir == tree / "usr/lib/modules" / REL
    assert k.closure(["mid_dash"]) == ["base", "mid_dash"]


def test_sid_split_layout(tree):
    """sid: linux-binary's vmlinuz and linux-base's config under usr/lib/modules/<rel>,
    linux-modules' .ko.xz beside them; unpacked together they are one tree."""
    mods = tree / "usr/lib/modules" / REL
    mods.parent.mkdir(parents=True)
    (tree / "lib/modules" / REL).rename(mods)
    (tree / "boot" / f"vmlinuz-{REL}").rename(mods / "vmlinuz")
    (tree / "boot" / f"config-{REL}").rename(mods / "config")
    k = KernelTree.find(tree)
    assert (k.release, k.vmlinuz, k.config, k.modules_dir) == (REL, mods / "vmlinuz",
                                                               mods / "config", mods)
    assert k.config_options()["UIO"] == "m"
    assert k.closure(["top"]) == ["base", "mid_dash", "top"]


def test_split_and_broken_packages_fail_clearly(tmp_path):
    split = tmp_path / "split"
    (split / "usr/lib/modules" / REL).mkdir(parents=True)
    (split / "usr/lib/modules" / REL / "vmlinuz").write_bytes(b"x")
    with pytest.raises(KernelError, match=r"no usr/lib/modules/.*/config .*linux-base"):
        KernelTree.find(split)
    (split / "usr/lib/modules" / REL / "config").write_text("")
    with pytest.raises(KernelError, match="linux-modules package"):
        KernelTree.find(split)
    both = tmp_path / "both"
    (both / "boot").mkdir(parents=True)
    (both / "boot" / f"vmlinuz-{REL}").write_bytes(b"x")
    (split / "usr").rename(both / "usr")
    with pytest.raises(KernelError, match="several kernels"):
        KernelTree.find(both)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(KernelError, match="no boot/vmlinuz"):
        KernelTree.find(empty)
    noconf = tmp_path / "noconf"
    (noconf / "boot").mkdir(parents=True)
    (noconf / "boot" / f"vmlinuz-{REL}").write_bytes(b"x")
    with pytest.raises(KernelError, match="no boot/config"):
        KernelTree.find(noconf)
    (noconf / "boot" / f"config-{REL}").write_text("")
    with pytest.raises(KernelError, match="no lib/modules/.*/kernel"):
        KernelTree.find(noconf)


def test_module_name():
    assert module_name("a/b/uio-pci_generic.ko.xz") == "uio_pci_generic"
    assert module_name("uio.ko") == "uio"
