"""Settings for the Redis backend: ``broker check`` reports what is missing or wrong, all at
once, without echoing the URL's password or any key; the memory backend needs none of it."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from broker.cache import TokenCache
from broker.cli import main
from broker.cluster import setup_cluster
from broker.config import CacheSettings, RedisSettings, Secret, Settings, load_settings
from broker.errors import ConfigError
from broker.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "redis-PASS-in-url-77"


def keyring_text() -> str:
    key = base64.b64encode(os.urandom(32)).decode()
    return f"active: a\nkeys:\n  a: {key}\nnaming_key: {key}\n"


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    jwks = tmp_path / "jwks.json"
    key = {"kty": "EC", "crv": "P-256", "kid": "k"}
    key["x"] = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU"
    key["y"] = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"
    jwks.write_text(json.dumps({"keys": [key]}))
    for name in list(os.environ):
        if name.startswith("BROKER_"):
            monkeypatch.delenv(name)
    for name, value in {
        "BROKER_POLICIES_DIR": str(ROOT / "policies"),
        "BROKER_SMITHERY_API_KEY": "sk-cli-test",
        "BROKER_AUTH_ISSUER": "https://idp.example/",
        "BROKER_AUTH_AUDIENCE": "app",
        "BROKER_AUTH_JWKS_FILE": str(jwks),
    }.items():
        monkeypatch.setenv(name, value)
    return tmp_path


def test_redis_backend_without_url_or_key_fails_check(
    env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BROKER_CACHE_BACKEND", "redis")
    assert main(["check"]) == 2
    err = capsys.readouterr().err
    assert "BROKER_REDIS_URL or BROKER_REDIS_URL_FILE: required with" in err
    assert "BROKER_CACHE_ENCRYPTION_KEY or BROKER_CACHE_ENCRYPTION_KEY_FILE: required" in err


def test_redis_backend_complete_passes_check(
    env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (env / "url").write_text(f"rediss://:{PASSWORD}@redis.internal:6380/0\n")
    (env / "keyring.yaml").write_text(keyring_text())
    monkeypatch.setenv("BROKER_CACHE_BACKEND", "redis")
    monkeypatch.setenv("BROKER_REDIS_URL_FILE", str(env / "url"))
    monkeypatch.setenv("BROKER_CACHE_ENCRYPTION_KEY_FILE", str(env / "keyring.yaml"))
    assert main(["check"]) == 0
    captured = capsys.readouterr()
    assert PASSWORD not in captured.out + captured.err


def test_bad_keyring_reported_without_key_values(
    env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    short = base64.b64encode(b"too short").decode()
    (env / "keyring.yaml").write_text(f"active: b\nkeys:\n  a: {short}\nnaming_key: {short}\n")
    monkeypatch.setenv("BROKER_CACHE_BACKEND", "redis")
    monkeypatch.setenv("BROKER_REDIS_URL", f"redis://:{PASSWORD}@redis:6379")
    monkeypatch.setenv("BROKER_CACHE_ENCRYPTION_KEY_FILE", str(env / "keyring.yaml"))
    assert main(["check"]) == 2
    err = capsys.readouterr().err
    assert "BROKER_CACHE_ENCRYPTION_KEY: key 'a' must be base64 of 32 bytes" in err
    assert "BROKER_CACHE_ENCRYPTION_KEY: the active key id 'b' is not among the keys' ids" in err
    assert "naming_key must be base64 of at least 32 bytes" in err
    assert PASSWORD not in err
    assert short not in err


def test_a_keyring_with_ids_and_keys_swapped_is_reported_without_the_keys(
    env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    key = base64.b64encode(b"k" * 32).decode()
    (env / "keyring.yaml").write_text(f"active: {key}\nkeys:\n  {key}: a\nnaming_key: {key}\n")
    monkeypatch.setenv("BROKER_CACHE_BACKEND", "redis")
    monkeypatch.setenv("BROKER_REDIS_URL", f"redis://:{PASSWORD}@redis:6379")
    monkeypatch.setenv("BROKER_CACHE_ENCRYPTION_KEY_FILE", str(env / "keyring.yaml"))
    assert main(["check"]) == 2
    err = capsys.readouterr().err
    assert "BROKER_CACHE_ENCRYPTION_KEY: the id of key #1 must match" in err
    assert key not in err  # the "id" here is a key


def test_url_scheme_reported_without_the_url(
    env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BROKER_CACHE_BACKEND", "redis")
    monkeypatch.setenv("BROKER_REDIS_URL", f"http://user:{PASSWORD}@redis:6379")
    monkeypatch.setenv("BROKER_CACHE_ENCRYPTION_KEY", keyring_text())
    assert main(["check"]) == 2
    err = capsys.readouterr().err
    assert "BROKER_REDIS_URL: must start with redis://, rediss:// or unix://" in err
    assert PASSWORD not in err


@pytest.mark.parametrize(
    ("env_vars", "problem"),
    [
        ({"BROKER_CACHE_BACKEND": "memcached"}, "BROKER_CACHE_BACKEND: must be memory or redis"),
        ({"BROKER_REDIS_TIMEOUT_SECONDS": "0"}, "BROKER_REDIS_TIMEOUT/RETRY/SYNC_INTERVAL"),
        ({"BROKER_REDIS_LOCK_WAIT_SECONDS": "-1"}, "BROKER_REDIS_LOCK(_WAIT)_SECONDS"),
        ({"BROKER_REDIS_KEY_PREFIX": "a*"}, "BROKER_REDIS_KEY_PREFIX"),
        ({"BROKER_ADMIN_REVOCATION_SECONDS": "-5"}, "BROKER_ADMIN_REVOCATION_SECONDS"),
        ({"BROKER_REDIS_URL": "redis://a", "BROKER_REDIS_URL_FILE": "/x"}, "not both"),
        (
            {"BROKER_REDIS_URL": f"redis://:{PASSWORD}@h:port/0"},
            "BROKER_REDIS_URL: not a valid URL",
        ),
    ],
)
def test_invalid_redis_settings_denied(env_vars: dict[str, str], problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(env_vars)
    assert any(problem in p for p in caught.value.problems), caught.value.problems
    assert not any(PASSWORD in p for p in caught.value.problems)


def test_memory_backend_needs_no_redis() -> None:
    settings = load_settings({})
    assert settings.cache.backend == "memory"
    cluster = setup_cluster(
        settings, cache=TokenCache(clock=lambda: 0.0), clock=lambda: 0.0, metrics=Metrics()
    )
    assert cluster.shared is None
    assert cluster.ready


def test_redis_url_never_in_repr() -> None:
    settings = Settings(
        cache=CacheSettings(backend="redis", encryption_key=Secret(keyring_text())),
        redis=RedisSettings(url=Secret(f"redis://:{PASSWORD}@127.0.0.1:1/0")),
    )
    cluster = setup_cluster(
        settings, cache=TokenCache(clock=lambda: 0.0), clock=lambda: 0.0, metrics=Metrics()
    )
    text = repr(settings) + repr(cluster) + repr(cluster.store) + repr(cluster.keyring)
    assert PASSWORD not in text
    assert "naming_key" not in text
