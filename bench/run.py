"""``make bench``: every bench script with ``--json``, one table, ``bench/results.json``.

Runs the scripts of ``SCRIPTS`` (and any other ``bench/bench_*.py`` that
takes ``--json``), one after the other, each in its own process with a time
limit, reads the figures each one wrote, and prints one table in the order of the issue-13 targets: each figure's
value, its reference measured in the same run, the ratio and whether the
target is met. A target row that no script measured is printed as "not
measured", with the reason (the script failed, timed out, or has no
``--json``); nothing is filled in. Figures outside the target table follow.

``bench/results.json`` gets every script's figures and status, the machine
(CPU model, cores, load average), the Python version, the git commit and the
date. ``bench_guest.py`` compares its boot time with the previous file.

A script's ``--json FILE`` writes ``{"script": NAME, "figures": [...]}``,
each figure ``{"name", "value", "unit", "reference", "reference_value",
"ratio", "target", "met", "extra"}``: ``name`` starts with the issue's
figure name, ``ratio`` is the value against the reference as the target
reads, ``target`` is the issue's target as text (None: report only), ``met``
is true, false or None (no target).

Run: ``.venv/bin/python bench/run.py [--only SCRIPT ...] [--timeout S]``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results.json"

#: In run order: the host-only MMIO figures first, the guest boot last but one.
SCRIPTS = ["bench_mmio.py", "bench_dma.py", "bench_iommu.py", "bench_protocol.py",
           "bench_guest.py"]

#: The issue's target table: (figure name prefixes, script, reference, target), in its order.
TARGETS: list[tuple[tuple[str, ...], str, str, str]] = [
    (("guest MMIO read round trip", "guest MMIO 4-byte read", "guest MMIO posted"),
     "bench_mmio.py", "host-only floor: a minimal asyncio server answering REGION_READ",
     "<= 1.2x"),
    (("host-only REGION_READ/WRITE rate",), "bench_mmio.py", "a bare Python UNIX-socket echo",
     ">= 0.8x"),
    (("nested MEMCPY 64 KiB",), "bench_dma.py", "memoryview copy", ">= 0.5x"),
    (("MEMCPY 1 MiB over 2 MiB pages",), "bench_iommu.py", "memoryview copy", ">= 0.9x"),
    (("4 KiB descriptors per second",), "bench_dma.py", "-", ">= 150k/s"),
    (("cold nested walk",), "bench_iommu.py", "a warm translate", ">= 200k walks/s"),
    (("lookup at 100k IOAS mappings",), "bench_iommu.py", "1k mappings", "<= 1.5x slower"),
    (("1,000 attached PASIDs",), "bench_iommu.py", "1 PASID", "hit path <= 1.1x slower"),
    (("guest boot to first KTAP line",), "bench_guest.py", "-", "report it; no regression"),
]


def takes_json(script: Path) -> bool:
    return "--json" in script.read_text()


def scripts(only: list[str] | None) -> list[Path]:
    names = list(SCRIPTS)
    names += sorted(p.name for p in HERE.glob("bench_*.py")
                    if p.name not in names and takes_json(p))
    if only:
        names = [n for n in names if n in only or n.removesuffix(".py") in only]
    return [HERE / n for n in names]


def run_script(script: Path, timeout: float, extra: list[str]) -> dict:
    """The script's figures and how its run went (never raises)."""
    entry: dict = {"script": script.name, "figures": [], "status": "ok"}
    if not script.exists():
        entry["status"] = "missing"
        return entry
    if not takes_json(script):
        entry["status"] = "no --json"
        return entry
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "figures.json"
        t = time.monotonic()
        print(f"== {script.name}", flush=True)
        try:
            proc = subprocess.run([sys.executable, str(script), "--json", str(out), *extra],
                                  cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            entry["status"] = f"timed out after {timeout:.0f} s"
            return entry
        finally:
            entry["seconds"] = round(time.monotonic() - t, 1)
        entry["output"] = proc.stdout[-4000:]
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["?"])[-1]
            entry["status"] = f"failed ({proc.returncode}): {last}"
            entry["stderr"] = proc.stderr[-4000:]
        try:
            entry["figures"] = json.loads(out.read_text())["figures"]
        except (OSError, ValueError, KeyError) as e:
            if entry["status"] == "ok":
                entry["status"] = f"no figures written ({e})"
    return entry


def machine() -> dict:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "load average": os.getloadavg(),
            "platform": platform.platform()}


def git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def fmt(v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def table(entries: list[dict]) -> list[dict]:
    """Rows in the order of ``TARGETS``, then the other figures."""
    figs = [(e["script"], f) for e in entries for f in e["figures"]]
    why = {e["script"]: e["status"] for e in entries}
    used: set[int] = set()
    rows = []
    for prefixes, script, ref, target in TARGETS:
        hits = [(i, s, f) for i, (s, f) in enumerate(figs)
                if any(p.lower() in f["name"].lower() for p in prefixes)]
        for i, s, f in hits:
            used.add(i)
            rows.append({"figure": f["name"], "script": s, **f, "issue_target": target})
        if not hits:
            status = why.get(script, "not run")
            reason = f"{script}: {status if status != 'ok' else 'reports no such figure'}"
            rows.append({"figure": prefixes[0], "name": prefixes[0], "script": script,
                         "value": None, "reference": ref, "target": target, "met": None,
                         "issue_target": target, "not_measured": reason})
    for i, (s, f) in enumerate(figs):
        if i not in used:
            rows.append({"figure": f["name"], "script": s, **f, "issue_target": None})
    return rows


def print_table(rows: list[dict]) -> None:
    head = f"{'figure':62} {'value':>16} {'reference':>40} {'ratio':>6}  {'target':18} met"
    print(head)
    print("-" * len(head))
    extra = False
    for r in rows:
        if r["issue_target"] is None and not extra:
            extra = True
            print("-- other figures (no target in the issue) " + "-" * (len(head) - 43))
        if r.get("not_measured"):
            print(f"{r['figure'][:62]:62} {'not measured':>16} {r['reference'][:40]:>40} "
                  f"{'-':>6}  {r['target'][:18]:18} -   ({r['not_measured'][:80]})")
            continue
        value = f"{fmt(r['value'])} {r.get('unit', '')}".strip()
        ref = r.get("reference") or "-"
        if r.get("reference_value") is not None:
            ref = f"{ref[:30]} {fmt(r['reference_value'])}"
        met = {True: "yes", False: "NO", None: "-"}[r.get("met")]
        ratio = fmt(r["ratio"]) + "x" if r.get("ratio") is not None else "-"
        print(f"{r['figure'][:62]:62} {value:>16} {ref[-40:]:>40} {ratio:>6}  "
              f"{(r.get('target') or '-')[:18]:18} {met}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", metavar="SCRIPT", help="run only these scripts")
    parser.add_argument("--timeout", type=float, default=240.0,
                        help="seconds each script may take (default 240)")
    parser.add_argument("--out", default=str(RESULTS), help="results file (default %(default)s)")
    args = parser.parse_args()
    try:
        import uvloop
        uv = uvloop.__version__
    except ImportError:
        uv = None
    t = time.monotonic()
    entries = []
    for script in scripts(args.only):
        extra = ["--uvloop"] if script.name == "bench_mmio.py" and uv else []
        entries.append(run_script(script, args.timeout, extra))
    rows = table(entries)
    commit = git("rev-parse", "HEAD")
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git": {"commit": commit, "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))},
        "machine": machine(),
        "python": sys.version.split()[0],
        "python_build": sys.version,
        "uvloop": uv,
        "seconds": round(time.monotonic() - t, 1),
        "scripts": entries,
        "table": rows,
    }
    Path(args.out).write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    m = result["machine"]
    print(f"\nvuser bench, {result['date']}, commit {commit[:12]}"
          f"{' (dirty)' if result['git']['dirty'] else ''}; {m['cpu']}, {m['cores']} cores, "
          f"load {m['load average'][0]:.1f}; Python {result['python']}; "
          f"{result['seconds']:.0f} s\n")
    print_table(rows)
    for e in entries:
        if e["status"] != "ok":
            print(f"\n{e['script']}: {e['status']}")
    print(f"\nwritten: {os.path.relpath(args.out, ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
