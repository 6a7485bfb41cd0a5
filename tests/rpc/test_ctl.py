"""`vuser ctl`: meaningful help everywhere, one line without a server, real commands."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from vuser.cli import build_parser, main

VUSER = [sys.executable, "-m", "vuser"]
HAVE_MPL = importlib.util.find_spec("matplotlib") is not None


def _subparsers(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            return dict(a.choices)
    return {}


def _walk(p: argparse.ArgumentParser, path: list[str]) -> Iterator[list[str]]:
    yield path
    for name, sp in _subparsers(p).items():
        yield from _walk(sp, path + [name])


def test_every_ctl_help_is_meaningful(capsys: pytest.CaptureFixture[str]) -> None:
    ctl = _subparsers(build_parser())["ctl"]
    paths = list(_walk(ctl, ["ctl"]))
    expected = {"devices", "pasids", "ioas", "stats", "faults", "trace", "inject"}
    assert expected <= {p[1] for p in paths if len(p) > 1}
    assert {p[2] for p in paths if len(p) > 2 and p[1] == "trace"} == {
        "record", "show", "summary", "plot", "export"}
    for path in paths:
        with pytest.raises(SystemExit) as ei:
            main(path + ["--help"])
        assert ei.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith(f"usage: vuser {' '.join(path)}")
        description = out.split("\n\n")[1]
        assert len(description.split()) >= 6, f"thin help for {path}: {description!r}"
    # Every subcommand has a one-line help in its parent's listing.
    for path in paths:
        parent = ctl
        for name in path[1:-1]:
            parent = _subparsers(parent)[name]
        if len(path) > 1:
            action = next(a for a in parent._actions if isinstance(a, argparse._SubParsersAction))
            helps = {c.dest: c.help for c in action._choices_actions}
            assert helps.get(path[-1]), f"no help line for {path}"


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 30
            ) -> subprocess.CompletedProcess[str]:
    e = dict(os.environ)
    e.pop("VUSER_CONTROL", None)
    e.update(env or {})
    return subprocess.run(VUSER + list(args), capture_output=True, text=True, timeout=timeout,
                          env=e)


def test_no_server_is_one_line(sockdir: str) -> None:
    path = os.path.join(sockdir, "nothing.sock")
    r = run_cli("ctl", "--socket", path, "devices")
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr == f"vuser: error: no server at {path} (no such socket)\n"
    r = run_cli("ctl", "stats")
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "VUSER_CONTROL" in r.stderr
    with open(path, "w"):
        pass  # a file that is not a listening socket
    r = run_cli("ctl", "--socket", path, "stats")
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "no server at" in r.stderr


@pytest.fixture
def served(sockdir: str) -> Iterator[str]:
    dev, ctl = os.path.join(sockdir, "dma.sock"), os.path.join(sockdir, "ctl.sock")
    proc = subprocess.Popen(VUSER + ["serve", "--device", f"vuser-dma@{dev},label=0x42",
                                     "--control", ctl],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("control ready on"):
                break
        assert lines and lines[-1] == f"control ready on {ctl}\n", (lines, proc.stderr.read()
                                                                      if proc.poll() else "")
        yield ctl
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        assert not os.path.exists(ctl)  # removed on shutdown
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_ctl_against_a_served_platform(served: str, sockdir: str) -> None:
    env = {"VUSER_CONTROL": served}
    assert stat.S_IMODE(os.stat(served).st_mode) == 0o600

    r = run_cli("ctl", "devices", env=env)
    assert r.returncode == 0, r.stderr
    assert "0x42" in r.stdout and "VuserDma" in r.stdout and "unbound" in r.stdout
    r = run_cli("ctl", "--json", "devices", env=env)
    [dev] = json.loads(r.stdout)
    assert (dev["label"], dev["type"], dev["pasid_width"]) == (0x42, "VuserDma", 20)
    r = run_cli("ctl", "devices", "--json", env=env)  # after the subcommand too
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == [dev]
    r = run_cli("ctl", "inject", "list", "--json", "--socket", served)
    assert r.returncode == 0 and json.loads(r.stdout)["rules"] == []

    r = run_cli("ctl", "call", "ioas_alloc", env=env)
    ioas = int(r.stdout)
    r = run_cli("ctl", "call", "ioas_map", str(ioas), "null", "0x2000", "iova=0x10000", env=env)
    assert r.returncode == 0 and r.stdout == "0x10000\n"  # an address, in hex
    r = run_cli("ctl", "--json", "call", "ioas_areas", str(ioas), env=env)
    assert json.loads(r.stdout)[0]["iova"] == 0x10000  # --json keeps numbers
    r = run_cli("ctl", "call", "ioas_areas", str(ioas), env=env)
    area = json.loads(r.stdout)[0]
    assert (area["iova"], area["last"], area["prot"]) == ("0x10000", "0x11fff", 6)
    # the uAPI's flag names, |-joined, or an unknown one named with the valid ones
    r = run_cli("ctl", "call", "ioas_map", str(ioas), "null", "0x1000", "iova=0x40000",
                "flags=READABLE|IOMMU_IOAS_MAP_FIXED_IOVA", env=env)
    assert r.returncode == 0 and r.stdout == "0x40000\n"
    r = run_cli("ctl", "call", "ioas_areas", str(ioas), env=env)
    assert [(a["iova"], a["prot"]) for a in json.loads(r.stdout)] == [("0x10000", 6),
                                                                      ("0x40000", 4)]
    r = run_cli("ctl", "call", "ioas_map", str(ioas), "null", "0x1000", "flags=READABLE|WRITE",
                env=env)
    assert r.returncode == 1 and r.stderr == (
        "vuser: error: ioas_map: EINVAL: ioas_map: param 'flags' has no flag 'WRITE' (valid: "
        "FIXED_IOVA, WRITEABLE, READABLE, |-joined, or a number)\n")
    r = run_cli("ctl", "ioas", env=env)
    assert f"IOAS {ioas}: 2 areas" in r.stdout and "0x10000" in r.stdout
    r = run_cli("ctl", "call", "destroy", "999", env=env)
    assert r.returncode == 1 and r.stderr == "vuser: error: destroy: ENOENT: no such object 999\n"

    r = run_cli("ctl", "inject", "fault", "--label", "0x42", "--pasid", "5", "--iova",
                "0x400000", "--count", "3", env=env)
    assert r.returncode == 0 and "injection rule 1" in r.stdout
    r = run_cli("ctl", "--json", "inject", "list", env=env)
    assert json.loads(r.stdout)["rules"][0]["remaining"] == 3
    r = run_cli("ctl", "inject", "clear", env=env)
    assert "1 injection rules removed" in r.stdout
    for reason in ("FS_P", "0x71", "PAGING_ENTRY_INV"):   # the guest's name or code, or ours
        r = run_cli("ctl", "inject", "fault", "--label", "0x42", "--rid", "--iova", "0x400000",
                    "--reason", reason, env=env)
        assert r.returncode == 0, r.stderr
    r = run_cli("ctl", "--json", "inject", "list", env=env)
    assert [x["reason"] for x in json.loads(r.stdout)["rules"]] == [0x07] * 3
    r = run_cli("ctl", "inject", "fault", "--label", "0x42", "--rid", "--iova", "0",
                "--reason", "NOPE", env=env)
    assert r.returncode == 2 and "unknown fault reason 'NOPE'" in r.stderr
    run_cli("ctl", "inject", "clear", env=env)

    r = run_cli("ctl", "stats", "--reset", env=env)
    assert "iotlb_hit_rate" in r.stdout
    for sub in ("faults", "hwpts", "methods"):
        r = run_cli("ctl", sub, env=env)
        assert r.returncode == 0 and r.stdout, (sub, r.stderr)
    r = run_cli("ctl", "pasids", "0x42", env=env)
    assert r.returncode == 1 and "not bound to this context" in r.stderr  # no VM yet

    trace = os.path.join(sockdir, "t.trace")
    r = run_cli("ctl", "trace", "record", trace, "--duration", "0.2", env=env)
    assert r.returncode == 0 and "events" in r.stdout and os.path.exists(trace)
    r = run_cli("ctl", "trace", "summary", trace)
    assert r.returncode == 0 and "IOTLB hit rate" in r.stdout
    r = run_cli("ctl", "trace", "show", trace)
    assert r.returncode == 0 and "(no events)" in r.stdout
    r = run_cli("ctl", "trace", "plot", trace, "--out", os.path.join(sockdir, "t.png"))
    if HAVE_MPL:
        assert r.returncode == 0 and os.path.exists(os.path.join(sockdir, "t.png"))
    else:
        assert r.returncode == 1
        assert r.stderr == ("vuser: error: matplotlib is not installed; no plot written "
                            "(pip install 'vuser[plot]')\n")


def test_trace_commands_on_bad_files(sockdir: str) -> None:
    r = run_cli("ctl", "trace", "show", os.path.join(sockdir, "none.trace"))
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "no trace file" in r.stderr
    bad = os.path.join(sockdir, "bad.trace")
    with open(bad, "wb") as f:
        f.write(b"\x81\xa1a\x01")
    r = run_cli("ctl", "trace", "summary", bad)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "not a vuser trace" in r.stderr


def test_vuser_run_passes_a_control_socket() -> None:
    from vuser.commands.run import control_socket_path

    args, path = control_socket_path(["--foo"])
    assert args == ["--foo", "--control", path] and path.endswith(".ctl")
    assert len(os.fsencode(path)) <= 107
    assert control_socket_path(["--control", "/tmp/c"]) == (["--control", "/tmp/c"], "/tmp/c")
    assert control_socket_path(["--control=/tmp/d"])[1] == "/tmp/d"


def test_faults_follow_prints_a_dma_fault(served: str) -> None:
    env = dict(os.environ, VUSER_CONTROL=served)
    follow = subprocess.Popen(VUSER + ["ctl", "faults", "--follow", "--count", "1"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert follow.stderr.readline().startswith("following fault, page_request")
        dev_id = int(run_cli("ctl", "call", "device_bind", "0x42", env=env).stdout)
        r = run_cli("ctl", "--json", "call", "translate", str(dev_id), "null", "0x5000", "8", "1",
                    env=env)
        assert json.loads(r.stdout)["fault"]["reason"] == 0x02  # nothing attached: blocked
        out, _err = follow.communicate(timeout=20)
        assert follow.returncode == 0
        assert out.startswith("fault: label 0x42 pasid RID iova 0x5000") and "BLOCKED" in out
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.wait()


def test_common_options_go_before_or_after_the_subcommand() -> None:
    """--json, --socket, --timeout of `vuser ctl` and -v of every command work on
    either side of the subcommand; given before and not repeated, they stay."""
    p = build_parser()
    a = p.parse_args(["ctl", "devices", "--json", "--socket", "/s", "--timeout", "3"])
    assert (a.json, a.socket, a.timeout) == (True, "/s", 3.0)
    a = p.parse_args(["ctl", "--json", "-s", "/s", "trace", "show", "f"])
    assert (a.json, a.socket, a.timeout) == (True, "/s", 10.0)
    a = p.parse_args(["ctl", "devices"])
    assert (a.json, a.socket, a.timeout) == (False, None, 10.0)
    dev = ["--device", "sample@/tmp/x.sock"]
    for argv, verbose in ((["serve", "-v", *dev], 1), (["-v", "serve", *dev], 1),
                          (["-v", "serve", "-v", *dev], 2), (["serve", *dev], 0),
                          (["serve", *dev, "-vv"], 2), (["ctl", "-vv", "devices"], 2)):
        a = p.parse_args(argv)
        assert a.verbose + a.sub_verbose == verbose, argv


def test_sync_client_used_once_leaves_no_pending_task(served: str) -> None:
    """``SyncClient(path).stats()`` (its docstring's example) closes cleanly when dropped."""
    code = ("import sys\nfrom vuser.rpc.client import SyncClient\n"
            f"s = SyncClient({served!r}).stats()\n"
            "assert isinstance(s, dict), s\nprint('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "ok\n"
    assert out.stderr == ""  # no "Task was destroyed but it is pending!"
