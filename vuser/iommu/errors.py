"""``IommufdError``: an iommufd command failed with an errno.

It is a ``RemoteProtocolError``: the caller (the control RPC, or a device model
acting for the guest) sent something invalid; the model's state is unchanged
and the errno goes back in the reply (include/uapi/linux/iommufd.h; docs/iommufd-fidelity.md).
"""

from __future__ import annotations

import errno as _errno

from vuser.errors import RemoteProtocolError


class IommufdError(RemoteProtocolError):
    """An iommufd command failed; ``errno`` is what the ioctl would return.

    ``processed`` is set by commands that handle arrays (HWPT_INVALIDATE):
    the number of entries handled before the failing one.
    """

    def __init__(self, err: int, msg: str = "", *, processed: int | None = None) -> None:
        super().__init__(err, msg)
        self.processed = processed


def fail(err: int, msg: str = "") -> IommufdError:
    """Build an ``IommufdError`` (``raise fail(errno.EINVAL, "why")``)."""
    return IommufdError(err, msg or _errno.errorcode.get(err, str(err)))
