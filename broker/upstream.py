"""All calls to Smithery. The only module that uses httpx to reach it.

``SmitheryClient.mint_token`` sends ``POST {base}/tokens`` with the API key as bearer and
``{"policy": [...]}`` as body, and translates every httpx failure and every non-2xx answer exactly
once into the broker's error tree:

* 400/401/403 from Smithery → ``UpstreamRejectedError`` (502). Smithery's ``error`` code is kept
  for the log; its body is never relayed to the broker's caller. So is a 404 on ``PUT``
  connection: "Namespace not found or access denied" for the API key (a misconfigured namespace).
* 429 and 5xx, connection failures → ``UpstreamUnavailableError`` (503 with ``Retry-After``).
* timeouts → ``UpstreamTimeoutError`` (504).

The API key, the request body and the minted token never appear in exceptions or logs.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any, Final
from urllib.parse import quote, urlsplit

import httpx
import msgspec
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode, set_span_in_context

from broker.config import SmitherySettings
from broker.errors import (
    CallerError,
    ConnectionNotFoundError,
    InvalidRequestError,
    UpstreamProtocolError,
    UpstreamRejectedError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from broker.http1 import Http1Error, Http1Pool
from broker.resilience import ResilientCaller, RetryPolicy
from broker.telemetry import redact_client_span, upstream_route

logger = logging.getLogger("broker.upstream")

DEFAULT_RETRY_AFTER_SECONDS: Final = 1
MAX_RETRY_AFTER_SECONDS: Final = 300
MAX_TOKEN_RESPONSE_BYTES: Final = 64 * 1024
_SAFE_ERROR_CODE: Final = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


class _CreateTokenResponse(msgspec.Struct):
    """Smithery's ``CreateTokenResponse``; extra fields are tolerated for forward compatibility."""

    token: str
    expiresAt: str


class _TokenError(msgspec.Struct):
    error: str = ""


MAX_CONNECTION_BYTES: Final = 256 * 1024
MCP_FORWARDED_HEADERS: Final = ("content-type", "accept", "mcp-protocol-version")
MCP_HEAD_HOLD_SECONDS: Final = 0.05
"""How long ``open_mcp`` waits, once Smithery's status and headers are in, for the body to
begin: an event stream's head then reaches the client together with the first event, in one
write, instead of alone (R4 in ``bench/``). A tool that thinks longer gets its head after this."""


MAX_CONNECTION_LIST_BYTES: Final = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Connection:
    """What the broker needs of a Smithery connection to decide: its metadata."""

    namespace: str
    connection_id: str
    metadata: Mapping[str, Any] | None
    document: ConnectionDocument | None = None
    """The whole connection as Smithery returned it (for the connections API)."""


class ConnectionDocument(msgspec.Struct, frozen=True, omit_defaults=True):
    """Smithery's ``Connection`` (SMITHERY-SEMANTICS.md, "Connections"), as the broker relays it.

    Only these fields are read; anything else Smithery adds is dropped. ``headers`` are write-only
    upstream and never part of it.
    """

    connectionId: str
    name: str
    mcpUrl: str | None
    metadata: dict[str, Any] | None
    transport: str | None = None
    status: dict[str, Any] | None = None
    serverInfo: dict[str, Any] | None = None
    iconUrl: str | None = None
    createdAt: str | None = None


class ConnectionPage(msgspec.Struct, frozen=True):
    """Smithery's ``ConnectionsListResponse``: one page and the cursor of the next (or None)."""

    connections: list[ConnectionDocument]
    nextCursor: str | None = None


class ConnectionConflictError(CallerError):
    """Smithery refused a PUT with 409: the connection exists with a different ``mcpUrl``."""

    status = 409
    code = "connection_conflict"
    title = "Connection exists with another target"


@dataclass(frozen=True, slots=True)
class MintedToken:
    token: str
    expires_at: float
    """Expiry as a Unix timestamp, from Smithery's ``expiresAt``."""


class SmitheryClient:
    """A pooled async client for Smithery's API, created once per app and closed on shutdown."""

    def __init__(
        self,
        settings: SmitherySettings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        tracer_provider: Any = None,
        observe: Callable[[str, float], None] | None = None,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        """``tracer_provider``: trace each call (client spans, W3C context sent to Smithery).
        ``observe``: receives (operation, seconds) for each call, for the latency histogram."""
        self._api_key = settings.api_key
        self._observe = observe
        self.caller = ResilientCaller(
            RetryPolicy(
                retries=settings.retries,
                base_delay_seconds=settings.retry_base_delay_seconds,
                max_delay_seconds=settings.retry_max_delay_seconds,
                deadline_seconds=settings.deadline_seconds,
                failure_threshold=settings.breaker_failure_threshold,
                open_seconds=settings.breaker_open_seconds,
                max_concurrent_calls=settings.max_concurrent_calls,
            ),
            clock=clock or time.monotonic,
            sleep=sleep or asyncio.sleep,
        )
        self._mcp_extensions = {
            "timeout": httpx.Timeout(
                settings.timeout_seconds,
                connect=settings.connect_timeout_seconds,
                read=settings.mcp_timeout_seconds,
            ).as_dict()
        }
        self._mcp_read_timeout = settings.mcp_timeout_seconds
        self._mcp_host = urlsplit(settings.base_url).hostname or ""
        self._mcp_pool = (
            None
            if transport is not None
            else Http1Pool(
                settings.base_url,
                max_connections=settings.max_connections,
                connect_timeout=settings.connect_timeout_seconds,
                ssl_context=httpx.create_ssl_context(),
            )
        )
        self._tracer = (
            None
            if tracer_provider is None
            else trace.get_tracer(__name__, tracer_provider=tracer_provider)
        )
        limits = httpx.Limits(
            max_connections=settings.max_connections,
            max_keepalive_connections=settings.max_connections,
        )
        # Proxy variables and netrc must not redirect a request that carries the API key.
        self._transport = transport or httpx.AsyncHTTPTransport(limits=limits, trust_env=False)
        self._base_url = settings.base_url.rstrip("/")
        self._client = httpx.AsyncClient(
            base_url=self._base_url,
            timeout=httpx.Timeout(
                settings.timeout_seconds, connect=settings.connect_timeout_seconds
            ),
            limits=limits,
            trust_env=False,
            follow_redirects=False,
            transport=_BoundedTransport(self._transport, MAX_CONNECTION_LIST_BYTES),
            # Read as sent: a compressed answer could grow past every size limit once decoded.
            headers={"Accept-Encoding": "identity"},
            # One client serves every user: a cookie set by an upstream answer must never ride
            # along on another user's request. This jar accepts none.
            cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
        )
        if tracer_provider is not None:
            from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

            HTTPXClientInstrumentor.instrument_client(
                self._client, tracer_provider=tracer_provider, request_hook=redact_client_span
            )

    def _timed(self, operation: str, started: float) -> None:
        if self._observe is not None:
            self._observe(operation, time.perf_counter() - started)

    @property
    def configured(self) -> bool:
        return self._api_key is not None

    async def aclose(self) -> None:
        await self._client.aclose()
        if self._mcp_pool is not None:
            await self._mcp_pool.aclose()

    async def mint_token(self, constraints: Sequence[dict[str, Any]]) -> MintedToken:
        """Mint a service token restricted to ``constraints`` (Smithery ORs them), with retries
        under the deadline and the circuit breaker."""
        if self._api_key is None:
            raise UpstreamUnavailableError("The Smithery API key is not configured.")
        body = msgspec.json.encode({"policy": list(constraints)})
        return await self.caller.call(lambda: self._mint_once(body))

    async def _mint_once(self, body: bytes) -> MintedToken:
        assert self._api_key is not None
        started = time.perf_counter()
        try:
            response = await self._client.post(
                "/tokens",
                content=body,
                headers={
                    "Authorization": f"Bearer {self._api_key.reveal()}",
                    "Content-Type": "application/json",
                    "Accept": "application/json",
                },
            )
        except httpx.TimeoutException:
            logger.warning("smithery /tokens timed out")
            raise UpstreamTimeoutError("Smithery did not answer in time.") from None
        except httpx.TransportError as exc:
            logger.warning("smithery /tokens unreachable: %s", type(exc).__name__)
            raise UpstreamUnavailableError(
                "Smithery is unreachable.", retry_after_seconds=DEFAULT_RETRY_AFTER_SECONDS
            ) from None
        finally:
            self._timed("mint", started)
        return _read_token_response(response)

    async def fetch_connection(self, namespace: str, connection_id: str) -> Connection:
        """``GET /connect/{namespace}/{connectionId}`` with the API key (for its metadata)."""
        if self._api_key is None:
            raise UpstreamUnavailableError("The Smithery API key is not configured.")
        return await self.caller.call(lambda: self._fetch_connection_once(namespace, connection_id))

    async def _fetch_connection_once(self, namespace: str, connection_id: str) -> Connection:
        assert self._api_key is not None
        path = f"/connect/{quote(namespace, safe='')}/{quote(connection_id, safe='')}"
        started = time.perf_counter()
        try:
            response = await self._client.get(
                path,
                headers={
                    "Authorization": f"Bearer {self._api_key.reveal()}",
                    "Accept": "application/json",
                },
            )
        except httpx.TimeoutException:
            raise UpstreamTimeoutError("Smithery did not answer in time.") from None
        except httpx.TransportError as exc:
            logger.warning("smithery GET connection unreachable: %s", type(exc).__name__)
            raise UpstreamUnavailableError("Smithery is unreachable.") from None
        finally:
            self._timed("connection", started)
        if response.status_code == 404:
            raise ConnectionNotFoundError(f"No connection {connection_id!r} in {namespace!r}.")
        _raise_for_status(response, "GET connection")
        if len(response.content) > MAX_CONNECTION_BYTES:
            raise UpstreamProtocolError("Smithery's connection document is too large.")
        try:
            document = msgspec.json.decode(response.content)
        except msgspec.DecodeError:
            raise UpstreamProtocolError("Smithery's connection document is malformed.") from None
        metadata = document.get("metadata") if isinstance(document, dict) else None
        if metadata is not None and not isinstance(metadata, dict):
            raise UpstreamProtocolError("Smithery's connection metadata is not an object.")
        try:
            full: ConnectionDocument | None = msgspec.convert(document, ConnectionDocument)
        except msgspec.ValidationError:
            full = None  # the decision only needs the metadata
        return Connection(namespace, connection_id, metadata, full)

    async def fetch_connection_document(
        self, namespace: str, connection_id: str
    ) -> ConnectionDocument:
        """The whole connection (``GET /connect/{ns}/{id}``, API key); 404: connection_not_found."""
        connection = await self.fetch_connection(namespace, connection_id)
        if connection.document is None:
            raise UpstreamProtocolError("Smithery's connection document is malformed.")
        return connection.document

    async def list_connections(
        self,
        namespace: str,
        metadata: Mapping[str, str],
        *,
        cursor: str | None = None,
        limit: int | None = None,
    ) -> ConnectionPage:
        """``GET /connect/{ns}`` filtered by ``metadata.{key}={value}`` (all must hold): a page."""
        if self._api_key is None:
            raise UpstreamUnavailableError("The Smithery API key is not configured.")
        params = [(f"metadata.{key}", value) for key, value in metadata.items()]
        if cursor is not None:
            params.append(("cursor", cursor))
        if limit is not None:
            params.append(("limit", str(limit)))
        path = f"/connect/{quote(namespace, safe='')}"
        return await self.caller.call(lambda: self._list_connections_once(path, params))

    async def _list_connections_once(
        self, path: str, params: list[tuple[str, str]]
    ) -> ConnectionPage:
        query = httpx.QueryParams(tuple(params))
        response = await self._send("GET", path, "list connections", params=query)
        if response.status_code == 404:
            raise ConnectionNotFoundError("No such namespace.")
        if response.status_code == 400 and any(name == "cursor" for name, _ in params):
            # The caller's cursor, most likely: theirs to fix, not an operator's alarm.
            raise InvalidRequestError("Smithery did not accept the cursor: pass a nextCursor.")
        _raise_for_status(response, "list connections")
        if len(response.content) > MAX_CONNECTION_LIST_BYTES:
            raise UpstreamProtocolError("Smithery's connection list is too large.")
        try:
            return msgspec.json.decode(response.content, type=ConnectionPage)
        except msgspec.DecodeError:
            raise UpstreamProtocolError("Smithery's connection list is malformed.") from None

    async def put_connection(
        self, namespace: str, connection_id: str, body: Mapping[str, Any]
    ) -> tuple[ConnectionDocument, bool]:
        """``PUT /connect/{ns}/{id}`` (create or update, API key): the connection, and whether it
        was created. ``body`` may hold write-only ``headers``: it is never logged."""
        if self._api_key is None:
            raise UpstreamUnavailableError("The Smithery API key is not configured.")
        content = msgspec.json.encode(body)
        path = f"/connect/{quote(namespace, safe='')}/{quote(connection_id, safe='')}"
        # PUT is idempotent, so retrying after a lost answer cannot create a second connection.
        return await self.caller.call(lambda: self._put_connection_once(namespace, path, content))

    async def _put_connection_once(
        self, namespace: str, path: str, content: bytes
    ) -> tuple[ConnectionDocument, bool]:
        response = await self._send("PUT", path, "PUT connection", content=content)
        if response.status_code == 409:
            raise ConnectionConflictError(
                "The connection exists with another mcpUrl; delete it first."
            )
        if response.status_code == 404:
            # OpenAPI: "404 Namespace not found or access denied". With the API key that is the
            # operator's configuration (the policy's provision namespace, or the key), not the
            # caller's request: 502 like any refusal, the namespace named in the log only.
            code = _error_code(response.content)
            logger.error(
                "smithery rejected PUT connection: namespace %r does not exist or the API key"
                " does not own it (status=404 error=%s); check the policy's provision namespace",
                namespace,
                code,
            )
            raise UpstreamRejectedError(404, code)
        if response.status_code not in (200, 201):
            _raise_for_status(response, "PUT connection")
        return _read_connection(response), response.status_code == 201

    async def delete_connection(self, namespace: str, connection_id: str) -> None:
        """``DELETE /connect/{ns}/{id}`` with the API key; 404 → connection_not_found.

        Smithery's 404 here means "Namespace or connection not found": either way there is no
        such connection to delete, which is what the caller is told (provisioning reads the
        connection first, so an unowned namespace has already answered 404 to that read).
        """
        if self._api_key is None:
            raise UpstreamUnavailableError("The Smithery API key is not configured.")
        path = f"/connect/{quote(namespace, safe='')}/{quote(connection_id, safe='')}"
        await self.caller.call(lambda: self._delete_connection_once(path, namespace, connection_id))

    async def _delete_connection_once(self, path: str, namespace: str, connection_id: str) -> None:
        response = await self._send("DELETE", path, "DELETE connection")
        if response.status_code == 404:
            raise ConnectionNotFoundError(f"No connection {connection_id!r} in {namespace!r}.")
        _raise_for_status(response, "DELETE connection")

    async def _send(
        self,
        method: str,
        path: str,
        what: str,
        *,
        params: httpx.QueryParams | None = None,
        content: bytes | None = None,
    ) -> httpx.Response:
        """One API-key call, with httpx failures translated once (as ``fetch_connection``)."""
        assert self._api_key is not None
        headers = {
            "Authorization": f"Bearer {self._api_key.reveal()}",
            "Accept": "application/json",
        }
        if content is not None:
            headers["Content-Type"] = "application/json"
        started = time.perf_counter()
        try:
            return await self._client.request(
                method, path, params=params, content=content, headers=headers
            )
        except httpx.TimeoutException:
            raise UpstreamTimeoutError("Smithery did not answer in time.") from None
        except httpx.TransportError as exc:
            logger.warning("smithery %s unreachable: %s", what, type(exc).__name__)
            raise UpstreamUnavailableError("Smithery is unreachable.") from None
        finally:
            self._timed("connection", started)

    async def open_mcp(
        self,
        namespace: str,
        connection_id: str,
        body: bytes,
        headers: Mapping[str, str] | Sequence[tuple[str, str]],
        service_token: str,
    ) -> McpAnswer:
        """Send ``body`` unchanged to ``/connect/{ns}/{id}/mcp`` with the user's service token.

        Returns the answer with its body NOT yet read: the caller streams ``chunks`` and must
        ``aclose`` it. Only the MCP headers named in ``MCP_FORWARDED_HEADERS`` are passed on.
        Over the network this goes through ``http1`` (R4 in ``bench/``); an injected transport
        (in-process tests) is used as given.
        """
        path = f"/connect/{quote(namespace, safe='')}/{quote(connection_id, safe='')}/mcp"
        # A list (the proxy's) first: an ABC check costs more than the rest of this line.
        pairs = (
            headers
            if isinstance(headers, list)
            else headers.items()
            if isinstance(headers, Mapping)
            else headers
        )
        forwarded = [(k, v) for k, v in pairs if k.lower() in MCP_FORWARDED_HEADERS]
        forwarded.append(("Authorization", f"Bearer {service_token}"))
        # Pass bytes through untouched: no content-coding to undo on the way back.
        forwarded.append(("Accept-Encoding", "identity"))
        started = time.perf_counter()
        try:
            if self._mcp_pool is None:
                return await self._open_mcp_transport(path, forwarded, body)
            return await self._open_mcp_pool(path, forwarded, body)
        finally:
            self._timed("mcp", started)

    async def _open_mcp_pool(
        self, path: str, forwarded: list[tuple[str, str]], body: bytes
    ) -> McpAnswer:
        assert self._mcp_pool is not None
        tracer = self._tracer
        span = None
        if tracer is not None:
            span = tracer.start_span(
                "POST",
                kind=SpanKind.CLIENT,
                attributes={
                    "http.request.method": "POST",
                    "server.address": self._mcp_host,
                    "url.path": upstream_route(path),
                },
            )
            carrier: dict[str, str] = {}
            propagate.inject(carrier, context=set_span_in_context(span))
            forwarded.extend(carrier.items())
        try:
            response = await self._mcp_pool.post(
                path,
                forwarded,
                body,
                read_timeout=self._mcp_read_timeout,
                hold_seconds=MCP_HEAD_HOLD_SECONDS,
            )
        except Http1Error as exc:
            if span is not None:
                span.set_status(Status(StatusCode.ERROR, exc.reason))
                span.end()
            if exc.reason == "timeout":
                raise UpstreamTimeoutError("Smithery did not answer in time.") from None
            if exc.reason == "broken":  # after its head: no Retry-After, the tool may have run
                logger.warning("smithery mcp answer broke off after its head")
                raise UpstreamProtocolError("Smithery's answer broke off.") from None
            logger.warning("smithery mcp unreachable: %s", exc.reason)
            raise UpstreamUnavailableError("Smithery is unreachable.") from None
        except ValueError:
            if span is not None:
                span.end()
            raise InvalidRequestError(
                "A forwarded MCP header holds a forbidden character."
            ) from None
        except BaseException as exc:  # cancelled: the client left while Smithery was thinking
            if span is not None:
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                span.end()
            raise
        if span is not None:
            span.set_attribute("http.response.status_code", response.status_code)
            span.end()
        return McpAnswer(
            response.status_code,
            response.headers,
            _quiet(response.chunks()),
            response.aclose,
            response.arrived,
            response.drained,
        )

    async def _open_mcp_transport(
        self, path: str, forwarded: list[tuple[str, str]], body: bytes
    ) -> McpAnswer:
        request = httpx.Request(
            "POST",
            self._base_url + path,
            content=body,
            headers=forwarded,
            extensions=self._mcp_extensions,
        )
        try:
            response = await self._transport.handle_async_request(request)
        except httpx.TimeoutException:
            raise UpstreamTimeoutError("Smithery did not answer in time.") from None
        except httpx.TransportError as exc:
            logger.warning("smithery mcp unreachable: %s", type(exc).__name__)
            raise UpstreamUnavailableError("Smithery is unreachable.") from None
        response.request = request
        headers = [(name.lower(), value) for name, value in response.headers.raw]
        return McpAnswer(response.status_code, headers, _quiet(_raw(response)), response.aclose)


class _BoundedStream(httpx.AsyncByteStream):
    def __init__(self, stream: httpx.AsyncByteStream, limit: int) -> None:
        self._stream = stream
        self._limit = limit

    async def __aiter__(self) -> AsyncIterator[bytes]:
        size = 0
        async for chunk in self._stream:
            size += len(chunk)
            if size > self._limit:
                raise UpstreamProtocolError("Smithery's answer is larger than the broker reads.")
            yield chunk

    async def aclose(self) -> None:
        await self._stream.aclose()


class _BoundedTransport(httpx.AsyncBaseTransport):
    """Smithery's answers to the API calls are read whole, so reading stops at ``limit`` bytes
    (each call checks its own, smaller limit after that), and an answer compressed against the
    client's ``Accept-Encoding: identity`` is refused before anything is decoded."""

    def __init__(self, transport: httpx.AsyncBaseTransport, limit: int) -> None:
        self._transport = transport
        self._limit = limit

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._transport.handle_async_request(request)
        coding = response.headers.get("content-encoding", "").strip().lower()
        if coding not in ("", "identity"):
            await response.aclose()
            raise UpstreamProtocolError("Smithery compressed an answer the broker asked plain.")
        response.stream = _BoundedStream(
            response.stream,  # type: ignore[arg-type]
            self._limit,
        )
        return response

    async def aclose(self) -> None:
        await self._transport.aclose()


@dataclass(frozen=True, slots=True)
class McpAnswer:
    """Smithery's answer to an MCP message: status, headers (lower-case names) and the body as
    it arrives. A stream that breaks mid-answer just ends (the status line is already out)."""

    status_code: int
    headers: list[tuple[bytes, bytes]]
    chunks: AsyncIterator[bytes]
    aclose: Callable[[], Awaitable[None]]
    arrived: Callable[[], bool] = lambda: False
    """The whole body is here: iterating ``chunks`` will not wait."""
    drained: Callable[[], bool] = lambda: False
    """The whole body is here and was taken: the chunk just taken was the last."""


async def _raw(response: httpx.Response) -> AsyncIterator[bytes]:
    if response.is_stream_consumed:  # a transport that read the body already (test doubles)
        yield response.content
        return
    async for chunk in response.aiter_raw():
        yield chunk


async def _quiet(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    try:
        async for chunk in chunks:
            yield chunk
    except (httpx.HTTPError, Http1Error) as exc:
        logger.warning("smithery mcp answer broke off: %s", type(exc).__name__)


def _raise_for_status(response: httpx.Response, what: str) -> None:
    status = response.status_code
    if status in (400, 401, 403):
        code = _error_code(response.content)
        logger.error("smithery rejected %s: status=%d error=%s", what, status, code)
        raise UpstreamRejectedError(status, code)
    if status == 429 or status >= 500:
        logger.warning("smithery %s unavailable: status=%d", what, status)
        header = response.headers.get("retry-after")
        raise UpstreamUnavailableError(
            f"Smithery answered {status}.",
            retry_after_seconds=_retry_after(header),
            server_retry_after=_retry_after(header) if header else None,
        )
    if status != 200:
        logger.error("smithery %s unexpected status=%d", what, status)
        raise UpstreamProtocolError(f"Smithery answered an unexpected status {status}.")


def _read_connection(response: httpx.Response) -> ConnectionDocument:
    if len(response.content) > MAX_CONNECTION_BYTES:
        raise UpstreamProtocolError("Smithery's connection document is too large.")
    try:
        return msgspec.json.decode(response.content, type=ConnectionDocument)
    except msgspec.DecodeError:
        raise UpstreamProtocolError("Smithery's connection document is malformed.") from None


def _read_token_response(response: httpx.Response) -> MintedToken:
    _raise_for_status(response, "/tokens")
    if len(response.content) > MAX_TOKEN_RESPONSE_BYTES:
        raise UpstreamProtocolError("Smithery's token response is too large.")
    try:
        parsed = msgspec.json.decode(response.content, type=_CreateTokenResponse)
        expires_at = parse_timestamp(parsed.expiresAt)
    except (msgspec.DecodeError, ValueError):
        logger.exception("smithery /tokens returned a malformed body")
        raise UpstreamProtocolError("Smithery's token response is malformed.") from None
    if not parsed.token:
        raise UpstreamProtocolError("Smithery returned an empty token.")
    return MintedToken(token=parsed.token, expires_at=expires_at)


def parse_timestamp(value: str) -> float:
    """ISO 8601 (``2024-01-01T01:00:00.000Z``) → Unix seconds; the zone is required."""
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00") if value.endswith("Z") else value)
    if parsed.tzinfo is None:
        raise ValueError("timestamp without a time zone")
    return parsed.timestamp()


def _error_code(content: bytes) -> str:
    """Smithery's ``error`` field, if it is a short identifier; anything else is not logged."""
    try:
        code = msgspec.json.decode(content, type=_TokenError).error
    except msgspec.DecodeError:
        return "unparseable"
    return code if _SAFE_ERROR_CODE.fullmatch(code) else "unrecognised"


_SECONDS: Final = re.compile(r"[0-9]{1,9}")
"""Delay-seconds as RFC 9110 writes them (ASCII digits: ``isdigit`` also takes ``²``)."""


def _retry_after(value: str | None) -> int:
    if value is not None and _SECONDS.fullmatch(value.strip()):
        return max(1, min(int(value.strip()), MAX_RETRY_AFTER_SECONDS))
    return DEFAULT_RETRY_AFTER_SECONDS
