"""An overlay reaches a real guest: the run's own file replaces nothing in the cached image."""

from __future__ import annotations

import pytest

from vuser.guest.overlay import Overlay
from vuser.qemu.launcher import launch

pytestmark = [pytest.mark.guest, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def image(qemu_bin):
    from vuser.errors import UserError
    from vuser.guest.image import build_image
    try:
        return build_image(tests=["environment"], progress=False)
    except UserError as e:
        if not str(e).startswith("apt-get update"):
            raise
        pytest.skip(f"prerequisite missing: the Debian archive, to build the guest image: {e}")


def test_a_file_from_an_overlay_runs_in_the_guest_and_the_image_is_untouched(image, qemu_bin):
    before = image.initrd.read_bytes()
    o = Overlay()
    o.add_file("tests/overlay_probe", b"#!/bin/sh\necho \"overlay probe on $(uname -r)\"\nexit 0\n",
               0o755)
    r = launch(image, devices=[], timeout=120, qemu=qemu_bin,
               kernel_args=["vuser.tests=overlay_probe"], overlays=[o])
    assert f"overlay probe on {image.kernel_release}" in r.console, r.console_tail()
    assert "ok 1 overlay_probe" in r.console
    assert r.exit_status == 0
    assert image.initrd.read_bytes() == before
