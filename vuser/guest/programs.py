"""The guest test programs: ``guest-tests/*.c`` built static with the host's gcc.

Each top-level ``guest-tests/<name>.c`` is one test program; it declares its
cases with ``VUSER_CASES`` (``guest-tests/lib/vuser_test.h``).
``guest-tests/tools/<name>.c`` are helpers the guest's ``/init`` uses (such
as ``debug-exit``), not tests. ``guest-tests/lib/*.c`` is libvuser, the guest
driver library (declared in ``lib/vuser.h``): it is archived into
``libvuser.a`` and linked into every test program. Everything is built with
``gcc -static -O2`` into the cache, keyed by the sources, the compiler and the
flags, and every binary is checked with ``elfcases`` (static x86-64, cases
readable).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from vuser.errors import UserError
from vuser.guest import elfcases, paths

__all__ = ["CFLAGS", "GuestProgram", "ProgramSet", "build_programs", "cached_programs",
           "source_digest", "sources"]

CFLAGS = ("-static", "-O2", "-g0", "-Wall", "-Wextra", "-std=gnu11")
_RECIPE = 3  # bump when _compile() changes how binaries are made
_STAMP = "programs.ok"


@dataclass(frozen=True)
class GuestProgram:
    name: str
    path: Path
    cases: tuple[str, ...]


@dataclass(frozen=True)
class ProgramSet:
    digest: str
    tests: dict[str, GuestProgram]
    tools: dict[str, Path]


def sources(root: Path = paths.GUEST_TESTS) -> dict[str, list[Path]]:
    """``{"tests": [...], "tools": [...], "lib": [...]}`` under ``root``."""
    if not root.is_dir():
        raise UserError(f"{root}: no guest-tests folder")
    return {
        "tests": sorted(root.glob("*.c")),
        "tools": sorted((root / "tools").glob("*.c")),
        "lib": sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in (".h", ".c")
                      and p.parent != root and p.parent != root / "tools"),
    }


def _gcc() -> str:
    gcc = os.environ.get("CC") or shutil.which("gcc")
    if not gcc or not shutil.which(gcc):
        raise UserError("gcc not found: the guest tests are built with the host's gcc "
                        "(apt-get install gcc libc6-dev)")
    return gcc


def _compiler_id(gcc: str) -> str:
    out = []
    for flag in ("-dumpfullversion", "-dumpmachine"):
        p = subprocess.run([gcc, flag], capture_output=True, text=True)
        if p.returncode != 0:
            raise UserError(f"{gcc} does not run: {p.stderr.strip() or p.returncode}")
        out.append(p.stdout.strip())
    version, machine = out
    if machine not in ("x86_64-linux-gnu", "x86_64-pc-linux-gnu"):
        raise UserError(f"{gcc} targets {machine or '?'}, the guest is x86_64-linux-gnu")
    return f"gcc {version} {machine}"


def source_digest(root: Path = paths.GUEST_TESTS, compiler: str = "") -> str:
    """sha256 over every source file (path and content), the compiler and the flags."""
    h = hashlib.sha256()
    h.update(f"{_RECIPE}\0{compiler}\0{' '.join(CFLAGS)}\0".encode())
    for kind, files in sorted(sources(root).items()):
        for p in files:
            h.update(f"{kind}\0{p.relative_to(root)}\0".encode())
            h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def _compile(gcc: str, src: Path, out: Path, root: Path, libs: tuple[Path, ...] = (),
             compile_only: bool = False) -> None:
    # -ffile-prefix-map: __FILE__ in diagnostics says guest-tests/x.c, wherever the tree is.
    flags = [f for f in CFLAGS if not (compile_only and f == "-static")]
    cmd = [gcc, *flags, f"-ffile-prefix-map={root}=guest-tests", "-I", str(root),
           *(["-c"] if compile_only else []), "-o", str(out), str(src), *map(str, libs)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        tail = "\n".join(p.stderr.strip().splitlines()[-15:])
        raise UserError(f"building guest test {src.relative_to(root)} failed:\n{tail}")


def _build_library(gcc: str, root: Path, out: Path) -> tuple[Path, ...]:
    """``root/lib/*.c`` compiled and archived into ``out/libvuser.a`` (none: no archive)."""
    srcs = sorted((root / "lib").glob("*.c"))
    if not srcs:
        return ()
    objs = []
    (out / "obj").mkdir()
    for src in srcs:
        obj = out / "obj" / f"{src.stem}.o"
        _compile(gcc, src, obj, root, compile_only=True)
        objs.append(obj)
    archive = out / "libvuser.a"
    ar = shutil.which("ar") or "ar"
    p = subprocess.run([ar, "rcs", str(archive), *map(str, objs)], capture_output=True, text=True)
    if p.returncode != 0:
        raise UserError(f"ar libvuser.a failed: {p.stderr.strip() or p.returncode}")
    shutil.rmtree(out / "obj")
    return (archive,)


def _load(out: Path, names: dict[str, list[Path]], digest: str) -> ProgramSet:
    tests = {}
    for src in names["tests"]:
        binary = out / "tests" / src.stem
        tests[src.stem] = GuestProgram(src.stem, binary, tuple(elfcases.read_cases(binary)))
    tools = {}
    for src in names["tools"]:
        binary = out / "tools" / src.stem
        try:
            with binary.open("rb") as f:
                elfcases.check_static_x86_64(ELFFile(f), binary)
        except ELFError as e:
            raise elfcases.BadGuestBinary(f"{binary}: not a readable ELF file ({e})") from None
        tools[src.stem] = binary
    return ProgramSet(digest, tests, tools)


def _locate(root: Path, cache: Path | None) -> tuple[str, dict[str, list[Path]], str, Path]:
    names = sources(root)
    if not names["tests"]:
        raise UserError(f"{root}: no guest test (*.c)")
    gcc = _gcc()
    digest = source_digest(root, _compiler_id(gcc))
    return gcc, names, digest, (cache or paths.cache_root()) / "programs" / digest[:20]


def cached_programs(root: Path = paths.GUEST_TESTS, cache: Path | None = None) -> ProgramSet | None:
    """The built programs for the current sources if cached and intact; never builds.

    ``UserError`` if they cannot be built here at all (no gcc, no sources).
    """
    _, names, digest, out = _locate(root, cache)
    if not (out / _STAMP).is_file():
        return None
    try:
        return _load(out, names, digest)
    except (UserError, OSError):
        return None


def build_programs(root: Path = paths.GUEST_TESTS, cache: Path | None = None,
                   status: Callable[[str], None] | None = None) -> ProgramSet:
    """Build (or take from the cache) every guest test and tool under ``root``.

    ``status`` is an optional callable given a one-line description of slow work.
    """
    gcc, names, digest, out = _locate(root, cache)
    if (out / _STAMP).is_file():
        try:
            return _load(out, names, digest)
        except (UserError, OSError):
            shutil.rmtree(out, ignore_errors=True)  # a damaged cache: build again
    if status:
        status(f"building {len(names['tests'])} guest test(s) with {Path(gcc).name}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    try:
        libs = _build_library(gcc, root, tmp)
        for kind in ("tests", "tools"):
            (tmp / kind).mkdir()
            for src in names[kind]:
                _compile(gcc, src, tmp / kind / src.stem, root, libs if kind == "tests" else ())
        _load(tmp, names, digest)  # check before committing to the cache
        (tmp / _STAMP).write_text(digest + "\n")
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _load(out, names, digest)
