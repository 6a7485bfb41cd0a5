"""The guest test programs: ``guest-tests/*.c`` built static with the host's gcc, one by one.

Each top-level ``guest-tests/<name>.c`` is one test program; it declares its
cases with ``VUSER_CASES`` (``guest-tests/lib/vuser_test.h``).
``guest-tests/tools/<name>.c`` are helpers the guest's ``/init`` uses (such
as ``debug-exit``), not tests. ``guest-tests/lib/*.c`` is libvuser, the guest
driver library (declared in ``lib/vuser.h``): it is archived into
``libvuser.a`` and linked into every test program.

Everything is built with ``gcc -static -O2`` into ``<cache>/programs/``, and
each piece is cached by its own inputs: libvuser by the library's sources;
a program by its source, the files it includes with ``#include "..."``, the
library and its headers; the tools by their sources; all of them also by the
compiler and the flags. So only the programs a run needs are built, and a
program that does not compile fails alone (``BuildFailed``, carrying the
compiler's message) without stopping the others. Every binary is checked
with ``elfcases`` (static x86-64, cases readable).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from vuser.errors import UserError
from vuser.guest import elfcases, paths

__all__ = ["CFLAGS", "BuildFailed", "GuestProgram", "ProgramSet", "build_program",
           "build_programs", "cached_programs", "program_names", "sources"]

CFLAGS = ("-static", "-O2", "-g0", "-Wall", "-Wextra", "-std=gnu11")
_RECIPE = 4  # bump when the build steps change how binaries are made
_STAMP = "built.ok"
_INCLUDE = re.compile(rb'^\s*#\s*include\s*"([^"]+)"', re.M)
_TAIL_LINES = 15  # of the compiler's message


class BuildFailed(UserError):
    """A guest program (or libvuser, which every program needs) did not build."""


@dataclass(frozen=True)
class GuestProgram:
    name: str
    path: Path
    cases: tuple[str, ...]


@dataclass(frozen=True)
class ProgramSet:
    """Built programs; ``failed``: program -> why it did not build (the compiler's message).

    ``digest`` identifies the tools (what a guest image holds of ``guest-tests``).
    """

    digest: str
    tests: dict[str, GuestProgram]
    tools: dict[str, Path]
    failed: dict[str, str] = field(default_factory=dict)


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


def program_names(root: Path = paths.GUEST_TESTS) -> list[str]:
    """The test programs under ``root`` (``<name>.c``), built or not."""
    return [p.stem for p in sources(root)["tests"]]


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


def _included(src: Path, root: Path) -> list[Path]:
    """``src`` and the files under ``root`` it includes with ``#include "..."``, transitively."""
    seen: dict[Path, None] = {}
    todo = [src]
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen[f] = None
        try:
            text = f.read_bytes()
        except OSError:
            continue
        for m in _INCLUDE.finditer(text):
            name = m.group(1).decode(errors="replace")
            for base in (f.parent, root):
                cand = (base / name).resolve()
                if cand.is_file() and cand.is_relative_to(root.resolve()):
                    todo.append(cand)
                    break
    return list(seen)


def _atomic_dir(out: Path, fill: Callable[[Path], None]) -> None:
    """Fill a fresh folder next to ``out`` and move it there (another process may win)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    try:
        fill(tmp)
        shutil.rmtree(out, ignore_errors=True)
        try:
            tmp.rename(out)
        except OSError:
            if not (out / _STAMP).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class _Builder:
    """The compiler, the source tree and the cache; builds and finds each piece."""

    def __init__(self, root: Path, cache: Path | None) -> None:
        self.root = root
        self.names = sources(root)
        self.gcc = _gcc()
        self.compiler = _compiler_id(self.gcc)
        self.out = (cache or paths.cache_root()) / "programs"

    def _digest(self, kind: str, files: Iterable[Path], *extra: str) -> str:
        h = hashlib.sha256()
        h.update(f"{_RECIPE}\0{self.compiler}\0{' '.join(CFLAGS)}\0{kind}\0".encode())
        for e in extra:
            h.update(f"{e}\0".encode())
        for p in sorted(set(files)):
            h.update(f"{p.relative_to(self.root.resolve())}\0".encode())
            h.update(hashlib.sha256(p.read_bytes()).digest())
        return h.hexdigest()

    @cached_property
    def lib_digest(self) -> str:
        return self._digest("lib", (p.resolve() for p in self.names["lib"]))

    def program_digest(self, name: str) -> str:
        src = (self.root / f"{name}.c").resolve()
        return self._digest(f"test {name}", _included(src, self.root), self.lib_digest)

    @cached_property
    def tools_digest(self) -> str:
        return self._digest("tools", (p.resolve() for p in self.names["tools"]))

    def compile(self, src: Path, out: Path, libs: tuple[Path, ...] = (),
                compile_only: bool = False, what: str = "guest test") -> None:
        # -ffile-prefix-map: __FILE__ in diagnostics says guest-tests/x.c, wherever the tree is.
        flags = [f for f in CFLAGS if not (compile_only and f == "-static")]
        cmd = [self.gcc, *flags, f"-ffile-prefix-map={self.root}=guest-tests",
               "-I", str(self.root), *(["-c"] if compile_only else []), "-o", str(out),
               str(src), *map(str, libs)]
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            msg = (p.stderr.strip() or p.stdout.strip() or f"{self.gcc} exited {p.returncode}")
            msg = msg.replace(f"{self.root}/", "guest-tests/")
            tail = "\n".join(msg.splitlines()[-_TAIL_LINES:])
            raise BuildFailed(f"building {what} {src.relative_to(self.root)} failed:\n{tail}")

    @cached_property
    def library(self) -> tuple[Path, ...]:
        """``lib/*.c`` archived into ``libvuser.a`` (no sources: no archive)."""
        srcs = sorted((self.root / "lib").glob("*.c"))
        if not srcs:
            return ()
        out = self.out / f"lib-{self.lib_digest[:20]}"
        archive = out / "libvuser.a"
        if (out / _STAMP).is_file() and archive.is_file():
            return (archive,)

        def fill(tmp: Path) -> None:
            objs = []
            for src in srcs:
                obj = tmp / f"{src.stem}.o"
                self.compile(src, obj, compile_only=True, what="libvuser")
                objs.append(obj)
            ar = shutil.which("ar") or "ar"
            p = subprocess.run([ar, "rcs", str(tmp / "libvuser.a"), *map(str, objs)],
                               capture_output=True, text=True)
            if p.returncode != 0:
                raise BuildFailed(f"ar libvuser.a failed: {p.stderr.strip() or p.returncode}")
            for obj in objs:
                obj.unlink()
            (tmp / _STAMP).write_text(self.lib_digest + "\n")

        _atomic_dir(out, fill)
        return (archive,)

    def _program_dir(self, name: str) -> Path:
        return self.out / f"test-{name}-{self.program_digest(name)[:20]}"

    def cached(self, name: str) -> GuestProgram | None:
        out = self._program_dir(name)
        if not (out / _STAMP).is_file():
            return None
        try:
            return GuestProgram(name, out / name, tuple(elfcases.read_cases(out / name)))
        except (UserError, OSError):
            return None

    def program(self, name: str) -> GuestProgram:
        if not (self.root / f"{name}.c").is_file():
            raise UserError(f"no guest test {name}: there is no {self.root.name}/{name}.c")
        if (prog := self.cached(name)) is not None:
            return prog
        libs = self.library
        out = self._program_dir(name)

        def fill(tmp: Path) -> None:
            self.compile(self.root / f"{name}.c", tmp / name, libs)
            elfcases.read_cases(tmp / name)  # check before committing to the cache
            (tmp / _STAMP).write_text(name + "\n")

        _atomic_dir(out, fill)
        prog = self.cached(name)
        if prog is None:
            raise BuildFailed(f"guest test {name}: built, but {out} does not verify")
        return prog

    def tools(self, build: bool = True) -> dict[str, Path] | None:
        out = self.out / f"tools-{self.tools_digest[:20]}"

        def load(d: Path) -> dict[str, Path]:
            found = {}
            for src in self.names["tools"]:
                binary = d / src.stem
                try:
                    with binary.open("rb") as f:
                        elfcases.check_static_x86_64(ELFFile(f), binary)
                except ELFError as e:
                    raise elfcases.BadGuestBinary(f"{binary}: not a readable ELF file ({e})") \
                        from None
                found[src.stem] = binary
            return found

        if (out / _STAMP).is_file():
            try:
                return load(out)
            except (UserError, OSError):
                if not build:
                    return None
        elif not build:
            return None

        def fill(tmp: Path) -> None:
            for src in self.names["tools"]:
                self.compile(src, tmp / src.stem, what="guest tool")
            load(tmp)
            (tmp / _STAMP).write_text(self.tools_digest + "\n")

        _atomic_dir(out, fill)
        return load(out)


def build_program(name: str, root: Path = paths.GUEST_TESTS,
                  cache: Path | None = None) -> GuestProgram:
    """Build (or take from the cache) one guest test; ``BuildFailed`` with the compiler's message."""
    return _Builder(root, cache).program(name)


def build_programs(names: Iterable[str] | None = None, root: Path = paths.GUEST_TESTS,
                   cache: Path | None = None,
                   status: Callable[[str], None] | None = None) -> ProgramSet:
    """Build (or take from the cache) the guest tests ``names`` (default: all) and the tools.

    A program that does not build is left out of ``tests`` and listed in
    ``failed`` with the compiler's message; the others are built regardless.
    ``UserError`` when nothing can be built here (no gcc, no sources), a
    name has no source, or a tool does not build (``/init`` needs them).
    ``status`` is an optional callable given a one-line description of slow work.
    """
    b = _Builder(root, cache)
    wanted = list(dict.fromkeys(program_names(root) if names is None else names))
    missing = [n for n in wanted if not (root / f"{n}.c").is_file()]
    if missing:
        raise UserError(f"no guest test {', '.join(missing)}; there are: "
                        f"{', '.join(program_names(root)) or 'none'}")
    todo = [n for n in wanted if b.cached(n) is None]
    if todo and status:
        status(f"building {len(todo)} guest test(s) with {Path(b.gcc).name}")
    tools = b.tools()
    tests: dict[str, GuestProgram] = {}
    failed: dict[str, str] = {}

    def one(name: str) -> None:
        try:
            tests[name] = b.program(name)
        except BuildFailed as e:
            failed[name] = str(e)

    try:
        b.library  # once, before the programs that link it
    except BuildFailed as e:
        failed.update(dict.fromkeys(todo, str(e)))
        todo = []
    with ThreadPoolExecutor(max_workers=max(1, min(len(todo), os.cpu_count() or 1))) as pool:
        list(pool.map(one, todo))
    for n in wanted:
        if n not in tests and n not in failed:
            one(n)  # cached
    return ProgramSet(b.tools_digest, {n: tests[n] for n in wanted if n in tests}, tools,
                      {n: failed[n] for n in wanted if n in failed})


def cached_programs(root: Path = paths.GUEST_TESTS, cache: Path | None = None) -> ProgramSet | None:
    """The tools and the programs already built for the current sources; never builds.

    None when the tools are not cached. ``UserError`` if nothing can be built
    here at all (no gcc, no sources).
    """
    b = _Builder(root, cache)
    tools = b.tools(build=False)
    if tools is None:
        return None
    tests = {n: p for n in program_names(root) if (p := b.cached(n)) is not None}
    return ProgramSet(b.tools_digest, tests, tools)
