"""The emulator's pure parts (timestamps, ttl, scope, token codec) and app construction."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from litestar.testing import TestClient

from broker.emulator import create_emulator_app
from broker.emulator.clock import format_timestamp, to_epoch_ms
from broker.emulator.constraint import Constraint, decode_mint_request, parse_ttl_ms
from broker.emulator.errors import InvalidRequestError
from broker.emulator.scope import Action, Scope
from broker.emulator.token import TokenBlock, TokenCodec, TokenInvalidError, TokenPayload

READ_APP = Action("app", "connections", "read")


@pytest.mark.parametrize(
    ("epoch_ms", "text"),
    [
        (0, "1970-01-01T00:00:00.000Z"),
        (1_704_067_200_000, "2024-01-01T00:00:00.000Z"),
        (1_704_067_200_007, "2024-01-01T00:00:00.007Z"),
        (1_709_164_799_999, "2024-02-28T23:59:59.999Z"),
        (253_402_300_799_999, "9999-12-31T23:59:59.999Z"),
    ],
)
def test_format_timestamp(epoch_ms: int, text: str) -> None:
    assert format_timestamp(epoch_ms) == text


def test_to_epoch_ms_rounds_down() -> None:
    assert to_epoch_ms(1.0009) == 1000
    assert to_epoch_ms(1_704_067_200.5) == 1_704_067_200_500


@pytest.mark.parametrize(
    ("ttl", "ttl_ms"),
    [
        (1, 1000),
        (1.1, 1100),
        (0.0005, 1),
        ("1", 1000),
        ("45s", 45_000),
        ("3m", 180_000),
        ("5h", 18_000_000),
        ("1d", 86_400_000),
        (86_400, 86_400_000),
        ("0" * 5000 + "1", 1000),  # leading zeros: more digits than int() reads (was a 500)
    ],
)
def test_parse_ttl(ttl: str | float, ttl_ms: int) -> None:
    assert parse_ttl_ms(ttl, "$.ttl") == ttl_ms


@pytest.mark.parametrize(
    "ttl",
    [0, -1, 86_400.001, "0s", "1.0", "1 h", "1H", "h1", "+5", "1e3", "9" * 5000, "1" + "0" * 6],
)
def test_parse_ttl_rejected(ttl: str | float) -> None:
    with pytest.raises(InvalidRequestError, match=r"at `\$\.ttl`"):
        parse_ttl_ms(ttl, "$.ttl")


def test_mint_request_keeps_raw_policy() -> None:
    request = decode_mint_request(
        b'{"policy": [{"ttl": 90}, {"ttl": "1m"}], "organizationId": "o"}'
    )
    assert request.raw_policy == [{"ttl": 90}, {"ttl": "1m"}]
    assert isinstance(request.raw_policy[0]["ttl"], int)
    assert request.ttl_ms == 60_000
    assert request.organization_id == "o"


def _scope(*blocks: list[dict[str, Any]]) -> Scope:
    return Scope(blocks=tuple(tuple(msgspec.convert(b, list[Constraint])) for b in blocks))


@pytest.mark.parametrize(
    ("blocks", "metadata"),
    [
        pytest.param([], None, id="no_blocks"),
        pytest.param([[]], None, id="empty_block_unrestricted"),
        pytest.param([[], [{"namespaces": "app"}]], None, id="empty_then_restricted"),
        pytest.param([[{"metadata": {"u": "a"}}]], {"u": "a", "x": "y"}, id="metadata_subset"),
        pytest.param(
            [[{"namespaces": "x"}, {"operations": "read"}], [{"resources": "connections"}]],
            None,
            id="or_within_and_across",
        ),
    ],
)
def test_scope_allowed(blocks: list[list[dict[str, Any]]], metadata: Any) -> None:
    assert _scope(*blocks).permits(READ_APP, metadata)


@pytest.mark.parametrize(
    ("blocks", "metadata"),
    [
        pytest.param([[{"namespaces": "app"}], [{"namespaces": "x"}]], None, id="second_block"),
        pytest.param([[{"metadata": {"u": "a"}}]], None, id="metadata_missing"),
        pytest.param([[{"metadata": {"u": "a"}}]], {"u": 1}, id="metadata_not_string"),
        pytest.param(
            [[{"operations": "write"}, {"namespaces": "other"}]], None, id="no_constraint_in_block"
        ),
        pytest.param(
            [
                [
                    {"operations": "read", "metadata": {"u": "b"}},
                    {"operations": "write", "metadata": {"u": "a"}},
                ]
            ],
            {"u": "a"},
            id="fields_combine_inside_one_constraint_only",
        ),
    ],
)
def test_scope_denied(blocks: list[list[dict[str, Any]]], metadata: Any) -> None:
    assert not _scope(*blocks).permits(READ_APP, metadata)


def test_scope_action_check_ignores_metadata() -> None:
    scope = _scope([{"namespaces": "app", "metadata": {"u": "a"}}])
    assert scope.permits_action(READ_APP)
    assert not scope.permits(READ_APP, {"u": "b"})
    assert not scope.permits_action(Action("other", "connections", "read"))


def _payload(**block: Any) -> TokenPayload:
    fields: dict[str, Any] = {"id": "b1", "policy": [], "expires_at_ms": 1, **block}
    return TokenPayload(blocks=[TokenBlock(**fields)])


def test_codec_round_trip() -> None:
    codec = TokenCodec(b"k")
    payload = _payload(policy=[{"namespaces": "app", "ttl": 5}], organization_id="org")
    token = codec.encode(payload)
    assert token.startswith("emu1.")
    assert token.count(".") == 2
    decoded = codec.decode(token)
    assert decoded.payload == payload
    assert decoded.scope.permits_action(READ_APP)
    assert not decoded.scope.permits_action(Action("x", "connections", "read"))


def test_codec_rejects_other_key() -> None:
    token = TokenCodec(b"k1").encode(_payload())
    with pytest.raises(TokenInvalidError):
        TokenCodec(b"k2").decode(token)


def test_codec_rejects_unsigned_payload_even_when_well_formed() -> None:
    codec = TokenCodec(b"k")
    prefix, _, signature = codec.encode(_payload()).split(".")
    _, other_body, _ = codec.encode(_payload(policy=[{}])).split(".")
    with pytest.raises(TokenInvalidError):
        codec.decode(f"{prefix}.{other_body}.{signature}")


def test_codec_refuses_empty_key() -> None:
    with pytest.raises(ValueError, match="signing_key"):
        TokenCodec(b"")


def test_codec_repr_hides_key() -> None:
    assert "secret-bytes" not in repr(TokenCodec(b"secret-bytes"))


@pytest.mark.parametrize("api_key", ["", "emu1.looks-like-a-token"])
def test_unusable_api_key_refused(api_key: str) -> None:
    with pytest.raises(ValueError, match="api_key"):
        create_emulator_app(api_key)


def test_default_api_key_is_dev_api_key() -> None:
    with TestClient(create_emulator_app()) as client:
        headers = {"Authorization": "Bearer dev-api-key"}
        assert client.post("/tokens", headers=headers).status_code == 200
