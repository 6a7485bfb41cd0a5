"""An independent check of the Chrome/Perfetto JSON trace format (the "Trace
Event Format", JSON Object Format), written from the format's rules and not
from vuser's exporter, for the tests of ``vuser.rpc.trace_export``.

``problems(doc)`` lists every rule a document breaks (empty: none):

- the top level is an object with a ``traceEvents`` list; ``displayTimeUnit``,
  when present, is "ms" or "ns"; the whole is JSON without NaN/Infinity;
- every event is an object with no array at its top level (Perfetto's JSON
  tokenizer cannot read one), a string ``name`` and a known ``ph``, and the
  keys its phase requires: ``pid`` everywhere; ``tid`` on thread events
  (B, E, X, i/I) and thread metadata; ``ts`` (a finite number >= 0, in
  microseconds) on every non-metadata event; ``dur`` >= 0 on X; ``s`` of an
  instant is g, p or t; a counter's ``args`` is an object of numbers;
- metadata: ``process_name``/``thread_name`` carry ``args.name`` (a string),
  ``*_sort_index`` carry ``args.sort_index`` (an int);
- timestamps never go back on a lane (a (pid, tid) thread) nor on a counter
  (pid, name), in file order;
- every pid an event uses has a ``process_name``, every (pid, tid) a
  ``thread_name``, and a tid belongs to one pid only (an event without a
  tid is on the thread tid == pid, as viewers read it).
"""

from __future__ import annotations

import json
import math
from typing import Any

PHASES = set("BEXiICbneNODsTtfPMRcVv")
THREAD_PHASES = set("BEXiI")
METADATA_NAMES = {"process_name", "thread_name", "process_sort_index", "thread_sort_index",
                  "process_labels", "process_uptime_seconds", "num_cpus"}


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def problems(doc: Any) -> list[str]:
    out: list[str] = []
    try:
        json.dumps(doc, allow_nan=False)
    except (TypeError, ValueError) as e:
        out.append(f"not strict JSON: {e}")
    if not isinstance(doc, dict) or not isinstance(doc.get("traceEvents"), list):
        return out + ["top level is not an object with a traceEvents list"]
    if doc.get("displayTimeUnit", "ms") not in ("ms", "ns"):
        out.append(f"displayTimeUnit {doc['displayTimeUnit']!r}")
    pnames: set[int] = set()
    tnames: set[tuple[int, int]] = set()
    used_p: set[int] = set()
    used_t: set[tuple[int, int]] = set()
    owner: dict[int, int] = {}
    last_ts: dict[Any, float] = {}
    for i, e in enumerate(doc["traceEvents"]):
        where = f"event {i}"
        if not isinstance(e, dict):
            out.append(f"{where}: not an object")
            continue
        if any(isinstance(v, list) for v in e.values()):
            out.append(f"{where}: an array at the event's top level")
        ph, name = e.get("ph"), e.get("name")
        if ph not in PHASES:
            out.append(f"{where}: unknown ph {ph!r}")
            continue
        if not isinstance(name, str):
            out.append(f"{where}: no string name")
        pid, tid = e.get("pid"), e.get("tid")
        if not isinstance(pid, int) or isinstance(pid, bool):
            out.append(f"{where}: no int pid")
            continue
        needs_tid = ph in THREAD_PHASES or (ph == "M" and str(name).startswith("thread_"))
        if needs_tid and (not isinstance(tid, int) or isinstance(tid, bool)):
            out.append(f"{where}: {ph} without an int tid")
            continue
        # A viewer reads a missing tid as tid == pid (Perfetto's JSON importer does).
        thread = tid if isinstance(tid, int) else pid
        if owner.setdefault(thread, pid) != pid:
            out.append(f"{where}: tid {thread} in pid {pid} and pid {owner[thread]}")
        args = e.get("args", {})
        if not isinstance(args, dict):
            out.append(f"{where}: args is not an object")
            args = {}
        if ph == "M":
            if name not in METADATA_NAMES:
                out.append(f"{where}: unknown metadata {name!r}")
            if name in ("process_name", "thread_name") and not isinstance(args.get("name"), str):
                out.append(f"{where}: {name} without args.name")
            if str(name).endswith("_sort_index") and not isinstance(args.get("sort_index"), int):
                out.append(f"{where}: {name} without an int args.sort_index")
            if name == "process_name":
                pnames.add(pid)
            if name == "thread_name":
                tnames.add((pid, tid))
            continue
        ts = e.get("ts")
        if not _is_num(ts) or ts < 0:
            out.append(f"{where}: ts {ts!r} is not a finite number >= 0")
            continue
        if ph == "X" and not (_is_num(e.get("dur")) and e["dur"] >= 0):
            out.append(f"{where}: X without dur >= 0")
        if ph in "iI" and e.get("s", "t") not in ("g", "p", "t"):
            out.append(f"{where}: instant scope {e.get('s')!r}")
        if ph == "C":
            if not args or not all(_is_num(v) for v in args.values()):
                out.append(f"{where}: counter args are not all numbers")
            key: Any = ("C", pid, name)
        else:
            key = (pid, tid)
        if ts < last_ts.get(key, -1.0):
            out.append(f"{where}: ts {ts} goes back on {key} (after {last_ts[key]})")
        last_ts[key] = max(ts, last_ts.get(key, -1.0))
        used_p.add(pid)
        if ph in THREAD_PHASES:
            used_t.add((pid, tid))
    out += [f"pid {p} has no process_name" for p in sorted(used_p - pnames)]
    out += [f"thread {t} has no thread_name" for t in sorted(used_t - tnames)]
    return out
