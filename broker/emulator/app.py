"""Assembling the emulator: one Litestar app per call, and running it with uvicorn.

``create_emulator_app`` builds the state, wires the routes and the fault injection
(``faults.py``), maps errors to Smithery-shaped bodies in one table (JSON-RPC error objects for
the MCP endpoint, ``{error, message}`` elsewhere) and closes the state's resources (node oracle,
MCP relay) on shutdown. Nothing here reads the
environment. The emulator must not import anything
from ``broker`` outside ``broker/emulator/``: it is the independent party the broker is checked
against.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import time
from collections.abc import Iterable
from typing import Any, cast

import uvicorn
from litestar import Litestar, MediaType, Request, Response
from litestar.di import Provide
from litestar.enums import ScopeType
from litestar.exceptions import HTTPException
from litestar.middleware import DefineMiddleware
from litestar.types import LifeSpanReceive, LifeSpanScope, LifeSpanSend, Receive, Scope, Send

from broker.emulator.clock import Clock
from broker.emulator.connection import DEFAULT_INPUT_HOSTS, DEFAULT_OAUTH_HOSTS
from broker.emulator.errors import EmulatorError, JsonRpcEndpointError
from broker.emulator.faults import FaultMiddleware, Faults, call_with_connection
from broker.emulator.jsonrpc import ErrorObject, ErrorResponse
from broker.emulator.routes import connections, control, mcp, tokens
from broker.emulator.state import EmulatorState
from broker.emulator.token import TOKEN_PREFIX, TokenCodec

DEFAULT_API_KEY = "dev-api-key"
DEFAULT_OWNED_NAMESPACES: tuple[str, ...] = ("my-app",)
"""The namespace of the example policies (``policies/``), of ``broker dev``'s seeded
connections and of the bench harness: what the emulator's API key owns unless told otherwise."""


def create_emulator_app(
    api_key: str = DEFAULT_API_KEY,
    *,
    signing_key: bytes | None = None,
    clock: Clock = time.time,
    exempt_lifecycle: bool = False,
    tracer_provider: Any = None,
    owned_namespaces: Iterable[str] = DEFAULT_OWNED_NAMESPACES,
    oauth_hosts: tuple[str, ...] = DEFAULT_OAUTH_HOSTS,
    input_hosts: tuple[str, ...] = DEFAULT_INPUT_HOSTS,
) -> EmulatorApp:
    """A fresh Smithery stand-in with its own connections, counters and signing key.

    ``api_key``: the bearer that acts as the account's Smithery API key (may do everything).
    ``signing_key``: the HMAC key tokens are signed with; random per app when None. Anyone who
    holds it can forge tokens of any scope: never log it. Pass one only to keep tokens valid
    across restarts or apps.
    ``clock``: seconds since the epoch; inject a fake one in tests.
    ``exempt_lifecycle``: let ``initialize``, ``ping`` and ``notifications/*`` through
    ``POST /connect/{ns}/{id}/mcp`` without ``rpcReqMatch`` (namespaces, operations and metadata
    still apply). Off by default, as SMITHERY-SEMANTICS.md leaves it OPEN.

    ``tracer_provider``: an OpenTelemetry tracer provider; when given, the emulator traces its
    requests as server spans joined to the caller's trace (W3C ``traceparent``), as Smithery
    would appear in a distributed trace.

    ``owned_namespaces``: the namespaces the API key owns ("Requires API key and namespace
    ownership"). Connections are created, updated and deleted only there; elsewhere ``PUT``,
    ``POST`` and ``DELETE`` answer 404 "Namespace not found or access denied", as the OpenAPI
    documents, and reads find nothing. Tokens may be minted for any namespace.

    ``oauth_hosts``: connections for a target whose host contains one of these get
    ``status: {state: auth_required, setupUrl}`` (OAuth-style servers), and the MCP endpoint
    answers them 401 ``-32001``.

    ``input_hosts``: connections for a target whose host contains one of these get
    ``status: {state: input_required, setupUrl, http, missing}`` until their ``headers`` and
    ``mcpUrl`` query carry what ``connection.INPUT_PROFILE`` asks for, and the MCP endpoint
    answers them 409 ``-32002``. Other connections are ``connected``.

    The MCP endpoint starts a ``node`` process on first use; it is stopped on shutdown, so run the
    app with its lifespan (uvicorn, or Litestar's test clients as context managers).
    """
    if not api_key or api_key.startswith(f"{TOKEN_PREFIX}."):
        # A key shaped like a service token would be checked as a token and never match.
        raise ValueError("api_key must be non-empty and must not look like a service token")
    if isinstance(owned_namespaces, str):
        # A lone string would be taken as the set of its characters.
        raise TypeError("owned_namespaces must be a collection of namespace names")
    state = EmulatorState(
        api_key=api_key,
        codec=TokenCodec(signing_key),
        clock=clock,
        exempt_lifecycle=exempt_lifecycle,
        owned_namespaces=frozenset(owned_namespaces),
        oauth_hosts=tuple(oauth_hosts),
        input_hosts=tuple(input_hosts),
    )

    def provide_emulator() -> EmulatorState:
        return state

    app = EmulatorApp(
        route_handlers=[
            tokens.create_token,
            connections.list_connections,
            connections.get_connection,
            connections.upsert_connection,
            connections.create_connection,
            connections.delete_connection,
            mcp.post_message,
            mcp.refuse_session_method,
            control.health,
            control.stats,
            control.reset,
            control.introspect,
            control.get_faults,
            control.set_fault,
        ],
        middleware=[DefineMiddleware(FaultMiddleware, faults=state.faults)],
        dependencies={"emulator": Provide(provide_emulator, use_cache=True, sync_to_thread=False)},
        exception_handlers={
            EmulatorError: _emulator_error,
            # Litestar picks the most specific class along the MRO: this one wins for its subtree.
            JsonRpcEndpointError: _json_rpc_error,
            HTTPException: _http_exception,
        },
        on_shutdown=[state.aclose],
        plugins=_tracing(tracer_provider),
        openapi_config=None,
        # Leave the process's logging alone (Litestar's default config would take over the root
        # logger, and with it every library's INFO lines).
        logging_config=None,
    )
    app.faults = state.faults
    return app


class EmulatorApp(Litestar):
    """The emulator's Litestar app: also remembers each request's server connection, so an
    injected ``reset`` fault can drop it (``faults.call_with_connection``).

    ``faults``: the app's fault injection, for servers that want to drop held requests as soon
    as they begin to shut down (``run_emulator`` does).
    """

    faults: Faults

    async def __call__(
        self,
        scope: Scope | LifeSpanScope,
        receive: Receive | LifeSpanReceive,
        send: Send | LifeSpanSend,
    ) -> None:
        if scope["type"] == ScopeType.HTTP:
            await call_with_connection(
                super().__call__, cast("Scope", scope), cast("Receive", receive), cast("Send", send)
            )
        else:
            await super().__call__(scope, receive, send)


def _tracing(tracer_provider: Any) -> list[Any]:
    if tracer_provider is None:
        return []
    from litestar.plugins.opentelemetry import OpenTelemetryConfig, OpenTelemetryPlugin

    return [
        OpenTelemetryPlugin(
            OpenTelemetryConfig(tracer_provider=tracer_provider, exclude_spans=["receive", "send"])
        )
    ]


def run_emulator(
    host: str,
    port: int,
    api_key: str,
    exempt_lifecycle: bool = False,
    owned_namespaces: Iterable[str] = DEFAULT_OWNED_NAMESPACES,
) -> None:
    """Serve a fresh emulator with uvicorn until interrupted (blocking).

    Requests held by ``latency`` or ``hang`` faults are dropped when shutdown begins: uvicorn
    waits for running requests before the app's own ``on_shutdown``, so that would be too late.
    """
    app = create_emulator_app(
        api_key, exempt_lifecycle=exempt_lifecycle, owned_namespaces=owned_namespaces
    )
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
    server = _ReleasingServer(config, app.faults)
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    if not server.started:
        sys.exit(_STARTUP_FAILURE)


_STARTUP_FAILURE = 3
"""uvicorn's exit code when the server could not start (``uvicorn.run`` exits with it too)."""


class _ReleasingServer(uvicorn.Server):
    """uvicorn, dropping the requests faults hold as soon as shutdown begins."""

    def __init__(self, config: uvicorn.Config, faults: Faults) -> None:
        super().__init__(config)
        self._faults = faults

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._faults.close()
        await super().shutdown(sockets=sockets)


def _emulator_error(_: Request[Any, Any, Any], error: EmulatorError) -> Response[dict[str, str]]:
    return Response(
        {"error": error.code, "message": error.message},
        status_code=error.status_code,
        media_type=MediaType.JSON,
        headers=error.headers,
    )


def _json_rpc_error(
    _: Request[Any, Any, Any], error: JsonRpcEndpointError
) -> Response[ErrorResponse]:
    return Response(
        ErrorResponse(
            id=error.request_id,
            error=ErrorObject(code=error.rpc_code, message=error.message, data=error.data),
        ),
        status_code=error.status_code,
        media_type=MediaType.JSON,
        headers=error.headers,
    )


# Litestar's own errors (unknown route, wrong method) in the same {error, message} shape.
_HTTP_ERROR_CODES = {400: "invalid_request", 404: "not_found", 405: "method_not_allowed"}


def _http_exception(_: Request[Any, Any, Any], error: HTTPException) -> Response[dict[str, str]]:
    return Response(
        {
            "error": _HTTP_ERROR_CODES.get(error.status_code, "http_error"),
            "message": error.detail,
        },
        status_code=error.status_code,
        media_type=MediaType.JSON,
        headers=error.headers,
    )
