"""``POST /connect/{ns}/{id}/mcp``: what a token's constraints allow, as a decision table.

Each case mints a token (the first block with the API key, each further block by attenuating the
previous token) and sends one message to a connection whose ``mcpUrl`` is the recording stand-in.
Allowed means forwarded (200, the stand-in saw it); denied means 403 ``-32003`` and nothing
forwarded; hidden means 404, as ``GET`` would answer. ``rpcReqMatch`` is evaluated by node for
real: several cases are ones Python's ``re`` would decide the other way.
"""

from __future__ import annotations

from typing import Any

import pytest
from litestar.testing import TestClient

from broker.emulator import create_emulator_app
from tests.emulator.emulator_harness import (
    API_KEY,
    NAMESPACES,
    SIGNING_KEY,
    FakeClock,
    Minter,
    call_tool,
    forbidden_body,
    post_mcp,
    put_connection,
    rpc,
)
from tests.emulator.mcp_target import JSON_ANSWER, McpTarget

ALICE = {"userId": "alice", "team": "eng"}
BOB = {"userId": "bob", "team": "ops"}
EXECUTE = {"namespaces": "app", "resources": "connections", "operations": "execute"}
READ = {"namespaces": "app", "resources": "connections", "operations": "read"}
LIST = rpc("tools/list")
SEARCH = call_tool("search_issues", query="bug")
DELETE = call_tool("delete_repository", name="demo")
INITIALIZE = rpc("initialize", {"protocolVersion": "2025-06-18", "capabilities": {}})
PING = rpc("ping")
INITIALIZED = rpc("notifications/initialized", request_id=None)


def only(rules: dict[str, str], **fields: Any) -> dict[str, Any]:
    """``EXECUTE`` narrowed by an ``rpcReqMatch`` map (and any other fields)."""
    return {**EXECUTE, "rpcReqMatch": rules, **fields}


@pytest.fixture
def connections(client: TestClient[Any], target_url: str) -> None:
    put_connection(client, "alice", {"mcpUrl": f"{target_url}/json", "metadata": ALICE})
    put_connection(client, "bob", {"mcpUrl": f"{target_url}/json", "metadata": BOB})
    put_connection(client, "plain", {"mcpUrl": f"{target_url}/json"})


def _mint_blocks(mint: Minter, blocks: list[list[dict[str, Any]]]) -> str:
    token: str | None = None
    for block in blocks:
        body = {"policy": block} if block else {}
        token = mint(body, parent=token)
    assert token is not None
    return token


def _send(
    client: TestClient[Any],
    mint: Minter,
    blocks: list[list[dict[str, Any]]],
    body: bytes,
    connection_id: str,
) -> Any:
    return post_mcp(client, _mint_blocks(mint, blocks), body, connection_id=connection_id)


ALLOWED = [
    # --- namespaces, resources, operations ---------------------------------------------------
    pytest.param([[]], LIST, "alice", id="token-without-policy"),
    pytest.param([[{}]], LIST, "alice", id="empty-constraint"),
    pytest.param([[EXECUTE]], DELETE, "alice", id="execute-without-rpc-match"),
    pytest.param([[{**EXECUTE, "namespaces": ["other", "app"]}]], LIST, "alice", id="ns-list"),
    pytest.param([[{**EXECUTE, "resources": ["servers", "connections"]}]], LIST, "bob", id="res"),
    pytest.param([[{**EXECUTE, "operations": ["read", "execute"]}]], LIST, "plain", id="ops"),
    # --- metadata ----------------------------------------------------------------------------
    pytest.param([[{**EXECUTE, "metadata": ALICE}]], LIST, "alice", id="metadata-all-pairs"),
    pytest.param(
        [[{**EXECUTE, "metadata": [{"userId": "bob"}, {"team": "eng"}]}]],
        LIST,
        "alice",
        id="metadata-any-object",
    ),
    # --- rpcReqMatch: AND within a constraint, OR across, AND across blocks -------------------
    pytest.param([[only({})]], LIST, "alice", id="empty-rpc-match"),
    pytest.param([[only({"method": "^tools/list$"})]], LIST, "alice", id="method"),
    pytest.param([[only({"method": "tools"})]], SEARCH, "alice", id="search-not-fullmatch"),
    pytest.param(
        [[only({"method": "^tools/call$", "params.name": "^search_issues$"})]],
        SEARCH,
        "alice",
        id="all-entries-match",
    ),
    pytest.param(
        [[only({"method": "^tools/list$"}), only({"params.name": "^search_issues$"})]],
        SEARCH,
        "alice",
        id="second-constraint-matches",
    ),
    pytest.param(
        [[{**EXECUTE, "namespaces": "other"}, only({"method": "^tools/"})]],
        LIST,
        "alice",
        id="second-constraint-namespace",
    ),
    pytest.param(
        [[EXECUTE], [only({"params.name": "^search_issues$"})]],
        SEARCH,
        "alice",
        id="child-narrows-but-allows",
    ),
    pytest.param(
        [[only({"method": "^tools/call$"})], [{}], [only({"params.name": "^search_"})]],
        SEARCH,
        "alice",
        id="three-blocks-all-allow",
    ),
    # --- values: JavaScript's String(value) ---------------------------------------------------
    pytest.param([[only({"id": "^1$"})]], LIST, "alice", id="number-id"),
    pytest.param(
        [[only({"params.arguments.number": "^42$"})]],
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"arguments":{"number":42.0}}}',
        "alice",
        id="float-42.0-prints-42",
    ),
    pytest.param(
        [[only({"params.arguments.n": "^1000$"})]],
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"arguments":{"n":1e3}}}',
        "alice",
        id="exponent-prints-plain",
    ),
    pytest.param(
        [[only({"params.arguments.n": r"^1\.5e-7$"})]],
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"arguments":{"n":1.5e-7}}}',
        "alice",
        id="small-float-js-exponent",
    ),
    pytest.param(
        [[only({"params.arguments.n": "^0$"})]],
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"arguments":{"n":-0}}}',
        "alice",
        id="negative-zero-prints-0",
    ),
    pytest.param(
        [[only({"params.arguments.n": "^12345678901234567000$"})]],
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call",'
        b'"params":{"arguments":{"n":12345678901234567890}}}',
        "alice",
        id="big-integer-as-double",
    ),
    pytest.param(
        [[only({"params.arguments.draft": "^true$"})]],
        call_tool("create_issue", draft=True),
        "alice",
        id="boolean-prints-lowercase",
    ),
    pytest.param(
        [[only({"params.arguments.milestone": "^null$"})]],
        call_tool("create_issue", milestone=None),
        "alice",
        id="null-prints-null",
    ),
    pytest.param(
        [[only({"params.arguments.title": "^$"})]],
        call_tool("create_issue", title=""),
        "alice",
        id="empty-string",
    ),
    # --- paths ---------------------------------------------------------------------------------
    pytest.param(
        [[only({"params.arguments.labels.1": "^ui$"})]],
        call_tool("create_issue", labels=["bug", "ui"]),
        "alice",
        id="digit-indexes-array",
    ),
    pytest.param(
        [[only({"params.arguments.0": "^x$"})]],
        call_tool("create_issue", **{"0": "x"}),
        "alice",
        id="digit-key-of-object",
    ),
    pytest.param(
        [[only({"params.arguments.__proto__": "^x$"})]],
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"arguments":{"__proto__":"x"}}}',
        "alice",
        id="own-proto-key",
    ),
    pytest.param(
        [[only({"method": "^b$"})]],
        b'{"jsonrpc":"2.0","id":1,"method":"a","method":"b"}',
        "alice",
        id="duplicate-key-last-wins",
    ),
    # --- JavaScript regex syntax and Unicode --------------------------------------------------
    pytest.param([[only({"method": "^tools[^]list$"})]], LIST, "alice", id="js-empty-negset"),
    pytest.param([[only({"method": "^(?<verb>tools)/list$"})]], LIST, "alice", id="js-named-group"),
    pytest.param(
        [[only({"params.arguments.title": "^..$"})]],
        call_tool("create_issue", title="\U0001f600"),
        "alice",
        id="astral-is-two-code-units",
    ),
    pytest.param(
        [[only({"params.arguments.title": r"^\s$"})]],
        call_tool("create_issue", title="\ufeff"),
        "alice",
        id="js-whitespace-includes-bom",
    ),
    pytest.param(
        [[only({"params.arguments.title": "^caf\u00e9$"})]],
        call_tool("create_issue", title="caf\u00e9"),
        "alice",
        id="unicode-literal",
    ),
    pytest.param(
        [[only({"params.arguments.title": "^\u00e9$"})]],
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call",'
        b'"params":{"arguments":{"title":"\\u00e9"}}}',
        "alice",
        id="json-unicode-escape",
    ),
]

DENIED = [
    # --- namespaces, resources, operations ---------------------------------------------------
    pytest.param([[{**EXECUTE, "namespaces": "other"}]], LIST, "alice", id="other-namespace"),
    pytest.param([[{**EXECUTE, "resources": "servers"}]], LIST, "alice", id="other-resource"),
    pytest.param([[READ]], LIST, "alice", id="read-only"),
    pytest.param([[{**EXECUTE, "operations": "write"}]], LIST, "alice", id="write-only"),
    pytest.param(
        [[READ, {**EXECUTE, "metadata": {"userId": "bob"}}]],
        LIST,
        "alice",
        id="readable-but-not-executable",
    ),
    # --- rpcReqMatch --------------------------------------------------------------------------
    pytest.param([[only({"method": "^tools/list$"})]], SEARCH, "alice", id="method-differs"),
    pytest.param(
        [[only({"method": "^tools/call$", "params.name": "^search_issues$"})]],
        DELETE,
        "alice",
        id="one-entry-fails",
    ),
    pytest.param(
        [[only({"method": "^tools/call$", "params.name": "^search_issues$"})]],
        LIST,
        "alice",
        id="missing-path",
    ),
    pytest.param(
        [[only({"method": "^tools/list$"}), only({"params.name": "^search_issues$"})]],
        DELETE,
        "alice",
        id="no-constraint-matches",
    ),
    pytest.param(
        [[only({"method": "^tools/"}, metadata={"userId": "bob"}), READ]],
        LIST,
        "alice",
        id="rpc-matches-on-other-metadata",
    ),
    pytest.param(
        [[EXECUTE], [only({"params.name": "^search_issues$"})]],
        DELETE,
        "alice",
        id="child-block-denies",
    ),
    pytest.param(
        [[only({"params.name": "^search_issues$"})], [EXECUTE]],
        DELETE,
        "alice",
        id="parent-block-denies",
    ),
    pytest.param(
        [[only({"params.name": "^search_issues$"})], [only({"params.name": "^delete_"})]],
        SEARCH,
        "alice",
        id="blocks-disagree",
    ),
    pytest.param([[EXECUTE], [{**EXECUTE, "namespaces": "other"}]], LIST, "alice", id="child-ns"),
    # --- values --------------------------------------------------------------------------------
    pytest.param(
        [[only({"params.arguments.draft": "^True$"})]],
        call_tool("create_issue", draft=True),
        "alice",
        id="boolean-is-not-python-True",
    ),
    pytest.param(
        [[only({"params.arguments.number": r"^42\.0$"})]],
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"arguments":{"number":42.0}}}',
        "alice",
        id="float-is-not-python-42.0",
    ),
    pytest.param([[only({"params.arguments": ".*"})]], SEARCH, "alice", id="object-never-matches"),
    pytest.param(
        [[only({"params.arguments.labels": ".*"})]],
        call_tool("create_issue", labels=["bug"]),
        "alice",
        id="array-never-matches",
    ),
    pytest.param(
        [[only({"params.arguments.labels": "^bug$"})]],
        call_tool("create_issue", labels=["bug"]),
        "alice",
        id="array-is-not-joined",
    ),
    pytest.param([[only({"params.name": ".*"})]], LIST, "alice", id="missing-path-dot-star"),
    # --- paths ---------------------------------------------------------------------------------
    pytest.param(
        [[only({"params.arguments.labels.2": ".*"})]],
        call_tool("create_issue", labels=["bug", "ui"]),
        "alice",
        id="index-out-of-range",
    ),
    pytest.param(
        [[only({"params.arguments.labels.length": ".*"})]],
        call_tool("create_issue", labels=["bug", "ui"]),
        "alice",
        id="array-property-is-not-a-key",
    ),
    pytest.param([[only({"params.constructor": ".*"})]], SEARCH, "alice", id="inherited-property"),
    pytest.param([[only({"method.0": ".*"})]], LIST, "alice", id="path-through-string"),
    # --- JavaScript regex semantics -----------------------------------------------------------
    pytest.param(
        [[only({"method": "^tools/list$"})]],
        rpc("tools/list\n"),
        "alice",
        id="dollar-not-before-trailing-newline",
    ),
    pytest.param(
        [[only({"params.arguments.number": r"^\d+$"})]],
        call_tool("get_issue", number="\u0663"),
        "alice",
        id="digit-class-is-ascii",
    ),
    pytest.param(
        [[only({"params.arguments.title": r"^\w+$"})]],
        call_tool("create_issue", title="caf\u00e9"),
        "alice",
        id="word-class-is-ascii",
    ),
    pytest.param(
        [[only({"params.arguments.title": "^.$"})]],
        call_tool("create_issue", title="\U0001f600"),
        "alice",
        id="dot-is-one-code-unit",
    ),
    pytest.param(
        [[only({"method": r"^tools/list\Z"})]], LIST, "alice", id="backslash-Z-is-literal-Z"
    ),
    pytest.param([[only({"method": "^TOOLS/LIST$"})]], LIST, "alice", id="case-sensitive"),
    pytest.param(
        [[only({"method": "(?P<verb>tools)/list"})]], LIST, "alice", id="python-named-group"
    ),
    pytest.param([[only({"method": "("})]], LIST, "alice", id="invalid-pattern"),
    pytest.param(
        [[only({"method": "^tools/list$", "params.x": "["})]],
        rpc("tools/list", {"x": "["}),
        "alice",
        id="invalid-pattern-among-valid",
    ),
]

HIDDEN = [
    pytest.param([[{**EXECUTE, "metadata": {"userId": "alice"}}]], "bob", id="other-user"),
    pytest.param(
        [[{**EXECUTE, "metadata": {"userId": "alice", "team": "ops"}}]], "alice", id="one-pair"
    ),
    pytest.param([[{**EXECUTE, "metadata": []}]], "alice", id="empty-metadata-array"),
    pytest.param([[{**EXECUTE, "metadata": {"userId": "alice"}}]], "plain", id="no-metadata"),
    pytest.param(
        [[EXECUTE], [{**EXECUTE, "metadata": {"userId": "bob"}}]], "alice", id="child-metadata"
    ),
]


@pytest.mark.usefixtures("connections")
@pytest.mark.parametrize(("blocks", "body", "connection_id"), ALLOWED)
def test_mcp_message_allowed(
    client: TestClient[Any],
    mint: Minter,
    target: McpTarget,
    blocks: list[list[dict[str, Any]]],
    body: bytes,
    connection_id: str,
) -> None:
    response = _send(client, mint, blocks, body, connection_id)
    assert response.status_code == 200, response.text
    assert response.content == JSON_ANSWER
    [received] = target.received
    assert received.body == body


@pytest.mark.usefixtures("connections")
@pytest.mark.parametrize(("blocks", "body", "connection_id"), DENIED)
def test_mcp_message_denied(
    client: TestClient[Any],
    mint: Minter,
    target: McpTarget,
    blocks: list[list[dict[str, Any]]],
    body: bytes,
    connection_id: str,
) -> None:
    response = _send(client, mint, blocks, body, connection_id)
    assert response.status_code == 403, response.text
    assert response.json() == forbidden_body(1)
    assert target.received == []


@pytest.mark.usefixtures("connections")
@pytest.mark.parametrize(("blocks", "connection_id"), HIDDEN)
def test_mcp_connection_hidden_by_metadata_denied(
    client: TestClient[Any],
    mint: Minter,
    target: McpTarget,
    blocks: list[list[dict[str, Any]]],
    connection_id: str,
) -> None:
    token = _mint_blocks(mint, blocks)
    response = post_mcp(client, token, LIST, connection_id=connection_id)
    assert response.status_code == 404, response.text
    assert response.json() == {
        "jsonrpc": "2.0",
        "id": 1,
        "error": {"code": -32000, "message": "Connection not found"},
    }
    assert target.received == []


@pytest.mark.usefixtures("connections")
def test_api_key_may_send_anything(client: TestClient[Any], target: McpTarget) -> None:
    response = post_mcp(client, API_KEY, DELETE, connection_id="plain")
    assert response.status_code == 200
    assert [r.body for r in target.received] == [DELETE]


# --- the lifecycle exemption --------------------------------------------------------------------

TOOLS_ONLY = [only({"method": "^tools/call$", "params.name": "^search_issues$"})]


@pytest.fixture
def exempting_client(clock: FakeClock, target_url: str) -> Any:
    app = create_emulator_app(
        API_KEY,
        signing_key=SIGNING_KEY,
        clock=clock,
        exempt_lifecycle=True,
        owned_namespaces=NAMESPACES,
    )
    with TestClient(app) as test_client:
        put_connection(test_client, "alice", {"mcpUrl": f"{target_url}/json", "metadata": ALICE})
        yield test_client


@pytest.mark.usefixtures("connections")
@pytest.mark.parametrize("body", [INITIALIZE, PING, INITIALIZED], ids=["init", "ping", "notif"])
def test_lifecycle_not_exempt_by_default_denied(
    client: TestClient[Any], mint: Minter, target: McpTarget, body: bytes
) -> None:
    response = post_mcp(client, mint({"policy": TOOLS_ONLY}), body)
    assert response.status_code == 403
    assert target.received == []


@pytest.mark.parametrize("body", [INITIALIZE, PING, INITIALIZED], ids=["init", "ping", "notif"])
def test_lifecycle_exempt_when_switched_on_allowed(
    exempting_client: TestClient[Any], target: McpTarget, body: bytes
) -> None:
    token = Minter(exempting_client)({"policy": TOOLS_ONLY})
    response = post_mcp(exempting_client, token, body)
    assert response.status_code == 200, response.text
    assert [r.body for r in target.received] == [body]


@pytest.mark.parametrize(
    "body",
    [
        LIST,
        DELETE,
        rpc("initialized"),
        rpc("notification/initialized", request_id=None),
        rpc("pings"),
    ],
    ids=["tools-list", "tools-call", "no-prefix", "singular", "suffix"],
)
def test_exemption_covers_only_lifecycle_methods_denied(
    exempting_client: TestClient[Any], target: McpTarget, body: bytes
) -> None:
    token = Minter(exempting_client)({"policy": TOOLS_ONLY})
    assert post_mcp(exempting_client, token, body).status_code == 403
    assert target.received == []


@pytest.mark.parametrize(
    ("constraint", "status"),
    [
        ({**TOOLS_ONLY[0], "namespaces": "other"}, 403),
        ({**TOOLS_ONLY[0], "operations": "read"}, 403),
        ({**TOOLS_ONLY[0], "metadata": {"userId": "bob"}}, 404),
    ],
    ids=["namespace", "operation", "metadata"],
)
def test_exemption_keeps_other_checks_denied(
    exempting_client: TestClient[Any], target: McpTarget, constraint: dict[str, Any], status: int
) -> None:
    token = Minter(exempting_client)({"policy": [constraint]})
    assert post_mcp(exempting_client, token, INITIALIZE).status_code == status
    assert target.received == []


def test_exemption_needs_no_node_for_lifecycle(
    exempting_client: TestClient[Any], target: McpTarget
) -> None:
    # An invalid pattern would deny if it were evaluated: the exemption does not evaluate it.
    token = Minter(exempting_client)({"policy": [only({"method": "("})]})
    assert post_mcp(exempting_client, token, PING).status_code == 200
    assert post_mcp(exempting_client, token, LIST).status_code == 403
    assert post_mcp(exempting_client, API_KEY, LIST).status_code == 200
    assert len(target.received) == 2
