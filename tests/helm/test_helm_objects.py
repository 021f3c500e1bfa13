"""What the chart renders: hardening, probes, where the API key goes, rollouts on change, the PDB
and NetworkPolicy rules, the ``broker check`` init container, and the real broker accepting the
rendered configuration."""

from __future__ import annotations

import base64
import json
import re
import uuid
from pathlib import Path
from typing import Any, Final

import pytest
import yaml

from broker.config import ServerSettings, TelemetrySettings
from broker.telemetry import setup_telemetry
from tests.helm.chart import (
    CHART,
    FULLNAME,
    Helm,
    HelmError,
    Rendered,
    Settings,
    ci_values,
    env_of,
    materialize,
    run_broker_check,
)

pytestmark = pytest.mark.integration

DEFAULT: Final = ci_values("default")
SELECTOR: Final = {"app.kubernetes.io/name": "token-broker", "app.kubernetes.io/instance": "tb"}
API_KEY_PATH: Final = "/etc/token-broker/smithery/api-key"
#: What the broker waits for in-flight requests after closing its listener, unless set otherwise.
DRAIN_SECONDS: Final = ServerSettings().drain_timeout_seconds


def test_pod_security_context_is_hardened(ci_rendered: dict[str, Rendered]) -> None:
    for name, rendered in ci_rendered.items():
        assert rendered.pod_spec["securityContext"] == {
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "runAsGroup": 10001,
            "fsGroup": 10001,
            "seccompProfile": {"type": "RuntimeDefault"},
        }, name


def test_every_container_is_hardened_and_writes_only_tmp(ci_rendered: dict[str, Rendered]) -> None:
    for name, rendered in ci_rendered.items():
        volumes = {volume["name"]: volume for volume in rendered.pod_spec["volumes"]}
        for container in rendered.containers():
            assert container["securityContext"] == {
                "readOnlyRootFilesystem": True,
                "allowPrivilegeEscalation": False,
                "privileged": False,
                "capabilities": {"drop": ["ALL"]},
            }, name
            writable = [m for m in container["volumeMounts"] if not m.get("readOnly")]
            assert [(m["name"], m["mountPath"]) for m in writable] == [("tmp", "/tmp")], name
        assert volumes["tmp"]["emptyDir"] == {"sizeLimit": "64Mi"}


def test_probes_use_livez_and_readyz_on_port_8080(ci_rendered: dict[str, Rendered]) -> None:
    rendered = ci_rendered["default"]
    container = rendered.container()
    assert container["ports"] == [
        {"name": "http", "containerPort": 8080, "protocol": "TCP"},
        {"name": "metrics", "containerPort": 9090, "protocol": "TCP"},
    ]
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["args"] == ["serve", "--host", "0.0.0.0", "--port", "8080"]
    assert "command" not in container  # the image's ENTRYPOINT, broker
    api, metrics = rendered.one("Service")["spec"]["ports"]
    assert api["targetPort"] == "http"
    assert metrics["targetPort"] == "metrics"


def test_no_service_links_and_no_api_token(ci_rendered: dict[str, Rendered]) -> None:
    for name, rendered in ci_rendered.items():
        assert rendered.pod_spec["enableServiceLinks"] is False, name
        assert rendered.pod_spec["automountServiceAccountToken"] is False, name
        for account in rendered.all("ServiceAccount"):
            assert account["automountServiceAccountToken"] is False, name


def test_api_key_appears_only_in_the_secret(helm: Helm) -> None:
    api_key = f"sk-test-UNIQUE-{uuid.uuid4().hex}"
    rendered = helm.template([DEFAULT], {"smithery.apiKey": api_key})
    encoded = base64.b64encode(api_key.encode()).decode()
    secret = rendered.one("Secret")
    assert base64.b64decode(secret["data"]["api-key"]).decode() == api_key
    for obj in rendered.objects:
        if obj["kind"] != "Secret":
            text = json.dumps(obj)
            assert api_key not in text, obj["kind"]
            assert encoded not in text, obj["kind"]
    for container in rendered.containers():
        env = env_of(container)
        assert "BROKER_SMITHERY_API_KEY" not in env
        assert env["BROKER_SMITHERY_API_KEY_FILE"] == API_KEY_PATH
        assert all("secretKeyRef" not in str(item) for item in container["env"])


def test_api_key_file_comes_from_the_chosen_secret(ci_rendered: dict[str, Rendered]) -> None:
    chart_volume = _volume(ci_rendered["default"], "smithery-api-key")
    assert chart_volume["secret"] == {
        "secretName": FULLNAME,
        "defaultMode": 0o440,
        "items": [{"key": "api-key", "path": "api-key"}],
    }
    existing = ci_rendered["existing-secret-and-configmap"]
    assert _volume(existing, "smithery-api-key")["secret"]["secretName"] == "smithery-credentials"
    assert _volume(existing, "smithery-api-key")["secret"]["items"] == [
        {"key": "SMITHERY_API_KEY", "path": "api-key"}
    ]
    assert _volume(existing, "policies")["configMap"] == {"name": "token-broker-policies"}
    assert existing.all("Secret") == []
    assert existing.all("ConfigMap") == []


def test_checksum_changes_when_a_policy_changes(helm: Helm) -> None:
    def checksums(ttl: str) -> dict[str, str]:
        policy = f"rules:\n  - id: r\n    grant:\n      namespaces: my-app\n      ttl: {ttl}\n"
        rendered = helm.template([DEFAULT], {"policies.one\\.yaml": policy})
        return _pod_annotations(rendered)

    first, same, changed = checksums("15m"), checksums("15m"), checksums("10m")
    assert first == same
    assert changed["checksum/policies"] != first["checksum/policies"]
    assert changed["checksum/secret"] == first["checksum/secret"]


def test_checksum_changes_when_the_api_key_changes(helm: Helm) -> None:
    first = _pod_annotations(helm.template([DEFAULT], {"smithery.apiKey": "sk-one"}))
    second = _pod_annotations(helm.template([DEFAULT], {"smithery.apiKey": "sk-two"}))
    assert first["checksum/secret"] != second["checksum/secret"]
    assert first["checksum/policies"] == second["checksum/policies"]


def test_no_checksums_for_objects_the_chart_does_not_own(ci_rendered: dict[str, Rendered]) -> None:
    annotations = _pod_annotations(ci_rendered["existing-secret-and-configmap"])
    assert not any(key.startswith("checksum/") for key in annotations)
    assert set(_pod_annotations(ci_rendered["multi-issuer"])) == {
        "checksum/policies",
        "checksum/auth",
        "checksum/secret",
    }


@pytest.mark.parametrize(
    "settings",
    [
        {"replicaCount": "2"},
        {"replicaCount": "5"},
        {"autoscaling.enabled": "true", "autoscaling.minReplicas": "2"},
        {"replicaCount": "1", "autoscaling.enabled": "true", "autoscaling.minReplicas": "3"},
    ],
)
def test_pdb_rendered_with_more_than_one_replica(helm: Helm, settings: dict[str, str]) -> None:
    pdb = helm.template([DEFAULT], settings).one("PodDisruptionBudget")
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": {"matchLabels": SELECTOR}}


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"replicaCount": "1"},
        {"replicaCount": "0"},
        {"replicaCount": "4", "autoscaling.enabled": "true", "autoscaling.minReplicas": "1"},
        {"replicaCount": "3", "podDisruptionBudget.enabled": "false"},
    ],
)
def test_pdb_absent_with_a_single_replica_or_disabled(helm: Helm, settings: dict[str, str]) -> None:
    assert helm.template([DEFAULT], settings).all("PodDisruptionBudget") == []


def test_hpa_replaces_the_replica_count(ci_rendered: dict[str, Rendered]) -> None:
    assert ci_rendered["default"].all("HorizontalPodAutoscaler") == []
    assert ci_rendered["default"].one("Deployment")["spec"]["replicas"] == 1
    rendered = ci_rendered["ha"]
    hpa = rendered.one("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": FULLNAME,
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    targets = {m["resource"]["name"]: m["resource"]["target"] for m in hpa["spec"]["metrics"]}
    assert targets == {
        "cpu": {"type": "Utilization", "averageUtilization": 70},
        "memory": {"type": "Utilization", "averageUtilization": 80},
    }
    assert "replicas" not in rendered.one("Deployment")["spec"]
    assert rendered.one("PodDisruptionBudget")["spec"]["maxUnavailable"] == "50%"


def test_network_policy_default_rules(ci_rendered: dict[str, Rendered]) -> None:
    policy = ci_rendered["default"].one("NetworkPolicy")
    spec = policy["spec"]
    assert spec["podSelector"] == {"matchLabels": SELECTOR}
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    assert spec["ingress"] == [
        {"ports": [{"protocol": "TCP", "port": 8080}]},
        {"ports": [{"protocol": "TCP", "port": 9090}]},
    ]
    dns, smithery = spec["egress"]
    assert dns == {"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}
    assert smithery == {
        "ports": [{"protocol": "TCP", "port": 443}],
        "to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["169.254.0.0/16"]}}],
    }


def test_network_policy_identity_provider_and_extra_rules(
    ci_rendered: dict[str, Rendered],
) -> None:
    multi = ci_rendered["multi-issuer"].one("NetworkPolicy")["spec"]["egress"]
    assert multi[1:] == [
        {
            "ports": [{"protocol": "TCP", "port": 8443}],
            "to": [{"ipBlock": {"cidr": "10.40.0.0/16"}}],
        },
        {
            "ports": [{"protocol": "TCP", "port": 443}],
            "to": [{"ipBlock": {"cidr": "203.0.113.0/24"}}],
        },
    ]
    ha = ci_rendered["ha"].one("NetworkPolicy")["spec"]
    assert ha["ingress"][0]["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}
    ]
    assert ha["egress"][-1]["ports"] == [{"protocol": "TCP", "port": 4318}]
    assert len(ha["egress"]) == 3  # DNS, Smithery, the collector


def test_network_policy_can_be_switched_off(helm: Helm) -> None:
    rendered = helm.template([DEFAULT], {"networkPolicy.enabled": "false"})
    assert rendered.all("NetworkPolicy") == []


def test_init_container_runs_broker_check_with_the_broker_env(
    ci_rendered: dict[str, Rendered],
) -> None:
    for name in ("default", "ha", "metrics-servicemonitor", "multi-issuer"):
        rendered = ci_rendered[name]
        (init,) = rendered.pod_spec["initContainers"]
        broker = rendered.container()
        assert "command" not in init  # the image's ENTRYPOINT: broker
        assert init["args"] == ["check"]
        assert init["image"] == broker["image"]
        assert init["env"] == broker["env"]
        assert init["volumeMounts"] == broker["volumeMounts"]
    assert "initContainers" not in ci_rendered["existing-secret-and-configmap"].pod_spec


def test_settings_become_broker_variables(ci_rendered: dict[str, Rendered]) -> None:
    env = env_of(ci_rendered["ha"].container())
    assert env["BROKER_POLICIES_DIR"] == "/etc/token-broker/policies"
    assert env["BROKER_SMITHERY_BASE_URL"] == "https://api.smithery.ai"
    assert env["BROKER_AUTH_ISSUER"] == "https://idp.example.com/"
    assert env["BROKER_AUTH_AUDIENCE"] == "https://broker.example.com"
    assert env["BROKER_AUTH_ALGORITHMS"] == "RS256"
    assert env["BROKER_AUTH_JWKS_URL"] == "https://idp.example.com/.well-known/jwks.json"
    assert env["BROKER_AUTH_TYP"] == "at+jwt"
    assert env["BROKER_AUTH_REQUIRED_CLAIMS"] == "email"
    assert env["BROKER_CORS_ORIGINS"] == "https://app.example.com,https://admin.example.com"
    assert env["BROKER_PRECHECK_EXEMPT_LIFECYCLE"] == "true"
    default_env = env_of(ci_rendered["default"].container())
    assert default_env["BROKER_AUTH_ALGORITHMS"] == "RS256,ES256"
    assert default_env["BROKER_PRECHECK_EXEMPT_LIFECYCLE"] == "false"
    assert "BROKER_CORS_ORIGINS" not in default_env
    assert "BROKER_AUTH_CONFIG_FILE" not in default_env


def test_extra_env_volumes_and_image_digest(ci_rendered: dict[str, Rendered]) -> None:
    rendered = ci_rendered["existing-secret-and-configmap"]
    container = rendered.container()
    assert env_of(container)["BROKER_CACHE_MAX_ENTRIES"] == "50000"
    assert container["image"] == (
        "registry.example.com/platform/token-broker@sha256:"
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
    )
    assert {"name": "ca-bundle", "mountPath": "/etc/ssl/corporate", "readOnly": True} in (
        container["volumeMounts"]
    )
    assert _volume(rendered, "ca-bundle") == {
        "name": "ca-bundle",
        "configMap": {"name": "corporate-ca-bundle"},
    }
    assert rendered.pod_spec["serviceAccountName"] == "token-broker-workload"
    assert rendered.pod_spec["imagePullSecrets"] == [{"name": "registry-credentials"}]
    assert ci_rendered["default"].container()["image"] == "token-broker:0.2.0"


def test_otel_settings_become_standard_variables(ci_rendered: dict[str, Rendered]) -> None:
    env = env_of(ci_rendered["ha"].container())
    assert env["OTEL_SDK_DISABLED"] == "false"
    assert env["OTEL_TRACES_EXPORTER"] == "otlp"
    assert env["OTEL_SERVICE_NAME"] == "token-broker"
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector.observability.svc:4318"
    assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/protobuf"
    assert env["OTEL_RESOURCE_ATTRIBUTES"] == (
        "k8s.namespace.name=$(POD_NAMESPACE),k8s.pod.name=$(POD_NAME),"
        "deployment.environment=production"
    )
    assert env["OTEL_TRACES_SAMPLER"] == "parentbased_traceidratio"
    assert env["OTEL_TRACES_SAMPLER_ARG"] == "0.25"
    names = [item["name"] for item in ci_rendered["ha"].container()["env"]]
    # $(VAR) expands only variables defined earlier in the list.
    assert names.index("POD_NAME") < names.index("OTEL_RESOURCE_ATTRIBUTES")
    default_env = env_of(ci_rendered["default"].container())
    assert default_env["OTEL_SDK_DISABLED"] == "true"
    assert not any(name.startswith("OTEL_") and name != "OTEL_SDK_DISABLED" for name in default_env)


def test_enabled_tracing_really_exports(ci_rendered: dict[str, Rendered]) -> None:
    """The broker's own tracing setup, given the rendered env, builds an exporting provider (the
    broker's default exporter is none: without OTEL_TRACES_EXPORTER nothing would be sent)."""
    telemetry = setup_telemetry(TelemetrySettings(), env_of(ci_rendered["ha"].container()))
    try:
        assert telemetry.enabled
    finally:
        telemetry.shutdown()
    assert not setup_telemetry(
        TelemetrySettings(), env_of(ci_rendered["default"].container())
    ).enabled


def test_broker_check_refuses_tracing_serve_cannot_export(helm: Helm, tmp_path: Path) -> None:
    """A green init container must not be followed by a crashing ``broker serve``."""
    grpc = [{"name": "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "value": "grpc"}]
    rendered = helm.template([ci_values("ha")], {"extraEnv": grpc})
    env = materialize(rendered, "check", tmp_path / "pod")
    result = run_broker_check(env, tmp_path)
    assert result.returncode == 2
    assert "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: 'grpc' is not supported" in result.stderr


def test_shutdown_delay_and_grace_period_are_rendered(ci_rendered: dict[str, Rendered]) -> None:
    rendered = ci_rendered["default"]
    for container in rendered.containers():
        assert env_of(container)["BROKER_SERVER_SHUTDOWN_DELAY_SECONDS"] == "5"
    grace = rendered.pod_spec["terminationGracePeriodSeconds"]
    assert grace == 35
    assert grace >= 5 + DRAIN_SECONDS
    ha = ci_rendered["ha"]
    env = env_of(ha.container())
    assert env["BROKER_SERVER_SHUTDOWN_DELAY_SECONDS"] == "10"
    assert env["BROKER_SERVER_DRAIN_TIMEOUT_SECONDS"] == "30"
    assert ha.pod_spec["terminationGracePeriodSeconds"] == 45


@pytest.mark.parametrize(
    "settings",
    [
        {"terminationGracePeriodSeconds": 5 + DRAIN_SECONDS},
        {"shutdownDelaySeconds": 0, "terminationGracePeriodSeconds": DRAIN_SECONDS},
        {
            "extraEnv": [{"name": "BROKER_SERVER_DRAIN_TIMEOUT_SECONDS", "value": "10"}],
            "terminationGracePeriodSeconds": 15,
        },
    ],
    ids=["exactly-delay-plus-drain", "no-delay", "shorter-drain"],
)
def test_grace_period_covering_delay_and_drain_accepted(helm: Helm, settings: Settings) -> None:
    rendered = helm.template([DEFAULT], settings)
    assert (
        rendered.pod_spec["terminationGracePeriodSeconds"]
        == settings["terminationGracePeriodSeconds"]
    )


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"terminationGracePeriodSeconds": 4 + DRAIN_SECONDS},
            f"terminationGracePeriodSeconds: {4 + DRAIN_SECONDS} is shorter than "
            f"shutdownDelaySeconds (5) plus the drain timeout ({DRAIN_SECONDS}, "
            f"BROKER_SERVER_DRAIN_TIMEOUT_SECONDS): Kubernetes would kill pods while requests "
            f"are in flight; set it to at least {5 + DRAIN_SECONDS}",
        ),
        ({"shutdownDelaySeconds": 15}, f"set it to at least {15 + DRAIN_SECONDS}"),
        (
            {"extraEnv": [{"name": "BROKER_SERVER_DRAIN_TIMEOUT_SECONDS", "value": "40"}]},
            "plus the drain timeout (40, BROKER_SERVER_DRAIN_TIMEOUT_SECONDS)",
        ),
        (
            {
                "extraEnv": [
                    {
                        "name": "BROKER_SERVER_DRAIN_TIMEOUT_SECONDS",
                        "valueFrom": {"configMapKeyRef": {"name": "tuning", "key": "drain"}},
                    }
                ]
            },
            "give BROKER_SERVER_DRAIN_TIMEOUT_SECONDS as a value, not valueFrom",
        ),
    ],
    ids=["grace-too-short", "longer-delay", "longer-drain", "drain-the-chart-cannot-read"],
)
def test_grace_period_shorter_than_delay_and_drain_refused(
    helm: Helm, settings: Settings, message: str
) -> None:
    with pytest.raises(HelmError, match=re.escape(message)):
        helm.template([DEFAULT], settings)


def test_chart_docs_describe_policy_hot_reload() -> None:
    """The broker reloads policies while running (broker/reload.py): the chart's docs must not
    send operators after a restart, or let them think an edit is not live yet."""
    for name in (
        "README.md",
        "templates/NOTES.txt",
        "templates/deployment.yaml",
        "templates/configmap-policies.yaml",
    ):
        text = " ".join((CHART / name).read_text().split())
        assert "reload" in text, name
        assert "policies once" not in text, name
        assert "policies and the API key once" not in text, name


def test_multi_issuer_values_become_the_broker_config_file(
    ci_rendered: dict[str, Rendered],
) -> None:
    rendered = ci_rendered["multi-issuer"]
    env = env_of(rendered.container())
    assert env["BROKER_AUTH_CONFIG_FILE"] == "/etc/token-broker/auth/issuers.yaml"
    assert not any(
        name.startswith("BROKER_AUTH_") and name != "BROKER_AUTH_CONFIG_FILE" for name in env
    )
    config = yaml.safe_load(rendered.one("ConfigMap", f"{FULLNAME}-auth")["data"]["issuers.yaml"])
    tenant_a, entra = config["issuers"]
    assert tenant_a == {
        "issuer": "https://tenant-a.eu.auth0.com/",
        "audiences": ["https://broker.example.com"],
        "algorithms": ["RS256"],
        "typ": "at+jwt",
        "required_claims": ["email"],
    }
    assert entra["subject_claim"] == "oid"
    assert entra["leeway_seconds"] == 0
    assert entra["max_token_age_seconds"] == 3600
    assert entra["jwks_url"].endswith("/discovery/v2.0/keys")


def test_topology_spread_defaults_to_hostnames_with_the_pod_selector(
    ci_rendered: dict[str, Rendered],
) -> None:
    assert ci_rendered["default"].pod_spec["topologySpreadConstraints"] == [
        {
            "maxSkew": 1,
            "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": SELECTOR},
        }
    ]
    keys = [c["topologyKey"] for c in ci_rendered["ha"].pod_spec["topologySpreadConstraints"]]
    assert keys == ["topology.kubernetes.io/zone", "kubernetes.io/hostname"]
    assert "topologySpreadConstraints" not in ci_rendered["multi-issuer"].pod_spec


def test_service_monitor_only_when_enabled(ci_rendered: dict[str, Rendered]) -> None:
    for name, rendered in ci_rendered.items():
        assert bool(rendered.all("ServiceMonitor")) == (name == "metrics-servicemonitor"), name


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"smithery.apiKey": ""}, "smithery: set apiKey"),
        ({"smithery.existingSecret": "mine"}, "set either apiKey or existingSecret"),
        ({"existingPolicyConfigMap": "mine"}, "either policies or existingPolicyConfigMap"),
        ({"auth.issuer": ""}, "auth.issuer: required"),
        ({"auth.audiences": []}, "auth.audiences: at least one audience"),
        ({"auth.issuers[0].issuer": "https://b/", "auth.issuers[0].audiences[0]": "x"}, "not both"),
        ({"otel.enabled": "true"}, "otel.endpoint: required"),
        (
            {"autoscaling.enabled": "true", "autoscaling.minReplicas": "9"},
            "minReplicas must not exceed maxReplicas",
        ),
        ({"metrics.port": 8080}, "metrics.port: 8080 is the API port; choose a port of its own"),
    ],
)
def test_inconsistent_values_are_refused(helm: Helm, settings: Settings, message: str) -> None:
    with pytest.raises(HelmError, match=message):
        helm.template([DEFAULT], settings)


@pytest.mark.parametrize("name", ["default", "ha", "metrics-servicemonitor", "multi-issuer"])
def test_broker_check_accepts_the_rendered_configuration(
    ci_rendered: dict[str, Rendered], name: str, tmp_path: Path
) -> None:
    """The real ``broker check``, given the init container's env and files, finds no problem."""
    env = materialize(ci_rendered[name], "check", tmp_path / "pod")
    result = run_broker_check(env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("broker: ok:")
    assert "warning" not in result.stderr


def test_broker_check_reports_a_broken_policy(helm: Helm, tmp_path: Path) -> None:
    rendered = helm.template([DEFAULT], {"policies.broken\\.yaml": "rules: [{id: x}]"})
    env = materialize(rendered, "check", tmp_path / "pod")
    result = run_broker_check(env, tmp_path)
    assert result.returncode == 2
    assert "broken.yaml" in result.stderr


def _volume(rendered: Rendered, name: str) -> dict[str, Any]:
    volumes: list[dict[str, Any]] = rendered.pod_spec["volumes"]
    (volume,) = [v for v in volumes if v["name"] == name]
    return volume


def _pod_annotations(rendered: Rendered) -> dict[str, str]:
    metadata = rendered.one("Deployment")["spec"]["template"]["metadata"]
    annotations: dict[str, str] = metadata.get("annotations", {})
    return annotations
