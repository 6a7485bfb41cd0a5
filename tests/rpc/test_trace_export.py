"""A trace exported to the Chrome/Perfetto JSON trace format and drawn as a
PNG timeline: the JSON keeps the format's rules (``chrome_trace_check``),
every event of the trace is on the lane of its (label, PASID), the counts
match the trace's summary, and the PNG's lanes and marks are the same.

No PyPI package loads or validates these files offline (Perfetto's Python
package downloads its trace processor at run time), so the format's rules
are checked by ``chrome_trace_check``, written from the format's
description."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from chrome_trace_check import problems
from rpc_helpers import DATA_IOVA, PASID, P, Harness
from vuser.rpc.timeline import ALL, Lane, timeline
from vuser.rpc.trace_export import to_chrome, write_chrome
from vuser.rpc.tracing import Trace, TraceRecorder, read_trace, summarize

HAVE_MPL = importlib.util.find_spec("matplotlib") is not None
LABEL = 0x10


def record(h: Harness, path: str) -> Trace:
    """Hits, walks, faults, model invalidations (pages, PASID, device, global),
    and the vIOMMU's kinds as vuser-iommu notes them (descriptors without a
    device, page requests and responses), with an idle gap in the middle."""
    rec = TraceRecorder(path, flush_every=16)
    h.ctx.set_trace(rec.hook)
    clock = iter(i * 1e-4 for i in range(10_000))
    h.ctx._clock = lambda: rec.started + next(clock) + (0.5 if h.gap else 0.0)  # type: ignore[attr-defined]
    h.gap = False  # type: ignore[attr-defined]
    for rep in range(2):
        for i in range(4):
            h.dev.read(PASID, DATA_IOVA + i * P, 8)
        h.dev.read(PASID, DATA_IOVA + 0x200_0000, 8)                  # stage-1 fault
        h.ctx.trace_note("page-request", LABEL, PASID, DATA_IOVA + 0x200_0000, 4096,
                         info={"prgi": rep, "read": True, "write": False, "last": True})
        h.ctx.trace_note("inv-piotlb", None, PASID, DATA_IOVA, 4096, info={"g": 3, "did": 5})
        h.ctx.hwpt_invalidate(h.s1, [{"addr": DATA_IOVA, "npages": 1, "flags": 0}])
        h.ctx.trace_note("page-response", LABEL, PASID,
                         info={"prgi": rep, "code": 0, "matched": True})
        h.gap = True  # type: ignore[attr-defined]
    h.dev.read(None, 0x40_0000, 8)                                     # the RID
    h.ctx.trace_note("inv-context-cache", None, None, info={"g": 1, "did": 0, "fm": 0})
    h.ctx.trace_note("inv-devtlb", LABEL, None, 0, (1 << 64) - 1, info={"all_pasids": False})
    h.ctx.iotlb_invalidate(h.dev_id, PASID)
    h.ctx.iotlb_invalidate(h.dev_id)
    h.ctx.iotlb_invalidate()
    h.ctx.set_trace(None)
    rec.stop()
    return read_trace(path)


@pytest.fixture
def trace(harness: Harness, tmp_path: object) -> Trace:
    harness.gap = False  # type: ignore[attr-defined]
    return record(harness, os.path.join(str(tmp_path), "x.trace"))


def _lanes(doc: dict) -> dict[tuple[int, int], str]:
    """(pid, tid) -> "process name / thread name"."""
    pn = {e["pid"]: e["args"]["name"] for e in doc["traceEvents"] if e["name"] == "process_name"}
    return {(e["pid"], e["tid"]): f"{pn[e['pid']]} / {e['args']['name']}"
            for e in doc["traceEvents"] if e["name"] == "thread_name"}


def test_the_export_keeps_the_format_rules_and_has_every_event(trace: Trace) -> None:
    doc = to_chrome(trace)
    assert problems(doc) == []
    marks = [e for e in doc["traceEvents"] if e["ph"] == "i"]
    assert len(marks) == len(trace.events) > 0                 # one mark per trace event
    s = summarize(trace.events)
    by_cat: dict[str, int] = {}
    for e in marks:
        by_cat[e["cat"]] = by_cat.get(e["cat"], 0) + 1
    assert by_cat["hit"] == s["hits"] and by_cat["walk"] == s["walks_ok"]
    assert by_cat["fault"] == s["faults"] == 2
    assert by_cat["invalidate"] == s["invalidations"] + sum(s["invalidation_descriptors"].values())
    assert by_cat["page-request"] == s["page_requests"] == 2
    assert by_cat["page-response"] == s["page_responses"] == 2
    assert doc["otherData"]["summary"]["faults"] == 2
    # Each event's own kind is in its args, in the order of the trace.
    kinds = [e["args"]["kind"] for e in marks]
    assert sorted(kinds) == sorted(e["kind"] for e in trace.events)
    # Microseconds since the trace's start.
    t0 = trace.header["t0"]
    assert marks[0]["ts"] == pytest.approx((trace.events[0]["time"] - t0) * 1e6, abs=0.01)


def test_events_are_on_the_lane_of_their_label_and_pasid(trace: Trace) -> None:
    doc = to_chrome(trace)
    lanes = _lanes(doc)
    on = {}
    for e in doc["traceEvents"]:
        if e["ph"] == "i":
            on.setdefault(e["cat"], set()).add(lanes[(e["pid"], e["tid"])])
    assert on["fault"] == {"label 0x10 / PASID 7"}
    assert on["page-request"] == on["page-response"] == {"label 0x10 / PASID 7"}
    assert "label 0x10 / RID" in on["walk"]
    assert {"label 0x10 / PASID 7", "label 0x10 / all PASIDs", "label 0x10 / RID",
            "vIOMMU (no device named) / PASID 7",
            "vIOMMU (no device named) / all PASIDs"} == on["invalidate"]
    names = {e["name"] for e in doc["traceEvents"] if e.get("cat") == "invalidate"}
    assert {"IOTLB invalidate (pages)", "IOTLB invalidate (PASID)", "IOTLB invalidate (device)",
            "IOTLB invalidate (global)", "PASID-IOTLB invalidation (pages)",
            "context-cache invalidation (global)", "device-TLB invalidation (PASID)"} == names
    fault = next(e for e in doc["traceEvents"] if e.get("cat") == "fault")
    assert fault["args"]["iova"] == hex(DATA_IOVA + 0x200_0000)
    assert fault["args"]["vtd_reason"] == "0x71" and fault["args"]["stage"] == "S1"
    walk = next(e for e in doc["traceEvents"] if e.get("cat") == "walk")
    assert walk["args"]["gpa"].startswith("0x") and walk["args"]["answered_by"] == "S1"


def test_counters_drop_to_zero_over_idle_time(trace: Trace) -> None:
    doc = to_chrome(trace)
    counters = [e for e in doc["traceEvents"] if e["ph"] == "C"]
    assert counters and all(set(c["args"]) == {"hits", "walks"} for c in counters)
    total = sum(c["args"]["hits"] + c["args"]["walks"] for c in counters)
    assert total == summarize(trace.events)["translations"]
    ts = [c["ts"] for c in counters]
    gap = max(b - a for a, b in zip(ts, ts[1:]))
    assert gap > 0.4e6                                           # the 0.5 s idle gap...
    before = counters[[b - a for a, b in zip(ts, ts[1:])].index(gap)]
    assert before["args"] == {"hits": 0, "walks": 0}             # ...starts at 0, not held
    assert counters[-1]["args"] == {"hits": 0, "walks": 0}


def test_the_checker_catches_broken_documents(trace: Trace) -> None:
    """The format check can fail: each rule broken once is reported."""
    good = to_chrome(trace)
    ev = good["traceEvents"]
    first_i = next(i for i, e in enumerate(ev) if e["ph"] == "i")
    breaks = {
        "goes back": lambda d: d["traceEvents"][first_i].update(ts=1e12),
        "without an int tid": lambda d: d["traceEvents"][first_i].pop("tid"),
        "no thread_name": lambda d: d["traceEvents"].__setitem__(
            slice(None), [e for e in d["traceEvents"] if e["name"] != "thread_name"]),
        "no process_name": lambda d: d["traceEvents"].__setitem__(
            slice(None), [e for e in d["traceEvents"] if e["name"] != "process_name"]),
        "is not a finite number": lambda d: d["traceEvents"][first_i].update(ts="1"),
        "unknown ph": lambda d: d["traceEvents"][first_i].update(ph="Q"),
        "instant scope": lambda d: d["traceEvents"][first_i].update(s="x"),
        "counter args": lambda d: next(e for e in d["traceEvents"]
                                       if e["ph"] == "C")["args"].update(hits="many"),
        "not strict JSON": lambda d: d["traceEvents"][first_i].update(ts=float("nan")),
        "array at the event": lambda d: d["traceEvents"][first_i].update(stack=[1, 2]),
        "in pid": lambda d: d["traceEvents"][first_i].update(pid=d["traceEvents"][first_i]["pid"]
                                                              + 1000),
    }
    # A lane whose tid is another process's pid: that process's events without a
    # tid (its name, its counters) are on that thread too.
    other_pid = next(e["pid"] for e in ev if e["name"] == "process_name"
                     and e["pid"] != ev[first_i]["pid"])
    breaks[f"tid {other_pid} in pid {ev[first_i]['pid']} and pid {other_pid}"] = (
        lambda d: d["traceEvents"][first_i].update(tid=other_pid))
    for what, brk in breaks.items():
        doc = copy.deepcopy(good)
        brk(doc)
        found = problems(doc)
        assert any(what in p for p in found), (what, found[:3])


def test_plot_data_has_the_same_lanes_and_breaks_the_rate_line(trace: Trace) -> None:
    from vuser.rpc.plot import trace_plot_data

    tl = timeline(trace.events, trace.header["t0"])
    data = trace_plot_data(trace.events, trace.header["t0"])
    assert data.lanes == tl.lanes
    assert data.marks[Lane(LABEL, PASID)]["fault"] == [m.time for m in tl.marks
                                                     if m.category == "fault"]
    assert len(data.marks[Lane(LABEL, PASID)]["page-request"]) == 2
    # No device named: the HWPT invalidations (twice), the context-cache descriptor, the global one.
    assert len(data.marks[Lane(None, ALL)]["invalidate"]) == 4
    # The idle half second is cut short on the time axis, and no segment of
    # the hit-rate line crosses it.
    (a, b), = [(a, b) for a, b in data.axis.gaps if b - a > 0.4]
    sides = {("before" if max(t for t, _r in seg) <= a else
              "after" if min(t for t, _r in seg) >= b else "across")
             for seg in data.rate_segments}
    assert sides == {"before", "after"}
    ax = data.axis
    assert ax.x(b) - ax.x(a) == pytest.approx(ax.shown) and ax.shown < (b - a) / 10
    for t in (0.0, a / 2, a, (a + b) / 2, b, b + 0.001):
        assert ax.t(ax.x(t)) == pytest.approx(t)


@pytest.mark.skipif(not HAVE_MPL, reason="prerequisite missing: matplotlib (vuser[plot])")
def test_plot_writes_the_png_it_describes(trace: Trace, tmp_path: object) -> None:
    from vuser.rpc.plot import plot_trace

    out = os.path.join(str(tmp_path), "t.png")
    data = plot_trace(trace.events, out, t0=trace.header["t0"])
    assert data.out == out
    with open(out, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert sum(len(v.get("fault", [])) for v in data.marks.values()) == 2


def test_an_empty_trace_exports_and_plots(harness: Harness, tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "e.trace")
    TraceRecorder(path).stop()
    t = read_trace(path)
    doc = write_chrome(t, os.path.join(str(tmp_path), "e.json"))
    assert problems(doc) == [] and not [e for e in doc["traceEvents"] if e["ph"] != "M"]
    if HAVE_MPL:
        from vuser.rpc.plot import plot_trace

        assert plot_trace([], os.path.join(str(tmp_path), "e.png")).lanes == []


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vuser", *args], capture_output=True, text=True,
                          timeout=60)


def test_ctl_trace_export(trace: Trace, tmp_path: object) -> None:
    src = os.path.join(str(tmp_path), "x.trace")
    out = os.path.join(str(tmp_path), "x.json")
    r = _cli("ctl", "trace", "export", src, "--format", "perfetto", "-o", out)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"wrote {out}: {len(trace.events)} events on ")
    with open(out) as f:
        doc = json.load(f)
    assert problems(doc) == [] and doc["otherData"]["source"] == src
    r = _cli("ctl", "trace", "export", src)                       # default: FILE.json
    assert r.returncode == 0 and os.path.exists(os.path.join(str(tmp_path), "x.json"))
    r = _cli("ctl", "trace", "export", src, "-o", "/nonexistent-dir/x.json")
    assert r.returncode == 1 and r.stderr.startswith("vuser: error: cannot write ")
    assert r.stderr.count("\n") == 1
    r = _cli("ctl", "trace", "export", os.path.join(str(tmp_path), "none.trace"))
    assert r.returncode == 1 and "no trace file" in r.stderr and r.stderr.count("\n") == 1
    r = _cli("ctl", "trace", "export", "--help")
    assert "ui.perfetto.dev" in r.stdout and "chrome://tracing" in r.stdout


def test_a_cut_short_trace_exports_what_it_holds(trace: Trace, tmp_path: object) -> None:
    src = os.path.join(str(tmp_path), "x.trace")
    with open(src, "rb") as f:
        data = f.read()
    cut = os.path.join(str(tmp_path), "cut.trace")
    with open(cut, "wb") as f:
        f.write(data[:len(data) * 2 // 3])
    t = read_trace(cut)
    assert t.truncated and 0 < len(t.events) < len(trace.events)
    doc = to_chrome(t)
    assert problems(doc) == [] and doc["otherData"]["truncated"] is True
    assert sum(e["ph"] == "i" for e in doc["traceEvents"]) == len(t.events)
