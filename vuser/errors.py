"""The two error kinds of the sans-IO discipline (h11/wsproto style).

``RemoteProtocolError``: the peer (QEMU, a client, a guest through a device)
sent something invalid. It carries the positive errno that goes back in the
error reply; the connection keeps serving.

``LocalProtocolError``: our own code misused an API. It is a bug, never sent.
"""

from __future__ import annotations

import errno as _errno


class LocalProtocolError(Exception):
    """We misused the protocol or an API: a bug on our side."""


class RemoteProtocolError(Exception):
    """The peer's message is invalid; reply with ``self.errno``."""

    def __init__(self, err: int, msg: str = "") -> None:
        if err <= 0:
            raise LocalProtocolError(f"errno must be positive, not {err}")
        self.errno = err
        self.msg = msg or _errno.errorcode.get(err, str(err))
        super().__init__(f"{_errno.errorcode.get(err, err)}: {self.msg}")


class UserError(Exception):
    """Bad input or a missing prerequisite on the user's side.

    The CLI prints it as one line (``vuser: error: ...``) and exits 1; no
    traceback.
    """
