"""Strict decoding of request bodies that carry MCP JSON-RPC messages.

The broker checks a message and then forwards the very same bytes to Smithery, which parses them
again with JavaScript's ``JSON.parse``. Two parsers must never see different values, so anything
they could read differently is refused here: duplicate object keys (Python and JavaScript both
keep the last, other parsers the first), ``NaN``/``Infinity`` (not JSON), unpaired UTF-16
surrogate escapes such as ``"\\ud800"`` (JavaScript keeps them, other parsers replace or refuse
them, and no UTF-8 log or trace can hold them), numbers of more digits than Python converts,
batches (current MCP has no batching), nesting deeper than a limit. Each refusal is a
``CallerError`` with a stable code.

Pure: no I/O. It does not decide whether a message is allowed (``precheck.py``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import Any, Final

import msgspec

from broker.errors import CallerError, InvalidJSONError

DEFAULT_MAX_DEPTH: Final = 64
LIFECYCLE_METHODS: Final = frozenset({"initialize", "ping"})
MESSAGE_MEMBERS: Final = frozenset({"jsonrpc", "id", "method", "params"})
"""The members a request or notification may hold. Smithery's ``JsonRpcRequest`` has
``additionalProperties: false``: it refuses a message with any other member (``-32600``), so a
precheck must never call one allowed."""


class DuplicateKeyError(CallerError):
    code = "duplicate_key"
    title = "Duplicate JSON object key"


class TooDeepError(CallerError):
    code = "too_deep"
    title = "JSON nested too deeply"


class BatchNotSupportedError(CallerError):
    code = "batch_not_supported"
    title = "JSON-RPC batches are not supported"


class InvalidMessageError(CallerError):
    code = "invalid_jsonrpc"
    title = "Invalid JSON-RPC message"


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):  # fewer keys than pairs: some key came twice
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKeyError(f"The key {key[:64]!r} appears twice in one object.")
            seen.add(key)
    return result


def _no_constants(name: str) -> Any:
    raise InvalidJSONError(f"{name} is not valid JSON.")


_DECODER: Final = json.JSONDecoder(object_pairs_hook=_unique_keys, parse_constant=_no_constants)
"""Built once: ``json.loads`` with hooks builds a decoder (and its scanner) on every call."""
_ENCODE: Final = msgspec.json.Encoder().encode


def decode_strict(body: bytes, *, max_depth: int = DEFAULT_MAX_DEPTH) -> Any:
    """Parse one JSON document, refusing duplicate keys, NaN/Infinity, unpaired surrogate
    escapes, numbers too long to convert, and deep nesting."""
    try:
        text = body.decode("utf-8")  # strict: UTF-8-encoded surrogates are refused here
    except UnicodeDecodeError:
        raise InvalidJSONError("The body is not UTF-8.") from None
    try:
        value = _DECODER.decode(text)
        # Nesting deeper than max_depth takes more opening brackets than that; counting them
        # (in strings too, which only overcounts) spares the walk for nearly every message.
        too_deep = body.count(b"[") + body.count(b"{") > max_depth and _too_deep(value, max_depth)
    except RecursionError:  # deeper than this interpreter nests: too deep whatever the limit
        too_deep = True
    except json.JSONDecodeError as exc:
        raise InvalidJSONError(f"The body is not valid JSON ({exc.msg} at {exc.pos}).") from None
    except ValueError:  # an integer longer than int() converts (sys.get_int_max_str_digits)
        raise InvalidJSONError(
            f"The body holds a number of more than {sys.get_int_max_str_digits()} digits."
        ) from None
    if too_deep:
        raise TooDeepError(f"JSON may nest at most {max_depth} levels.")
    if "\\u" in text and _holds_surrogate(value):
        raise InvalidJSONError(
            "The body holds an unpaired UTF-16 surrogate escape (such as \\ud800): "
            "every string must be valid Unicode."
        )
    return value


def _holds_surrogate(value: Any) -> bool:
    """Whether a decoded string (key or value) holds a surrogate code point. The decoder joins
    an escaped pair into one character, so one that is left was unpaired; UTF-8 cannot encode
    it, which is the check (in C)."""
    try:
        _ENCODE(value)
    except UnicodeEncodeError:
        return True
    return False


def _too_deep(value: Any, levels: int) -> bool:
    """Whether ``value`` nests objects and arrays more than ``levels`` deep (the outermost one
    is level 1; scalars add none). Recursion is bounded by ``levels``: it stops descending
    there, and the parser already refused what Python could not nest."""
    if isinstance(value, dict):
        children: Any = value.values()
    elif isinstance(value, list):
        children = value
    else:
        return False
    if levels < 1:
        return True
    for child in children:
        if isinstance(child, (dict, list)) and _too_deep(child, levels - 1):
            return True
    return False


def check_message(message: Any) -> Mapping[str, Any]:
    """One JSON-RPC 2.0 request or notification, as MCP sends them and Smithery accepts them
    (no member but ``MESSAGE_MEMBERS``); anything else is refused."""
    if isinstance(message, list):
        raise BatchNotSupportedError("Send one JSON-RPC message per request; batches are refused.")
    if not isinstance(message, dict):
        raise InvalidMessageError("A JSON-RPC message must be a JSON object.")
    if message.get("jsonrpc") != "2.0":
        raise InvalidMessageError('"jsonrpc" must be "2.0".')
    if not isinstance(message.get("method"), str):
        raise InvalidMessageError('"method" must be a string.')
    if "id" in message and not (
        isinstance(message["id"], str)
        or (isinstance(message["id"], int) and not isinstance(message["id"], bool))
    ):
        # MCP narrows JSON-RPC here: a request's id MUST NOT be null (Smithery refuses it too).
        raise InvalidMessageError('"id" must be a string or an integer (never null, in MCP).')
    if message.keys() - MESSAGE_MEMBERS:
        raise InvalidMessageError(_extra_member(message))
    return message


def _extra_member(message: Mapping[str, Any]) -> str:
    """What is wrong, naming the first member that has no place in a request."""
    name = next(key for key in message if key not in MESSAGE_MEMBERS)
    responses = ' ("result" and "error" belong to responses)' if name in ("result", "error") else ""
    return (
        f"The key {name[:64]!r} is not a member of a JSON-RPC request or notification, which holds"
        f' only "jsonrpc", "id", "method" and "params"{responses}.'
    )


def is_notification(message: Mapping[str, Any]) -> bool:
    return "id" not in message


def is_lifecycle(method: str) -> bool:
    """``initialize``, ``ping`` and ``notifications/*``: the messages the lifecycle exemption
    lets through rpcReqMatch (Smithery's own TypeScript client skips ``initialize``)."""
    return method in LIFECYCLE_METHODS or method.startswith("notifications/")
