"""Traces for every decision (in-memory exporter), metrics, audit lines, and privacy settings."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from broker.config import Secret, TelemetrySettings
from broker.errors import ConfigError
from broker.telemetry import (
    Telemetry,
    capture_audit,
    route_template,
    select_trace_exporter,
    setup_telemetry,
)
from tests.inprocess import Harness, harness

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
async def traced() -> AsyncIterator[tuple[Harness, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    telemetry = setup_telemetry(TelemetrySettings(subject="raw"), {}, exporter=exporter)
    async with harness(telemetry=telemetry) as h:
        await h.create_connection(
            "my-app", "support-github", metadata={"connectionId": "support-github"}
        )
        exporter.clear()
        yield h, exporter


def tree(spans: tuple[ReadableSpan, ...]) -> dict[str, str | None]:
    """span name → parent span name."""
    by_id = {s.context.span_id: s for s in spans}
    out: dict[str, str | None] = {}
    for span in spans:
        parent = by_id.get(span.parent.span_id) if span.parent else None
        out[span.name] = parent.name if parent else None
    return out


def named(spans: tuple[ReadableSpan, ...], name: str) -> ReadableSpan:
    [span] = [s for s in spans if s.name == name]
    return span


async def test_token_flow_span_tree_one_trace_end_to_end(
    traced: tuple[Harness, InMemorySpanExporter],
) -> None:
    h, exporter = traced
    response = await h.client.post("/v1/tokens", headers=h.auth("alice", email_verified=True))
    assert response.status_code == 200
    spans = exporter.get_finished_spans()
    parents = tree(spans)
    assert parents["POST /v1/tokens"] is None
    assert parents["broker.authenticate"] == "POST /v1/tokens"
    assert parents["broker.policy.evaluate"] == "POST /v1/tokens"
    assert parents["broker.cache.lookup"] == "POST /v1/tokens"
    assert parents["broker.token.mint"] == "broker.cache.lookup"
    [client] = [s for s in spans if s.name == "POST" and parents[s.name] == "broker.token.mint"]
    [emulator] = [s for s in spans if s.parent and s.parent.span_id == client.context.span_id]
    assert emulator.name.startswith("POST /tokens")
    assert len({s.context.trace_id for s in spans}) == 1
    evaluate = named(spans, "broker.policy.evaluate").attributes or {}
    assert evaluate["broker.rules.matched"] == ("own-connections",)
    assert evaluate["broker.policy.revision"] == h.state.policy_set.revision
    assert len(str(evaluate["broker.constraints.digest"])) == 64
    lookup = named(spans, "broker.cache.lookup").attributes or {}
    assert lookup["broker.cache.hit"] is False
    assert len(str(lookup["broker.token.fingerprint"])) == 16
    assert named(spans, "broker.authenticate").attributes["enduser.id"] == "alice"  # type: ignore[index]


async def test_caller_trace_context_is_continued(
    traced: tuple[Harness, InMemorySpanExporter],
) -> None:
    h, exporter = traced
    await h.client.post(
        "/v1/tokens", headers={**h.auth("alice", email_verified=True), "traceparent": TRACEPARENT}
    )
    server = named(exporter.get_finished_spans(), "POST /v1/tokens")
    assert format(server.context.trace_id, "032x") == "0af7651916cd43dd8448eb211c80319c"


async def test_callers_baggage_is_not_passed_on_to_smithery() -> None:
    """The trace continues upstream; the caller's baggage (theirs to write) stays behind."""
    seen: list[httpx.Request] = []

    class Recording(httpx.AsyncBaseTransport):
        def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
            self.inner = inner

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            seen.append(request)
            return await self.inner.handle_async_request(request)

    exporter = InMemorySpanExporter()
    telemetry = setup_telemetry(TelemetrySettings(subject="raw"), {}, exporter=exporter)
    upstream = lambda app: Recording(httpx.ASGITransport(app=app))  # noqa: E731
    async with harness(telemetry=telemetry, upstream=upstream) as h:
        response = await h.client.post(
            "/v1/tokens",
            headers={
                **h.auth("alice", email_verified=True),
                "traceparent": TRACEPARENT,
                "baggage": "tenant=someone-else,role=admin",
            },
        )
        assert response.status_code == 200
    [mint] = [r for r in seen if r.url.path == "/tokens"]
    assert mint.headers["traceparent"].startswith("00-0af7651916cd43dd8448eb211c80319c-")
    assert "baggage" not in mint.headers


async def test_denied_precheck_sets_status_and_events(
    traced: tuple[Harness, InMemorySpanExporter],
) -> None:
    h, exporter = traced
    body = {
        "namespace": "my-app",
        "metadata": {"connectionId": "support-github"},
        "request": {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "delete_repository", "arguments": {"x": 1}},
        },
    }
    response = await h.client.post(
        "/v1/precheck", json=body, headers=h.auth("sam", groups=["support"])
    )
    assert response.json()["allowed"] is False
    span = named(exporter.get_finished_spans(), "broker.precheck")
    attributes = span.attributes or {}
    assert attributes["broker.decision"] == "deny"
    assert attributes["broker.deny.reason"] == "rpc_pattern_mismatch"
    assert attributes["mcp.method"] == "tools/call"
    assert attributes["mcp.tool.name"] == "delete_repository"
    assert span.status.status_code.name == "ERROR"
    [event] = span.events
    assert event.name == "broker.denied"
    assert (
        "support-github-readonly:rpc_pattern_mismatch:params.name"
        in (event.attributes or {})["reasons"]
    )


async def test_failed_authentication_span_has_reason_not_token(
    traced: tuple[Harness, InMemorySpanExporter],
) -> None:
    h, exporter = traced
    response = await h.client.post("/v1/tokens", headers={"Authorization": "Bearer a.b.c"})
    assert response.status_code == 401
    span = named(exporter.get_finished_spans(), "broker.authenticate")
    assert (span.attributes or {})["broker.deny.reason"] == "invalid_token"
    assert span.events[0].attributes["broker.auth.reason"] == "malformed"  # type: ignore[index]
    assert "a.b.c" not in json.dumps([s.to_json() for s in exporter.get_finished_spans()])


async def test_metrics_endpoint(traced: tuple[Harness, InMemorySpanExporter]) -> None:
    h, _ = traced
    auth = h.auth("alice", email_verified=True)
    await h.client.post("/v1/tokens", headers=auth)
    await h.client.post("/v1/tokens", headers=auth)
    await h.client.post("/v1/tokens", headers=h.auth("mallory"))
    text = (await h.client.get("/metrics")).text
    assert 'broker_http_requests_total{route="/v1/tokens",method="POST",status="200"} 2' in text
    assert 'broker_http_requests_total{route="/v1/tokens",method="POST",status="403"} 1' in text
    assert 'broker_token_decisions_total{result="deny",reason="no_matching_rule"} 1' in text
    assert 'broker_upstream_mints_total{result="ok"} 1' in text
    assert 'broker_cache_events_total{event="hit"} 1' in text
    assert f'broker_policy_info{{revision="{h.state.policy_set.revision}"}} 1' in text
    assert 'broker_upstream_request_duration_seconds_count{operation="mint"} 1' in text
    assert "# TYPE broker_upstream_request_duration_seconds histogram" in text


async def test_audit_line_per_decision_with_trace_id(
    traced: tuple[Harness, InMemorySpanExporter],
) -> None:
    h, _ = traced
    with capture_audit() as lines:
        await h.client.post("/v1/tokens", headers=h.auth("alice", email_verified=True))
        await h.client.post("/v1/tokens", headers=h.auth("mallory"))
    records = [json.loads(line) for line in lines]
    assert [r["event"] for r in records] == ["token.minted", "token.issued", "token.denied"]
    minted, issued, denied = records
    assert issued["subject"] == "alice"
    assert issued["rules"] == ["own-connections"]
    assert len(issued["trace_id"]) == 32
    assert len(issued["decision_id"]) == 16
    assert issued["decision_id"] != denied["decision_id"]
    assert issued["cache_hit"] is False
    assert denied["reason"] == "no_matching_rule"
    # The mint itself, in the request's trace; when the token expires, never the token.
    assert {k: minted[k] for k in ("subject", "rules", "digest", "revision", "trace_id")} == {
        k: issued[k] for k in ("subject", "rules", "digest", "revision", "trace_id")
    }
    assert minted["expires_at"] > minted["time"]
    assert "token" not in minted


async def test_decision_records_carry_their_own_requests_trace_id(
    traced: tuple[Harness, InMemorySpanExporter],
) -> None:
    """A precheck decision is audited once its answer is written (``Admission.decide``): the
    record must still name the request's trace and the decision's time."""
    h, exporter = traced
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "get_issue"}}
    body = {"namespace": "my-app", "connectionId": "support-github", "request": call}
    windows = {}
    with capture_audit() as lines:
        for subject in ("sam", "kim"):
            before = time.time()
            response = await h.client.post(
                "/v1/precheck", json=body, headers=h.auth(subject, groups=["support"])
            )
            assert response.status_code == 200
            assert response.json()["allowed"] is True
            windows[subject] = (before, time.time())
        await h.settle()
    records = {r["subject"]: r for r in map(json.loads, b"".join(lines).splitlines())}
    assert set(records) == {"sam", "kim"}
    for subject, (before, after) in windows.items():
        assert before - 0.001 <= records[subject]["time"] <= after + 0.001
    authenticated = {
        s.attributes["enduser.id"]: format(s.context.trace_id, "032x")
        for s in exporter.get_finished_spans()
        if s.name == "broker.authenticate" and s.attributes is not None
    }
    assert {s: r["trace_id"] for s, r in records.items()} == authenticated
    assert authenticated["sam"] != authenticated["kim"]


async def test_a_decision_just_before_shutdown_is_in_the_audit_log_after_it() -> None:
    call = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    with capture_audit() as lines:
        async with harness() as h:
            response = await h.client.post(
                "/v1/precheck",
                json={"namespace": "my-app", "metadata": {}, "request": call},
                headers=h.auth("sam", groups=["support"]),
            )
            assert response.status_code == 200
        # The app has shut down; capture_audit has not flushed yet.
        records = [json.loads(line) for line in b"".join(lines).splitlines()]
    assert [r["event"] for r in records] == ["precheck.decision"]


@pytest.mark.parametrize(("mode", "expected"), [("raw", "alice"), ("omit", None)])
def test_subject_privacy_modes(mode: str, expected: Any) -> None:
    telemetry = setup_telemetry(TelemetrySettings(subject=mode), {})
    assert telemetry.enduser("alice") == expected


def test_hashed_subject_is_keyed_and_stable() -> None:
    key = TelemetrySettings(subject="hash", hash_key=Secret("k" * 32))
    first, second = setup_telemetry(key, {}), setup_telemetry(key, {})
    other = setup_telemetry(TelemetrySettings(subject="hash", hash_key=Secret("x" * 32)), {})
    assert first.enduser("alice") == second.enduser("alice") != other.enduser("alice")
    assert "alice" not in str(first.enduser("alice"))


def test_tracing_off_by_default_and_from_otel_variables() -> None:
    assert not setup_telemetry(TelemetrySettings(), {}).enabled
    assert not setup_telemetry(TelemetrySettings(), {"OTEL_TRACES_EXPORTER": "none"}).enabled
    assert not setup_telemetry(
        TelemetrySettings(), {"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"}
    ).enabled
    console = setup_telemetry(TelemetrySettings(), {"OTEL_TRACES_EXPORTER": "console"})
    assert console.enabled
    assert console.provider is not None
    assert console.provider.resource.attributes["service.name"] == "token-broker"
    console.shutdown()


@pytest.mark.parametrize(
    ("environ", "exporter"),
    [
        ({}, None),
        ({"OTEL_TRACES_EXPORTER": "none"}, None),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, None),
        ({"OTEL_TRACES_EXPORTER": "grpc", "OTEL_SDK_DISABLED": "true"}, None),
        ({"OTEL_TRACES_EXPORTER": " Console "}, "console"),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, "otlp"),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, "otlp"),
    ],
)
def test_trace_exporter_selected_from_otel_variables(
    environ: dict[str, str], exporter: str | None
) -> None:
    assert select_trace_exporter(environ) == exporter


@pytest.mark.parametrize(
    ("environ", "problem"),
    [
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            "OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc' is not supported; use http/protobuf",
        ),
        (
            {
                "OTEL_TRACES_EXPORTER": "otlp",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json",
            },
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: 'http/json' is not supported",
        ),
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER: 'zipkin' is not supported"),
    ],
)
def test_unsupported_trace_exporter_refused(environ: dict[str, str], problem: str) -> None:
    with pytest.raises(ConfigError) as raised:
        select_trace_exporter(environ)
    assert problem in raised.value.problems[0]
    with pytest.raises(ConfigError):  # serve's setup makes the same decision
        setup_telemetry(TelemetrySettings(), environ)


def test_disabled_span_is_a_shared_noop() -> None:
    telemetry = Telemetry()
    with telemetry.span("x") as span:
        assert span is None
    assert telemetry.span("a") is telemetry.span("b")


@pytest.mark.parametrize(
    ("path", "template"),
    [
        ("/v1/tokens", "/v1/tokens"),
        ("/v1/mcp/ns/conn-1", "/v1/mcp/{namespace}/{connectionId}"),
        ("/wp-admin.php", "unmatched"),
        ("/schema/openapi.json", "/schema"),
    ],
)
def test_route_templates_bound_cardinality(path: str, template: str) -> None:
    assert route_template(path) == template


async def test_metrics_on_a_separate_port_app() -> None:
    from litestar.testing import AsyncTestClient

    from broker.app import create_metrics_app
    from broker.config import Settings

    async with harness() as h:
        settings = Settings(telemetry=TelemetrySettings(metrics_port=9100))
        assert settings.telemetry.metrics_port == 9100
        await h.client.post("/v1/tokens", headers=h.auth("alice", email_verified=True))
        async with AsyncTestClient(create_metrics_app(h.client.app)) as metrics:
            text = (await metrics.get("/metrics")).text
        assert 'broker_upstream_mints_total{result="ok"} 1' in text


def test_connection_routes_have_templates() -> None:
    assert route_template("/v1/connections/my-app") == "/v1/connections/{namespace}"
    assert route_template("/v1/connections/my-app/alice-x") == (
        "/v1/connections/{namespace}/{connectionId}"
    )


async def test_spans_name_routes_and_drop_queries_not_users_ids() -> None:
    """With subjects hashed, neither a connection id (it starts with its owner's prefix) nor
    the metadata filter of a connection list (metadata.userId=...) is in a span."""
    exporter = InMemorySpanExporter()
    telemetry = setup_telemetry(TelemetrySettings(subject="hash"), {}, exporter=exporter)
    async with harness(telemetry=telemetry) as h:
        alice = h.auth("alice", email_verified=True)
        created = await h.client.put(
            "/v1/connections/my-app/alice-mine",
            json={"mcpUrl": "https://server.smithery.ai/github/mcp"},
            headers=alice,
        )
        assert created.status_code == 201, created.text
        listed = await h.client.get("/v1/connections/my-app", headers=alice)
        assert listed.status_code == 200
        spans = exporter.get_finished_spans()
    broker_spans = [s for s in spans if s.instrumentation_scope.name != "emulator"]
    server = named(spans, "PUT /v1/connections/{namespace}/{connectionId}").attributes or {}
    assert server["http.target"] == "/v1/connections/{namespace}/{connectionId}"
    assert "alice" not in str(server["http.url"])
    clients = [s for s in broker_spans if s.name == "GET" and "http.url" in (s.attributes or {})]
    assert clients
    for span in clients:
        assert "?" not in str(span.attributes["http.url"])  # type: ignore[index]
    assert "alice" not in " ".join(str((s.attributes or {}).get("http.url")) for s in clients)


async def test_a_caller_cannot_switch_off_the_tracing_of_its_decisions(
    traced: tuple[Harness, InMemorySpanExporter],
) -> None:
    """``traceparent`` with the sampled flag off: the default sampler followed the caller, and
    the caller's own decisions were never traced (the audit line still was)."""
    h, exporter = traced
    unsampled = TRACEPARENT[:-2] + "00"
    response = await h.client.post(
        "/v1/tokens", headers={**h.auth("alice", email_verified=True), "traceparent": unsampled}
    )
    assert response.status_code == 200
    server = named(exporter.get_finished_spans(), "POST /v1/tokens")
    assert format(server.context.trace_id, "032x") == "0af7651916cd43dd8448eb211c80319c"


async def test_spans_carry_an_exceptions_code_not_its_message() -> None:
    """Messages name connection ids and id prefixes, that is users, which the subject setting
    keeps out of traces (``Your connection ids must start with 'alice-'``)."""
    exporter = InMemorySpanExporter()
    telemetry = setup_telemetry(TelemetrySettings(subject="hash"), {}, exporter=exporter)
    async with harness(telemetry=telemetry) as h:
        response = await h.client.put(
            "/v1/connections/my-app/not-alices-id",
            json={"mcpUrl": "https://mcp.example.com/mcp"},
            headers=h.auth("alice", email_verified=True),
        )
    assert response.status_code == 403
    assert "alice-" in response.json()["detail"]  # the caller is told
    provision = named(exporter.get_finished_spans(), "broker.provision")
    assert provision.status.description == "connection_id_not_allowed"
    exported = json.dumps(
        [
            [s.status.description, [(e.name, dict(e.attributes or {})) for e in s.events]]
            for s in exporter.get_finished_spans()
        ]
    )
    assert "alice" not in exported


async def test_a_token_that_smithery_fails_to_mint_is_an_audited_failure(
    traced: tuple[Harness, InMemorySpanExporter],
) -> None:
    """The caller got 503 and the trace had error spans, but the audit log said nothing."""
    h, _ = traced
    fault = {"route": "tokens", "mode": "status", "status": 400}
    assert (await h.emulator.post("/_emulator/faults", json=fault)).status_code == 200
    with capture_audit() as lines:
        response = await h.client.post("/v1/tokens", headers=h.auth("alice", email_verified=True))
    assert response.status_code == 502
    records = [json.loads(line) for line in lines]
    assert [(r["event"], r["reason"]) for r in records] == [("token.failed", "upstream_rejected")]
    assert records[0]["rules"] == ["own-connections"]


@pytest.mark.parametrize("mode", ["hash", "omit"])
async def test_connection_ids_in_the_audit_log_do_not_name_the_user(mode: str) -> None:
    """Ids start with their owner's subject (``idPrefix: "{claims.sub}-"``): a hashed or omitted
    subject would be in the clear next to it."""
    telemetry = Telemetry(subject_mode=mode)
    call = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    with capture_audit() as lines:
        async with harness(telemetry=telemetry) as h:
            alice = h.auth("alice.smith", email_verified=True)
            created = await h.client.put(
                "/v1/connections/my-app/alice.smith-github",
                json={"mcpUrl": "https://server.smithery.ai/github"},
                headers=alice,
            )
            assert created.status_code == 201
            checked = await h.client.post(
                "/v1/precheck",
                json={"namespace": "my-app", "connectionId": "alice.smith-github", "request": call},
                headers=alice,
            )
            assert checked.json()["allowed"] is True
    records = [json.loads(line) for line in b"".join(lines).splitlines()]
    assert {r["event"] for r in records} >= {"connection.create", "precheck.decision"}
    assert "alice" not in b"".join(lines).decode()
    connections = {r.get("connection") for r in records if "namespace" in r}
    if mode == "omit":
        assert connections == {None}
    else:
        [hashed] = connections
        assert hashed == "h:" + telemetry.keyed_hash("connection:alice.smith-github")
