"""What the OpenAPI document (``/schema/openapi.json``) says that Litestar cannot infer: the
problem details each route answers with, and the request bodies the handlers read themselves.

Litestar documents a body only for a ``data`` parameter, and an error only as its own
``ValidationException`` JSON; the broker's handlers read raw bodies (the hot routes must), and
every failure is an RFC 9457 ``application/problem+json`` body made by the one table in
``app.py``. Each route declares, next to its handler, which errors it raises; the statuses,
codes and titles come from the error classes themselves. Documentation only: nothing in this
module runs while a request is served, and it must not change how one is read or answered.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Final

import msgspec
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import (
    Example,
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Parameter,
    RequestBody,
    Schema,
)

from broker.errors import (
    BrokerError,
    PayloadTooLargeError,
    UpstreamProtocolError,
    UpstreamRejectedError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from broker.routes.body import RequestTimeoutError, UnsupportedMediaTypeError

PROBLEM_JSON: Final = "application/problem+json"
PROBLEM_TYPE_PREFIX: Final = "urn:token-broker:problem:"


class Problem(msgspec.Struct):
    """RFC 9457 problem details, as ``app.py`` sends them. The ``code`` is the stable part to
    branch on; the examples of each response list the codes it can carry.

    ``app.Problem`` is what is encoded; the route decorators cannot import ``app`` (it imports
    them), so this is its documented twin, and tests/test_openapi.py keeps the two alike."""

    type: str
    """``urn:token-broker:problem:<code>``."""
    title: str
    status: int
    code: str
    """Stable snake_case error code (README, "Errors")."""
    # UNSET, not None: app.py's Problem omits these members when it has no value (never null).
    detail: str | msgspec.UnsetType = msgspec.UNSET
    """Human-readable; never a secret. Absent on 500."""
    instance: str | msgspec.UnsetType = msgspec.UNSET
    """The request path (absent on answers made before routing: 408 for a slow head, 431)."""
    reasons: list[dict[str, Any]] | msgspec.UnsetType = msgspec.UNSET
    """With ``request_denied`` only: why each rule did not allow the message, the same objects
    as ``/v1/precheck``'s ``reasons`` (``rule``, ``reason``, ``detail``, ``field``, ``pattern``)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Failure:
    """One documented failure: a status and the stable code its problem details carry."""

    status: int
    code: str
    title: str


def failure_of(error: type[BrokerError] | Failure) -> Failure:
    if isinstance(error, Failure):
        return error
    return Failure(error.status, error.code, error.title)


# Failures made outside the broker's exception tree: by Litestar (mapped to these codes in app.py)
# or below it, before any route runs (headtimeout.py, app.HeaderLimit).
METHOD_NOT_ALLOWED: Final = Failure(405, "method_not_allowed", "Method not allowed")
HEAD_TIMEOUT: Final = Failure(408, "request_timeout", "Request timeout")
HEADERS_TOO_LARGE: Final = Failure(431, "headers_too_large", "Request headers too large")
INVALID_HTTP: Final = Failure(400, "invalid_http", "Invalid HTTP request")
ANY_REQUEST: Final = (INVALID_HTTP, HEAD_TIMEOUT, HEADERS_TOO_LARGE)
"""What any request can get from ``broker serve``, whatever its route."""
BODY_FAILURES: Final = (RequestTimeoutError, PayloadTooLargeError, UnsupportedMediaTypeError)
"""What reading a JSON request body can end in."""
SMITHERY_FAILURES: Final = (
    UpstreamRejectedError,
    UpstreamProtocolError,
    UpstreamUnavailableError,
    UpstreamTimeoutError,
)
"""What a call to Smithery can end in."""

_WHEN: Final = {
    400: "The request is malformed or breaks the endpoint's schema",
    401: "The bearer credential is missing or invalid (the same body for every cause)",
    403: "Refused by the policy, or by an operator's revocation",
    404: "No such connection among the caller's",
    405: "The method is not served on this path",
    408: "The request's head or body did not arrive in time",
    409: "The connection exists with another mcpUrl",
    413: "The body is too large",
    415: "The body is not declared as UTF-8 JSON",
    429: "The caller exceeded a rate limit",
    431: "The request headers are too large",
    502: "Smithery refused the broker's request or answered off-contract",
    503: "Smithery is unavailable, or a step that needs Redis could not be done",
    504: "Smithery did not answer in time",
}


def problem_responses(*errors: type[BrokerError] | Failure) -> dict[int, ResponseSpec]:
    """The problem-details responses for ``errors``, grouped by status, plus ``ANY_REQUEST``.

    Each response has one example per code the status can carry there."""
    by_status: dict[int, dict[str, Failure]] = {}
    for error in (*errors, *ANY_REQUEST):
        found = failure_of(error)
        by_status.setdefault(found.status, {}).setdefault(found.code, found)
    responses: dict[int, ResponseSpec] = {}
    for status, failures in sorted(by_status.items()):
        codes = ", ".join(f"`{code}`" for code in failures)
        responses[status] = ResponseSpec(
            Problem,
            generate_examples=False,
            description=f"{_WHEN.get(status, 'Refused')}: problem details, code {codes}.",
            media_type=PROBLEM_JSON,
            examples=[
                Example(
                    summary=f"{found.code}: {found.title}",
                    value={
                        "type": PROBLEM_TYPE_PREFIX + found.code,
                        "title": found.title,
                        "status": found.status,
                        "code": found.code,
                    },
                )
                for found in failures.values()
            ],
        )
    return responses


JSONRPC_MESSAGE: Final = Schema(
    type=OpenAPIType.OBJECT,
    description="One JSON-RPC 2.0 request or notification (jsonrpc.check_message): no batch, "
    "an id that is a string or an integer (never null, as MCP requires), no other members.",
    required=["jsonrpc", "method"],
    properties={
        "jsonrpc": Schema(const="2.0"),
        "id": Schema(one_of=[Schema(type=OpenAPIType.STRING), Schema(type=OpenAPIType.INTEGER)]),
        "method": Schema(type=OpenAPIType.STRING),
        "params": Schema(),
    },
    additional_properties=False,
)
"""What ``/v1/mcp`` reads, and what ``/v1/precheck`` decides (its ``request`` member)."""

_HEADERS: Final = {
    "401": {
        "WWW-Authenticate": OpenAPIHeader(
            schema=Schema(type=OpenAPIType.STRING),
            required=True,
            description='`Bearer error="invalid_token"` (RFC 6750)',
        )
    },
    "429": {
        "Retry-After": OpenAPIHeader(
            schema=Schema(type=OpenAPIType.INTEGER),
            required=True,
            description="Seconds to wait before trying again",
        )
    },
    "503": {
        "Retry-After": OpenAPIHeader(
            schema=Schema(type=OpenAPIType.INTEGER),
            description="Seconds to wait before trying again, when a retry can help",
        )
    },
}

_SUBSCHEMA: Final = frozenset({"items", "additionalProperties", "propertyNames", "not"})
_SUBSCHEMA_LISTS: Final = frozenset({"anyOf", "allOf", "oneOf", "prefixItems"})


def _keyword(field: dataclasses.Field[Any]) -> str:
    """The JSON Schema keyword a ``Schema`` field is written as (``max_length``: ``maxLength``)."""
    alias = field.metadata.get("alias")
    if isinstance(alias, str):
        return alias
    head, *rest = field.name.split("_")
    return head + "".join(part.title() for part in rest)


_SCHEMA_FIELDS: Final = {_keyword(field): field.name for field in dataclasses.fields(Schema)}


def schema_of(type_: Any) -> Schema:
    """``type_``'s JSON Schema as msgspec generates it, the very schema the handler validates
    the body against, inlined (msgspec's ``$defs`` do not resolve inside an OpenAPI document).
    Raises ``ValueError`` for a type that would need shared definitions."""
    definitions, components = msgspec.json.schema_components([type_])
    (root,) = definitions
    reference = root.get("$ref", "")
    if reference:
        root = components.pop(reference.rpartition("/")[2])
    if components:
        raise ValueError(f"{type_!r} nests other types: {sorted(components)}")
    return _schema(root)


def _schema(raw: Mapping[str, Any]) -> Schema:
    if "$ref" in raw:
        raise ValueError(f"unexpected reference {raw['$ref']!r}")
    fields: dict[str, Any] = {}
    for key, value in raw.items():
        if key in _SUBSCHEMA and isinstance(value, Mapping):
            value = _schema(value)
        elif key in _SUBSCHEMA_LISTS:
            value = [_schema(item) for item in value]
        elif key == "properties":
            value = {name: _schema(item) for name, item in value.items()}
        elif key == "type":
            value = OpenAPIType(value)
        fields[_SCHEMA_FIELDS[key]] = value  # a KeyError here: a keyword Schema cannot hold
    return Schema(**fields)


def documented(
    body: Any = None,
    *,
    members: Mapping[str, Schema] | None = None,
    body_required: bool = True,
    body_description: str | None = None,
    relayed: str | None = None,
    query: tuple[Parameter, ...] = (),
) -> type[Operation]:
    """An ``operation_class`` for a route decorator: the OpenAPI operation Litestar builds, with

    - ``body`` (a Struct type, or a ``Schema``) as the JSON request body the handler reads
      itself (its ``data``-less signature gives Litestar nothing to document), with
      ``members`` replacing the schemas of some of its members (those a Struct takes as
      ``Any`` and the handler checks further);
    - the headers of 401 (``WWW-Authenticate``), 429 and 503 (``Retry-After``) problems;
    - without Litestar's own 400 (``{status_code, detail, extra}``), which the broker never
      sends: routes that can answer 400 document their problem details instead;
    - with ``relayed`` (a description), Smithery's answers passed through: the 200 also as
      ``text/event-stream``, each error status also as Smithery's own JSON, and any other
      status as a ``default`` response;
    - ``query``: the query parameters the handler reads itself.
    """
    request_body = None
    if body is not None:
        schema = body if isinstance(body, Schema) else schema_of(body)
        if members:
            schema = dataclasses.replace(
                schema, properties={**(schema.properties or {}), **members}
            )
        request_body = RequestBody(
            content={"application/json": OpenAPIMediaType(schema=schema)},
            required=body_required,
            description=body_description,
        )

    @dataclasses.dataclass
    class DocumentedOperation(Operation):
        def __post_init__(self) -> None:
            if request_body is not None:
                self.request_body = request_body
            if query:
                self.parameters = [*(self.parameters or []), *query]
            responses = self.responses or {}
            for status, response in list(responses.items()):
                if not isinstance(response, OpenAPIResponse):
                    continue
                content = response.content or {}
                if PROBLEM_JSON not in content and status == "400":
                    del responses[status]  # Litestar's ValidationException: never sent
                elif PROBLEM_JSON in content and status in _HEADERS:
                    response.headers = {**(response.headers or {}), **_HEADERS[status]}
            if relayed is not None:
                for status, response in responses.items():
                    error = status.isdigit() and int(status) >= 400
                    if error and isinstance(response, OpenAPIResponse) and response.content:
                        response.content["application/json"] = OpenAPIMediaType(
                            schema=Schema(description="Smithery's own answer, relayed as it is")
                        )
                success = responses.get("200")
                if isinstance(success, OpenAPIResponse) and success.content is not None:
                    success.content["text/event-stream"] = OpenAPIMediaType(
                        schema=Schema(
                            type=OpenAPIType.STRING,
                            description="Server-sent events, each carrying a JSON-RPC message",
                        )
                    )
                responses["default"] = OpenAPIResponse(description=relayed)

    return DocumentedOperation
