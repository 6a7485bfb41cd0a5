"""A user's kernel (vuser.guest.localkernel): modules tree layouts, release and vermagic
checks, where the config comes from; what each program needs (requirements); the
--kernel/--modules/--kernel-build choice (kernel_choice). Offline: synthetic trees."""

from __future__ import annotations

import gzip
import lzma
import subprocess
from pathlib import Path

import pytest

from guest_helpers import need_gcc
from test_guest_bzimage import CONFIG, bzimage, vmlinux
from vuser.errors import UserError
from vuser.guest import kernel_choice, requirements
from vuser.guest.kernel import KernelError
from vuser.guest.localkernel import LocalKernel
from vuser.guest.manifest import BootPlan

REL = "6.9.0-vuser-test"


def module(work: Path, name: str, depends: str = "", release: str = REL) -> bytes:
    """A relocatable ELF object with a kernel module's .modinfo."""
    src = work / f"{name}-{release}.c"
    info = f"name={name}\\0depends={depends}\\0vermagic={release} SMP preempt mod_unload\\0"
    src.write_text(f'__attribute__((section(".modinfo"), used)) static const char m[] = "{info}";\n')
    out = src.with_suffix(".o")
    subprocess.run([need_gcc(), "-c", "-o", str(out), str(src)], check=True)
    return out.read_bytes()


def fill_release(d: Path, work: Path, release: str = REL) -> Path:
    """A release folder as modules_install leaves it (uio.ko, uio_pci_generic.ko.xz, builtins)."""
    drv = d / "kernel" / "drivers" / "uio"
    drv.mkdir(parents=True)
    (drv / "uio.ko").write_bytes(module(work, "uio", release=release))
    (drv / "uio_pci_generic.ko.xz").write_bytes(
        lzma.compress(module(work, "uio_pci_generic", "uio", release)))
    (d / "modules.order").write_text("kernel/drivers/uio/uio.ko\n"
                                     "kernel/drivers/uio/uio_pci_generic.ko\n")
    (d / "modules.builtin").write_text("kernel/drivers/virtio/virtio_pci.ko\n")
    return d


@pytest.fixture
def work(tmp_path) -> Path:
    w = tmp_path / "work"
    w.mkdir()
    return w


@pytest.fixture
def kernel(tmp_path) -> Path:
    """A bzImage of REL with an embedded config."""
    p = tmp_path / "bzImage"
    p.write_bytes(bzimage(gzip.compress(vmlinux()), version=f"{REL} (x@y) #1 SMP".encode()))
    return p


@pytest.fixture
def plain_kernel(tmp_path) -> Path:
    """A bzImage of REL without an embedded config."""
    p = tmp_path / "plain-bzImage"
    p.write_bytes(bzimage(gzip.compress(vmlinux(None)), version=f"{REL} #1".encode()))
    return p


def test_modules_install_layout(kernel, tmp_path, work):
    fill_release(tmp_path / "mods" / "lib" / "modules" / REL, work)
    k = LocalKernel.find(kernel, tmp_path / "mods")
    assert k.release == REL and k.modules_dir == tmp_path / "mods" / "lib" / "modules" / REL
    assert k.config_source == "embedded IKCONFIG" and k.config_options()["UIO"] == "m"
    assert k.closure(["uio_pci_generic"]) == ["uio", "uio_pci_generic"]
    assert k.module_bytes("uio_pci_generic")[:4] == b"\x7fELF"  # decompressed from .ko.xz
    assert k.closure(["virtio_pci"]) == []  # built in: present, nothing to load
    with pytest.raises(KernelError, match="module nope is neither in .* nor built in"):
        k.closure(["nope"])
    assert k.build_tree is None


def test_release_folder_and_usr_lib_layouts(kernel, tmp_path, work):
    d = fill_release(tmp_path / REL, work)
    assert LocalKernel.find(kernel, d).modules_dir == d
    usr = fill_release(tmp_path / "root" / "usr" / "lib" / "modules" / REL, work)
    assert LocalKernel.find(kernel, tmp_path / "root").modules_dir == usr


def test_build_tree(plain_kernel, tmp_path, work):
    tree = tmp_path / "linux"
    fill_release(tree, work)
    (tree / "Makefile").write_text("# kbuild\n")
    (tree / ".config").write_text(CONFIG + "CONFIG_INTEL_IOMMU=y\n")
    (tree / "include" / "config").mkdir(parents=True)
    (tree / "include" / "config" / "kernel.release").write_text(REL + "\n")
    k = LocalKernel.find(plain_kernel, tree)
    assert k.build_tree == tree and k.modules_dir == tree
    assert k.config_source == str(tree / ".config") and k.config_options()["INTEL_IOMMU"] == "y"
    # the build tree beside the bzImage, without --modules
    boot = tree / "arch" / "x86" / "boot"
    boot.mkdir(parents=True)
    (boot / "bzImage").write_bytes(plain_kernel.read_bytes())
    k = LocalKernel.find(boot / "bzImage")
    assert k.build_tree == tree and k.closure(["uio_pci_generic"]) == ["uio", "uio_pci_generic"]
    (tree / "include" / "config" / "kernel.release").write_text("6.8.0-other\n")
    with pytest.raises(KernelError, match=r"build tree .* is for kernel 6.8.0-other, not for "
                                          + REL):
        LocalKernel.find(plain_kernel, tree)


def test_kernel_build_option(kernel, tmp_path, work):
    fill_release(tmp_path / "mods" / "lib" / "modules" / REL, work)
    with pytest.raises(KernelError, match="--kernel-build .*: no Makefile"):
        LocalKernel.find(kernel, tmp_path / "mods", tmp_path)
    (tmp_path / "Makefile").write_text("#\n")
    assert LocalKernel.find(kernel, tmp_path / "mods", tmp_path).build_tree == tmp_path
    build = tmp_path / "mods" / "lib" / "modules" / REL / "build"
    build.mkdir()
    (build / "Makefile").write_text("#\n")
    assert LocalKernel.find(kernel, tmp_path / "mods").build_tree == build.resolve()


def test_config_beside_the_kernel_or_its_modules(plain_kernel, tmp_path, work):
    root = tmp_path / "root"
    fill_release(root / "lib" / "modules" / REL, work)
    k = LocalKernel.find(plain_kernel, root)
    assert k.config_text is None and k.config_options() == {}
    assert "its config was not found" in k.config_note and "were not checked" in k.config_note
    assert "no embedded config (CONFIG_IKCONFIG)" in k.config_note
    (root / "boot").mkdir()
    (root / "boot" / f"config-{REL}").write_text("CONFIG_UIO=y\n")
    k = LocalKernel.find(plain_kernel, root)
    assert k.config_source == str(root / "boot" / f"config-{REL}") and not k.config_note
    # an unpacked package without --modules: boot/vmlinuz-R finds lib/modules/R and boot/config-R
    (root / "boot" / f"vmlinuz-{REL}").write_bytes(plain_kernel.read_bytes())
    k = LocalKernel.find(root / "boot" / f"vmlinuz-{REL}")
    assert k.modules_dir == root / "lib" / "modules" / REL and k.config_options() == {"UIO": "y"}


def test_a_tree_of_another_release_is_one_line(kernel, tmp_path, work):
    fill_release(tmp_path / "a" / "lib" / "modules" / "6.8.0-other", work, "6.8.0-other")
    with pytest.raises(KernelError, match=r"modules tree .*/a is for kernel 6.8.0-other, not for "
                                          + REL + r" \(the release in the bzImage's header\)$"):
        LocalKernel.find(kernel, tmp_path / "a")
    # the folder says REL, the modules in it were built for another kernel
    fill_release(tmp_path / "b" / "lib" / "modules" / REL, work, "6.8.0-other")
    with pytest.raises(KernelError, match=r"does not match kernel " + REL + r": its module uio "
                                          r"was built for 6.8.0-other \(vermagic\)$"):
        LocalKernel.find(kernel, tmp_path / "b")
    with pytest.raises(KernelError, match=r"modules tree .*/6.8.0-other is for kernel 6.8.0-other"):
        LocalKernel.find(kernel, tmp_path / "a" / "lib" / "modules" / "6.8.0-other")


def test_missing_things_are_one_line(kernel, tmp_path):
    with pytest.raises(KernelError, match=r"^kernel .*/nope does not exist$"):
        LocalKernel.find(tmp_path / "nope")
    with pytest.raises(KernelError, match=r"^modules tree .*/nope does not exist$"):
        LocalKernel.find(kernel, tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(KernelError, match="is not a modules tree"):
        LocalKernel.find(kernel, tmp_path / "empty")


def test_without_modules_nothing_is_loaded(kernel):
    k = LocalKernel.find(kernel)
    assert not k.modules_given and k.closure(["uio_pci_generic"]) == []


def test_program_requirements():
    base = {"UIO_PCI_GENERIC": ["m", "y"], "HUGETLBFS": ["y"]}
    opts = {"HUGETLBFS": "y", "INTEL_IOMMU": "y", "PCI_MSI": "y", "MODULES": "y"}
    out = requirements.refusals([("environment", False), ("kernel_iommu", True),
                                 ("kernel_sva", True)], REL, opts, base)
    assert out["environment"] == (f"environment needs kernel options that kernel {REL} lacks: "
                                  "CONFIG_UIO_PCI_GENERIC=n (needs m/y)")
    assert "kernel_iommu" not in out  # the kernel owns the devices: no uio
    assert out["kernel_sva"].endswith("CONFIG_INTEL_IOMMU_SVM=n (needs y)")
    assert "INTEL_IOMMU=" in requirements.refusals([("demo_kernel", True)], REL,
                                                   {"HUGETLBFS": "y"}, base)["demo_kernel"]
    # a module of the kernel, but no modules tree to take it from
    full = {**opts, "UIO_PCI_GENERIC": "m"}
    assert requirements.refusals([("environment", False)], REL, full, base) == {}
    assert requirements.refusals([("environment", False), ("kernel_iommu", True)], REL, full,
                                 base, have_modules=False) == {
        "environment": f"environment needs CONFIG_UIO_PCI_GENERIC, a module (=m) of kernel "
                       f"{REL}, but no modules tree was given (--modules DIR)"}
    assert requirements.needs_kmod("kmod_dma") and not requirements.needs_kmod("dma_nested")
    assert requirements.needs_sva("kernel_sva") and not requirements.needs_sva("kernel_iommu")


def test_choice_refuses_in_one_line(kernel, tmp_path, work):
    for args, msg in [((None, "/m"), "--modules goes with --kernel PATH"),
                      (("debian:sid", "/m"), "--modules goes with --kernel PATH, not with "
                                             "debian:sid"),
                      (("debian:", None), "expected debian:<suite>"),
                      ((str(tmp_path / "no-bzImage"), None), "does not exist$"),
                      (("trixie", None), r"^kernel trixie does not exist \(a Debian kernel is "
                                         r"debian:trixie\)$")]:
        with pytest.raises(UserError, match=msg):
            kernel_choice.choose(*args)
    assert kernel_choice.choose("debian:trixie").spec == "debian:trixie"
    assert not kernel_choice.choose(None).given
    fill_release(tmp_path / "mods" / "lib" / "modules" / REL, work)
    choice = kernel_choice.choose(str(kernel), str(tmp_path / "mods"))
    notes = choice.notes()
    assert notes[0].startswith(f"kernel {REL} from {kernel}") and "embedded IKCONFIG" in notes[0]
    assert any(n.startswith(f"vuser_dma.ko is unavailable for kernel {REL}: no build tree")
               for n in notes)
    refused = choice.refusals(["environment", "kmod_dma", "dma_nested"], False)
    # the embedded CONFIG has UIO_PCI_GENERIC but not what the base recipe needs
    assert refused["environment"][0] == "fail" and "CONFIG_" in refused["environment"][1]


def test_merge_plans_runs_each_program_once():
    plans = [BootPlan(("a",), ("kernel_sva",), 10.0, "kernel"),
             BootPlan(("a",), ("kernel_sva", "demo_kernel"), 20.0, "kernel", (), "debian:sid"),
             BootPlan(("b",), ("x",), 5.0)]
    merged = kernel_choice.merge_plans(plans)
    assert [(p.devices, p.programs, p.timeout, p.kernel) for p in merged] == [
        (("a",), ("kernel_sva", "demo_kernel"), 30.0, None), (("b",), ("x",), 5.0, None)]
