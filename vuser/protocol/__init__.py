"""The vfio-user protocol, sans-IO: no asyncio, no sockets (architecture.md §2).

- ``consts``: command numbers, header flags, limits.
- ``messages``: every request and reply as declared layouts; ``decode``/``encode``.
- ``caps``: VERSION capabilities and their negotiation.
- ``events``, ``state``, ``connection``: ``Connection(role)``, bytes+fds in,
  events out.
- ``server``: ``ServerCore``, requests validated and answered via a backend.
- ``backend``: the contract with devices (``ServerBackend``, ``DmaPort``).
"""
