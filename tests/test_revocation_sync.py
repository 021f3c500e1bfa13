"""Following other replicas' revocations (``Revocations.sync``) with a fake shared store: applied
once, memory purged, refusals expire, finished entries dropped from the store; what the 503 says
when Redis fails midway. Then replicas sharing a real ``redis-server``: a shorter revocation
never lifts a longer one, and a sync never drops a revocation recorded while it ran."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from broker.cache import CachedToken, CacheKey, TokenCache
from broker.config import RedisSettings, Secret
from broker.identity import Principal
from broker.metrics import Metrics
from broker.revocation import (
    AccessRevokedError,
    Revocations,
    Scope,
    SharedRevocationError,
)
from broker.sealing import Keyring
from broker.sharedcache import SharedCache
from broker.sharedstore import SharedStore, SharedStoreDown
from tests.redis_server import RedisServer

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

    async def drop_revocations(self, entries: Mapping[str, bytes]) -> None:
        for name, value in entries.items():
            if self.entries.get(name) == value:
                self.dropped.append(name)
                del self.entries[name]


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


@dataclass
class FailingStore(FakeRevocationStore):
    """Redis fails at one of the revocation's shared steps."""

    fail_at: str = ""

    async def add_revocation(self, field_name: str, value: bytes) -> int:
        step = "record again" if "purge" in self.calls else "record"
        if step == self.fail_at:
            raise SharedStoreDown
        return await super().add_revocation(field_name, value)


@dataclass
class FailingShared(FakeShared):
    async def purge(self, subject: str | None, rule: str | None) -> int:
        if self.store.fail_at == "purge":  # type: ignore[attr-defined]
            raise SharedStoreDown
        return await super().purge(subject, rule)


@pytest.mark.parametrize(
    ("fail_at", "says"),
    [
        ("record", "the other replicas may not apply it"),
        ("purge", "recorded in Redis (the other replicas apply it too)"),
        ("record again", "the tokens stored there purged"),
    ],
)
async def test_the_503_says_which_shared_steps_were_done(fail_at: str, says: str) -> None:
    """It said "Revoked on this replica only" whenever any step failed, also once the entry was
    in Redis and every replica refused (or when only the reply was lost): operators were told
    the opposite of what happened."""
    shared = FailingShared(FailingStore(fail_at=fail_at))
    _, here = replica(shared, Clock())
    with pytest.raises(SharedRevocationError) as raised:
        await here.revoke(Scope(subject="mallory"), 30)
    assert says in raised.value.detail
    assert "only" not in raised.value.detail
    with pytest.raises(AccessRevokedError):
        here.check(principal("mallory"))  # applied here whatever Redis did


# --- replicas sharing a real redis-server -----------------------------------------------------


class Replicas:
    """Replicas of one broker on the same Redis; each has its own store, memory and clock."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.stores: list[SharedStore] = []

    def start(self, clock: Any = time.time) -> Revocations:
        store = SharedStore(
            RedisSettings(retry_seconds=0.05, timeout_seconds=5.0),
            Secret(self.url),
            clock=time.monotonic,
            metrics=Metrics(),
        )
        self.stores.append(store)
        cache = TokenCache(clock=clock)
        shared = SharedCache(
            store,
            KEYRING,
            cache,
            clock=clock,
            monotonic=time.monotonic,
            lock_seconds=10,
            lock_wait_seconds=2,
        )
        revocations = Revocations(
            cache=cache, clock=clock, default_seconds=900, namer=KEYRING.name, shared=shared
        )
        shared.sequence = lambda: revocations.sequence
        return revocations


@pytest.fixture
async def replicas(redis_server: RedisServer) -> AsyncIterator[Replicas]:
    started = Replicas(redis_server.url)
    yield started
    for store in started.stores:
        await store.aclose()


def refuses(revocations: Revocations, who: Principal, rules: tuple[str, ...] = ()) -> bool:
    try:
        revocations.check(who, rules)
    except AccessRevokedError:
        return True
    return False


@pytest.mark.integration
async def test_a_purge_only_revocation_does_not_lift_a_longer_one(replicas: Replicas) -> None:
    """The later entry overwrote the earlier one in Redis: after a 900 s revocation and then a
    purge-only one for the same user, a replica that started afterwards served the user."""
    here = replicas.start()
    first = await here.revoke(Scope(subject="mallory"), 900)
    second = await here.revoke(Scope(subject="mallory"), 0)
    assert second.until == first.until  # what the operator is told is what holds
    assert refuses(here, principal("mallory"))
    started_later = replicas.start()
    await started_later.sync()
    assert refuses(started_later, principal("mallory"))
    assert not refuses(started_later, principal("alice"))


@pytest.mark.integration
async def test_a_replica_revoking_briefly_before_syncing_takes_the_longer_period(
    replicas: Replicas,
) -> None:
    """A replica that had not yet seen a 900 s revocation revokes the same user briefly: Redis
    keeps the longer period, and that replica refuses for it too once it syncs."""
    there, here = replicas.start(), replicas.start()
    await there.revoke(Scope(subject="mallory"), 900)
    await here.revoke(Scope(subject="mallory"), 0)
    assert not refuses(here, principal("mallory"))  # not synced yet
    await here.sync()
    assert refuses(here, principal("mallory"))


@pytest.mark.integration
async def test_a_revocation_recorded_during_a_sync_is_not_dropped(
    replicas: Replicas, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replica X read an old, finished entry for a rule and dropped the field by name: the same
    rule, revoked again between X's read and its drop, was deleted from Redis, and no other
    replica ever refused it."""
    later = Clock()
    later.now = time.time() + 3600  # X's clock: the old entry is long finished
    revoker, x = replicas.start(), replicas.start(later)
    await revoker.revoke(Scope(rule="some-rule"), 0)  # finished for X
    store_x = replicas.stores[1]
    read = store_x.revocations

    async def read_then_revoked_again() -> dict[str, bytes]:
        entries = await read()
        await revoker.revoke(Scope(rule="some-rule"), 900)
        return entries

    monkeypatch.setattr(store_x, "revocations", read_then_revoked_again)
    await x.sync()
    monkeypatch.undo()
    third = replicas.start()
    await third.sync()
    assert refuses(third, principal("sam"), ("some-rule",))
