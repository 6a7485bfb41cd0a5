"""The vfio-user protocol, sans-IO: no asyncio, no sockets (docs/architecture.md, "Layers").

- ``consts``: command numbers, header flags, limits.
- ``messages``: every request and reply as declared layouts; ``decode``/``encode``.
- ``caps``: VERSION capabilities and their negotiation.
- ``events``, ``state``, ``connection``: ``Connection(role)``, bytes+fds in,
  events out.
- ``server``: ``ServerCore``, requests validated and answered via a backend.

The contract with devices (``ServerBackend``, ``DmaPort``, ``DmaError``) is
``vuser.backend``, which this package and the devices both import.
"""
