"""The node oracle process (``rpc_oracle.py``) and how ``Scope.permits_message`` consults it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import msgspec
import pytest

from broker.emulator.constraint import Constraint
from broker.emulator.rpc_oracle import OracleError, RpcMatchOracle
from broker.emulator.scope import Action, Scope
from broker.rpcmatch import RpcMatcher

EXECUTE = Action("app", "connections", "execute")
SEARCH = json.dumps(
    {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "search_issues"}}
)
CATASTROPHIC_PATTERN = "^(a+)+$"
CATASTROPHIC_BODY = json.dumps({"m": "a" * 40 + "!"})


@pytest.fixture
async def oracle() -> AsyncIterator[RpcMatchOracle]:
    oracle = RpcMatchOracle()
    yield oracle
    await oracle.aclose()


@pytest.mark.parametrize(
    ("rules", "expected"),
    [
        ({"method": "^tools/call$", "params.name": "^search_"}, True),
        ({"method": "^tools/call$", "params.name": "^delete_"}, False),
        ({}, True),
        ({"params.missing": ".*"}, False),
        ({"params": ".*"}, False),
        ({"method": "["}, False),
    ],
    ids=["all-match", "one-fails", "empty", "missing", "object", "invalid-pattern"],
)
async def test_match(oracle: RpcMatchOracle, rules: dict[str, str], expected: bool) -> None:
    assert await oracle.match(rules, SEARCH) is expected


async def test_body_is_parsed_by_javascript(oracle: RpcMatchOracle) -> None:
    # JSON.parse keeps the last duplicate key and reads 1.0 as the number 1.
    body = '{"method": "a", "method": "b", "id": 1.0}'
    assert await oracle.match({"method": "^b$", "id": "^1$"}, body)
    assert not await oracle.match({"method": "^b$"}, "{not json")


async def test_concurrent_requests_answered_in_turn(oracle: RpcMatchOracle) -> None:
    names = [f"tool_{index}" for index in range(30)]
    bodies = [json.dumps({"params": {"name": name}}) for name in names]
    answers = await asyncio.gather(
        *(oracle.match({"params.name": f"^{names[0]}$"}, body) for body in bodies)
    )
    assert answers == [True] + [False] * 29


async def test_runaway_pattern_times_out_and_process_is_replaced() -> None:
    oracle = RpcMatchOracle(match_timeout_seconds=0.5)
    try:
        assert await oracle.match({"m": "^a"}, CATASTROPHIC_BODY)
        stuck = oracle.pid
        with pytest.raises(OracleError, match="longer than"):
            await oracle.match({"m": CATASTROPHIC_PATTERN}, CATASTROPHIC_BODY)
        assert oracle.pid is None
        assert await oracle.match({"m": "!$"}, CATASTROPHIC_BODY)
        assert oracle.pid not in (None, stuck)
    finally:
        await oracle.aclose()


async def test_missing_node_is_an_error_not_a_deny() -> None:
    oracle = RpcMatchOracle(node_executable="/nonexistent/node")
    with pytest.raises(OracleError, match="cannot start"):
        await oracle.match({"method": "."}, SEARCH)


async def test_process_that_exits_is_an_error_after_one_retry() -> None:
    # `true` ignores the script and exits at once: no answer, twice.
    oracle = RpcMatchOracle(node_executable="true")
    with pytest.raises(OracleError, match="exited"):
        await oracle.match({"method": "."}, SEARCH)
    await oracle.aclose()


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        ("garbage", "not JSON"),
        ('{"id": 999, "ok": true}', "out of turn"),
        ('{"id": 1, "error": "bad request"}', "refused"),
    ],
    ids=["not-json", "wrong-id", "refusal"],
)
async def test_off_protocol_answer_is_an_error(tmp_path: Path, answer: str, error: str) -> None:
    # A stand-in for node that reads the request, then answers off-protocol.
    fake_node = tmp_path / "fake-node"
    fake_node.write_text(f"#!/bin/sh\nread line\necho '{answer}'\ncat >/dev/null\n")
    fake_node.chmod(0o755)
    oracle = RpcMatchOracle(node_executable=str(fake_node))
    try:
        with pytest.raises(OracleError, match=error):
            await oracle.match({"method": "."}, SEARCH)
    finally:
        await oracle.aclose()


async def test_aclose_is_idempotent_and_a_later_match_restarts(oracle: RpcMatchOracle) -> None:
    assert await oracle.match({"method": "^tools/"}, SEARCH)
    await oracle.aclose()
    await oracle.aclose()
    assert oracle.pid is None
    assert await oracle.match({"method": "^tools/"}, SEARCH)
    assert oracle.pid is not None


# --- Scope.permits_message: when the matcher is consulted ---------------------------------------


class RecordingMatcher:
    """A stand-in matcher: answers from a table keyed by the rules' patterns, records calls."""

    def __init__(self, answers: dict[str, bool]) -> None:
        self.answers = answers
        self.calls: list[dict[str, str]] = []

    async def __call__(self, rules: Mapping[str, str], body: str) -> bool:
        self.calls.append(dict(rules))
        return all(self.answers[pattern] for pattern in rules.values())


def _scope(*blocks: list[dict[str, object]]) -> Scope:
    return Scope(blocks=tuple(tuple(msgspec.convert(block, list[Constraint])) for block in blocks))


async def test_matcher_not_consulted_without_rpc_match() -> None:
    matcher = RecordingMatcher({})
    assert await _scope([{"operations": "execute"}]).permits_message(EXECUTE, None, "{}", matcher)
    assert matcher.calls == []


async def test_matcher_not_consulted_when_other_fields_deny() -> None:
    matcher = RecordingMatcher({"a": True})
    scope = _scope([{"namespaces": "other", "rpcReqMatch": {"m": "a"}}])
    assert not await scope.permits_message(EXECUTE, None, "{}", matcher)
    scope = _scope([{"metadata": {"userId": "bob"}, "rpcReqMatch": {"m": "a"}}])
    assert not await scope.permits_message(EXECUTE, {"userId": "alice"}, "{}", matcher)
    assert matcher.calls == []


async def test_matcher_stops_at_first_allowing_constraint() -> None:
    matcher = RecordingMatcher({"no": False, "yes": True, "later": True})
    scope = _scope(
        [
            {"rpcReqMatch": {"m": "no"}},
            {"rpcReqMatch": {"m": "yes"}},
            {"rpcReqMatch": {"m": "later"}},
        ]
    )
    assert await scope.permits_message(EXECUTE, None, "{}", matcher)
    assert matcher.calls == [{"m": "no"}, {"m": "yes"}]


async def test_matcher_stops_at_first_denying_block() -> None:
    matcher = RecordingMatcher({"no": False, "yes": True})
    scope = _scope([{"rpcReqMatch": {"m": "no"}}], [], [{"rpcReqMatch": {"m": "yes"}}])
    assert not await scope.permits_message(EXECUTE, None, "{}", matcher)
    assert matcher.calls == [{"m": "no"}]


async def test_skip_rpc_match_keeps_the_other_fields() -> None:
    matcher = RecordingMatcher({"no": False})
    allowed = _scope([{"rpcReqMatch": {"m": "no"}}])
    assert await allowed.permits_message(EXECUTE, None, "{}", matcher, skip_rpc_match=True)
    denied = _scope([{"operations": "read", "rpcReqMatch": {"m": "no"}}])
    assert not await denied.permits_message(EXECUTE, None, "{}", matcher, skip_rpc_match=True)
    assert matcher.calls == []


async def test_matcher_errors_propagate() -> None:
    async def broken(rules: Mapping[str, str], body: str) -> bool:
        raise OracleError("down")

    with pytest.raises(OracleError):
        await _scope([{"rpcReqMatch": {"m": "x"}}]).permits_message(EXECUTE, None, "{}", broken)


@pytest.mark.parametrize("segment", ["0", "1", "01", "00", "1e0", "-1", "+1", " 1", "2"])
async def test_array_indices_read_as_the_broker_reads_them(
    oracle: RpcMatchOracle, segment: str
) -> None:
    """Only a canonical index addresses an element (``["y", "x"]["01"]`` is undefined in
    JavaScript); the emulator read "01" as 1 and allowed what the broker denied."""
    body = {"params": {"arguments": {"ids": ["y", "x"]}}}
    rules = {f"params.arguments.ids.{segment}": "^[xy]$"}
    broker = RpcMatcher.from_mapping(rules).matches(body)
    assert broker is (segment in ("0", "1"))
    assert await oracle.match(rules, json.dumps(body)) is broker
