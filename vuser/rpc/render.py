"""Human-readable tables for ``vuser ctl`` (``--json`` prints the raw values).

Plain text, fixed-width columns, addresses in hex; nothing here talks to the
server.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from vuser.devices.introspect import VtdFaultReason

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


#: Result fields that hold an address or a size, shown in hex by ``call_result``
#: (a key matches itself and any ``*_KEY``: ``dst_iova``, ``page_size``).
ADDRESS_KEYS = frozenset({"iova", "last", "addr", "gpa", "hpa", "start", "end", "base",
                          "length", "size", "ptr", "pgtbl"})
#: Methods whose bare integer result is an address (the IOVA a map chose).
ADDRESS_RESULTS = frozenset({"ioas_map", "ioas_map_file", "ioas_copy"})


def _is_address_key(key: Any) -> bool:
    return isinstance(key, str) and (key in ADDRESS_KEYS
                                     or key.rsplit("_", 1)[-1] in ADDRESS_KEYS)


def _hex_addresses(v: Any, address: bool = False) -> Any:
    if isinstance(v, dict):
        return {k: _hex_addresses(x, _is_address_key(k)) for k, x in v.items()}
    if isinstance(v, list):
        return [_hex_addresses(x, address) for x in v]
    if address and isinstance(v, int) and not isinstance(v, bool):
        return hx(v)
    return v


def call_result(method: str, value: Any) -> str:
    """A ``ctl call`` result as JSON, its addresses and sizes as ``0x`` strings
    (a bare address as it is: ``0x10000``)."""
    shown = _hex_addresses(value, method in ADDRESS_RESULTS)
    return shown if isinstance(shown, str) and isinstance(value, int) else dumps_json(shown)


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


def _feature(name: str, f: dict[str, Any] | None, cap: bool) -> str:
    if f is None:                       # no device layer: the model's capability only
        return f"{name} {'capable' if cap else 'no'}"
    if not f["cap"]:
        return f"{name} no"
    return f"{name} capable, {'enabled' if f['enabled'] else 'not enabled'}"


def _vtd_reason(code: int) -> str:
    """A VT-d scalable-mode fault reason (what a vIOMMU blocked an entry for)."""
    try:
        return f"{VtdFaultReason(code).name} ({code:#x})"
    except ValueError:
        return f"{code:#x}"


def pasid_table(t: dict[str, Any]) -> str:
    feats = t.get("features") or {}
    head = (f"device {t['name']} label {hx(t['label'])} dev_id {t['dev_id']}, "
            f"PASID width {t['pasid_width']}; "
            + "; ".join(_feature(n, feats.get(k) if feats else None, cap)
                        for n, k, cap in (("PASID", "pasid", t["pasid_width"] > 0),
                                          ("ATS", "ats", t["ats"]), ("PRI", "pri", t["pri"]))))
    vi = t.get("viommu")
    if vi:
        head += (f"\nvIOMMU {hx(vi['viommu'])}: translation "
                 f"{'on' if vi['translation'] else 'off'}, CM={vi['cm']}, RID_PASID "
                 f"{'-' if vi['rid_pasid'] is None else vi['rid_pasid']}")
    rows = [[pasid_str(e["pasid"]), pasid_str(e["vpasid"]), e.get("kind", e.get("stage")),
             e["hwpt"] if e["hwpt"] is not None else "-",
             "-" if e.get("did") is None else e["did"],
             hx(e.get("pgtbl_addr")), e.get("levels") or "-", e.get("parent") or "-",
             e.get("ioas") or "-", e.get("fault") or "-",
             _vtd_reason(e["reason"]) if e.get("reason") else ""]
            for e in t["entries"]]
    out = head + "\n" + table(["PASID", "VPASID", "KIND", "HWPT", "DID", "S1_ROOT_GPA",
                               "S1_LEVELS", "S2_PARENT", "IOAS", "FAULT_Q", "BLOCKED_BY"],
                              rows, empty="(nothing attached)")
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
            f"iova {hx(f.get('iova'))} gpa {hx(f.get('gpa'))} "
            f"{stage_name(f['stage'])} {reason_name(f['reason'], f.get('vtd_reason'))} "
            f"access {f.get('access')}"
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
             hx(r.get("gpa")), stage_name(r["stage"]),
             reason_name(r["reason"], r.get("vtd_reason")), r.get("access")]
            for r in f["recent"]]
    out = f"{f['total']} DMA faults since the server started; recent:\n"
    out += table(["TIME", "LABEL", "PASID", "IOVA", "GPA", "STAGE", "REASON", "ACCESS"], rows)
    q = [[x["id"], x["depth"], x["queued"], x["pending_groups"], x["delivered"], x["responded"],
          x["lost_events"]] for x in f["queues"]]
    out += "\n\nfault queues:\n" + table(["ID", "DEPTH", "QUEUED", "PENDING", "DELIVERED",
                                          "RESPONDED", "LOST"], q)
    if f.get("page_requests"):
        out += "\n\nrecent page requests:\n" + "\n".join(page_request_line(p)
                                                        for p in f["page_requests"])
    return out


INV_NAMES = {"inv-context-cache": "context-cache", "inv-pasid-cache": "PASID-cache",
              "inv-iotlb": "IOTLB", "inv-piotlb": "PASID-IOTLB", "inv-devtlb": "device-TLB"}
GRANULARITY = {
    "inv-context-cache": {1: "global", 2: "domain", 3: "device"},
    "inv-pasid-cache": {0: "domain", 1: "PASID", 3: "global"},
    "inv-iotlb": {1: "global", 2: "domain", 3: "pages"},
    "inv-piotlb": {2: "PASID", 3: "pages"},
}
_U64_MAX = (1 << 64) - 1


def invalidation_granularity(kind: str, info: dict[str, Any]) -> str | None:
    """A vIOMMU invalidation descriptor's granularity in words (VT-d 6.5.2), or None."""
    if kind == "inv-devtlb":
        return "all PASIDs" if info.get("all_pasids") else "PASID"
    return GRANULARITY.get(kind, {}).get(info.get("g"))


def _range(iova: int, length: int) -> str:
    if length in (0, _U64_MAX) or length is None:
        return "all addresses"
    return f"{hx(iova)}+{length >> 12} page{'s' if length >> 12 != 1 else ''}"


def trace_detail(e: dict[str, Any]) -> str:
    """What one trace event was, in words (the DETAIL column of ``trace show``)."""
    kind, info = e["kind"], e.get("info") or {}
    if kind == "fault":
        return reason_name(e["fault"], e.get("vtd"))
    if kind == "invalidate":
        return f"IOTLB: {e['count']} entries dropped, {_range(e['iova'], e['length'])}"
    if kind in INV_NAMES:
        out = f"{INV_NAMES[kind]} invalidation"
        g = GRANULARITY.get(kind, {}).get(info.get("g"))
        if g:
            out += f" ({g})"
        if "did" in info:
            out += f" did {info['did']}"
        if kind in ("inv-iotlb", "inv-piotlb", "inv-devtlb"):
            out += ", " + _range(e["iova"], e["length"])
        if info.get("all_pasids"):
            out += ", all PASIDs"
        return out
    if kind == "page-request":
        rw = ("r" if info.get("read") else "") + ("w" if info.get("write") else "")
        return (f"page request {rw or '-'} group {info.get('prgi')}"
                + (" (last)" if info.get("last") else ""))
    if kind == "page-response":
        code = {0: "success", 1: "invalid", 15: "failure"}.get(info.get("code"),
                                                                str(info.get("code")))
        return (f"page response {code} group {info.get('prgi')}"
                + ("" if info.get("matched", True) else " (no such request)"))
    return ""


def _trace_pasid(e: dict[str, Any]) -> str:
    kind = e["kind"]
    if e["pasid"] == -1 or (kind == "invalidate" and e["label"] is None):
        return "all"
    if e["pasid"] is None and kind.startswith("inv-"):
        return "-"
    return pasid_str(e["pasid"])


def trace_events(events: list[dict[str, Any]], t0: float) -> str:
    rows = []
    for e in events:
        dma = e["kind"] in ("translate", "fault")
        rows.append([f"{e['time'] - t0:.6f}", e["kind"], hx(e["label"]), _trace_pasid(e),
                     hx(e["iova"]) if dma else "-", hx(e["gpa"]),
                     stage_name(e["stage"]) if dma else "-",
                     ("hit" if e["hit"] else "miss") if e["kind"] == "translate" else "-",
                     trace_detail(e)])
    return table(["T(s)", "KIND", "LABEL", "PASID", "IOVA", "GPA", "STAGE", "IOTLB", "DETAIL"],
                 rows, empty="(no events)")


def trace_summary(s: dict[str, Any], header: dict[str, Any], footer: dict[str, Any] | None) -> str:
    rate = f"{100 * s['hit_rate']:.1f}%" if s["hit_rate"] is not None else "-"
    rows = [["events", s["events"]], ["translations", s["translations"]],
            ["IOTLB hits", s["hits"]], ["misses that walked", s["walks_ok"]],
            ["IOTLB hit rate", rate], ["faults", s["faults"]],
            ["invalidations", s["invalidations"]],
            ["invalidated IOTLB entries", s["invalidated_entries"]],
            *[[f"{INV_NAMES.get(k, k)} invalidation descriptors", n]
              for k, n in sorted(s.get("invalidation_descriptors", {}).items())],
            *([["page requests", s["page_requests"]], ["page responses", s["page_responses"]]]
              if s.get("page_requests") or s.get("page_responses") else []),
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
