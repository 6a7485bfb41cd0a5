"""The provisioned QEMU runtime: idempotence and a corrupt cache.

Each test works on a private cache seeded with the packages and apt lists of
the main cache (hard links for the .deb files, never modified in place), so the
real runtime is never touched.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

from vuser import debian
from vuser.errors import UserError
from vuser.qemu import provision
from vuser.qemu.find import find_qemu

pytestmark = pytest.mark.timeout(300)

UNREACHABLE = "http://127.0.0.1:9/debian"


@pytest.fixture(scope="module")
def base(qemu_bin, tmp_path_factory):
    """A private cache with a runtime unpacked from the main cache's packages (once per module)."""
    main = debian.cache_root() / "debian" / provision.SUITE
    if qemu_bin.source != "provisioned" or not (main / "debs").is_dir():
        pytest.skip(f"prerequisite missing: a provisioned QEMU in the main cache (using {qemu_bin.source})")
    cache = tmp_path_factory.mktemp("base") / "cache"
    dst = cache / "debian" / provision.SUITE
    shutil.copytree(main / "debs", dst / "debs", copy_function=os.link)
    shutil.copytree(main / "apt", dst / "apt", ignore=shutil.ignore_patterns("partial", "auxfiles"))
    qemu = provision.provision_qemu(cache, show_progress=False)
    assert qemu.source == "provisioned" and qemu.version_tuple >= (10, 1)
    return cache


@pytest.fixture
def seeded(base, tmp_path, monkeypatch):
    """A copy of ``base`` for one test to damage (packages hard-linked, the tree copied)."""
    cache = tmp_path / "cache"
    shutil.copytree(base, cache, symlinks=True,
                    ignore=lambda d, names: ["debs"] if d.endswith(f"/{provision.SUITE}") else [])
    shutil.copytree(base / "debian" / provision.SUITE / "debs",
                    cache / "debian" / provision.SUITE / "debs", copy_function=os.link)
    for var in ("VUSER_QEMU", "VUSER_NO_PROVISION"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("VUSER_CACHE", str(cache))
    monkeypatch.setenv("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    return cache


def test_provisioned_runtime_is_reused_without_network(seeded, monkeypatch):
    monkeypatch.setenv("VUSER_APT_URI", UNREACHABLE)
    root = provision.runtime_root(seeded)
    before = (root / debian.MANIFEST).stat().st_mtime_ns
    q = find_qemu(show_progress=False)
    assert q.source == "provisioned" and q.path == root / "usr/bin/qemu-system-x86_64"
    assert (root / debian.MANIFEST).stat().st_mtime_ns == before  # not unpacked again


def test_truncated_library_is_detected_and_unpacked_again_offline(seeded, monkeypatch):
    monkeypatch.setenv("VUSER_APT_URI", UNREACHABLE)
    root = provision.runtime_root(seeded)
    libc = root / "usr/lib/x86_64-linux-gnu/libc.so.6"
    size = libc.stat().st_size
    with open(libc, "r+b") as f:
        f.truncate(size // 2)
    assert provision.provisioned_qemu(seeded) is None
    q = find_qemu(show_progress=False)
    assert q.source == "provisioned" and libc.stat().st_size == size


def test_garbled_binary_of_the_same_size_is_unpacked_again(seeded, monkeypatch):
    monkeypatch.setenv("VUSER_APT_URI", UNREACHABLE)
    binary = provision.runtime_root(seeded) / "usr/bin/qemu-system-x86_64"
    data = bytearray(binary.read_bytes())
    data[:64] = b"\0" * 64  # the ELF header
    binary.write_bytes(bytes(data))
    assert provision.provisioned_qemu(seeded) is None  # the file check passes, the probe does not
    q = provision.provision_qemu(seeded, show_progress=False)
    assert q.path == binary and binary.read_bytes()[:4] == b"\x7fELF"


def test_garbled_manifest_is_provisioned_again(seeded):
    manifest = provision.runtime_root(seeded) / debian.MANIFEST
    manifest.write_text(manifest.read_text()[:100])
    q = provision.provision_qemu(seeded, show_progress=False)
    assert q.source == "provisioned"
    assert json.loads(manifest.read_text())["suite"] == provision.SUITE


def test_missing_loader_is_one_line_error(tmp_path):
    (tmp_path / "usr/bin").mkdir(parents=True)
    with pytest.raises(UserError, match=r"no ld-linux-x86-64\.so\.2 in the unpacked libc6$"):
        provision.runtime_argv(tmp_path)
