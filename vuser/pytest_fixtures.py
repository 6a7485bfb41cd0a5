"""pytest fixtures for live vuser guests, for any repository that installs vuser.

Registered as a pytest plugin through the ``pytest11`` entry point (see
docs/python-api.md "pytest"). It only adds fixtures and the ``vuser``
marker; it collects nothing and changes no collection.

- ``vuser_boot``: a factory, ``vuser_boot(**kw)`` is ``vuser.live.boot(**kw)``
  and the guest is closed after the test;
- ``vuser_guest``: one booted guest, configured by the test's nearest
  ``@pytest.mark.vuser(...)`` (the keywords of ``boot()``), e.g.::

      @pytest.mark.vuser(devices=["vuser-iommu", "vuser-dma"], kernel_iommu=True,
                         shares=[str(HERE)])
      def test_driver(vuser_guest):
          assert vuser_guest.run("insmod ...").ok
          assert vuser_guest.control.faults()["total"] == 0

Without a marker the guest has one ``sample`` device. Tests skip when no QEMU
with vfio-user-pci can be found or provisioned, or there is no host gcc to
build the guest agent, and say which; every other problem is an error.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from typing import Any

import pytest

MARKER = "vuser"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{MARKER}(**boot_kwargs): the vuser_guest fixture's guest, as "
                   "vuser.live.boot(**boot_kwargs) (devices, kernel_iommu, kernel, shares, ...)")


def _prerequisites() -> None:
    from vuser.errors import UserError
    from vuser.qemu.find import find_qemu

    if not shutil.which("gcc"):
        pytest.skip("vuser: no host gcc to build the guest agent (apt-get install gcc libc6-dev)")
    try:
        find_qemu(show_progress=False)
    except UserError as e:
        pytest.skip(f"vuser: no usable QEMU: {e}")


@pytest.fixture
def vuser_boot() -> Iterator[Callable[..., Any]]:
    """``vuser_boot(**kw)``: a live guest (``vuser.live.boot``), closed after the test."""
    from vuser.live import boot

    guests: list[Any] = []

    def factory(*args: Any, **kw: Any) -> Any:
        _prerequisites()
        g = boot(*args, **kw)
        guests.append(g)
        return g

    yield factory
    for g in reversed(guests):
        g.close()


@pytest.fixture
def vuser_guest(request: pytest.FixtureRequest, vuser_boot: Callable[..., Any]) -> Any:
    """A live guest configured by the nearest ``@pytest.mark.vuser(...)``."""
    marker = request.node.get_closest_marker(MARKER)
    kw = dict(marker.kwargs) if marker else {}
    if marker and marker.args:
        raise pytest.UsageError("@pytest.mark.vuser takes keywords only (those of "
                                "vuser.live.boot), e.g. devices=[\"sample\"]")
    return vuser_boot(**kw)
