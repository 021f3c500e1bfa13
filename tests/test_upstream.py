"""Upstream client: request shape and the translation of every Smithery answer (MockTransport,
and the emulator's ASGI app where its contract is the point)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from broker.config import Secret, SmitherySettings
from broker.emulator import create_emulator_app
from broker.errors import (
    ConnectionNotFoundError,
    UpstreamProtocolError,
    UpstreamRejectedError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from broker.upstream import MAX_CONNECTION_LIST_BYTES, SmitheryClient, parse_timestamp

API_KEY = "sk-test-SECRET-123"
POLICY = [{"namespaces": "my-app", "ttl": 900}]


SLEPT: list[float] = []


async def no_sleep(seconds: float) -> None:
    SLEPT.append(seconds)


def client(handler: Callable[[httpx.Request], httpx.Response], **settings: Any) -> SmitheryClient:
    """A client whose retries record their waits instead of sleeping."""
    SLEPT.clear()
    config = SmitherySettings(
        base_url="https://smithery.test/", api_key=Secret(API_KEY), **settings
    )
    return SmitheryClient(config, transport=httpx.MockTransport(handler), sleep=no_sleep)


async def test_mint_sends_api_key_and_policy() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"token": "svc", "expiresAt": "2030-01-01T00:15:00.000Z"})

    minted = await client(handler).mint_token(POLICY)
    assert minted.token == "svc"
    assert minted.expires_at == parse_timestamp("2030-01-01T00:15:00Z")
    request = seen[0]
    assert request.method == "POST"
    assert str(request.url) == "https://smithery.test/tokens"
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    assert json.loads(request.content) == {"policy": POLICY}


@pytest.mark.parametrize("status", [400, 401, 403])
async def test_smithery_refusal_is_upstream_rejected_without_body(
    status: int, caplog: pytest.LogCaptureFixture
) -> None:
    body = {"error": "unauthorized", "message": f"Invalid API key {API_KEY}"}
    with pytest.raises(UpstreamRejectedError) as caught:
        await client(lambda _: httpx.Response(status, json=body)).mint_token(POLICY)
    assert caught.value.status == 502
    assert caught.value.code == "upstream_rejected"
    assert caught.value.upstream_code == "unauthorized"
    assert API_KEY not in str(caught.value)
    assert API_KEY not in caplog.text
    assert "error=unauthorized" in caplog.text


@pytest.mark.parametrize(
    ("status", "retry_after", "expected"),
    [
        (503, "7", 7),
        (500, None, 1),
        (429, "2", 2),
        (502, "soon", 1),
        (429, "\u00b2", 1),  # a digit to str.isdigit, not to int(): it was a 500
        (503, "9" * 5000, 1),  # more digits than int() converts
    ],
)
async def test_overload_and_server_errors_are_unavailable_with_retry_after(
    status: int, retry_after: str | None, expected: int
) -> None:
    headers = {"Retry-After": retry_after.encode("latin-1")} if retry_after else {}
    with pytest.raises(UpstreamUnavailableError) as caught:
        await client(lambda _: httpx.Response(status, headers=headers)).mint_token(POLICY)
    assert caught.value.status == 503
    assert caught.value.retry_after_seconds == expected


async def test_timeout_is_504() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    with pytest.raises(UpstreamTimeoutError) as caught:
        await client(handler).mint_token(POLICY)
    assert caught.value.status == 504


async def test_connection_refused_is_503() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(UpstreamUnavailableError):
        await client(handler).mint_token(POLICY)


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b'{"token": "x"}',
        b'{"token": "x", "expiresAt": "yesterday"}',
        b'{"token": "", "expiresAt": "2030-01-01T00:00:00Z"}',
        b'{"token": "x", "expiresAt": "2030-01-01T00:00:00"}',
    ],
)
async def test_malformed_success_body_is_502(body: bytes) -> None:
    with pytest.raises(UpstreamProtocolError) as caught:
        await client(lambda _: httpx.Response(200, content=body)).mint_token(POLICY)
    assert caught.value.status == 502


async def test_an_answer_past_the_size_limit_is_not_read_on() -> None:
    """Answers to API calls are read whole; reading stops at the limit instead of holding
    whatever Smithery (or something posing as it) sends, within the deadline."""
    sent = [0]

    async def endless() -> Any:
        while True:
            sent[0] += 1
            yield b"x" * 65536

    with pytest.raises(UpstreamProtocolError) as caught:
        await client(lambda _: httpx.Response(200, content=endless())).mint_token(POLICY)
    assert caught.value.status == 502
    assert sent[0] * 65536 <= MAX_CONNECTION_LIST_BYTES + 65536


async def test_a_compressed_answer_is_refused_before_decoding() -> None:
    """The client asks for identity; a gzip answer could grow past every limit once decoded."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, headers={"Content-Encoding": "gzip"}, content=b"\x1f\x8b")

    with pytest.raises(UpstreamProtocolError):
        await client(handler).mint_token(POLICY)
    assert seen[0].headers["accept-encoding"] == "identity"


async def test_missing_api_key_never_calls_smithery() -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(200)

    upstream = SmitheryClient(
        SmitherySettings(base_url="https://smithery.test"), transport=httpx.MockTransport(handler)
    )
    assert not upstream.configured
    with pytest.raises(UpstreamUnavailableError):
        await upstream.mint_token(POLICY)
    assert calls == []


class Flaky:
    """Answers from a script of statuses (or exceptions), then 200."""

    def __init__(self, *script: int | type[Exception], retry_after: str | None = None) -> None:
        self.script = list(script)
        self.calls = 0
        self.retry_after = retry_after

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        if self.script:
            step = self.script.pop(0)
            if isinstance(step, int):
                headers = {"Retry-After": self.retry_after} if self.retry_after else {}
                return httpx.Response(step, headers=headers)
            raise step("fault", request=request)  # type: ignore[call-arg]
        return httpx.Response(200, json={"token": "ok", "expiresAt": "2030-01-01T00:00:00Z"})


@pytest.mark.parametrize(
    "script",
    [(503,), (502, 500), (429,), (httpx.ConnectError,), (httpx.ReadTimeout, 503)],
    ids=["503", "502-500", "429", "connect-error", "timeout-then-503"],
)
async def test_transient_failures_are_retried(script: tuple[Any, ...]) -> None:
    flaky = Flaky(*script)
    minted = await client(flaky).mint_token(POLICY)
    assert minted.token == "ok"
    assert flaky.calls == len(script) + 1
    assert len(SLEPT) == len(script)
    assert all(0.1 <= wait <= 2.0 for wait in SLEPT)  # jittered, bounded


@pytest.mark.parametrize("status", [400, 401, 403])
async def test_refusals_are_never_retried(status: int) -> None:
    flaky = Flaky(status)
    with pytest.raises(UpstreamRejectedError):
        await client(flaky).mint_token(POLICY)
    assert flaky.calls == 1


async def test_retries_are_bounded() -> None:
    flaky = Flaky(503, 503, 503, 503)
    with pytest.raises(UpstreamUnavailableError):
        await client(flaky, retries=2).mint_token(POLICY)
    assert flaky.calls == 3


async def test_retry_after_is_honoured_and_deadline_respected() -> None:
    flaky = Flaky(503, retry_after="3")
    assert (await client(flaky).mint_token(POLICY)).token == "ok"
    assert SLEPT == [3.0]
    too_long = Flaky(503, retry_after="30")
    with pytest.raises(UpstreamUnavailableError) as caught:
        await client(too_long, deadline_seconds=5).mint_token(POLICY)
    assert too_long.calls == 1  # waiting 30 s would overrun the 5 s deadline: give up now
    assert caught.value.retry_after_seconds == 30


def breaker_client(
    transport: httpx.AsyncBaseTransport, now: list[float], *, threshold: int, open_seconds: float
) -> SmitheryClient:
    """No retries, a breaker that opens after ``threshold`` failures, time in ``now[0]``."""
    return SmitheryClient(
        SmitherySettings(
            base_url="https://s.test",
            api_key=Secret(API_KEY),
            retries=0,
            breaker_failure_threshold=threshold,
            breaker_open_seconds=open_seconds,
        ),
        transport=transport,
        sleep=no_sleep,
        clock=lambda: now[0],
    )


async def test_breaker_opens_then_half_open_probe_closes_it() -> None:
    now = [0.0]
    flaky = Flaky(*([503] * 5))
    upstream = breaker_client(httpx.MockTransport(flaky), now, threshold=5, open_seconds=10)
    for _ in range(5):
        with pytest.raises(UpstreamUnavailableError):
            await upstream.mint_token(POLICY)
    assert upstream.caller.breaker.state == "open"
    with pytest.raises(UpstreamUnavailableError) as caught:
        await upstream.mint_token(POLICY)
    assert flaky.calls == 5  # open: failed at once, Smithery not called
    assert caught.value.retry_after_seconds == 10
    now[0] += 10
    assert upstream.caller.breaker.state == "half_open"
    assert (await upstream.mint_token(POLICY)).token == "ok"  # the probe succeeds
    assert upstream.caller.breaker.state == "closed"


async def test_failed_probe_reopens_breaker() -> None:
    now = [0.0]
    flaky = Flaky(*([503] * 3))
    upstream = breaker_client(httpx.MockTransport(flaky), now, threshold=2, open_seconds=5)
    for _ in range(2):
        with pytest.raises(UpstreamUnavailableError):
            await upstream.mint_token(POLICY)
    now[0] += 5
    with pytest.raises(UpstreamUnavailableError):
        await upstream.mint_token(POLICY)  # the probe fails
    assert upstream.caller.breaker.state == "open"
    assert flaky.calls == 3


def opened_breaker(handler: Any, now: list[float]) -> SmitheryClient:
    """A client whose breaker opens on one failure (its first answer); ``handler`` answers
    after that."""
    calls = [0]

    async def answer(request: httpx.Request) -> httpx.Response:
        calls[0] += 1
        if calls[0] == 1:
            return httpx.Response(503)
        result = handler(request)
        return (await result) if asyncio.iscoroutine(result) else result

    return breaker_client(httpx.MockTransport(answer), now, threshold=1, open_seconds=10)


async def test_a_probe_answered_404_closes_the_breaker() -> None:
    """Any caller can make the half-open probe a read of a connection that does not exist.
    The 404 is Smithery answering: the breaker closes (it stayed open until a restart)."""
    now = [0.0]

    def healthy(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/tokens":
            return httpx.Response(200, json={"token": "ok", "expiresAt": "2030-01-01T00:00:00Z"})
        return httpx.Response(404, json={"error": "not_found"})

    upstream = opened_breaker(healthy, now)
    with pytest.raises(UpstreamUnavailableError):
        await upstream.mint_token(POLICY)
    now[0] += 10
    with pytest.raises(ConnectionNotFoundError):
        await upstream.fetch_connection("ns", "nope")  # the probe
    assert upstream.caller.breaker.state == "closed"
    assert (await upstream.mint_token(POLICY)).token == "ok"


async def test_a_probe_whose_caller_went_away_lets_the_next_call_probe() -> None:
    now = [0.0]
    release = asyncio.Event()
    started = asyncio.Event()

    async def slow_then_healthy(request: httpx.Request) -> httpx.Response:
        if not release.is_set():
            started.set()
            await release.wait()
        return httpx.Response(200, json={"token": "ok", "expiresAt": "2030-01-01T00:00:00Z"})

    upstream = opened_breaker(slow_then_healthy, now)
    with pytest.raises(UpstreamUnavailableError):
        await upstream.mint_token(POLICY)
    now[0] += 10
    probe = asyncio.create_task(upstream.mint_token(POLICY))
    await started.wait()
    probe.cancel()  # the client disconnected
    with pytest.raises(asyncio.CancelledError):
        await probe
    release.set()
    assert (await upstream.mint_token(POLICY)).token == "ok"  # this one probes, and closes it
    assert upstream.caller.breaker.state == "closed"


async def test_upstream_cookies_never_ride_along_on_later_requests() -> None:
    """One client serves every user: a Set-Cookie from one answer must not reach the next call
    (another user's MCP request, or a mint with the API key)."""
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("cookie"))
        if request.url.path.endswith("/mcp"):
            return httpx.Response(
                200, json={"jsonrpc": "2.0", "id": 1, "result": {}}, headers={"set-cookie": "s=1"}
            )
        return httpx.Response(
            200,
            json={"token": "svc", "expiresAt": "2030-01-01T00:00:00.000Z"},
            headers={"set-cookie": "session=alice; Path=/"},
        )

    upstream = client(handler)
    await upstream.mint_token(POLICY)
    for _ in range(2):
        answer = await upstream.open_mcp("ns", "c1", b"{}", {}, "svc-token")
        assert b"".join([chunk async for chunk in answer.chunks]).startswith(b'{"jsonrpc"')
        await answer.aclose()
    await upstream.mint_token(POLICY)
    assert seen == [None, None, None, None]


async def test_open_mcp_forwards_only_mcp_headers_and_the_service_token() -> None:
    captured: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        captured.append(request)
        return httpx.Response(200, content=b"data: {}\n\n")

    upstream = client(handler)
    response = await upstream.open_mcp(
        "my app",
        "c/1",
        b'{"jsonrpc":"2.0"}',
        {
            "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream",
            "MCP-Protocol-Version": "2025-06-18",
            "Authorization": "Bearer user-jwt",
            "Cookie": "app=1",
            "X-Forwarded-For": "1.2.3.4",
        },
        "svc-token",
    )
    assert b"".join([chunk async for chunk in response.chunks]) == b"data: {}\n\n"
    await response.aclose()
    [request] = captured
    assert request.url == "https://smithery.test/connect/my%20app/c%2F1/mcp"
    assert request.content == b'{"jsonrpc":"2.0"}'
    assert request.headers["authorization"] == "Bearer svc-token"
    assert request.headers["accept-encoding"] == "identity"
    assert request.headers["mcp-protocol-version"] == "2025-06-18"
    assert "cookie" not in request.headers
    assert "x-forwarded-for" not in request.headers


async def test_connection_writes_in_an_unowned_namespace_against_the_emulator() -> None:
    """Smithery's contract, as the emulator serves it: PUT in a namespace the API key does not
    own is "404 Namespace not found or access denied" (an operator error: rejected, not an
    off-contract answer); DELETE's 404 is "Namespace or connection not found"."""
    emulator = create_emulator_app(API_KEY, owned_namespaces=("my-app",))
    config = SmitherySettings(base_url="http://emulator", api_key=Secret(API_KEY))
    upstream = SmitheryClient(config, transport=httpx.ASGITransport(app=emulator), sleep=no_sleep)
    try:
        body = {"mcpUrl": "https://tools.example.com/mcp"}
        _, created = await upstream.put_connection("my-app", "c1", body)
        assert created
        with pytest.raises(UpstreamRejectedError) as rejected:
            await upstream.put_connection("elsewhere", "c1", body)
        assert (rejected.value.upstream_status, rejected.value.upstream_code) == (404, "not_found")
        with pytest.raises(ConnectionNotFoundError):
            await upstream.delete_connection("elsewhere", "c1")
        await upstream.delete_connection("my-app", "c1")
    finally:
        await upstream.aclose()


async def test_a_cancelled_mcp_call_ends_its_span_as_an_error() -> None:
    """The proxy cancels the call when its client leaves; the span was left open (never
    exported), and the call looked like nothing had happened."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import StatusCode

    accepted = asyncio.Event()

    async def never_answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set()
        try:
            await reader.read()  # until the broker drops the connection
        finally:
            writer.close()

    server = await asyncio.start_server(never_answers, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    client = SmitheryClient(
        SmitherySettings(base_url=f"http://127.0.0.1:{port}", api_key=Secret("sk-test")),
        tracer_provider=provider,
    )
    call = asyncio.ensure_future(
        client.open_mcp("ns", "id", b"{}", [("content-type", "application/json")], "svc")
    )
    await accepted.wait()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    [span] = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "CancelledError"
    await client.aclose()
    server.close()
    await server.wait_closed()


async def test_an_mcp_answer_that_breaks_off_before_its_body_is_a_protocol_error() -> None:
    """Smithery's head came, then the connection ended before the body began: 502 material
    (no Retry-After, the tool may have run), not an unreachable Smithery; and the broken
    connection is not pooled."""
    connections = [0]

    async def head_then_gone(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections[0] += 1
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                b"transfer-encoding: chunked\r\n\r\n"
            )
            await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(head_then_gone, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = SmitheryClient(
        SmitherySettings(base_url=f"http://127.0.0.1:{port}", api_key=Secret("sk-test"))
    )
    try:
        for _ in range(2):
            with pytest.raises(UpstreamProtocolError) as caught:
                await client.open_mcp(
                    "ns", "id", b"{}", [("content-type", "application/json")], "svc"
                )
            assert caught.value.status == 502
            assert getattr(caught.value, "retry_after_seconds", None) is None
        assert connections[0] == 2  # the second call did not get the broken connection
    finally:
        await client.aclose()
        server.close()
        await server.wait_closed()
