"""Fixtures for the QEMU provisioning and launcher tests."""

from __future__ import annotations

import sys
import textwrap

import pytest

from vuser.qemu import miniguest
from vuser.qemu.launcher import Image


@pytest.fixture
def mini(tmp_path):
    """Factory of multiboot mini-guests: ``mini(text, exit_value_or_None)``."""
    def make(text: str = "", exit_value: int | None = None) -> Image:
        path = tmp_path / f"mini-{exit_value}-{abs(hash(text))}.bin"
        return Image(miniguest.write(path, text, exit_value))
    return make


@pytest.fixture
def stub_server(tmp_path):
    """Factory of stub 'servers': python scripts taking ``--device TYPE@SOCK`` like ``vuser serve``.

    ``body`` runs after the sockets are bound and listening (``socks`` holds them).
    """
    def make(body: str) -> list[str]:
        script = tmp_path / f"stub-{abs(hash(body))}.py"
        script.write_text(textwrap.dedent("""\
            import os, socket, subprocess, sys, time
            socks = []
            args = sys.argv[1:]
            for i, a in enumerate(args):
                if a == "--device":
                    path = args[i + 1].split("@", 1)[1]
                    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    s.bind(path)
                    s.listen(4)
                    socks.append(s)
                    print("ready", path, flush=True)
        """) + textwrap.dedent(body))
        return [sys.executable, str(script)]
    return make
