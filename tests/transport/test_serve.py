"""``vuser serve``: argument parsing, refusals, readiness lines, tracing, and a
clean shutdown on SIGTERM that removes the sockets."""

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys

import pytest

from proto_helpers import FakeBackend
from vuser.commands.serve import DeviceSpec, make_device, parse_specs, serve
from vuser.errors import UserError
from vuser.transport.client import Client

TIMEOUT = 20


def test_parse_one_device_with_socket():
    assert parse_specs("/tmp/a.sock", ["sample"]) == [DeviceSpec("sample", "/tmp/a.sock", {})]
    assert parse_specs("/tmp/a.sock", ["sample,label=3"]) == [
        DeviceSpec("sample", "/tmp/a.sock", {"label": "3"})]


def test_parse_several_devices():
    specs = parse_specs(None, ["sample@/tmp/a.sock", "sample@/tmp/b.sock,label=0x10,x=y"])
    assert specs == [DeviceSpec("sample", "/tmp/a.sock", {}),
                     DeviceSpec("sample", "/tmp/b.sock", {"label": "0x10", "x": "y"})]


@pytest.mark.parametrize("socket_path,devices,match", [
    ("/tmp/a", ["sample", "sample"], "exactly one --device"),
    (None, ["sample"], "no socket path"),
    ("/tmp/a", ["sample@/tmp/b"], "either with --socket or after @"),
    (None, ["@/tmp/a"], "no device type"),
    (None, ["sample@/tmp/a,label"], "not key=value"),
    (None, ["sample@/tmp/a,a=1,a=2"], "given twice"),
    (None, ["sample@/tmp/a", "sample@/tmp/../tmp/a"], "two devices"),
])
def test_parse_errors_are_one_line_user_errors(socket_path, devices, match):
    with pytest.raises(UserError, match=match) as e:
        parse_specs(socket_path, devices)
    assert "\n" not in str(e.value)


def test_unknown_type_and_bad_options():
    with pytest.raises(UserError, match="unknown device type 'nope'.*known: fake"):
        make_device(DeviceSpec("nope", "/x"), {"fake": FakeBackend})
    with pytest.raises(UserError, match="device fake:"):
        make_device(DeviceSpec("fake", "/x", {"colour": "red"}), {"fake": FakeBackend})


async def test_serve_in_process_traces_every_message_with_v(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="vuser.trace")
    path = str(tmp_path / "f.sock")
    stop = asyncio.Event()
    task = asyncio.create_task(serve([DeviceSpec("fake", path)], trace=1,
                                     types={"fake": FakeBackend}, stop=stop))
    for _ in range(200):
        if os.path.exists(path):
            break
        await asyncio.sleep(0.01)
    async with await Client.connect(path) as c:
        await c.device_info()
    stop.set()
    assert await asyncio.wait_for(task, TIMEOUT) == 0
    assert not os.path.exists(path)
    traced = [r.getMessage() for r in caplog.records if r.name == "vuser.trace"]
    assert any("← #0 VERSION" in m for m in traced)
    assert any("→ #1 DEVICE_GET_INFO reply" in m and "num_regions=9" in m for m in traced)


def vuser(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "vuser", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def wait_ready(proc, n):
    lines = []
    for _ in range(n):
        line = proc.stdout.readline()
        assert line, f"vuser serve exited: {proc.stderr.read()}"
        lines.append(line.strip())
    return lines


def test_serve_two_sample_devices_and_stop_on_sigterm(tmp_path):
    pytest.importorskip("vuser.devices.sample", reason="needs the sample device")
    a, b = str(tmp_path / "a.sock"), str(tmp_path / "b.sock")
    proc = vuser("serve", "--device", f"sample@{a}", "--device", f"sample@{b},label=2")
    try:
        assert wait_ready(proc, 2) == [f"sample ready on {a}", f"sample ready on {b}"]

        async def talk():
            for path in (a, b):
                async with await Client.connect(path) as c:
                    assert (await c.device_info()).num_regions == 9
        asyncio.run(talk())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(TIMEOUT) == 0
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert not os.path.exists(a) and not os.path.exists(b)


def test_serve_with_socket_option_and_sigint(tmp_path):
    pytest.importorskip("vuser.devices.sample", reason="needs the sample device")
    path = str(tmp_path / "s.sock")
    proc = vuser("serve", "--socket", path, "--device", "sample")
    try:
        assert wait_ready(proc, 1) == [f"sample ready on {path}"]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(TIMEOUT) == 0
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert not os.path.exists(path)


def run_serve(*args):
    return subprocess.run([sys.executable, "-m", "vuser", "serve", *args],
                          capture_output=True, text=True, timeout=TIMEOUT)


def test_refuses_a_path_that_is_not_a_socket(tmp_path):
    path = tmp_path / "file"
    path.write_text("keep me")
    out = run_serve("--socket", str(path), "--device", "sample")
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == \
        f"vuser: error: {path} exists and is not a socket"
    assert path.read_text() == "keep me"


def test_refuses_a_socket_in_use_and_replaces_a_stale_one(tmp_path):
    pytest.importorskip("vuser.devices.sample", reason="needs the sample device")
    path = str(tmp_path / "s.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    out = run_serve("--socket", path, "--device", "sample")
    assert out.returncode == 1 and "is in use by another server" in out.stderr
    assert "Traceback" not in out.stderr
    listener.close()          # the path stays behind: a stale socket
    assert os.path.exists(path)
    proc = vuser("serve", "--socket", path, "--device", "sample")
    try:
        assert wait_ready(proc, 1) == [f"sample ready on {path}"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(TIMEOUT) == 0
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def test_missing_directory_and_unknown_type(tmp_path):
    out = run_serve("--device", f"sample@{tmp_path}/no/such/dir.sock")
    assert out.returncode == 1 and "does not exist" in out.stderr
    out = run_serve("--device", f"frob@{tmp_path}/x.sock")
    assert out.returncode == 1 and "unknown device type 'frob'" in out.stderr


def test_two_sample_devices_get_distinct_labels(tmp_path):
    """Without label= options, the platform hands each device a free label."""
    from vuser.commands.serve import DeviceSpec, make_device
    from vuser.devices import DEVICE_TYPES
    from vuser.devices.platform import Platform

    platform = Platform()
    try:
        a = make_device(DeviceSpec("sample", str(tmp_path / "a")), DEVICE_TYPES, platform)
        b = make_device(DeviceSpec("sample", str(tmp_path / "b")), DEVICE_TYPES, platform)
        assert a.label != b.label
        assert {a.label, b.label} == {d.label for d in platform.registry.devices()}
    finally:
        platform.close()


def _silent_client_closed_within(path: str, seconds: float) -> bool:
    """Connect, send nothing; True if the server closes the socket within ``seconds``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(path)
        s.settimeout(seconds)
        try:
            return s.recv(1) == b""
        except TimeoutError:
            return False


@pytest.mark.parametrize("args, closed", [
    (("--handshake-timeout", "0.5"), True),                           # no VERSION in time
    (("--handshake-timeout", "0"), False),                            # no deadline at all
    (("--handshake-timeout", "0", "--idle-timeout", "0.5"), True),    # silent: idle
])
def test_timeouts_from_the_command_line(tmp_path, args, closed):
    path = str(tmp_path / "s.sock")
    proc = vuser("serve", "--socket", path, "--device", "sample", *args)
    try:
        wait_ready(proc, 1)
        assert _silent_client_closed_within(path, 3.0) is closed

        async def talk():  # another client is served all the while
            async with await Client.connect(path) as c:
                assert (await c.device_info()).num_regions == 9
        asyncio.run(talk())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(TIMEOUT) == 0
        err = proc.stderr.read()
        assert ("dropp" in err.lower()) is closed, err
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()


@pytest.mark.parametrize("value", ["-1", "soon", "nan"])
def test_bad_timeout_is_one_line(tmp_path, value):
    out = run_serve("--socket", str(tmp_path / "s.sock"), "--device", "sample",
                    "--idle-timeout", value)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith(
        "vuser serve: error: argument --idle-timeout:")


@pytest.mark.parametrize("dtype, valid", [
    ("sample", "label"),
    ("vuser-dma", "devtlb, group, label, queues, ring_log2"),
    ("vuser-iommu", "cm, drhd_base, label"),
])
def test_a_mistyped_option_lists_the_valid_ones(tmp_path, dtype, valid):
    out = run_serve("--socket", str(tmp_path / "s.sock"), "--device", f"{dtype},lable=3")
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == \
        f"vuser: error: device {dtype}: unknown option lable (valid: {valid})"
    assert not (tmp_path / "s.sock").exists()
