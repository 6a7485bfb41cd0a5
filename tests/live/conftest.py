"""Live guests (``vuser.live``), ``vuser run --exec/--share`` and the pytest plugin."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def qemu_bin():
    """The QEMU the project uses (provisioned by ``make test`` before pytest runs)."""
    from vuser.errors import UserError
    from vuser.qemu.find import find_qemu

    env = {k: os.environ.pop(k) for k in ("VUSER_QEMU", "VUSER_NO_PROVISION") if k in os.environ}
    try:
        return find_qemu(show_progress=False)
    except UserError as e:
        pytest.skip(f"prerequisite missing: no QEMU with vfio-user-pci and cannot provision one: {e}")
    finally:
        os.environ.update(env)


@pytest.fixture(scope="session")
def image(qemu_bin):
    """The default guest image (built from cached packages if the sources changed)."""
    from vuser.guest.image import build_image

    return build_image(progress=False)
