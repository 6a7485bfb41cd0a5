"""``vuser run --kernel PATH --modules DIR``: a kernel that is not the image's own.

Debian 12's generic flavour (``linux-image-6.1.*-amd64``, 70 MB; the images use
the cloud flavour) stands in for a developer's own build: fetched with
``vuser.debian`` into the cache and given as a bzImage plus an unpacked package
root. Its headers (``vuser.guest.kmod.prepare_headers``) stand in for a build
tree (``--kernel-build``). Also ``--kernel debian:trixie`` and ``debian:sid``,
and each failure path's one line.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from guest_helpers import read_newc
from vuser import debian
from vuser.errors import UserError
from vuser.guest import kmod, paths
from vuser.guest.custom_image import build_custom_image
from vuser.guest.image import build_image
from vuser.guest.kernel import KernelTree
from vuser.guest.localkernel import LocalKernel

GENERIC_DIR = "debian-bookworm-amd64"  # under the cache root


def vuser(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vuser", *args], capture_output=True, text=True,
                          timeout=timeout)


def _network_skip(e: UserError) -> None:
    if any(w in str(e) for w in ("Failed to fetch", "Temporary failure resolving",
                                 "Could not connect")):
        pytest.skip(f"prerequisite missing: the Debian archive is unreachable: {e}")


@pytest.fixture(scope="module")
def generic() -> KernelTree:
    """Debian 12's generic-flavour kernel, unpacked (root/boot, root/lib/modules)."""
    try:
        tree = debian.fetch("bookworm", ["linux-image-amd64"], paths.cache_root() / GENERIC_DIR,
                            keep=("linux-image-*",), show_progress=False)
    except UserError as e:
        _network_skip(e)
        raise
    k = KernelTree.find(tree.root)
    assert k.release.endswith("-amd64") and "cloud" not in k.release
    return k


@pytest.fixture(scope="module")
def generic_headers(generic) -> Path:
    tree = debian.Tree.load(paths.cache_root() / GENERIC_DIR)
    version = tree.package(f"linux-image-{generic.release}").version
    try:
        return kmod.prepare_headers("bookworm", generic.release, version, paths.cache_root())
    except UserError as e:
        _network_skip(e)
        raise


def root_of(k: KernelTree) -> Path:
    return k.vmlinuz.parent.parent


def last_error(p: subprocess.CompletedProcess) -> str:
    return p.stderr.strip().splitlines()[-1]


# -- failure paths that stop before anything boots


def test_a_missing_kernel_is_one_line(tmp_path):
    p = vuser("run", "--kernel", str(tmp_path / "bzImage"), "--test", "environment")
    assert p.returncode == 1
    assert p.stderr.strip() == f"vuser: error: kernel {tmp_path / 'bzImage'} does not exist"


def test_a_modules_tree_that_does_not_match_is_one_line(generic, tmp_path):
    cloud = KernelTree.find(paths.cache_root() / "debian-bookworm")  # the image's own kernel
    p = vuser("run", "--kernel", str(generic.vmlinuz), "--modules", str(root_of(cloud)),
              "--test", "environment")
    assert p.returncode == 1 and "booting" not in p.stderr
    assert last_error(p) == (f"vuser: error: modules tree {root_of(cloud)} is for kernel "
                             f"{cloud.release}, not for {generic.release} (the release in the "
                             "bzImage's header)")
    # a folder named for the kernel, holding another kernel's modules
    (tmp_path / "lib" / "modules").mkdir(parents=True)
    (tmp_path / "lib" / "modules" / generic.release).symlink_to(cloud.modules_dir)
    p = vuser("run", "--kernel", str(generic.vmlinuz), "--modules", str(tmp_path),
              "--test", "environment")
    assert p.returncode == 1
    assert re.fullmatch(rf"vuser: error: modules tree {tmp_path} does not match kernel "
                        rf"{re.escape(generic.release)}: its module \w+ was built for "
                        rf"{re.escape(cloud.release)} \(vermagic\)", last_error(p))


def test_kmod_programs_without_a_build_tree_skip_saying_so(generic):
    p = vuser("run", "-q", "--kernel", str(generic.vmlinuz), "--test", "kmod_dma")
    assert p.returncode == 0 and "booting" not in p.stderr
    assert (f"vuser: kmod_dma: vuser_dma.ko is unavailable for kernel {generic.release}: no "
            "build tree given (--kernel-build DIR)") in p.stderr.splitlines()
    assert re.search(r"skip\s+kmod_dma\s+# vuser_dma.ko is unavailable", p.stdout)


# -- boots


@pytest.mark.guest
def test_own_kernel_and_modules_run_environment(generic):
    """The acceptance line: another flavour's kernel and modules pass `environment`."""
    p = vuser("run", "--kernel", str(generic.vmlinuz), "--modules", str(root_of(generic)),
              "--test", "environment")
    assert p.returncode == 0, p.stderr[-3000:]
    assert f"booting kernel {generic.release} " in p.stderr
    assert f"# kernel {generic.release}" in p.stdout  # uname -r, inside the guest
    assert re.search(r"pass\s+environment\s+6 cases passed", p.stdout)
    # only the modules the run needs are in the initramfs
    img = build_custom_image(LocalKernel.find(generic.vmlinuz, root_of(generic)),
                             ["environment"], progress=False)
    assert img.modules == ("uio", "uio_pci_generic")
    kos = sorted(e.name for e in read_newc(img.initrd.read_bytes()) if e.name.endswith(".ko"))
    assert kos == ["lib/modules/uio.ko", "lib/modules/uio_pci_generic.ko"]
    assert json.loads((img.initrd.parent / "image.json").read_text())["kernel_path"] == \
        str(generic.vmlinuz)
    # the same image from Python: build_image(kernel=PATH) (modules found beside it)
    assert build_image(["environment"], progress=False, kernel=str(generic.vmlinuz)).key == img.key


@pytest.mark.guest
def test_a_kernel_without_a_required_option(generic, tmp_path):
    """environment is refused in one line naming the option; kernel_iommu still runs."""
    (tmp_path / "lib" / "modules").mkdir(parents=True)
    (tmp_path / "lib" / "modules" / generic.release).symlink_to(generic.modules_dir)
    (tmp_path / "boot").mkdir()
    config = generic.config.read_text().replace("CONFIG_UIO_PCI_GENERIC=m",
                                                "# CONFIG_UIO_PCI_GENERIC is not set")
    (tmp_path / "boot" / f"config-{generic.release}").write_text(config)
    p = vuser("run", "-q", "--kernel", str(generic.vmlinuz), "--modules", str(tmp_path),
              "--test", "environment", "--test", "kernel_iommu")
    assert p.returncode == 1
    assert (f"vuser: environment needs kernel options that kernel {generic.release} lacks: "
            "CONFIG_UIO_PCI_GENERIC=n (needs m/y)") in p.stderr.splitlines()
    assert "tests: kernel_iommu" in p.stderr  # the other program boots
    assert re.search(r"fail\s+environment\s+# needs kernel options", p.stdout)
    assert re.search(r"pass\s+kernel_iommu\s+\d+ cases passed", p.stdout)


@pytest.mark.guest
def test_vuser_dma_is_built_against_the_given_build_tree(generic, generic_headers):
    p = vuser("run", "-q", "--kernel", str(generic.vmlinuz), "--modules", str(root_of(generic)),
              "--kernel-build", str(generic_headers), "--test", "kmod_dma")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "vuser_dma.ko is unavailable" not in p.stderr
    assert re.search(r"pass\s+kmod_dma\s+9 cases passed", p.stdout)


def run_on_debian(suite: str, *args: str) -> subprocess.CompletedProcess:
    """``vuser run --kernel debian:SUITE ARGS``; a skip only when the archive is unreachable."""
    p = vuser("run", "--kernel", f"debian:{suite}", *args)
    if p.returncode != 0 and "Temporary failure resolving" in p.stderr:
        pytest.skip(f"prerequisite missing: the Debian archive is unreachable: {p.stderr[-300:]}")
    return p


@pytest.mark.guest
@pytest.mark.parametrize("suite,major", [("trixie", "6.12."), ("sid", "7.")])
def test_debian_kernels_run_environment(suite, major):
    p = run_on_debian(suite, "--test", "environment")
    assert p.returncode == 0, p.stderr[-3000:]
    assert f"booting kernel {major}" in p.stderr
    assert re.search(rf"# kernel {re.escape(major)}\S+-cloud-amd64", p.stdout)


@pytest.mark.guest
@pytest.mark.parametrize("suite,major", [("trixie", "6.12."), ("sid", "7.")])
def test_a_new_users_first_try_prints_the_kernel_release(suite, major):
    """The issue's first try: ``vuser run --kernel debian:SUITE --exec 'uname -r'``."""
    p = run_on_debian(suite, "--exec", "uname -r")
    assert p.returncode == 0, p.stderr[-3000:]
    assert re.fullmatch(rf"{re.escape(major)}\S+-cloud-amd64\n", p.stdout), p.stdout


def test_exec_with_a_live_9p_share_on_the_generic_flavour(generic, tmp_path):
    """The generic flavour has 9p (the cloud one does not): --share mounts the host
    directory itself, so what the guest writes there is on the host afterwards."""
    share = tmp_path / "share"
    share.mkdir()
    (share / "in.txt").write_text("from the host\n")
    p = vuser("run", "--kernel", str(generic.vmlinuz), "--modules", str(root_of(generic)),
              "--share", str(share),
              "--exec", f"cat {share}/in.txt && uname -r > {share}/out.txt", timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout == "from the host\n"
    assert f"--share {share}: 9p mount at {share}" in p.stderr
    assert (share / "out.txt").read_text().strip() == generic.release
