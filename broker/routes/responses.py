"""A pre-encoded JSON response for the hottest routes.

Litestar's ``Response`` builds a mutable header container, normalises and re-encodes every
header and looks up the serializer on each request. For a body the handler has already encoded
with msgspec and a fixed header set, that is most of a cached token request's cost (R1 in
``bench/``). ``JsonBody`` is the ASGI app Litestar would have produced: status, the same headers
(``content-type``, ``content-length``, plus the route's own), the same bytes. Middleware (CORS,
OpenTelemetry, the metrics hook) sees it like any other response.
"""

from __future__ import annotations

from typing import Final

from litestar.types import HTTPResponseBodyEvent, HTTPResponseStartEvent, Receive, Scope, Send

RawHeaders = tuple[tuple[bytes, bytes], ...]
JSON_CONTENT_TYPE: Final = (b"content-type", b"application/json")
NO_STORE: Final = ((b"cache-control", b"no-store"),)


class JsonBody:
    """An ASGI app that sends ``body`` (already encoded JSON) with ``headers`` and ``status``."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, body: bytes, headers: RawHeaders = (), status: int = 200) -> None:
        self.body = body
        self.headers = headers
        self.status = status

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        start: HTTPResponseStartEvent = {
            "type": "http.response.start",
            "status": self.status,
            "headers": [
                JSON_CONTENT_TYPE,
                (b"content-length", str(len(self.body)).encode()),
                *self.headers,
            ],
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
    pass and without building Litestar's header container; ``None`` for an absent header."""
    found: list[str | None] = [None] * len(names)
    for name, value in scope["headers"]:
        if name in names:
            index = names.index(name)
            if found[index] is None:
                found[index] = value.decode("latin-1")
    return found
