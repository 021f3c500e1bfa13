"""Forwarding an allowed MCP message to the connection's server, streaming the answer back.

This is the emulator's only HTTP client (httpx). It sends the exact request bytes to ``mcpUrl``
with the client's MCP protocol headers and the connection's stored ``headers`` (OpenAPI: "Custom
headers to send with MCP requests"), never the caller's bearer and never ``Mcp-Session-Id``:
Smithery's endpoint is stateless Streamable HTTP (SMITHERY-SEMANTICS.md, "The MCP endpoint").
The answer's body is relayed chunk by chunk as it arrives, so ``text/event-stream`` responses
stream. It decides no permissions and knows nothing of Litestar.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import httpx

DEFAULT_CONNECT_TIMEOUT_SECONDS = 5.0
DEFAULT_READ_TIMEOUT_SECONDS = 300.0
"""Between two chunks of an answer: an SSE stream may stay quiet while a tool runs."""

FORWARDED_REQUEST_HEADERS = ("content-type", "accept", "mcp-protocol-version")
"""The caller's headers Smithery passes on (MCP spec, Streamable HTTP: the POST's media types
and the negotiated protocol version). Everything else the caller sent stays here."""

_NOT_FROM_CONNECTION = frozenset(
    {
        *FORWARDED_REQUEST_HEADERS,
        "mcp-session-id",  # stateless: no session ever reaches the server
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "accept-encoding",
    }
)
"""Stored connection headers that are ignored: the protocol or the transport owns them."""


class RelayError(Exception):
    """The MCP server could not be reached, or did not answer with a status line in time."""


@dataclass(frozen=True, slots=True)
class RelayedResponse:
    """The server's status, its ``Content-Type`` (None if absent) and its body as it arrives.

    ``body`` must be consumed to the end (or closed): it owns the upstream connection.
    """

    status_code: int
    content_type: str | None
    body: AsyncIterator[bytes]


class McpRelay:
    """One connection pool to MCP servers, opened on first use and closed by ``aclose``."""

    def __init__(
        self,
        *,
        connect_timeout_seconds: float = DEFAULT_CONNECT_TIMEOUT_SECONDS,
        read_timeout_seconds: float = DEFAULT_READ_TIMEOUT_SECONDS,
    ) -> None:
        self._timeout = httpx.Timeout(read_timeout_seconds, connect=connect_timeout_seconds)
        self._client: httpx.AsyncClient | None = None

    async def forward(
        self,
        url: str,
        body: bytes,
        request_headers: Mapping[str, str],
        connection_headers: Mapping[str, str],
    ) -> RelayedResponse:
        """POST ``body`` unchanged to ``url``; raises ``RelayError`` if no answer starts.

        ``request_headers`` are the caller's headers (only ``FORWARDED_REQUEST_HEADERS`` are
        used); ``connection_headers`` are the connection's stored headers, which may hold the
        server's credentials: they go to ``url`` and nowhere else.
        """
        headers = {
            name: value
            for name, value in connection_headers.items()
            if name.lower() not in _NOT_FROM_CONNECTION
        }
        # Bytes, so nothing a caller or a connection holds makes the encoding fail (a 500): the
        # stored headers came as JSON text (UTF-8), the caller's as the bytes it sent.
        forwarded = {name.encode(): value.encode() for name, value in headers.items()}
        for name in FORWARDED_REQUEST_HEADERS:
            value = request_headers.get(name)
            if value is not None:
                forwarded[name.encode()] = value.encode("latin-1")  # as the caller sent them
        # Ask for no compression; a server that compresses anyway is decoded (aiter_bytes), as
        # only Content-Type is relayed back.
        forwarded[b"accept-encoding"] = b"identity"
        client = self._client_for_use()
        request = client.build_request("POST", url, content=body, headers=forwarded)
        try:
            response = await client.send(request, stream=True)
        except httpx.TransportError as error:
            raise RelayError(f"{type(error).__name__} from the MCP server") from None
        return RelayedResponse(
            status_code=response.status_code,
            content_type=response.headers.get("content-type"),
            body=_relay_body(response),
        )

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def _client_for_use(self) -> httpx.AsyncClient:
        if self._client is None:
            # trust_env=False: a proxy or netrc from the environment must not see MCP traffic.
            self._client = httpx.AsyncClient(
                timeout=self._timeout, trust_env=False, follow_redirects=False
            )
        return self._client


async def _relay_body(response: httpx.Response) -> AsyncIterator[bytes]:
    """The body chunk by chunk; a server that breaks off mid-stream just ends it."""
    try:
        async for chunk in response.aiter_bytes():
            yield chunk
    except httpx.TransportError:
        return
    finally:
        await response.aclose()
