"""Where guest inputs live (the source tree) and where outputs go (the cache).

Inputs: ``guest-tests/`` (C sources of the guest tests) and ``images/`` (the
image recipe and the guest's ``/init``), beside the ``vuser`` package.
Outputs: the cache of ``vuser.debian`` (``$VUSER_CACHE``, else
``~/.cache/vuser/``), under ``guest/``; never the source tree.
"""

from __future__ import annotations

from pathlib import Path

from vuser import debian

__all__ = ["SOURCE_ROOT", "GUEST_TESTS", "IMAGES", "cache_root"]

SOURCE_ROOT = Path(__file__).resolve().parents[2]
GUEST_TESTS = SOURCE_ROOT / "guest-tests"
IMAGES = SOURCE_ROOT / "images"


def cache_root() -> Path:
    """Where guest images and built guest tests are cached (not created here)."""
    return debian.cache_root() / "guest"
