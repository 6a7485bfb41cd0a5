"""vuser.guest.toolchain: another suite's programs wrapped to run through its own loader,
and the headers' Makefile pointed at the unpacked tree.

Offline: a fake root holds the host's own loader and libraries (standing in
for a newer suite's), a dynamically linked program, a shared library, a script
and a symlink. The sid toolchain itself is exercised by the sid image build
(tests/guest/test_guest_kernel_choice.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from guest_helpers import need_gcc
from vuser import debian
from vuser.errors import UserError
from vuser.guest import toolchain

HOST_LOADER = Path("/lib64/ld-linux-x86-64.so.2")
HOST_LIBS = Path("/lib/x86_64-linux-gnu")


@pytest.fixture
def root(tmp_path) -> debian.Tree:
    if not HOST_LOADER.exists() or not (HOST_LIBS / "libc.so.6").exists():
        pytest.skip(f"prerequisite missing: an x86-64 glibc host ({HOST_LOADER})")
    root = tmp_path / "root"
    (root / "usr/lib64").mkdir(parents=True)
    shutil.copy2(HOST_LOADER, root / "usr/lib64/ld-linux-x86-64.so.2")
    (root / "usr/lib/x86_64-linux-gnu").mkdir(parents=True)
    shutil.copy2(HOST_LIBS / "libc.so.6", root / "usr/lib/x86_64-linux-gnu/libc.so.6")
    kbuild = root / "usr/lib/linux-kbuild-7.2/scripts"
    kbuild.mkdir(parents=True)
    src = tmp_path / "argv0.c"
    src.write_text('#include <stdio.h>\nint main(int c, char **v) {'
                   ' printf("%s|%s\\n", v[0], c > 1 ? v[1] : ""); return 3; }\n')
    subprocess.run([need_gcc(), "-o", str(kbuild / "fixdep"), str(src)], check=True)
    (root / "usr/bin").mkdir()
    (root / "usr/bin/x86_64-linux-gnu-ld").symlink_to("../lib/linux-kbuild-7.2/scripts/fixdep")
    (root / "usr/bin/linux-version").write_text("#!/bin/sh\necho perl-ish\n")
    (root / "usr/bin/linux-version").chmod(0o755)
    shutil.copy2(HOST_LIBS / "libc.so.6", root / "usr/bin/libfake.so.1")
    tree = debian.Tree(root, "sid", ["x"], [], debian.tree_files(root))
    tree.write_manifest()
    return tree


def test_programs_run_through_the_roots_loader_with_their_name(root):
    assert toolchain.wrap_executables(root) == 1
    fixdep = root.root / "usr/lib/linux-kbuild-7.2/scripts/fixdep"
    assert fixdep.with_name("fixdep.elf").is_file()
    text = fixdep.read_text()
    assert text.startswith("#!/bin/sh\nexec ") and str(root.root / "usr/lib64") in text
    p = subprocess.run([str(fixdep), "a b"], capture_output=True, text=True)
    # argv[0] is the name it was called by (gcc and kbuild's dispatchers rely on it)
    assert (p.returncode, p.stdout) == (3, f"{fixdep}|a b\n")
    via_link = root.root / "usr/bin/x86_64-linux-gnu-ld"
    p = subprocess.run([str(via_link)], capture_output=True, text=True)
    assert (p.returncode, p.stdout) == (3, f"{via_link}|\n")
    # scripts, symlinks and shared libraries are left as they are
    assert (root.root / "usr/bin/linux-version").read_text().endswith("perl-ish\n")
    assert via_link.is_symlink()
    assert (root.root / "usr/bin/libfake.so.1").read_bytes()[:4] == b"\x7fELF"
    # the tree is still intact for vuser.debian, and a second pass changes nothing
    loaded = debian.Tree.load(root.root)
    assert loaded.problems() == []
    assert toolchain.wrap_executables(loaded) == 0


def test_a_root_without_a_loader_is_a_clear_error(root):
    os.unlink(root.root / "usr/lib64/ld-linux-x86-64.so.2")
    with pytest.raises(UserError, match="no ld-linux-x86-64.so.2"):
        toolchain.wrap_executables(root)


@pytest.mark.parametrize("text", [
    "include /usr/src/linux-headers-6.1.0-50-common/Makefile\n",
    "KBUILD_OUTPUT=/usr/src/linux-headers-7.2.13+deb14-cloud-amd64\n"
    "include /usr/src/linux-headers-7.2.13+deb14-common/Makefile\n",
])
def test_headers_makefile_points_at_the_unpacked_tree(tmp_path, text):
    arch = tmp_path / "usr/src/arch"
    arch.mkdir(parents=True)
    (arch / "Makefile").write_text(text)
    tree = debian.Tree(tmp_path, "sid", ["x"], [], debian.tree_files(tmp_path))
    toolchain.fix_headers_makefile(tree, arch)
    fixed = (arch / "Makefile").read_text()
    assert fixed == text.replace("/usr/src/", f"{tmp_path.resolve()}/usr/src/")
    assert debian.Tree.load(tmp_path).problems() == []
    toolchain.fix_headers_makefile(tree, arch)  # idempotent
    assert (arch / "Makefile").read_text() == fixed


def test_unexpected_headers_makefile_is_refused(tmp_path):
    arch = tmp_path / "arch"
    arch.mkdir()
    (arch / "Makefile").write_text("all:\n\trm -rf /\n")
    tree = debian.Tree(tmp_path, "sid", ["x"], [], {})
    with pytest.raises(UserError, match="expected Debian's include"):
        toolchain.fix_headers_makefile(tree, arch)
