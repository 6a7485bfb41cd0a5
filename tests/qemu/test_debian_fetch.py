"""vuser.debian against the Debian archive named by this machine's apt sources.

These need the archive (a package registry this machine reaches); they skip,
saying so, when it cannot be reached. Each uses a private cache under tmp.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from vuser import debian
from vuser.debian import AptSource
from vuser.errors import UserError

pytestmark = pytest.mark.timeout(300)

SMALL = "debian-archive-keyring"  # no dependencies, ~200 kB
UNREACHABLE = [AptSource("http://127.0.0.1:9/debian", ("bookworm",), ("main",))]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A private cache with sid's lists, or a skip if the archive cannot be reached."""
    cache = tmp_path_factory.mktemp("cache")
    src = debian.archive_source(debian.host_sources(), debian.host_codename())
    repo = debian.AptRepo("sid", cache / "debian" / "sid" / "apt", src)
    try:
        repo.update()
    except UserError as e:
        if "NO_PUBKEY" in str(e):
            raise
        pytest.skip(f"prerequisite missing: the Debian archive is unreachable: {e}")
    return cache


def test_fetch_then_refetch_needs_no_network(cache, tmp_path):
    root = tmp_path / "root"
    tree = debian.fetch("sid", [SMALL], root, cache=cache, show_progress=False)
    assert [p.name for p in tree.packages] == [SMALL]
    assert (root / "usr/share/keyrings/debian-archive-keyring.gpg").is_file()
    assert tree.problems() == []
    # Second run: an unreachable archive does not matter, nothing is fetched.
    again = debian.fetch("sid", [SMALL], root, cache=cache, show_progress=False, sources=UNREACHABLE)
    assert again.packages == tree.packages and again.files == tree.files


def test_damaged_tree_is_extracted_again_offline(cache, tmp_path):
    root = tmp_path / "root"
    debian.fetch("sid", [SMALL], root, cache=cache, show_progress=False)
    victim = root / "usr/share/keyrings/debian-archive-keyring.gpg"
    victim.write_bytes(victim.read_bytes()[:10])  # truncated
    (root / "usr/share/doc").rename(tmp_path / "gone")  # and a directory lost
    tree = debian.fetch("sid", [SMALL], root, cache=cache, show_progress=False, sources=UNREACHABLE)
    assert tree.problems() == []
    assert victim.stat().st_size > 10


def test_corrupt_cached_deb_is_one_line_error_then_recovers(cache, tmp_path):
    root = tmp_path / "root"
    tree = debian.fetch("sid", [SMALL], root, cache=cache, show_progress=False)
    deb = cache / "debian" / "sid" / "debs" / tree.packages[0].filename
    deb.write_bytes(b"\0" * deb.stat().st_size)  # same size, garbage
    (root / debian.MANIFEST).unlink()  # force extraction
    with pytest.raises(UserError) as e:
        debian.fetch("sid", [SMALL], root, cache=cache, show_progress=False)
    assert str(e.value).startswith(f"dpkg-deb -x {deb.name}: ")
    assert str(e.value).endswith("(removed from the cache; run again to download it anew)")
    assert not deb.exists() and not root.with_name("root.partial").exists()
    tree = debian.fetch("sid", [SMALL], root, cache=cache, show_progress=False)
    assert tree.problems() == []


def test_unknown_package_is_one_line_error(cache, tmp_path):
    with pytest.raises(UserError, match=r"^cannot resolve no-such-package-vuser in sid: "
                                        r"Unable to locate package no-such-package-vuser$"):
        debian.fetch("sid", ["no-such-package-vuser"], tmp_path / "r", cache=cache, show_progress=False)


def test_unreachable_archive_is_one_line_error(tmp_path):
    with pytest.raises(UserError) as e:
        debian.fetch("sid", [SMALL], tmp_path / "r", cache=tmp_path / "c", show_progress=False,
                     sources=UNREACHABLE)
    msg = str(e.value)
    assert msg.startswith("apt-get update (sid): ") and "127.0.0.1:9" in msg and "\n" not in msg


def test_missing_key_is_fetched_from_the_host_suite(cache, tmp_path):
    """A keyring without the suite's signing keys: apt says NO_PUBKEY, and the
    host suite's debian-archive-keyring (verified by the system keys) is used."""
    old = Path("/usr/share/keyrings/debian-archive-bullseye-stable.gpg")
    if not old.is_file() or not debian.host_codename():
        pytest.skip("prerequisite missing: a Debian host with the bullseye keyring file")
    fresh = tmp_path / "cache"
    tree = debian.fetch("sid", [SMALL], tmp_path / "r", cache=fresh, show_progress=False,
                        signed_by=[str(old)])
    assert tree.package(SMALL) is not None
    keyring = fresh / "debian" / "keyring" / "usr/share/keyrings/debian-archive-keyring.gpg"
    assert keyring.is_file()
    assert str(keyring) in (fresh / "debian/sid/apt/etc/sources.list").read_text()


def test_keep_takes_only_matching_packages_of_the_closure(cache, tmp_path):
    """zlib1g depends on libc6: with keep=["zlib*"] only zlib1g is downloaded and extracted."""
    root = tmp_path / "root"
    tree = debian.fetch("sid", ["zlib1g"], root, cache=cache, show_progress=False, keep=["zlib*"])
    assert [p.name for p in tree.packages] == ["zlib1g"]
    assert not list(root.rglob("libc.so.6"))
    assert "+zlib*" in tree.request
    again = debian.fetch("sid", ["zlib1g"], root, cache=cache, show_progress=False,
                         keep=["zlib*"], sources=UNREACHABLE)
    assert again.packages == tree.packages
