"""Sealed records: AES-GCM round trip, key ids and rotation, tampering, names, keyring files."""

from __future__ import annotations

import base64
import os

import pytest

from broker.errors import ConfigError
from broker.sealing import Keyring, SealError, load_keyring

OLD, NEW, NAMING = os.urandom(32), os.urandom(32), os.urandom(32)


def keyring(active: str = "new", **keys: bytes) -> Keyring:
    return Keyring(keys or {"old": OLD, "new": NEW}, active, NAMING)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_round_trip() -> None:
    ring = keyring()
    sealed = ring.seal("name-1", b"service-token-abc")
    assert b"service-token-abc" not in sealed
    assert ring.open("name-1", sealed) == b"service-token-abc"


def test_nonces_differ_per_record() -> None:
    ring = keyring()
    assert ring.seal("n", b"same") != ring.seal("n", b"same")


def test_record_moved_to_another_name_rejected() -> None:
    ring = keyring()
    sealed = ring.seal("alice-record", b"alice's token")
    with pytest.raises(SealError) as caught:
        ring.open("mallory-record", sealed)
    assert caught.value.reason == "tampered"


@pytest.mark.parametrize("position", [-1, -17, 20])
def test_tampered_record_rejected(position: int) -> None:
    ring = keyring()
    sealed = bytearray(ring.seal("n", b"token"))
    sealed[position] ^= 0x01
    with pytest.raises(SealError) as caught:
        ring.open("n", bytes(sealed))
    assert caught.value.reason in ("tampered", "malformed")


def test_relabelled_key_id_rejected() -> None:
    """A record sealed under one key and relabelled with another id fails to open, even when
    the keyring holds a key under that id."""
    ring = keyring()
    sealed = ring.seal("n", b"token")
    relabelled = sealed.replace(b"\xa3new", b"\xa3old")
    assert relabelled != sealed
    with pytest.raises(SealError) as caught:
        ring.open("n", relabelled)
    assert caught.value.reason == "tampered"


def test_unknown_key_id_rejected() -> None:
    sealed = keyring("other", other=os.urandom(32)).seal("n", b"token")
    with pytest.raises(SealError) as caught:
        keyring().open("n", sealed)
    assert caught.value.reason == "unknown_key"


@pytest.mark.parametrize(
    "garbage", [b"", b"\x00", b"not msgpack at all", b"\x94\x02\xa1k\xc4\x00\xc4\x00"]
)
def test_malformed_record_rejected(garbage: bytes) -> None:
    with pytest.raises(SealError) as caught:
        keyring().open("n", garbage)
    assert caught.value.reason == "malformed"


def test_rotation_old_records_still_open_new_ones_use_the_new_key() -> None:
    before = Keyring({"old": OLD}, "old", NAMING)
    during = Keyring({"old": OLD, "new": NEW}, "new", NAMING)
    after = Keyring({"new": NEW}, "new", NAMING)
    old_record = before.seal("n", b"old token")
    assert during.open("n", old_record) == b"old token"
    new_record = during.seal("n", b"new token")
    assert after.open("n", new_record) == b"new token"
    with pytest.raises(SealError):
        before.open("n", new_record)  # a replica not yet given the new key: a miss
    assert before.name("token", "a") == after.name("token", "a")  # names survive rotation


def test_names_are_keyed_separated_and_unambiguous() -> None:
    ring = keyring()
    assert ring.name("token", "ab", "c") != ring.name("token", "a", "bc")
    assert ring.name("token", "a") != ring.name("rate", "a")
    assert ring.name("token", "a") != Keyring({"k": OLD}, "k", os.urandom(32)).name("token", "a")
    assert len(ring.name("token", "alice")) == 64
    assert "alice" not in ring.name("token", "alice")


def test_repr_shows_no_key_material() -> None:
    text = repr(keyring())
    assert b64(OLD) not in text
    assert b64(NEW) not in text
    assert OLD.hex() not in text
    assert "new" in text


def test_load_keyring_from_yaml() -> None:
    ring = load_keyring(
        f"active: new\nkeys:\n  new: {b64(NEW)}\n  old: {b64(OLD)}\nnaming_key: {b64(NAMING)}\n"
    )
    assert ring.active_key_id == "new"
    assert ring.open("n", keyring().seal("n", b"x")) == b"x"


def test_load_keyring_lists_every_problem_without_key_values() -> None:
    short = b64(os.urandom(16))
    with pytest.raises(ConfigError) as caught:
        load_keyring(
            f"active: missing\nkeys:\n  short: {short}\n  'bad id!': {b64(NEW)}\n"
            "naming_key: not-base64!\n"
        )
    problems = "\n".join(caught.value.problems)
    assert "key 'short' must be base64 of 32 bytes" in problems
    assert "the id of key #2 must match" in problems
    assert "active key id 'missing'" in problems
    assert "naming_key" in problems
    assert short not in problems
    assert b64(NEW) not in problems


@pytest.mark.parametrize(
    "text",
    [
        "",
        "[]",
        "active: a\nkeys: {}\n",
        "{unclosed",
        "active: a\nkeys: {}\nnaming_key: x\nextra: 1\n",
    ],
)
def test_load_keyring_rejects_bad_documents(text: str) -> None:
    with pytest.raises(ConfigError):
        load_keyring(text)
