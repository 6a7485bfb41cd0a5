"""The three experiments: their numbers, their tables, their plots."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys

import pytest

from experiments import iotlb_hit_rate, nested_walk_cost, s2_unmap_under_dma
from vuser.cli import main

HAVE_MPL = importlib.util.find_spec("matplotlib") is not None


def ns(mod, *argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    mod.configure(p)
    return p.parse_args(list(argv))


def test_iotlb_hit_rate_shows_the_lru_cliff() -> None:
    r = iotlb_hit_rate.run(ns(iotlb_hit_rate, "--capacities", "16,32,64", "--strides",
                              "4096,1024", "--working-set", "32", "--passes", "3"))
    s4k = {cap: rate for cap, rate, _n in r.data["series"]["stride 4096"]}
    s1k = {cap: rate for cap, rate, _n in r.data["series"]["stride 1024"]}
    assert s4k[16] == 0.0                       # a cyclic sweep over 32 pages, LRU of 16
    assert s4k[64] == pytest.approx(2 / 3)      # everything fits: only the first pass misses
    assert s1k[16] == pytest.approx(3 / 4)      # 4 accesses per page: 3 of them hit
    assert s1k[64] == pytest.approx(1 - 1 / 12)
    assert [row[0] for row in r.rows] == [16, 32, 64] and r.plot is not None


def test_nested_walk_cost_matches_the_formula() -> None:
    r = nested_walk_cost.run(ns(nested_walk_cost, "--samples", "16"))
    got = {(row[0], row[1]): (row[3], row[5], row[6]) for row in r.rows}
    assert got == {("4-level", "4K"): (24, 24, 24), ("4-level", "2M"): (19, 19, 19),
                   ("5-level", "4K"): (29, 29, 29), ("5-level", "2M"): (23, 23, 23)}
    model = {row[0]: float(row[7]) for row in r.rows}
    assert 0 < model["4-level"] < model["5-level"] <= 5  # IOAS stage 2: stage-1 reads only


def test_s2_unmap_under_dma() -> None:
    r = s2_unmap_under_dma.run(ns(s2_unmap_under_dma, "--copies", "32", "--hole", "8",
                                  "--unmap-after", "4"))
    ph = r.data["phases"]
    held = ph["hole left in place"]
    assert held["faulted"] == list(range(12, 20))  # exactly the copies into the hole
    assert held["status"] == {"SUCCESS": 24, "PAGE_FAULT (stage 2, write)": 8}
    assert held["sees"] == {"copy": 24, "old bytes": 8}
    assert held["host_faults"] == 8 and held["host_stages"] == {2: 8}
    running = ph["before + during the unmap"]
    assert set(running["faulted"]) <= set(range(12, 20))
    assert ph["after s2_restore"]["status"] == {"SUCCESS": 32}
    assert r.data["completions"] > 0


def test_cli_lists_and_runs(capsys: pytest.CaptureFixture[str], tmp_path: object) -> None:
    assert main(["experiment", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("iotlb-hit-rate", "nested-walk-cost", "s2-unmap-under-dma"):
        assert name in out
    assert main(["experiment", "nested-walk-cost", "--out", str(tmp_path), "--samples", "4"]) == 0
    out = capsys.readouterr().out
    assert "Cost of a nested walk" in out and "24" in out
    png = os.path.join(str(tmp_path), "nested-walk-cost.png")
    if HAVE_MPL:
        assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    else:
        assert "pip install 'vuser[plot]'" in out and not os.path.exists(png)


def test_without_matplotlib_the_table_still_prints(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str],
                                                   tmp_path: object) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails
    assert main(["experiment", "iotlb-hit-rate", "--out", str(tmp_path), "--capacities", "16",
                 "--strides", "4096", "--working-set", "8", "--passes", "1"]) == 0
    out = capsys.readouterr().out
    assert "IOTLB_ENTRIES" in out
    lines = [ln for ln in out.splitlines() if "matplotlib" in ln]
    assert lines == ["matplotlib is not installed; no plot written (pip install 'vuser[plot]')"]


@pytest.mark.skipif(not HAVE_MPL, reason="matplotlib (the vuser[plot] extra) is not installed")
def test_plots_are_pngs(tmp_path: object) -> None:
    for mod, argv in ((iotlb_hit_rate, ["--capacities", "16,64", "--working-set", "16"]),
                      (nested_walk_cost, ["--samples", "4"])):
        out = os.path.join(str(tmp_path), mod.__name__.rsplit(".", 1)[-1] + ".png")
        mod.run(ns(mod, *argv)).plot(out)
        assert open(out, "rb").read(8) == b"\x89PNG\r\n\x1a\n" and os.path.getsize(out) > 5000


def test_unknown_experiment(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["experiment", "nope"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no experiment 'nope'" in err


def test_iotlb_live_mode_against_a_server(tmp_path: object) -> None:
    """--socket: sizes set on the server, counters read, the capacity put back."""
    import shutil
    import subprocess
    import tempfile
    import time

    from vuser.rpc import SyncClient

    d = tempfile.mkdtemp(prefix="vuser-exp-", dir="/tmp")
    ctl = os.path.join(d, "c.sock")
    proc = subprocess.Popen([sys.executable, "-m", "vuser", "serve", "--device",
                             f"sample@{os.path.join(d, 's.sock')}", "--control", ctl],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        deadline = time.monotonic() + 20
        while not os.path.exists(ctl) and time.monotonic() < deadline:
            time.sleep(0.05)
        with SyncClient(ctl) as c:
            before = c.stats()["iotlb_capacity"]
        rows = iotlb_hit_rate.live(ctl, [16, 64], 0.05)
        assert [r[0] for r in rows] == [16, 64] and all(r[2] == 0 for r in rows)  # idle server
        with SyncClient(ctl) as c:
            assert c.stats()["iotlb_capacity"] == before
    finally:
        proc.terminate()
        proc.wait(20)
        shutil.rmtree(d, ignore_errors=True)
