"""Disconnects and restarts with a real QEMU (issue 14): QEMU killed during a DMA
burst, and a server restarted while QEMU runs.

The host-side halves (a client closing mid-message, a burst cut by a closed
socket, a vanishing control subscriber) are in tests/e2e_host/test_disconnect.py
and tests/rpc/test_bad_input.py; here the client is QEMU's vfio-user-pci and the
guest runs guest-tests/soak.c (nested DMA in a loop, PRI faults) when it is cut.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from vuser.devices.base import VUSER_VENDOR_ID

pytestmark = pytest.mark.timeout(300)

DEVICES = ("vuser-iommu", "vuser-dma")


@pytest.fixture
def workdir():
    d = Path(tempfile.mkdtemp(prefix="vuser-d-", dir="/tmp"))  # sun_path is short
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def soak_image(qemu_bin):
    from vuser.guest.image import build_image

    return build_image(tests=["soak"], progress=False)


class Server:
    """``vuser serve`` with DEVICES and a control socket in ``workdir``."""

    def __init__(self, workdir: Path) -> None:
        self.sockets = [workdir / f"{i}-{t}.sock" for i, t in enumerate(DEVICES)]
        self.control = workdir / "ctl.sock"
        argv = [sys.executable, "-m", "vuser", "serve", "--control", str(self.control)]
        for t, s in zip(DEVICES, self.sockets):
            argv += ["--device", f"{t}@{s}"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        self.lines: list[str] = []
        for line in self.proc.stdout:
            self.lines.append(line)
            if line.startswith("control ready"):
                break
        assert self.proc.poll() is None, "".join(self.lines)
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def fd_targets(self) -> list[str]:
        fd_dir = Path(f"/proc/{self.proc.pid}/fd")
        out = []
        for fd in fd_dir.iterdir():
            try:
                out.append(os.readlink(fd))
            except OSError:
                pass
        return sorted(out)

    def mappings(self) -> int:
        """Bytes mapped in the model's IOASes (QEMU's DMA_MAP of guest RAM)."""
        return sum(i["mapped"] for i in self.call("ioas_list"))

    def call(self, method: str):
        from vuser.rpc.client import SyncClient

        c = SyncClient(str(self.control))
        try:
            return c.call(method)
        finally:
            c.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


class Qemu:
    """QEMU booting ``image`` against ``sockets``; the console in ``console``."""

    def __init__(self, image, sockets: list[Path], workdir: Path, seconds: int = 600) -> None:
        from vuser.guest import overlay
        from vuser.qemu import cmdline
        from vuser.qemu.find import find_qemu

        cfg = cmdline.GuestConfig(
            kernel=Path(image.kernel),
            # The image's programs come in its per-run overlay, as launch() adds them.
            initrd=overlay.concatenate(Path(image.initrd), list(image.overlays),
                                       workdir / "initrd.img"),
            append=cmdline.kernel_cmdline(image.append, [f"vuser.soak_s={seconds}"]),
            sockets=tuple(sockets), qmp=workdir / "qmp.sock", memory_mib=512, accel="tcg")
        self.proc = subprocess.Popen([*find_qemu().argv, *cmdline.qemu_args(cfg)],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, start_new_session=True)
        self.console: list[str] = []
        self.stderr = b""
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        for line in iter(self.proc.stdout.readline, b""):
            self.console.append(line.decode(errors="replace"))

    def text(self) -> str:
        return "".join(self.console)

    def wait_for(self, text: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            if text in self.text():
                return True
            time.sleep(0.1)
        return text in self.text()

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


def eventually(cond, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    return cond()


async def _clean_device(path: Path) -> int:
    """A new vfio-user client (VERSION on connect): DEVICE_GET_INFO, config-space vendor id."""
    from vuser.transport.client import Client

    client = await Client.connect(str(path))
    try:
        info = await client.device_info()
        assert info.num_regions > 0
        vendor = await client.region_read(7, 0, 2)  # VFIO_PCI_CONFIG_REGION_INDEX
        return int.from_bytes(vendor, "little")
    finally:
        await client.close()


def test_qemu_killed_during_a_dma_burst(soak_image, workdir):
    server = Server(workdir)
    baseline = server.fds()
    qemu = Qemu(soak_image, server.sockets, workdir)
    try:
        assert qemu.wait_for("soak: ", 180), qemu.text()[-2000:]
        time.sleep(1.0)  # into the loop: descriptors in flight, page requests pending
        assert server.call("stats")["translations"] > 0
        assert server.mappings() > 0, "QEMU's DMA_MAP of guest RAM is not in the model"
        assert server.fds() > baseline
        qemu.kill()
        assert eventually(lambda: server.mappings() == 0), "QEMU's mappings outlived it"
        assert eventually(lambda: server.fds() == baseline), (
            f"server fds {server.fds()}, {baseline} before QEMU came")
        assert server.proc.poll() is None, "".join(server.lines)
        # every device keeps serving: a new client gets a clean, working device
        for sock in server.sockets:
            assert asyncio.run(_clean_device(sock)) == VUSER_VENDOR_ID
        assert eventually(lambda: server.fds() == baseline), server.fd_targets()  # they closed
    finally:
        qemu.kill()
        server.stop()
    assert server.proc.returncode == 0, "".join(server.lines)
    assert not any(s.exists() for s in server.sockets + [server.control])
    assert not [ln for ln in server.lines if "Traceback" in ln or " ERROR " in ln], server.lines


def test_server_restarted_while_qemu_runs(soak_image, workdir):
    """QEMU's vfio-user-pci does not reconnect: a server started again on the
    same sockets gets no client and no mappings; QEMU keeps running or fails,
    and the guest's DMA does not go on. (The launcher's one line about it is
    tested in test_qemu_launcher.)"""
    first = Server(workdir)
    qemu = Qemu(soak_image, first.sockets, workdir)
    second = None
    try:
        assert qemu.wait_for("soak: ", 180), qemu.text()[-2000:]
        assert first.mappings() > 0
        first.proc.kill()
        first.proc.wait(10)
        second = Server(workdir)  # removes the stale sockets, listens again
        baseline = second.fds()
        time.sleep(5)
        assert second.mappings() == 0, "QEMU reconnected and mapped guest RAM again"
        assert eventually(lambda: second.fds() == baseline, 5), (  # the control call's fd closes
            f"a client connected to the restarted server: {second.fd_targets()}")
        assert "copies verified" not in qemu.text()
        for sock in second.sockets:  # the restarted server serves new clients
            assert asyncio.run(_clean_device(sock)) == VUSER_VENDOR_ID
    finally:
        qemu.kill()
        first.stop()  # killed above, unless an assertion stopped the test first
        if second is not None:
            second.stop()
    assert second.proc.returncode == 0, "".join(second.lines)
