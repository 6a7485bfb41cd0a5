"""Every control method documents its parameters and result, in `vuser ctl methods`
and in docs/control.md, from one table (``vuser.rpc.method_docs``) that cannot
drift from the methods the server serves."""

from __future__ import annotations

import os
import subprocess
import sys

from rpc_helpers import Harness
from vuser.rpc import Client, method_docs

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_every_method_and_parameter_has_a_meaning(harness: Harness) -> None:
    methods = harness.service.rpc_methods()
    names = {m["name"] for m in methods}
    assert names == set(method_docs.DOCS), (
        f"no entry: {sorted(names - set(method_docs.DOCS))}; "
        f"stale entry: {sorted(set(method_docs.DOCS) - names)}")
    for m in methods:
        assert m["doc"] and m["returns"], m["name"]
        documented = set(method_docs.DOCS[m["name"]][1])
        params = {p["name"] for p in m["params"]}
        assert documented == params, (m["name"], params ^ documented)
        assert all(p["doc"] for p in m["params"])
    hwpt = next(m for m in methods if m["name"] == "hwpt_alloc")
    flags = next(p for p in hwpt["params"] if p["name"] == "flags")
    assert flags["names"] == ["NEST_PARENT", "DIRTY_TRACKING", "FAULT_ID_VALID", "PASID"]
    assert flags["default"] == 0 and not flags["required"]
    # The whole docstring, not its first line only.
    assert hwpt["details"].endswith("as in the kernel.")


def test_docs_control_md_is_the_method_table() -> None:
    from vuser.commands.ctl import _offline_methods

    with open(os.path.join(ROOT, "docs", "control.md")) as f:
        on_disk = f.read()
    assert on_disk == method_docs.markdown(_offline_methods()), (
        "docs/control.md is stale: vuser ctl methods --offline --markdown > docs/control.md")
    for m in _offline_methods():
        assert f"### `{method_docs.signature(m)}`" in on_disk


async def test_ctl_methods_shows_everything_the_server_says(client: Client) -> None:
    methods = await client.rpc_methods()
    text = method_docs.text(methods, width=10_000)   # no wrapping: compare whole lines
    for m in methods:
        assert f"{method_docs.signature(m)}  [{m['group']}]" in text
        assert m["doc"] in text and f"Returns {m['returns']}." in text
        for p in m["params"]:
            assert method_docs.param_line(p) in text
        for para in m["details"].split("\n\n"):
            assert para in text


def test_ctl_methods_cli() -> None:
    def run(*a: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "vuser", "ctl", "methods", *a],
                              capture_output=True, text=True, timeout=60,
                              env=dict(os.environ, VUSER_CONTROL=""))
    r = run("--offline", "hwpt_alloc")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("hwpt_alloc(dev_id, pt_id, flags=0, data_type=0, data=nil, "
                               "fault_id=nil)  [uapi]")
    assert "Names: NEST_PARENT, DIRTY_TRACKING, FAULT_ID_VALID, PASID" in " ".join(
        r.stdout.split())
    assert "Returns int: the HWPT id." in r.stdout
    r = run("--offline", "--brief")
    assert r.returncode == 0 and len(r.stdout.splitlines()) == len(method_docs.DOCS) + 1
    r = run("--offline", "no_such")
    assert r.returncode == 1 and r.stderr == (
        "vuser: error: no method no_such (`vuser ctl methods --brief` lists them)\n")
    r = run("hwpt_alloc")                       # no --offline, no socket: one line
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "no control socket" in r.stderr
