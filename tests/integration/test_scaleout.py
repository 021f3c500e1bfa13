"""Scale-out on Redis with real processes: three broker replicas, one emulator, one Debian
``redis-server`` (started here on a loopback port with a password).

Every wait is a poll against a deadline; nothing sleeps for a fixed time.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as redis

from tests.integration.conftest import API_KEY, Keys, Process
from tests.redis_server import PASSWORD, RedisServer

pytestmark = pytest.mark.integration

ADMIN_TOKEN = "admin-SECRET-9c2e41-7d0b5a13f8e6c2a4"
DEADLINE_SECONDS = 20.0
_counter = iter(range(1_000_000))


def unique(prefix: str) -> str:
    return f"{prefix}-{os.getpid()}-{next(_counter)}"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture
def keyring_file(tmp_path: Path) -> Path:
    path = tmp_path / "keyring.yaml"
    path.write_text(
        f"active: k2\nkeys:\n  k1: {b64(os.urandom(32))}\n  k2: {b64(os.urandom(32))}\n"
        f"naming_key: {b64(os.urandom(32))}\n"
    )
    return path


async def redis_up(http: httpx.AsyncClient, broker: Process) -> bool:
    lines = (await http.get(f"{broker.url}/metrics")).text.splitlines()
    return "broker_redis_up 1" in lines


@pytest.fixture
def key_material(keyring_file: Path) -> list[str]:
    """The base64 key values in the keyring file."""
    return [word for word in keyring_file.read_text().split() if len(word) > 40]


@pytest.fixture
async def replicas(
    http: httpx.AsyncClient,
    start_broker: Callable[..., Process],
    fresh_emulator: Process,
    redis_server: RedisServer,
    keyring_file: Path,
    tmp_path: Path,
) -> list[Process]:
    url_file = tmp_path / "redis-url"
    url_file.write_text(redis_server.url + "\n")
    started = [
        start_broker(
            fresh_emulator.url,
            BROKER_CACHE_BACKEND="redis",
            BROKER_REDIS_URL_FILE=str(url_file),
            BROKER_CACHE_ENCRYPTION_KEY_FILE=str(keyring_file),
            BROKER_ADMIN_TOKEN=ADMIN_TOKEN,
            BROKER_REDIS_SYNC_INTERVAL_SECONDS="0.1",
            BROKER_REDIS_RETRY_SECONDS="0.2",
            BROKER_LIMITS_MINT_BURST="50",
        )
        for _ in range(3)
    ]
    for broker in started:
        await eventually(lambda broker=broker: redis_up(http, broker), "replica using Redis")
    return started


async def minted(http: httpx.AsyncClient, emulator: Process) -> int:
    stats = (await http.get(f"{emulator.url}/_emulator/stats")).json()
    return int(stats["tokens_minted"])


async def token(http: httpx.AsyncClient, broker: Process, jwt: str) -> httpx.Response:
    return await http.post(f"{broker.url}/v1/tokens", headers={"Authorization": f"Bearer {jwt}"})


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> float:
    """Poll ``check`` until it holds; the seconds it took. Fails at the deadline."""
    start = time.monotonic()
    while time.monotonic() - start < DEADLINE_SECONDS:
        if await check():
            return time.monotonic() - start
        await asyncio.sleep(0.02)
    raise AssertionError(f"not within {DEADLINE_SECONDS}s: {what}")


async def test_three_replicas_mint_once_per_user(
    http: httpx.AsyncClient, replicas: list[Process], fresh_emulator: Process, keys: Keys
) -> None:
    jwt = keys.jwt(unique("alice"), email_verified=True)
    responses = await asyncio.gather(*(token(http, replicas[i % 3], jwt) for i in range(300)))
    assert [r.status_code for r in responses] == [200] * 300
    assert len({r.json()["token"] for r in responses}) == 1
    assert await minted(http, fresh_emulator) == 1

    jwts = [keys.jwt(unique("user"), email_verified=True) for _ in range(30)]
    responses = await asyncio.gather(
        *(token(http, replicas[i % 3], jwts[i % 30]) for i in range(300))
    )
    assert [r.status_code for r in responses] == [200] * 300
    assert len({r.json()["token"] for r in responses}) == 30
    assert await minted(http, fresh_emulator) == 31


async def test_redis_holds_nothing_in_clear(
    http: httpx.AsyncClient,
    replicas: list[Process],
    redis_server: RedisServer,
    keys: Keys,
    key_material: list[str],
) -> None:
    subjects = [unique("clear-check") for _ in range(3)]
    tokens = []
    for index, subject in enumerate(subjects):
        response = await token(http, replicas[index], keys.jwt(subject, email_verified=True))
        assert response.status_code == 200, response.text
        tokens.append(response.json()["token"])
        precheck = await http.post(
            f"{replicas[index].url}/v1/precheck",
            headers={"Authorization": f"Bearer {keys.jwt(subject, email_verified=True)}"},
            json={
                "namespace": "my-app",
                "request": {"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                "metadata": {"userId": subject},
            },
        )
        assert precheck.status_code == 200, precheck.text
    revoke = await http.post(
        f"{replicas[0].url}/v1/admin/revoke",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        json={"subject": unique("someone-else"), "issuer": "https://idp.integration.test/"},
    )
    assert revoke.status_code == 200, revoke.text

    client = redis.Redis.from_url(redis_server.url)
    try:
        dump = b""
        records = 0
        async for key in client.scan_iter(match="*", count=1000):
            kind = await client.type(key)
            if kind == b"string":
                value = await client.get(key)
            elif kind == b"hash":
                value = b"".join(k + v for k, v in (await client.hgetall(key)).items())
            elif kind == b"set":
                value = b"".join(await client.smembers(key))
            else:
                value = b""
            if key.startswith(b"token-broker:tok:"):
                records += 1
            dump += key + b"\n" + (value or b"") + b"\n"
    finally:
        await client.aclose()
    assert records == 3
    secrets = [*tokens, *subjects, API_KEY, PASSWORD, *keys.issued]
    assert len(key_material) == 3
    secrets += key_material
    for secret in [*secrets, "idp.integration.test", "someone-else"]:
        assert secret.encode() not in dump, secret
        assert base64.b64encode(secret.encode()) not in dump


async def test_revoke_on_one_replica_is_honoured_by_the_others_within_a_second(
    http: httpx.AsyncClient, replicas: list[Process], fresh_emulator: Process, keys: Keys
) -> None:
    subject = unique("mallory")
    other = unique("bob")
    jwt = keys.jwt(subject, email_verified=True)
    for replica in replicas:  # every replica has the token in memory
        assert (await token(http, replica, jwt)).status_code == 200
    connection = unique("conn")
    created = await http.put(
        f"{fresh_emulator.url}/connect/my-app/{connection}",
        headers={"Authorization": f"Bearer {API_KEY}"},
        json={"mcpUrl": "https://mcp.invalid/mcp", "metadata": {"userId": subject}},
    )
    assert created.status_code in (200, 201), created.text

    revoked = await http.post(
        f"{replicas[0].url}/v1/admin/revoke",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        json={"subject": subject},
    )
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["revoked"] == "subject"
    assert revoked.json()["purgedShared"] == 1
    auth = {"Authorization": f"Bearer {jwt}"}
    message = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}

    async def refused_everywhere() -> bool:
        results = []
        for replica in replicas:
            results.append(await token(http, replica, jwt))
            results.append(
                await http.post(
                    f"{replica.url}/v1/precheck",
                    headers=auth,
                    json={"namespace": "my-app", "request": message, "metadata": {}},
                )
            )
            results.append(
                await http.post(
                    f"{replica.url}/v1/mcp/my-app/{connection}", headers=auth, json=message
                )
            )
        return all(
            r.status_code == 403
            and r.headers["content-type"].startswith("application/problem+json")
            and r.json()["code"] == "access_revoked"
            for r in results
        )

    took = await eventually(refused_everywhere, "revocation honoured on every replica")
    assert took < 1.0
    # Other users are unaffected.
    assert (await token(http, replicas[2], keys.jwt(other, email_verified=True))).status_code == 200


async def test_revoke_requires_the_admin_credential(
    http: httpx.AsyncClient, replicas: list[Process]
) -> None:
    url = f"{replicas[0].url}/v1/admin/revoke"
    assert (await http.post(url, json={"all": True})).status_code == 401
    wrong = await http.post(url, headers={"Authorization": "Bearer nope"}, json={"all": True})
    assert wrong.status_code == 401
    both = await http.post(
        url,
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        json={"subject": "a", "rule": "own-connections"},
    )
    assert both.status_code == 400


async def test_redis_outage_degrades_to_memory_then_sharing_resumes(
    http: httpx.AsyncClient,
    replicas: list[Process],
    fresh_emulator: Process,
    redis_server: RedisServer,
    keys: Keys,
) -> None:
    before = await minted(http, fresh_emulator)
    redis_server.kill()
    jwt = keys.jwt(unique("outage"), email_verified=True)
    responses = [await token(http, replica, jwt) for replica in replicas]
    assert [r.status_code for r in responses] == [200, 200, 200]
    # Each replica minted on its own (no shared tier), and nothing crashed.
    assert await minted(http, fresh_emulator) == before + 3
    for replica in replicas:
        metrics = (await http.get(f"{replica.url}/metrics")).text.splitlines()
        assert "broker_redis_up 0" in metrics
        assert (await http.get(f"{replica.url}/readyz")).status_code == 200
        assert replica.popen.poll() is None

    redis_server.start()

    async def all_up() -> bool:
        for replica in replicas:
            if not await redis_up(http, replica):
                return False
        return True

    await eventually(all_up, "every replica reconnected to Redis")
    before = await minted(http, fresh_emulator)
    jwt = keys.jwt(unique("after"), email_verified=True)
    responses = await asyncio.gather(*(token(http, replicas[i % 3], jwt) for i in range(60)))
    assert [r.status_code for r in responses] == [200] * 60
    assert await minted(http, fresh_emulator) == before + 1
    for replica in replicas:
        output = replica.output()
        assert output.count("redis: unavailable") == 1, output
        for secret in (PASSWORD, API_KEY, jwt, *{r.json()["token"] for r in responses}):
            assert secret not in output


async def test_redis_required_for_readiness(
    http: httpx.AsyncClient,
    start_broker: Callable[..., Process],
    fresh_emulator: Process,
    redis_server: RedisServer,
    keyring_file: Path,
) -> None:
    broker = start_broker(
        fresh_emulator.url,
        BROKER_CACHE_BACKEND="redis",
        BROKER_REDIS_URL=redis_server.url,
        BROKER_CACHE_ENCRYPTION_KEY_FILE=str(keyring_file),
        BROKER_REDIS_REQUIRED_FOR_READINESS="true",
        BROKER_REDIS_SYNC_INTERVAL_SECONDS="0.1",
        BROKER_REDIS_RETRY_SECONDS="0.2",
    )

    async def ready(expected: int) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            response: Any = await http.get(f"{broker.url}/readyz")
            return bool(response.status_code == expected)

        return check

    await eventually(await ready(200), "ready with Redis up")
    redis_server.kill()
    await eventually(await ready(503), "not ready without Redis")
    body = (await http.get(f"{broker.url}/readyz")).json()
    assert body["checks"]["redis"] is False


async def test_max_connections_holds_across_replicas(
    http: httpx.AsyncClient, replicas: list[Process], fresh_emulator: Process, keys: Keys
) -> None:
    # The shipped own-connections rule allows 5 connections per user. Twelve concurrent creates
    # over three replicas, with Smithery's connection calls slowed to 50 ms: a replica alone
    # counts only the creates already finished, so without a shared lock more than 5 get in.
    sub = "carol" + uuid.uuid4().hex[:8]  # no '-': it separates the policy's id prefix
    auth = {"Authorization": f"Bearer {keys.jwt(sub, email_verified=True)}"}
    slow = {"route": "connections", "mode": "latency", "seconds": 0.05}
    assert (await http.post(f"{fresh_emulator.url}/_emulator/faults", json=slow)).is_success

    async def create(index: int) -> httpx.Response:
        return await http.put(
            f"{replicas[index % 3].url}/v1/connections/my-app/{sub}-{index}",
            json={"mcpUrl": "https://tools.example.com/mcp"},
            headers=auth,
        )

    responses = await asyncio.gather(*(create(index) for index in range(12)))
    statuses = [r.status_code for r in responses]
    assert statuses.count(201) == 5, [(r.status_code, r.text[:80]) for r in responses]
    assert all(
        r.json()["code"] == "connection_limit_reached" for r in responses if r.status_code != 201
    ), [r.text[:120] for r in responses if r.status_code != 201]
    listed = await http.get(
        f"{fresh_emulator.url}/connect/my-app",
        params={"metadata.userId": sub},
        headers={"Authorization": f"Bearer {API_KEY}"},
    )
    assert len(listed.json()["connections"]) == 5
