"""Debian binary packages, fetched into a private tree without touching the system's apt.

apt is driven with a private configuration (``Dir::Etc::SourceList``,
``Dir::Etc::SourceParts``, ``Dir::State::Lists``, ``Dir::Cache``,
``Dir::State::status`` pointing to an empty file) under the cache directory,
so the dependency closure is resolved as for an empty system, and nothing of
the host's package state is read or written. The rest of the host's apt
configuration (``apt.conf.d``: proxies, ``Check-Valid-Until``) still applies.

The archive URI is taken from the machine's own apt sources (deb822
``*.sources`` and one-line ``*.list``), never from this repository.

Trust: the target suite's ``InRelease`` is checked by apt against the keyring
the host's source names (``Signed-By``) or, without one, the system's trusted
keys. If that fails for a missing key (``NO_PUBKEY``: a newer suite signed by
keys an older host lacks), we fetch ``debian-archive-keyring`` from the host's
own suite, whose ``InRelease`` the system keyring verifies, and retry with the
keyrings it ships. The chain is thus always rooted in the system's keyring.

Idempotence: a tree carries a manifest (``.vuser-debian.json``) with the
request, the packages and the size of every file extracted. A second call with
the same request checks the tree against it and returns without any network
access; a tree that fails the check is extracted again from the cached ``.deb``
files (downloaded again only if they are missing too).
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vuser.errors import UserError

log = logging.getLogger(__name__)

CACHE_ENV = "VUSER_CACHE"
"""Environment variable overriding the cache root (default ``~/.cache/vuser``)."""
URI_ENV = "VUSER_APT_URI"
"""Environment variable overriding the archive URI taken from the host's sources."""
MANIFEST = ".vuser-debian.json"
MANIFEST_VERSION = 1
UPDATE_STAMP = "updated"  # in the apt state dir: the sources line of the last good update
MAX_LIST_AGE_S = 6 * 3600.0  # lists younger than this are used without apt-get update


def cache_root() -> Path:
    """The root of vuser's cache: ``$VUSER_CACHE``, else ``$XDG_CACHE_HOME/vuser``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "vuser"


# --------------------------------------------------------------------------
# The host's apt sources (sources.list(5), both formats)

@dataclass(frozen=True)
class AptSource:
    """One archive entry of the host's apt sources."""

    uri: str
    suites: tuple[str, ...]
    components: tuple[str, ...]
    signed_by: str | None = None  # a keyring path; inline keys are not carried over
    origin: str = ""  # the file it came from


def parse_one_line(text: str, origin: str = "") -> list[AptSource]:
    """Parse the one-line form: ``deb [opt=val ...] URI SUITE [COMPONENT ...]``."""
    out = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line.startswith("deb "):
            continue  # deb-src and garbage
        rest = line[4:].strip()
        opts: dict[str, str] = {}
        if rest.startswith("["):
            end = rest.find("]")
            if end < 0:
                continue
            for opt in rest[1:end].split():
                key, _, val = opt.partition("=")
                opts[key] = val
            rest = rest[end + 1:].strip()
        words = rest.split()
        if len(words) < 2:
            continue
        out.append(AptSource(uri=words[0], suites=(words[1],), components=tuple(words[2:]),
                             signed_by=opts.get("signed-by"), origin=origin))
    return out


def parse_deb822(text: str, origin: str = "") -> list[AptSource]:
    """Parse the deb822 form: paragraphs of ``Types/URIs/Suites/Components/Signed-By``."""
    out = []
    for para in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = None
        for raw in para.splitlines():
            if raw.startswith("#") or not raw.strip():
                continue
            if raw[0] in " \t" and key:  # continuation (e.g. an inline key block)
                fields[key] += "\n" + raw.strip()
                continue
            key, _, val = raw.partition(":")
            key = key.strip().lower()
            fields[key] = val.strip()
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() == "no":
            continue
        signed = fields.get("signed-by") or None
        if signed and "\n" in signed:
            signed = None  # an embedded key: fall back to the system's trust
        for uri in fields.get("uris", "").split():
            out.append(AptSource(uri=uri, suites=tuple(fields.get("suites", "").split()),
                                 components=tuple(fields.get("components", "").split()),
                                 signed_by=signed, origin=origin))
    return out


def host_sources(etc: Path = Path("/etc/apt")) -> list[AptSource]:
    """Every ``deb`` entry of the host's ``sources.list`` and ``sources.list.d``."""
    out: list[AptSource] = []
    main = etc / "sources.list"
    if main.is_file():
        out += parse_one_line(main.read_text(errors="replace"), str(main))
    parts = etc / "sources.list.d"
    if parts.is_dir():
        for p in sorted(parts.iterdir()):
            if p.suffix == ".list":
                out += parse_one_line(p.read_text(errors="replace"), str(p))
            elif p.suffix == ".sources":
                out += parse_deb822(p.read_text(errors="replace"), str(p))
    return out


def host_codename(os_release: Path = Path("/etc/os-release")) -> str | None:
    """``VERSION_CODENAME`` of the host (``bookworm``), if it says."""
    try:
        text = os_release.read_text()
    except OSError:
        return None
    m = re.search(r'^VERSION_CODENAME="?([^"\n]*)"?$', text, re.M)
    return m.group(1) if m and m.group(1) else None


def archive_source(sources: Sequence[AptSource], codename: str | None) -> AptSource:
    """The host's Debian archive entry: the one carrying the host's own suite with ``main``.

    ``$VUSER_APT_URI`` overrides the URI (for hosts whose sources name no Debian
    archive).
    """
    env = os.environ.get(URI_ENV)
    if env:
        return AptSource(uri=env, suites=(codename or "",), components=("main",), origin=URI_ENV)
    candidates = [s for s in sources if "main" in s.components]
    for s in candidates:
        if codename and codename in s.suites:
            return s
    for s in candidates:  # no codename: a plain suite name (no -security/-updates)
        if any("-" not in suite and "/" not in suite for suite in s.suites):
            return s
    raise UserError("no Debian archive with 'main' in the apt sources "
                    f"(/etc/apt/sources.list*); set ${URI_ENV} to an archive URI")


# --------------------------------------------------------------------------
# A private apt state for one suite

@dataclass(frozen=True)
class DebPackage:
    """A resolved binary package."""

    name: str
    version: str
    filename: str  # the pool file name, e.g. libc6_2.43-7_amd64.deb
    size: int


def _tool(name: str) -> str:
    path = shutil.which(name)
    if not path:
        raise UserError(f"{name} not found: install apt and dpkg (a Debian-family host is needed "
                        "to provision packages)")
    return path


def _apt_error(output: str, what: str) -> UserError:
    """One line out of apt's complaints: the most specific one."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    for pat in ("NO_PUBKEY", "Unable to locate package", "Failed to fetch", "Could not resolve",
                "Unable to connect", "Temporary failure", "404", "Hash Sum mismatch",
                "is not signed", "Unable to correct problems", "has no installation candidate"):
        for ln in lines:
            if pat in ln:
                return UserError(f"{what}: {re.sub(r'^[EW]: ', '', ln)}")
    errs = [ln for ln in lines if ln.startswith("E:")]
    tail = errs[0][3:] if errs else (lines[-1] if lines else "no output")
    return UserError(f"{what}: {tail}")


class AptRepo:
    """apt-get and apt-cache against a private state for one suite of one archive."""

    def __init__(self, suite: str, state_dir: Path, source: AptSource, *,
                 arch: str = "amd64", components: Sequence[str] = ("main",),
                 signed_by: Sequence[str] | None = None) -> None:
        self.suite = suite
        self.dir = state_dir
        self.source = source
        self.arch = arch
        self.components = tuple(components)
        keys = list(signed_by) if signed_by is not None else (
            [source.signed_by] if source.signed_by else [])
        self.signed_by = keys

    # -- configuration
    def _write_config(self) -> None:
        for sub in ("etc/sources.list.d", "lists/partial", "cache/archives/partial"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        status = self.dir / "status"
        if not status.exists():
            status.write_text("")
        (self.dir / "etc/sources.list").write_text(self._sources_line())

    def _sources_line(self) -> str:
        opts = f"[arch={self.arch}" + (f" signed-by={','.join(self.signed_by)}" if self.signed_by else "") + "]"
        return f"deb {opts} {self.source.uri} {self.suite} {' '.join(self.components)}\n"

    def _opts(self) -> list[str]:
        d = self.dir
        conf = {
            "Dir::Etc::SourceList": d / "etc/sources.list",
            "Dir::Etc::SourceParts": d / "etc/sources.list.d",
            "Dir::State::Lists": d / "lists",
            "Dir::State::status": d / "status",
            "Dir::State::extended_states": d / "extended_states",
            "Dir::Cache": d / "cache",
            "Dir::Cache::archives": d / "cache/archives",
            "Dir::Cache::pkgcache": "",
            "Dir::Cache::srcpkgcache": "",
            "Debug::NoLocking": "1",
            "APT::Architecture": self.arch,
            "APT::Architectures": self.arch,
            "APT::Sandbox::User": "root" if os.geteuid() == 0 else os.environ.get("USER", ""),
            "APT::Install-Recommends": "0",
        }
        if os.geteuid() != 0:
            del conf["APT::Sandbox::User"]
        out = []
        for k, v in conf.items():
            out += ["-o", f"{k}={v}"]
        return out

    def _run(self, tool: str, args: Sequence[str], what: str, **kw) -> subprocess.CompletedProcess:
        cmd = [_tool(tool), *self._opts(), *args]
        log.debug("run %s", " ".join(cmd))
        env = dict(os.environ, LC_ALL="C", DEBIAN_FRONTEND="noninteractive")
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, **kw)
        if p.returncode != 0:
            raise _apt_error(p.stderr + "\n" + p.stdout, what)
        return p

    def has_lists(self) -> bool:
        return any((self.dir / "lists").glob("*_Packages*"))

    # -- operations
    def fresh(self, max_age_s: float = MAX_LIST_AGE_S) -> bool:
        """True if the lists were updated recently, for the same sources line."""
        stamp = self.dir / UPDATE_STAMP
        try:
            same = stamp.read_text() == self._sources_line()
            age = time.time() - stamp.stat().st_mtime
        except OSError:
            return False
        return same and 0 <= age < max_age_s and self.has_lists()

    def update(self) -> None:
        """``apt-get update`` into the private lists (conditional GETs when present)."""
        self._write_config()
        (self.dir / UPDATE_STAMP).unlink(missing_ok=True)
        p = self._run("apt-get", ["-q", "update"], f"apt-get update ({self.suite})")
        # apt exits 0 on some fetch failures (warnings only); a missing index is an error.
        if "NO_PUBKEY" in p.stderr or not self.has_lists():
            raise _apt_error(p.stderr + p.stdout, f"apt-get update ({self.suite})")
        (self.dir / UPDATE_STAMP).write_text(self._sources_line())

    def resolve(self, names: Iterable[str], *, recommends: bool = False) -> list[DebPackage]:
        """The dependency closure of ``names`` on an empty system (``install --print-uris -s``)."""
        names = list(names)
        args = ["-qq", "install", "--print-uris",
                "--install-recommends" if recommends else "--no-install-recommends", *names]
        p = self._run("apt-get", args, f"cannot resolve {' '.join(names)} in {self.suite}")
        out = []
        for line in p.stdout.splitlines():
            m = re.match(r"^'(?P<uri>[^']+)' (?P<file>\S+) (?P<size>\d+) ", line)
            if not m:
                continue
            fname = m.group("file")
            parts = fname[:-len(".deb")].split("_")
            if len(parts) != 3:
                raise UserError(f"unexpected package file name from apt: {fname}")
            version = parts[1].replace("%3a", ":")
            out.append(DebPackage(parts[0], version, fname, int(m.group("size"))))
        if not out:
            raise UserError(f"apt resolved nothing for {' '.join(names)} in {self.suite}")
        return out

    def download(self, pkgs: Sequence[DebPackage], dest: Path,
                 progress: Callable[[int], None] | None = None) -> list[Path]:
        """``apt-get download`` the packages not yet in ``dest`` (apt checks the hashes).

        ``progress`` is called with the number of bytes completed so far.
        """
        dest.mkdir(parents=True, exist_ok=True)
        missing = [p for p in pkgs if not _complete(dest / p.filename, p.size)]
        if missing:
            self._download(missing, dest, progress)
        bad = [p.filename for p in pkgs if not _complete(dest / p.filename, p.size)]
        if bad:
            raise UserError(f"apt-get download left {len(bad)} package(s) incomplete: {bad[0]}")
        return [dest / p.filename for p in pkgs]

    def _download(self, pkgs: Sequence[DebPackage], dest: Path,
                  progress: Callable[[int], None] | None) -> None:
        self._write_config()
        total = sum(p.size for p in pkgs)
        rfd, wfd = os.pipe()
        cmd = [_tool("apt-get"), *self._opts(), "-o", f"APT::Status-Fd={wfd}", "-q", "download",
               *[f"{p.name}={p.version}" for p in pkgs]]
        env = dict(os.environ, LC_ALL="C")
        proc = subprocess.Popen(cmd, cwd=dest, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env=env, pass_fds=(wfd,))
        os.close(wfd)
        out_chunks: list[str] = []
        reader = threading.Thread(target=lambda: out_chunks.append(proc.stdout.read()), daemon=True)
        reader.start()
        with os.fdopen(rfd, "r", errors="replace") as status:
            for line in status:  # dlstatus:<item>:<percent>:<description>
                parts = line.split(":", 3)
                if progress and len(parts) >= 3 and parts[0] == "dlstatus":
                    try:
                        progress(int(total * float(parts[2]) / 100))
                    except ValueError:
                        pass
        rc = proc.wait()
        reader.join()
        if rc != 0:
            raise _apt_error("".join(out_chunks), f"apt-get download ({self.suite})")
        if progress:
            progress(total)


def _complete(path: Path, size: int) -> bool:
    try:
        return path.stat().st_size == size
    except OSError:
        return False


# --------------------------------------------------------------------------
# Extraction and the tree manifest

def extract(debs: Sequence[Path], root: Path, progress: Callable[[int], None] | None = None) -> None:
    """``dpkg-deb -x`` every package into ``root`` (in order; later files win)."""
    dpkg_deb = _tool("dpkg-deb")
    root.mkdir(parents=True, exist_ok=True)
    for i, deb in enumerate(debs):
        p = subprocess.run([dpkg_deb, "-x", str(deb), str(root)], capture_output=True, text=True)
        if p.returncode != 0:
            msg = (p.stderr.strip().splitlines() or ["failed"])[-1]
            raise CorruptDeb(deb, msg)
        if progress:
            progress(i + 1)


class CorruptDeb(UserError):
    """A cached ``.deb`` that dpkg-deb rejects; the caller deletes it and downloads it again."""

    def __init__(self, deb: Path, msg: str) -> None:
        self.deb = deb
        super().__init__(f"dpkg-deb -x {deb.name}: {msg}")


def tree_files(root: Path) -> dict[str, int]:
    """Size of every regular file under ``root`` (symlinks as -1), relative paths."""
    out: dict[str, int] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            if rel == MANIFEST:
                continue
            st = os.lstat(full)
            out[rel] = -1 if os.path.islink(full) else st.st_size
    return out


@dataclass
class Tree:
    """An extracted package tree and its manifest."""

    root: Path
    suite: str
    request: list[str]
    packages: list[DebPackage] = field(default_factory=list)
    files: dict[str, int] = field(default_factory=dict)

    def write_manifest(self) -> None:
        data = {
            "version": MANIFEST_VERSION, "suite": self.suite, "request": self.request,
            "packages": [[p.name, p.version, p.filename, p.size] for p in self.packages],
            "files": self.files,
        }
        tmp = self.root / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(data, indent=0, sort_keys=True))
        tmp.replace(self.root / MANIFEST)

    @classmethod
    def load(cls, root: Path) -> Tree | None:
        """The tree's manifest, or None if it is missing or unreadable."""
        try:
            data = json.loads((root / MANIFEST).read_text())
            if data["version"] != MANIFEST_VERSION:
                return None
            pkgs = [DebPackage(str(n), str(v), str(f), int(s)) for n, v, f, s in data["packages"]]
            files = {str(k): int(v) for k, v in data["files"].items()}
            return cls(root, str(data["suite"]), [str(r) for r in data["request"]], pkgs, files)
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def problems(self) -> list[str]:
        """Files that are missing or whose size changed since extraction (empty: intact)."""
        bad = []
        for rel, size in self.files.items():
            full = self.root / rel
            try:
                st = full.lstat()
            except OSError:
                bad.append(f"{rel} missing")
                continue
            if size == -1:
                if not full.is_symlink():
                    bad.append(f"{rel} not a symlink")
            elif st.st_size != size:
                bad.append(f"{rel} is {st.st_size} bytes, expected {size}")
        return bad

    def package(self, name: str) -> DebPackage | None:
        return next((p for p in self.packages if p.name == name), None)

    def require_version(self, name: str, version: str) -> DebPackage:
        """Package ``name``, which must be at ``version`` (the guest kernel's own:
        headers of another build make a module the guest refuses)."""
        pkg = self.package(name)
        if pkg is None:
            raise UserError(f"Debian {self.suite} has no {name}")
        if pkg.version != version:
            raise UserError(f"{name} is version {pkg.version} but the guest kernel is {version}: "
                            "headers of another build would make a module the guest refuses "
                            "(clear the cache to fetch the current kernel)")
        return pkg


# --------------------------------------------------------------------------
# The one call users make

class _Progress:
    """rich progress on stderr, created only when there is work to show."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._prog = None

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
            self._prog = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                                  TextColumn("{task.fields[detail]}"), TimeElapsedColumn(),
                                  console=Console(stderr=True), transient=False)
            self._prog.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._prog:
            self._prog.stop()

    def note(self, text: str) -> None:
        if self.enabled:
            from rich.console import Console
            (self._prog.console if self._prog else Console(stderr=True)).print(text)

    def task(self, description: str, total: int, unit: str = "") -> Callable[[int], None]:
        """A progress bar; the returned callable sets the amount done (bytes if ``unit`` is MB)."""
        if not self._prog:
            return lambda n: None
        prog = self._prog

        def detail(n: int) -> str:
            return f"{n / 1e6:.1f}/{total / 1e6:.1f} MB" if unit == "MB" else f"{n}/{total}"

        tid = prog.add_task(description, total=total, detail=detail(0))
        return lambda n: prog.update(tid, completed=n, detail=detail(n))


def fetch(suite: str, packages: Sequence[str], root: Path, *, cache: Path | None = None,
          recommends: bool = False, exclude: Sequence[str] = (), show_progress: bool = True,
          sources: Sequence[AptSource] | None = None, signed_by: Sequence[str] | None = None,
          reextract: bool = False, closure: bool = True, keep: Sequence[str] = ()) -> Tree:
    """Make ``root`` hold ``packages`` of ``suite`` and their dependency closure, extracted.

    Idempotent: an intact tree for the same request is returned at once, with no
    network access. ``exclude`` drops packages from the closure (by name).
    ``reextract`` extracts again even if the files look intact (the caller found
    the content broken). ``sources`` replaces the host's apt sources,
    ``signed_by`` the keyrings that verify the suite (both for tests).
    ``closure=False`` takes only the named packages, not their dependencies
    (kernel headers to unpack, not to install). ``keep`` (``fnmatch`` patterns)
    takes only the closure's packages whose name matches one: a newer suite's
    kernel metapackage pulls in an initramfs generator, and the kernel's own
    packages are all a guest image needs.
    """
    request = (sorted(packages) + [f"-{x}" for x in sorted(exclude)]
               + ([] if closure else ["!closure"]) + [f"+{k}" for k in sorted(keep)])

    def wanted(name: str) -> bool:
        if name in exclude or not (closure or name in packages):
            return False
        return not keep or any(fnmatch.fnmatchcase(name, k) for k in keep)

    tree = Tree.load(root)
    if tree and tree.suite == suite and tree.request == request:
        problems = tree.problems() or (["content rejected by the caller"] if reextract else [])
        if not problems:
            return tree
        log.debug("%s: %d damaged file(s) (%s); extracting again", root, len(problems), problems[0])
        if show_progress:
            _Progress(True).note(f"[yellow]cache damaged ({problems[0]}); re-extracting {root}")
    cache = cache or cache_root()
    deb_dir = cache / "debian" / suite / "debs"
    with _Progress(show_progress) as prog:
        pkgs = tree.packages if tree and tree.request == request else None
        if pkgs is None or not all(_complete(deb_dir / p.filename, p.size) for p in pkgs):
            for force_update in (False, True):  # stale lists: 404s or a vanished package
                repo = _repo(suite, cache, sources, signed_by, prog, force_update)
                prog.note(f"resolving {' '.join(packages)} in Debian {suite}")
                try:
                    pkgs = [p for p in repo.resolve(packages, recommends=recommends)
                            if wanted(p.name)]
                    todo = sum(p.size for p in pkgs if not _complete(deb_dir / p.filename, p.size))
                    repo.download(pkgs, deb_dir, prog.task(f"download {len(pkgs)} packages", todo, "MB")
                                  if todo else None)
                    break
                except UserError:
                    if force_update:
                        raise
                    log.debug("retrying with fresh lists for %s", suite)
        debs = [deb_dir / p.filename for p in pkgs]
        tmp = root.with_name(root.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            extract(debs, tmp, prog.task(f"extract into {root.name}", len(debs)))
        except CorruptDeb as e:
            e.deb.unlink(missing_ok=True)  # the next run downloads it again
            shutil.rmtree(tmp, ignore_errors=True)
            raise UserError(f"{e} (removed from the cache; run again to download it anew)") from None
        tree = Tree(tmp, suite, request, pkgs, tree_files(tmp))
        tree.write_manifest()
        shutil.rmtree(root, ignore_errors=True)
        tmp.rename(root)
        tree.root = root
    return tree


def _repo(suite: str, cache: Path, sources: Sequence[AptSource] | None,
          signed_by: Sequence[str] | None, prog: _Progress, force_update: bool = False) -> AptRepo:
    """An updated private apt state for ``suite``, fixing up the keyring if needed.

    Lists updated less than ``MAX_LIST_AGE_S`` ago are used as they are.
    """
    srcs = host_sources() if sources is None else list(sources)
    codename = host_codename()
    source = archive_source(srcs, codename)
    repo = AptRepo(suite, cache / "debian" / suite / "apt", source, signed_by=signed_by)
    if not force_update and repo.fresh():
        return repo
    prog.note(f"apt-get update: Debian {suite}")
    try:
        repo.update()
        return repo
    except UserError as e:
        if "NO_PUBKEY" not in str(e) or not codename or codename == suite:
            raise
        log.debug("%s: %s; fetching debian-archive-keyring from %s", suite, e, codename)
    keyrings = archive_keyrings(codename, cache, source, prog)
    repo = AptRepo(suite, cache / "debian" / suite / "apt", source, signed_by=keyrings)
    repo.update()
    return repo


def archive_keyrings(host_suite: str, cache: Path, source: AptSource, prog: _Progress) -> list[str]:
    """Keyrings of ``debian-archive-keyring`` from the host's suite (verified by the system's keys)."""
    prog.note(f"fetching debian-archive-keyring from Debian {host_suite}")
    repo = AptRepo(host_suite, cache / "debian" / host_suite / "apt", source)
    repo.update()
    pkgs = repo.resolve(["debian-archive-keyring"])
    pkgs = [p for p in pkgs if p.name == "debian-archive-keyring"]
    debs = repo.download(pkgs, cache / "debian" / host_suite / "debs")
    root = cache / "debian" / "keyring"
    shutil.rmtree(root, ignore_errors=True)
    extract(debs, root)
    found = sorted(str(p) for p in (root / "usr/share/keyrings").glob("debian-archive-keyring.*")
                   if p.suffix in (".gpg", ".pgp"))
    found += sorted(str(p) for p in (root / "etc/apt/trusted.gpg.d").glob("*")
                    if p.suffix in (".gpg", ".asc", ".pgp"))
    if not found:
        raise UserError("debian-archive-keyring ships no keyring file that apt can use")
    return found[:1] if found[0].endswith((".gpg", ".pgp")) else found
