"""``/v1/connections/{namespace}[/{connectionId}]``: the caller's own Smithery connections.

Thin handlers: authenticate, rate-limit per user (like precheck), validate path segments and the
body, then the ``provisioning`` use case decides and calls Smithery. Responses carry Smithery's
connection (with ``status``), never the write-only ``headers``.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec
from litestar import Request, Response, delete, get, put
from litestar.di import NamedDependency
from litestar.enums import ParamType
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import OpenAPIType, Parameter, Schema
from litestar.params import FromPath

from broker.cluster import ClusterBusyError
from broker.errors import (
    AuthenticationError,
    ConnectionNotFoundError,
    InvalidJSONError,
    InvalidRequestError,
    NoMatchingRuleError,
    PayloadTooLargeError,
)
from broker.jsonrpc import DuplicateKeyError, TooDeepError
from broker.provisioning import (
    ConnectionIdNotAllowedError,
    ConnectionLimitReachedError,
    ConnectionNotOwnedError,
    ConnectionRequest,
    MetadataNotAllowedError,
    TargetNotAllowedError,
)
from broker.ratelimit import RateLimitedError
from broker.revocation import AccessRevokedError
from broker.routes.body import (
    RequestTimeoutError,
    UnsupportedMediaTypeError,
    convert_body,
    read_strict_json,
)
from broker.routes.caller import limited_caller
from broker.routes.names import check_name
from broker.routes.openapi import SMITHERY_FAILURES, documented, problem_responses
from broker.state import BrokerState
from broker.upstream import ConnectionConflictError, ConnectionDocument, ConnectionPage

MAX_BODY_BYTES: Final = 64 * 1024
MAX_BODY_DEPTH: Final = 8
MAX_CURSOR_CHARS: Final = 1024
NO_STORE: Final = {"Cache-Control": "no-store"}
CALLER_FAILURES: Final = (
    InvalidRequestError,  # a namespace or connection id that is not a slug
    AuthenticationError,
    NoMatchingRuleError,  # no rule with a provision block for the namespace
    AccessRevokedError,
    ConnectionNotFoundError,  # not the caller's, or (listing, counting) no such namespace
    RateLimitedError,
    *SMITHERY_FAILURES,
)
"""What every ``/v1/connections`` route can refuse with: the caller, the policy, Smithery."""


class Deleted(msgspec.Struct, frozen=True):
    success: bool = True


@put(
    "/v1/connections/{namespace:str}/{connection_id:str}",
    request_max_body_size=16 * 1024 * 1024,
    summary="Create or update one of the caller's connections, with the policy's metadata",
    responses={
        200: ResponseSpec(ConnectionDocument, generate_examples=False, description="Updated"),
        201: ResponseSpec(ConnectionDocument, generate_examples=False, description="Created"),
        **problem_responses(
            *CALLER_FAILURES,
            InvalidJSONError,
            DuplicateKeyError,
            TooDeepError,
            MetadataNotAllowedError,
            TargetNotAllowedError,
            ConnectionIdNotAllowedError,
            ConnectionNotOwnedError,
            ConnectionLimitReachedError,
            RequestTimeoutError,
            ConnectionConflictError,
            PayloadTooLargeError,
            UnsupportedMediaTypeError,
            ClusterBusyError,
        ),
    },
    operation_class=documented(ConnectionRequest),
)
async def put_connection(
    request: Request[Any, Any, Any],
    namespace: FromPath[str],
    connection_id: FromPath[str],
    broker: NamedDependency[BrokerState],
) -> Response[ConnectionDocument]:
    principal = await limited_caller(request, broker)
    check_name("namespace", namespace)
    check_name("connectionId", connection_id)
    _, parsed = await read_strict_json(
        request,
        timeout_seconds=broker.settings.server.body_timeout_seconds,
        max_bytes=MAX_BODY_BYTES,
        max_depth=MAX_BODY_DEPTH,
    )
    upsert = convert_body(parsed, ConnectionRequest)
    document, created = await broker.provisioning.put(principal, namespace, connection_id, upsert)
    return Response(document, status_code=201 if created else 200, headers=NO_STORE)


@get(
    "/v1/connections/{namespace:str}",
    summary="List the caller's connections (Smithery's cursor pagination)",
    responses=problem_responses(*CALLER_FAILURES),
    operation_class=documented(
        query=(
            Parameter(
                name="cursor",
                param_in=ParamType.QUERY,
                description="Smithery's nextCursor from the previous page",
                schema=Schema(type=OpenAPIType.STRING, min_length=1, max_length=MAX_CURSOR_CHARS),
            ),
            Parameter(
                name="limit",
                param_in=ParamType.QUERY,
                description="Connections per page",
                schema=Schema(type=OpenAPIType.INTEGER, minimum=1, maximum=100),
            ),
        )
    ),
)
async def list_connections(
    request: Request[Any, Any, Any],
    namespace: FromPath[str],
    broker: NamedDependency[BrokerState],
) -> Response[ConnectionPage]:
    principal = await limited_caller(request, broker)
    check_name("namespace", namespace)
    params = request.query_params
    unknown = set(params.keys()) - {"cursor", "limit"}
    if unknown:
        raise InvalidRequestError(f"Unknown query parameter {sorted(unknown)[0]!r}.")
    cursor = params.get("cursor")
    if cursor is not None and not 0 < len(cursor) <= MAX_CURSOR_CHARS:
        raise InvalidRequestError(f"cursor must be 1-{MAX_CURSOR_CHARS} characters.")
    raw_limit = params.get("limit")
    limit = None
    if raw_limit is not None:
        # Leading zeros dropped before int(), which refuses (ValueError) over 4300 digits.
        digits = raw_limit.lstrip("0") if raw_limit.isascii() and raw_limit.isdigit() else "x"
        if len(digits) > 3 or not digits.isdigit() or not 1 <= int(digits) <= 100:
            raise InvalidRequestError("limit must be an integer from 1 to 100.")
        limit = int(digits)
    page = await broker.provisioning.list(principal, namespace, cursor=cursor, limit=limit)
    return Response(page, headers=NO_STORE)


@get(
    "/v1/connections/{namespace:str}/{connection_id:str}",
    summary="Read one of the caller's connections (404 when it is not theirs)",
    responses=problem_responses(*CALLER_FAILURES),
    operation_class=documented(),
)
async def get_connection(
    request: Request[Any, Any, Any],
    namespace: FromPath[str],
    connection_id: FromPath[str],
    broker: NamedDependency[BrokerState],
) -> Response[ConnectionDocument]:
    principal = await limited_caller(request, broker)
    check_name("namespace", namespace)
    check_name("connectionId", connection_id)
    document = await broker.provisioning.get(principal, namespace, connection_id)
    return Response(document, headers=NO_STORE)


@delete(
    "/v1/connections/{namespace:str}/{connection_id:str}",
    status_code=200,
    summary="Delete one of the caller's connections (404 when it is not theirs)",
    responses=problem_responses(*CALLER_FAILURES),
    operation_class=documented(),
)
async def delete_connection(
    request: Request[Any, Any, Any],
    namespace: FromPath[str],
    connection_id: FromPath[str],
    broker: NamedDependency[BrokerState],
) -> Deleted:
    principal = await limited_caller(request, broker)
    check_name("namespace", namespace)
    check_name("connectionId", connection_id)
    await broker.provisioning.delete(principal, namespace, connection_id)
    return Deleted()
