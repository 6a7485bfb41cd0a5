"""vuser.guest.elfcases: cases from the .vuser_cases section; only static x86-64 runs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from guest_helpers import compile_c
from vuser.guest import paths
from vuser.guest.elfcases import BadGuestBinary, read_cases

WITH_CASES = """
#include "lib/vuser.h"
static enum vt_result alpha(void) { return VT_PASS; }
static enum vt_result beta_2(void) { return VT_PASS; }
static enum vt_result gamma(void) { VT_CHECK(1 == 2, "never"); return VT_PASS; }
VUSER_CASES(alpha, beta_2, gamma)
"""


def include() -> list[str]:
    """The include path and libvuser's sources (linked with the program)."""
    return [f"-I{paths.GUEST_TESTS}", *map(str, sorted((paths.GUEST_TESTS / "lib").glob("*.c")))]


def test_static_binary_with_cases(tmp_path):
    binary = compile_c(tmp_path, WITH_CASES, "cases", "-static", "-O2", *include())
    assert read_cases(binary) == ["alpha", "beta_2", "gamma"]


def test_dynamic_binary_rejected(tmp_path):
    binary = compile_c(tmp_path, WITH_CASES, "dynamic", "-O2", *include())
    with pytest.raises(BadGuestBinary, match="dynamically linked .*interpreter"):
        read_cases(binary)


def test_static_binary_without_cases_rejected(tmp_path):
    binary = compile_c(tmp_path, "int main(void) { return 0; }", "plain", "-static")
    with pytest.raises(BadGuestBinary, match="no .vuser_cases section"):
        read_cases(binary)


@pytest.mark.parametrize("payload, message", [
    (b"ok\\0bad name\\0", "bad case name"),
    (b"dup\\0dup\\0", "declared twice"),
    (b"\\0\\0", "declares no case"),
])
def test_bad_section_contents_rejected(tmp_path, payload, message):
    src = ('__attribute__((section(".vuser_cases"), used)) static const char c[] = "'
           + payload.decode() + '";\nint main(void) { return 0; }\n')
    binary = compile_c(tmp_path, src, "bad", "-static")
    with pytest.raises(BadGuestBinary, match=message):
        read_cases(binary)


def test_not_elf_and_missing_file(tmp_path):
    text = tmp_path / "script.sh"
    text.write_text("#!/bin/sh\n")
    with pytest.raises(BadGuestBinary, match="not a readable ELF"):
        read_cases(text)
    with pytest.raises(BadGuestBinary, match="No such file"):
        read_cases(tmp_path / "missing")


def test_host_tool_is_not_a_guest_binary(tmp_path):
    ls = shutil.which("ls")
    if ls is None:
        pytest.skip("prerequisite missing: no ls binary on this host")
    with pytest.raises(BadGuestBinary, match="dynamically linked|not an x86-64"):
        read_cases(Path(ls))
