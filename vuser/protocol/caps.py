"""VERSION capabilities: parse a peer's JSON, build ours, negotiate the reply.

Spec "VFIO_USER_VERSION"; QEMU 11 checks (``hw/vfio-user/proxy.c``): the reply
must have major 0 and minor 0, must not be larger than QEMU's request, and may
omit the JSON entirely (size 20: defaults). The reply's capabilities must be a
subset of those proposed, so ``write_multiple`` is offered only back to a
client that proposed it. Unknown keys are ignored (QEMU only warns), and so is
``twin_socket``: we never enable it (QEMU 11 has none), so replies carry no fd.

A peer's numbers say what *it* can take, so they are accepted as far as they
make sense (docs/vfio-user-acceptance.md, "VERSION"): ``max_msg_fds`` up to
libvfio-user's 1024 (libvfio-user's own client proposes 32), and any
``max_data_xfer_size`` from 1; what we send is bounded by the smaller of
theirs and ours.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, replace
from typing import Any

from vuser.errors import RemoteProtocolError
from vuser.protocol.consts import (
    MAX_DATA_XFER_SIZE, MAX_DMA_MAPS, MAX_MSG_FDS, PGSIZE_4K,
    SPEC_DEF_MAX_FDS, VFIO_USER_MAJOR, VFIO_USER_MINOR,
)
from vuser.protocol.messages import Version, VfioUserVersion

#: The most fds a peer may say it receives per message (libvfio-user's
#: VFIO_USER_CLIENT_MAX_MSG_FDS_LIMIT); QEMU, as a client, proposes 16.
PEER_MAX_MSG_FDS_LIMIT = 1024
U64_MAX = (1 << 64) - 1


@dataclass(frozen=True)
class Capabilities:
    """One side's ``capabilities`` object (spec "Version" table).

    The defaults are what *we* offer. ``from_json`` fills absent keys with the
    spec's defaults instead, as a receiver must.
    """

    max_msg_fds: int = MAX_MSG_FDS
    max_data_xfer_size: int = MAX_DATA_XFER_SIZE
    max_dma_maps: int = MAX_DMA_MAPS
    pgsizes: int = PGSIZE_4K
    write_multiple: bool = True

    def to_json(self, keys: tuple[str, ...] | None = None) -> dict[str, Any]:
        """The top-level VERSION JSON object, limited to ``keys`` if given."""
        caps = {k: getattr(self, k) for k in _KEYS_BY_PRIORITY
                if keys is None or k in keys}
        if not self.write_multiple:
            caps.pop("write_multiple", None)
        return {"capabilities": caps}

    @classmethod
    def from_json(cls, obj: dict[str, Any] | None) -> Capabilities:
        """A peer's capabilities; ``RemoteProtocolError(EINVAL)`` on bad values."""
        caps = {} if obj is None else obj.get("capabilities", {})
        if not isinstance(caps, dict):
            raise RemoteProtocolError(errno.EINVAL, "capabilities is not an object")

        def number(key: str, default: int, lo: int, hi: int) -> int:
            v = caps.get(key, default)
            if type(v) is not int or not lo <= v <= hi:
                raise RemoteProtocolError(errno.EINVAL, f"bad {key}: {v!r}")
            return v

        pgsizes = number("pgsizes", PGSIZE_4K, 1, (1 << 64) - 1)
        if not pgsizes & PGSIZE_4K or pgsizes % PGSIZE_4K:
            raise RemoteProtocolError(errno.EINVAL, f"pgsizes {pgsizes:#x} lacks 4 KiB pages")
        write_multiple = caps.get("write_multiple", False)
        if not isinstance(write_multiple, bool):
            raise RemoteProtocolError(errno.EINVAL, f"bad write_multiple: {write_multiple!r}")
        return cls(
            max_msg_fds=number("max_msg_fds", SPEC_DEF_MAX_FDS, 0, PEER_MAX_MSG_FDS_LIMIT),
            max_data_xfer_size=number("max_data_xfer_size", MAX_DATA_XFER_SIZE, 1, U64_MAX),
            max_dma_maps=number("max_dma_maps", MAX_DMA_MAPS, 1, 1 << 32),
            pgsizes=pgsizes,
            write_multiple=write_multiple,
        )


#: Reply keys, most important first: the ones dropped first when the reply
#: must shrink to fit the request are at the end.
_KEYS_BY_PRIORITY = ("max_msg_fds", "max_data_xfer_size", "write_multiple",
                     "max_dma_maps", "pgsizes")


def negotiate(own: Capabilities, request: Version, request_payload_size: int,
              ) -> tuple[Version, Capabilities, Capabilities]:
    """Answer a client's VERSION request.

    Returns ``(reply, peer, advertised)``: the reply body, the client's parsed
    capabilities and what the reply actually tells the client (the reply must
    fit in ``request_payload_size`` bytes, QEMU's receive buffer, so keys are
    dropped from the end of ``_KEYS_BY_PRIORITY`` until it does; a client
    that sees none assumes the spec defaults).
    Raises ``RemoteProtocolError(EINVAL)`` for another major or bad capabilities.
    """
    if request.major != VFIO_USER_MAJOR:
        raise RemoteProtocolError(errno.EINVAL, f"unsupported major version {request.major}")
    peer = Capabilities.from_json(request.caps)
    ours = replace(own, write_multiple=own.write_multiple and peer.write_multiple)
    keys = list(_KEYS_BY_PRIORITY)
    while keys:
        reply = Version(VFIO_USER_MAJOR, VFIO_USER_MINOR, ours.to_json(tuple(keys)))
        if len(reply.encode()) <= request_payload_size:
            return reply, peer, Capabilities.from_json(reply.caps)
        keys.pop()
    assert VfioUserVersion.SIZE <= request_payload_size  # decode guaranteed it
    return Version(VFIO_USER_MAJOR, VFIO_USER_MINOR, None), peer, Capabilities.from_json(None)
