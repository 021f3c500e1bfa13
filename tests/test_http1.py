"""The proxy's HTTP/1.1 client against real loopback servers that answer in every way a server
can: keep-alive, chunked, length-delimited and close-delimited bodies, stalls, garbage,
oversized headers and connections dropped at every stage."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from broker import http1
from broker.config import Secret, SmitherySettings
from broker.http1 import Http1Error, Http1Pool
from broker.upstream import SmitheryClient

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Server:
    def __init__(self) -> None:
        self.connections = 0
        self.requests: list[bytes] = []
        self.url = ""


@asynccontextmanager
async def serve(answer: Callable[[Server, int], Awaitable[bytes | None]]) -> AsyncIterator[Server]:
    """A loopback server that reads whole requests and writes what ``answer`` returns for the
    n-th request on a connection (None: close the connection instead)."""
    server = Server()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server.connections += 1
        try:
            for index in range(1000):
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                server.requests.append(head + await reader.readexactly(length))
                reply = await answer(server, index)
                if reply is None:
                    break
                writer.write(reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client closed the connection: the end of this handler
        finally:
            writer.close()

    listener = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    server.url = f"http://127.0.0.1:{port}"
    try:
        yield server
    finally:
        listener.close()


@asynccontextmanager
async def scripted(handler: Handler) -> AsyncIterator[Http1Pool]:
    """A loopback server that runs ``handler`` on each connection (answers written by hand, a
    byte at a time if need be), and a one-connection pool to it; both closed afterwards."""
    listener = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    client = Http1Pool(f"http://127.0.0.1:{port}", max_connections=1, connect_timeout=5)
    try:
        yield client
    finally:
        await client.aclose()
        listener.close()


def pool(server: Server, **options: float) -> Http1Pool:
    return Http1Pool(
        server.url,
        max_connections=int(options.pop("max_connections", 4)),
        connect_timeout=options.pop("connect_timeout", 5.0),
    )


async def body_of(response: http1.Http1Response) -> bytes:
    try:
        return b"".join([chunk async for chunk in response.chunks()])
    finally:
        await response.aclose()


def fixed(body: bytes, status: str = "200 OK", extra: bytes = b"") -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n".encode()
        + extra
        + b"\r\n"
        + body
    )


async def test_request_bytes_and_keep_alive_reuse() -> None:
    async def answer(server: Server, index: int) -> bytes:
        return fixed(b'{"n":%d}' % index)

    async with serve(answer) as server:
        client = pool(server)
        for index in range(3):
            response = await client.post(
                "/connect/ns/c1/mcp",
                [("Accept", "text/event-stream"), ("Authorization", "Bearer t")],
                b'{"jsonrpc":"2.0"}',
                read_timeout=5,
            )
            assert response.status_code == 200
            assert (b"content-type", b"application/json") in response.headers
            assert await body_of(response) == b'{"n":%d}' % index
        await client.aclose()
    assert server.connections == 1
    host = server.url.removeprefix("http://").encode()
    assert server.requests[0] == (
        b"POST /connect/ns/c1/mcp HTTP/1.1\r\nHost: " + host + b"\r\nContent-Length: 17\r\n"
        b"Accept: text/event-stream\r\nAuthorization: Bearer t\r\n\r\n"
        b'{"jsonrpc":"2.0"}'
    )


async def test_chunked_event_stream_arrives_in_pieces() -> None:
    async def answer(server: Server, index: int) -> bytes:
        return (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
            b"f\r\nevent: message\n\r\n"
            b"a\r\ndata: {}\n\n\r\n"
            b"0\r\n\r\n"
        )

    async with serve(answer) as server:
        client = pool(server)
        response = await client.post("/x", [], b"", read_timeout=5)
        assert await body_of(response) == b"event: message\ndata: {}\n\n"
        again = await client.post("/x", [], b"", read_timeout=5)
        assert await body_of(again) == b"event: message\ndata: {}\n\n"
    assert server.connections == 1


async def test_close_delimited_body_ends_with_the_connection_and_is_not_reused() -> None:
    async def reply_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it")
        await writer.drain()
        writer.close()

    async with scripted(reply_then_close) as client:
        for _ in range(2):
            response = await client.post("/x", [], b"", read_timeout=5)
            assert await body_of(response) == b"all of it"


async def test_no_content_answer_for_a_notification() -> None:
    async def answer(server: Server, index: int) -> bytes:
        return b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n"

    async with serve(answer) as server:
        response = await pool(server).post("/x", [], b"{}", read_timeout=5)
        assert response.status_code == 202
        assert await body_of(response) == b""


async def test_idle_connection_closed_by_the_server_is_replaced() -> None:
    async def answer(server: Server, index: int) -> bytes:
        # "Connection: close" makes the server end the connection after each answer.
        return fixed(b"{}", extra=b"Connection: close\r\n")

    async with serve(answer) as server:
        client = pool(server)
        for _ in range(3):
            assert await body_of(await client.post("/x", [], b"", read_timeout=5)) == b"{}"
    assert server.connections == 3


async def test_idle_connections_past_the_idle_limit_are_not_reused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(http1, "IDLE_SECONDS", -1.0)

    async def answer(server: Server, index: int) -> bytes:
        return fixed(b"{}")

    async with serve(answer) as server:
        client = pool(server)
        for _ in range(2):
            assert await body_of(await client.post("/x", [], b"", read_timeout=5)) == b"{}"
        await client.aclose()
    assert server.connections == 2


async def test_header_injection_is_refused_before_anything_is_sent() -> None:
    async def answer(server: Server, index: int) -> bytes:
        return fixed(b"{}")

    async with serve(answer) as server:
        client = pool(server)
        for headers in (
            [("Accept", "a\r\nX-Injected: 1")],
            [("X-Bad\r\nName", "v")],
            [("Name:", "v")],
            [("Accept", "nul\0")],
            [("Accept", "lone\nfeed")],
            [("Accept", "lone\rreturn")],
        ):
            with pytest.raises(ValueError, match="forbidden character"):
                await client.post("/x", headers, b"", read_timeout=5)
        for path in ("/x HTTP/1.1\r\nHost: evil", "/x\nHost: evil", "/x\0"):
            with pytest.raises(ValueError, match="request path"):
                await client.post(path, [], b"", read_timeout=5)
    assert server.requests == []


@pytest.mark.parametrize(
    "reply",
    [
        fixed(b"{}", extra=b"X-Filler: " + b"a" * (http1.MAX_RESPONSE_HEADER_BYTES + 1) + b"\r\n"),
        b"SMTP ready\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\n\r\n",  # never asked for
        # RFC 9112 6.3: an interim answer has no body; its bytes must not join the final one's
        b"HTTP/1.1 150 Odd\r\nContent-Length: 5\r\n\r\nEVIL!" + fixed(b'{"ok":1}'),
    ],
    ids=["oversized-headers", "garbage", "unrequested-101", "interim-with-a-body"],
)
async def test_answers_that_are_not_a_usable_http_answer_are_protocol_errors(
    reply: bytes,
) -> None:
    async def answer(server: Server, index: int) -> bytes:
        return reply

    async with serve(answer) as server:
        with pytest.raises(Http1Error) as caught:
            await pool(server).post("/x", [], b"", read_timeout=5)
    assert caught.value.reason == "protocol"


async def test_closed_before_the_answer_is_an_error() -> None:
    async def answer(server: Server, index: int) -> bytes | None:
        return None

    async with serve(answer) as server:
        with pytest.raises(Http1Error) as caught:
            await pool(server).post("/x", [], b"", read_timeout=5)
    assert caught.value.reason == "closed"


async def test_closed_mid_body_is_an_error() -> None:
    async def partial_then_close(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
        await writer.drain()
        writer.close()

    received: list[bytes] = []
    async with scripted(partial_then_close) as client:
        response = await client.post("/x", [], b"", read_timeout=5)

        async def drain() -> None:
            async for chunk in response.chunks():
                received.append(chunk)

        with pytest.raises(Http1Error) as caught:
            await drain()
        await response.aclose()
    assert caught.value.reason == "closed"
    assert b"".join(received) == b"only part"


async def test_a_stalled_answer_times_out() -> None:
    stall = asyncio.Event()

    async def answer(server: Server, index: int) -> bytes:
        await stall.wait()
        return b""

    async with serve(answer) as server:
        with pytest.raises(Http1Error) as caught:
            await pool(server).post("/x", [], b"", read_timeout=0.05)
        stall.set()
    assert caught.value.reason == "timeout"


async def test_a_body_that_stops_arriving_times_out() -> None:
    async def answer(server: Server, index: int) -> bytes:
        return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"

    async with serve(answer) as server:
        response = await pool(server).post("/x", [], b"", read_timeout=0.05)
        with pytest.raises(Http1Error) as caught:
            await body_of(response)
    assert caught.value.reason == "timeout"


async def test_a_head_trickling_in_is_no_news_and_times_out() -> None:
    """Bytes that complete nothing do not move the stall deadline: an upstream sending its head
    a byte at a time cannot hold the exchange open past ``read_timeout``."""

    done = asyncio.Event()

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
        try:
            while True:  # until the client gives up and closes
                writer.write(b"a")
                await writer.drain()
                await asyncio.sleep(0.01)
        except ConnectionError:
            pass  # the client closed the connection: the end of this handler
        finally:
            writer.close()
            done.set()

    async with scripted(trickle) as client, asyncio.timeout(10):  # a regression would hang
        with pytest.raises(Http1Error) as caught:
            await client.post("/x", [], b"", read_timeout=0.1)
        await done.wait()  # the timeout closed the connection: the server saw it
    assert caught.value.reason == "timeout"


async def test_chunks_slower_than_nothing_but_faster_than_the_timeout_all_arrive() -> None:
    """One stall timer serves the whole body: each chunk moves its deadline, so a body that
    takes several timeouts in all, but never one without news, arrives whole."""
    chunks = 8
    done = asyncio.Event()

    async def slow_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(chunks):
            await asyncio.sleep(0.04)
            writer.write(b"1\r\nx\r\n")
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        await reader.read()  # until the client closes
        writer.close()
        done.set()

    async with scripted(slow_body) as client:
        response = await client.post("/x", [], b"", read_timeout=0.1)
        assert await body_of(response) == b"x" * chunks  # 0.32 s in all, 0.04 s between chunks
        await client.aclose()  # the server's handler ends when the connection does
        await done.wait()


async def test_connection_refused_is_a_connect_error() -> None:
    listener = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    listener.close()
    await listener.wait_closed()
    client = Http1Pool(f"http://127.0.0.1:{port}", max_connections=1, connect_timeout=5)
    with pytest.raises(Http1Error) as caught:
        await client.post("/x", [], b"", read_timeout=5)
    assert caught.value.reason == "connect"


async def test_a_large_body_passes_intact_with_backpressure() -> None:
    payload = bytes(range(256)) * 8192  # 2 MiB, several times the read high-water mark

    async def answer(server: Server, index: int) -> bytes:
        return fixed(payload)

    async with serve(answer) as server:
        client = pool(server)
        response = await client.post("/x", [], b"", read_timeout=5)
        received = bytearray()
        async for chunk in response.chunks():
            received += chunk
            await asyncio.sleep(0)  # a relay that yields between chunks
        await response.aclose()
        assert bytes(received) == payload
        assert await body_of(await client.post("/x", [], b"", read_timeout=5)) == payload
    assert server.connections == 1


class Held:
    """An answer that says when a request ``arrived``, then waits for ``gate`` to open."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.arrived = asyncio.Event()

    async def answer(self, server: Server, index: int) -> bytes:
        self.arrived.set()
        await self.gate.wait()
        return fixed(b"{}")


async def test_callers_beyond_max_connections_wait_for_a_free_one() -> None:
    held = Held()
    gate, arrived = held.gate, held.arrived

    async with serve(held.answer) as server:
        client = pool(server, max_connections=1)
        first = asyncio.ensure_future(client.post("/x", [], b"", read_timeout=5))
        second = asyncio.ensure_future(client.post("/x", [], b"", read_timeout=5))
        await arrived.wait()
        assert len(server.requests) == 1
        assert not second.done()
        gate.set()
        assert await body_of(await first) == b"{}"
        assert await body_of(await second) == b"{}"
    assert server.connections == 1


async def test_no_free_connection_within_the_connect_timeout() -> None:
    held = Held()
    gate, arrived = held.gate, held.arrived

    async with serve(held.answer) as server:
        client = pool(server, max_connections=1, connect_timeout=0.05)
        first = asyncio.ensure_future(client.post("/x", [], b"", read_timeout=5))
        await arrived.wait()
        with pytest.raises(Http1Error) as caught:
            await client.post("/x", [], b"", read_timeout=5)
        gate.set()
        await body_of(await first)
    assert caught.value.reason == "connect"


def test_base_url_must_be_http() -> None:
    with pytest.raises(ValueError, match="http"):
        Http1Pool("ftp://x", max_connections=1, connect_timeout=1)


async def test_open_mcp_over_the_network_traces_and_propagates_context() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))

    async def answer(server: Server, index: int) -> bytes:
        return fixed(b'{"jsonrpc":"2.0","id":1,"result":{}}')

    async with serve(answer) as server:
        upstream = SmitheryClient(
            SmitherySettings(base_url=server.url, api_key=Secret("sk-k")),
            tracer_provider=provider,
        )
        answer_ = await upstream.open_mcp(
            "ns", "c1", b"{}", {"Accept": "application/json", "Cookie": "x=1"}, "svc-token"
        )
        assert answer_.status_code == 200
        assert (
            b"".join([c async for c in answer_.chunks]) == b'{"jsonrpc":"2.0","id":1,"result":{}}'
        )
        await answer_.aclose()
        await upstream.aclose()
    [request] = server.requests
    head = request.decode().lower()
    assert "authorization: bearer svc-token" in head
    assert "cookie" not in head
    [span] = exporter.get_finished_spans()
    assert span.kind is SpanKind.CLIENT
    assert span.attributes is not None
    assert span.attributes["http.response.status_code"] == 200
    assert span.attributes["url.path"] == "/connect/{namespace}/{connectionId}/mcp"  # no ids
    assert f"traceparent: 00-{span.context.trace_id:032x}-{span.context.span_id:016x}-" in head
    assert "svc-token" not in str(span.attributes)


async def test_arrived_and_drained_follow_the_body() -> None:
    gate = asyncio.Event()

    async def answer(server: Server, index: int) -> bytes:
        if index == 0:
            return fixed(b'{"whole":true}')  # one write: headers and body together
        await gate.wait()
        return b""

    async with serve(answer) as server:
        client = pool(server)
        response = await client.post("/x", [], b"", read_timeout=5)
        assert response.arrived()
        assert not response.drained()
        assert [chunk async for chunk in response.chunks()] == [b'{"whole":true}']
        assert response.drained()
        await response.aclose()
        assert not response.arrived()  # closed: nothing to say any more
        gate.set()


FINAL = fixed(b'{"final":true}')


@pytest.mark.parametrize(
    "interim",
    [
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\n",
    ],
)
async def test_interim_answers_are_skipped_and_the_connection_stays_in_step(
    interim: bytes,
) -> None:
    """A 1xx answer precedes the final one (RFC 9110 §15.2). Taken for the answer, it left the
    real one on the connection for the next caller, another user perhaps."""

    async def answer(server: Server, index: int) -> bytes:
        return (interim + FINAL) if index == 0 else fixed(b'{"n":2}')

    async with serve(answer) as server:
        client = pool(server, max_connections=1)
        first = await client.post("/x", [], b"{}", read_timeout=5)
        assert first.status_code == 200
        assert (b"link", b"</style.css>; rel=preload") not in first.headers
        assert await body_of(first) == b'{"final":true}'
        second = await client.post("/x", [], b"{}", read_timeout=5)
        assert await body_of(second) == b'{"n":2}'
    assert server.connections == 1


async def test_interim_answer_in_its_own_write_is_skipped_too() -> None:
    async def interim_then_final(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(2)
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await writer.drain()
            writer.write(FINAL)
            await writer.drain()
            await reader.read()  # until the client closes
        finally:
            writer.close()

    async with scripted(interim_then_final) as client:
        response = await client.post("/x", [], b"{}", read_timeout=5)
        assert response.status_code == 200
        assert await body_of(response) == b'{"final":true}'


async def test_a_second_answer_to_one_request_never_reaches_the_next_caller() -> None:
    async def answer(server: Server, index: int) -> bytes:
        if index == 0:  # a complete answer, then one nobody asked for
            return fixed(b"first") + fixed(b"INJECTED")
        return fixed(b"second")

    async with serve(answer) as server:
        client = pool(server, max_connections=1)
        assert await body_of(await client.post("/x", [], b"{}", read_timeout=5)) == b"first"
        again = await client.post("/x", [], b"{}", read_timeout=5)
        assert await body_of(again) == b"first"  # a new connection's first answer
    assert server.connections == 2


async def test_bytes_on_an_idle_connection_close_it() -> None:
    """Between exchanges nothing may arrive; whatever does would be parsed into the next
    caller's answer. (A stand-in transport: when bytes arrive is the point of the test.)"""

    class Transport:
        aborted = False

        def write(self, data: bytes) -> None:
            return None

        def abort(self) -> None:
            self.aborted = True

    connection = http1._Connection()
    transport = Transport()
    connection.connection_made(transport)  # type: ignore[arg-type]
    connection.start(b"POST / HTTP/1.1\r\n\r\n")
    connection.data_received(fixed(b"mine"))
    assert connection.complete
    assert connection.take() == b"mine"
    assert connection.reusable
    connection.finish()  # released to the pool
    connection.data_received(fixed(b"someone else's"))
    assert connection.closed
    assert transport.aborted
    assert not connection.reusable


STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
)


class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def abort(self) -> None:
        self.aborted = True

    def pause_reading(self) -> None:
        return None

    def resume_reading(self) -> None:
        return None


async def test_a_hold_waits_for_the_first_chunk_after_the_head() -> None:
    """The head alone, then the first event: the hold ends when the event is in, not at its
    time limit, so a relay can send both in one write."""
    connection = http1._Connection()
    transport = FakeTransport()
    connection.connection_made(transport)  # type: ignore[arg-type]
    connection.start(b"POST /x HTTP/1.1\r\n\r\n")
    connection.data_received(STREAM_HEAD)
    await connection.headers_arrived(5)
    holding = asyncio.ensure_future(connection.body_begun(3600, 5))
    for _ in range(3):
        await asyncio.sleep(0)  # a few loop turns: nothing new arrived, so the hold goes on
    assert not holding.done()
    connection.data_received(b"a\r\ndata: {}\n\n\r\n")
    await asyncio.wait_for(holding, timeout=5)
    assert connection.pending
    assert not connection.complete
    assert not transport.aborted


async def test_a_hold_is_over_at_once_when_the_body_came_with_the_head() -> None:
    connection = http1._Connection()
    connection.connection_made(FakeTransport())  # type: ignore[arg-type]
    connection.start(b"POST /x HTTP/1.1\r\n\r\n")
    connection.data_received(STREAM_HEAD + b"a\r\ndata: {}\n\n\r\n")
    await connection.headers_arrived(5)
    await connection.body_begun(3600, 5)  # would hang for an hour if it waited
    assert connection.pending


async def test_a_hold_ends_after_its_time_when_the_body_does_not_begin() -> None:
    body_go = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(STREAM_HEAD)
            await writer.drain()
            await body_go.wait()
            writer.write(b"a\r\ndata: {}\n\n\r\n0\r\n\r\n")
            await writer.drain()
            await reader.read()
        finally:
            writer.close()

    async with scripted(handler) as client:
        # A tool that thinks longer than the hold: the head comes back without the body.
        response = await asyncio.wait_for(
            client.post("/x", [], b"", read_timeout=5, hold_seconds=0.01), timeout=5
        )
        assert response.status_code == 200
        assert not response.arrived()
        body_go.set()
        assert await body_of(response) == b"data: {}\n\n"  # the hold did not spoil the stream


async def test_an_answer_that_breaks_during_the_hold_is_an_error() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(STREAM_HEAD)
        await writer.drain()
        writer.close()  # gone before any body

    async with scripted(handler) as client:
        with pytest.raises(http1.Http1Error) as caught:
            await client.post("/x", [], b"", read_timeout=5, hold_seconds=3600)
        assert caught.value.reason == "broken"  # after the head: not "Smithery unreachable"
