"""A deadline for each request's head: uvicorn's HTTP/1.1 protocol, plus a timer.

uvicorn times out idle keep-alive connections, but not a connection that never finishes sending
a request's head: one that sends nothing after connecting, or trickles header bytes (slowloris).
Each such connection holds a socket for as long as the client likes, so a few thousand of them
exhaust the broker's file descriptors. Here the head of each request (request line and headers)
must be complete within ``head_timeout_seconds`` (checked every half of it, so at most one and a
half of it) of the connection opening, or of the request's first byte on a reused connection;
otherwise the broker answers ``408 request_timeout`` and closes the connection. The body has
its own deadline (``BROKER_SERVER_BODY_TIMEOUT_SECONDS``, ``routes.body``).

The protocol writes through ``coalescing.CoalescingTransport``: the parts of an answer sent in
one event-loop iteration leave in one system call. A request that is not valid HTTP/1.1 (which
uvicorn refuses before any app sees it) gets ``400 invalid_http`` as problem details, like every
other error of the broker, instead of uvicorn's plain text.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from broker.app import PROBLEM_JSON, encode_problem
from broker.coalescing import CoalescingTransport


def head_timeout_protocol(seconds: float) -> type[HttpToolsProtocol]:
    """uvicorn's ``http`` protocol class with a ``seconds`` deadline for each request's head,
    writing through a ``CoalescingTransport``, answering invalid HTTP with problem details."""
    body = encode_problem(
        408,
        "request_timeout",
        "Request timeout",
        f"The request's head (request line and headers) did not arrive within {seconds:g} s.",
    )
    answer = (
        b"HTTP/1.1 408 Request Timeout\r\ncontent-type: %s\r\ncontent-length: %d\r\n"
        b"connection: close\r\n\r\n%s" % (PROBLEM_JSON.encode(), len(body), body)
    )

    invalid_body = encode_problem(
        400,
        "invalid_http",
        "Invalid HTTP request",
        "The request is not valid HTTP/1.1 (request line, headers or chunked body).",
    )
    invalid = (  # the head after the status line and uvicorn's default headers, and the body
        b"content-type: %s\r\ncontent-length: %d\r\ncache-control: no-store\r\n"
        b"connection: close\r\n\r\n%s" % (PROBLEM_JSON.encode(), len(invalid_body), invalid_body)
    )

    class HeadTimeoutProtocol(HttpToolsProtocol):
        # Nothing per request (a proxied call is counted in instructions, bench/proxy_cost.py):
        # a timer per connection looks, every half deadline, whether the connection waits for a
        # request's head. It does when no request is being answered or queued and no keep-alive
        # wait is armed (uvicorn disarms it when bytes arrive, and a new connection has none).
        # Seen so at three looks in a row with no head completed between them, the head has
        # been due for at least the deadline (and less than one and a half of it).
        _head_timer: asyncio.TimerHandle | None = None
        _coalescing: CoalescingTransport
        _looks = 0
        _last_cycle: object = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            self._coalescing = CoalescingTransport(transport, self.loop)
            super().connection_made(self._coalescing)  # type: ignore[arg-type]
            self._head_timer = self.loop.call_later(seconds / 2, self._look)

        def eof_received(self) -> None:
            # The client half-closed (it sends no more): the transport closes itself when this
            # returns, so an answer still held must leave now, as it would have without holding.
            self._coalescing.flush()
            super().eof_received()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
            super().connection_lost(exc)

        def _waits_for_head(self) -> bool:
            return (
                self.timeout_keep_alive_task is None
                and not self.pipeline
                and (self.cycle is None or self.cycle.response_complete)
            )

        def _look(self) -> None:
            self._head_timer = None
            if self.transport.is_closing():
                return
            if not self._waits_for_head():
                self._looks = 0
            elif self.cycle is self._last_cycle:
                self._looks += 1
            else:  # a head completed (and was answered) since the last look
                self._looks = 1
            self._last_cycle = self.cycle
            if self._looks >= 3:
                self.transport.write(answer)
                self.transport.close()
                return
            self._head_timer = self.loop.call_later(seconds / 2, self._look)

        def send_400_response(self, msg: str) -> None:
            # uvicorn's own answer is text/plain; its message is a constant, never request data.
            content = [b"HTTP/1.1 400 Bad Request\r\n"]
            for name, value in self.server_state.default_headers:  # date (and server, if set)
                content.extend([name, b": ", value, b"\r\n"])
            content.append(invalid)
            self.transport.write(b"".join(content))
            self.transport.close()

    return HeadTimeoutProtocol
