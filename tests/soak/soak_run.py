"""The soak (opt-in: ``make soak MINUTES=N`` runs this file by name; its name keeps it
out of ``make test``): guest-tests/soak.c loops nested DMA with random invalidations
and PRI faults for N minutes, verifying every copy, against a real vuser server.

The server's RSS and open fds are read from /proc when the loop starts (after
set-up and the first rounds) and when the guest reports its last copy. The bound:
RSS may grow by at most ``RSS_BOUND_KIB`` (allocator noise, caches filled in the
first minutes), fds not at all.
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

import pytest

MINUTES = float(os.environ.get("VUSER_SOAK_MINUTES", "2"))
RSS_BOUND_KIB = 8 * 1024

pytestmark = pytest.mark.timeout(MINUTES * 60 + 600)


def _sample(pid: int) -> tuple[int, int]:
    """(VmRSS in KiB, open fds) of ``pid``."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1))
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def test_soak():
    from vuser.commands._run_report import results
    from vuser.guest.image import build_image
    from vuser.guest.manifest import load_manifest
    from vuser.qemu.launcher import launch

    spec = load_manifest()["soak"]  # opt_in: pytest does not collect it from the manifest
    seconds = max(10, int(MINUTES * 60))
    image = build_image(tests=["soak"], progress=False)
    server_pid: list[int] = []
    samples: dict[str, tuple[int, int]] = {}
    seen: list[str] = []
    lock = threading.Lock()

    def echo(text: str) -> None:  # the console, as it arrives
        with lock:
            seen.append(text)
            console = "".join(seen)
            if "soak: " in console and "before" not in samples and server_pid:
                samples["before"] = _sample(server_pid[0])
            if "copies verified" in console and "after" not in samples and server_pid:
                samples["after"] = _sample(server_pid[0])

    r = launch(image, devices=list(spec.devices), timeout=seconds + spec.timeout,
               kernel_args=[f"vuser.soak_s={seconds}"], console_echo=echo,
               on_ready=lambda info: server_pid.append(info.server_pid))
    summary = re.search(r"soak: (\d+) copies verified.*", r.console)
    progs = results(r.console)
    assert r.ok and [(p.name, p.status) for p in progs] == [("soak", "pass")], (
        f"{r.error or ''}\n{r.console_tail(30)}")
    assert summary, r.console_tail(30)
    (rss0, fd0), (rss1, fd1) = samples["before"], samples["after"]
    print(f"\nsoak: {seconds} s, {summary.group(0)}\n"
          f"server RSS {rss0} KiB -> {rss1} KiB ({rss1 - rss0:+d} KiB, bound +{RSS_BOUND_KIB} KiB); "
          f"fds {fd0} -> {fd1} (bound: no growth)")
    assert rss1 - rss0 <= RSS_BOUND_KIB, f"server RSS grew by {rss1 - rss0} KiB"
    assert fd1 <= fd0, f"server fds grew from {fd0} to {fd1}"
