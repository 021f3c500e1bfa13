"""Strict JSON-RPC decoding: everything two parsers could read differently is refused."""

from __future__ import annotations

import inspect
import json
import sys
from typing import Any

import pytest

from broker.errors import CallerError
from broker.jsonrpc import check_message, decode_strict, is_lifecycle, is_notification


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b'{"a": 1, "a": 2}', "duplicate_key"),
        (b'{"params": {"name": "x", "name": "y"}}', "duplicate_key"),
        (b'{"a": NaN}', "invalid_json"),
        (b'{"a": Infinity}', "invalid_json"),
        (b'{"a": -Infinity}', "invalid_json"),
        (b"[" * 70 + b"]" * 70, "too_deep"),
        (b"[" * 100_000, "too_deep"),
        (b'{"a": ' * 65 + b"1" + b"}" * 65, "too_deep"),
        (b"\xff\xfe", "invalid_json"),
        (b"{", "invalid_json"),
        (b"", "invalid_json"),
        (b'{"a": 1} {"b": 2}', "invalid_json"),
        (b'{"id": "\\ud800"}', "invalid_json"),  # an unpaired high surrogate escape
        (b'{"a": ["x\\udfff"]}', "invalid_json"),  # an unpaired low one, in an array
        (b'{"\\udc00": 1}', "invalid_json"),  # in a key
        (b'{"a": "\\ude00\\ud83d"}', "invalid_json"),  # a pair in the wrong order
        (b'{"a": "\xed\xa0\x80"}', "invalid_json"),  # a surrogate encoded as UTF-8
        (b'{"n": ' + b"9" * 5000 + b"}", "invalid_json"),  # more digits than int() converts
    ],
)
def test_hostile_json_refused(body: bytes, code: str) -> None:
    with pytest.raises(CallerError) as caught:
        decode_strict(body)
    assert caught.value.code == code
    assert caught.value.status == 400


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"a": "\\ud83d\\ude00"}', {"a": "\U0001f600"}),  # an escaped pair: one character
        (b'{"a": "\\\\ud800"}', {"a": "\\ud800"}),  # an escaped backslash, then text
        (b'{"a": "caf\\u00e9"}', {"a": "caf\u00e9"}),
        (b'{"n": ' + b"9" * 4300 + b"}", {"n": int("9" * 4300)}),  # at the digit limit
    ],
)
def test_escapes_that_are_valid_unicode_pass(body: bytes, expected: Any) -> None:
    assert decode_strict(body) == expected


def test_depth_limit_boundary() -> None:
    assert decode_strict(b"[" * 64 + b"]" * 64) is not None
    with pytest.raises(CallerError):
        decode_strict(b"[" * 65 + b"]" * 65)


def _depth(value: Any) -> int:
    """The nesting depth by definition: a container is one level more than its deepest child."""
    if isinstance(value, dict):
        value = list(value.values())
    if not isinstance(value, list):
        return 0
    return 1 + max((_depth(child) for child in value), default=0)


@pytest.mark.parametrize(
    "document",
    [
        "1",
        "[]",
        "{}",
        '{"a": [1, {"b": []}], "c": 2}',
        '[[[]], [], [[[{"x": [0]}]]], 3]',
        '{"params": {"arguments": {"deep": [[{"k": [[]]}]]}}, "id": 1}',
        '[1, "two", null, [true, [false]]]',
        '{"a": "[[[[{{{{", "b": [["]]]]}}"]]}',  # brackets in strings nest nothing
    ],
)
def test_depth_limit_counts_the_deepest_branch(document: str) -> None:
    value = json.loads(document)
    depth = _depth(value)
    for limit in range(depth + 2):
        if depth > limit:
            with pytest.raises(CallerError) as caught:
                decode_strict(document.encode(), max_depth=limit)
            assert caught.value.code == "too_deep"
        else:
            assert decode_strict(document.encode(), max_depth=limit) == value


def test_a_document_deeper_than_python_can_parse_is_too_deep_not_a_crash() -> None:
    with pytest.raises(CallerError) as caught:
        decode_strict(b"[" * 100_000 + b"]" * 100_000, max_depth=64)
    assert caught.value.code == "too_deep"


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ([{"jsonrpc": "2.0", "id": 1, "method": "ping"}], "batch_not_supported"),
        ("ping", "invalid_jsonrpc"),
        ({"id": 1, "method": "ping"}, "invalid_jsonrpc"),
        ({"jsonrpc": "1.0", "id": 1, "method": "ping"}, "invalid_jsonrpc"),
        ({"jsonrpc": "2.0", "id": 1, "method": 7}, "invalid_jsonrpc"),
        ({"jsonrpc": "2.0", "id": 1, "result": {}}, "invalid_jsonrpc"),
        ({"jsonrpc": "2.0", "id": 1.5, "method": "ping"}, "invalid_jsonrpc"),
        ({"jsonrpc": "2.0", "id": None, "method": "ping"}, "invalid_jsonrpc"),  # MCP: not null
        ({"jsonrpc": "2.0", "id": True, "method": "ping"}, "invalid_jsonrpc"),
        ({"jsonrpc": "2.0", "id": {"a": 1}, "method": "ping"}, "invalid_jsonrpc"),
    ],
)
def test_invalid_messages_refused(message: Any, code: str) -> None:
    with pytest.raises(CallerError) as caught:
        check_message(message)
    assert caught.value.code == code


@pytest.mark.parametrize(
    ("message", "named"),
    [
        ({"jsonrpc": "2.0", "id": 1, "method": "ping", "result": {}}, "'result'"),
        ({"jsonrpc": "2.0", "id": 1, "method": "ping", "error": {}}, "'error'"),
        ({"jsonrpc": "2.0", "method": "notifications/initialized", "foo": 1}, "'foo'"),
        ({"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {}, "Params": {}}, "'Params'"),
    ],
)
def test_members_smithery_refuses_are_refused(message: dict[str, Any], named: str) -> None:
    """Smithery's ``JsonRpcRequest`` has ``additionalProperties: false``: a precheck must not
    call allowed what Smithery answers ``-32600`` to."""
    with pytest.raises(CallerError) as caught:
        check_message(message)
    assert caught.value.code == "invalid_jsonrpc"
    assert named in caught.value.detail
    assert ("belong to responses" in caught.value.detail) == (named in ("'result'", "'error'"))


def test_valid_messages_pass() -> None:
    request = check_message({"jsonrpc": "2.0", "id": "a", "method": "tools/list", "params": {}})
    note = check_message({"jsonrpc": "2.0", "method": "notifications/initialized"})
    assert not is_notification(request)
    assert is_notification(note)
    assert is_lifecycle("initialize")
    assert is_lifecycle("notifications/cancelled")
    assert not is_lifecycle("tools/list")


@pytest.mark.parametrize("depth", [100, 110, 120, 130, 140])
def test_running_out_of_interpreter_stack_is_too_deep_not_a_crash(depth: int) -> None:
    # A low recursion limit makes the parser or the depth check run out of stack near the
    # limit, whichever comes first: both are too_deep, never a RecursionError (a 500).
    body = b"[" * depth + b"]" * depth
    previous = sys.getrecursionlimit()
    sys.setrecursionlimit(len(inspect.stack()) + 120)
    try:
        outcome = decode_strict(body, max_depth=512)
    except CallerError as exc:
        outcome = exc.code
    finally:
        sys.setrecursionlimit(previous)
    assert outcome == "too_deep" or _depth(outcome) == depth
