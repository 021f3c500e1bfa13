"""Every JSON field of every route, given each value that Python, JSON and UTF-8 disagree about.

Each case puts one raw JSON value (a number past the float range or past ``int()``'s digit
limit, an unpaired surrogate escape, a NUL, a line separator, a deep or a huge value...) into one
field position of an otherwise valid body and sends it to the broker in-process. The answer may
be anything a caller can act on (2xx, a 4xx problem, a JSON-RPC error relayed with 200 or 502),
never a 500: each of these values once reached one somewhere (``tests/test_jsonrpc.py``,
``test_security_regressions.py``, ``test_connections_route.py``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Final

import pytest
import pytest_asyncio
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from broker.config import AdminSettings, Secret, TelemetrySettings
from broker.telemetry import setup_telemetry
from tests.inprocess import Harness, harness

ADMIN: Final = "admin-token-hostile-values-0123"

VALUES: Final = {
    "null": "null",
    "true": "true",
    "zero": "0",
    "negative_zero": "-0",
    "fraction": "1.5",
    "past_2_64": str(2**64 + 1),
    "past_float_range": "1" + "0" * 400,
    "overflows_to_infinity": "1e999",
    "underflows_to_zero": "1e-999",
    "at_digit_limit": "9" * 4300,
    "past_digit_limit": "9" * 4301,
    "unpaired_high_surrogate": '"\\ud800"',
    "unpaired_low_surrogate": '"x\\udfff"',
    "nul": '"\\u0000"',
    "line_separator": '"\\u2028"',
    "empty_string": '""',
    "long_string": '"' + "a" * 70_000 + '"',
    "regex_syntax": '"(a+)+$"',
    "interpolation_syntax": '"{claims.sub}"',
    "empty_array": "[]",
    "empty_object": "{}",
    "object_with_surrogate_key": '{"\\udc00": 1}',
    "deep": "[" * 60 + "]" * 60,
}

PARAMS: Final = '{"name": "get_issue", "arguments": {"owner": "o", "repo": "r", "number": 1}}'


def call(params: str = PARAMS, request_id: str = "1") -> str:
    return f'{{"jsonrpc": "2.0", "id": {request_id}, "method": "tools/call", "params": {params}}}'


def precheck(request: str, namespace: str = '"my-app"', where: str = "") -> str:
    return f'{{"namespace": {namespace}, {where}"request": {request}}}'


# (route, JSON body template with one @ for the value)
POSITIONS: Final = {
    "tokens.rules": ("tokens", '{"rules": @}'),
    "tokens.rules[0]": ("tokens", '{"rules": [@]}'),
    "precheck.namespace": ("precheck", precheck(call(), namespace="@")),
    "precheck.connectionId": ("precheck", precheck(call(), where='"connectionId": @, ')),
    "precheck.metadata": ("precheck", precheck(call(), where='"metadata": @, ')),
    "precheck.metadata.userId": (
        "precheck",
        precheck(call(), where='"metadata": {"userId": @}, '),
    ),
    "precheck.request": ("precheck", precheck("@")),
    "precheck.request.id": ("precheck", precheck(call(request_id="@"))),
    "precheck.request.method": ("precheck", precheck('{"jsonrpc": "2.0", "id": 1, "method": @}')),
    "precheck.request.params": ("precheck", precheck(call("@"))),
    "precheck.request.params.name": ("precheck", precheck(call('{"name": @}'))),
    "proxy.jsonrpc": ("proxy", '{"jsonrpc": @, "id": 1, "method": "ping"}'),
    "proxy.id": ("proxy", call(request_id="@")),
    "proxy.id.denied": ("proxy", call('{"name": "delete_repository"}', request_id="@")),
    "proxy.method": ("proxy", '{"jsonrpc": "2.0", "id": 1, "method": @}'),
    "proxy.params": ("proxy", call("@")),
    "proxy.params.name": ("proxy", call('{"name": @}')),
    "proxy.params.arguments": ("proxy", call('{"name": "get_issue", "arguments": @}')),
    "connections.mcpUrl": ("connections", '{"mcpUrl": @}'),
    "connections.name": ("connections", '{"mcpUrl": "https://mcp.example/mcp", "name": @}'),
    "connections.metadata": (
        "connections",
        '{"mcpUrl": "https://mcp.example/mcp", "metadata": @}',
    ),
    "connections.metadata.value": (
        "connections",
        '{"mcpUrl": "https://mcp.example/mcp", "metadata": {"team": @}}',
    ),
    "connections.headers.value": (
        "connections",
        '{"mcpUrl": "https://mcp.example/mcp", "headers": {"X-Key": @}}',
    ),
    "explain.claims": ("explain", '{"claims": @}'),
    "explain.claims.groups": ("explain", '{"claims": {"sub": "sam", "groups": @}}'),
    "explain.claims.sub": ("explain", '{"claims": {"sub": @, "org_id": "acme"}}'),
    "explain.request": (
        "explain",
        '{"claims": {"sub": "sam", "groups": ["support"]}, "namespace": "my-app", "request": @}',
    ),
    "revoke.subject": ("revoke", '{"subject": @}'),
    "revoke.seconds": ("revoke", '{"rule": "support-github-readonly", "seconds": @}'),
}

PATHS: Final = {
    "tokens": ("POST", "/v1/tokens"),
    "precheck": ("POST", "/v1/precheck"),
    "proxy": ("POST", "/v1/mcp/my-app/support-github"),
    "connections": ("PUT", "/v1/connections/my-app/{sub}-hostile"),
    "explain": ("POST", "/v1/explain"),
    "revoke": ("POST", "/v1/admin/revoke"),
}


# One broker for all cases (several hundred): its event loop lives as long as the module.
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=["untraced", "traced"])
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    """Traced too: the odd values then also become span attributes and events."""
    telemetry = None
    if request.param == "traced":
        exporter = InMemorySpanExporter()
        telemetry = setup_telemetry(TelemetrySettings(subject="raw"), {}, exporter=exporter)
    async with harness(telemetry=telemetry, admin=AdminSettings(token=Secret(ADMIN))) as h:
        await h.create_connection(
            "my-app", "support-github", metadata={"connectionId": "support-github"}
        )
        # Hundreds of requests from one user: the per-user request limit (tested on its own)
        # would answer most of them 429 before they reach the code under test.
        h.state.request_limit = None
        yield h


@pytest.mark.parametrize("value", VALUES.values(), ids=VALUES.keys())
@pytest.mark.parametrize("position", POSITIONS.values(), ids=POSITIONS.keys())
async def test_no_value_in_any_field_is_a_server_error(
    broker: Harness, position: tuple[str, str], value: str
) -> None:
    route, template = position
    method, path = PATHS[route]
    sub = "sam"
    admin = route in ("explain", "revoke")
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
        "Authorization": f"Bearer {ADMIN}"
        if admin
        else broker.auth(sub, groups=["support"], email_verified=True)["Authorization"],
    }
    body = template.replace("@", value).encode()
    response = await broker.client.request(
        method, path.format(sub=sub), content=body, headers=headers
    )
    assert response.status_code != 429, "the case did not reach the code under test"
    assert response.status_code < 500 or (
        route == "proxy" and response.status_code == 502  # the demo MCP server is not running
    ), response.text[:300]
    if response.status_code >= 400 and response.headers["content-type"].startswith(
        "application/problem+json"
    ):
        problem = response.json()
        assert problem["status"] == response.status_code
        assert problem["code"] != "internal_error"
