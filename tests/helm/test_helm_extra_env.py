"""``extraEnv``: it cannot shadow a variable the chart sets (Kubernetes would silently take the
later of two entries with one name), a secret setting comes only from a Secret, and every
refusal names the value or the form to use instead."""

from __future__ import annotations

from typing import Any, Final

import pytest

from broker.config import env_names
from tests.helm.chart import Helm, HelmError, ci_values, env_of, template_args
from tests.helm.conftest import CI_NAMES

pytestmark = pytest.mark.integration

DEFAULT: Final = ci_values("default")
#: Every secret setting of the broker (those with a ``_FILE`` form), from broker/config.py.
SECRET_SETTINGS: Final = sorted(
    name.removesuffix("_FILE")
    for name in env_names()
    if name.endswith("_FILE") and name.removesuffix("_FILE") in env_names()
)
#: The secret settings the chart mounts as files itself; the others may come through extraEnv.
CHART_SECRETS: Final = {
    "BROKER_SMITHERY_API_KEY",
    "BROKER_REDIS_URL",
    "BROKER_CACHE_ENCRYPTION_KEY",
}
#: Values that make the chart render the single-issuer variables the CI files leave out.
MORE_AUTH: Final = {"auth.subjectClaim": "oid", "auth.jwksFile": "/etc/jwks/keys.json"}
CLEAR_SOURCES: Final = {
    "value": {"value": "in-clear-7f3a"},
    "configMapKeyRef": {"valueFrom": {"configMapKeyRef": {"name": "tuning", "key": "k"}}},
    "fieldRef": {"valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
}


def _names_the_chart_sets(helm: Helm) -> set[str]:
    """Every env name in any container of every CI scenario (and the auth values they leave
    out), with extraEnv emptied: the names the chart itself sets."""
    renders = [helm.template([ci_values(name)], {"extraEnv": []}) for name in CI_NAMES]
    renders.append(helm.template([DEFAULT], MORE_AUTH))
    return {
        item["name"]
        for rendered in renders
        for container in rendered.containers()
        for item in container["env"]
    }


def test_every_variable_the_chart_sets_is_refused_in_extra_env(helm: Helm) -> None:
    names = _names_the_chart_sets(helm)
    assert {"BROKER_AUTH_CONFIG_FILE", "BROKER_REDIS_URL_FILE", "OTEL_TRACES_EXPORTER"} <= names
    accepted = []
    for name in sorted(names):
        result = helm.run(*template_args([DEFAULT], {"extraEnv": [{"name": name, "value": "x"}]}))
        if result.returncode == 0:
            accepted.append(name)
        assert f"extraEnv[0]: {name} is managed by the chart: " in result.stderr, name
    assert accepted == []


@pytest.mark.parametrize(
    ("name", "use"),
    [
        ("BROKER_SMITHERY_BASE_URL", "set smithery.baseUrl"),
        ("BROKER_POLICIES_DIR", "set policies or existingPolicyConfigMap"),
        ("BROKER_AUTH_ISSUER", "set auth.issuer"),
        ("BROKER_SERVER_SHUTDOWN_DELAY_SECONDS", "set shutdownDelaySeconds"),
        ("BROKER_SERVER_PORT", "the container always listens on 0.0.0.0:8080"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "set otel.protocol"),
    ],
)
def test_shadowing_names_the_value_to_use(helm: Helm, name: str, use: str) -> None:
    settings = {"extraEnv": [{"name": "BROKER_CACHE_MAX_ENTRIES", "value": "5"}, {"name": name}]}
    with pytest.raises(HelmError) as raised:
        helm.template([DEFAULT], settings)
    assert f"extraEnv[1]: {name} is managed by the chart: {use}" in str(raised.value)


def test_a_variable_listed_twice_refused(helm: Helm) -> None:
    twice = [{"name": "BROKER_CACHE_MAX_ENTRIES", "value": str(n)} for n in (1, 2)]
    with pytest.raises(HelmError, match=r"extraEnv\[1\]: BROKER_CACHE_MAX_ENTRIES is listed twice"):
        helm.template([DEFAULT], {"extraEnv": twice})


def test_the_secret_settings_are_the_brokers() -> None:
    """The chart's list follows broker/config.py: a new secret setting fails here first."""
    assert set(SECRET_SETTINGS) == CHART_SECRETS | {
        "BROKER_ADMIN_TOKEN",
        "BROKER_TELEMETRY_HASH_KEY",
    }


@pytest.mark.parametrize("source", sorted(CLEAR_SOURCES))
@pytest.mark.parametrize("name", SECRET_SETTINGS)
def test_secret_setting_outside_a_secret_rejected(helm: Helm, name: str, source: str) -> None:
    entry: dict[str, Any] = {"name": name, **CLEAR_SOURCES[source]}
    with pytest.raises(HelmError) as raised:
        helm.template([DEFAULT], {"extraEnv": [entry]})
    message = str(raised.value)
    if name in CHART_SECRETS:
        assert f"extraEnv[0]: {name} is managed by the chart: " in message
        assert "only ever a mounted file" in message
    else:
        assert f"extraEnv[0]: {name} is a secret: give it as valueFrom.secretKeyRef" in message
        assert f"or set {name}_FILE to a file of a Secret mounted with extraVolumes" in message
    assert "in-clear-7f3a" not in message


@pytest.mark.parametrize("name", sorted(set(SECRET_SETTINGS) - CHART_SECRETS))
def test_secret_setting_from_a_secret_or_a_file_accepted(helm: Helm, name: str) -> None:
    from_secret = {"name": name, "valueFrom": {"secretKeyRef": {"name": "ops", "key": "k"}}}
    rendered = helm.template([DEFAULT], {"extraEnv": [from_secret]})
    assert from_secret in rendered.container()["env"]
    as_file = {"name": f"{name}_FILE", "value": "/etc/ops/k"}
    rendered = helm.template([DEFAULT], {"extraEnv": [as_file]})
    assert env_of(rendered.container())[f"{name}_FILE"] == "/etc/ops/k"
