"""``vuser run --test NAME``: the test's devices come from guest_tests.toml; one
guest per device list; its KTAP is printed. Boots QEMU (marked guest)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from vuser.errors import UserError

pytestmark = pytest.mark.guest


@pytest.fixture(scope="module")
def qemu_available():
    from vuser.qemu.find import find_qemu

    try:
        return find_qemu(show_progress=False)
    except UserError as e:
        pytest.skip(f"prerequisite missing: no QEMU with vfio-user-pci: {e}")


def vuser(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vuser", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_run_test_takes_its_devices_from_the_manifest(qemu_available):
    p = vuser("run", "--test", "dma_passthrough")
    assert p.returncode == 0, p.stderr[-2000:]
    assert "devices: vuser-dma; tests: dma_passthrough" in p.stderr
    # The guest's KTAP is on stdout, then the summary.
    assert "# Subtest: dma_passthrough" in p.stdout
    assert re.search(r"^\s+ok \d+ memcpy_sizes$", p.stdout, re.M)
    assert re.search(r"pass\s+dma_passthrough", p.stdout)


def test_tests_with_other_devices_boot_separately(qemu_available):
    p = vuser("run", "-q", "--test", "environment", "--test", "dma_passthrough")
    assert p.returncode == 0, p.stderr[-2000:]
    boots = re.findall(r"devices: ([^;]*); tests: (.*)", p.stderr)
    assert boots == [("none", "environment"), ("vuser-dma", "dma_passthrough")]


def test_a_hanging_guest_is_a_failure_with_its_console(qemu_available):
    p = vuser("run", "-q", "--test", "dma_nested", "--timeout", "2")
    assert p.returncode == 1
    err = p.stderr.strip().splitlines()
    assert err[-1].startswith("vuser: error: guest timed out after 2 s")
    assert "vuser: last console lines:" in err
