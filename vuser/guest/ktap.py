"""A KTAP parser for what the guest prints on its serial console.

Documentation/dev-tools/ktap.rst: a document is a version line
(``KTAP version 1``; ``TAP version 13/14`` is accepted), a plan (``1..N``) and
result lines ``ok|not ok <number> [<name>] [# <directive> <text>]``.
Diagnostic lines start with ``#``; ``# Subtest: <name>`` names a subtest. A
subtest is a nested document indented by 4 more spaces, printed *before* its
parent's result line.

The console also carries things that are not KTAP (kernel messages, a shell,
a panic). Such lines are kept (``KtapDocument.garbage`` and the ``output`` of
the result that follows them) and never break the parse. A nested document
whose parent's result line never came (the guest died) is still returned, as
a result with ``complete=False`` and ``status=None``.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["Status", "KtapResult", "KtapDocument", "parse"]

INDENT = 4

_VERSION = re.compile(r"(?:KTAP|TAP) version (\d+)$")
_PLAN = re.compile(r"(\d+)\.\.(\d+)(?:\s*#.*)?$")
_RESULT = re.compile(r"(ok|not ok) (\d+)(?:\s+(?:- )?([^#]*?))?\s*(?:#\s*(.*))?$")
_DIAG = re.compile(r"#\s?(.*)$")
_SUBTEST = re.compile(r"Subtest:\s*(\S.*)$")
_BAIL = re.compile(r"Bail out!")


class Status(enum.Enum):
    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"
    XFAIL = "xfail"  # "not ok ... # TODO"


@dataclass
class KtapResult:
    """One result line, with what was printed at its level before it."""

    name: str
    number: int | None
    status: Status | None  # None: unfinished, no result line was printed
    reason: str = ""  # the text after "# SKIP", "# TODO" or a plain "#"
    diagnostics: list[str] = field(default_factory=list)
    output: list[str] = field(default_factory=list)  # non-KTAP lines
    subtests: list[KtapResult] = field(default_factory=list)
    plan: int | None = None  # the subtest document's plan, if any

    @property
    def complete(self) -> bool:
        return self.status is not None

    def find(self, name: str) -> KtapResult | None:
        """The last subtest called ``name``."""
        for r in reversed(self.subtests):
            if r.name == name:
                return r
        return None


@dataclass
class KtapDocument:
    version: int | None = None
    plan: int | None = None
    results: list[KtapResult] = field(default_factory=list)
    garbage: list[str] = field(default_factory=list)

    def find(self, name: str) -> KtapResult | None:
        """The last top-level result called ``name`` (complete or not)."""
        for r in reversed(self.results):
            if r.name == name:
                return r
        return None


@dataclass
class _Block:
    """A document being read at one nesting depth."""

    version: int | None = None
    plan: int | None = None
    name: str = ""
    results: list[KtapResult] = field(default_factory=list)
    diags: list[str] = field(default_factory=list)
    output: list[str] = field(default_factory=list)

    def empty(self) -> bool:
        return self.version is None and self.plan is None and not self.results and not self.diags


def _depth(line: str) -> tuple[int, str] | None:
    body = line.lstrip(" ")
    spaces = len(line) - len(body)
    if spaces % INDENT or body.startswith("\t"):
        return None
    return spaces // INDENT, body


def _result(m: re.Match[str]) -> tuple[str, int, Status, str]:
    ok, number, name, directive = m.group(1) == "ok", int(m.group(2)), m.group(3) or "", m.group(4)
    status, reason = (Status.PASS if ok else Status.FAIL), ""
    if directive is not None:
        word, _, rest = directive.partition(" ")
        if word.upper() == "SKIP":
            status, reason = Status.SKIP, rest.strip()
        elif word.upper() == "TODO" and not ok:
            status, reason = Status.XFAIL, rest.strip()
        else:
            reason = directive.strip()
    return name.strip(), number, status, reason


def parse(text: str | Iterable[str]) -> KtapDocument:
    """Parse console text (or lines) into a ``KtapDocument``; never raises."""
    lines = text.splitlines() if isinstance(text, str) else text
    blocks: list[_Block] = [_Block()]
    doc = KtapDocument()

    def garbage(line: str) -> None:
        doc.garbage.append(line)
        blocks[-1].output.append(line)

    for raw in lines:
        line = raw.rstrip("\r\n").rstrip()
        if not line.strip():
            continue
        at = _depth(line)
        if at is None:
            garbage(line)
            continue
        d, body = at
        if d >= len(blocks):
            if d > len(blocks) or not (_VERSION.match(body) or _PLAN.match(body)
                                       or _DIAG.match(body) or _RESULT.match(body)):
                garbage(line)
                continue
            blocks.append(_Block())
        if m := _RESULT.match(body):
            name, number, status, reason = _result(m)
            _close_deeper(blocks, d + 2, unfinished=True)
            child = blocks.pop() if len(blocks) > d + 1 else None
            block = blocks[d]
            r = KtapResult(name=name, number=number, status=status, reason=reason,
                           diagnostics=block.diags, output=block.output)
            if child is not None:
                r.subtests, r.plan = child.results, child.plan
                r.diagnostics = r.diagnostics + child.diags
                r.output = r.output + child.output
            block.results.append(r)
            block.diags, block.output = [], []
            continue
        version, plan, diag = _VERSION.match(body), _PLAN.match(body), _DIAG.match(body)
        if not (version or plan or diag or _BAIL.match(body)):
            garbage(line)
            continue
        # A version, plan or bail-out line at a shallower level than open
        # subtests without their parent's result line: those ended early (a
        # program died). A diagnostic there does not end them (KTAP allows
        # diagnostics anywhere: /init prints the kernel log's tail between a
        # failed program's cases and its result line).
        if not diag:
            _close_deeper(blocks, d + 1, unfinished=True)
        block = blocks[d]
        if version:
            if d > 0 and not block.empty():
                _close_deeper(blocks, d, unfinished=True)
                blocks.append(_Block())
                block = blocks[d]
            if block.version is None:
                block.version = int(version.group(1))
            else:
                garbage(line)
        elif plan:
            block.plan = int(plan.group(2))
        elif diag:
            if s := _SUBTEST.match(diag.group(1)):
                block.name = s.group(1).strip()
            else:
                block.diags.append(diag.group(1))
        else:
            block.diags.append(body)  # Bail out!
    _close_deeper(blocks, 1, unfinished=True)
    top = blocks[0]
    doc.version, doc.plan, doc.results = top.version, top.plan, top.results
    return doc


def _close_deeper(blocks: list[_Block], depth: int, unfinished: bool = False) -> None:
    """Drop blocks at ``depth`` and below; with ``unfinished``, keep their
    results as unfinished results of their parents (deepest first)."""
    while len(blocks) > depth:
        b = blocks.pop()
        if unfinished and not b.empty() and blocks:
            blocks[-1].results.append(KtapResult(
                name=b.name, number=None, status=None, diagnostics=b.diags,
                output=b.output, subtests=b.results, plan=b.plan))
