"""Hot reload never loses the last good policy set, nor serves an old revision after a swap."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from broker.app import create_app
from broker.config import AuthSettings, PoliciesSettings, Secret, Settings, SmitherySettings
from broker.policy import PolicySet, load_policy_dir
from broker.reload import PolicyReloader, fingerprint_dir
from broker.telemetry import Telemetry
from tests.inprocess import API_KEY, ROOT, SIGNER, Harness, harness

OWN = ROOT / "policies" / "per-user-connections.yaml"


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[tuple[Harness, Path]]:
    directory = tmp_path / "policies"
    directory.mkdir()
    shutil.copy(OWN, directory / "own.yaml")
    async with harness(policies=directory) as h:
        yield h, directory


def variant(ttl_minutes: int) -> str:
    return OWN.read_text().replace("ttl: 15m", f"ttl: {ttl_minutes}m")


async def test_valid_change_is_served_after_reload(broker: tuple[Harness, Path]) -> None:
    h, directory = broker
    before = h.state.policy_set.revision
    (directory / "own.yaml").write_text(variant(10))
    assert await h.state.reloader.reload()
    assert h.state.policy_set.revision != before
    response = await h.client.post("/v1/tokens", headers=h.auth("alice", email_verified=True))
    assert response.json()["policyRevision"] == h.state.policy_set.revision
    ready = await h.client.get("/readyz")
    assert ready.json()["policyRevision"] == h.state.policy_set.revision
    assert ready.json()["lastReloadError"] is None


@pytest.mark.parametrize(
    "breakage",
    ["syntax", "invalid-regex", "deleted-directory", "empty-directory"],
)
async def test_broken_policies_leave_last_good_set_serving(
    broker: tuple[Harness, Path], breakage: str
) -> None:
    h, directory = broker
    good = h.state.policy_set.revision
    if breakage == "syntax":
        (directory / "own.yaml").write_text("rules: [\n")
    elif breakage == "invalid-regex":
        (directory / "own.yaml").write_text(
            variant(15).replace("ttl: 15m", "ttl: 15m\n      rpcReqMatch: {method: '(tools'}")
        )
    elif breakage == "deleted-directory":
        shutil.rmtree(directory)
    else:
        (directory / "own.yaml").unlink()
    assert not await h.state.reloader.reload()
    assert h.state.policy_set.revision == good
    assert h.state.reloader.failures == 1
    response = await h.client.post("/v1/tokens", headers=h.auth("alice", email_verified=True))
    assert response.status_code == 200
    assert response.json()["policyRevision"] == good
    ready = await h.client.get("/readyz")
    assert ready.status_code == 200
    error = ready.json()["lastReloadError"]
    assert error.endswith("problem(s) in the policy files; details in the log")
    assert str(directory) not in error  # unauthenticated: no paths, rules or claims


async def test_reload_under_load_never_fails_a_request(broker: tuple[Harness, Path]) -> None:
    h, directory = broker
    valid = {h.state.policy_set.revision}
    headers = [h.auth(f"user-{i}", email_verified=True) for i in range(200)]

    async def swap_ten_times() -> None:
        for round_number in range(10):
            if round_number % 2 == 0:
                (directory / "own.yaml").write_text(variant(5 + round_number))
                assert await h.state.reloader.reload()
                valid.add(h.state.policy_set.revision)
            else:
                (directory / "own.yaml").write_text("rules: {broken")
                assert not await h.state.reloader.reload()
            await asyncio.sleep(0)  # let requests interleave with the swaps

    requests = [h.client.post("/v1/tokens", headers=header) for header in headers]
    *responses, _ = await asyncio.gather(*requests, swap_ten_times())
    assert {r.status_code for r in responses} == {200}
    assert {r.json()["policyRevision"] for r in responses} <= valid
    (directory / "own.yaml").write_text(variant(7))
    assert await h.state.reloader.reload()
    final = h.state.policy_set.revision
    after = await h.client.post("/v1/tokens", headers=headers[0])
    assert after.json()["policyRevision"] == final


async def test_old_revision_token_not_served_after_swap(broker: tuple[Harness, Path]) -> None:
    h, directory = broker
    auth = h.auth("alice", email_verified=True)
    first = (await h.client.post("/v1/tokens", headers=auth)).json()
    (directory / "own.yaml").write_text(variant(12))
    assert await h.state.reloader.reload()
    second = (await h.client.post("/v1/tokens", headers=auth)).json()
    assert second["policyRevision"] != first["policyRevision"]
    assert second["token"] != first["token"]


async def test_watch_detects_changes_and_configmap_symlink_swaps(tmp_path: Path) -> None:
    # Kubernetes mounts a ConfigMap as name -> ..data/name, with ..data -> ..<timestamp>.
    mount = tmp_path / "mount"
    first, second = mount / "..2026_01", mount / "..2026_02"
    first.mkdir(parents=True)
    second.mkdir()
    shutil.copy(OWN, first / "own.yaml")
    (second / "own.yaml").write_text(variant(9))
    (mount / "..data").symlink_to(first.name)
    (mount / "own.yaml").symlink_to("..data/own.yaml")
    before = fingerprint_dir(str(mount))
    (mount / "..data_tmp").symlink_to(second.name)
    (mount / "..data_tmp").replace(mount / "..data")
    assert fingerprint_dir(str(mount)) != before


async def test_claims_two_issuers_share_are_warned_at_start_and_after_a_reload(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Only the running broker knows its issuers: the dev signer's and a configured one here."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [{**jwk, "kid": "k1"}]}))
    directory = tmp_path / "policies"
    directory.mkdir()
    support = ROOT / "policies" / "support-readonly.yaml"
    shutil.copy(support, directory / "rules.yaml")  # literal metadata: nothing to warn
    settings = Settings(
        policies=PoliciesSettings(dir=str(directory)),
        smithery=SmitherySettings(base_url="http://emulator", api_key=Secret(API_KEY)),
        auth=AuthSettings(issuer="https://other.example/", audience=("x",), jwks_file=str(jwks)),
    )
    with caplog.at_level(logging.WARNING, logger="broker"):
        app = create_app(settings, dev_signer=SIGNER, telemetry=Telemetry())
        assert "policy warning" not in caplog.text
        shutil.copy(OWN, directory / "rules.yaml")
        assert await app.state.broker.reloader.reload()
    assert "own-connections" in caplog.text
    assert "applies to tokens of 2 issuers" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="broker"):
        create_app(settings, dev_signer=SIGNER, telemetry=Telemetry())
    assert "policy warning: " in caplog.text
    assert "users of two issuers with the same claim value share these connections" in caplog.text


async def test_a_date_in_a_condition_is_a_refused_set_not_a_dead_watch(
    broker: tuple[Harness, Path],
) -> None:
    """YAML 1.1 read the date as a date, which the loader did not expect (an AssertionError):
    the reload task died, and no later change, removals of access included, was ever applied."""
    h, directory = broker
    good = h.state.policy_set.revision
    (directory / "zz-dated.yaml").write_text(
        "rules:\n  - id: dated\n    when: {claims: {start: 2024-01-01}}\n"
        "    grant: {namespaces: my-app}\n"
    )
    assert not await h.state.reloader.reload()
    assert h.state.policy_set.revision == good
    assert h.state.reloader.last_error.startswith("1 problem(s)")


async def test_an_unexpected_loader_failure_keeps_the_last_good_set(
    broker: tuple[Harness, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    h, directory = broker
    good = h.state.policy_set.revision

    def broken(_: str) -> None:
        raise RuntimeError("a bug in the loader")

    monkeypatch.setattr("broker.reload.load_policy_dir", broken)
    (directory / "own.yaml").write_text(variant(10))
    assert not await h.state.reloader.reload()
    assert h.state.policy_set.revision == good
    assert h.state.reloader.last_error == "the policy files could not be loaded (RuntimeError)"
    monkeypatch.undo()
    assert await h.state.reloader.reload()  # fixed: the next look applies the change
    assert h.state.policy_set.revision != good


class Served:
    """What a reloader swaps in, recorded: the watch's tests drive ``check`` by hand."""

    def __init__(self, directory: Path) -> None:
        self.current = load_policy_dir(directory)
        self.applied: list[str] = []

    def apply(self, new: PolicySet) -> None:
        self.current = new
        self.applied.append(new.revision)

    def reloader(self, directory: Path) -> PolicyReloader:
        return PolicyReloader(str(directory), lambda: self.current, self.apply, interval_seconds=0)


def own_directory(tmp_path: Path) -> Path:
    directory = tmp_path / "policies"
    directory.mkdir()
    shutil.copy(OWN, directory / "own.yaml")
    return directory


def watched(tmp_path: Path) -> tuple[Path, Served, PolicyReloader]:
    """A directory with the shipped per-user policy, what is served from it, and its watch."""
    directory = own_directory(tmp_path)
    served = Served(directory)
    return directory, served, served.reloader(directory)


async def test_a_half_written_file_is_never_applied(tmp_path: Path) -> None:
    """Cut before its metadata, the rule is valid and grants every connection in my-app."""
    directory, served, reloader = watched(tmp_path)
    await reloader.start()
    complete = variant(10)
    cut = complete.index("      metadata:")
    file = directory / "own.yaml"
    file.write_text(complete[:cut])
    assert load_policy_dir(directory).rules[0].grant.metadata is None  # a valid, wider policy
    await reloader.check()  # the writer may still be at work
    with file.open("a") as rest:
        rest.write(complete[cut:])
    await reloader.check()  # it was: the files changed again since the last look
    assert served.applied == []
    await reloader.check()  # unchanged for an interval: applied
    assert served.applied == [load_policy_dir(directory).revision]
    assert served.current.rules[0].grant.metadata is not None


async def test_files_changed_while_being_read_are_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory, served, reloader = watched(tmp_path)
    file = directory / "own.yaml"
    file.write_text(variant(10))

    def read_then_overwritten(path: str) -> PolicySet:
        policy_set = load_policy_dir(path)
        file.write_text(variant(11))
        return policy_set

    monkeypatch.setattr("broker.reload.load_policy_dir", read_then_overwritten)
    assert not await reloader.reload()
    assert (served.applied, reloader.failures, reloader.last_error) == ([], 0, None)
    monkeypatch.undo()
    await reloader.check()
    await reloader.check()
    assert served.applied == [load_policy_dir(directory).revision]
    assert served.current.rules[0].grant.ttl_seconds == 11 * 60


async def test_a_change_between_loading_and_starting_is_applied(tmp_path: Path) -> None:
    """The served set was read before the app was built; the watch starts later."""
    directory = own_directory(tmp_path)
    served = Served(directory)
    (directory / "own.yaml").write_text(variant(10))
    reloader = served.reloader(directory)
    await reloader.start()
    await reloader.check()
    await reloader.check()
    assert served.applied == [load_policy_dir(directory).revision]


async def test_a_same_size_rewrite_that_keeps_its_mtime_is_seen(tmp_path: Path) -> None:
    """``cp -p``, ``rsync -t``, archives with fixed dates."""
    directory = own_directory(tmp_path)
    file = directory / "own.yaml"
    before = fingerprint_dir(str(directory))
    times = file.stat()
    file.write_text(variant(16))  # "15m" -> "16m": the same size
    os.utime(file, ns=(times.st_atime_ns, times.st_mtime_ns))
    assert file.stat().st_size == times.st_size
    assert fingerprint_dir(str(directory)) != before


async def test_sighup_reloads_and_signals_during_a_reload_are_answered_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, _, reloader = watched(tmp_path)
    reasons: list[str] = []
    entered = asyncio.Event()
    release = asyncio.Event()

    async def held_reload(self: PolicyReloader, reason: str = "requested") -> bool:
        reasons.append(reason)
        entered.set()
        await release.wait()
        return True

    monkeypatch.setattr(PolicyReloader, "reload", held_reload)
    await reloader.start()
    try:
        os.kill(os.getpid(), signal.SIGHUP)
        await entered.wait()  # the signal handler started a reload
        for _ in range(3):
            reloader._on_hangup()  # more signals while it runs
        release.set()
        assert reloader._hangup is not None
        await reloader._hangup
        assert reasons == ["SIGHUP", "SIGHUP"]
    finally:
        await reloader.stop()


async def test_a_write_between_the_last_look_and_the_read_is_not_applied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The files stood still for an interval, then a writer truncated one and wrote half of it
    just before the reload read them: that half must not be what the stillness vouched for."""
    directory, served, reloader = watched(tmp_path)
    await reloader.start()
    file = directory / "own.yaml"
    file.write_text(variant(12))
    await reloader.check()  # the change is seen
    complete = variant(11)
    half = complete[: complete.index("      metadata:")]
    looks = 0

    def writer_starts_after_the_look(path: str) -> tuple[Any, ...]:
        nonlocal looks
        looks += 1
        if looks == 2:  # after the watch's look, before the reload reads
            file.write_text(half)
        return fingerprint_dir(path)

    monkeypatch.setattr("broker.reload.fingerprint_dir", writer_starts_after_the_look)
    await reloader.check()  # the files stood still: reload, but they changed since
    monkeypatch.undo()
    assert served.applied == []
    file.write_text(complete)
    await reloader.check()
    await reloader.check()
    assert served.applied == [load_policy_dir(directory).revision]
    assert served.current.rules[0].grant.metadata is not None


async def test_files_rewritten_alike_are_not_parsed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watch's first looks after start, a touch, a sync that rewrites the same bytes: the
    revision is read from the files' hashes, and the set is not loaded a second time."""
    directory, served, reloader = watched(tmp_path)
    file = directory / "own.yaml"
    file.write_bytes(file.read_bytes())

    def parse(_: str) -> PolicySet:
        raise AssertionError("parsed again")

    monkeypatch.setattr("broker.reload.load_policy_dir", parse)
    await reloader.start()
    await reloader.check()
    await reloader.check()
    assert (served.applied, reloader.failures, reloader.last_error) == ([], 0, None)
    assert await reloader.reload()
