"""Smithery's ``/connect/{namespace}`` connection routes (a subset), guarded by token scope.

Connections live only in the namespaces the API key owns (``EmulatorState.owned_namespaces``).
The API key may do everything there. A service token needs ``connections:read`` to get or list
and ``connections:write`` to create (``PUT``, or ``POST`` with a generated id), update or delete,
in the path's namespace, on a connection whose metadata its constraints accept (``scope.py``).
List results are filtered to what the token may read.

Writes follow the OpenAPI, which lists no 403 for them: a namespace the API key does not own,
and a token whose scope does not allow the write, both get 404 "Namespace not found or access
denied" (``NamespaceNotFoundError``), checked before the body is read.

OPEN (not documented by Smithery): a token whose metadata filter excludes a connection gets 404
"Connection not found", exactly as if the connection did not exist, so a token cannot probe for
other users' connection ids. On reads, a token that may not read connections in the namespace
at all gets 403 (the OpenAPI's GET lists no 403 either, but SMITHERY-SEMANTICS.md leaves it
open); reading a namespace the API key does not own finds nothing (an empty list, 404 for one
connection), as the OpenAPI's list route documents no 404.

``POST /connect/{namespace}/{connectionId}/mcp`` (``connections:execute`` plus ``rpcReqMatch``)
is served by ``mcp.py`` beside this module.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import msgspec
from litestar import Request, Response, delete, get, post, put
from litestar.params import FromPath

from broker.emulator.clock import format_timestamp
from broker.emulator.connection import (
    DEFAULT_LIST_LIMIT,
    MAX_LIST_LIMIT,
    Connection,
    ConnectionsListResponse,
    StoredConnection,
    decode_cursor,
    decode_upsert_request,
    encode_cursor,
)
from broker.emulator.errors import (
    ForbiddenError,
    NamespaceNotFoundError,
    NotFoundError,
    UnauthorizedError,
    ValidationFailedError,
)
from broker.emulator.faults import fault_route_opt
from broker.emulator.principal import Principal
from broker.emulator.scope import Action
from broker.emulator.state import EmulatorDependency, EmulatorState

AnyRequest: TypeAlias = Request[Any, Any, Any]

_METADATA_QUERY_PREFIX = "metadata."
_LIST_QUERY_KEYS = frozenset({"limit", "cursor", "name", "mcpUrl"})
_FAULTS = fault_route_opt("connections")
"""These routes are the ``connections`` family of injected faults (``faults.py``)."""


class Success(msgspec.Struct, frozen=True):
    """OpenAPI ``Success``."""

    success: bool = True


@get("/connect/{namespace:str}", opt=_FAULTS)
async def list_connections(
    request: AnyRequest, emulator: EmulatorDependency, namespace: FromPath[str]
) -> ConnectionsListResponse:
    read = Action(namespace, "connections", "read")
    principal = _authorize(emulator, request, read)
    limit, after_id, filters = _decode_list_query(request)
    visible = [
        item.connection
        for item in emulator.connections.in_namespace(namespace)
        if principal.permits(read, item.connection.metadata) and _matches(item.connection, filters)
    ]
    if after_id is not None:
        visible = [c for c in visible if c.connection_id > after_id]
    page = visible[:limit]
    more = len(visible) > limit
    return ConnectionsListResponse(
        connections=page, next_cursor=encode_cursor(page[-1].connection_id) if more else None
    )


@get("/connect/{namespace:str}/{connection_id:str}", opt=_FAULTS)
async def get_connection(
    request: AnyRequest,
    emulator: EmulatorDependency,
    namespace: FromPath[str],
    connection_id: FromPath[str],
) -> Connection:
    read = Action(namespace, "connections", "read")
    principal = _authorize(emulator, request, read)
    item = emulator.connections.get(namespace, connection_id)
    if item is None or not principal.permits(read, item.connection.metadata):
        raise NotFoundError("Connection not found")
    return item.connection


@put("/connect/{namespace:str}/{connection_id:str}", opt=_FAULTS)
async def upsert_connection(
    request: AnyRequest,
    emulator: EmulatorDependency,
    namespace: FromPath[str],
    connection_id: FromPath[str],
) -> Response[Connection]:
    write = Action(namespace, "connections", "write")
    principal = _authorize_write(emulator, request, write)
    upsert = decode_upsert_request(await request.body())
    # No await from here on: the checks and the save see the same store.
    existing = emulator.connections.get(namespace, connection_id)
    if existing is not None:
        _require_writable(emulator, principal, existing, write)
    planned = emulator.connections.plan_upsert(
        namespace,
        connection_id,
        upsert,
        created_at=format_timestamp(emulator.now_ms()),
        oauth_hosts=emulator.oauth_hosts,
        input_hosts=emulator.input_hosts,
    )
    _require_writable_result(emulator, principal, planned, write)
    created = emulator.connections.save(planned)
    # OpenAPI: 201 "Connection created", 200 "Connection updated".
    return Response(planned.connection, status_code=201 if created else 200)


@post("/connect/{namespace:str}", opt=_FAULTS)
async def create_connection(
    request: AnyRequest, emulator: EmulatorDependency, namespace: FromPath[str]
) -> Response[Connection]:
    """OpenAPI ``postSmithery.run:namespace``: create with a generated id (never an update).

    The body is a ``CreateConnectionRequest`` (the same fields as PUT's); 201 ``Connection``,
    400 ``ValidationError``, 404 for an unowned namespace or a token that may not write here.
    """
    write = Action(namespace, "connections", "write")
    principal = _authorize_write(emulator, request, write)
    body = decode_upsert_request(await request.body())
    # No await from here on: the id stays free until the save.
    planned = emulator.connections.plan_upsert(
        namespace,
        emulator.connections.new_id(namespace),
        body,
        created_at=format_timestamp(emulator.now_ms()),
        oauth_hosts=emulator.oauth_hosts,
        input_hosts=emulator.input_hosts,
    )
    _require_writable_result(emulator, principal, planned, write)
    emulator.connections.save(planned)
    return Response(planned.connection, status_code=201)


@delete("/connect/{namespace:str}/{connection_id:str}", status_code=200, opt=_FAULTS)
async def delete_connection(
    request: AnyRequest,
    emulator: EmulatorDependency,
    namespace: FromPath[str],
    connection_id: FromPath[str],
) -> Success:
    write = Action(namespace, "connections", "write")
    principal = _authorize_write(emulator, request, write)
    item = emulator.connections.get(namespace, connection_id)
    if item is None:
        raise NotFoundError("Connection not found")
    _require_writable(emulator, principal, item, write)
    emulator.connections.delete(namespace, connection_id)
    return Success()


def _authenticate(emulator: EmulatorState, request: AnyRequest) -> Principal:
    try:
        return emulator.authenticate(request.headers.get("authorization"))
    except UnauthorizedError:
        emulator.stats.requests_unauthorized += 1
        raise


def _authorize(emulator: EmulatorState, request: AnyRequest, action: Action) -> Principal:
    """Authenticate, then require the read in the namespace for some metadata (else 403)."""
    principal = _authenticate(emulator, request)
    if not principal.permits_action(action):
        emulator.stats.requests_forbidden += 1
        raise ForbiddenError(
            f"Token policy does not permit {action.resource}:{action.operation}"
            f" in namespace {action.namespace!r}"
        )
    return principal


def _authorize_write(emulator: EmulatorState, request: AnyRequest, write: Action) -> Principal:
    """Authenticate, then require a namespace the API key owns and, for a token, the write in
    it for some metadata; else 404 (the OpenAPI lists no 403 for writes)."""
    principal = _authenticate(emulator, request)
    if write.namespace not in emulator.owned_namespaces:
        raise NamespaceNotFoundError
    if not principal.permits_action(write):
        emulator.stats.requests_forbidden += 1
        raise NamespaceNotFoundError
    return principal


def _require_writable(
    emulator: EmulatorState, principal: Principal, item: StoredConnection, write: Action
) -> None:
    """404 "Connection not found" when the token may neither read nor write this connection
    (as if it did not exist); 404 "access denied" when it may only read it."""
    metadata = item.connection.metadata
    if principal.permits(write, metadata):
        return
    read = Action(write.namespace, write.resource, "read")
    if not principal.permits(read, metadata):
        raise NotFoundError("Connection not found")
    emulator.stats.requests_forbidden += 1
    raise NamespaceNotFoundError


def _require_writable_result(
    emulator: EmulatorState, principal: Principal, planned: StoredConnection, write: Action
) -> None:
    """The result must stay inside the token's scope too: a token limited to {userId: alice}
    may not create or retag a connection as bob's (404 "access denied"; the caller's own body
    is no secret)."""
    if not principal.permits(write, planned.connection.metadata):
        emulator.stats.requests_forbidden += 1
        raise NamespaceNotFoundError


def _decode_list_query(
    request: AnyRequest,
) -> tuple[int, str | None, dict[str, str]]:
    """``limit`` (1-100, default 100), ``cursor``, and exact-match filters.

    Filters are ``name``, ``mcpUrl`` and ``metadata.{key}``; every other parameter is a 400,
    as ``ConnectionsListQuery`` has ``additionalProperties: false``.
    """
    limit = DEFAULT_LIST_LIMIT
    after_id: str | None = None
    filters: dict[str, str] = {}
    for key, value in request.query_params.items():
        if len(request.query_params.getall(key)) > 1:
            raise ValidationFailedError(f"Query parameter given more than once - at `{key}`")
        if key == "limit":
            # Leading zeros dropped before int(), which refuses (ValueError) over 4300 digits.
            digits = value.lstrip("0") if value.isascii() and value.isdigit() else "x"
            if len(digits) > 3 or not digits.isdigit() or not 1 <= int(digits) <= MAX_LIST_LIMIT:
                raise ValidationFailedError(
                    f"Expected an integer from 1 to {MAX_LIST_LIMIT} - at `limit`"
                )
            limit = int(digits)
        elif key == "cursor":
            after_id = decode_cursor(value)
        elif key in _LIST_QUERY_KEYS or (
            key.startswith(_METADATA_QUERY_PREFIX) and len(key) > len(_METADATA_QUERY_PREFIX)
        ):
            filters[key] = value
        else:
            raise ValidationFailedError(f"Unknown query parameter - at `{key}`")
    return limit, after_id, filters


def _matches(connection: Connection, filters: dict[str, str]) -> bool:
    """All filters hold. Metadata values compare as strings; non-string values never match."""
    for key, value in filters.items():
        if key == "name":
            actual: Any = connection.name
        elif key == "mcpUrl":
            actual = connection.mcp_url
        else:
            actual = (connection.metadata or {}).get(key.removeprefix(_METADATA_QUERY_PREFIX))
        if actual != value:
            return False
    return True
