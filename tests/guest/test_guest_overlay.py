"""vuser.guest.overlay: per-run files appended to a cached image's initrd."""

from __future__ import annotations

import gzip
import os
import stat
import zlib

import pytest

from guest_helpers import read_newc
from vuser.errors import UserError
from vuser.guest.overlay import Overlay, concatenate


def members(raw: bytes) -> list[bytes]:
    """Each gzip member of ``raw`` decompressed on its own."""
    out = []
    while raw:
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        out.append(d.decompress(raw))
        raw = d.unused_data
    return out


def test_archive_holds_the_files_with_their_modes_and_parents():
    o = Overlay()
    o.add_file("/opt/a/run.sh", b"#!/bin/sh\necho hi\n", 0o755)
    o.add_file("etc/x.conf", b"k=v\n")
    got = {e.name: e for e in read_newc(o.archive())}
    assert got["opt/a/run.sh"].data == b"#!/bin/sh\necho hi\n"
    assert stat.S_IMODE(got["opt/a/run.sh"].mode) == 0o755
    assert stat.S_ISDIR(got["opt"].mode) and stat.S_ISDIR(got["opt/a"].mode)
    assert got["etc/x.conf"].data == b"k=v\n"
    assert o.archive() == o.archive(), "same input, same bytes"


def test_tree_copy_keeps_files_and_modes_and_leaves_out_symlinks(tmp_path):
    src = tmp_path / "share"
    (src / "sub").mkdir(parents=True)
    (src / "drv.ko").write_bytes(b"\x7fELF")
    (src / "sub" / "t.sh").write_text("exit 3\n")
    os.chmod(src / "sub" / "t.sh", 0o750)
    (src / "link").symlink_to("drv.ko")
    o = Overlay()
    assert o.add_tree(src, "mnt/share") == 4 + 7
    got = {e.name: e for e in read_newc(o.archive())}
    assert got["mnt/share/drv.ko"].data == b"\x7fELF"
    assert stat.S_IMODE(got["mnt/share/sub/t.sh"].mode) == 0o750
    assert "mnt/share/link" not in got


@pytest.mark.parametrize("name", ["", "/", "../etc/passwd", "a/../../b"])
def test_bad_guest_paths_are_one_line(name):
    with pytest.raises(UserError, match="bad guest path"):
        Overlay().add_file(name, b"")


def test_a_missing_share_is_one_line(tmp_path):
    with pytest.raises(UserError, match="is not a directory"):
        Overlay().add_tree(tmp_path / "nope", "mnt")


def test_concatenation_keeps_the_base_and_appends_each_nonempty_overlay(tmp_path):
    base = tmp_path / "initrd.img"
    base.write_bytes(gzip.compress(b"base-archive"))
    one, empty, two = Overlay(), Overlay(), Overlay()
    one.add_file("a", b"1")
    two.add_file("b", b"2")
    out = concatenate(base, [one, empty, two], tmp_path / "run.img")
    parts = members(out.read_bytes())
    assert parts[0] == b"base-archive"
    assert len(parts) == 3
    assert [e.name for e in read_newc(parts[1])] == ["a"]
    assert [e.name for e in read_newc(parts[2])] == ["b"]
