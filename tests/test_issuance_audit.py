"""``Issuance``'s audit of mints: one ``token.minted`` per token Smithery minted, whoever waits
for it; ``token.issued`` per request served, ``cache_hit`` false only for the one that minted."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from broker.cache import TokenCache
from broker.identity import Principal
from broker.issuance import Issuance
from broker.policy import load_policy_dir
from broker.telemetry import capture_audit
from broker.upstream import MintedToken

POLICIES = load_policy_dir(Path(__file__).parent.parent / "policies")
ALICE = Principal("https://idp.test/", "alice", {"sub": "alice", "email_verified": True}, 2e9)


class Clock:
    now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class GatedSmithery:
    """``mint_token`` that waits for ``gate`` (set by default): 15-minute tokens."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.mints = 0
        self.gate = asyncio.Event()
        self.gate.set()
        self.started = asyncio.Event()

    async def mint_token(self, constraints: Any) -> MintedToken:
        self.mints += 1
        self.started.set()
        await self.gate.wait()
        return MintedToken(f"token-{self.mints}", self.clock() + 900)


def issuance(smithery: GatedSmithery, clock: Clock) -> Issuance:
    return Issuance(
        policy=lambda: POLICIES,
        cache=TokenCache(clock=clock),
        upstream=smithery,  # type: ignore[arg-type]
    )


def records(lines: list[bytes]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in b"".join(lines).splitlines()]


async def test_a_mint_whose_starter_left_is_audited_once_for_those_who_waited() -> None:
    clock = Clock()
    smithery = GatedSmithery(clock)
    smithery.gate.clear()
    broker = issuance(smithery, clock)
    with capture_audit() as lines:
        starter = asyncio.ensure_future(broker.issue(ALICE))
        await smithery.started.wait()
        joiners = [asyncio.ensure_future(broker.issue(ALICE)) for _ in range(2)]
        await asyncio.sleep(0)
        starter.cancel()  # the request that started the mint leaves
        smithery.gate.set()
        served = await asyncio.gather(*joiners)
    assert starter.cancelled()
    assert {s.token for s in served} == {"token-1"}
    events = records(lines)
    assert [e["event"] for e in events] == ["token.minted", "token.issued", "token.issued"]
    assert [e["cache_hit"] for e in events[1:]] == [True, True]
    assert events[0]["digest"] == events[1]["digest"]
    assert smithery.mints == 1


async def test_a_refresh_ahead_is_audited_as_a_mint_and_a_proxy_call_writes_no_issued() -> None:
    clock = Clock()
    smithery = GatedSmithery(clock)
    broker = issuance(smithery, clock)
    with capture_audit() as lines:
        await broker.issue(ALICE, for_proxy=True)
        clock.now += 600  # 300 s of 900 left: served, and the next token minted behind
        assert (await broker.issue(ALICE, for_proxy=True)).token == "token-1"
        await asyncio.gather(*broker.cache._inflight.values())  # the background mint
    assert smithery.mints == 2
    events = records(lines)
    assert [e["event"] for e in events] == ["token.minted", "token.minted"]
    assert events[1]["expires_at"] == clock.now + 900
    assert all("token-" not in json.dumps(e) for e in events)
