"""PNG plots of traces and experiments, with matplotlib as an optional extra.

matplotlib is not a dependency of vuser: ``pip install 'vuser[plot]'`` adds
it. Without it ``pyplot()`` raises ``PlotUnavailable``, whose message is the
one line the CLI prints; tables are printed either way.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from vuser.errors import UserError

from .timeline import CATEGORIES, Lane, Timeline, timeline

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


@dataclass(frozen=True)
class TimeAxis:
    """Time (seconds since the trace started) -> x on the timeline: each idle
    gap of ``gaps`` (no event from its start to its end) is drawn ``shown``
    wide, so a boot's few early events do not squeeze the run into a corner."""

    gaps: tuple[tuple[float, float], ...] = ()
    shown: float = 0.0
    #: The first event's time.
    first: float = 0.0

    def x(self, t: float) -> float:
        cut = 0.0
        for a, b in self.gaps:
            if t <= a:
                break
            if t < b:
                return a - cut + (t - a) / (b - a) * self.shown
            cut += (b - a) - self.shown
        return t - cut

    def t(self, x: float) -> float:
        """The inverse of ``x``."""
        cut = 0.0
        for a, b in self.gaps:
            if x <= a - cut:
                break
            if x < a - cut + self.shown:
                return a + (x - (a - cut)) / self.shown * (b - a)
            cut += (b - a) - self.shown
        return x + cut


def time_axis(times: list[float], *, min_share: float = 0.1) -> TimeAxis:
    """Cut every idle gap longer than ``min_share`` of the trace (and 50 ms)."""
    ts = sorted(set(times))
    if len(ts) < 2:
        return TimeAxis(first=ts[0] if ts else 0.0)
    span = ts[-1] - ts[0]
    min_gap = max(span * min_share, 0.05)
    gaps = tuple((a, b) for a, b in zip(ts, ts[1:]) if b - a > min_gap)
    active = span - sum(b - a for a, b in gaps)
    return TimeAxis(gaps, max(active, span * 0.01) * 0.04 if gaps else 0.0, ts[0])


@dataclass
class TracePlot:
    """What ``plot_trace`` drew: the timeline's lanes (top to bottom), the
    times of each category's marks per lane (seconds since the trace
    started), the idle gaps cut short, and the hit-rate line as its unbroken
    segments of (time, rate): a slice without translations ends a segment."""

    out: str
    lanes: list[Lane]
    marks: dict[Lane, dict[str, list[float]]]
    axis: TimeAxis
    rate_segments: list[list[tuple[float, float]]]
    bin_width: float
    top_pages: list[tuple[str, int]] = field(default_factory=list)


#: How each category is drawn on the timeline: y offset in its lane, marker, colour, size.
STYLE = {
    "hit": (-0.30, "|", "0.6", 40),
    "walk": (-0.15, "|", "tab:blue", 60),
    "invalidate": (0.0, "D", "tab:orange", 22),
    "page-request": (0.15, "^", "tab:green", 36),
    "page-response": (0.15, "v", "tab:purple", 36),
    "fault": (0.30, "X", "tab:red", 70),
    "other": (0.0, ".", "k", 10),
}
LEGEND = {"hit": "translation: IOTLB hit", "walk": "translation: walk",
          "invalidate": "invalidation", "page-request": "page request",
          "page-response": "page response", "fault": "fault", "other": "other"}


def hit_rate_segments(tl: Timeline, axis: TimeAxis, bins: int = 200
                      ) -> tuple[list[list[tuple[float, float]]], float]:
    """The IOTLB hit rate in ``bins`` equal slices of the drawn time axis, as
    runs of consecutive slices with translations: an idle slice breaks the
    line. Returns (segments of (slice middle in seconds, rate), slice width)."""
    xs = [axis.x(m.time) for m in tl.marks]
    if not xs:
        return [], 0.0
    x0, span = min(xs), max(xs) - min(xs)
    width = span / bins if span > 0 else 1.0
    per: dict[int, list[int]] = {}
    for m, x in zip(tl.marks, xs):
        if m.category in ("hit", "walk"):
            b = per.setdefault(min(int((x - x0) / width), bins - 1), [0, 0])
            b[0] += m.category == "hit"
            b[1] += 1
    segments: list[list[tuple[float, float]]] = []
    prev = None
    for i in sorted(per):
        if prev is None or i != prev + 1:
            segments.append([])
        hits, total = per[i]
        segments[-1].append((axis.t(x0 + (i + 0.5) * width), hits / total))
        prev = i
    return segments, width


def trace_plot_data(events: list[dict[str, Any]], t0: float | None = None, *,
                    top: int = 20, out: str = "") -> TracePlot:
    """The data ``plot_trace`` draws (no matplotlib needed)."""
    tl = timeline(events, t0)
    marks: dict[Lane, dict[str, list[float]]] = {ln: {} for ln in tl.lanes}
    for m in tl.marks:
        marks[m.lane].setdefault(m.category, []).append(m.time)
    axis = time_axis([m.time for m in tl.marks])
    segments, width = hit_rate_segments(tl, axis)
    per_page = Counter((m.lane, int(m.args["iova"], 16) >> 12) for m in tl.marks
                       if m.category in ("hit", "walk")).most_common(top)
    return TracePlot(out, tl.lanes, marks, axis, segments, width,
                     [(f"{lane.short}:{pg << 12:#x}", n) for (lane, pg), n in per_page])


def _time_ticks(ax: Any, axis: TimeAxis) -> None:
    """Label x in seconds since the start (a tick where each stretch of activity
    starts, none inside an idle gap), and shade the idle gaps cut short."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator

    lo, hi = ax.get_xlim()
    near = (hi - lo) / 15
    ticks: list[float] = []
    starts = [axis.x(axis.first)] + [axis.x(b) for _a, b in axis.gaps]
    for x in starts + [x for x in MaxNLocator(8).tick_values(lo, hi) if lo <= x <= hi]:
        if all(abs(x - k) > near for k in ticks) and not any(
                axis.x(a) < x < axis.x(b) for a, b in axis.gaps):
            ticks.append(x)
    ax.xaxis.set_major_locator(FixedLocator(sorted(ticks)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: f"{axis.t(x):.3g}"))
    ax.set_xlim(lo, hi)
    for a, b in axis.gaps:
        ax.axvspan(axis.x(a), axis.x(b), color="0.92", hatch="//", lw=0, zorder=0)


def plot_trace(events: list[dict[str, Any]], out: str, title: str = "vuser trace",
               top: int = 20, t0: float | None = None) -> TracePlot:
    """Three panels: the timeline (one lane per (label, PASID), a mark per
    translation, fault, invalidation, page request and response; idle gaps
    cut short and shaded), the IOTLB hit rate over time (broken where nothing
    translated), the busiest pages."""
    plt = pyplot()
    data = trace_plot_data(events, t0, top=top, out=out)
    lanes, axis = data.lanes, data.axis
    fig, axes = plt.subplots(3, 1, figsize=(11, 4 + 0.45 * len(lanes) + 6),
                             gridspec_kw={"height_ratios": [max(len(lanes), 2) * 0.45 + 1, 2, 2]})
    ax = axes[0]
    ys = {lane: len(lanes) - 1 - i for i, lane in enumerate(lanes)}
    for cat in CATEGORIES:
        dy, marker, colour, size = STYLE[cat]
        xs = [axis.x(t) for lane in lanes for t in data.marks[lane].get(cat, [])]
        yv = [ys[lane] + dy for lane in lanes for _t in data.marks[lane].get(cat, [])]
        if xs:
            ax.scatter(xs, yv, marker=marker, c=colour, s=size,
                       label=f"{LEGEND[cat]} ({len(xs)})", zorder=3 if cat == "fault" else 2)
    ax.set_yticks([ys[ln] for ln in lanes], [ln.short for ln in lanes], fontsize=8)
    ax.set_ylim(-0.6, len(lanes) - 0.4)
    for lane in lanes:
        ax.axhline(ys[lane] - 0.5, color="0.9", lw=0.5)
    for a, b in axis.gaps:
        ax.text((axis.x(a) + axis.x(b)) / 2, len(lanes) - 0.45, f"idle {b - a:.2g} s",
                rotation=90, ha="center", va="top", fontsize=7, color="0.4")
    gaps = " (hatched: idle, cut short)" if axis.gaps else ""
    ax.set_xlabel(f"time since the trace started (s){gaps}")
    ax.set_ylabel("label:PASID")
    ax.set_title(f"{title}: timeline")
    if lanes:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    _time_ticks(ax, axis)
    ax = axes[1]
    for seg in data.rate_segments:
        ax.plot([axis.x(t) for t, _y in seg], [100 * y for _t, y in seg], marker=".",
                color="tab:blue")
    ax.set_xlim(axes[0].get_xlim())
    _time_ticks(ax, axis)
    ax.set_xlabel(f"time since the trace started (s){gaps}")
    ax.set_ylabel("IOTLB hit rate (%)")
    ax.set_ylim(-2, 102)
    ax.set_title(f"IOTLB hit rate per {data.bin_width * 1e3:.3g} ms "
                 "(no line where nothing translated)")
    ax = axes[2]
    ax.bar(range(len(data.top_pages)), [n for _k, n in data.top_pages])
    ax.set_xticks(range(len(data.top_pages)), [k for k, _n in data.top_pages],
                  rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("translations")
    ax.set_title(f"translations per page (top {top})")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return data


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
