"""Live guests (``vuser.live``), ``vuser run --exec/--share`` and the pytest plugin."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def image(qemu_bin):
    """The default guest image (built from cached packages if the sources changed)."""
    from vuser.guest.image import build_image

    return build_image(progress=False)
