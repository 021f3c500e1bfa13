"""Following other replicas' revocations (``Revocations.sync``) with a fake shared store: applied
once, memory purged, refusals expire, finished entries dropped from the store."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import pytest

from broker.cache import CachedToken, CacheKey, TokenCache
from broker.identity import Principal
from broker.revocation import AccessRevokedError, Revocations, Scope
from broker.sealing import Keyring

KEYRING = Keyring({"k": os.urandom(32)}, "k", os.urandom(32))


@dataclass
class FakeRevocationStore:
    entries: dict[str, bytes] = field(default_factory=dict)
    seq: int = 0
    dropped: list[str] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)

    async def add_revocation(self, field_name: str, value: bytes) -> int:
        self.calls.append("record")
        self.entries[field_name] = value
        self.seq += 1
        return self.seq

    async def sequence(self) -> int:
        return self.seq

    async def revocations(self) -> dict[str, bytes]:
        return dict(self.entries)

    async def drop_revocations(self, fields: Any) -> None:
        for name in fields:
            self.dropped.append(name)
            self.entries.pop(name, None)


@dataclass
class FakeShared:
    store: FakeRevocationStore
    purges: list[tuple[str | None, str | None]] = field(default_factory=list)

    async def purge(self, subject: str | None, rule: str | None) -> int:
        self.store.calls.append("purge")
        self.purges.append((subject, rule))
        return 0


class Clock:
    now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def principal(subject: str, issuer: str = "https://idp.test/") -> Principal:
    return Principal(issuer=issuer, subject=subject, claims={"sub": subject}, expires_at=2e9)


def replica(shared: FakeShared, clock: Clock) -> tuple[TokenCache, Revocations]:
    cache = TokenCache(clock=clock)
    revocations = Revocations(
        cache=cache,
        clock=clock,
        default_seconds=60,
        namer=KEYRING.name,
        shared=shared,  # type: ignore[arg-type]
    )
    return cache, revocations


def fill(cache: TokenCache, clock: Clock, *subjects: str) -> None:
    for subject in subjects:
        key = CacheKey("https://idp.test/", subject, b"d", "r")
        cache._entries[key] = CachedToken("t-" + subject, clock() + 900, clock())


async def test_other_replica_applies_purges_and_refuses_then_forgets() -> None:
    clock = Clock()
    shared = FakeShared(FakeRevocationStore())
    _, here = replica(shared, clock)
    there_cache, there = replica(shared, clock)
    fill(there_cache, clock, "mallory", "alice")

    await here.revoke(Scope(subject="mallory"), 30)
    assert shared.purges == [("mallory", None)]
    there.check(principal("mallory"))  # not seen yet
    await there.sync()
    assert len(there_cache) == 1  # mallory's token purged, alice's kept
    with pytest.raises(AccessRevokedError):
        there.check(principal("mallory"))
    there.check(principal("alice"))
    assert there.sequence == 2  # moved twice: the entry recorded, then again after the purge

    fill(there_cache, clock, "mallory")
    await there.sync()  # same sequence: nothing re-applied
    assert len(there_cache) == 2

    clock.now += 31
    there.check(principal("mallory"))  # refusal over
    clock.now += 60
    shared.store.seq += 1  # any later change makes replicas re-read the table
    await there.sync()
    assert len(shared.store.dropped) == 1
    assert shared.store.entries == {}


async def test_unreadable_entry_dropped_and_others_applied() -> None:
    clock = Clock()
    shared = FakeShared(FakeRevocationStore())
    _, here = replica(shared, clock)
    _, there = replica(shared, clock)
    await here.revoke(Scope(rule="support-github-readonly"), 30)
    shared.store.entries["garbage"] = b"\xff\xfe"
    await there.sync()
    assert "garbage" in shared.store.dropped
    with pytest.raises(AccessRevokedError):
        there.check(principal("sam"), ["own-connections", "support-github-readonly"])
    there.check(principal("alice"), ["own-connections"])


async def test_revocation_fields_name_no_subject() -> None:
    clock = Clock()
    shared = FakeShared(FakeRevocationStore())
    _, here = replica(shared, clock)
    await here.revoke(Scope(subject="mallory", issuer="https://idp.test/"), 30)
    (name,) = shared.store.entries
    assert "mallory" not in name
    assert "idp.test" not in name
    assert b"mallory" not in shared.store.entries[name]


@dataclass
class RacingShared(FakeShared):
    """While Redis is being purged, ``during`` runs: what other requests and replicas do then."""

    during: list[Any] = field(default_factory=list)

    async def purge(self, subject: str | None, rule: str | None) -> int:
        purged = await super().purge(subject, rule)
        for step in self.during:
            await step()
        return purged


@pytest.mark.parametrize("scope", [Scope(subject="alice"), Scope(rule="own"), Scope()])
async def test_recorded_then_redis_purged_then_recorded_again(scope: Scope) -> None:
    """The record moves the sequence, which refuses the stores of mints that started before
    (a real-Redis race in tests/integration/test_scaleout.py), and tells other replicas at once;
    the second record, after the purge, makes every replica purge its memory again."""
    shared = FakeShared(FakeRevocationStore())
    clock = Clock()
    revocations = Revocations(
        cache=TokenCache(clock=clock), clock=clock, default_seconds=600, shared=shared
    )
    await revocations.revoke(scope, 0)
    assert shared.store.calls == ["record", "purge", "record"]


async def test_the_revoking_replica_drops_a_token_read_back_before_redis_was_purged() -> None:
    """Between its own memory purge and the Redis purge, a request read the old record back
    into memory: with a purge-only revocation, it was then served on and on."""
    clock = Clock()
    shared = RacingShared(FakeRevocationStore())
    cache, here = replica(shared, clock)

    async def read_back() -> None:
        fill(cache, clock, "mallory")

    shared.during.append(read_back)
    await here.revoke(Scope(subject="mallory"), 0)
    assert len(cache) == 0  # was 1


async def test_a_replica_polling_mid_revocation_refuses_then_purges_again() -> None:
    """A replica that polled between a bare sequence move and the record took the new sequence
    without the entry: it went on serving, and stored a token that outlived the revocation."""
    clock = Clock()
    shared = RacingShared(FakeRevocationStore())
    _, here = replica(shared, clock)
    there_cache, there = replica(shared, clock)
    refused: list[bool] = []

    async def there_polls_and_reads_back() -> None:
        await there.sync()
        try:
            there.check(principal("mallory"))
            refused.append(False)
        except AccessRevokedError:
            refused.append(True)
        fill(there_cache, clock, "mallory")  # an old record read back before the Redis purge

    shared.during.append(there_polls_and_reads_back)
    await here.revoke(Scope(subject="mallory"), 30)
    assert refused == [True]
    await there.sync()
    assert len(there_cache) == 0
