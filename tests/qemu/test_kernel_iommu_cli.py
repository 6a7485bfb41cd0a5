"""``vuser run --kernel-iommu``: a shell whose kernel owns vuser-iommu, the
kernel-owned programs, and the one-line refusals."""

from __future__ import annotations

import os
import pty
import re
import sys
import time

import pytest

from vuser.errors import UserError

from qemu_helpers import exit_shell, kill_shell, read_until, run_vuser

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def image_ready(qemu_bin):
    from vuser.guest.image import build_image

    try:
        build_image(progress=False)
    except UserError as e:
        if not str(e).startswith("apt-get update"):
            raise
        pytest.skip(f"prerequisite missing: the Debian archive, to build the guest image: {e}")


# One line per IOMMU group: "group N <devices> <type>", then the DMAR's lines.
SHELL_PROBE = (b"for g in /sys/kernel/iommu_groups/*; do echo group ${g##*/} $(ls $g/devices) "
               b"$(cat $g/type); done; dmesg | grep -E 'DMAR: dmar0|DMAR: Intel' ; "
               b"cat /sys/bus/pci/devices/0000:02:00.0/device; echo probe-done\r")


def test_kernel_iommu_shell_shows_dmar0_and_the_vuser_dma_in_a_group(image_ready):
    pid, fd = pty.fork()
    if pid == 0:  # the child: vuser run --kernel-iommu --shell on a terminal
        os.execv(sys.executable, [sys.executable, "-m", "vuser", "run", "--kernel-iommu",
                                  "--shell"])
    buf = bytearray()
    try:
        assert read_until(fd, b"exit the shell to power off", 150, buf), \
            buf[-3000:].decode(errors="replace")
        time.sleep(1.0)  # let the shell start and print its prompt
        os.write(fd, SHELL_PROBE)
        assert read_until(fd, b"\nprobe-done", 60, buf), buf[-3000:].decode(errors="replace")
        text = buf.decode(errors="replace").replace("\r\n", "\n")
        # The launcher said where the unit is, and the kernel found it there.
        base = re.search(r"kernel-owned vIOMMU: register base 0x([0-9a-f]+) ", text)
        assert base, text[-3000:]
        assert re.search(rf"DMAR: dmar0: reg_base_addr {base.group(1)} ", text), text[-3000:]
        assert "DMAR: Intel(R) Virtualization Technology for Directed I/O" in text
        # vuser-dma (device 0x0002) at 02:00.0, in a DMA-API IOMMU group.
        assert re.search(r"^group \d+ 0000:02:00\.0 DMA(-FQ)?$", text, re.M), text[-3000:]
        assert re.search(r"^0x0002$", text, re.M)
    except BaseException:
        kill_shell(fd, pid)
        raise
    exit_shell(fd, pid, buf)


def test_run_kernel_iommu_runs_the_kernel_owned_program(image_ready):
    p = run_vuser("run", "-q", "--kernel-iommu", "--test", "kernel_iommu", timeout=240)
    assert p.returncode == 0, p.stderr[-3000:]
    assert re.search(r"devices: vuser-iommu, vuser-dma, kernel-owned vIOMMU; tests: kernel_iommu",
                     p.stderr)
    assert re.search(r"vuser: kernel-owned vIOMMU: register base 0x[0-9a-f]+ \((cached probe|"
                     r"firmware probe [\d.]+ s)\); vuser-iommu at 01:00\.0, vuser-dma at 02:00\.0",
                     p.stderr), p.stderr
    assert re.search(r"^  pass       kernel_iommu  \d+ cases passed$", p.stdout, re.M), p.stdout


@pytest.mark.parametrize("argv, message", [
    (("--kernel-iommu", "--test", "dma_nested"),
     'dma_nested runs with a userspace-owned vIOMMU (iommu = "user" in guest_tests.toml); '
     "--kernel-iommu boots only kernel-owned guests"),
    (("--kernel-iommu", "--device", "sample", "--device", "vuser-dma", "--test", "kernel_iommu"),
     "a kernel-owned vIOMMU needs exactly one vuser-iommu among the devices, not none "
     "(sample, vuser-dma)"),
])
def test_kernel_iommu_refusals_are_one_line(image_ready, argv, message):
    p = run_vuser("run", "-q", *argv, timeout=120)
    assert p.returncode == 1
    assert p.stderr.strip().splitlines()[-1] == f"vuser: error: {message}"
