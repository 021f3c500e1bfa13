"""A bounded soak: mixed users and endpoints against a real broker and emulator for
``SOAK_SECONDS`` (default 60) while Smithery faults are switched on and off. Zero 5xx, and the
broker's resident memory stays bounded (before/after printed for the record)."""

from __future__ import annotations

import asyncio
import os
import random
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import Keys, Process

pytestmark = pytest.mark.integration
SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "60"))
WORKERS = 16
USERS = 200
MAX_RSS_GROWTH_BYTES = 64 * 1024 * 1024


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def test_soak_with_faults_switched_on_and_off(
    start_broker: Any, emulator: Process, keys: Keys
) -> None:
    broker = start_broker(
        emulator.url,
        BROKER_SMITHERY_RETRY_BASE_DELAY_SECONDS="0.05",
        BROKER_SMITHERY_RETRY_MAX_DELAY_SECONDS="0.2",
    )
    rng = random.Random(20261121)
    jwts = [
        keys.jwt(f"soak-{i}", email_verified=True, groups=["support"] if i % 5 == 0 else [])
        for i in range(USERS)
    ]
    statuses: dict[int, int] = {}
    async with httpx.AsyncClient(
        timeout=30, trust_env=False, limits=httpx.Limits(max_connections=WORKERS * 2)
    ) as http:
        await http.post(f"{emulator.url}/_emulator/reset")
        for jwt in jwts[:20]:  # warm up, then measure memory from a steady state
            await http.post(f"{broker.url}/v1/tokens", headers={"Authorization": f"Bearer {jwt}"})
        before = rss_bytes(broker.popen.pid)
        stop_at = time.monotonic() + SOAK_SECONDS

        async def worker() -> None:
            while time.monotonic() < stop_at:
                headers = {"Authorization": f"Bearer {rng.choice(jwts)}"}
                if rng.random() < 0.7:
                    response = await http.post(f"{broker.url}/v1/tokens", headers=headers)
                else:
                    response = await http.post(
                        f"{broker.url}/v1/precheck",
                        headers=headers,
                        json={
                            "namespace": "my-app",
                            "metadata": {"connectionId": "support-github"},
                            "request": {
                                "jsonrpc": "2.0",
                                "id": 1,
                                "method": "tools/call",
                                "params": {"name": rng.choice(["get_issue", "delete"])},
                            },
                        },
                    )
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

        async def toggle_faults() -> None:
            modes = [
                {"mode": "latency", "seconds": 0.2},
                {"mode": "status", "status": 503, "count": 1},
                {"mode": "none"},
            ]
            index = 0
            while time.monotonic() < stop_at:
                fault = {"route": "tokens", **modes[index % len(modes)]}
                await http.post(f"{emulator.url}/_emulator/faults", json=fault)
                index += 1
                await asyncio.sleep(min(2.0, max(0.0, stop_at - time.monotonic())))

        await asyncio.gather(*(worker() for _ in range(WORKERS)), toggle_faults())
        await http.post(f"{emulator.url}/_emulator/reset")
        after = rss_bytes(broker.popen.pid)
    print(
        f"soak: {sum(statuses.values())} requests, statuses {statuses}, "
        f"RSS {before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB"
    )
    assert statuses
    assert not [code for code in statuses if code >= 500], statuses
    assert set(statuses) <= {200, 429}
    assert after - before < MAX_RSS_GROWTH_BYTES
