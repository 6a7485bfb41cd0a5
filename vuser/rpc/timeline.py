"""A trace as a timeline: one lane per (device label, PASID), marks on each.

The Chrome/Perfetto export (``trace_export``) and the PNG (``plot``) both
draw this, so they show the same events. Every event of a trace becomes one
``Mark`` on one ``Lane``:

- ``translate``: an IOTLB hit or a walk (``S1``: the nested walk, ``S2``:
  stage 2 only), with the IOVA and the GPA it gave;
- ``fault``: the model's fault kind and the VT-d reason a guest sees;
- ``invalidate``: the model's IOTLB invalidations (by granularity: global,
  device, PASID, pages) and vuser-iommu's invalidation descriptors
  (context-cache, PASID-cache, IOTLB, PASID-IOTLB, device-TLB; their own
  granularity, docs/vuser-iommu.md "Tracing");
- ``page-request`` and ``page-response``.

A lane's label is the device the event names; an invalidation descriptor
that names no device (a DID- or PASID-selective one) goes to the label-less
lanes of the vIOMMU. Its PASID is ``None`` for the RID (untagged DMA) and
``ALL`` for an event that covers every PASID.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .render import INV_NAMES, invalidation_granularity
from .tracing import reason_name, stage_name

#: The PASID of a lane whose events cover every PASID (and the RID).
ALL = "all"
#: ``pasid`` of a model invalidation of every PASID (the uAPI's ALL_PASIDS).
ALL_PASIDS = -1
U64_MAX = (1 << 64) - 1
#: Mark categories, in drawing order.
CATEGORIES = ("hit", "walk", "fault", "invalidate", "page-request", "page-response", "other")


@dataclass(frozen=True)
class Lane:
    """(label, PASID): ``label`` None is the vIOMMU's own lane (no device named)."""

    label: int | None
    pasid: int | str | None

    def sort_key(self) -> tuple[int, int, int]:
        p = self.pasid
        return (1 if self.label is None else 0, self.label or 0,
                -1 if p is None else (1 << 32 if p == ALL else int(p)))

    @property
    def device(self) -> str:
        return "vIOMMU (no device named)" if self.label is None else f"label {self.label:#x}"

    @property
    def pasid_text(self) -> str:
        if self.pasid is None:
            return "RID"
        return "all PASIDs" if self.pasid == ALL else f"PASID {self.pasid}"

    @property
    def name(self) -> str:
        return f"{self.device} {self.pasid_text}"

    @property
    def short(self) -> str:
        who = "vIOMMU" if self.label is None else f"{self.label:#x}"
        p = "RID" if self.pasid is None else ("all" if self.pasid == ALL else str(self.pasid))
        return f"{who}:{p}"


@dataclass(frozen=True)
class Mark:
    """One trace event on its lane: ``time`` in seconds since the trace's ``t0``."""

    time: float
    lane: Lane
    category: str
    name: str
    args: dict[str, Any]
    kind: str


@dataclass
class Timeline:
    """``t0`` (the trace's start, on the server's monotonic clock), the lanes
    in drawing order, and the marks in time order."""

    t0: float
    lanes: list[Lane] = field(default_factory=list)
    marks: list[Mark] = field(default_factory=list)


def _hx(v: int | None) -> str | None:
    return None if v is None else f"{v:#x}"


def _range(iova: int, length: int | None) -> dict[str, Any]:
    if not length or length == U64_MAX:
        return {"range": "all addresses"}
    return {"iova": _hx(iova), "length": _hx(length)}


def lane_of(e: dict[str, Any]) -> Lane:
    """The lane of one trace event (see the module docstring)."""
    kind, label, pasid = e["kind"], e["label"], e["pasid"]
    info = e.get("info") or {}
    if kind == "invalidate":
        if label is None or pasid == ALL_PASIDS:
            return Lane(label, ALL)
        return Lane(label, pasid)
    if kind.startswith("inv-"):
        if info.get("all_pasids"):
            return Lane(label, ALL)
        if pasid is None and kind != "inv-devtlb":   # a devtlb's nil PASID is untagged DMA
            return Lane(label, ALL)
        return Lane(label, pasid)
    return Lane(label, pasid)


def model_granularity(e: dict[str, Any]) -> str:
    """What a model ``invalidate`` event covered: global, device, PASID or pages."""
    if e["length"] not in (0, U64_MAX, None):
        return "pages"
    if e["label"] is None:
        return "global"
    return "device" if e["pasid"] == ALL_PASIDS else "PASID"


def mark_of(e: dict[str, Any], t0: float) -> Mark:
    """The mark of one trace event (every kind has one)."""
    kind, info = e["kind"], e.get("info") or {}
    lane = lane_of(e)
    t = e["time"] - t0
    if kind == "translate":
        hit = bool(e["hit"])
        return Mark(t, lane, "hit" if hit else "walk",
                    "IOTLB hit" if hit else f"walk {stage_name(e['stage'])}",
                    {"iova": _hx(e["iova"]), "gpa": _hx(e["gpa"]),
                     "answered_by": stage_name(e["stage"]), "iotlb": "hit" if hit else "miss"},
                    kind)
    if kind == "fault":
        reason = reason_name(e["fault"], e.get("vtd"))
        return Mark(t, lane, "fault", f"fault {reason}",
                    {"iova": _hx(e["iova"]), "gpa": _hx(e["gpa"]), "stage": stage_name(e["stage"]),
                     "reason": reason, "vtd_reason": _hx(e.get("vtd"))}, kind)
    if kind == "invalidate":
        g = model_granularity(e)
        return Mark(t, lane, "invalidate", f"IOTLB invalidate ({g})",
                    {"granularity": g, "entries_dropped": e["count"],
                     **_range(e["iova"], e["length"])}, kind)
    if kind in INV_NAMES:
        g = invalidation_granularity(kind, info) or "-"
        args: dict[str, Any] = {"granularity": g, **info}
        if kind in ("inv-iotlb", "inv-piotlb", "inv-devtlb"):
            args.update(_range(e["iova"], e["length"]))
        return Mark(t, lane, "invalidate", f"{INV_NAMES[kind]} invalidation ({g})", args, kind)
    if kind == "page-request":
        rw = ("r" if info.get("read") else "") + ("w" if info.get("write") else "")
        return Mark(t, lane, "page-request", "page request",
                    {"addr": _hx(e["iova"]), "access": rw or "-", "prgi": info.get("prgi"),
                     "last": bool(info.get("last"))}, kind)
    if kind == "page-response":
        code = {0: "success", 1: "invalid", 15: "failure"}.get(info.get("code"),
                                                                str(info.get("code")))
        return Mark(t, lane, "page-response", f"page response {code}",
                    {"code": info.get("code"), "prgi": info.get("prgi"),
                     "matched": info.get("matched", True)}, kind)
    # A kind this vuser does not know (a newer server's): still on the timeline.
    return Mark(t, lane, "other", kind, {"info": info}, kind)


def timeline(events: list[dict[str, Any]], t0: float | None = None) -> Timeline:
    """Every event as a mark, lanes ordered by label then PASID (RID first)."""
    first = min((e["time"] for e in events), default=0.0)
    if t0 is None or first < t0:    # no header time, or a clock before it: start at the first
        t0 = first
    marks = sorted((mark_of(e, t0) for e in events), key=lambda m: m.time)
    lanes = sorted({m.lane for m in marks}, key=Lane.sort_key)
    return Timeline(t0, lanes, marks)


def rate_bins(marks: list[Mark], width: float) -> list[tuple[float, int, int]]:
    """(bin start, hits, walks) of the translations in ``marks``, for every
    bin of ``width`` seconds that has one; empty bins are left out."""
    bins: dict[int, list[int]] = {}
    for m in marks:
        if m.category in ("hit", "walk"):
            b = bins.setdefault(int(m.time // width), [0, 0])
            b[m.category == "walk"] += 1
    return [(i * width, h, w) for i, (h, w) in sorted(bins.items())]
