"""``Admission``'s connection-metadata cache: per caller, and never refilled by a read that a
write overtook. Smithery is a stand-in that counts reads and can hold one back."""

from __future__ import annotations

import asyncio
from typing import Any

from broker.admission import Admission
from broker.identity import Principal
from broker.policy import load_policy_sources
from broker.upstream import Connection

POLICY = b"""
rules:
  - id: own
    when: {claims: {sub: {present: true}}}
    grant:
      namespaces: app
      resources: connections
      operations: execute
      metadata: {userId: "{claims.sub}"}
"""
POLICIES = load_policy_sources([("p.yaml", POLICY)])


class Smithery:
    def __init__(self) -> None:
        self.metadata: dict[str, Any] = {"userId": "alice"}
        self.reads = 0
        self.hold: asyncio.Event | None = None
        self.reading = asyncio.Event()

    async def fetch_connection(self, namespace: str, connection_id: str) -> Connection:
        self.reads += 1
        answer = Connection(namespace, connection_id, dict(self.metadata))
        self.reading.set()
        if self.hold is not None:
            await self.hold.wait()
        return answer


def user(subject: str) -> Principal:
    return Principal("https://idp.test/", subject, {"sub": subject}, 2e9)


def admission(smithery: Smithery) -> Admission:
    return Admission(policy=lambda: POLICIES, upstream=smithery, clock=lambda: 1000.0)  # type: ignore[arg-type]


async def test_each_caller_reads_for_itself_then_from_memory() -> None:
    smithery = Smithery()
    admit = admission(smithery)
    alice, bob = user("alice"), user("bob")
    for principal in (alice, alice, bob, bob):
        target = await admit.target(principal, admit.admit(principal), "app", "c1")
        assert target.metadata == {"userId": "alice"}
    assert smithery.reads == 2  # one per caller: bob's first answer did not come from alice's


async def test_a_write_forgets_every_callers_entry() -> None:
    smithery = Smithery()
    admit = admission(smithery)
    alice, bob = user("alice"), user("bob")
    for principal in (alice, bob):
        await admit.target(principal, admit.admit(principal), "app", "c1")
    smithery.metadata = {"userId": "bob"}
    admit.forget_connection("app", "c1")
    for principal in (alice, bob):
        target = await admit.target(principal, admit.admit(principal), "app", "c1")
        assert target.metadata == {"userId": "bob"}
    assert smithery.reads == 4


async def test_a_read_overtaken_by_a_write_is_used_once_and_not_kept() -> None:
    """The read began before the write and may hold the old metadata: cached, it would stand
    for the whole cache window after the write said to read afresh."""
    smithery = Smithery()
    admit = admission(smithery)
    alice = user("alice")
    smithery.hold = asyncio.Event()
    reading = asyncio.create_task(admit.target(alice, admit.admit(alice), "app", "c1"))
    await smithery.reading.wait()
    smithery.metadata = {"userId": "mallory"}
    admit.forget_connection("app", "c1")  # the write lands while the read is on its way
    smithery.hold.set()
    assert (await reading).metadata == {"userId": "alice"}
    smithery.hold = None
    again = await admit.target(alice, admit.admit(alice), "app", "c1")
    assert again.metadata == {"userId": "mallory"}
    assert smithery.reads == 2
