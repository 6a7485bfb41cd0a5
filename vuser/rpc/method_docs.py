"""What each control method's parameters mean and what it returns.

``rpc_methods`` joins this table to each method's signature (names, kinds,
defaults, the uAPI names a flag or enum takes: ``names.ENUM_PARAMS``) and
its docstring, so ``vuser ctl methods`` and docs/control.md show one source.
tests/rpc/test_method_docs.py fails when a method or parameter has no entry
here, or an entry names one that does not exist, and when docs/control.md
differs from ``markdown()`` (regenerate it: ``vuser ctl methods --offline
--markdown > docs/control.md``).

Addresses are IOVAs or GPAs as integers; the results' addresses are integers
too (``vuser ctl call`` shows them in hex). A "fault" in a result is nil or a
map: ``label, dev_id, pasid, iova, gpa, stage`` (1 guest's stage 1, 2 host's
stage 2), ``reason`` (the model's fault kind), ``vtd_reason`` (the VT-d
reason a guest sees, nil for stage 2), ``access``, ``s1_fetch``.
"""

from __future__ import annotations

import textwrap
from typing import Any

_DEV = "the device's dev_id (from device_bind or device_lookup)"
_PASID = "the PASID the device emits; nil for untagged DMA (the RID)"
_ACCESS = "READ 1, WRITE 2, EXEC 4, PRIV 8 (|-joined names or a number)"
_IOAS = "an IOAS id (ioas_alloc; `vuser ctl ioas` lists them)"
_LABEL = "a device label (its source-id; `vuser ctl devices` lists them)"
_HWPT = "a HWPT id (hwpt_alloc; `vuser ctl hwpts` lists them)"
_MAPFLAGS = ("READABLE 4 | WRITEABLE 2 (the default: both); FIXED_IOVA 1 is implied when an "
             "iova is given")
_FAULTQ = "a fault queue id (fault_queue_alloc)"
_RANGE_PASID = ("nil: the RID; -1 (ALL_PASIDS): every PASID and the RID; "
                "else one PASID")

#: method -> (what it returns, {parameter: what it means}).
DOCS: dict[str, tuple[str, dict[str, str]]] = {
    # -- the iommufd uAPI, IoasidContext's methods -------------------------------------
    "ioas_alloc": ("int: the new IOAS id", {}),
    "ioas_map": ("int: the IOVA mapped", {
        "ioas_id": _IOAS,
        "buffer": "the bytes to map (the server copies them into a buffer it owns), or nil "
                  "for zeroes (at most 256 MiB)",
        "length": "bytes to map",
        "iova": "where to map; nil: the model picks one (automatic IOVA)",
        "flags": _MAPFLAGS}),
    "ioas_map_file": ("int: the IOVA mapped", {
        "ioas_id": _IOAS,
        "path": "a file the server opens (read-write if WRITEABLE) and maps MAP_SHARED",
        "start": "offset in the file, page aligned",
        "length": "bytes to map",
        "iova": "where to map; nil: the model picks one",
        "flags": _MAPFLAGS}),
    "ioas_copy": ("int: the destination IOVA", {
        "dst_ioas_id": "the IOAS to map into",
        "src_ioas_id": "the IOAS whose pages are shared",
        "src_iova": "first IOVA of the source range",
        "length": "bytes",
        "dst_iova": "where to map in the destination; nil: the model picks one",
        "flags": _MAPFLAGS}),
    "ioas_unmap": ("int: the bytes unmapped", {
        "ioas_id": _IOAS,
        "iova": "first IOVA (0 with length 2^64-1: everything)",
        "length": "bytes"}),
    "ioas_iova_ranges": ("map {ranges: [[start, last], ...] inclusive, alignment}", {
        "ioas_id": _IOAS}),
    "ioas_allow_iovas": ("nil", {
        "ioas_id": _IOAS,
        "ranges": "a list of inclusive [start, last] pairs; an empty list clears"}),
    "ioas_option": ("int: the option's value (GET) or the value set (SET)", {
        "option_id": "RLIMIT_MODE 0 (context-wide) or HUGE_PAGES 1 (per IOAS)",
        "op": "SET 0 or GET 1",
        "object_id": "the IOAS for HUGE_PAGES; 0 for RLIMIT_MODE",
        "val64": "the value to SET (0 or 1)"}),
    "ioas_areas": ("list of maps {iova, last, prot, file_id (nil: a buffer)}, by IOVA", {
        "ioas_id": _IOAS}),
    "hwpt_alloc": ("int: the HWPT id", {
        "dev_id": _DEV,
        "pt_id": "an IOAS (a paging HWPT), or a NEST_PARENT paging HWPT or vIOMMU (a nested "
                 "HWPT)",
        "flags": "NEST_PARENT 1, DIRTY_TRACKING 2, FAULT_ID_VALID 4, PASID 8 (a nested HWPT: "
                 "FAULT_ID_VALID and PASID only)",
        "data_type": "NONE 0 (paging) or VTD_S1 1 (nested)",
        "data": "VTD_S1: a map {flags, pgtbl_addr, addr_width} (the guest's stage-1 root GPA, "
                "48 or 57) or the iommu_hwpt_vtd_s1 bytes; nil for paging",
        "fault_id": "with FAULT_ID_VALID: the fault queue that gets this HWPT's page requests"}),
    "hwpt_invalidate": ("int: the entries done (an error carries `processed` too)", {
        "hwpt_id": "a nested HWPT or a vIOMMU",
        "entries": "VTD_S1 entries: maps {addr, npages, flags} (addr 4 KiB aligned; flags LEAF "
                   "1 or 0; addr 0 with npages 2^64-1: all)",
        "data_type": "VTD_S1 0 (a nested HWPT) or the vIOMMU's type"}),
    "hwpt_set_dirty_tracking": ("nil", {
        "hwpt_id": "a paging HWPT allocated with DIRTY_TRACKING",
        "enable": "true to start (and clear the dirty record), false to stop"}),
    "hwpt_get_dirty_bitmap": ("bytes: one bit per page_size, little-endian u64 words", {
        "hwpt_id": "a paging HWPT with dirty tracking",
        "iova": "first IOVA", "length": "bytes",
        "page_size": "bytes per bit, a power of two",
        "flags": "NO_CLEAR 1 keeps the dirty record; 0 clears it"}),
    "get_hw_info": ("map {data_type, data (VT-d cap/ecap), capabilities, max_pasid_log2}", {
        "dev_id": _DEV,
        "in_data_type": "nil, NONE 0 (the uAPI's DEFAULT) or INTEL_VTD 1 (another type is "
                        "EOPNOTSUPP)"}),
    "device_bind": ("int: the dev_id", {
        "device": _LABEL}),
    "device_unbind": ("nil", {"dev_id": _DEV}),
    "device_attach": ("int: the HWPT attached (the automatic one for an IOAS)", {
        "dev_id": _DEV,
        "pt_id": "an IOAS or a HWPT",
        "pasid": "nil: the RID; else the PASID to attach"}),
    "device_replace": ("int: the new HWPT", {
        "dev_id": _DEV,
        "pt_id": "an IOAS or a HWPT",
        "pasid": "nil: the RID; else the PASID"}),
    "device_detach": ("nil", {
        "dev_id": _DEV,
        "pasid": "nil: the RID; else the PASID (it goes back to blocking)"}),
    "device_lookup": ("int: the dev_id", {"label": _LABEL}),
    "device_info": ("map: the device, its attachments and PASID table", {"dev_id": _DEV}),
    "device_pasid_map": ("nil", {
        "dev_id": _DEV,
        "vpasid": "the guest's PASID",
        "ppasid": "the PASID it is emitted as; nil clears the entry"}),
    "device_ppasid": ("int: the pPASID (the vPASID itself when unmapped)", {
        "dev_id": _DEV, "vpasid": "the guest's PASID"}),
    "destroy": ("nil", {"obj_id": "any object id (IOAS, HWPT, fault queue, vIOMMU, vDEVICE, "
                                  "vEVENTQ)"}),
    "objects": ("list of maps: every object, by id", {}),
    "object_info": ("map: the object", {"obj_id": "an object id"}),
    "fault_queue_alloc": ("int: the fault queue id", {
        "depth": "at most this many records queued (1..2^19); more are lost and counted"}),
    "fault_queue_status": ("map {depth, queued, pending_groups, lost_events, delivered, "
                           "responded}", {"fault_id": _FAULTQ}),
    "fault_read": ("list of maps {flags, dev_id, label, pasid, grpid, perm, addr, length, "
                   "cookie}, oldest first", {
                       "fault_id": _FAULTQ,
                       "max_records": "at most this many records; 0: all"}),
    "fault_respond": ("nil", {
        "fault_id": _FAULTQ,
        "cookie": "the group's cookie (from fault_read)",
        "code": "SUCCESS 0 or INVALID 1"}),
    "viommu_alloc": ("int: the vIOMMU id", {
        "dev_id": _DEV,
        "hwpt_id": "a NEST_PARENT paging HWPT",
        "viommu_type": "VUSER_VTD (the only type the model accepts)"}),
    "vdevice_alloc": ("int: the vDEVICE id", {
        "viommu_id": "a vIOMMU id",
        "dev_id": _DEV,
        "virt_id": "the device's virtual id for the guest (u64, e.g. its virtual RID)"}),
    "vdevice_lookup": ("int: the dev_id", {
        "viommu_id": "a vIOMMU id", "virt_id": "a virtual id given to vdevice_alloc"}),
    "veventq_alloc": ("int: the vEVENTQ id", {
        "viommu_id": "a vIOMMU id",
        "veventq_type": "VUSER_VTD (DEFAULT 0 is EOPNOTSUPP)",
        "depth": "events queued at most (> 0)"}),
    "veventq_read": ("bytes: whole records (header, then payload) within count bytes", {
        "veventq_id": "a vEVENTQ id", "count": "the most bytes to return"}),
    "translate": ("map {segments: [{iova, gpa, length}] or nil, fault: nil or the fault}", {
        "dev_id": _DEV, "pasid": _PASID,
        "iova": "first address of the DMA", "length": "bytes",
        "access": _ACCESS}),
    "ats_translate": ("map {iova, size, gpa, read, write, fault}: the translated page, or "
                      "{fault}", {
                          "dev_id": _DEV, "pasid": _PASID,
                          "iova": "an address in the page to translate",
                          "access": _ACCESS}),
    "read": ("map {data: bytes or nil, fault: nil or the fault}", {
        "dev_id": _DEV, "pasid": _PASID, "iova": "first address", "length": "bytes",
        "access": _ACCESS}),
    "write": ("map {fault: nil or the fault} (nil: all bytes written)", {
        "dev_id": _DEV, "pasid": _PASID, "iova": "first address", "data": "the bytes",
        "access": _ACCESS}),
    "page_request": ("bool: true when queued (or held for the group's last request), false "
                     "when answered at once", {
                         "dev_id": _DEV, "pasid": _PASID,
                         "addr": "the page address requested",
                         "perm": "READ 1, WRITE 2, EXEC 4, PRIV 8 (|-joined names)",
                         "grpid": "the page request group index (9 bits)",
                         "last": "true for the group's last request"}),
    "iotlb_invalidate": ("int: the IOTLB entries dropped", {
        "dev_id": "the device; nil: every device (global)",
        "pasid": _RANGE_PASID,
        "addr": "first address, 4 KiB aligned",
        "npages": "pages; 2^64-1: every address",
        "vpasid": "true: pasid is the guest's vPASID (the device's PASID table applies)",
        "devtlb": "false: leave the device TLBs (ATS) alone, as a VT-d IOTLB descriptor does"}),
    "devtlb_invalidate": ("nil", {
        "dev_id": _DEV, "pasid": _RANGE_PASID,
        "addr": "first address, 4 KiB aligned", "npages": "pages; 2^64-1: every address",
        "vpasid": "true: pasid is the guest's vPASID"}),
    "iotlb_set_capacity": ("nil", {"capacity": "IOTLB entries (the least recently used go)"}),
    "stats": ("map of counters: translations, hits, misses, walks, faults, invalidations, "
              "invalidated_entries, evictions, memory_reads, memory_writes, "
              "devtlb_invalidations, page_requests, iotlb_entries, iotlb_capacity", {}),
    "stats_reset": ("nil", {}),
    "fail_nth": ("nil", {"n": "fail the n-th allocation or step from now with ENOMEM; 0: off"}),
    # -- meta ---------------------------------------------------------------------------
    "rpc_methods": ("list of maps {name, group, doc, details, returns, params: [{name, kinds, "
                    "required, default, names, values, doc}]}", {}),
    "server_info": ("map {version, pid, topics, platform, devices}", {}),
    # -- views ----------------------------------------------------------------------------
    "devices": ("list of maps {label, name, type, group, vm, context, bound, dev_id, "
                "pasid_width, aperture, reserved, ats, pri, dirty_tracking, pasid_map, attach: "
                "[{pasid, hwpt, type, parent, ioas}]}", {}),
    "groups": ("list of maps {gid, labels, owned, context}", {}),
    "pasid_table": ("map {label, name, dev_id, pasid_width, ats, pri, features, viommu, "
                    "entries: [{pasid, vpasid, kind, hwpt, did, pgtbl_addr, levels, parent, "
                    "ioas, fault, reason}], pasid_map}", {"label": _LABEL}),
    "ioas_list": ("list of maps {id, users, hwpts, areas, mapped, iova_ranges, alignment}", {}),
    "hwpts": ("list of maps {id, type, stage, parent, ioas, users, fault, attached, auto, "
              "nest_parent, pasid_compat, dirty_tracking, ...}", {}),
    "counters": ("map {model: the stats counters, devices: {label: counters}, log: {line: "
                 "{emitted, suppressed}}}", {}),
    "faults": ("map {total, recent: [fault + time], page_requests, queues}", {
        "limit": "the most recent faults and page requests to return (0: none)"}),
    "vms": ("list of maps: each VM's GPA IOAS, stage-2 parent HWPT, devices, guest RAM", {}),
    "device_state": ("map: the device model's own state, with its type", {"label": _LABEL}),
    "dma_queues": ("list of maps {label, queue, ring, size, head, tail, completed, enabled, "
                   "busy, halted, error}", {}),
    # -- events ---------------------------------------------------------------------------
    "subscribe": ("list of str: every topic this connection now receives", {
        "topics": "a list of topics: fault, page_request, invalidate, dma_completion"}),
    "unsubscribe": ("list of str: the topics left", {
        "topics": "a list of topics; nil: all"}),
    # -- tracing --------------------------------------------------------------------------
    "trace_start": ("map {path, events, dropped, bytes, full, seconds, recording}", {
        "path": "an absolute path the server writes the trace to",
        "max_events": "stop writing after this many events (later ones are counted as "
                      "dropped); nil: no limit",
        "max_bytes": "stop writing at this file size; nil: no limit",
        "keep": "true: keep recording after this connection closes"}),
    "trace_stop": ("map {path, events, dropped, bytes, full, seconds, recording}", {}),
    "trace_status": ("map as trace_stop's, or nil when nothing records", {}),
    # -- fault injection --------------------------------------------------------------------
    "inject_fault": ("int: the rule id", {
        "label": _LABEL,
        "pasid": "the guest's PASID; nil: the RID; -1: any",
        "iova": "first address of the range",
        "length": "bytes in the range",
        "count": "how many translations fault",
        "reason": "the model's fault kind or a VT-d reason, by name or code (PAGING_ENTRY_INV, "
                  "7, FS_P, 0x71)",
        "stage": "1 (the guest's) or 2 (the host's)"}),
    "inject_list": ("list of maps {id, label, pasid, first, last, remaining, fired, reason, "
                    "stage}", {}),
    "inject_remove": ("nil", {"rule_id": "a rule id from inject_fault"}),
    "inject_clear": ("int: the rules removed", {}),
    "s2_unmap": ("map {id, ioas, iova, length, held_ioas, pieces}: the hole", {
        "ioas_id": "the VM's GPA IOAS (`vuser ctl vms`)",
        "iova": "first GPA, page aligned", "length": "bytes, page aligned"}),
    "s2_restore": ("map: the hole, mapped back", {"hole_id": "a hole id from s2_unmap"}),
    "s2_holes": ("list of maps: the holes not restored", {}),
}


def doc_of(method: str) -> tuple[str | None, dict[str, str]]:
    """(returns, {param: meaning}) of ``method``; (None, {}) when it has no entry."""
    returns, params = DOCS.get(method, (None, {}))
    return returns, params


# -- rendering (the CLI and docs/control.md) -------------------------------------------
def _default(p: dict[str, Any]) -> str:
    d = p.get("default")
    if d is None:
        return "nil"
    if isinstance(d, bool):
        return "true" if d else "false"
    if isinstance(d, int) and d >= 1 << 16:
        return f"{d:#x}"
    return str(d)


def signature(m: dict[str, Any]) -> str:
    ps = [p["name"] + ("" if p["required"] else "=" + _default(p)) for p in m["params"]]
    return f"{m['name']}({', '.join(ps)})"


def _default_names(p: dict[str, Any]) -> str:
    """`` = NAME`` (or ``A|B`` for flags) when a default has names; else ""."""
    d, values = p.get("default"), p.get("values")
    if not values or not isinstance(d, int) or isinstance(d, bool):
        return ""
    exact = [n for n, v in values.items() if v == d]
    if exact:
        return f" = {exact[0]}"
    bits = [n for n, v in values.items() if v and v & (v - 1) == 0 and d & v]
    if d and sum(values[n] for n in bits) == d:
        return " = " + "|".join(bits)
    return ""


def param_line(p: dict[str, Any]) -> str:
    kinds = " or ".join("nil" if k == "none" else k for k in p["kinds"])
    out = f"{p['name']} ({kinds}; " + ("required" if p["required"] else
                                       f"default {_default(p)}{_default_names(p)}") + ")"
    if p.get("doc"):
        out += f": {p['doc']}"
    if p.get("names"):
        out += f". Names: {', '.join(p['names'])}"
    return out


GROUPS = (("uapi", "The iommufd uAPI (the model's IoasidContext)"),
          ("view", "Views"), ("events", "Subscriptions"), ("trace", "Tracing"),
          ("inject", "Fault injection"), ("meta", "About the server"))

INTRO = """\
# Control methods

<!-- Generated by `vuser ctl methods --offline --markdown > docs/control.md` from
the server's own method table; tests/rpc/test_method_docs.py checks that it matches. -->

A server started with `--control PATH` (`vuser serve`, and `vuser run`,
which prints the path) answers msgpack-RPC requests `[0, id, method, params]`
on that Unix socket with `[1, id, error, result]`; `params` is an array of
positional values or a map of named ones. An error is a map `{errno, code,
message}`: the errno's name and number, ENOSYS for an unknown method, EINVAL
for bad params (checked before the call), else the model's errno. `vuser ctl
call METHOD ARG... name=value...` calls any of these from a shell, `vuser ctl
methods` lists them as below (`--offline`: without a server), and
`vuser.rpc.Client` calls them from Python (`await client.ioas_alloc()`).

A parameter's kinds are the msgpack types it takes (`nil` is msgpack nil,
`null` on the `vuser ctl call` command line). A parameter with names takes
its number or the uAPI's names for it (include/uapi/linux/iommufd.h), case-
insensitive, with or without the uAPI prefix, `|`-joined for flags:
`hwpt_alloc 1 2 flags=NEST_PARENT`, `ioas_map 2 null 0x1000
'flags=READABLE|WRITEABLE'`, `translate 1 null 0x1000 8 access=write`.

Results are msgpack values; a "fault" in a result is nil or a map `{label,
dev_id, pasid, iova, gpa, stage, reason, vtd_reason, access, s1_fetch}`.
`vuser ctl call` prints addresses and sizes in hex (`--json`: numbers).

Traces (`trace_start`, `vuser run --trace`, `vuser serve --trace`) are read
offline by `vuser ctl trace show|summary|plot|export`; `export` writes the
Chrome/Perfetto JSON trace format (one lane per device label and PASID) for
ui.perfetto.dev or chrome://tracing.
"""


def markdown(methods: list[dict[str, Any]]) -> str:
    """docs/control.md from ``rpc_methods``' answer."""
    out = [INTRO]
    for group, title in GROUPS:
        ms = [m for m in methods if m["group"] == group]
        if not ms:
            continue
        out.append(f"## {title}\n")
        for m in ms:
            out.append(f"### `{signature(m)}`\n")
            out.append(m["doc"] + "\n")
            if m["params"]:
                out.append("\n".join(f"- {param_line(p)}" for p in m["params"]) + "\n")
            out.append(f"Returns {m['returns']}.\n")
            if m.get("details"):
                out.append(m["details"] + "\n")
    return "\n".join(out).rstrip() + "\n"


def text(methods: list[dict[str, Any]], *, width: int = 100) -> str:
    """``vuser ctl methods``: every method in full, as the terminal shows it."""
    out = []
    for m in methods:
        lines = [f"{signature(m)}  [{m['group']}]"]
        wrap = textwrap.TextWrapper(width=width, initial_indent="    ",
                                    subsequent_indent="    ")
        lines += wrap.wrap(m["doc"])
        for p in m["params"]:
            lines += textwrap.wrap(param_line(p), width=width, initial_indent="    - ",
                                   subsequent_indent="      ")
        lines += wrap.wrap(f"Returns {m['returns']}.")
        for para in (m.get("details") or "").split("\n\n"):
            if para:
                lines += wrap.wrap(para)
        out.append("\n".join(lines))
    return "\n\n".join(out)


def brief(methods: list[dict[str, Any]]) -> list[list[str]]:
    """Rows of ``vuser ctl methods --brief``: group, signature, first line (whole)."""
    return [[m["group"], signature(m), m["doc"]] for m in methods]
