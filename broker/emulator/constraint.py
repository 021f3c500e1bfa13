"""Smithery's ``Constraint`` and ``CreateTokenRequest`` schemas, and decoding a mint request.

This module validates what a caller sends to ``POST /tokens`` exactly as the OpenAPI describes
it (``reference/smithery-openapi.yml``) and parses ``ttl`` values. It keeps the constraints as the
caller wrote them, because the token must carry its policy as received. It does not decide what a
constraint allows (that is ``scope.py``) and does no I/O.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from broker.emulator.errors import InvalidRequestError

DEFAULT_TTL_SECONDS = 3600
"""Smithery's default token lifetime (CreateTokenRequest: "Default TTL is 1 hour")."""

MAX_TTL_SECONDS = 24 * 3600
"""Smithery's maximum token lifetime (CreateTokenRequest: "Maximum is 24 hours")."""

MAX_RPC_PATH_CHARS = 200
"""The longest ``rpcReqMatch`` key, as JavaScript counts (``String.length``, ``js_length``)."""
MAX_RPC_PATTERN_CHARS = 500
"""The longest ``rpcReqMatch`` pattern, as JavaScript counts."""

Resource = Literal["connections", "servers", "namespaces", "skills"]
Operation = Literal["read", "write", "execute"]
MetadataFilter = dict[str, str]


class Constraint(msgspec.Struct, forbid_unknown_fields=True, frozen=True, omit_defaults=True):
    """One grant (OpenAPI ``Constraint``). An omitted field does not restrict; a list widens."""

    namespaces: str | list[str] | UnsetType = UNSET
    resources: Resource | list[Resource] | UnsetType = UNSET
    operations: Operation | list[Operation] | UnsetType = UNSET
    metadata: MetadataFilter | list[MetadataFilter] | UnsetType = UNSET
    ttl: str | float | UnsetType = UNSET
    rpc_req_match: dict[str, str] | UnsetType = msgspec.field(default=UNSET, name="rpcReqMatch")
    """Key and pattern lengths are checked after decoding (``_check_rpc_req_match``): msgspec's
    ``max_length`` counts code points, not JavaScript's UTF-16 code units."""


class CreateTokenRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The body of ``POST /tokens`` (OpenAPI ``CreateTokenRequest``)."""

    policy: Annotated[list[Constraint], Meta(min_length=1)] | UnsetType = UNSET
    organization_id: str | UnsetType = msgspec.field(default=UNSET, name="organizationId")


@dataclass(frozen=True, slots=True)
class MintRequest:
    """A validated mint request.

    ``raw_policy`` is the policy exactly as the caller sent it (JSON values, e.g. an integer
    ``ttl`` stays an integer); ``constraints`` is the same policy typed. ``ttl_ms`` is the
    smallest explicit ``ttl`` among the constraints, or ``None`` when none has one.
    """

    raw_policy: list[Any]
    constraints: tuple[Constraint, ...]
    ttl_ms: int | None
    organization_id: str | None


# "<digits>" are seconds; "<digits><unit>" uses one of these units. Nothing else (no decimals,
# no spaces, no compound "1h30m"): the OpenAPI documents only these forms.
_TTL_PATTERN = re.compile(r"([0-9]+)([smhd]?)")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_MAX_TTL_DIGITS = 6
"""86400 seconds has 5 digits: a number of more significant digits is over 24 h in any unit."""


def decode_mint_request(body: bytes) -> MintRequest:
    """Validate a ``POST /tokens`` body; an empty body means ``{}``.

    Raises ``InvalidRequestError`` with the JSON path of the first problem found.
    """
    if not body.strip():
        body = b"{}"
    try:
        request = msgspec.json.decode(body, type=CreateTokenRequest)
        raw: Any = msgspec.json.decode(body)
    except msgspec.ValidationError as error:
        raise InvalidRequestError(_with_path(str(error))) from None
    except msgspec.DecodeError as error:
        raise InvalidRequestError(f"Malformed JSON body: {error}") from None

    constraints: tuple[Constraint, ...] = ()
    raw_policy: list[Any] = []
    if not isinstance(request.policy, UnsetType):
        constraints = tuple(request.policy)
        raw_policy = list(raw["policy"])
    for index, constraint in enumerate(constraints):
        if not isinstance(constraint.rpc_req_match, UnsetType):
            _check_rpc_req_match(constraint.rpc_req_match, f"$.policy[{index}].rpcReqMatch")

    ttls_ms = [
        parse_ttl_ms(constraint.ttl, f"$.policy[{index}].ttl")
        for index, constraint in enumerate(constraints)
        if not isinstance(constraint.ttl, UnsetType)
    ]
    return MintRequest(
        raw_policy=raw_policy,
        constraints=constraints,
        # OPEN (SMITHERY-SEMANTICS.md, ttl): with several ttls the earliest expiry wins.
        # Constraints without a ttl do not take part; the 1h default applies only when no
        # constraint has a ttl at all.
        ttl_ms=min(ttls_ms) if ttls_ms else None,
        organization_id=None
        if isinstance(request.organization_id, UnsetType)
        else request.organization_id,
    )


def js_length(text: str) -> int:
    """JavaScript's ``text.length``: UTF-16 code units (ECMA-262, the String type). Smithery's
    schema is zod-generated, and zod's ``max`` compares that, so a character outside the Basic
    Multilingual Plane (an emoji) counts twice."""
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def _check_rpc_req_match(rules: dict[str, str], path: str) -> None:
    """Keys at most ``MAX_RPC_PATH_CHARS`` and patterns at most ``MAX_RPC_PATTERN_CHARS`` long,
    as JavaScript counts (OpenAPI ``maxLength``)."""
    for key, pattern in rules.items():
        if js_length(key) > MAX_RPC_PATH_CHARS:
            raise InvalidRequestError(
                f"Expected a key of at most {MAX_RPC_PATH_CHARS} characters - at `{path}`"
            )
        if js_length(pattern) > MAX_RPC_PATTERN_CHARS:
            raise InvalidRequestError(
                f"Expected a pattern of at most {MAX_RPC_PATTERN_CHARS} characters"
                f" - at `{path}[{key!r}]`"
            )


def parse_ttl_ms(ttl: str | float, path: str) -> int:
    """A constraint ``ttl`` in milliseconds: seconds as a number, or ``"<n>"``/``"<n>s|m|h|d"``.

    It must be above zero and at most 24 hours. OPEN: Smithery's answer above 24h is not
    documented; the emulator refuses it with 400 rather than silently capping it.
    Fractions of a millisecond round up, so any positive ttl lasts at least 1 ms.
    """
    if isinstance(ttl, str):
        match = _TTL_PATTERN.fullmatch(ttl)
        if match is None:
            raise InvalidRequestError(
                f'Invalid ttl {ttl!r}: expected seconds or a duration like "30s", "15m", '
                f'"2h", "1d" - at `{path}`'
            )
        digits = match.group(1).lstrip("0") or "0"
        if len(digits) > _MAX_TTL_DIGITS:  # past 24 h in any unit (and past what int() reads)
            raise InvalidRequestError(
                f"Invalid ttl: must be at most 24 hours ({MAX_TTL_SECONDS} seconds) - at `{path}`"
            )
        seconds: float = int(digits) * _UNIT_SECONDS[match.group(2)]
    else:
        seconds = ttl
    if not math.isfinite(seconds) or seconds <= 0:
        raise InvalidRequestError(f"Invalid ttl {ttl!r}: must be greater than 0 - at `{path}`")
    if seconds > MAX_TTL_SECONDS:
        raise InvalidRequestError(
            f"Invalid ttl {ttl!r}: must be at most 24 hours ({MAX_TTL_SECONDS} seconds)"
            f" - at `{path}`"
        )
    # Round away float noise first (1.1 * 1000 is 1100.0000000000002), then up to whole ms.
    return math.ceil(round(seconds * 1000, 6))


def _with_path(message: str) -> str:
    """msgspec omits the path for errors at the document root; say ``$`` explicitly."""
    return message if " - at `" in message else f"{message} - at `$`"
