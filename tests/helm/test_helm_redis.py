"""The chart's Redis values (scale-out): the URL and the keyring come from existing Secrets as
files, the broker gets the Redis settings, the NetworkPolicy lets it reach Redis, inconsistent
values are refused, and the real ``broker check`` accepts the rendered configuration."""

from __future__ import annotations

import base64
import itertools
import os
import re
import shlex
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import pytest

from tests.helm.chart import (
    CHART,
    Helm,
    HelmError,
    Rendered,
    ci_values,
    env_of,
    materialize,
    run_broker_check,
)

pytestmark = pytest.mark.integration

REDIS: Final = ci_values("redis")
DEFAULT: Final = ci_values("default")
REDIS_PASSWORD: Final = "redis-PASSWORD-helm-3e7"


def _volume(rendered: Rendered, name: str) -> dict[str, Any]:
    (volume,) = [v for v in rendered.pod_spec["volumes"] if v["name"] == name]
    return dict(volume)


def test_redis_settings_become_broker_variables(ci_rendered: dict[str, Rendered]) -> None:
    rendered = ci_rendered["redis"]
    for container in rendered.containers():  # the broker and its check init container
        env = env_of(container)
        assert env["BROKER_CACHE_BACKEND"] == "redis"
        assert env["BROKER_REDIS_URL_FILE"] == "/etc/token-broker/redis/url"
        assert env["BROKER_CACHE_ENCRYPTION_KEY_FILE"] == "/etc/token-broker/cache-key/keyring.yaml"
        assert env["BROKER_REDIS_REQUIRED_FOR_READINESS"] == "true"
        assert env["BROKER_REDIS_KEY_PREFIX"] == "tb-prod"
        assert "BROKER_REDIS_URL" not in env
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        assert mounts["redis-url"] == {
            "name": "redis-url",
            "mountPath": "/etc/token-broker/redis",
            "readOnly": True,
        }
        assert mounts["cache-key"]["readOnly"] is True
    assert _volume(rendered, "redis-url")["secret"] == {
        "secretName": "token-broker-redis",
        "defaultMode": 0o440,
        "items": [{"key": "redis-url", "path": "url"}],
    }
    assert _volume(rendered, "cache-key")["secret"] == {
        "secretName": "token-broker-cache-keyring",
        "defaultMode": 0o440,
        "items": [{"key": "keyring.yaml", "path": "keyring.yaml"}],
    }


def test_default_release_has_no_redis(ci_rendered: dict[str, Rendered]) -> None:
    rendered = ci_rendered["default"]
    env = env_of(rendered.container())
    assert not any(name.startswith("BROKER_REDIS_") for name in env)
    assert "BROKER_CACHE_BACKEND" not in env
    assert {v["name"] for v in rendered.pod_spec["volumes"]}.isdisjoint({"redis-url", "cache-key"})
    egress = rendered.one("NetworkPolicy")["spec"]["egress"]
    assert all(port["port"] != 6379 for rule in egress for port in rule.get("ports", []))


def test_network_policy_allows_redis_only_to_its_peers(ci_rendered: dict[str, Rendered]) -> None:
    egress = ci_rendered["redis"].one("NetworkPolicy")["spec"]["egress"]
    (rule,) = [r for r in egress if {"protocol": "TCP", "port": 6379} in r["ports"]]
    assert rule["to"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "redis"}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "redis"}},
        }
    ]


@pytest.mark.parametrize(
    "settings",
    [
        {"redis.enabled": "true"},
        {"redis.enabled": "true", "redis.existingSecret": "r"},
        {"redis.enabled": "true", "redis.encryptionKey.existingSecret": "k"},
    ],
)
def test_redis_without_its_secrets_is_refused(helm: Helm, settings: dict[str, str]) -> None:
    with pytest.raises(HelmError, match="redis: enabled needs existingSecret"):
        helm.template([DEFAULT], settings)


@pytest.mark.parametrize(
    ("settings", "error"),
    [
        ({"redis.url": "redis://x"}, "additional properties 'url' not allowed"),
        ({"redis.keyPrefix": "has space"}, "keyPrefix"),
        ({"redis.enabled": "yes"}, "enabled"),
        ({"networkPolicy.egress.redis.ports": []}, "ports"),
    ],
)
def test_invalid_redis_values_rejected_by_the_schema(
    helm: Helm, settings: dict[str, Any], error: str
) -> None:
    with pytest.raises(HelmError, match=error):
        helm.template([DEFAULT], settings)


def _readme_redis_example() -> tuple[str, dict[str, str]]:
    """The Redis URL and the ``--set`` flags of the chart README's "Scale-out on Redis" example."""
    section = (CHART / "README.md").read_text().split("## Scale-out on Redis", 1)[1]
    (block,) = re.findall(r"```sh\n(.*?)```", section.split("\n## ", 1)[0], re.DOTALL)
    words = shlex.split(block.replace("\\\n", " "))
    (url,) = [w.split("url=", 1)[1] for w in words if w.startswith("--from-literal=url=")]
    flags = [value for flag, value in itertools.pairwise(words) if flag == "--set"]
    return url, dict(flag.split("=", 1) for flag in flags)


def test_readme_redis_example_passes_the_network_policy(helm: Helm) -> None:
    """Followed as written, the example's pods can reach the Redis of its URL."""
    url, settings = _readme_redis_example()
    assert settings["redis.enabled"] == "true"
    port = urlsplit(url).port or 6379
    rendered = helm.template([DEFAULT], settings)
    egress = rendered.one("NetworkPolicy")["spec"]["egress"]
    allowed = {p["port"] for rule in egress for p in rule["ports"] if p["protocol"] == "TCP"}
    assert port in allowed


def test_broker_check_accepts_the_rendered_redis_configuration(
    ci_rendered: dict[str, Rendered], tmp_path: Path
) -> None:
    """With the two Secrets the operator creates, the init container's ``broker check`` passes."""
    key = base64.b64encode(os.urandom(32)).decode()
    keyring = f"active: k1\nkeys:\n  k1: {key}\nnaming_key: {key}\n"
    url = f"rediss://:{REDIS_PASSWORD}@redis.redis.svc:6380/0"
    existing = [
        _secret("token-broker-redis", {"redis-url": url}),
        _secret("token-broker-cache-keyring", {"keyring.yaml": keyring}),
    ]
    rendered = Rendered((*ci_rendered["redis"].objects, *existing))
    env = materialize(rendered, "check", tmp_path / "pod")
    result = run_broker_check(env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert REDIS_PASSWORD not in result.stdout + result.stderr
    assert "warning" not in result.stderr


def _secret(name: str, data: dict[str, str]) -> dict[str, Any]:
    encoded = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "data": encoded}
