"""PNG plots of traces and experiments, with matplotlib as an optional extra.

matplotlib is not a dependency of vuser: ``pip install 'vuser[plot]'`` adds
it. Without it ``pyplot()`` raises ``PlotUnavailable``, whose message is the
one line the CLI prints; tables are printed either way.
"""

from __future__ import annotations

from typing import Any

from vuser.errors import UserError

INSTALL_HINT = "matplotlib is not installed; no plot written (pip install 'vuser[plot]')"


class PlotUnavailable(UserError):
    """matplotlib is missing."""


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (files only, no display)."""
    try:
        import matplotlib
    except ImportError:
        raise PlotUnavailable(INSTALL_HINT) from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def _hex(v: int | None) -> str:
    return "-" if v is None else f"{v:#x}"


def hit_rate_series(events: list[dict[str, Any]], bins: int = 50
                    ) -> tuple[list[float], list[float | None]]:
    """IOTLB hit rate of translate events in ``bins`` equal time slices."""
    tr = [e for e in events if e["kind"] == "translate"]
    if not tr:
        return [], []
    t0, t1 = tr[0]["time"], tr[-1]["time"]
    width = (t1 - t0) / bins or 1.0
    hits = [0] * bins
    total = [0] * bins
    for e in tr:
        i = min(int((e["time"] - t0) / width), bins - 1)
        total[i] += 1
        hits[i] += bool(e["hit"])
    xs = [(i + 0.5) * width for i in range(bins)]
    return xs, [h / t if t else None for h, t in zip(hits, total)]


def plot_trace(events: list[dict[str, Any]], out: str, title: str = "vuser trace",
               top: int = 30) -> str:
    """Three panels: IOTLB hit rate over time, translations per PASID, per page."""
    from collections import Counter

    plt = pyplot()
    fig, axes = plt.subplots(3, 1, figsize=(9, 10))
    xs, ys = hit_rate_series(events)
    pts = [(x, y) for x, y in zip(xs, ys) if y is not None]
    ax = axes[0]
    if pts:
        ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker=".")
    ax.set_xlabel("time since the first translation (s)")
    ax.set_ylabel("IOTLB hit rate (%)")
    ax.set_ylim(-2, 102)
    ax.set_title(f"{title}: IOTLB hit rate over time")
    tr = [e for e in events if e["kind"] == "translate"]
    per_pasid = Counter((e["label"], e["pasid"]) for e in tr)
    ax = axes[1]
    names = [f"{_hex(lbl)}:{'RID' if p is None else p}" for (lbl, p) in per_pasid]
    ax.bar(range(len(names)), list(per_pasid.values()))
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("translations")
    ax.set_title("translations per (label:PASID)")
    per_page = Counter((e["label"], e["pasid"], e["iova"] >> 12) for e in tr).most_common(top)
    ax = axes[2]
    ax.bar(range(len(per_page)), [n for _k, n in per_page])
    ax.set_xticks(range(len(per_page)),
                  [f"{_hex(lbl)}:{'R' if p is None else p}:{pg << 12:#x}"
                   for (lbl, p, pg), _n in per_page],
                  rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("translations")
    ax.set_title(f"translations per page (top {top})")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_xy(out: str, title: str, xlabel: str, ylabel: str,
            series: dict[str, tuple[list[float], list[float]]], *, logx: bool = False,
            bar: bool = False) -> str:
    """One panel of named series (lines, or grouped bars when ``bar``)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    if bar:
        names = list(series)
        width = 0.8 / max(len(names), 1)
        for i, name in enumerate(names):
            xs, ys = series[name]
            ax.bar([j + i * width for j in range(len(xs))], ys, width, label=name)
        first = series[names[0]][0] if names else []
        ax.set_xticks([j + width * (len(names) - 1) / 2 for j in range(len(first))],
                      [str(x) for x in first])
    else:
        for name, (xs, ys) in series.items():
            ax.plot(xs, ys, marker="o", label=name)
        if logx:
            ax.set_xscale("log", base=2)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
