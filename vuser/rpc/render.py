"""Human-readable tables for ``vuser ctl`` (``--json`` prints the raw values).

Plain text, fixed-width columns, addresses in hex; nothing here talks to the
server.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from .tracing import reason_name, stage_name


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, empty: str = "(none)") -> str:
    if not rows:
        return "  ".join(headers) + "\n" + empty
    cells = [[_cell(v) for v in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    return "\n".join(lines)


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    return str(v)


def hx(v: int | None) -> str:
    return "-" if v is None else f"{v:#x}"


def pasid_str(p: int | None) -> str:
    return "RID" if p is None else str(p)


def dumps_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True,
                      default=lambda o: o.hex() if isinstance(o, (bytes, bytearray)) else str(o))


# -- views ---------------------------------------------------------------------------
def _attach_text(a: dict[str, Any]) -> str:
    where = f"hwpt {a['hwpt']} ({'nested' if a['type'] == 'hwpt_nested' else 'paging'}"
    if a.get("parent"):
        where += f" on {a['parent']}"
    return f"{pasid_str(a['pasid'])}->{where}, ioas {a.get('ioas')})"


def devices(devs: list[dict[str, Any]]) -> str:
    rows = []
    for d in devs:
        attach = "; ".join(_attach_text(a) for a in d["attach"]) or "-"
        rows.append([hx(d["label"]), d["name"], d.get("type"), d["group"], d.get("vm"),
                     d["context"] or "unbound", d["dev_id"], d["pasid_width"],
                     "".join(f for f, on in (("A", d["ats"]), ("P", d["pri"])) if on) or "-",
                     attach])
    return table(["LABEL", "NAME", "TYPE", "GROUP", "VM", "CONTEXT", "DEV_ID", "PASID_BITS",
                  "ATS/PRI", "ATTACHED (PASID->HWPT)"], rows)


def pasid_table(t: dict[str, Any]) -> str:
    head = (f"device {t['name']} label {hx(t['label'])} dev_id {t['dev_id']}, "
            f"PASID width {t['pasid_width']}, ATS {'on' if t['ats'] else 'off'}, "
            f"PRI {'on' if t['pri'] else 'off'}")
    rows = [[pasid_str(e["pasid"]), pasid_str(e["vpasid"]), e["hwpt"], e["stage"],
             e.get("levels"), hx(e.get("pgtbl_addr")), e.get("parent"), e.get("ioas"),
             e.get("fault")] for e in t["entries"]]
    out = head + "\n" + table(["PASID", "VPASID", "HWPT", "STAGE", "S1_LEVELS", "S1_ROOT_GPA",
                               "S2_PARENT", "IOAS", "FAULT_Q"], rows, empty="(nothing attached)")
    if t["pasid_map"]:
        out += "\nvPASID -> pPASID: " + ", ".join(f"{v}->{p}" for v, p in t["pasid_map"])
    return out


def ioas_list(items: list[dict[str, Any]]) -> str:
    parts = []
    for i in items:
        parts.append(f"IOAS {i['id']}: {len(i['areas'])} areas, {i['mapped']:#x} bytes mapped, "
                     f"HWPTs {i['hwpts'] or '-'}, usable "
                     + ", ".join(f"[{hx(s)}, {hx(e)}]" for s, e in i["iova_ranges"]))
        rows = [[hx(a["iova"]), hx(a["last"]), hx(a["last"] - a["iova"] + 1),
                 ("r" if a["prot"] & 4 else "-") + ("w" if a["prot"] & 2 else "-"),
                 f"{a['file_id'][0]}:{a['file_id'][1]}" if a["file_id"] else "buffer"]
                for a in i["areas"]]
        parts.append(table(["  IOVA", "LAST", "SIZE", "PROT", "BACKING(dev:ino)"], rows,
                           empty="  (no mappings)"))
    return "\n".join(parts) if parts else "(no IOAS)"


def hwpts(items: list[dict[str, Any]]) -> str:
    rows = [[h["id"], h["stage"], h.get("parent"), h.get("ioas"), h["users"],
             h.get("fault"), len(h["attached"]),
             hx(h.get("pgtbl_addr")) if h["type"] == "hwpt_nested" else
             ("nest_parent" if h.get("nest_parent") else ("auto" if h.get("auto") else "-"))]
            for h in sorted(items, key=lambda h: h["id"])]
    return table(["HWPT", "STAGE", "PARENT", "IOAS", "USERS", "FAULT_Q", "ATTACHED", "DETAIL"],
                 rows)


def counters(c: dict[str, Any]) -> str:
    m = c["model"]
    tr = m["hits"] + m["misses"]
    rate = f"{100 * m['hits'] / tr:.1f}%" if tr else "-"
    rows = [[k, v] for k, v in m.items()]
    rows.append(["iotlb_hit_rate", rate])
    out = table(["COUNTER", "VALUE"], rows)
    for label, d in sorted(c.get("devices", {}).items(), key=lambda kv: str(kv[0])):
        out += f"\n\ndevice {label}:\n" + table(["COUNTER", "VALUE"], sorted(d.items()))
    if c.get("log"):
        out += "\n\nguest-caused log lines (rate-limited):\n" + table(
            ["LINE", "EMITTED", "SUPPRESSED"],
            [[k, v["emitted"], v["suppressed"]] for k, v in sorted(c["log"].items())])
    return out


def fault_line(f: dict[str, Any]) -> str:
    return (f"label {hx(f.get('label'))} pasid {pasid_str(f.get('pasid'))} "
            f"iova {hx(f.get('iova'))} addr {hx(f.get('addr'))} "
            f"{stage_name(f['stage'])} {reason_name(f['reason'])} access {f.get('access')}"
            + (" (stage-1 table fetch)" if f.get("s1_fetch") else ""))


def page_request_line(p: dict[str, Any]) -> str:
    ev = p.get("event")
    if ev == "queued":
        return "page request queued: " + "; ".join(
            f"label {hx(r['label'])} pasid {r['pasid']} addr {hx(r['addr'])} perm {r['perm']} "
            f"grp {r['grpid']} cookie {r['cookie']}" for r in p.get("records", []))
    if ev == "response":
        return (f"page response: fault queue {p['fault_id']} cookie {p['cookie']} "
                f"{'SUCCESS' if p['code'] == 0 else 'INVALID'}")
    return f"page request {ev}: " + ", ".join(f"{k} {v}" for k, v in p.items()
                                               if k not in ("event", "time"))


_OPERANDS = {"MEMCPY": ("src", "dst"), "FILL": ("dst",), "COMPARE": ("src", "dst")}


def completion_line(c: dict[str, Any]) -> str:
    """One ``dma_completion`` notification (one descriptor)."""
    op = c.get("opcode_name") or f"opcode {hx(c.get('opcode'))}"
    addrs = " ".join(f"{k} {hx(c.get(k))}" for k in _OPERANDS.get(op, ()))
    out = (f"label {hx(c.get('label'))} q{c.get('queue')}[{c.get('index')}] "
           f"pasid {pasid_str(c.get('pasid'))} {op}"
           + (f" {addrs} len {hx(c.get('length'))}" if addrs else "")
           + f": {c.get('status_name')}")
    if c.get("status_name") == "PAGE_FAULT":
        info = c.get("fault_info") or 0
        out += (f" at {hx(c.get('fault_addr'))} ({'stage 2' if info & 2 else 'stage 1'}"
                f"{', write' if info & 1 else ''}) after {hx(c.get('bytes_done'))} bytes")
    elif op == "COMPARE" and c.get("status_name") == "SUCCESS":
        out += (" equal" if not c.get("result") else
                f" different at {hx(c.get('bytes_done'))}")
    if c.get("halted"):
        out += f"; queue halted: {c['halted']}"
    return out


def dma_queues(qs: list[dict[str, Any]]) -> str:
    rows = [[hx(q["label"]), q["queue"], hx(q["ring"]), q["size"], q["head"], q["tail"],
             q["completed"], q["enabled"], q["busy"], q["halted"], q["error"] or "-"]
            for q in qs]
    return table(["LABEL", "QUEUE", "RING", "SIZE", "HEAD", "TAIL", "COMPLETED", "ENABLED",
                  "BUSY", "HALTED", "ERROR"], rows, empty="(no DMA queues)")


def faults(f: dict[str, Any]) -> str:
    rows = [[f"{r['time']:.3f}", hx(r.get("label")), pasid_str(r.get("pasid")), hx(r.get("iova")),
             hx(r.get("addr")), stage_name(r["stage"]), reason_name(r["reason"]), r.get("access")]
            for r in f["recent"]]
    out = f"{f['total']} DMA faults since the server started; recent:\n"
    out += table(["TIME", "LABEL", "PASID", "IOVA", "ADDR", "STAGE", "REASON", "ACCESS"], rows)
    q = [[x["id"], x["depth"], x["queued"], x["pending_groups"], x["delivered"], x["responded"],
          x["lost_events"]] for x in f["queues"]]
    out += "\n\nfault queues:\n" + table(["ID", "DEPTH", "QUEUED", "PENDING", "DELIVERED",
                                          "RESPONDED", "LOST"], q)
    if f.get("page_requests"):
        out += "\n\nrecent page requests:\n" + "\n".join(page_request_line(p)
                                                        for p in f["page_requests"])
    return out


def trace_events(events: list[dict[str, Any]], t0: float) -> str:
    rows = []
    for e in events:
        rows.append([f"{e['time'] - t0:.6f}", e["kind"], hx(e["label"]), pasid_str(e["pasid"]),
                     hx(e["iova"]), hx(e["gpa"]), stage_name(e["stage"]),
                     "hit" if e["hit"] else ("-" if e["kind"] != "translate" else "miss"),
                     reason_name(e["fault"]) if e["kind"] == "fault" else
                     (f"{e['count']} dropped" if e["kind"] == "invalidate" else "")])
    return table(["T(s)", "KIND", "LABEL", "PASID", "IOVA", "GPA", "STAGE", "IOTLB", "DETAIL"],
                 rows, empty="(no events)")


def trace_summary(s: dict[str, Any], header: dict[str, Any], footer: dict[str, Any] | None) -> str:
    rate = f"{100 * s['hit_rate']:.1f}%" if s["hit_rate"] is not None else "-"
    rows = [["events", s["events"]], ["translations", s["translations"]],
            ["IOTLB hits", s["hits"]], ["misses that walked", s["walks_ok"]],
            ["IOTLB hit rate", rate], ["faults", s["faults"]],
            ["invalidations", s["invalidations"]],
            ["invalidated IOTLB entries", s["invalidated_entries"]],
            ["distinct pages", s["pages"]], ["duration (s)", f"{s['duration']:.6f}"]]
    if footer is None:
        rows.append(["note", "the trace was cut short (no footer)"])
    elif footer.get("dropped"):
        rows.append(["dropped (limit reached)", footer["dropped"]])
    out = table(["", ""], rows)
    if s["stages"]:
        out += "\n\nanswered by: " + ", ".join(f"{k} {v}" for k, v in s["stages"].items())
    if s["fault_reasons"]:
        out += "\nfault reasons: " + ", ".join(f"{k} {v}" for k, v in s["fault_reasons"].items())
    out += "\n\n" + table(["LABEL", "PASID", "TRANSLATIONS"],
                          [[hx(lbl), pasid_str(p), n] for lbl, p, n in s["per_pasid"]])
    out += "\n\n" + table(["LABEL", "PASID", "PAGE", "TRANSLATIONS"],
                          [[hx(lbl), pasid_str(p), hx(pg), n] for lbl, p, pg, n in s["top_pages"]])
    return out
