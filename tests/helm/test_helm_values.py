"""The chart's values: constrained by values.schema.json (helm rejects unknown and mistyped values),
documented by a comment in values.yaml and by the chart README's table, which must list exactly
the keys of values.yaml with their types and defaults."""

from __future__ import annotations

import fnmatch
import json
import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

import jsonschema
import pytest
import yaml

from tests.helm.chart import CHART, ROOT, Helm, Settings, ci_values, template_args

pytestmark = pytest.mark.integration

VALUES_TEXT: Final = (CHART / "values.yaml").read_text()
SCHEMA: Final[dict[str, Any]] = json.loads((CHART / "values.schema.json").read_text())
README_ROW: Final = re.compile(
    r"^\| `(?P<key>[^`]+)` \| (?P<type>[^|]+) \| `(?P<default>.*)` \| (?P<doc>.+) \|$"
)
#: Schema objects that are Kubernetes types passed through verbatim: their content is checked by
#: the Kubernetes API (and kubernetes-validate in test_helm_render.py), not enumerated here.
PASS_THROUGH_OBJECTS: Final = (
    "/properties/global",
    "/properties/affinity/properties/*",
    "/definitions/volume/properties/*",
    "/definitions/envVar/properties/valueFrom/properties/*",
)
JSON_TYPE_NAMES: Final = {"array": "list"}


@dataclass(frozen=True)
class Value:
    """One documented value of values.yaml: a scalar, a list, or an empty (free-form) map."""

    key: str
    default: Any
    comment: str
    schema: dict[str, Any]


def documented_values() -> list[Value]:
    lines = VALUES_TEXT.splitlines()
    found: list[Value] = []

    def walk(node: yaml.MappingNode, prefix: str, schema: dict[str, Any]) -> None:
        for key_node, value_node in node.value:
            key = prefix + key_node.value
            sub_schema = _resolve(schema)["properties"][key_node.value]
            if isinstance(value_node, yaml.MappingNode) and value_node.value:
                walk(value_node, key + ".", sub_schema)
                continue
            default = yaml.safe_load(yaml.serialize(value_node))
            comment = lines[key_node.start_mark.line - 1].strip()
            found.append(Value(key, default, comment, sub_schema))

    root = yaml.compose(VALUES_TEXT)
    assert isinstance(root, yaml.MappingNode)
    walk(root, "", SCHEMA)
    return found


def readme_rows() -> dict[str, dict[str, str]]:
    text = (CHART / "README.md").read_text()
    rows = {}
    for line in text.splitlines():
        match = README_ROW.match(line)
        if match:
            assert match["key"] not in rows, f"{match['key']} listed twice"
            rows[match["key"]] = match.groupdict()
    return rows


def type_name(schema: dict[str, Any]) -> str:
    """The README's name of a schema's type: ``list``, ``integer or string``, ..."""
    schema = _resolve(schema)
    if "type" in schema:
        name: str = schema["type"]
        return JSON_TYPE_NAMES.get(name, name)
    names = {type_name(option) for option in schema["oneOf"]}
    return " or ".join(sorted(names))


def _coalesce(defaults: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Helm's merge of a values file over the defaults: maps merge key by key, the rest replaces."""
    merged = dict(defaults)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _coalesce(merged[key], value)
        else:
            merged[key] = value
    return merged


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = SCHEMA["definitions"][schema["$ref"].removeprefix("#/definitions/")]
    return schema


def schema_nodes(node: Any, pointer: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    if not isinstance(node, dict):
        return
    yield pointer, node
    for keyword in ("properties", "definitions"):
        for name, child in node.get(keyword, {}).items():
            yield from schema_nodes(child, f"{pointer}/{keyword}/{name}")
    for keyword in ("items", "additionalProperties", "not", "propertyNames"):
        yield from schema_nodes(node.get(keyword), f"{pointer}/{keyword}")
    for index, child in enumerate(node.get("oneOf", [])):
        yield from schema_nodes(child, f"{pointer}/oneOf/{index}")


def test_every_value_has_a_comment_in_values_yaml() -> None:
    undocumented = [v.key for v in documented_values() if not v.comment.startswith("# -- ")]
    assert undocumented == []


def test_readme_table_lists_exactly_the_values() -> None:
    values = {value.key: value for value in documented_values()}
    rows = readme_rows()
    assert sorted(rows) == sorted(values)
    for key, value in values.items():
        row = rows[key]
        assert json.loads(row["default"]) == value.default, key
        assert row["type"].strip() == type_name(value.schema), key
        assert row["doc"].strip() == value.comment.removeprefix("# -- "), key


def test_schema_is_draft_07_and_accepts_the_defaults() -> None:
    assert SCHEMA["$schema"] == "http://json-schema.org/draft-07/schema#"
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    jsonschema.Draft7Validator(SCHEMA).validate(yaml.safe_load(VALUES_TEXT))
    for path in CHART.glob("ci/*-values.yaml"):
        merged = _coalesce(yaml.safe_load(VALUES_TEXT), yaml.safe_load(path.read_text()))
        jsonschema.Draft7Validator(SCHEMA).validate(merged)


def test_schema_closes_every_object() -> None:
    """``additionalProperties`` at every level: a typo anywhere is an error, not a silent no-op."""
    open_objects = []
    for pointer, node in schema_nodes(SCHEMA):
        if node.get("type") != "object":
            continue
        if "properties" in node:
            if node.get("additionalProperties") is not False:
                open_objects.append(pointer)
        elif "additionalProperties" not in node and not any(
            fnmatch.fnmatchcase(pointer, pattern) for pattern in PASS_THROUGH_OBJECTS
        ):
            open_objects.append(pointer)
    assert open_objects == []


@pytest.mark.parametrize(
    ("settings", "error"),
    [
        ({"replicaCont": "2"}, "additional properties 'replicaCont' not allowed"),
        ({"replicaCount": "two"}, "at '/replicaCount': got string, want integer"),
        ({"image.tagg": "1.0"}, "additional properties 'tagg' not allowed"),
        ({"networkPolicy.enabled": "yes"}, "at '/networkPolicy/enabled': got string, want boolean"),
        ({"metrics.serviceMonitor.interval": 30}, "at '/metrics/serviceMonitor/interval'"),
        ({"service.type": "Ingress"}, "at '/service/type'"),
        ({"podSecurityContext.runAsUser": -1}, "at '/podSecurityContext/runAsUser'"),
        ({"auth.algorithms": ["HS256"]}, "at '/auth/algorithms/0'"),
        ({"smithery.baseUrl": "ftp://smithery.example"}, "at '/smithery/baseUrl'"),
        ({"policies": {"notes.txt": "rules: []"}}, "invalid propertyName 'notes.txt'"),
        ({"cors.origins": ["https://a.example,https://b.example"]}, "at '/cors/origins/0'"),
        (
            {"auth.issuers": [{"issuer": "https://a.example/", "audience": ["x"]}]},
            "at '/auth/issuers/0'",
        ),
        ({"networkPolicy.egress.smithery.ipBlocks": [{"cidr": "any"}]}, "at '/networkPolicy"),
        ({"otel.protocol": "grpc"}, "at '/otel/protocol': value must be 'http/protobuf'"),
        ({"otel.protocol": "http/json"}, "at '/otel/protocol'"),
        ({"podDisruptionBudget.maxUnavailable": 0}, "minimum: got 0, want 1"),
        ({"podDisruptionBudget.maxUnavailable": "0%"}, "'0%' does not match pattern"),
        ({"terminationGracePeriodSeconds": 0}, "at '/terminationGracePeriodSeconds'"),
        ({"shutdownDelaySeconds": -1}, "at '/shutdownDelaySeconds'"),
    ],
    ids=[
        "misspelled",
        "mistyped",
        "misspelled-nested",
        "string-for-boolean",
        "number-for-duration",
        "unknown-service-type",
        "negative-uid",
        "hmac-algorithm",
        "non-http-base-url",
        "policy-not-yaml",
        "comma-in-origin",
        "misspelled-issuer-field",
        "not-a-cidr",
        "otlp-grpc-the-broker-cannot-export",
        "otlp-json-the-broker-cannot-export",
        "pdb-blocking-every-drain",
        "pdb-blocking-every-drain-percent",
        "no-grace-period",
        "negative-shutdown-delay",
    ],
)
def test_invalid_value_rejected(helm: Helm, settings: Settings, error: str) -> None:
    result = helm.run(*template_args([ci_values("default")], settings))
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert error in result.stderr


def test_schema_has_no_not_rules() -> None:
    """Helm prints a failed ``not`` as just "'not' failed": such checks belong in the chart's
    validate helper, whose ``fail`` names the value and the fix."""
    assert [pointer for pointer, node in schema_nodes(SCHEMA) if "not" in node] == []


def test_lint_reports_a_mistyped_value(helm: Helm) -> None:
    result = helm.run(
        "lint", "--strict", str(CHART), "-f", str(ci_values("default")), "--set", "replicaCount=two"
    )
    assert result.returncode != 0
    assert "got string, want integer" in result.stdout


def test_app_version_is_the_project_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert chart["apiVersion"] == "v2"
    assert chart["appVersion"] == project["version"]


def test_a_secret_setting_from_a_secret_is_accepted(helm: Helm) -> None:
    reference = {"secretKeyRef": {"name": "broker-admin", "key": "token"}}
    settings = {"extraEnv": [{"name": "BROKER_ADMIN_TOKEN", "valueFrom": reference}]}
    result = helm.run(*template_args([ci_values("default")], settings))
    assert result.returncode == 0, result.stderr
    assert "name: broker-admin" in result.stdout
