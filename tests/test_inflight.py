"""``InFlightLimit``: at most ``BROKER_SERVER_MAX_IN_FLIGHT`` requests at once, probes exempt.

The limit wraps a small ASGI app that holds each request until the test lets it go, so the
number in flight is exact; the real server is exercised in tests/integration/test_resilience.py.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from broker.app import InFlightLimit, create_app
from broker.config import PoliciesSettings, Secret, ServerSettings, Settings, SmitherySettings
from broker.state import BrokerState
from tests.inprocess import ROOT


def broker_state(max_in_flight: int) -> BrokerState:
    settings = Settings(
        policies=PoliciesSettings(dir=str(ROOT / "policies")),
        smithery=SmitherySettings(base_url="http://emulator", api_key=Secret("sk-test-KEY")),
        server=ServerSettings(max_in_flight=max_in_flight),
    )
    state: BrokerState = create_app(settings).state.broker
    return state


class Held:
    """An ASGI app that answers 200 once ``release`` is set (or raises, if ``fail``)."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.entered = 0
        self.fail = False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.entered += 1
        await self.release.wait()
        if self.fail:
            raise RuntimeError("the app failed")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok", "more_body": False})


async def call(app: Any, path: str = "/v1/tokens") -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "headers": []}
    await app(scope, receive, send)
    return sent


async def until_entered(held: Held, count: int) -> None:
    for _ in range(1000):  # yields to the tasks started; no wall-clock wait
        if held.entered >= count:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"{held.entered} request(s) reached the app, not {count}")


async def test_requests_beyond_the_limit_get_503_overloaded_until_one_ends() -> None:
    state = broker_state(2)
    held = Held()
    limit = InFlightLimit(held, state)
    first = asyncio.create_task(call(limit))
    second = asyncio.create_task(call(limit))
    await until_entered(held, 2)
    assert state.in_flight == 2

    refused = await call(limit)
    assert held.entered == 2  # the refused request never reached the app
    start, body = refused
    assert start["status"] == 503
    headers = dict(start["headers"])
    assert headers[b"content-type"] == b"application/problem+json"
    assert headers[b"retry-after"] == b"1"
    problem = json.loads(body["body"])
    assert problem["code"] == "overloaded"
    assert problem["status"] == 503
    assert state.metrics.counters["broker_overload_rejections_total"][()] == 1

    held.release.set()
    assert [m["status"] for m, _ in [await first, await second]] == [200, 200]
    assert state.in_flight == 0
    assert (await call(limit))[0]["status"] == 200


@pytest.mark.parametrize("path", ["/livez", "/readyz", "/metrics"])
async def test_probes_and_metrics_are_answered_when_full(path: str) -> None:
    state = broker_state(1)
    held = Held()
    limit = InFlightLimit(held, state)
    busy = asyncio.create_task(call(limit))
    await until_entered(held, 1)
    probe = asyncio.create_task(call(limit, path))
    await until_entered(held, 2)  # reached the app although the limit is full
    assert state.in_flight == 1  # and is not counted
    held.release.set()
    assert (await probe)[0]["status"] == 200
    assert (await busy)[0]["status"] == 200


async def test_a_failing_request_frees_its_place() -> None:
    state = broker_state(1)
    held = Held()
    held.fail = True
    held.release.set()
    limit = InFlightLimit(held, state)
    with pytest.raises(RuntimeError):
        await call(limit)
    assert state.in_flight == 0


async def test_lifespan_and_websocket_scopes_pass_uncounted() -> None:
    state = broker_state(1)
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])
        assert state.in_flight == 0

    limit = InFlightLimit(app, state)
    for kind in ("lifespan", "websocket"):
        await limit({"type": kind, "path": "/"}, None, None)  # type: ignore[arg-type]
    assert seen == ["lifespan", "websocket"]


def test_the_in_flight_gauge_is_exported() -> None:
    state = broker_state(3)
    state.in_flight = 2
    assert "broker_requests_in_flight 2\n" in state.metrics.render()
