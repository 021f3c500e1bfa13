"""The OpenAPI document (``/schema/openapi.json``) says what the routes really do: every status
each route answers, errors as the problem details the broker sends, and the request bodies the
handlers read themselves. The README's error table and the document are checked against each
other, and real answers against the document."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
from jsonschema import Draft202012Validator

from broker.app import Problem as SentProblem
from broker.config import AdminSettings, Secret
from broker.routes.connections import MAX_CURSOR_CHARS
from tests.inprocess import Harness, harness

ROOT = Path(__file__).resolve().parent.parent
ADMIN = "admin-token-0123456789abcdefghijklmnop"
PROBLEM_JSON = "application/problem+json"
CONNECTION = "/v1/connections/{namespace}/{connection_id}"
MCP = "/v1/mcp/{namespace}/{connection_id}"
ANY_REQUEST = {"400", "408", "431"}  # not HTTP, a slow head, headers too large: before routing
UPSTREAM = {"502", "503", "504"}
BODY = {"400", "408", "413", "415"}
USER = {"401", "403", "429"}
CONNECTIONS = ANY_REQUEST | UPSTREAM | USER | {"200", "400", "404"}

EXPECTED: dict[tuple[str, str], set[str]] = {
    ("post", "/v1/tokens"): ANY_REQUEST | UPSTREAM | USER | BODY | {"200"},
    ("post", "/v1/precheck"): ANY_REQUEST | UPSTREAM | USER | BODY | {"200"},
    ("post", MCP): ANY_REQUEST | UPSTREAM | USER | BODY | {"200", "202", "405", "default"},
    ("put", CONNECTION): CONNECTIONS | BODY | {"201", "409"},
    ("get", CONNECTION): CONNECTIONS,
    ("delete", CONNECTION): CONNECTIONS,
    ("get", "/v1/connections/{namespace}"): CONNECTIONS,
    ("get", "/livez"): ANY_REQUEST | {"200"},
    ("get", "/readyz"): ANY_REQUEST | {"200", "503"},
    ("post", "/v1/explain"): ANY_REQUEST | BODY | {"200", "401"},
    ("post", "/v1/admin/revoke"): ANY_REQUEST | BODY | {"200", "401", "503"},
    ("post", "/dev/login"): ANY_REQUEST | BODY | {"200"},
}
NOT_PROBLEMS = {("get", "/readyz", "503")}
"""Error statuses whose body is not problem details: /readyz answers its Readiness either way."""


async def load_document(h: Harness) -> dict[str, Any]:
    response = await h.client.get("/schema/openapi.json")
    assert response.status_code == 200
    document: dict[str, Any] = response.json()
    return document


@pytest.fixture
async def document() -> dict[str, Any]:
    async with harness(admin=AdminSettings(token=Secret(ADMIN))) as h:
        return await load_document(h)


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in {"get", "put", "post", "delete", "patch", "options", "head"}:
                yield method, path, operation


def documented_failures(document: dict[str, Any]) -> Iterator[tuple[str, str, int, str]]:
    """(method, path, status, code) for every problem example in the document."""
    for method, path, operation in operations(document):
        for status, response in operation["responses"].items():
            problem = response.get("content", {}).get(PROBLEM_JSON)
            for example in (problem or {}).get("examples", {}).values():
                yield method, path, int(status), example["value"]["code"]


def readme_failures() -> set[tuple[int, str]]:
    """(status, code) of every row of the README's error table."""
    text = (ROOT / "README.md").read_text()
    after = text[text.index("Errors are RFC 9457") :]
    table = after[after.index("| status | code |") :].split("\n\n")[0]
    rows = [line for line in table.splitlines() if line.startswith("| ")][1:]
    pairs: set[tuple[int, str]] = set()
    for row in rows:
        status_cell, code_cell = row.split("|")[1:3]
        statuses = [int(status) for status in status_cell.split("/")]
        codes = re.findall(r"`([a-z_]+)`", code_cell)
        assert codes, row
        if len(statuses) == 1:
            pairs.update((statuses[0], code) for code in codes)
        else:
            assert len(statuses) == len(codes), row
            pairs.update(zip(statuses, codes, strict=True))
    return pairs


def schema_validator(document: dict[str, Any], schema: dict[str, Any]) -> Draft202012Validator:
    """A validator for ``schema`` whose ``#/components/...`` references resolve in ``document``."""
    return Draft202012Validator({**schema, "components": document["components"]})


def test_every_route_documents_each_status_it_answers(document: dict[str, Any]) -> None:
    """The document listed 200 (and Litestar's 400) only: no 401, 403, 404, 429, 5xx, no 201
    for a create, no 503 for /readyz."""
    found = {
        (method, path): set(operation["responses"])
        for method, path, operation in operations(document)
    }
    assert found == EXPECTED


def test_errors_are_problem_details_not_litestars_validation_error(
    document: dict[str, Any],
) -> None:
    """The one documented error was Litestar's ``{status_code, detail, extra}`` JSON, a body the
    broker never sends."""
    for method, path, operation in operations(document):
        for status, response in operation["responses"].items():
            if not status.isdigit() or int(status) < 400 or (method, path, status) in NOT_PROBLEMS:
                continue
            where = f"{method} {path} {status}"
            # The proxy relays Smithery's answers, its errors included, as they come.
            relayed = {"application/json"} if path == MCP else set()
            assert set(response["content"]) == {PROBLEM_JSON, *relayed}, where
            problem = response["content"][PROBLEM_JSON]
            assert problem["schema"] == {"$ref": "#/components/schemas/Problem"}, where
            examples = [example["value"] for example in problem["examples"].values()]
            assert examples, where
            for example in examples:
                assert example["status"] == int(status), where
                assert example["type"] == "urn:token-broker:problem:" + example["code"]
                assert schema_validator(document, problem["schema"]).is_valid(example), where
    assert '"status_code"' not in msgspec.json.encode(document).decode()


def test_problem_schema_has_the_members_the_broker_sends(document: dict[str, Any]) -> None:
    schema = document["components"]["schemas"]["Problem"]
    sent = msgspec.structs.fields(SentProblem)
    assert set(schema["properties"]) == {field.name for field in sent}
    assert set(schema["required"]) == {field.name for field in sent if field.required}


def test_readme_error_table_and_document_agree(document: dict[str, Any]) -> None:
    """Every status and code of the README's table is documented on some route, and every code
    the document names is in the table."""
    documented = {(status, code) for _, _, status, code in documented_failures(document)}
    # Answered for a path no route serves (or an operator route that is off, and so not in the
    # document either): not an operation's answer.
    # A refused CORS preflight: OPTIONS, which the document does not describe.
    path_level = {(404, "not_found"), (400, "cors_rejected")}
    assert documented == readme_failures() - path_level


def test_problem_headers_are_documented(document: dict[str, Any]) -> None:
    """401 carries ``WWW-Authenticate`` (RFC 6750), 429 and a 503 problem ``Retry-After``."""
    checked = set()
    for method, path, operation in operations(document):
        responses = operation["responses"]
        if "401" in responses:
            assert "WWW-Authenticate" in responses["401"]["headers"], (method, path)
            checked.add("401")
        if "429" in responses:
            assert responses["429"]["headers"]["Retry-After"]["required"], (method, path)
            checked.add("429")
        if PROBLEM_JSON in responses.get("503", {}).get("content", {}):
            assert "Retry-After" in responses["503"]["headers"], (method, path)
            checked.add("503")
    assert checked == {"401", "429", "503"}


def test_no_generated_examples(document: dict[str, Any]) -> None:
    """Litestar generated random examples (``"expiresAt": "hmGJHERyPYwSLUcVNYZo"``) for every
    ResponseSpec."""

    def examples(node: Any) -> Iterator[Any]:
        if isinstance(node, dict):
            if "examples" in node:
                yield node["examples"]
            for value in node.values():
                yield from examples(value)
        elif isinstance(node, list):
            for value in node:
                yield from examples(value)

    assert list(examples(document["components"])) == []
    for _, _, operation in operations(document):
        for response in operation["responses"].values():
            for media_type, content in response.get("content", {}).items():
                assert media_type == PROBLEM_JSON or "examples" not in content


VALID_BODIES: dict[tuple[str, str], list[Any]] = {
    ("post", "/v1/tokens"): [{}, {"rules": ["own-connections"]}],
    ("post", "/v1/precheck"): [
        {"namespace": "my-app", "request": {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}}
    ],
    ("post", MCP): [{"jsonrpc": "2.0", "method": "notifications/initialized"}],
    ("put", CONNECTION): [{"mcpUrl": "https://server.smithery.ai/github/mcp", "name": "GitHub"}],
    ("post", "/v1/explain"): [{"claims": {"sub": "alice"}, "namespace": "my-app"}],
    ("post", "/v1/admin/revoke"): [{"subject": "alice", "seconds": 60}, {"all": True}],
    ("post", "/dev/login"): [{"sub": "alice", "groups": ["support"]}],
}
INVALID_BODIES: dict[tuple[str, str], list[Any]] = {
    ("post", "/v1/tokens"): [{"rules": []}, {"rule": ["a"]}],
    ("post", "/v1/precheck"): [
        {"namespace": "../x", "request": {"jsonrpc": "2.0", "method": "ping"}},
        {"namespace": "my-app", "request": {"jsonrpc": "2.0", "id": None, "method": "ping"}},
        {"namespace": "my-app", "request": [{"jsonrpc": "2.0", "method": "ping"}]},
    ],
    ("post", MCP): [{"jsonrpc": "2.0", "method": "ping", "result": {}}, {"method": "ping"}],
    ("put", CONNECTION): [{"name": ""}, {"owner": "bob"}],
    ("post", "/v1/explain"): [{}, {"claims": {}, "namespace": "a/b"}],
    ("post", "/v1/admin/revoke"): [{"seconds": -1}, {"subject": ""}],
    ("post", "/dev/login"): [{}, {"sub": ""}],
}


def test_request_bodies_the_handlers_read_are_documented(document: dict[str, Any]) -> None:
    """The handlers read raw bodies, so Litestar documented none."""
    bodies = {
        (method, path): operation["requestBody"]
        for method, path, operation in operations(document)
        if "requestBody" in operation
    }
    assert set(bodies) == set(VALID_BODIES)
    assert not bodies["post", "/v1/tokens"]["required"]  # frontends usually send none
    for key, body in bodies.items():
        schema = body["content"]["application/json"]["schema"]
        Draft202012Validator.check_schema(schema)
        for valid in VALID_BODIES[key]:
            assert schema_validator(document, schema).is_valid(valid), (key, valid)
        for invalid in INVALID_BODIES[key]:
            assert not schema_validator(document, schema).is_valid(invalid), (key, invalid)


def test_query_parameters_the_handlers_read_are_documented(document: dict[str, Any]) -> None:
    """Only the list reads a query (``cursor``, ``limit``); it refuses any other parameter."""
    queries = {
        (method, path): {
            p["name"]: p["schema"] for p in operation.get("parameters", []) if p["in"] == "query"
        }
        for method, path, operation in operations(document)
    }
    assert {key: names for key, names in queries.items() if names} == {
        ("get", "/v1/connections/{namespace}"): {
            "cursor": {"type": "string", "minLength": 1, "maxLength": MAX_CURSOR_CHARS},
            "limit": {"type": "integer", "minimum": 1, "maximum": 100},
        }
    }


def test_component_schemas_are_json_schema(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.1.")
    for schema in document["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)


@dataclass(frozen=True)
class Call:
    """A real request, and the documented operation and status its answer must match."""

    operation: tuple[str, str]
    status: int
    method: str
    url: str
    caller: str | None = None
    """``alice`` (verified), ``mallory`` (no rule applies), ``admin``, or nobody."""
    json: Any = None
    content: bytes | None = None
    content_type: str | None = None


NOTIFICATION = {"jsonrpc": "2.0", "method": "notifications/initialized"}
ALICE_GITHUB = "/v1/connections/my-app/alice-github"
GITHUB = {"mcpUrl": "https://server.smithery.ai/github/mcp"}
CALLS = [
    Call(("post", "/v1/tokens"), 401, "POST", "/v1/tokens"),
    Call(("post", "/v1/tokens"), 200, "POST", "/v1/tokens", "alice"),
    Call(("post", "/v1/tokens"), 403, "POST", "/v1/tokens", "mallory"),
    Call(
        ("post", "/v1/tokens"), 400, "POST", "/v1/tokens", "alice", None, b"{", "application/json"
    ),
    Call(("post", "/v1/tokens"), 415, "POST", "/v1/tokens", "alice", None, b"{}", "text/plain"),
    Call(
        ("post", "/v1/precheck"),
        200,
        "POST",
        "/v1/precheck",
        "alice",
        {"namespace": "my-app", "request": NOTIFICATION},
    ),
    Call(("post", MCP), 403, "POST", "/v1/mcp/my-app/bob-github", "alice", NOTIFICATION),
    Call(("post", MCP), 405, "GET", "/v1/mcp/my-app/bob-github", "alice"),
    Call(("get", CONNECTION), 404, "GET", ALICE_GITHUB, "alice"),
    Call(("put", CONNECTION), 201, "PUT", ALICE_GITHUB, "alice", GITHUB),
    Call(("put", CONNECTION), 200, "PUT", ALICE_GITHUB, "alice", GITHUB),
    Call(("put", CONNECTION), 403, "PUT", "/v1/connections/my-app/bob-x", "alice", GITHUB),
    Call(("delete", CONNECTION), 200, "DELETE", ALICE_GITHUB, "alice"),
    Call(("get", "/v1/connections/{namespace}"), 200, "GET", "/v1/connections/my-app", "alice"),
    Call(
        ("get", "/v1/connections/{namespace}"),
        400,
        "GET",
        "/v1/connections/my-app?limit=0",
        "alice",
    ),
    Call(("get", "/readyz"), 200, "GET", "/readyz"),
    Call(("get", "/livez"), 200, "GET", "/livez"),
    Call(
        ("post", "/v1/explain"),
        400,
        "POST",
        "/v1/explain",
        "admin",
        {"claims": {"sub": "a"}, "metadata": {"userId": "a"}},
    ),
    Call(("post", "/v1/explain"), 401, "POST", "/v1/explain", "alice", {"claims": {}}),
    Call(("post", "/v1/admin/revoke"), 200, "POST", "/v1/admin/revoke", "admin", {"rule": "x"}),
    Call(("post", "/dev/login"), 200, "POST", "/dev/login", None, {"sub": "alice"}),
]


async def test_real_answers_match_the_document() -> None:
    """What the routes send, against what the document says they send: the status is listed,
    the media type and the body match its schema, a problem's code is among its examples."""
    async with harness(admin=AdminSettings(token=Secret(ADMIN))) as h:
        document = await load_document(h)
        callers = {
            "alice": h.auth("alice", email_verified=True),
            "mallory": h.auth("mallory"),
            "admin": {"Authorization": f"Bearer {ADMIN}"},
            None: {},
        }
        for call in CALLS:
            headers = dict(callers[call.caller])
            if call.content_type is not None:
                headers["content-type"] = call.content_type
            response = await h.client.request(
                call.method, call.url, headers=headers, json=call.json, content=call.content
            )
            where = f"{call.method} {call.url} {call.status}"
            assert response.status_code == call.status, (where, response.text)
            method, path = call.operation
            documented = document["paths"][path][method]["responses"][str(call.status)]
            media_type = response.headers["content-type"].partition(";")[0]
            content = documented["content"][media_type]
            body = response.json()
            schema_validator(document, content["schema"]).validate(body)
            if media_type == PROBLEM_JSON:
                codes = {example["value"]["code"] for example in content["examples"].values()}
                assert body["code"] in codes, where
