"""Synchronous QMP calls through ``qemu.qmp``, safe to make from any thread.

``qemu.qmp`` is asyncio-based, and its legacy wrapper drives the calling
thread's event loop, which fails when a loop is already running there (pytest-
asyncio, the server). Each call here runs in a fresh thread with its own loop.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class QmpError(Exception):
    """QMP did not answer: no socket, refused, timed out, or an error reply."""


async def _call(path: Path, commands: list[tuple[str, dict[str, Any]]], timeout: float) -> list[Any]:
    from qemu.qmp import QMPClient

    client = QMPClient("vuser")
    results = []
    try:
        await asyncio.wait_for(client.connect(str(path)), timeout)
        for name, args in commands:
            try:
                results.append(await asyncio.wait_for(client.execute(name, args or None), timeout))
            except EOFError:  # 'quit' closes the socket before or after replying
                results.append(None)
                break
    finally:
        try:
            await asyncio.wait_for(client.disconnect(), timeout)
        except Exception:  # noqa: BLE001 - already disconnected or gone; nothing to keep
            pass
    return results


def call(path: Path, *commands: str | tuple[str, dict[str, Any]], timeout: float = 3.0) -> list[Any]:
    """Run QMP ``commands`` in order; returns their results. Raises ``QmpError``."""
    cmds = [(c, {}) if isinstance(c, str) else c for c in commands]
    box: dict[str, Any] = {}

    def worker() -> None:
        try:
            box["ok"] = asyncio.run(_call(path, cmds, timeout))
        except BaseException as e:  # noqa: BLE001 - handed to the caller below
            box["err"] = e

    t = threading.Thread(target=worker, name="vuser-qmp", daemon=True)
    t.start()
    t.join(timeout * (len(cmds) + 2))
    if t.is_alive():
        raise QmpError(f"QMP on {path} did not answer within {timeout:.0f} s")
    if "err" in box:
        e = box["err"]
        raise QmpError(f"QMP on {path}: {type(e).__name__}: {e}") from e
    return box["ok"]
