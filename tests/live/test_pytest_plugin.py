"""The pytest plugin: registered through the pytest11 entry point, fixtures only
(this repository's collection is the same with and without it), usable from
another directory's tests; and examples/oot_dma passing with plain pytest."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from vuser.guest import paths

pytestmark = pytest.mark.timeout(900)
ROOT = paths.SOURCE_ROOT


def pytest_run(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def test_entry_point_names_the_fixtures_module():
    eps = [e for e in entry_points(group="pytest11") if e.name == "vuser"]
    assert [e.value for e in eps] == ["vuser.pytest_fixtures"]
    mod = eps[0].load()
    assert {"vuser_boot", "vuser_guest", "pytest_configure"} <= set(vars(mod))
    assert not [n for n in vars(mod) if n.startswith("pytest_collect")]


def test_this_repositorys_collection_does_not_change():
    args = ["--collect-only", "-q", "tests/test_wire.py", "tests/guest/test_guest_newc.py",
            "tests/guest/guest_tests.toml"]
    with_plugin = pytest_run(*args, cwd=ROOT, timeout=300)
    without = pytest_run(*args, "-p", "no:vuser", cwd=ROOT, timeout=300)
    assert with_plugin.returncode == 0, with_plugin.stdout[-2000:]
    items = [ln for ln in with_plugin.stdout.splitlines() if "::" in ln]
    assert len(items) > 10
    assert items == [ln for ln in without.stdout.splitlines() if "::" in ln]


def test_another_directory_uses_the_marker_and_fixture(tmp_path, qemu_bin):
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_mine.py").write_text(textwrap.dedent('''
        import pytest

        @pytest.mark.vuser(devices=["sample"], append="quiet")
        def test_guest(vuser_guest):
            assert vuser_guest.run("echo hi").out == "hi\\n"
            assert vuser_guest.control.faults()["total"] == 0
            assert " quiet" in vuser_guest.run("cat /proc/cmdline").out

        @pytest.mark.vuser("sample")
        def test_positional_marker_is_a_usage_error(vuser_guest):
            pass
    '''))
    p = pytest_run("-q", "-p", "no:cacheprovider", cwd=tmp_path)
    assert "1 passed, 1 error" in p.stdout, p.stdout[-3000:]
    assert "@pytest.mark.vuser takes keywords only" in p.stdout


def test_the_out_of_tree_example_passes_with_plain_pytest(qemu_bin):
    p = pytest_run("examples/oot_dma", "-q", "-p", "no:cacheprovider", cwd=ROOT)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    assert "1 passed" in p.stdout
