"""Python clients of the control socket: ``Client`` (asyncio) and ``SyncClient``.

    async with await Client.connect(path) as c:
        ioas = await c.call("ioas_alloc")
        await c.ioas_map(ioas, None, 1 << 20, iova=0)     # any method, by name
        await c.subscribe(["fault"])
        topic, payload = await c.next_notification()

    with SyncClient(path) as c:                           # scripts
        print(c.stats())

A failed call raises ``RpcCallError`` (an ``OSError`` with the errno and the
server's message; ``errno_name`` is e.g. "ENOENT"). Mixing positional and
named arguments works: the client learns parameter names from
``rpc_methods`` once. Connecting to a path where nothing listens raises
``NoServer``.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
from collections.abc import Callable
from typing import Any

from .codec import (
    Decoder, Limits, Notification, Response, StreamError, encode_request,
)

#: What a server may send us: results of any size the server allows.
CLIENT_LIMITS = Limits(max_map=1 << 20, max_items=1 << 24, max_buffer=128 << 20)


class NoServer(OSError):
    """Nothing listens on the control socket path."""

    def __init__(self, path: str, why: str) -> None:
        super().__init__(errno.ECONNREFUSED, f"no server at {path} ({why})")
        self.path = path


class RpcCallError(OSError):
    """The server answered a call with an error."""

    def __init__(self, method: str, error: Any) -> None:
        if isinstance(error, dict):
            code = error.get("code") if isinstance(error.get("code"), int) else errno.EIO
            name = str(error.get("errno", errno.errorcode.get(code, "?")))
            msg = str(error.get("message", ""))
            self.extra = {k: v for k, v in error.items() if k not in ("code", "errno", "message")}
        else:
            code, name, msg, self.extra = errno.EIO, "EIO", repr(error), {}
        super().__init__(code, f"{method}: {name}: {msg}")
        self.method, self.errno_name, self.message = method, name, msg


class ConnectionClosed(ConnectionError):
    """The server closed the connection."""


class Client:
    """An asyncio control client. Any server method is ``await client.NAME(...)``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                 path: str = "", max_notifications: int = 100_000) -> None:
        self.path = path
        self._reader, self._writer = reader, writer
        self._decoder = Decoder(CLIENT_LIMITS)
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[str, asyncio.Future[Any]]] = {}
        self._notes: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(max_notifications)
        self.dropped_notifications = 0
        self.on_notification: Callable[[str, Any], None] | None = None
        self._params: dict[str, list[str]] | None = None
        self._closed: BaseException | None = None
        self._task = asyncio.get_running_loop().create_task(self._read_loop())

    @classmethod
    async def connect(cls, path: str, **kw: Any) -> Client:
        try:
            reader, writer = await asyncio.open_unix_connection(path, limit=1 << 20)
        except FileNotFoundError:
            raise NoServer(path, "no such socket") from None
        except ConnectionRefusedError:
            raise NoServer(path, "connection refused") from None
        except PermissionError:
            raise NoServer(path, "permission denied") from None
        except OSError as e:
            raise NoServer(path, e.strerror or str(e)) from None
        return cls(reader, writer, path=path, **kw)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def close(self) -> None:
        self._task.cancel()
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except (ConnectionError, OSError):
            pass
        self._fail(ConnectionClosed("client closed"))

    # -- calls ---------------------------------------------------------------------
    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call ``method``; positional, named, or both (names looked up once)."""
        if args and kwargs:
            names = await self._param_names(method)
            if len(args) > len(names):
                raise TypeError(f"{method} takes at most {len(names)} arguments")
            params: list[Any] | dict[str, Any] = dict(zip(names, args))
            dup = set(params) & set(kwargs)
            if dup:
                raise TypeError(f"{method}: {sorted(dup)} given twice")
            params.update(kwargs)  # type: ignore[union-attr]
        else:
            params = dict(kwargs) if kwargs else list(args)
        return await self.call_raw(method, params)

    async def call_raw(self, method: str, params: list[Any] | dict[str, Any]) -> Any:
        if self._closed is not None:
            raise ConnectionClosed(f"connection closed: {self._closed}")
        rid = next(self._ids) & 0xFFFFFFFF
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[rid] = (method, fut)
        try:
            self._writer.write(encode_request(rid, method, params))
            await self._writer.drain()
        except (ConnectionError, OSError) as e:
            self._pending.pop(rid, None)
            raise ConnectionClosed(str(e)) from None
        return await fut

    async def _param_names(self, method: str) -> list[str]:
        if self._params is None:
            self._params = {m["name"]: [p["name"] for p in m["params"]]
                            for m in await self.call_raw("rpc_methods", [])}
        if method not in self._params:
            raise RpcCallError(method, {"code": errno.ENOSYS, "errno": "ENOSYS",
                                        "message": f"no method {method!r}"})
        return self._params[method]

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("_"):
            raise AttributeError(name)

        async def method(*args: Any, **kwargs: Any) -> Any:
            return await self.call(name, *args, **kwargs)
        method.__name__ = name
        return method

    # -- notifications -----------------------------------------------------------------
    async def next_notification(self, timeout: float | None = None) -> tuple[str, Any]:
        """The next ``(topic, payload)``; ``asyncio.TimeoutError`` after ``timeout``."""
        if self._closed is not None and self._notes.empty():
            raise ConnectionClosed(f"connection closed: {self._closed}")
        return await asyncio.wait_for(self._notes.get(), timeout)

    # -- the reader --------------------------------------------------------------------
    async def _read_loop(self) -> None:
        try:
            while True:
                data = await self._reader.read(1 << 16)
                if not data:
                    raise ConnectionClosed("server closed the connection")
                for ev in self._decoder.feed(data):
                    if isinstance(ev, Response):
                        self._on_response(ev)
                    elif isinstance(ev, Notification):
                        self._on_notification(ev)
        except asyncio.CancelledError:
            raise
        except StreamError as e:
            self._fail(ConnectionClosed(f"undecodable data from the server: {e.msg}"))
        except (ConnectionError, OSError) as e:
            self._fail(e if isinstance(e, ConnectionClosed) else ConnectionClosed(str(e)))

    def _on_response(self, ev: Response) -> None:
        if ev.id is None:  # the server gave up on our stream
            self._fail(RpcCallError("(stream)", ev.error))
            return
        entry = self._pending.pop(ev.id, None)
        if entry is None:
            return
        method, fut = entry
        if fut.done():
            return
        if ev.error is not None:
            fut.set_exception(RpcCallError(method, ev.error))
        else:
            fut.set_result(ev.result)

    def _on_notification(self, ev: Notification) -> None:
        if self.on_notification is not None:
            self.on_notification(ev.method, ev.params)
            return
        try:
            self._notes.put_nowait((ev.method, ev.params))
        except asyncio.QueueFull:
            self.dropped_notifications += 1

    def _fail(self, exc: BaseException) -> None:
        if self._closed is None:
            self._closed = exc
        for _m, fut in self._pending.values():
            if not fut.done():
                fut.set_exception(exc)
        self._pending.clear()


class SyncClient:
    """A blocking wrapper for scripts: ``SyncClient(path).stats()``.

    It runs its own event loop; notifications are received while a call or
    ``next_notification`` runs.
    """

    def __init__(self, path: str) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            self._client: Client = self._loop.run_until_complete(Client.connect(path))
        except BaseException:
            self._loop.close()
            raise

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._loop.run_until_complete(self._client.call(method, *args, **kwargs))

    def next_notification(self, timeout: float | None = None) -> tuple[str, Any]:
        return self._loop.run_until_complete(self._client.next_notification(timeout))

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("_"):
            raise AttributeError(name)

        def method(*args: Any, **kwargs: Any) -> Any:
            return self.call(name, *args, **kwargs)
        method.__name__ = name
        return method

    def close(self) -> None:
        if not self._loop.is_closed():
            self._loop.run_until_complete(self._client.close())
            self._loop.close()

    def __del__(self) -> None:
        # ``SyncClient(path).stats()`` drops the client at once: close its
        # connection and loop then, not as a pending task at interpreter exit
        loop = getattr(self, "_loop", None)
        if loop is not None and not loop.is_closed() and not loop.is_running():
            self.close()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
