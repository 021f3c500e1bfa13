"""A pre-encoded JSON response for the hottest routes.

Litestar's ``Response`` builds a mutable header container, normalises and re-encodes every
header and looks up the serializer on each request. For a body the handler has already encoded
with msgspec and a fixed header set, that is most of a cached token request's cost (R1 in
``bench/``). ``JsonBody`` is the ASGI app Litestar would have produced: status, the same headers
(``content-type``, ``content-length``, plus the route's own), the same bytes. Middleware (CORS,
OpenTelemetry, the metrics hook) sees it like any other response.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final

from litestar.types import HTTPResponseBodyEvent, HTTPResponseStartEvent, Receive, Scope, Send

from broker.errors import AuthenticationError

RawHeaders = tuple[tuple[bytes, bytes], ...]
NO_STORE: Final = ((b"cache-control", b"no-store"),)


class JsonBody:
    """An ASGI app that sends ``body`` (already encoded JSON, of ``media_type``) with
    ``headers`` and ``status`` (204: no body, no content headers)."""

    __slots__ = ("body", "content_type", "headers", "status")

    def __init__(
        self,
        body: bytes,
        headers: RawHeaders = (),
        status: int = 200,
        *,
        media_type: bytes = b"application/json",
    ) -> None:
        self.body = body
        self.headers = headers
        self.status = status
        self.content_type = (b"content-type", media_type)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = (
            list(self.headers)  # RFC 9110: no Content-Length in a 204
            if self.status == 204
            else [
                self.content_type,
                (b"content-length", str(len(self.body)).encode()),
                *self.headers,
            ]
        )
        start: HTTPResponseStartEvent = {
            "type": "http.response.start",
            "status": self.status,
            "headers": headers,
        }
        await send(start)
        end: HTTPResponseBodyEvent = {
            "type": "http.response.body",
            "body": b"" if scope.get("method") == "HEAD" else self.body,
            "more_body": False,
        }
        await send(end)


def request_headers(scope: Scope, *names: bytes) -> list[str | None]:
    """The first value of each of ``names`` (lower-case) among the raw request headers, in one
    pass and without building Litestar's header container; ``None`` for an absent header.

    A second ``Authorization`` is refused (401): a proxy in front that reads the other one
    would see another user than the broker does."""
    found: list[str | None] = [None] * len(names)
    for name, value in scope["headers"]:
        if name in names:
            index = names.index(name)
            if found[index] is None:
                found[index] = value.decode("latin-1")
            elif name == b"authorization":
                raise AuthenticationError("duplicate_header")
    return found


WATCH_AFTER_SECONDS: Final = 0.05
"""How long a relayed stream runs before a task starts watching for the client leaving."""


def _never() -> bool:
    return False


class Relay:
    """An ASGI app that passes an upstream answer through as its chunks arrive.

    Every ``send`` of the response is a socket write, and on loopback R4 in ``bench/`` measured
    the writes as the largest share of a proxied call. So the relay never waits to save one,
    but uses what it already knows: an answer that has wholly ``arrived`` before the relay
    starts goes out in one piece with a ``Content-Length``; in a stream, a chunk after which
    the answer is ``drained`` carries the end of the response with it.

    A stream still open after ``watch_after`` seconds gets one plain task that waits for the
    client's ``http.disconnect``; if that comes first it cancels the relay, which then closes
    the upstream answer, so an abandoned event stream does not hold an upstream connection. A
    typical MCP answer (head, one event, end) is over long before that, and pays a timer instead
    of a task. (Litestar's ``Stream`` runs every response in an anyio task group with a listener
    task, a measured cost too.) ``close`` always runs.
    """

    __slots__ = ("arrived", "chunks", "close", "drained", "headers", "status", "watch_after")

    def __init__(
        self,
        status: int,
        headers: list[tuple[bytes, bytes]],
        chunks: AsyncIterator[bytes],
        close: Callable[[], Awaitable[None]],
        *,
        arrived: Callable[[], bool] = _never,
        drained: Callable[[], bool] = _never,
        watch_after: float = WATCH_AFTER_SECONDS,
    ) -> None:
        self.status = status
        self.headers = headers
        self.chunks = chunks
        self.close = close
        self.arrived = arrived
        self.drained = drained
        self.watch_after = watch_after

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            if self.arrived():
                await self._whole(send)
            else:
                await self._stream(receive, send)
        finally:
            await self.close()

    async def _whole(self, send: Send) -> None:
        body = b"".join([chunk async for chunk in self.chunks])  # all here: nothing waits
        start: HTTPResponseStartEvent = {
            "type": "http.response.start",
            "status": self.status,
            "headers": [*self.headers, (b"content-length", str(len(body)).encode())],
        }
        await send(start)
        end: HTTPResponseBodyEvent = {
            "type": "http.response.body",
            "body": body,
            "more_body": False,
        }
        await send(end)

    async def _stream(self, receive: Receive, send: Send) -> None:
        relay = asyncio.current_task()
        sending = True  # no cancelling once the answer is complete
        gone: asyncio.Future[Any] | None = None

        def on_message(message: asyncio.Future[Any]) -> None:
            if sending and relay is not None and _is_disconnect(message):
                relay.cancel()

        def watch() -> None:
            nonlocal gone
            gone = asyncio.ensure_future(receive())
            gone.add_done_callback(on_message)

        watcher = asyncio.get_running_loop().call_later(self.watch_after, watch)
        try:
            start: HTTPResponseStartEvent = {
                "type": "http.response.start",
                "status": self.status,
                "headers": self.headers,
            }
            await send(start)
            last = False
            async for chunk in self.chunks:  # after the drained chunk, this ends at once
                last = self.drained()
                if chunk or last:
                    part: HTTPResponseBodyEvent = {
                        "type": "http.response.body",
                        "body": chunk,
                        "more_body": not last,
                    }
                    await send(part)
            if not last:
                end: HTTPResponseBodyEvent = {
                    "type": "http.response.body",
                    "body": b"",
                    "more_body": False,
                }
                await send(end)
            sending = False
        except asyncio.CancelledError:
            if relay is None or gone is None or not _is_disconnect(gone):
                raise  # not the client leaving: shutdown or a timeout above us
            relay.uncancel()  # the client left; nothing more to send anywhere
        finally:
            sending = False
            watcher.cancel()
            if gone is not None:
                gone.remove_done_callback(on_message)
                gone.cancel()


def _is_disconnect(message: asyncio.Future[Any]) -> bool:
    """The watcher's ``receive()`` has finished with ``http.disconnect``."""
    return (
        message.done()
        and not message.cancelled()
        and message.exception() is None
        and message.result().get("type") == "http.disconnect"
    )
