"""``helm lint --strict`` and ``helm template`` for every CI values file, and every rendered object
validated against the Kubernetes API schemas (PyPI ``kubernetes-validate``, strict: unknown fields
are errors) of the oldest and a recent supported Kubernetes."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Final

import kubernetes_validate
import pytest

from tests.helm.chart import (
    CHART,
    HELM_VERSION,
    Helm,
    Manifest,
    Rendered,
    Settings,
    ci_values,
    template_args,
)
from tests.helm.conftest import CI_NAMES

pytestmark = pytest.mark.integration

KUBERNETES_VERSIONS: Final = ("1.29.0", "1.33.0")
REQUIRED_CI_NAMES: Final = {
    "default",
    "ha",
    "existing-secret-and-configmap",
    "metrics-servicemonitor",
    "multi-issuer",
}
#: Custom resources that kubernetes-validate has no schema for: it ships only the built-in API
#: groups and cannot load a CRD's openAPIV3Schema. These objects are excluded from schema
#: validation only; test_service_monitor_scrapes_metrics checks their shape instead.
NOT_IN_KUBERNETES_SCHEMAS: Final = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "Prometheus Operator CRD, not a built-in kind",
}


def test_helm_is_the_pinned_release(helm: Helm) -> None:
    result = helm.run("version", "--short")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(HELM_VERSION)


def test_ci_values_cover_the_documented_scenarios() -> None:
    assert set(CI_NAMES) >= REQUIRED_CI_NAMES


@pytest.mark.parametrize("name", CI_NAMES)
def test_lint_strict_passes(helm: Helm, name: str) -> None:
    result = helm.run("lint", "--strict", str(CHART), "--values", str(ci_values(name)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("name", CI_NAMES)
def test_rendered_objects_match_kubernetes_schemas(
    ci_rendered: dict[str, Rendered], name: str, version: str
) -> None:
    rendered = ci_rendered[name]
    validated = []
    for obj in rendered.objects:
        if (obj["apiVersion"], obj["kind"]) in NOT_IN_KUBERNETES_SCHEMAS:
            continue
        used = kubernetes_validate.validate(obj, version, strict=True)
        assert used == version.rsplit(".", 1)[0]  # the schemas of that very version were used
        validated.append(obj["kind"])
    assert "Deployment" in validated
    assert len(validated) == len(rendered.objects) - len(rendered.all("ServiceMonitor"))


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_custom_resources_really_have_no_kubernetes_schema(
    ci_rendered: dict[str, Rendered], version: str
) -> None:
    """Keeps NOT_IN_KUBERNETES_SCHEMAS honest: once kubernetes-validate knows a kind, this fails
    and the kind must be validated like the others."""
    monitor = ci_rendered["metrics-servicemonitor"].one("ServiceMonitor")
    assert (monitor["apiVersion"], monitor["kind"]) in NOT_IN_KUBERNETES_SCHEMAS
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        kubernetes_validate.validate(monitor, version, strict=True)


def test_validator_rejects_an_unknown_field(ci_rendered: dict[str, Rendered]) -> None:
    """The schema check above can fail: a field Kubernetes does not know is an error."""
    deployment: Manifest = copy.deepcopy(ci_rendered["default"].one("Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)


def test_rendered_kinds_per_scenario(ci_rendered: dict[str, Rendered]) -> None:
    base = {"ServiceAccount", "Secret", "ConfigMap", "Service", "Deployment", "NetworkPolicy"}
    expected = {
        "default": base,
        "ha": base | {"HorizontalPodAutoscaler", "PodDisruptionBudget"},
        "existing-secret-and-configmap": {"Service", "Deployment", "NetworkPolicy"},
        "metrics-servicemonitor": base | {"PodDisruptionBudget", "ServiceMonitor"},
        "multi-issuer": base,
    }
    for name, kinds in expected.items():
        assert set(ci_rendered[name].kinds()) == kinds, name
    assert len(ci_rendered["multi-issuer"].all("ConfigMap")) == 2  # policies and issuers


def test_service_monitor_scrapes_metrics(ci_rendered: dict[str, Rendered]) -> None:
    rendered = ci_rendered["metrics-servicemonitor"]
    monitor = rendered.one("ServiceMonitor")
    service = rendered.one("Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["apps"]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint == {
        "port": "metrics",
        "path": "/metrics",
        "scheme": "http",
        "interval": "15s",
        "scrapeTimeout": "5s",
    }
    assert [port["name"] for port in service["spec"]["ports"]] == ["http", "metrics"]
    env = {e["name"]: e.get("value") for e in rendered.container()["env"]}
    assert env["BROKER_TELEMETRY_METRICS_PORT"] == "9090"  # /metrics leaves the API port


def test_metrics_on_the_api_port_when_asked(helm: Helm) -> None:
    result = helm.run(
        *template_args(
            [ci_values("default")], {"metrics.port": 0, "metrics.serviceMonitor.enabled": True}
        )
    )
    assert result.returncode == 0, result.stderr
    assert "BROKER_TELEMETRY_METRICS_PORT" not in result.stdout
    assert "name: metrics" not in result.stdout
    assert "- port: http\n      path: /metrics" in result.stdout


def _notes(helm: Helm, values: Path, settings: Settings | None = None) -> str:
    """NOTES.txt, as ``helm install`` prints it (a client-side dry run needs no cluster)."""
    args = template_args([values], settings)
    args[0] = "install"
    result = helm.run(*args, "--dry-run=client")
    assert result.returncode == 0, result.stderr
    return result.stdout.split("NOTES:", 1)[1]


def test_notes_explain_access_tokens_and_readiness(helm: Helm) -> None:
    notes = _notes(helm, ci_values("existing-secret-and-configmap"))
    assert "http://tb-token-broker.apps.svc:8080" in notes
    assert "port-forward service/tb-token-broker 8080:8080" in notes
    assert "POST http://127.0.0.1:8080/v1/tokens" in notes
    assert "/readyz answers 503 until" in notes
    assert "-c check" not in notes  # this scenario has no init container


def test_notes_say_policies_reload_and_the_api_key_needs_a_restart(helm: Helm) -> None:
    notes = _notes(helm, ci_values("existing-secret-and-configmap"))
    policies, api_key = notes.split("4. Changes the chart cannot see", 1)[1].split("Secret ", 1)
    assert "ConfigMap token-broker-policies (policies)" in policies
    assert "every pod reloads the policy files by itself" in policies
    assert "restart" not in policies.replace("no restart", "")
    assert api_key.startswith("smithery-credentials (Smithery API key)")
    assert "read once, at start" in api_key
    assert "rollout restart deployment/tb-token-broker" in api_key


@pytest.mark.parametrize(
    ("settings", "port_sentence"),
    [
        (
            {},
            "The NetworkPolicy admits the API on port 8080 from any source\n"
            "   and /metrics on port 9090 from any source (narrow it with metrics.from); "
            "nothing else.",
        ),
        (
            {"metrics.port": 0},
            "The NetworkPolicy admits the API on port 8080 from any source; nothing else.",
        ),
    ],
    ids=["metrics-port", "metrics-on-the-api-port"],
)
def test_notes_name_every_port_the_network_policy_admits(
    helm: Helm, settings: Settings, port_sentence: str
) -> None:
    notes = _notes(helm, ci_values("default"), settings)
    assert port_sentence in notes
    rendered = helm.template([ci_values("default")], settings)
    ingress = rendered.one("NetworkPolicy")["spec"]["ingress"]
    for rule in ingress:
        for port in rule["ports"]:
            assert f"port {port['port']} from" in notes


@pytest.mark.parametrize(
    ("settings", "warned"),
    [
        ({}, False),
        ({"replicaCount": 2}, True),
        ({"autoscaling.enabled": True}, True),
        (
            {
                "replicaCount": 3,
                "autoscaling.enabled": True,
                "autoscaling.maxReplicas": 1,
                "autoscaling.minReplicas": 1,
            },
            False,
        ),
    ],
    ids=["one-replica", "two-replicas", "autoscaled", "autoscaled-to-one"],
)
def test_notes_warn_about_replicas_without_redis(
    helm: Helm, settings: Settings, warned: bool
) -> None:
    notes = _notes(helm, ci_values("default"), settings)
    assert ("replicas without redis.enabled" in notes) is warned
    if warned:
        assert "POST /v1/admin/revoke revokes on the one pod that received it only" in notes
        assert "rate limits apply per pod" in notes
        assert "maxConnections" in notes
        assert "BROKER_TELEMETRY_HASH_KEY" in notes


def test_notes_do_not_warn_with_redis(helm: Helm) -> None:
    notes = _notes(helm, ci_values("redis"))  # three replicas on Redis
    assert "without redis.enabled" not in notes
