"""Export a vuser trace to the Chrome/Perfetto JSON trace format.

The output is the "JSON Object Format" of the Trace Event Format (the
Chrome trace-viewer document, also read by ui.perfetto.dev and
chrome://tracing): ``{"displayTimeUnit": "ms", "traceEvents": [...],
"otherData": {...}}``.

- Each device label is a process (``pid``), each of its (label, PASID)
  lanes a thread (``tid``, unique over the whole file and never a pid);
  ``process_name`` and
  ``thread_name`` metadata events (``ph`` "M") name them, and
  ``process_sort_index``/``thread_sort_index`` keep the order of
  ``timeline.Lane.sort_key`` (the RID first, then PASIDs, "all PASIDs" last;
  the vIOMMU's own lanes after the devices).
- Every trace event is one thread-scoped instant event (``ph`` "i", ``s``
  "t") on its lane, ``cat`` its ``timeline`` category (hit, walk, fault,
  invalidate, page-request, page-response), ``args`` what it was (IOVA,
  GPA, reason, granularity, range, group) with addresses as hex strings;
  no event has an array at its top level (Perfetto's JSON tokenizer reads
  each event's ``ts`` with a scanner that refuses one).
- Counters (``ph`` "C") per device: translations per millisecond, as hits
  and walks; a millisecond without translations after one with some gets an
  explicit 0, so a viewer does not hold the last value across idle time.

``ts`` is in microseconds since the trace's start (its header's ``t0``).
"""

from __future__ import annotations

import json
import os
from typing import Any

import vuser

from .timeline import Lane, Timeline, rate_bins, timeline
from .tracing import Trace, summarize

#: Counter bins (seconds): translations per millisecond.
COUNTER_BIN = 1e-3
FORMATS = ("perfetto", "chrome")


def _us(seconds: float) -> float:
    return round(seconds * 1e6, 3)


def _pids(lanes: list[Lane]) -> dict[int | None, int]:
    """pid of each device label (1, 2, ... in lane order)."""
    out: dict[int | None, int] = {}
    for lane in lanes:
        out.setdefault(lane.label, len(out) + 1)
    return out


def to_chrome(trace: Trace, *, source: str | None = None) -> dict[str, Any]:
    """The JSON object of ``trace`` in the Trace Event Format."""
    tl: Timeline = timeline(trace.events, trace.header.get("t0"))
    pids = _pids(tl.lanes)
    # A viewer gives an event without a tid (a counter, a process_name) the
    # thread tid == pid: lanes' tids start after the last pid so that thread
    # is never one of another process's lanes.
    tids = {lane: len(pids) + i + 1 for i, lane in enumerate(tl.lanes)}
    out: list[dict[str, Any]] = []
    for label, pid in pids.items():
        name = next(ln.device for ln in tl.lanes if ln.label == label)
        out.append({"name": "process_name", "ph": "M", "pid": pid, "args": {"name": name}})
        out.append({"name": "process_sort_index", "ph": "M", "pid": pid,
                    "args": {"sort_index": pid}})
    for lane, tid in tids.items():
        pid = pids[lane.label]
        out.append({"name": "thread_name", "ph": "M", "pid": pid, "tid": tid,
                    "args": {"name": lane.pasid_text}})
        out.append({"name": "thread_sort_index", "ph": "M", "pid": pid, "tid": tid,
                    "args": {"sort_index": tid}})
    for m in tl.marks:
        out.append({"name": m.name, "cat": m.category, "ph": "i", "s": "t", "ts": _us(m.time),
                    "pid": pids[m.lane.label], "tid": tids[m.lane],
                    "args": {"kind": m.kind, **{k: v for k, v in m.args.items()
                                                if v is not None}}})
    for label, pid in pids.items():
        out.extend(_counters(tl, label, pid))
    summary = summarize(trace.events, tl.t0)
    other = {"generator": f"vuser {vuser.__version__}", "source": source,
             "clock": trace.header.get("clock"), "t0": tl.t0, "wall": trace.header.get("wall"),
             "server_pid": trace.header.get("pid"), "from": trace.header.get("from"),
             "truncated": trace.truncated,
             "dropped": (trace.footer or {}).get("dropped", 0),
             "summary": {k: summary[k] for k in (
                 "events", "translations", "hits", "walks_ok", "faults", "invalidations",
                 "invalidation_descriptors", "page_requests", "page_responses", "kinds")}}
    # displayTimeUnit first: Perfetto looks for it in the file's first chunk.
    return {"displayTimeUnit": "ms", "traceEvents": out, "otherData": other}


def _counters(tl: Timeline, label: int | None, pid: int) -> list[dict[str, Any]]:
    marks = [m for m in tl.marks if m.lane.label == label]
    out: list[dict[str, Any]] = []
    prev: float | None = None
    for start, hits, walks in rate_bins(marks, COUNTER_BIN):
        if prev is not None and start - prev > COUNTER_BIN * 1.5:   # an idle gap: drop to 0
            out.append({"name": "translations per ms", "ph": "C", "pid": pid,
                        "ts": _us(prev + COUNTER_BIN), "args": {"hits": 0, "walks": 0}})
        out.append({"name": "translations per ms", "ph": "C", "pid": pid, "ts": _us(start),
                    "args": {"hits": hits, "walks": walks}})
        prev = start
    if prev is not None:
        out.append({"name": "translations per ms", "ph": "C", "pid": pid,
                    "ts": _us(prev + COUNTER_BIN), "args": {"hits": 0, "walks": 0}})
    return out


def write_chrome(trace: Trace, out: str | os.PathLike[str], *, source: str | None = None
                 ) -> dict[str, Any]:
    """Write ``to_chrome(trace)`` to ``out``; returns the object written."""
    doc = to_chrome(trace, source=source)
    with open(out, "w") as f:
        json.dump(doc, f, separators=(",", ":"), default=str)
    return doc
