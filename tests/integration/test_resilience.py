"""Upstream faults, against the real emulator process with run-time fault injection, seen through
a real broker process: retries, the circuit breaker, 503/504 with Retry-After, stale-but-valid
tokens, and graceful shutdown with requests in flight. Never a 500."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.integration.conftest import API_KEY, Keys, Process

pytestmark = pytest.mark.integration
FAST = {
    "BROKER_SMITHERY_TIMEOUT_SECONDS": "0.5",
    "BROKER_SMITHERY_DEADLINE_SECONDS": "3",
    "BROKER_SMITHERY_RETRY_BASE_DELAY_SECONDS": "0.05",
    "BROKER_SMITHERY_RETRY_MAX_DELAY_SECONDS": "0.1",
}


class Faults:
    def __init__(self, http: httpx.AsyncClient, emulator: Process) -> None:
        self.http, self.url = http, emulator.url

    async def set(self, **fault: Any) -> None:
        response = await self.http.post(f"{self.url}/_emulator/faults", json=fault)
        assert response.status_code == 200, response.text

    async def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = (await self.http.get(f"{self.url}/_emulator/stats")).json()
        return result

    async def stats_held(self) -> int:
        """MCP requests the emulator holds now (``hang``)."""
        held: int = (await self.http.get(f"{self.url}/_emulator/faults")).json()["held"]["mcp"]
        return held

    async def until_held(self, count: int, why: str) -> None:
        """Ask until the emulator holds ``count`` MCP requests (15 s at most)."""
        deadline = time.monotonic() + 15
        while await self.stats_held() != count:
            assert time.monotonic() < deadline, why

    async def slow_connection(self, subject: str) -> str:
        """A connection of ``subject``'s (``{subject}-slow``) whose calls a ``hang`` holds."""
        connection = f"{subject}-slow"
        created = await self.http.put(
            f"{self.url}/connect/my-app/{connection}",
            json={"mcpUrl": "https://mcp.example.com/mcp", "metadata": {"userId": subject}},
            headers={"Authorization": f"Bearer {API_KEY}"},
        )
        assert created.status_code in (200, 201), created.text
        return connection


@pytest.fixture
async def faults(emulator: Process) -> AsyncIterator[Faults]:
    async with httpx.AsyncClient(timeout=30, trust_env=False) as http:
        await http.post(f"{emulator.url}/_emulator/reset")
        yield Faults(http, emulator)
        await http.post(f"{emulator.url}/_emulator/reset")


def user(keys: Keys) -> dict[str, str]:
    return {"Authorization": f"Bearer {keys.jwt(f'u-{uuid.uuid4().hex[:8]}', email_verified=True)}"}


async def mint(broker: Process, headers: dict[str, str]) -> httpx.Response:
    async with httpx.AsyncClient(timeout=60, trust_env=False) as http:
        return await http.post(f"{broker.url}/v1/tokens", headers=headers)


async def test_transient_503_is_retried_transparently(
    faults: Faults, start_broker: Any, emulator: Process, keys: Keys
) -> None:
    broker = start_broker(emulator.url, **FAST)
    await faults.set(route="tokens", mode="status", status=503, count=2)
    response = await mint(broker, user(keys))
    assert response.status_code == 200
    assert (await faults.stats())["received_tokens"] == 3


async def test_persistent_503_gives_503_with_retry_after_and_opens_the_breaker(
    faults: Faults, start_broker: Any, emulator: Process, keys: Keys
) -> None:
    broker = start_broker(
        emulator.url,
        **FAST,
        BROKER_SMITHERY_RETRIES="0",
        BROKER_SMITHERY_BREAKER_FAILURE_THRESHOLD="2",
        BROKER_SMITHERY_BREAKER_OPEN_SECONDS="30",
    )
    await faults.set(route="tokens", mode="status", status=503, retryAfter=4)
    for _ in range(2):
        response = await mint(broker, user(keys))
        assert response.status_code == 503
        assert response.headers["retry-after"] == "4"
    seen = (await faults.stats())["received_tokens"]
    opened = await mint(broker, user(keys))
    assert opened.status_code == 503
    assert int(opened.headers["retry-after"]) > 20  # the breaker's remaining open time
    assert (await faults.stats())["received_tokens"] == seen  # Smithery was not called


async def test_hanging_smithery_is_504_within_the_deadline(
    faults: Faults, start_broker: Any, emulator: Process, keys: Keys
) -> None:
    broker = start_broker(emulator.url, **FAST)
    await faults.set(route="tokens", mode="hang")
    started = time.monotonic()
    response = await mint(broker, user(keys))
    assert response.status_code == 504
    assert response.json()["code"] == "upstream_timeout"
    assert time.monotonic() - started < 10  # bounded by the 3 s deadline, with slack


async def test_connection_reset_is_503(
    faults: Faults, start_broker: Any, emulator: Process, keys: Keys
) -> None:
    broker = start_broker(emulator.url, **FAST)
    await faults.set(route="tokens", mode="reset")
    response = await mint(broker, user(keys))
    assert response.status_code == 503
    assert response.json()["code"] == "upstream_unavailable"
    assert "retry-after" in response.headers


async def test_latency_within_the_deadline_still_succeeds(
    faults: Faults, start_broker: Any, emulator: Process, keys: Keys
) -> None:
    broker = start_broker(emulator.url, BROKER_SMITHERY_TIMEOUT_SECONDS="5")
    await faults.set(route="tokens", mode="latency", seconds=0.3)
    assert (await mint(broker, user(keys))).status_code == 200


async def test_graceful_shutdown_finishes_in_flight_requests_and_exits_0(
    faults: Faults, start_broker: Any, emulator: Process, keys: Keys
) -> None:
    broker = start_broker(emulator.url, BROKER_SMITHERY_TIMEOUT_SECONDS="10")
    assert (await mint(broker, user(keys))).status_code == 200  # warm: the process is serving
    await faults.set(route="tokens", mode="latency", seconds=1.5)
    async with httpx.AsyncClient(
        timeout=60, trust_env=False, limits=httpx.Limits(max_connections=200)
    ) as http:
        requests = [
            asyncio.ensure_future(http.post(f"{broker.url}/v1/tokens", headers=user(keys)))
            for _ in range(100)
        ]
        deadline = time.monotonic() + 30
        # Wait until all 100 are inside the broker, held at Smithery (not in a socket backlog).
        while (await faults.stats())["received_tokens"] < 101:
            assert time.monotonic() < deadline, "requests never reached Smithery"
            await asyncio.sleep(0.05)
        broker.popen.send_signal(signal.SIGTERM)
        responses = await asyncio.gather(*requests)
    assert [r.status_code for r in responses] == [200] * 100
    assert broker.popen.wait(timeout=30) == 0


async def test_valid_cached_token_served_when_smithery_fails_never_past_expiry(
    faults: Faults, emulator: Process
) -> None:
    """The broker in-process (its clock moved by the test), Smithery the real emulator process."""
    from litestar.testing import AsyncTestClient

    from broker.app import create_app
    from broker.config import PoliciesSettings, Secret, Settings, SmitherySettings
    from broker.telemetry import Telemetry
    from tests.inprocess import ROOT, SIGNER
    from tests.integration.conftest import API_KEY

    now = [time.time()]
    settings = Settings(
        policies=PoliciesSettings(dir=str(ROOT / "policies")),
        smithery=SmitherySettings(
            base_url=emulator.url,
            api_key=Secret(API_KEY),
            retries=1,
            retry_base_delay_seconds=0.01,
            retry_max_delay_seconds=0.02,
        ),
    )
    app = create_app(settings, dev_signer=SIGNER, clock=lambda: now[0], telemetry=Telemetry())
    async with AsyncTestClient(app) as client:
        jwt = SIGNER.sign(
            {"sub": "stale-user", "email_verified": True}, now=now[0], lifetime_seconds=3600
        )
        auth = {"Authorization": f"Bearer {jwt}"}
        first = await client.post("/v1/tokens", headers=auth)
        assert first.status_code == 200  # a 15 min token; margin 180 s
        await faults.set(route="tokens", mode="status", status=503)
        now[0] += 800  # past the margin, 100 s before expiry
        stale = await client.post("/v1/tokens", headers=auth)
        assert stale.status_code == 200
        assert stale.json()["token"] == first.json()["token"]
        now[0] += 120  # past expiry: nothing valid to serve
        expired = await client.post("/v1/tokens", headers=auth)
        assert expired.status_code == 503
        assert app.state.broker.cache.stats.stale_served == 1


async def test_mcp_faults_pass_through_the_proxy_without_retries(
    faults: Faults, broker: Process, emulator: Process, keys: Keys
) -> None:
    from broker.demo import MCP_PATH, create_demo_mcp_app, seed_dev_connections
    from tests.emulator.loopback import LoopbackServer
    from tests.integration.conftest import API_KEY

    with LoopbackServer(create_demo_mcp_app()) as demo:
        await seed_dev_connections(emulator.url, API_KEY, f"{demo.url}{MCP_PATH}")
        headers = {
            "Authorization": f"Bearer {keys.jwt('alice', email_verified=True)}",
            "Accept": "application/json, text/event-stream",
        }
        call = {
            "jsonrpc": "2.0",
            "id": 9,
            "method": "tools/call",
            "params": {"name": "get_issue", "arguments": {"number": 1}},
        }
        url = f"{broker.url}/v1/mcp/my-app/alice-github"
        async with httpx.AsyncClient(timeout=30, trust_env=False) as http:
            await faults.set(route="mcp", mode="status", status=502)
            failed = await http.post(url, json=call, headers=headers)
            assert failed.status_code == 502  # Smithery's JSON-RPC error, passed through
            assert failed.json()["error"]["code"] < 0
            before = (await faults.stats())["received_mcp"]
            await faults.set(route="mcp", mode="reset")
            reset = await http.post(url, json=call, headers=headers)
            assert reset.status_code in (502, 503)
            assert (await faults.stats())["received_mcp"] == before + 1  # never retried
            await faults.set(route="mcp", mode="none")
            assert (await http.post(url, json=call, headers=headers)).status_code == 200


async def test_a_client_that_leaves_while_smithery_thinks_frees_the_upstream_call(
    faults: Faults, broker: Process, emulator: Process, keys: Keys
) -> None:
    """The MCP answer may take minutes (a slow tool). The broker used to wait for it, holding
    an upstream connection, up to the MCP timeout (300 s) after the client had gone."""
    subject = f"u-{uuid.uuid4().hex[:8]}"
    connection = await faults.slow_connection(subject)
    await faults.set(route="mcp", mode="hang")
    jwt = keys.jwt(subject, email_verified=True)
    async with httpx.AsyncClient(timeout=1, trust_env=False) as impatient:
        with pytest.raises(httpx.ReadTimeout):
            await impatient.post(
                f"{broker.url}/v1/mcp/my-app/{connection}",
                json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                headers={"Authorization": f"Bearer {jwt}", "Accept": "application/json"},
            )
    # The client is gone (its connection closed with the client); the broker must now drop its
    # own call, which ends the emulator's hung request.
    await faults.until_held(0, "the broker still holds the upstream call")


async def test_one_user_cannot_hold_every_upstream_connection(
    faults: Faults, start_broker: Any, emulator: Process, keys: Keys
) -> None:
    """A slow tool holds a pooled upstream connection for minutes; the request rate alone let
    one user hold them all (100 by default), and everyone else waited."""
    broker = start_broker(emulator.url, BROKER_LIMITS_MCP_CALLS_PER_USER="1")
    users = [f"u-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    for subject in users:
        await faults.slow_connection(subject)
    await faults.set(route="mcp", mode="hang")
    async with httpx.AsyncClient(timeout=30, trust_env=False) as http:

        def call(subject: str) -> Any:
            return http.post(
                f"{broker.url}/v1/mcp/my-app/{subject}-slow",
                json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                headers={
                    "Authorization": f"Bearer {keys.jwt(subject, email_verified=True)}",
                    "Accept": "application/json",
                },
            )

        first = asyncio.ensure_future(call(users[0]))
        await faults.until_held(1, "the first call never reached the emulator")
        refused = await call(users[0])
        assert refused.status_code == 429
        assert refused.json()["code"] == "rate_limited"
        assert refused.headers["retry-after"] == "1"
        other = asyncio.ensure_future(call(users[1]))
        await faults.until_held(2, "the other user's call was held back")
        await faults.set(route="mcp", mode="none")  # lets both go
        await asyncio.gather(first, other)
        assert (await call(users[0])).status_code != 429  # the place was given back
