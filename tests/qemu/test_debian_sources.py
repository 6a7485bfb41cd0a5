"""vuser.debian without network: the host's apt sources, errors, the tree manifest."""

from __future__ import annotations

import json

import pytest

from vuser import debian
from vuser.debian import AptSource, Tree, archive_source, parse_deb822, parse_one_line
from vuser.errors import UserError

DEB822 = """\
Types: deb deb-src
# a comment
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main contrib
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main

Types: deb
Enabled: no
URIs: http://disabled.example/debian
Suites: bookworm
Components: main

Types: deb
URIs: http://inline.example/debian
Suites: sid
Components: main
Signed-By:
 -----BEGIN PGP PUBLIC KEY BLOCK-----
 .
 abc
 -----END PGP PUBLIC KEY BLOCK-----
"""

ONE_LINE = """\
# deb http://commented.example/debian bookworm main
deb [arch=amd64 signed-by=/k.gpg] http://one.example/debian bookworm main non-free
deb-src http://one.example/debian bookworm main
deb http://security.example/debian-security bookworm-security main
deb [broken http://bad.example bookworm main
"""


def test_deb822_entries_and_fields():
    got = parse_deb822(DEB822, "x.sources")
    assert [(s.uri, s.suites, s.components, s.signed_by) for s in got] == [
        ("http://mirror.example/debian", ("bookworm", "bookworm-updates"), ("main", "contrib"),
         "/usr/share/keyrings/debian-archive-keyring.gpg"),
        ("http://mirror.example/debian-security", ("bookworm-security",), ("main",), None),
        # an inline key is not carried over: the system's trust applies
        ("http://inline.example/debian", ("sid",), ("main",), None),
    ]
    assert all(s.origin == "x.sources" for s in got)


def test_one_line_entries_and_options():
    got = parse_one_line(ONE_LINE)
    assert [(s.uri, s.suites, s.components, s.signed_by) for s in got] == [
        ("http://one.example/debian", ("bookworm",), ("main", "non-free"), "/k.gpg"),
        ("http://security.example/debian-security", ("bookworm-security",), ("main",), None),
    ]


def test_host_sources_reads_both_forms_and_ignores_other_files(tmp_path):
    (tmp_path / "sources.list").write_text(ONE_LINE)
    parts = tmp_path / "sources.list.d"
    parts.mkdir()
    (parts / "a.sources").write_text(DEB822)
    (parts / "b.list.disabled").write_text("deb http://never.example/debian bookworm main\n")
    uris = [s.uri for s in debian.host_sources(tmp_path)]
    assert "http://one.example/debian" in uris and "http://mirror.example/debian" in uris
    assert "http://never.example/debian" not in uris


def test_archive_source_prefers_the_host_suite(monkeypatch):
    monkeypatch.delenv(debian.URI_ENV, raising=False)
    srcs = parse_deb822(DEB822)
    assert archive_source(srcs, "bookworm").uri == "http://mirror.example/debian"
    # without a codename: a plain suite, not -security
    sec_first = [srcs[1], srcs[0]]
    assert archive_source(sec_first, None).uri == "http://mirror.example/debian"


def test_archive_source_env_override_and_none_found(monkeypatch):
    monkeypatch.setenv(debian.URI_ENV, "http://override.example/debian")
    assert archive_source([], "bookworm").uri == "http://override.example/debian"
    monkeypatch.delenv(debian.URI_ENV)
    with pytest.raises(UserError, match="no Debian archive with 'main'"):
        archive_source([AptSource("http://x", ("bookworm",), ("contrib",))], "bookworm")


def test_host_codename(tmp_path):
    p = tmp_path / "os-release"
    p.write_text('NAME="Debian"\nVERSION_CODENAME=bookworm\n')
    assert debian.host_codename(p) == "bookworm"
    p.write_text('NAME="Other"\n')
    assert debian.host_codename(p) is None
    assert debian.host_codename(tmp_path / "missing") is None


@pytest.mark.parametrize("output, expected", [
    ("E: Unable to locate package nosuch\n", "what: Unable to locate package nosuch"),
    ("W: GPG error: http://x sid InRelease: The following signatures couldn't be verified "
     "because the public key is not available: NO_PUBKEY 0123\nE: The repository 'x' is not signed.",
     "what: GPG error: http://x sid InRelease: The following signatures couldn't be verified "
     "because the public key is not available: NO_PUBKEY 0123"),
    ("Err:1 http://127.0.0.1:9/debian sid InRelease\n  Could not connect to 127.0.0.1:9\n"
     "W: Failed to fetch http://127.0.0.1:9/debian/dists/sid/InRelease  Could not connect\n"
     "E: Some index files failed to download.",
     "what: Failed to fetch http://127.0.0.1:9/debian/dists/sid/InRelease  Could not connect"),
    ("", "what: no output"),
])
def test_apt_errors_become_one_line(output, expected):
    msg = str(debian._apt_error(output, "what"))
    assert msg == expected and "\n" not in msg


def _tree(tmp_path):
    root = tmp_path / "root"
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/tool").write_bytes(b"x" * 100)
    (root / "usr/bin/link").symlink_to("tool")
    tree = Tree(root, "sid", ["tool"], [debian.DebPackage("tool", "1:1.0-1", "tool_1%3a1.0-1_amd64.deb", 10)],
                debian.tree_files(root))
    tree.write_manifest()
    return root


def test_manifest_round_trip_and_intact_tree(tmp_path):
    root = _tree(tmp_path)
    tree = Tree.load(root)
    assert tree.files == {"usr/bin/tool": 100, "usr/bin/link": -1}
    assert tree.package("tool").version == "1:1.0-1"
    assert tree.problems() == []


@pytest.mark.parametrize("damage, problem", [
    (lambda r: (r / "usr/bin/tool").write_bytes(b"x" * 10), "usr/bin/tool is 10 bytes, expected 100"),
    (lambda r: (r / "usr/bin/tool").unlink(), "usr/bin/tool missing"),
    (lambda r: ((r / "usr/bin/link").unlink(), (r / "usr/bin/link").write_text("")),
     "usr/bin/link not a symlink"),
])
def test_damaged_tree_is_detected(tmp_path, damage, problem):
    root = _tree(tmp_path)
    damage(root)
    assert Tree.load(root).problems() == [problem]


@pytest.mark.parametrize("garble", [
    lambda t: t[: len(t) // 2],
    lambda t: "not json",
    lambda t: json.dumps({**json.loads(t), "version": 99}),
    lambda t: json.dumps({**json.loads(t), "packages": [["a"]]}),
])
def test_garbled_manifest_reads_as_absent(tmp_path, garble):
    root = _tree(tmp_path)
    m = root / debian.MANIFEST
    m.write_text(garble(m.read_text()))
    assert Tree.load(root) is None


def test_missing_tools_are_one_line_errors(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(UserError, match=r"^dpkg-deb not found: install apt and dpkg"):
        debian.extract([], debian.Path("/tmp/never"))


def test_cache_root_env(monkeypatch, tmp_path):
    monkeypatch.setenv(debian.CACHE_ENV, str(tmp_path / "c"))
    assert debian.cache_root() == tmp_path / "c"
    monkeypatch.delenv(debian.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert debian.cache_root() == tmp_path / "x" / "vuser"


def test_lists_are_fresh_only_for_the_same_sources_and_recently(tmp_path):
    src = AptSource("http://mirror.example/debian", ("bookworm",), ("main",))
    repo = debian.AptRepo("sid", tmp_path / "apt", src)
    assert not repo.fresh()
    repo._write_config()
    (tmp_path / "apt/lists/mirror_dists_sid_main_binary-amd64_Packages.lz4").write_bytes(b"x")
    (tmp_path / "apt" / debian.UPDATE_STAMP).write_text(repo._sources_line())
    assert repo.fresh()
    assert not repo.fresh(max_age_s=0)
    other = debian.AptRepo("sid", tmp_path / "apt", src, signed_by=["/other.gpg"])
    assert not other.fresh()  # updated with other keys: not trusted as fresh
