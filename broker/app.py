"""The Litestar app factory and the one table that turns errors into HTTP problem details.

``create_app(settings)`` assembles everything: the policy set, the verifier, the upstream client,
the token cache and the handlers. Resources are closed on shutdown. Nothing here reads the
environment; the CLI loads ``Settings`` and passes them in, and tests build them directly.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Final, cast

import httpx
import msgspec
from litestar import Litestar, Request, Response
from litestar.config.cors import CORSConfig
from litestar.datastructures import State
from litestar.di import Provide
from litestar.exceptions import HTTPException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.plugins.opentelemetry import OpenTelemetryConfig, OpenTelemetryPlugin
from litestar.types import (
    ASGIApp,
    Message,
    Receive,
    Scope,
    Send,
)

from broker import __version__
from broker.admission import Admission
from broker.authentication import Authenticator
from broker.cache import TokenCache
from broker.cluster import setup_cluster
from broker.config import Settings
from broker.errors import AuthenticationError, BrokerError, RequestDeniedError
from broker.identity import DevSigner
from broker.issuance import Issuance
from broker.jwks import JwksManager, setup_verifier
from broker.metrics import Metrics
from broker.policy import PolicySet, load_policy_dir
from broker.policy_lint import shared_claim_warnings
from broker.provisioning import Provisioning
from broker.ratelimit import ConcurrencyLimit
from broker.reload import PolicyReloader
from broker.routes import (
    admin,
    connections,
    dev,
    health,
    observability,
    precheck,
    proxy,
    static,
    tokens,
)
from broker.routes.observability import METRIC_HELP, collect_state_metrics
from broker.routes.responses import JsonBody
from broker.state import BrokerState
from broker.telemetry import (
    Telemetry,
    audit_log,
    redact_server_span,
    route_template,
    setup_telemetry,
)
from broker.upstream import SmitheryClient

logger = logging.getLogger("broker.app")

PROBLEM_JSON: Final = "application/problem+json"
PROBLEM_TYPE_PREFIX: Final = "urn:token-broker:problem:"

# Litestar's own HTTP errors (routing, size limits, its validation) → our stable codes.
_HTTP_CODES: Final = {
    400: "invalid_request",
    401: "invalid_token",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}


class Problem(msgspec.Struct, omit_defaults=True):
    """RFC 9457 problem details with the broker's stable ``code``."""

    type: str
    title: str
    status: int
    code: str
    detail: str | None = None
    instance: str | None = None
    reasons: list[dict[str, Any]] | None = None
    """For ``request_denied``: why each rule did not allow the message."""


def encode_problem(status: int, code: str, title: str, detail: str) -> bytes:
    """A problem details body for answers made below Litestar (431, the head deadline's 408)."""
    return msgspec.json.encode(
        Problem(
            type=PROBLEM_TYPE_PREFIX + code, title=title, status=status, code=code, detail=detail
        )
    )


def problem_response(
    request: Request[Any, Any, Any], status: int, code: str, title: str, detail: str | None
) -> Response[Problem]:
    headers: dict[str, str] = {"Cache-Control": "no-store"}
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
    return Response(
        Problem(
            type=PROBLEM_TYPE_PREFIX + code,
            title=title,
            status=status,
            code=code,
            detail=detail,
            instance=request.url.path,
        ),
        status_code=status,
        media_type=PROBLEM_JSON,
        headers=headers,
    )


class HeaderLimit:
    """Refuse requests whose headers exceed ``max_bytes`` with 431 before any work is done.

    A plain ASGI wrapper around the whole app (``broker serve`` applies it), not a Litestar
    middleware: each Litestar middleware layer adds an exception-handling layer per request.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, cors: CORSConfig | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.cors = cors
        """The app's CORS rules: this refusal is made outside Litestar's CORS middleware, and a
        browser shows an answer without its headers as a network error the page cannot read."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if str(scope["type"]) == "http":
            size = sum(len(name) + len(value) for name, value in scope["headers"])
            if size > self.max_bytes:
                body = encode_problem(
                    431,
                    "headers_too_large",
                    "Request headers too large",
                    f"Request headers may total at most {self.max_bytes} bytes.",
                )
                headers = self._cors(scope)
                answer = JsonBody(body, headers, status=431, media_type=PROBLEM_JSON.encode())
                await answer(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _cors(self, scope: Scope) -> tuple[tuple[bytes, bytes], ...]:
        """The headers Litestar's CORS middleware would add, decided by the same config."""
        raw = next((v for k, v in scope["headers"] if k == b"origin"), None)
        if self.cors is None or raw is None:
            return ()
        origin = raw.decode("latin-1")
        headers = dict(self.cors.simple_headers)
        if not self.cors.is_allow_all_origins and self.cors.is_origin_allowed(origin):
            headers["Access-Control-Allow-Origin"] = origin
            headers["Vary"] = "Origin"
        return tuple((name.lower().encode(), value.encode()) for name, value in headers.items())


_CORS_REFUSAL: Final = b"Disallowed CORS "
"""How Litestar's CORS middleware begins a refused preflight's plain-text body."""
_CORS_FAILURES: Final = ("origin", "method", "headers")
"""What it can name as refused, in its words (lower-cased)."""


class PreflightProblems:
    """A refused CORS preflight as problem details (``400 cors_rejected``), like every other
    error of the broker.

    Litestar's CORS middleware answers every ``OPTIONS`` request with an ``Origin`` itself: 204,
    or 400 with a plain-text "Disallowed CORS origin, method, headers" when the origin, the
    requested method or a requested header is not allowed. That 400 is rewritten here; the
    failures it names become the detail (a fixed vocabulary, never request data). Browsers do
    not show a refused preflight's body to the page; an operator's curl reads it.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            str(scope["type"]) != "http"
            or scope.get("method") != "OPTIONS"
            or not any(name == b"origin" and value for name, value in scope["headers"])
        ):
            await self.app(scope, receive, send)
            return
        held: list[Message] = []  # a 400 start and its body so far, until it is known whose

        async def send_problem(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 400:
                held.append(message)
                return
            if not held or message["type"] != "http.response.body":
                await send(message)
                return
            held.append(message)
            if message.get("more_body", False):
                return
            text = b"".join(cast("bytes", m.get("body", b"")) for m in held[1:])
            headers = cast("list[tuple[bytes, bytes]]", held[0].get("headers", []))
            media = next((v for k, v in headers if k == b"content-type"), b"")
            if not (media.startswith(b"text/plain") and text.startswith(_CORS_REFUSAL)):
                for kept in held:  # some other 400: passed on as it was
                    await send(kept)
                return
            said = text[len(_CORS_REFUSAL) :].lower()
            failures = [word for word in _CORS_FAILURES if word.encode() in said]
            body = encode_problem(
                400,
                "cors_rejected",
                "CORS preflight refused",
                "Not allowed by the broker's CORS settings: "
                + (", ".join(failures) or "the request")
                + " (allowed origins: BROKER_CORS_ORIGINS).",
            )
            answer = JsonBody(
                body, ((b"cache-control", b"no-store"),), 400, media_type=PROBLEM_JSON.encode()
            )
            await answer(scope, receive, send)

        await self.app(scope, receive, send_problem)


def guarded(app: Litestar) -> ASGIApp:
    """``app`` as ``broker serve`` and ``broker dev`` run it: oversized headers refused first,
    and a refused CORS preflight answered with problem details."""
    settings = cast("BrokerState", app.state.broker).settings
    inner: ASGIApp = app if app.cors_config is None else PreflightProblems(app)
    return HeaderLimit(inner, settings.server.max_header_bytes, app.cors_config)


def handle_broker_error(request: Request[Any, Any, Any], exc: BrokerError) -> Response[Problem]:
    if isinstance(exc, AuthenticationError):
        # The precise reason is for operators only; the body stays generic (no probing).
        logger.info("authentication failed: reason=%s path=%s", exc.reason, request.url.path)
    response = problem_response(request, exc.status, exc.code, exc.title, exc.detail)
    if isinstance(exc, RequestDeniedError):
        response.content.reasons = exc.reasons
    retry_after = getattr(exc, "retry_after_seconds", None)
    if isinstance(retry_after, int):
        response.headers["Retry-After"] = str(retry_after)
    return response


def handle_http_exception(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Problem]:
    status = exc.status_code
    code = _HTTP_CODES.get(status, "http_error" if status < 500 else "internal_error")
    detail = exc.detail if status < 500 else None
    response = problem_response(request, status, code, detail or "HTTP error", detail)
    if exc.headers:
        response.headers.update(exc.headers)
    return response


def handle_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Problem]:
    # Only the type is logged: a foreign exception's message could carry request data.
    logger.error("unhandled %s on %s", type(exc).__name__, request.url.path)
    return problem_response(request, 500, "internal_error", "Internal error", None)


def create_app(
    settings: Settings,
    *,
    policy_set: PolicySet | None = None,
    dev_signer: DevSigner | None = None,
    clock: Callable[[], float] = time.time,
    upstream_transport: httpx.AsyncBaseTransport | None = None,
    idp_transport: httpx.AsyncBaseTransport | None = None,
    telemetry: Telemetry | None = None,
) -> Litestar:
    """Build the broker. Raises ``PolicyError``/``ConfigError`` listing every problem.

    ``telemetry`` defaults to what ``OTEL_*`` and ``BROKER_TELEMETRY_*`` configure.
    """
    policies = policy_set if policy_set is not None else load_policy_dir(settings.policies.dir)
    telemetry = telemetry or setup_telemetry(settings.telemetry)
    metrics = Metrics(help=METRIC_HELP)
    verifier, remote_issuers = setup_verifier(settings.auth)
    if dev_signer is not None:
        verifier.add_issuer(dev_signer.rules(settings.auth.leeway_seconds), dev_signer.keys())
    for warning in shared_claim_warnings(policies, verifier.issuers):
        logger.warning("policy warning: %s", warning)
    keys = None
    if remote_issuers:
        keys = JwksManager(
            verifier,
            remote_issuers,
            settings.auth,
            clock=clock,
            transport=idp_transport,
            tracer_provider=telemetry.provider,
        )
    authenticator = Authenticator(
        verifier,
        clock=clock,
        keys=keys,
        cache_entries=settings.auth.verified_cache_entries,
        telemetry=telemetry,
    )
    upstream = SmitheryClient(
        settings.smithery,
        transport=upstream_transport,
        tracer_provider=telemetry.provider,
        observe=lambda operation, seconds: metrics.observe(
            "broker_upstream_request_duration_seconds", (("operation", operation),), seconds
        ),
    )
    cache = TokenCache(
        max_entries=settings.cache.max_entries,
        margin_seconds=settings.cache.refresh_margin_seconds,
        margin_ratio=settings.cache.refresh_margin_ratio,
        refresh_ahead=settings.cache.refresh_ahead,
        clock=clock,
    )
    cluster = setup_cluster(
        settings, cache=cache, clock=clock, metrics=metrics, telemetry=telemetry
    )
    state = BrokerState(
        settings=settings,
        policy_set=policies,
        authenticator=authenticator,
        upstream=upstream,
        cache=cache,
        issuance=Issuance(
            policy=lambda: state.policy_set,
            cache=cache,
            upstream=upstream,
            telemetry=telemetry,
            metrics=metrics,
            mint_limit=cluster.limiter(
                rate_per_second=settings.limits.mint_rate_per_second,
                burst=settings.limits.mint_burst,
                clock=clock,
                what="token mints",
            ),
            revocations=cluster.revocations,
            shared=cluster.shared,
        ),
        request_limit=cluster.limiter(
            rate_per_second=settings.limits.request_rate_per_second,
            burst=settings.limits.request_burst,
            clock=clock,
            what="requests",
        ),
        mcp_calls=(
            ConcurrencyLimit(settings.limits.mcp_calls_per_user)
            if settings.limits.mcp_calls_per_user
            else None
        ),
        admission=Admission(
            policy=lambda: state.policy_set,
            upstream=upstream,
            clock=clock,
            exempt_lifecycle=settings.precheck.exempt_lifecycle,
            connection_cache_seconds=settings.precheck.connection_cache_seconds,
            telemetry=telemetry,
            metrics=metrics,
            revocations=cluster.revocations,
        ),
        clock=clock,
        reloader=PolicyReloader(
            directory=settings.policies.dir,
            current=lambda: state.policy_set,
            apply=lambda new: setattr(state, "policy_set", new),
            interval_seconds=settings.policies.reload_interval_seconds,
            warnings=lambda new: shared_claim_warnings(new, verifier.issuers),
        ),
        provisioning=Provisioning(
            policy=lambda: state.policy_set,
            upstream=upstream,
            telemetry=telemetry,
            metrics=metrics,
            exclusive=cluster.exclusive,
            changed=lambda namespace, connection_id: state.admission.forget_connection(
                namespace, connection_id
            ),
            revocations=cluster.revocations,
        ),
        dev_signer=dev_signer,
        telemetry=telemetry,
        metrics=metrics,
        cluster=cluster,
    )
    metrics.collectors.append(lambda: collect_state_metrics(state))
    metrics.collectors.append(cluster.collect_metrics)
    handlers: list[Any] = [
        tokens.create_token,
        precheck.precheck,
        proxy.proxy_mcp,
        proxy.proxy_mcp_documented,
        connections.put_connection,
        connections.list_connections,
        connections.get_connection,
        connections.delete_connection,
        health.livez,
        health.readyz,
        static.client_js,
        static.client_types,
    ]
    if settings.admin.token is not None:  # unset: 404, and not in /schema either
        handlers.extend([admin.explain_route, admin.revoke_route])
    if dev_signer is not None:
        handlers.extend([dev.dev_login, dev.dev_console, dev.dev_console_file])
    if settings.telemetry.metrics_port == 0:
        handlers.append(observability.metrics_route)
    cors = None
    if settings.cors.origins:
        cors = CORSConfig(
            allow_origins=list(settings.cors.origins),
            allow_methods=["GET", "POST", "PUT", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "MCP-Protocol-Version", "traceparent"],
            allow_credentials=False,  # bearer tokens only; no cookies cross origins
            # /v1/client.js reads these: backoff honours Retry-After, expiry uses the server's Date.
            expose_headers=["Retry-After", "Date", "WWW-Authenticate"],
            max_age=600,
        )

    async def start_background() -> None:
        await state.reloader.start()
        await cluster.start()
        if keys is not None:
            await keys.start()

    async def close_resources() -> None:
        await state.reloader.stop()
        if keys is not None:
            await keys.aclose()
        await upstream.aclose()
        await cluster.aclose()
        telemetry.shutdown()  # flushes spans still queued for export
        audit_log.flush()  # and audit lines still waiting for the end of a loop iteration

    async def count_response(message: Message, scope: Scope) -> None:
        if message["type"] == "http.response.start":
            metrics.inc(
                "broker_http_requests_total",
                (
                    ("route", route_template(scope["path"])),
                    ("method", str(scope.get("method", ""))),
                    ("status", str(message["status"])),
                ),
            )

    plugins: list[Any] = []
    if telemetry.provider is not None:
        plugins.append(
            OpenTelemetryPlugin(
                OpenTelemetryConfig(
                    tracer_provider=telemetry.provider,
                    scope_span_details_extractor=span_details,
                    server_request_hook_handler=redact_server_span,
                    exclude_spans=["receive", "send"],
                )
            )
        )

    return Litestar(
        route_handlers=handlers,
        dependencies={"broker": Provide(lambda: state, use_cache=True, sync_to_thread=False)},
        exception_handlers={
            BrokerError: handle_broker_error,
            HTTPException: handle_http_exception,
            Exception: handle_unexpected,
        },
        cors_config=cors,
        openapi_config=OpenAPIConfig(
            title="Token Broker",
            version=__version__,
            path="/schema",
            create_examples=False,
            # The document only: Litestar's default viewer pages load scripts from public CDNs
            # (unpinned), which would run on the broker's origin.
            render_plugins=[JsonRenderPlugin(path=["/", "/openapi.json"])],
        ),
        on_startup=[start_background],
        before_send=[count_response],
        plugins=plugins,
        # Operators' tooling and tests reach the live resources through app.state.broker.
        state=State({"broker": state}),
        on_shutdown=[close_resources],
        debug=False,
        logging_config=None,
    )


def span_details(scope: Scope) -> tuple[str, dict[str, Any]]:
    """Server spans are named by route template (``POST /v1/mcp/{namespace}/{connectionId}``)."""
    method = str(scope.get("method", ""))
    route = route_template(scope.get("path", ""))
    return f"{method} {route}", {"http.route": route}


def create_metrics_app(broker_app: Litestar) -> Litestar:
    """``/metrics`` alone, for ``BROKER_TELEMETRY_METRICS_PORT``: the same live state as
    ``broker_app``, served on a port that can stay inside the cluster."""
    state = broker_app.state.broker
    return Litestar(
        route_handlers=[observability.metrics_route],
        dependencies={"broker": Provide(lambda: state, use_cache=True, sync_to_thread=False)},
        openapi_config=None,
        debug=False,
        logging_config=None,
    )
