"""Introspection views over the model's public surface (docs/architecture.md, "Control").

Everything here reads ``IoasidContext.objects()``/``object_info``/``stats``,
``device_info`` and the registry; nothing reaches into model internals. The
views are plain dicts and lists, ready for msgpack:

- ``devices``: label, name, group, context, and the attachment per PASID;
- ``pasid_table``: one device's PASID table as the model sees it (vPASID,
  pPASID, the HWPT, its kind, stage-1 format and parents down to the IOAS),
  with what a vIOMMU applied (blocked entries and their fault reason, the
  DID) and the device's PASID/ATS/PRI capabilities apart from whether the
  guest enabled them (the device's ``pci_features()``);
- ``ioas_list``: every IOAS with its mappings, usable ranges and HWPTs;
- ``hwpts``: every HWPT with its parent chain;
- ``fault_queues``: every fault queue's counters.
"""

from __future__ import annotations

from typing import Any

from vuser.iommu import FIRST_STAGE_LEVELS, IoasidContext, IommuRegistry


def _objects_by_id(ctx: IoasidContext) -> dict[int, dict[str, Any]]:
    return {o["id"]: o for o in ctx.objects()}


def _chain(objs: dict[int, dict[str, Any]], hwpt_id: int) -> dict[str, Any]:
    """A HWPT with what it sits on: nested -> parent paging HWPT -> IOAS."""
    h = objs.get(hwpt_id, {"id": hwpt_id, "type": "?"})
    out: dict[str, Any] = {"hwpt": hwpt_id, "type": h["type"], "fault": h.get("fault")}
    if h["type"] == "hwpt_nested":
        parent = objs.get(h["parent"], {})
        out.update(stage="nested", parent=h["parent"], ioas=parent.get("ioas"),
                   pgtbl_addr=h["pgtbl_addr"], addr_width=h["addr_width"],
                   levels=FIRST_STAGE_LEVELS.get(h["addr_width"]), s1_flags=h["flags"],
                   viommu=h.get("viommu"))
    else:
        out.update(stage="s2-only", parent=None, ioas=h.get("ioas"),
                   nest_parent=h.get("nest_parent"), auto=h.get("auto"))
    return out


def context_name(ctx: IoasidContext, dev: Any) -> str | None:
    if dev.ctx is None:
        return None
    return "this" if dev.ctx is ctx else "other"


def devices(ctx: IoasidContext, registry: IommuRegistry,
            extra: dict[int, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Every registered device; ``extra`` adds device-layer fields by label."""
    objs = _objects_by_id(ctx)
    out = []
    for dev in sorted(registry.devices(), key=lambda d: d.label):
        d = dev.describe()
        d["context"] = context_name(ctx, dev)
        attach: list[dict[str, Any]] = []
        if dev.ctx is ctx:
            info = ctx.device_info(dev.dev_id)
            for pasid, hwpt_id in info["attach"]:
                a = {"pasid": pasid}
                a.update(_chain(objs, hwpt_id))
                attach.append(a)
            d["pasid_map"] = info["pasid_map"]
        d["attach"] = attach
        if extra and dev.label in extra:
            d.update(extra[dev.label])
        out.append(d)
    return out


def _kind(chain: dict[str, Any]) -> str:
    return "first-stage" if chain["stage"] == "nested" else "pass-through"


def pasid_table(ctx: IoasidContext, registry: IommuRegistry, label: int,
                features: dict[str, Any] | None = None,
                viommu: dict[str, Any] | None = None) -> dict[str, Any]:
    """The PASID table of the device ``label`` as the model sees it.

    One entry per attached PASID (and the RID, ``pasid`` nil), keyed by the
    PASID the device emits; ``vpasid`` is the guest's name for it; ``kind``
    is first-stage (a nested HWPT), pass-through (the stage-2 HWPT) or, for
    entries a vIOMMU (``viommu``, its ``pasid_view``) blocked, "blocked" with
    its fault reason. ``features``: the device's ``pci_features()`` as a dict. ENOENT
    when the label is unknown or not bound to this context.
    """
    dev_id = ctx.device_lookup(label)
    info = ctx.device_info(dev_id)
    objs = _objects_by_id(ctx)
    p2v = {p: v for v, p in info["pasid_map"]}
    applied = {e["pasid"]: e for e in (viommu or {}).get("entries", ())}
    entries = []
    for pasid, hwpt_id in info["attach"]:
        vp = p2v.get(pasid, pasid) if pasid is not None else None
        e = {"pasid": pasid, "vpasid": vp}
        e.update(_chain(objs, hwpt_id))
        e["kind"] = _kind(e)
        a = applied.pop(vp, None)
        e["did"] = a["did"] if a else None
        entries.append(e)
    for vp, a in sorted(applied.items(), key=lambda kv: -1 if kv[0] is None else kv[0]):
        if a["kind"] != "block":
            continue
        entries.append({"pasid": vp, "vpasid": vp, "hwpt": None, "stage": None,
                        "kind": "blocked" if a["cached"] else "not cached",
                        "did": a["did"] if a["cached"] else None,
                        "reason": a["reason"] if a["cached"] else None})
    return {"label": label, "name": info["name"], "dev_id": dev_id,
            "pasid_width": info["pasid_width"], "ats": info["ats"], "pri": info["pri"],
            "features": features, "viommu": None if viommu is None else {
                k: viommu[k] for k in ("viommu", "cm", "translation", "rid_pasid")},
            "entries": entries, "pasid_map": info["pasid_map"]}


def ioas_list(ctx: IoasidContext) -> list[dict[str, Any]]:
    out = []
    for o in ctx.objects():
        if o["type"] != "ioas":
            continue
        ranges = ctx.ioas_iova_ranges(o["id"]).to_dict()
        areas = ctx.ioas_areas(o["id"])
        out.append({"id": o["id"], "users": o["users"], "hwpts": o["hwpts"], "areas": areas,
                    "mapped": sum(a["last"] - a["iova"] + 1 for a in areas),
                    "iova_ranges": ranges["ranges"], "alignment": ranges["alignment"]})
    return out


def hwpts(ctx: IoasidContext) -> list[dict[str, Any]]:
    objs = _objects_by_id(ctx)
    out = []
    for o in objs.values():
        if o["type"] not in ("hwpt_paging", "hwpt_nested"):
            continue
        d = dict(o)
        d.update(_chain(objs, o["id"]))
        out.append(d)
    return out


def fault_queues(ctx: IoasidContext) -> list[dict[str, Any]]:
    return [o for o in ctx.objects() if o["type"] == "fault"]


def groups(ctx: IoasidContext, registry: IommuRegistry) -> list[dict[str, Any]]:
    out = []
    for g in registry.groups():
        d = g.describe()
        owners = {context_name(ctx, dev) for dev in g.devices if dev.ctx is not None}
        d["context"] = "this" if "this" in owners else ("other" if owners else None)
        out.append(d)
    return out
