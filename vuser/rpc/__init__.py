"""Host-side control: msgpack-RPC over a UNIX socket (docs/architecture.md "Control").

- ``codec``: sans-IO framing (requests, responses, notifications, limits);
- ``service``: the methods (the model's uAPI, views, subscriptions, tracing,
  fault injection); ``server``: the asyncio socket server;
- ``Client`` (asyncio) and ``SyncClient`` (scripts);
- ``tracing``: the trace file format, reader and summary; ``plot``: PNGs.
"""

from .client import Client, ConnectionClosed, NoServer, RpcCallError, SyncClient
from .server import ControlServer
from .service import Service

__all__ = ["Client", "ConnectionClosed", "ControlServer", "NoServer", "RpcCallError",
           "Service", "SyncClient"]
