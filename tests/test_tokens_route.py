"""``POST /v1/tokens`` answers through its own pre-encoded response: the same contract as
Litestar's (headers, body, errors), checked on the wire of the in-process app."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from broker.errors import AuthenticationError
from broker.routes.responses import JsonBody, Relay, request_headers
from tests.inprocess import harness


def test_request_headers_reads_first_value_of_each_in_one_pass() -> None:
    scope = {
        "headers": [
            (b"content-type", b"application/json"),
            (b"accept", b"application/json"),
            (b"accept", b"text/event-stream"),
            (b"x-other", b"\xe9"),
        ]
    }
    assert request_headers(scope, b"accept", b"content-length", b"x-other") == [  # type: ignore[arg-type]
        "application/json",  # like Litestar's Headers.get: the first of duplicated headers
        None,
        "\xe9",  # latin-1, as ASGI servers hand header bytes over
    ]


def test_a_second_authorization_header_is_refused() -> None:
    scope = {"headers": [(b"authorization", b"Bearer first"), (b"authorization", b"Bearer 2")]}
    with pytest.raises(AuthenticationError):
        request_headers(scope, b"authorization")  # type: ignore[arg-type]


async def test_json_body_sends_status_headers_and_bytes() -> None:
    sent: list[dict[str, object]] = []

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    async def receive() -> dict[str, object]:
        raise AssertionError("a response never reads the request")

    app = JsonBody(b'{"a":1}', ((b"cache-control", b"no-store"),), status=201)
    await app({"type": "http", "method": "POST"}, receive, send)  # type: ignore[arg-type]
    assert sent[0] == {
        "type": "http.response.start",
        "status": 201,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", b"7"),
            (b"cache-control", b"no-store"),
        ],
    }
    assert sent[1] == {"type": "http.response.body", "body": b'{"a":1}', "more_body": False}
    sent.clear()
    await app({"type": "http", "method": "HEAD"}, receive, send)  # type: ignore[arg-type]
    assert sent[1]["body"] == b""


async def test_token_response_headers_and_body() -> None:
    async with harness() as h:
        response = await h.client.post("/v1/tokens", headers=h.auth("alice", email_verified=True))
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        assert response.headers["cache-control"] == "no-store"
        assert int(response.headers["content-length"]) == len(response.content)
        body = msgspec.json.decode(response.content)
        assert set(body) == {"token", "expiresAt", "rules", "policyRevision"}
        assert body["rules"] == ["own-connections"]
        assert body["expiresAt"].endswith("Z")


@pytest.mark.parametrize(
    ("headers", "content", "status", "code"),
    [
        ({"Content-Type": "text/plain"}, b'{"rules":["own-connections"]}', 415, None),
        ({"Content-Type": "application/json"}, b"{", 400, "invalid_json"),
        ({"Content-Type": "application/json"}, b'{"rules":[]}', 400, "invalid_request"),
        ({"Content-Type": "application/json"}, b'{"rules":["nope"]}', 400, None),
        ({"Content-Type": "application/json"}, b'{"rules":["\xff"]}', 400, "invalid_json"),
    ],
)
async def test_token_request_body_errors_are_problems(
    headers: dict[str, str], content: bytes, status: int, code: str | None
) -> None:
    async with harness() as h:
        response = await h.client.post(
            "/v1/tokens",
            headers={**h.auth("alice", email_verified=True), **headers},
            content=content,
        )
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/problem+json"
        if code is not None:
            assert response.json()["code"] == code


async def test_rules_narrow_the_token() -> None:
    async with harness() as h:
        response = await h.client.post(
            "/v1/tokens",
            headers={**h.auth("alice", email_verified=True, groups=["support"])},
            json={"rules": ["own-connections"]},
        )
        assert response.status_code == 200, response.text
        assert response.json()["rules"] == ["own-connections"]


class Upstream:
    """Chunks handed out one by one; after the last, waits (an event stream that stays open)."""

    def __init__(self, chunks: list[bytes], then_wait: bool) -> None:
        self.pending = list(chunks)
        self.then_wait = then_wait
        self.closed = 0
        self.never = asyncio.Event()
        self.waiting = asyncio.Event()

    async def chunks(self) -> AsyncIterator[bytes]:
        while self.pending:
            yield self.pending.pop(0)
        if self.then_wait:
            self.waiting.set()
            await self.never.wait()

    async def close(self) -> None:
        self.closed += 1


async def test_relay_streams_every_chunk_then_ends_and_closes_upstream() -> None:
    upstream = Upstream([b"event: message\n", b"", b"data: {}\n\n"], then_wait=False)
    sent: list[dict[str, Any]] = []
    client_gone = asyncio.Event()

    async def receive() -> dict[str, Any]:
        await client_gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    relay = Relay(200, [(b"content-type", b"text/event-stream")], upstream.chunks(), upstream.close)
    await relay({"type": "http"}, receive, send)  # type: ignore[arg-type]
    assert sent[0] == {
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-type", b"text/event-stream")],
    }
    assert [m["body"] for m in sent[1:]] == [b"event: message\n", b"data: {}\n\n", b""]
    assert [m["more_body"] for m in sent[1:]] == [True, True, False]
    assert upstream.closed == 1


async def test_relay_stops_and_closes_upstream_when_the_client_leaves() -> None:
    upstream = Upstream([b"data: first\n\n"], then_wait=True)
    sent: list[dict[str, Any]] = []
    first_sent = asyncio.Event()

    async def receive() -> dict[str, Any]:
        await first_sent.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message.get("body"):
            first_sent.set()

    relay = Relay(200, [], upstream.chunks(), upstream.close)
    # Without the disconnect watch this would wait forever on the open upstream stream.
    await asyncio.wait_for(relay({"type": "http"}, receive, send), timeout=5)  # type: ignore[arg-type]
    assert [m.get("body") for m in sent[1:]] == [b"data: first\n\n"]
    assert upstream.closed == 1
    current = asyncio.current_task()
    assert current is not None
    assert current.cancelling() == 0  # the cancel was taken back


async def test_relay_watches_for_the_client_leaving_only_once_a_stream_runs_long() -> None:
    upstream = Upstream([b"event: message\n", b"data: {}\n\n"], then_wait=False)
    sent: list[dict[str, Any]] = []
    receives = [0]
    never = asyncio.Event()

    async def receive() -> dict[str, Any]:
        receives[0] += 1
        await never.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    relay = Relay(200, [], upstream.chunks(), upstream.close, watch_after=3600)
    await relay({"type": "http"}, receive, send)  # type: ignore[arg-type]
    await asyncio.sleep(0)  # a watch task, had one started, would have called receive by now
    assert receives[0] == 0  # a stream over before watch_after needs no disconnect watch
    assert [m.get("body") for m in sent[1:]] == [b"event: message\n", b"data: {}\n\n", b""]
    assert upstream.closed == 1


async def test_relay_notices_a_client_that_left_before_the_watch_started() -> None:
    upstream = Upstream([b"data: first\n\n"], then_wait=True)
    receives = [0]

    async def receive() -> dict[str, Any]:
        receives[0] += 1
        return {"type": "http.disconnect"}  # gone already when first asked

    async def send(message: dict[str, Any]) -> None:
        return None

    relay = Relay(200, [], upstream.chunks(), upstream.close, watch_after=0)
    await asyncio.wait_for(relay({"type": "http"}, receive, send), timeout=5)  # type: ignore[arg-type]
    assert receives[0] == 1
    assert upstream.closed == 1


async def test_relay_passes_on_a_cancellation_that_is_not_a_disconnect() -> None:
    upstream = Upstream([], then_wait=True)
    never = asyncio.Event()

    async def receive() -> dict[str, Any]:
        await never.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        return None

    relay = Relay(200, [], upstream.chunks(), upstream.close)
    task = asyncio.ensure_future(relay({"type": "http"}, receive, send))  # type: ignore[arg-type]
    await upstream.waiting.wait()  # the relay is inside the open upstream stream
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert upstream.closed == 1


async def test_relay_sends_an_answer_that_has_wholly_arrived_in_one_piece() -> None:
    upstream = Upstream([b"event: message\n", b"data: {}\n\n"], then_wait=False)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        raise AssertionError("no disconnect watch for an answer already complete")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    relay = Relay(
        200,
        [(b"content-type", b"text/event-stream")],
        upstream.chunks(),
        upstream.close,
        arrived=lambda: True,
    )
    await relay({"type": "http"}, receive, send)  # type: ignore[arg-type]
    assert sent == [
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/event-stream"), (b"content-length", b"25")],
        },
        {"type": "http.response.body", "body": b"event: message\ndata: {}\n\n", "more_body": False},
    ]
    assert upstream.closed == 1


async def test_relay_ends_the_response_with_the_chunk_that_drained_the_answer() -> None:
    upstream = Upstream([b"event: message\n", b"data: {}\n\n"], then_wait=False)
    receive, send, sent = client_that_stays()
    taken = [0]

    async def counted() -> AsyncIterator[bytes]:
        async for chunk in upstream.chunks():
            taken[0] += 1
            yield chunk

    relay = Relay(200, [], counted(), upstream.close, drained=lambda: taken[0] == 2)
    await relay({"type": "http"}, receive, send)  # type: ignore[arg-type]
    assert [(m.get("body"), m.get("more_body")) for m in sent[1:]] == [
        (b"event: message\n", True),
        (b"data: {}\n\n", False),
    ]
    assert upstream.closed == 1


class Ending:
    """An ``ends`` callback: the client's answer is complete after the chunk ``at``."""

    def __init__(self, at: bytes) -> None:
        self.at = at
        self.told: list[bytes] = []

    def __call__(self, chunk: bytes) -> bool:
        self.told.append(chunk)
        return chunk == self.at


def client_that_stays() -> tuple[Any, Any, list[dict[str, Any]]]:
    """ASGI receive and send of a client that never leaves; what was sent is recorded."""
    sent: list[dict[str, Any]] = []
    never = asyncio.Event()

    async def receive() -> dict[str, Any]:
        await never.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    return receive, send, sent


RESPONSE_EVENT = b'event: message\ndata: {"jsonrpc":"2.0","id":1,"result":{}}\n\n'


async def test_relay_ends_the_answer_with_the_response_and_drops_what_comes_after(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tail = [b": keep-alive\n\n", b"", b"data: late\n\n"]
    upstream = Upstream([b": hello\n\n", RESPONSE_EVENT, *tail], then_wait=False)
    receive, send, sent = client_that_stays()
    ending = Ending(RESPONSE_EVENT)
    left_when_answered: list[int] = []
    relay = Relay(
        200,
        [],
        upstream.chunks(),
        upstream.close,
        ends=ending,
        answered=lambda: left_when_answered.append(len(upstream.pending)),
    )
    with caplog.at_level("WARNING", logger="broker.routes.responses"):
        await relay({"type": "http"}, receive, send)  # type: ignore[arg-type]
    assert [(m.get("body"), m.get("more_body")) for m in sent[1:]] == [
        (b": hello\n\n", True),
        (RESPONSE_EVENT, False),  # the end of the answer travels with the response
    ]
    assert ending.told == [b": hello\n\n", RESPONSE_EVENT]  # not asked after the end
    assert left_when_answered == [len(tail)]  # told once, before the rest was drained
    assert upstream.pending == []  # the rest was read, so the connection can be pooled
    assert upstream.closed == 1
    dropped = sum(len(chunk) for chunk in tail)
    assert f"upstream sent {dropped} bytes after its JSON-RPC response" in caplog.text


async def test_relay_gives_up_on_an_upstream_that_stays_open_after_the_response(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from broker.routes import responses

    monkeypatch.setattr(responses, "DRAIN_SECONDS", 0.01)
    upstream = Upstream([RESPONSE_EVENT], then_wait=True)
    receive, send, sent = client_that_stays()
    relay = Relay(200, [], upstream.chunks(), upstream.close, ends=Ending(RESPONSE_EVENT))
    with caplog.at_level("WARNING", logger="broker.routes.responses"):
        await asyncio.wait_for(relay({"type": "http"}, receive, send), timeout=5)  # type: ignore[arg-type]
    assert [(m.get("body"), m.get("more_body")) for m in sent[1:]] == [(RESPONSE_EVENT, False)]
    assert upstream.waiting.is_set()  # it did wait for the upstream end, then stopped
    assert upstream.closed == 1
    assert "still open" in caplog.text


async def test_relay_without_the_response_ends_when_the_upstream_does() -> None:
    upstream = Upstream([b"data: a\n\n", b"data: b\n\n"], then_wait=False)
    receive, send, sent = client_that_stays()
    relay = Relay(200, [], upstream.chunks(), upstream.close, ends=Ending(b"never"))
    await relay({"type": "http"}, receive, send)  # type: ignore[arg-type]
    assert [(m.get("body"), m.get("more_body")) for m in sent[1:]] == [
        (b"data: a\n\n", True),
        (b"data: b\n\n", True),
        (b"", False),
    ]
    assert upstream.closed == 1
