"""A small HTTP/1.1 client for the guarded proxy's one hot call: POST to Smithery's MCP endpoint
and stream the answer back.

httpx carries every other call to Smithery. For this one, R4 in ``bench/`` measured the general
client's layers (URL and header models, cookies, anyio cancel scopes around every read and write,
the pool's poll of each idle connection, the pure-Python h11 parser) at most of the broker's CPU
per proxied call. This client does only what the hop needs: keep-alive connections to one
origin, one write per request, the response parsed by ``httptools`` (llhttp, the parser uvicorn
uses), the body handed over chunk by chunk with backpressure, and bounded waits everywhere.

Safety rules:
- request header names and values are checked (no CR, LF or NUL) before anything is written;
- the response's headers are capped in size; a malformed response is an error, never a guess;
- a connection is reused only after a complete response that allows keep-alive, and never once
  the peer has closed it; a failed or abandoned exchange closes its connection;
- interim (1xx) answers are skipped, as RFC 9110 §15.2 asks of a client (one that declares a
  body is a protocol error); a second answer to one request, or bytes on a connection that
  carries no exchange, close the connection: a pooled connection serves every user, and such
  bytes must not reach the next request's caller. What HTTP/1.1 cannot show is an extra answer
  that arrives only after the connection was given to the next request: answers carry no
  request id, so that one would be taken for the next caller's. The pool relies on Smithery
  answering each request once, as it relies on Smithery for the tokens themselves;
- nothing here logs; errors carry no header values (they may hold tokens).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Final, cast
from urllib.parse import urlsplit

import httptools

MAX_RESPONSE_HEADER_BYTES: Final = 64 * 1024
IDLE_SECONDS: Final = 4.0
"""An idle connection older than this is not reused: servers commonly close keep-alive
connections after 5 s, and a request written into one that is closing would be lost."""
READ_HIGH_WATER: Final = 256 * 1024
"""Buffered response bytes at which reading from the socket pauses until the relay catches up."""


class Http1Error(Exception):
    """The exchange failed; ``reason`` is one of ``connect``, ``timeout``, ``closed``,
    ``protocol``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class _Connection(asyncio.Protocol):
    """One keep-alive connection; carries at most one exchange at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._parser = httptools.HttpResponseParser(self)
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self._loop = asyncio.get_running_loop()
        self._waiter: asyncio.Future[None] | None = None
        self._news_at = 0.0
        """Loop time of the last news (a wakeup, or the start of a wait), for the stall timer.
        Bytes that complete nothing (a head trickling in) are no news."""
        self._stall_timer: asyncio.TimerHandle | None = None
        self._stall_seconds = 0.0
        self._stalled_detail = ""
        self.status = 0
        self.keep_alive = False
        self.headers_done = False
        self.complete = False
        self.error: Http1Error | None = None
        self._active = False
        """Between ``start`` and ``finish``: bytes may arrive only then."""
        self._interim = False
        """Parsing a 1xx answer, which precedes the final one."""

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing asyncio.Transport.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if not self._active:  # nothing was asked: an idle connection must stay silent
            self.abort()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(Http1Error("protocol", "Smithery answered with a protocol upgrade."))
        except httptools.HttpParserError:
            if self.complete:  # bytes after the whole answer: keep it, drop the connection
                self.abort()
                self._wake()
            else:
                self._fail(Http1Error("protocol", "Smithery's answer is not valid HTTP/1.1."))

    def eof_received(self) -> bool:
        self._peer_closed()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._peer_closed()

    def pause_writing(self) -> None:  # requests are small and written at once
        return None

    def resume_writing(self) -> None:
        return None

    # httptools callbacks
    def on_message_begin(self) -> None:
        if self.complete:  # a second answer to one request: whose would it be?
            raise httptools.HttpParserError("an answer after the complete answer")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > MAX_RESPONSE_HEADER_BYTES:
            raise httptools.HttpParserError("headers too large")
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status == 101:  # never asked for (llhttp raises on an upgrade; a bare 101 lands here)
            raise httptools.HttpParserError("an unrequested 101")
        if 100 <= status < 200:  # 100 Continue, 103 Early Hints: the final answer follows
            self._interim = True
            self._headers = []
            self._header_bytes = 0
            return
        self.status = status
        # llhttp answers this only while the message is current, not after it completes.
        self.keep_alive = self._parser.should_keep_alive()
        self.headers_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self._interim:  # llhttp lets some 1xx codes declare one; RFC 9112 §6.3 allows none
            raise httptools.HttpParserError("a body in an interim answer")
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered >= READ_HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        self.complete = True
        self._wake()

    # the exchange
    def start(self, request: bytes) -> None:
        assert self.transport is not None
        self._headers = []
        self._header_bytes = 0
        self.status = 0
        self.headers_done = self.complete = self.keep_alive = self._interim = False
        self._active = True
        self.transport.write(request)

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        return self._headers

    @property
    def reusable(self) -> bool:
        return (
            self.complete
            and not self.closed
            and self.error is None
            and not self._chunks
            and self.keep_alive
        )

    async def headers_arrived(self, stall_seconds: float) -> None:
        while not self.headers_done:
            if self.error is not None:
                raise self.error
            await self.wait(stall_seconds, "Smithery did not answer in time.")

    async def body_begun(self, hold_seconds: float, stall_seconds: float) -> None:
        """After the headers: until the body has begun (a chunk is here, or the answer ended)
        or ``hold_seconds`` have passed, whichever comes first."""
        if self._chunks or self.complete:
            return
        timer = self._loop.call_later(hold_seconds, self._hold_over)
        try:
            await self.wait(stall_seconds, "Smithery did not answer in time.")
        finally:
            timer.cancel()

    def _hold_over(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)  # no news: the stall timer keeps its deadline

    async def wait(self, stall_seconds: float, stalled: str) -> None:
        """Until something new arrived (headers, a chunk, the end, or a failure); after
        ``stall_seconds`` with nothing new, the exchange fails with a ``timeout`` error.

        One stall timer serves every wait of an exchange: a wait moves its deadline (the time
        of the last news) instead of starting and cancelling a timer of its own, and when it
        fires early it sets itself again for what is left. A body of many chunks costs one
        timer, not one per chunk.
        """
        loop = self._loop
        self._news_at = loop.time()
        self._stall_seconds = stall_seconds
        self._stalled_detail = stalled
        if self._stall_timer is None:
            self._stall_timer = loop.call_at(self._news_at + stall_seconds, self._check_stall)
        waiter = self._waiter = loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None
        if self.error is not None:
            raise self.error

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            self._news_at = self._loop.time()
            waiter.set_result(None)

    def _check_stall(self) -> None:
        self._stall_timer = None
        if self._waiter is None or self.error is not None:
            return  # nobody waits: the next wait sets the timer again
        deadline = self._news_at + self._stall_seconds
        if self._loop.time() >= deadline:
            self._fail(Http1Error("timeout", self._stalled_detail))
        else:
            self._stall_timer = self._loop.call_at(deadline, self._check_stall)

    def finish(self) -> None:
        """The exchange is over (its connection is pooled or closed): no stall timer left, and
        no byte may arrive until the next ``start``."""
        self._active = False
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None

    def take(self) -> bytes | None:
        if not self._chunks:
            return None
        chunk = self._chunks.popleft()
        self._buffered -= len(chunk)
        if self._paused and self._buffered < READ_HIGH_WATER // 2 and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return chunk

    @property
    def pending(self) -> bool:
        """Body chunks received and not taken yet."""
        return bool(self._chunks)

    def abort(self) -> None:
        self.closed = True
        self.finish()
        if self.transport is not None:
            self.transport.abort()

    def _peer_closed(self) -> None:
        if not self.closed:
            self.closed = True
            if self.headers_done and not self.complete and self._read_until_close():
                self.complete = True  # no length given: the body ends with the connection
            elif not self.complete and self.error is None:
                self.error = Http1Error("closed", "Smithery closed the connection mid-answer.")
        self._wake()

    def _read_until_close(self) -> bool:
        names = {name for name, _ in self._headers}
        return b"content-length" not in names and b"transfer-encoding" not in names

    def _fail(self, error: Http1Error) -> None:
        self.error = error
        self.abort()
        self._wake()


class Http1Response:
    """Status and headers of an answer whose body is still arriving. Iterate ``chunks()`` and
    always ``aclose()`` (which puts a cleanly finished connection back in the pool)."""

    def __init__(self, pool: Http1Pool, connection: _Connection, read_timeout: float) -> None:
        self._pool = pool
        self._connection: _Connection | None = connection
        self._read_timeout = read_timeout
        self.status_code = connection.status
        self.headers = list(connection.headers)

    async def chunks(self) -> AsyncIterator[bytes]:
        connection = self._connection
        while connection is not None:
            chunk = connection.take()
            if chunk is not None:
                yield chunk
                continue
            if connection.error is not None:
                raise connection.error
            if connection.complete:
                return
            await connection.wait(self._read_timeout, "Smithery's answer stalled.")

    def arrived(self) -> bool:
        """The whole body is here (``chunks()`` will not wait), some of it perhaps not taken."""
        connection = self._connection
        return connection is not None and connection.complete and connection.error is None

    def drained(self) -> bool:
        """The whole body is here and every chunk was taken: nothing more will come."""
        connection = self._connection
        return self.arrived() and connection is not None and not connection.pending

    async def aclose(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            self._pool.release(connection)


class Http1Pool:
    """Keep-alive connections to one origin (``http`` or ``https``), at most ``max_connections``
    open at once; callers beyond that wait (within the connect timeout) for one to free up."""

    def __init__(
        self,
        base_url: str,
        *,
        max_connections: int,
        connect_timeout: float,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("the base URL must be http(s)://host[:port][/path]")
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._prefix = parts.path.rstrip("/")
        default_port = (parts.scheme == "https" and self._port == 443) or (
            parts.scheme == "http" and self._port == 80
        )
        host = f"[{self._host}]" if ":" in self._host else self._host
        self._host_header = (host if default_port else f"{host}:{self._port}").encode("ascii")
        self._ssl = (
            (ssl_context or ssl.create_default_context()) if parts.scheme == "https" else None
        )
        self._connect_timeout = connect_timeout
        self._idle: list[tuple[float, _Connection]] = []
        self._slots = asyncio.Semaphore(max_connections)
        self._closed = False

    async def post(
        self,
        path: str,
        headers: list[tuple[str, str]],
        body: bytes,
        *,
        read_timeout: float,
        hold_seconds: float = 0.0,
    ) -> Http1Response:
        """Send ``body`` to ``path`` (already percent-encoded, starting with ``/``) and wait for
        the answer's status and headers, and then up to ``hold_seconds`` for its body to begin
        (so that a caller relaying the answer can pass the head on with the first chunk in one
        write). Raises ``Http1Error``; ``ValueError`` for a header that could split the
        request."""
        request = self._serialize(path, headers, body)
        if self._slots.locked():  # only then can acquiring wait; the timeout has a cost
            try:
                async with asyncio.timeout(self._connect_timeout):
                    await self._slots.acquire()
            except TimeoutError:
                raise Http1Error(
                    "connect", "No connection to Smithery became free in time."
                ) from None
        else:
            await self._slots.acquire()
        try:
            connection = await self._connection()
            connection.start(request)
            try:
                await connection.headers_arrived(read_timeout)
                if hold_seconds > 0:
                    try:
                        await connection.body_begun(hold_seconds, read_timeout)
                    except Http1Error as exc:  # Smithery answered: the call may have run
                        raise Http1Error("broken", f"Smithery's answer broke off: {exc}") from None
            except BaseException:
                connection.abort()
                raise
        except BaseException:
            self._slots.release()
            raise
        return Http1Response(self, connection, read_timeout)

    def release(self, connection: _Connection) -> None:
        connection.finish()
        if connection.reusable and not self._closed:
            self._idle.append((time.monotonic(), connection))
        else:
            connection.abort()
        self._slots.release()

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for _, connection in idle:
            connection.abort()

    async def _connection(self) -> _Connection:
        fresh_after = time.monotonic() - IDLE_SECONDS
        while self._idle:
            idle_since, connection = self._idle.pop()
            if not connection.closed and idle_since > fresh_after:
                return connection
            connection.abort()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, connection = await loop.create_connection(
                    _Connection,
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl is not None else None,
                )
        except TimeoutError:
            raise Http1Error("timeout", "Connecting to Smithery timed out.") from None
        except OSError as exc:
            raise Http1Error(
                "connect", f"Connecting to Smithery failed ({type(exc).__name__})."
            ) from None
        return connection

    def _serialize(self, path: str, headers: list[tuple[str, str]], body: bytes) -> bytes:
        if not path.startswith("/") or _has_forbidden(path) or " " in path:
            raise ValueError("the request path must start with / and hold no spaces or controls")
        lines = [
            b"POST ",
            (self._prefix + path).encode("ascii"),
            b" HTTP/1.1\r\nHost: ",
            self._host_header,
            b"\r\nContent-Length: ",
            str(len(body)).encode("ascii"),
            b"\r\n",
        ]
        for name, value in headers:
            if not name or _has_forbidden(name) or ":" in name or _has_forbidden(value):
                raise ValueError("a request header name or value holds a forbidden character")
            lines += [name.encode("latin-1"), b": ", value.encode("latin-1"), b"\r\n"]
        lines += [b"\r\n", body]
        return b"".join(lines)


def _has_forbidden(text: str) -> bool:
    """CR, LF or NUL: what could end a header line early or split the request. (Three substring
    searches in C; ``frozenset.isdisjoint`` looked up every character of a long token.)"""
    return "\r" in text or "\n" in text or "\0" in text
