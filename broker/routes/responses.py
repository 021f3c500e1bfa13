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
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final

from litestar.types import HTTPResponseBodyEvent, HTTPResponseStartEvent, Receive, Scope, Send

from broker.errors import AuthenticationError

logger = logging.getLogger(__name__)
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


DRAIN_SECONDS: Final = 0.5
"""After the client's answer has ended early (``ends``), how long the relay waits for the
upstream answer's own end before dropping its connection instead of pooling it."""
WATCH_AFTER_SECONDS: Final = 0.05
"""How long a request waits on Smithery, or a relayed stream runs, before a task starts watching
for the client leaving."""


class DisconnectWatch:
    """Cancels the task that made it when the client disconnects, once ``after`` seconds have
    passed: only then does a task start waiting on ``receive()`` for ``http.disconnect`` (the
    request body must have been read). A quick exchange pays for a timer, not a task.

    The proxy makes one before it waits for Smithery's answer and hands it to the ``Relay``, so
    a client that leaves while Smithery thinks (up to the MCP timeout) or streams frees the
    upstream connection at once. ``stop`` it when the answer is complete.
    """

    __slots__ = ("_gone", "_receive", "_task", "_timer", "active")

    def __init__(self, receive: Receive, after: float = WATCH_AFTER_SECONDS) -> None:
        self._receive = receive
        self._task = asyncio.current_task()
        self._gone: asyncio.Future[Any] | None = None
        self._timer = asyncio.get_running_loop().call_later(after, self._watch)
        self.active = True

    def _watch(self) -> None:
        self._gone = asyncio.ensure_future(self._receive())
        self._gone.add_done_callback(self._on_message)

    def _on_message(self, message: asyncio.Future[Any]) -> None:
        if self.active and self._task is not None and _is_disconnect(message):
            self._task.cancel()

    @property
    def client_left(self) -> bool:
        """The client disconnected (a cancellation of the task came from this watch)."""
        return self._gone is not None and _is_disconnect(self._gone)

    def forgive(self) -> bool:
        """After a ``CancelledError``: True, and the cancellation undone, when it came from the
        client leaving; False when it came from elsewhere (shutdown, a timeout above) and must
        go on."""
        if self._task is None or not self.client_left:
            return False
        self._task.uncancel()
        return True

    def stop(self) -> None:
        """No more cancelling (the answer is complete, or the request over)."""
        self.active = False
        self._timer.cancel()
        if self._gone is not None:
            self._gone.remove_done_callback(self._on_message)
            self._gone.cancel()


def _never() -> bool:
    return False


class Relay:
    """An ASGI app that passes an upstream answer through as its chunks arrive.

    Every ``send`` of the response is a socket write, and on loopback R4 in ``bench/`` measured
    the writes as the largest share of a proxied call. So the relay never waits to save one,
    but uses what it already knows: an answer that has wholly ``arrived`` before the relay
    starts goes out in one piece with a ``Content-Length``; in a stream, a chunk after which
    the answer is ``drained`` carries the end of the response with it.

    ``ends``, when given, is told each chunk of a stream and says whether the client's answer
    is complete after it (the JSON-RPC response of an MCP event stream, ``broker.sse``): that
    chunk then carries the end of the response, ``answered`` is called (the proxy frees the
    user's place among MCP calls in progress), and the rest of the upstream answer is read
    (``DRAIN_SECONDS`` at most) and dropped, so its connection can be pooled.

    A stream is watched for the client leaving (``DisconnectWatch``, the caller's ``watch`` or
    one started after ``watch_after`` seconds); if it leaves, the relay is cancelled and closes
    the upstream answer, so an abandoned event stream does not hold an upstream connection. A
    typical MCP answer (head, one event, end) is over long before the watch starts, and pays a
    timer instead of a task. (Litestar's ``Stream`` runs every response in an anyio task group
    with a listener task, a measured cost too.) ``close`` always runs, and so does ``watch.stop``.
    """

    __slots__ = (
        "answered",
        "arrived",
        "chunks",
        "close",
        "drained",
        "ends",
        "headers",
        "status",
        "watch",
        "watch_after",
    )

    def __init__(
        self,
        status: int,
        headers: list[tuple[bytes, bytes]],
        chunks: AsyncIterator[bytes],
        close: Callable[[], Awaitable[None]],
        *,
        arrived: Callable[[], bool] = _never,
        drained: Callable[[], bool] = _never,
        ends: Callable[[bytes], bool] | None = None,
        answered: Callable[[], None] | None = None,
        watch: DisconnectWatch | None = None,
        watch_after: float = WATCH_AFTER_SECONDS,
    ) -> None:
        self.status = status
        self.headers = headers
        self.chunks = chunks
        self.close = close
        self.arrived = arrived
        self.drained = drained
        self.ends = ends
        self.answered = answered
        self.watch = watch
        self.watch_after = watch_after

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            if self.arrived():
                if self.watch is not None:
                    self.watch.stop()
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
        watch = self.watch or DisconnectWatch(receive, self.watch_after)
        try:
            start: HTTPResponseStartEvent = {
                "type": "http.response.start",
                "status": self.status,
                "headers": self.headers,
            }
            await send(start)
            last = early = False
            ends = self.ends
            async for chunk in self.chunks:  # after the drained chunk, this ends at once
                last = self.drained()
                if not last and ends is not None and ends(chunk):
                    last = early = True
                if chunk or last:
                    part: HTTPResponseBodyEvent = {
                        "type": "http.response.body",
                        "body": chunk,
                        "more_body": not last,
                    }
                    await send(part)
                if early:
                    break
            if not last:
                end: HTTPResponseBodyEvent = {
                    "type": "http.response.body",
                    "body": b"",
                    "more_body": False,
                }
                await send(end)
            watch.stop()  # no cancelling once the answer is complete
            if early:
                if self.answered is not None:
                    self.answered()  # the client has its answer: what it holds can go
                await asyncio.sleep(0)  # the answer's write leaves before the drain is set up
                await self._drain()
        except asyncio.CancelledError:
            if not watch.forgive():
                raise  # not the client leaving: shutdown or a timeout above us
            # the client left; nothing more to send anywhere
        finally:
            watch.stop()

    async def _drain(self) -> None:
        """The rest of an answer whose client side has ended: read, and dropped."""
        dropped = 0
        try:
            async with asyncio.timeout(DRAIN_SECONDS):
                async for chunk in self.chunks:
                    dropped += len(chunk)
        except TimeoutError:
            logger.warning(
                "upstream answer still open %g s after its JSON-RPC response; connection dropped",
                DRAIN_SECONDS,
            )
        if dropped:
            logger.warning(
                "upstream sent %d bytes after its JSON-RPC response; the client's answer had "
                "ended, so they were dropped",
                dropped,
            )


def _is_disconnect(message: asyncio.Future[Any]) -> bool:
    """The watcher's ``receive()`` has finished with ``http.disconnect``."""
    return (
        message.done()
        and not message.cancelled()
        and message.exception() is None
        and message.result().get("type") == "http.disconnect"
    )
