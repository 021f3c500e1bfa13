"""Sealed records for the shared token cache: AES-GCM under a keyring, and record names derived by
HMAC, so that nothing the broker writes to Redis shows a token, an issuer or a subject.

* A record is ``[version, key id, nonce, ciphertext]`` (msgpack). The associated data binds it to
  its Redis name and key id: a record copied under another name, or relabelled with another key
  id, fails to open.
* The keyring names one **active** key (encrypts) and any number of older ones (still decrypt),
  so a key is rotated by adding the new key everywhere first, then making it active, then
  removing the old one once the records it sealed have expired.
* Names come from a separate **naming key** that does not change with rotation, so replicas
  with different active keys still find each other's records.

Pure: no I/O, no clock. Failures raise ``SealError`` with a short reason code; never the key,
the record or the plaintext.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
from collections.abc import Mapping
from typing import Final

import msgspec
import msgspec.yaml
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from broker.errors import ConfigError

RECORD_VERSION: Final = 1
NONCE_BYTES: Final = 12  # 96-bit nonces, random per record (NIST SP 800-38D §8.2.2)
KEY_BYTES: Final = 32  # AES-256
MIN_NAMING_KEY_BYTES: Final = 32
KEY_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9._-]{1,32}")
_AAD_LABEL: Final = b"token-broker/sealed-record/v1"
SETTING: Final = "BROKER_CACHE_ENCRYPTION_KEY"


class SealError(Exception):
    """A record that cannot be opened. ``reason`` is a metric label: ``malformed``,
    ``unknown_key`` or ``tampered``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class KeyringFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The keyring secret (YAML or JSON)::

    active: "2026-11"
    keys:
      "2026-11": <base64 of 32 random bytes>
      "2026-05": <base64 of 32 random bytes>   # older: still opens records
    naming_key: <base64 of at least 32 random bytes>  # never rotated
    """

    active: str
    keys: dict[str, str]
    naming_key: str


class _Envelope(msgspec.Struct, array_like=True, frozen=True):
    version: int
    key_id: str
    nonce: bytes
    ciphertext: bytes


_ENVELOPE_ENCODER: Final = msgspec.msgpack.Encoder()
_ENVELOPE_DECODER: Final = msgspec.msgpack.Decoder(_Envelope)


class Keyring:
    """AES-GCM keys by id (one active) and the HMAC key that names records."""

    __slots__ = ("_active", "_ciphers", "_naming_key")

    def __init__(self, keys: Mapping[str, bytes], active: str, naming_key: bytes) -> None:
        if active not in keys:
            raise ValueError("the active key id is not in the keyring")
        if any(len(key) != KEY_BYTES for key in keys.values()):
            raise ValueError(f"every key must be {KEY_BYTES} bytes")
        if len(naming_key) < MIN_NAMING_KEY_BYTES:
            raise ValueError(f"the naming key must be at least {MIN_NAMING_KEY_BYTES} bytes")
        self._ciphers = {key_id: AESGCM(key) for key_id, key in keys.items()}
        self._active = active
        self._naming_key = naming_key

    def __repr__(self) -> str:  # key material must never reach a log
        return f"Keyring(active={self._active!r}, key_ids={sorted(self._ciphers)!r})"

    @property
    def active_key_id(self) -> str:
        return self._active

    def name(self, purpose: str, *parts: str) -> str:
        """A stable, opaque name for ``parts`` (hex HMAC-SHA256, domain-separated by
        ``purpose``). Each part is length-prefixed, so ("ab", "c") and ("a", "bc") differ."""
        mac = hmac.new(self._naming_key, purpose.encode(), hashlib.sha256)
        for part in parts:
            data = part.encode()
            mac.update(len(data).to_bytes(4, "big"))
            mac.update(data)
        return mac.hexdigest()

    def seal(self, name: str, plaintext: bytes) -> bytes:
        """Encrypt ``plaintext`` with the active key, bound to ``name``."""
        nonce = os.urandom(NONCE_BYTES)
        aad = _associated_data(self._active, name)
        ciphertext = self._ciphers[self._active].encrypt(nonce, plaintext, aad)
        return _ENVELOPE_ENCODER.encode(_Envelope(RECORD_VERSION, self._active, nonce, ciphertext))

    def open(self, name: str, sealed: bytes) -> bytes:
        """The plaintext of a record stored under ``name``, or ``SealError``."""
        try:
            envelope = _ENVELOPE_DECODER.decode(sealed)
        except msgspec.DecodeError:
            raise SealError("malformed") from None
        if envelope.version != RECORD_VERSION or len(envelope.nonce) != NONCE_BYTES:
            raise SealError("malformed")
        cipher = self._ciphers.get(envelope.key_id)
        if cipher is None:
            raise SealError("unknown_key")
        try:
            return cipher.decrypt(
                envelope.nonce, envelope.ciphertext, _associated_data(envelope.key_id, name)
            )
        except InvalidTag:
            raise SealError("tampered") from None


def _associated_data(key_id: str, name: str) -> bytes:
    return b"\x00".join((_AAD_LABEL, key_id.encode(), name.encode()))


def load_keyring(text: str) -> Keyring:
    """Parse the keyring secret; ``ConfigError`` lists every problem (never a key's value)."""
    try:
        parsed = msgspec.yaml.decode(text.encode(), type=KeyringFile)
    except msgspec.ValidationError as exc:
        raise ConfigError([f"{SETTING}: {exc}"]) from None
    except msgspec.DecodeError:
        raise ConfigError([f"{SETTING}: not valid YAML/JSON"]) from None
    problems: list[str] = []
    keys: dict[str, bytes] = {}
    for position, (key_id, encoded) in enumerate(parsed.keys.items(), 1):
        if not KEY_ID_PATTERN.fullmatch(key_id):
            # Not quoted: with ids and keys swapped, the "id" is a key (a valid id never is).
            problems.append(
                f"{SETTING}: the id of key #{position} must match {KEY_ID_PATTERN.pattern}"
            )
            continue
        key = _decode_key(encoded)
        if key is None or len(key) != KEY_BYTES:
            problems.append(f"{SETTING}: key {key_id!r} must be base64 of {KEY_BYTES} bytes")
            continue
        keys[key_id] = key
    if not parsed.keys:
        problems.append(f"{SETTING}: at least one key is required")
    elif parsed.active not in parsed.keys:
        # Quoted only when it is an id at all: a key (44 characters) never matches the pattern.
        shown = f" {parsed.active!r}" if KEY_ID_PATTERN.fullmatch(parsed.active) else ""
        problems.append(f"{SETTING}: the active key id{shown} is not among the keys' ids")
    naming_key = _decode_key(parsed.naming_key)
    if naming_key is None or len(naming_key) < MIN_NAMING_KEY_BYTES:
        problems.append(
            f"{SETTING}: naming_key must be base64 of at least {MIN_NAMING_KEY_BYTES} bytes"
        )
    if problems:
        raise ConfigError(problems)
    assert naming_key is not None
    return Keyring(keys, parsed.active, naming_key)


def _decode_key(encoded: str) -> bytes | None:
    try:
        return base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
