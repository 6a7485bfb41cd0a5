"""Read the test cases a guest test binary declares, and check it can run.

The guest's initramfs has no dynamic loader and no libraries, so every test
binary must be a static x86-64 ELF: no ``PT_INTERP`` program header and no
``DT_NEEDED`` entry (a static-pie is fine). The cases are the NUL-separated
names in the ``.vuser_cases`` section, emitted by ``VUSER_CASES(...)`` in
``guest-tests/lib/vuser_test.h``; reading them before boot lets pytest report
a case the guest never got to.
"""

from __future__ import annotations

import re
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile

from vuser.errors import UserError

__all__ = ["CASES_SECTION", "BadGuestBinary", "read_cases", "check_static_x86_64"]

CASES_SECTION = ".vuser_cases"
_CASE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class BadGuestBinary(UserError):
    """A guest test binary the guest cannot run or whose cases are unreadable."""


def check_static_x86_64(elf: ELFFile, path: Path) -> None:
    """Raise ``BadGuestBinary`` unless ``elf`` is a static x86-64 executable."""
    if elf.elfclass != 64 or elf["e_machine"] != "EM_X86_64":
        raise BadGuestBinary(f"{path}: not an x86-64 ELF "
                             f"(class {elf.elfclass}, machine {elf['e_machine']})")
    if elf["e_type"] not in ("ET_EXEC", "ET_DYN"):
        raise BadGuestBinary(f"{path}: not an executable (type {elf['e_type']})")
    for seg in elf.iter_segments():
        if seg["p_type"] == "PT_INTERP":
            interp = seg.get_interp_name()
            raise BadGuestBinary(f"{path}: dynamically linked (interpreter {interp}); "
                                 "build it with -static")
    for sec in elf.iter_sections():
        if isinstance(sec, DynamicSection):
            needed = [t.needed for t in sec.iter_tags("DT_NEEDED")]
            if needed:
                raise BadGuestBinary(f"{path}: needs shared libraries {needed}; "
                                     "build it with -static")


def read_cases(path: str | Path) -> list[str]:
    """The case names ``path`` declares, in order; ``BadGuestBinary`` if it
    is not a static x86-64 ELF or declares no valid, unique cases."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            elf = ELFFile(f)
            check_static_x86_64(elf, path)
            sec = elf.get_section_by_name(CASES_SECTION)
            if sec is None:
                raise BadGuestBinary(f"{path}: no {CASES_SECTION} section "
                                     "(declare the cases with VUSER_CASES)")
            if sec["sh_type"] == "SHT_NOBITS":
                raise BadGuestBinary(f"{path}: {CASES_SECTION} holds no data")
            data = sec.data()
    except OSError as e:
        raise BadGuestBinary(f"{path}: {e.strerror or e}") from None
    except ELFError as e:
        raise BadGuestBinary(f"{path}: not a readable ELF file ({e})") from None
    names = [n for n in data.split(b"\0") if n]
    cases: list[str] = []
    for raw in names:
        name = raw.decode("ascii", "replace")
        if not _CASE_NAME.match(name):
            raise BadGuestBinary(f"{path}: bad case name {name!r} in {CASES_SECTION}")
        if name in cases:
            raise BadGuestBinary(f"{path}: case {name!r} declared twice")
        cases.append(name)
    if not cases:
        raise BadGuestBinary(f"{path}: {CASES_SECTION} declares no case")
    return cases
