"""Translation traces: recorded to a msgpack stream, read back, summarised.

A trace file is a msgpack stream: a header map, one array per event in the
order of ``FIELDS`` (the model's ``TraceEvent``: every translation, fault and
IOTLB invalidation, plus vuser-iommu's invalidation descriptors, page
requests and page responses, ``VIOMMU_KINDS``), and a footer map when
recording stopped cleanly. A file cut short (the server was killed) still
reads, up to its last whole event. Events are read by the header's field
list, so files written before ``info`` or ``vtd`` was added still read (None).

``TraceRecorder`` is the model's trace hook while recording. Memory is
bounded: events wait in a list of at most ``flush_every`` entries and are then
packed and written out; ``max_events``/``max_bytes`` bound the file, and what
arrives after that is counted as dropped, never buffered.
"""

from __future__ import annotations

import errno
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import msgpack

from vuser.errors import RemoteProtocolError
from vuser.iommu import Stage, TraceEvent, reason_text

FORMAT = "vuser-trace"
VERSION = 1
FIELDS = ("time", "kind", "label", "pasid", "iova", "gpa", "stage", "hit", "fault", "count",
          "length", "info", "vtd")
#: Kinds vuser-iommu adds (``info`` says what; see docs/vuser-iommu.md, "Tracing").
VIOMMU_KINDS = ("inv-context-cache", "inv-pasid-cache", "inv-iotlb", "inv-piotlb",
                "inv-devtlb", "page-request", "page-response")
KINDS = ("translate", "fault", "invalidate") + VIOMMU_KINDS
DEFAULT_MAX_BYTES = 512 << 20
FLUSH_EVERY = 4096


class TraceRecorder:
    """Writes the model's trace events to ``path`` (``hook`` is the trace hook)."""

    def __init__(self, path: str, *, max_events: int | None = None,
                 max_bytes: int | None = DEFAULT_MAX_BYTES, flush_every: int = FLUSH_EVERY,
                 meta: dict[str, Any] | None = None) -> None:
        try:
            self._f: BinaryIO | None = open(path, "wb")  # noqa: SIM115 - closed by stop()
        except OSError as e:
            raise RemoteProtocolError(e.errno or errno.EIO,
                                      f"cannot write trace {path}: {e.strerror}") from None
        self.path = path
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.flush_every = flush_every
        self.events = 0
        self.dropped = 0
        self.bytes = 0
        self.started = time.monotonic()
        self._buf: list[TraceEvent] = []
        self._full = False
        self._packer = msgpack.Packer(use_bin_type=True)
        self._write(self._packer.pack({
            "format": FORMAT, "version": VERSION, "fields": list(FIELDS),
            "clock": "monotonic", "t0": self.started, "wall": time.time(),
            "stages": {s.name: int(s) for s in Stage}, **(meta or {})}))

    def hook(self, ev: TraceEvent) -> None:
        """The trace hook: keep the event, write a batch when the list is full."""
        if self._full:
            self.dropped += 1
            return
        buf = self._buf
        buf.append(ev)
        if len(buf) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        buf, self._buf = self._buf, []
        if not buf or self._f is None:
            return
        if self.max_events is not None and self.events + len(buf) > self.max_events:
            keep = max(self.max_events - self.events, 0)
            self.dropped += len(buf) - keep
            buf = buf[:keep]
            self._full = True
        pack = self._packer.pack
        out = b"".join([pack((e.time, e.kind, e.label, e.pasid, e.iova, e.gpa, e.stage,
                              e.hit, e.fault, e.count, e.length, e.info, e.vtd))
                          for e in buf])
        if self.max_bytes is not None and self.bytes + len(out) > self.max_bytes:
            self.dropped += len(buf)
            self._full = True
            return
        self.events += len(buf)
        self._write(out)

    def _write(self, data: bytes) -> None:
        assert self._f is not None
        self._f.write(data)
        self.bytes += len(data)

    def status(self) -> dict[str, Any]:
        return {"path": self.path, "events": self.events + len(self._buf),
                "dropped": self.dropped, "bytes": self.bytes, "full": self._full,
                "seconds": time.monotonic() - self.started, "recording": self._f is not None}

    def stop(self) -> dict[str, Any]:
        """Flush, write the footer, close; returns the final status."""
        if self._f is None:
            return self.status()
        self.flush()
        self._write(self._packer.pack({"end": True, "events": self.events,
                                       "dropped": self.dropped}))
        self._f.close()
        self._f = None
        return self.status()


# -- reading ------------------------------------------------------------------------
@dataclass
class Trace:
    """A trace read back: header, events as dicts, footer (None if cut short)."""

    header: dict[str, Any]
    events: list[dict[str, Any]] = field(default_factory=list)
    footer: dict[str, Any] | None = None

    @property
    def truncated(self) -> bool:
        return self.footer is None


class TraceFormatError(ValueError):
    """The file is not a vuser trace."""


def iter_trace(path: str | os.PathLike[str]) -> Iterator[Any]:
    """The raw objects of a trace file, stopping quietly at a cut-short tail."""
    with open(path, "rb") as f:
        unpacker = msgpack.Unpacker(f, raw=False, strict_map_key=False,
                                    max_buffer_size=64 << 20)
        try:
            yield from unpacker
        except (msgpack.OutOfData, ValueError) as e:
            if isinstance(e, msgpack.FormatError):
                raise TraceFormatError(f"{path}: not a msgpack stream: {e}") from None


def read_trace(path: str | os.PathLike[str], *, limit: int | None = None) -> Trace:
    """Read a trace file (``TraceFormatError`` if it is not one)."""
    it = iter_trace(path)
    try:
        header = next(it)
    except StopIteration:
        raise TraceFormatError(f"{path}: empty file") from None
    except (msgpack.FormatError, msgpack.StackError, msgpack.ExtraData) as e:
        raise TraceFormatError(f"{path}: not a trace: {e}") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise TraceFormatError(f"{path}: not a vuser trace (no {FORMAT} header)")
    if header.get("version") != VERSION:
        raise TraceFormatError(f"{path}: trace version {header.get('version')!r}, "
                               f"this vuser reads {VERSION}")
    fields = header["fields"]
    trace = Trace(header)
    for obj in it:
        if isinstance(obj, dict) and obj.get("end"):
            trace.footer = obj
            break
        if not isinstance(obj, list) or len(obj) != len(fields):
            raise TraceFormatError(f"{path}: bad event record {obj!r:.80}")
        if limit is None or len(trace.events) < limit:
            ev = dict(zip(fields, obj))
            ev.setdefault("info", None)
            ev.setdefault("vtd", None)
            trace.events.append(ev)
    return trace


def reason_name(code: int | None, vtd: int | None = None) -> str:
    """A fault's reason as ``reason_text`` shows it: the VT-d code first."""
    return reason_text(code, vtd)


def stage_name(code: int) -> str:
    try:
        return Stage(code).name
    except ValueError:
        return str(code)


def summarize(events: list[dict[str, Any]], t0: float = 0.0, top: int = 10) -> dict[str, Any]:
    """Counts that compare with ``IoasidContext.stats()``.

    ``hits`` = translate events answered by the IOTLB; ``walks_ok`` = the
    misses that translated (the model's ``misses`` minus the faults met on a
    miss); ``faults``; ``invalidations`` and the entries they dropped.
    """
    kinds = Counter(e["kind"] for e in events)
    tr = [e for e in events if e["kind"] == "translate"]
    hits = sum(1 for e in tr if e["hit"])
    faults = [e for e in events if e["kind"] == "fault"]
    inval = [e for e in events if e["kind"] == "invalidate"]
    descs = Counter(e["kind"] for e in events if e["kind"].startswith("inv-"))
    per_pasid = Counter((e["label"], e["pasid"]) for e in tr)
    per_page = Counter((e["label"], e["pasid"], e["iova"] >> 12) for e in tr)
    times = [e["time"] for e in events]
    return {
        "events": len(events),
        "kinds": dict(kinds),
        "translations": len(tr),
        "hits": hits,
        "walks_ok": len(tr) - hits,
        "hit_rate": hits / len(tr) if tr else None,
        "faults": len(faults),
        "fault_reasons": dict(Counter(reason_name(e["fault"], e.get("vtd")) for e in faults)),
        "fault_stages": dict(Counter(stage_name(e["stage"]) for e in faults)),
        "stages": dict(Counter(stage_name(e["stage"]) for e in tr)),
        "invalidations": len(inval),
        "invalidated_entries": sum(e["count"] for e in inval),
        "invalidation_descriptors": dict(descs),
        "page_requests": kinds.get("page-request", 0),
        "page_responses": kinds.get("page-response", 0),
        "per_pasid": [[lbl, p, n] for (lbl, p), n in per_pasid.most_common()],
        "top_pages": [[lbl, p, pg << 12, n] for (lbl, p, pg), n in per_page.most_common(top)],
        "pages": len(per_page),
        "duration": (max(times) - min(times)) if times else 0.0,
        "start": (min(times) - t0) if times else 0.0,
    }
