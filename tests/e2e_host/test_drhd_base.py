"""`vuser serve` with vuser-iommu's drhd_base: our client plays the firmware writing
config space. A wrong BAR0 stops the server at once (one stderr line, exit 3, sockets
removed); the right one keeps it serving."""

from __future__ import annotations

import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time

import pytest

from vuser.transport.client import Client

BASE = 0xFE40_0000


@pytest.fixture
def sockdir():
    d = tempfile.mkdtemp(prefix="vuser-drhd-", dir="/tmp")   # sun_path is short
    yield d
    shutil.rmtree(d, ignore_errors=True)


def start(sock: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-m", "vuser", "serve", "--device",
                             f"vuser-iommu@{sock},drhd_base={BASE:#x}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line == f"vuser-iommu ready on {sock}\n", (line, proc.stderr.read())
    return proc


async def firmware(sock: str, bar0: int) -> None:
    """SeaBIOS's order: size the BAR, place it, then enable decode and bus master."""
    async with await Client.connect(sock) as c:
        await c.region_write(7, 0x10, struct.pack("<I", 0xFFFF_FFFF))
        await c.region_write(7, 0x10, struct.pack("<I", bar0))
        await c.region_write(7, 0x04, struct.pack("<H", 0x0006))


def wait_exit(proc: subprocess.Popen[str], timeout: float = 20) -> int:
    try:
        return proc.wait(timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_wrong_bar0_stops_the_server_with_one_line(sockdir):
    sock = os.path.join(sockdir, "viommu.sock")
    proc = start(sock)
    try:
        await firmware(sock, 0xFE20_0000)
    except (ConnectionError, OSError):
        pass   # the server may close the connection before the last reply
    assert wait_exit(proc) == 3
    err = proc.stderr.read().splitlines()     # info log lines come first
    assert err[-1] == ("vuser-iommu: firmware placed BAR0 at 0xfe200000 but the DMAR's DRHD "
                       "base is 0xfe400000")
    assert sum("BAR0" in line for line in err) == 1 and "Traceback" not in "\n".join(err)
    assert not os.path.exists(sock)


async def test_right_bar0_keeps_serving(sockdir):
    sock = os.path.join(sockdir, "viommu.sock")
    proc = start(sock)
    try:
        await firmware(sock, BASE)
        time.sleep(0.2)
        assert proc.poll() is None
        async with await Client.connect(sock) as c:      # still serving
            assert struct.unpack("<I", await c.region_read(7, 0x10, 4))[0] == BASE
        proc.send_signal(signal.SIGTERM)
        assert wait_exit(proc) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
