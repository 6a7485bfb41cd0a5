"""What a TCG guest sees: MMIO to vuser-dma beside QEMU's edu device, and boot time.

One boot of the cached guest image with a vuser-dma (served by ``vuser
serve``, as ``make test`` does) and QEMU's own ``edu`` device
(``-device edu``), running ``guest-tests/mmio_timing.c`` (opt-in in the
manifest). The program times 4-byte reads of an ID register and posted
4-byte writes on each device's BAR0 with ``clock_gettime`` and prints them.

Figures:
- guest MMIO read and posted write, vuser-dma BAR0, in µs per access, against
  edu in the same boot (no target: the host-only figures of
  ``bench_mmio.py`` carry the targets; this is what a guest test pays);
- boot to the first KTAP line: seconds from starting the run (server, QEMU,
  kernel, /init) to the console's first ``KTAP version`` line, against the
  value recorded in ``bench/results.json`` by the previous ``make bench``
  (no regression: within 20 %, since TCG boots vary with the machine's load).
  The image is built (or found in the cache) before the clock starts.

Run: ``.venv/bin/python bench/bench_guest.py [--json FILE]``.
"""

from __future__ import annotations

import argparse
import json
import re
import threading
import time
from pathlib import Path

PROGRAM = "mmio_timing"
BOOT_FIGURE = "guest boot to first KTAP line, TCG, cached image"
RESULTS = Path(__file__).resolve().parent / "results.json"
LINE = re.compile(r"mmio_timing: (\S+) (read|write) ([0-9.]+) us n=(\d+)")


def previous_boot() -> float | None:
    """The boot figure of the last recorded ``make bench``, if any."""
    try:
        data = json.loads(RESULTS.read_text())
    except (OSError, ValueError):
        return None
    for script in data.get("scripts", []):
        for f in script.get("figures", []):
            if f.get("name") == BOOT_FIGURE and isinstance(f.get("value"), (int, float)):
                return float(f["value"])
    return None


def run_guest(server_command: list[str] | None = None,
              ) -> tuple[dict[tuple[str, str], float], float | None, str]:
    """(µs per access by (device, read|write), seconds to the first KTAP line, error).
    ``server_command``: another server (default: the launcher's ``vuser serve``)."""
    from vuser.commands._run_report import results
    from vuser.guest.image import build_image
    from vuser.guest.manifest import load_manifest
    from vuser.qemu.launcher import launch

    spec = load_manifest()[PROGRAM]
    image = build_image(tests=[PROGRAM], progress=False)
    tail = [""]                      # the console's last bytes: a line may come in pieces
    first_ktap: list[float] = []
    lock = threading.Lock()

    def echo(text: str) -> None:
        with lock:
            if first_ktap:
                return
            tail[0] = (tail[0] + text)[-4096:]
            if "KTAP version" in tail[0]:
                first_ktap.append(time.monotonic())

    start = time.monotonic()
    r = launch(image, devices=list(spec.devices), timeout=spec.timeout, console_echo=echo,
               qemu_extra=["-device", "edu"], server_command=server_command)
    boot = first_ktap[0] - start if first_ktap else None
    figures = {(m.group(1), m.group(2)): float(m.group(3)) for m in LINE.finditer(r.console)}
    progs = results(r.console)
    failed = [f"{p.name}: {c[0]} {c[1]}" for p in progs for c in p.cases if c[1] != "pass"]
    error = ""
    if not r.ok or failed:
        error = (r.error or "") + "; ".join(failed) + "\n" + r.console_tail(20)
    return figures, boot, error


def figures() -> list[dict]:
    previous = previous_boot()
    timing, boot, error = run_guest()
    out = []
    for what, label in (("read", "guest MMIO 4-byte read"), ("write", "guest MMIO posted 4-byte write")):
        ours, edu = timing.get(("vuser-dma", what)), timing.get(("edu", what))
        out.append({
            "name": f"{label}, vuser-dma BAR0 (TCG guest)",
            "value": ours, "unit": "µs",
            "reference": "QEMU's edu device, same boot", "reference_value": edu,
            "ratio": round(ours / edu, 1) if ours and edu else None,
            "target": None, "met": None,
            "extra": {"error": error.splitlines()[0]} if error and ours is None else {},
        })
    ratio = round(boot / previous, 2) if boot and previous else None
    out.append({
        "name": BOOT_FIGURE, "value": round(boot, 2) if boot else None, "unit": "s",
        "reference": "the previous make bench", "reference_value": previous,
        "ratio": ratio, "target": "report; no regression (<= 1.2x the previous)",
        "met": None if ratio is None else ratio <= 1.2,
        "extra": {"error": error.splitlines()[0]} if error and boot is None else {},
    })
    if error:
        print(f"guest run: {error}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", metavar="FILE", help="write the figures as JSON")
    args = parser.parse_args()
    figs = figures()
    if args.json:
        Path(args.json).write_text(json.dumps({"script": "bench_guest.py", "figures": figs},
                                              indent=1, ensure_ascii=False))
    for f in figs:
        print(f"{f['name']:58} {f['value']!s:>10} {f['reference_value']!s:>10} "
              f"{f['ratio']!s:>6}  ({f['unit']})")


if __name__ == "__main__":
    main()
