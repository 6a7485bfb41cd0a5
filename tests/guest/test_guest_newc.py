"""vuser.guest.newc: what the writer writes parses back, byte for byte."""

from __future__ import annotations

import io
import stat

import pytest

from guest_helpers import read_newc
from vuser.guest.newc import NewcHeader, NewcWriter, write_gzip


def build(fill) -> bytes:
    buf = io.BytesIO()
    w = NewcWriter(buf, mtime=1234)
    fill(w)
    w.close()
    return buf.getvalue()


def test_header_is_110_bytes_of_hex():
    h = NewcHeader.build(ino=1, mode=0o100644, filesize=0x1234, namesize=5)
    raw = h.pack()
    assert len(raw) == 110 and raw.startswith(b"070701")
    assert NewcHeader.unpack(raw).value("filesize") == 0x1234
    with pytest.raises(ValueError):
        NewcHeader.build(ino=1 << 32)
    with pytest.raises(ValueError):
        NewcHeader.build(bogus=1)


def test_entries_round_trip_with_console_and_symlink():
    def fill(w: NewcWriter) -> None:
        w.add_device("dev/console", "c", 5, 1, 0o600)
        w.add_file("init", b"#!/bin/sh\necho hi\n", 0o755)
        w.add_file("bin/busybox", b"\x7fELF" + bytes(range(7)), 0o755)  # odd size: padding
        w.add_symlink("bin/sh", "busybox")
        w.add_file("etc/empty", b"")

    entries = read_newc(build(fill))
    by_name = {e.name: e for e in entries}
    console = by_name["dev/console"]
    assert console.kind == "char" and console.rdev == (5, 1)
    assert stat.S_IMODE(console.mode) == 0o600
    assert by_name["init"].data == b"#!/bin/sh\necho hi\n"
    assert stat.S_IMODE(by_name["init"].mode) == 0o755
    assert by_name["bin/busybox"].data == b"\x7fELF" + bytes(range(7))
    assert by_name["bin/sh"].kind == "symlink" and by_name["bin/sh"].data == b"busybox"
    assert by_name["etc/empty"].data == b""
    # Parents come before children, every inode is unique, nlink is 1.
    names = [e.name for e in entries]
    assert names.index("dev") < names.index("dev/console")
    assert names.index("bin") < names.index("bin/busybox")
    assert by_name["dev"].kind == "dir"
    assert len({e.ino for e in entries}) == len(entries)
    assert all(e.nlink == 1 for e in entries)


def test_gzip_and_deterministic():
    def fill(w: NewcWriter) -> None:
        w.add_file("a/b/c", b"x" * 1000)

    one, two = write_gzip(fill), write_gzip(fill)
    assert one[:2] == b"\x1f\x8b" and one == two
    assert [e.name for e in read_newc(one)] == ["a", "a/b", "a/b/c"]


@pytest.mark.parametrize("name", ["", "/", "..", "a/../b", "."])
def test_bad_names_rejected(name):
    w = NewcWriter(io.BytesIO())
    with pytest.raises(ValueError):
        w.add_file(name, b"")


def test_duplicates_bad_kinds_and_closed_archive_rejected():
    w = NewcWriter(io.BytesIO())
    w.add_file("/init", b"")
    with pytest.raises(ValueError, match="already"):
        w.add_file("init", b"")
    with pytest.raises(ValueError, match="'c' or 'b'"):
        w.add_device("dev/x", "p", 1, 2)
    with pytest.raises(ValueError, match="empty target"):
        w.add_symlink("bin/x", "")
    w.close()
    with pytest.raises(ValueError, match="closed"):
        w.add_file("late", b"")
