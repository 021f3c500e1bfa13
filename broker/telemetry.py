"""Tracing, the audit log and logging setup: how every decision is made observable.

* **Traces** (OpenTelemetry): configured from the standard ``OTEL_*`` variables
  (``OTEL_TRACES_EXPORTER`` = ``otlp`` | ``console`` | ``none``, ``OTEL_EXPORTER_OTLP_*``,
  ``OTEL_TRACES_SAMPLER``, ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_SERVICE_NAME`` defaulting to
  ``token-broker``). With tracing off, ``Telemetry.span`` returns one shared no-op context: the
  request path pays a function call, nothing more.
* **Audit log**: one JSON line per decision on stdout (``audit``).
* **Privacy**: the user's subject goes out raw, as a keyed hash, or not at all
  (``BROKER_TELEMETRY_SUBJECT``); a service token only ever as a short keyed-hash fingerprint.

Nothing here may receive a credential: ``audit`` refuses field names that suggest one, and span
attributes are set only from identifiers.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import secrets
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
from opentelemetry.trace import Span, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from broker.config import TelemetrySettings
from broker.errors import ConfigError

logger = logging.getLogger("broker.telemetry")

DEFAULT_SERVICE_NAME: Final = "token-broker"
HASHED_SUBJECTS_KEPT: Final = 10_000
_FORBIDDEN_FIELDS: Final = frozenset({"token", "jwt", "api_key", "authorization", "secret"})
_ENCODER: Final = msgspec.json.Encoder()
_NO_SPAN: Final = contextlib.nullcontext(None)
_TRACE_EVERY_DECISION: Final = ParentBased(root=ALWAYS_ON, remote_parent_not_sampled=ALWAYS_ON)
# Route templates for span names and metric labels: bounded cardinality, no user data in names.
_TEMPLATES: Final = {
    "/v1/tokens": "/v1/tokens",
    "/v1/precheck": "/v1/precheck",
    "/v1/explain": "/v1/explain",
    "/v1/admin/revoke": "/v1/admin/revoke",
    "/livez": "/livez",
    "/readyz": "/readyz",
    "/metrics": "/metrics",
    "/dev/login": "/dev/login",
    "/v1/client.js": "/v1/client.js",
    "/v1/client.d.ts": "/v1/client.d.ts",
    "/dev/": "/dev/",
    "/dev": "/dev/",
    "/dev/console.js": "/dev/console.js",
    "/dev/console.css": "/dev/console.css",
}
MCP_ROUTE: Final = "/v1/mcp/{namespace}/{connectionId}"


_URL_ATTRIBUTES: Final = ("http.url", "url.full")
_PATH_ATTRIBUTES: Final = ("http.target", "url.path")


def _recorded(span: Any, keys: tuple[str, ...]) -> list[str]:
    attributes = getattr(span, "attributes", None) or {}
    return [key for key in keys if key in attributes]


def redact_server_span(span: Span | None, scope: Mapping[str, Any]) -> None:
    """Server spans name the route, never the raw path: connection ids start with their owner's
    prefix (often the user id), which ``BROKER_TELEMETRY_SUBJECT=hash`` keeps out of traces."""
    if span is None or not span.is_recording():
        return
    route = route_template(str(scope.get("path", "")))
    for key in _recorded(span, _PATH_ATTRIBUTES):
        span.set_attribute(key, route)
    urls = _recorded(span, _URL_ATTRIBUTES)
    if urls:
        server = scope.get("server") or ("", None)
        host = f"{server[0]}:{server[1]}" if server[1] else str(server[0])
        url = f"{scope.get('scheme', 'http')}://{host}{route}"
        for key in urls:
            span.set_attribute(key, url)


async def redact_client_span(span: Span | None, request: Any) -> None:
    """Client spans to Smithery name its route (``upstream_route``) and drop the query: the
    connection list is filtered by the caller's metadata (``metadata.userId=alice``)."""
    if span is None or not span.is_recording():
        return
    url = getattr(request, "url", None)
    if url is None:
        return
    origin, path = f"{url.scheme}://{url.netloc.decode('ascii')}", url.path
    for key in _recorded(span, _URL_ATTRIBUTES):
        span.set_attribute(key, origin + upstream_route(path))


def upstream_route(path: str) -> str:
    """A Smithery API path as its route: namespaces and connection ids may name users."""
    parts = path.split("/")
    if len(parts) < 3 or parts[1] != "connect":
        return path  # /tokens
    route = "/connect/{namespace}"
    if len(parts) >= 4:
        route += "/{connectionId}"
    if len(parts) >= 5:
        route += "/" + "/".join(parts[4:])
    return route


def route_template(path: str) -> str:
    """The route a path belongs to, never the raw path (which may carry ids)."""
    template = _TEMPLATES.get(path)
    if template is not None:
        return template
    if path.startswith("/v1/mcp/"):
        return MCP_ROUTE
    if path.startswith("/v1/connections/"):
        return (
            "/v1/connections/{namespace}/{connectionId}"
            if path.count("/") >= 4
            else "/v1/connections/{namespace}"
        )
    if path.startswith("/schema"):
        return "/schema"
    return "unmatched"


@dataclass
class Telemetry:
    """What the request path needs to trace: a tracer (or None when off) and the privacy rules."""

    tracer: trace.Tracer | None = None
    provider: TracerProvider | None = None
    subject_mode: str = "hash"
    hash_key: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)
    _hashed: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def enabled(self) -> bool:
        return self.tracer is not None

    def span(self, name: str, attributes: Mapping[str, Any] | None = None) -> Any:
        """A child span of the current one, or a shared no-op context when tracing is off."""
        if self.tracer is None:
            return _NO_SPAN
        return _span(self.tracer, name, attributes)

    def enduser(self, subject: str) -> str | None:
        """The subject as the privacy setting allows it out (``enduser.id``, audit ``subject``)."""
        if self.subject_mode == "raw":
            return subject
        if self.subject_mode == "omit":
            return None
        return self._hashed_text(subject)

    def connection(self, connection_id: str | None) -> str | None:
        """A connection id as the privacy setting allows it out (audit ``connection``): ids
        start with their owner's subject (``idPrefix: "{claims.sub}-"``), so a hashed or
        omitted subject hides them the same way (``h:`` + a keyed hash, stable like the
        subject's)."""
        if connection_id is None or self.subject_mode == "raw":
            return connection_id
        if self.subject_mode == "omit":
            return None
        return self._hashed_text("connection:" + connection_id)

    def _hashed_text(self, text: str) -> str:
        """``h:`` + the keyed hash of ``text``, kept for the next request of the same user."""
        hashed = self._hashed.get(text)
        if hashed is None:
            hashed = "h:" + self.keyed_hash(text)
            if len(self._hashed) >= HASHED_SUBJECTS_KEPT:
                self._hashed.clear()
            self._hashed[text] = hashed
        return hashed

    def keyed_hash(self, value: str) -> str:
        """A short HMAC-SHA256 of ``value``: correlates records without revealing the value."""
        return hmac.new(self.hash_key, value.encode(), hashlib.sha256).hexdigest()[:16]

    def fingerprint(self, token: str) -> str:
        """``broker.token.fingerprint``: which token it was, never the token."""
        return self.keyed_hash("token:" + token)

    def shutdown(self) -> None:
        if self.provider is not None:
            self.provider.shutdown()


@contextlib.contextmanager
def _span(tracer: trace.Tracer, name: str, attributes: Mapping[str, Any] | None) -> Iterator[Span]:
    """``start_as_current_span`` without the messages of exceptions: they name connection ids
    and id prefixes, that is users, which ``BROKER_TELEMETRY_SUBJECT=hash`` keeps out of traces.
    An exception still makes the span an error, described by its stable code (or its type),
    unless the span has a status already (a denial's reason)."""
    with tracer.start_as_current_span(
        name, attributes=attributes, record_exception=False, set_status_on_exception=False
    ) as span:
        try:
            yield span
        except BaseException as exc:
            kind = type(exc).__name__
            span.add_event("exception", {"exception.type": kind})
            status = getattr(span, "status", None)
            if status is None or status.status_code is StatusCode.UNSET:
                span.set_status(Status(StatusCode.ERROR, getattr(exc, "code", kind)))
            raise


def deny(span: Span | None, reason: str, details: Mapping[str, Any] | None = None) -> None:
    """Mark a span as a denial: status, ``broker.decision``/``broker.deny.reason``, an event."""
    if span is None:
        return
    span.set_attribute("broker.decision", "deny")
    span.set_attribute("broker.deny.reason", reason)
    span.add_event("broker.denied", {"reason": reason, **(details or {})})
    span.set_status(Status(StatusCode.ERROR, reason))


def setup_telemetry(
    settings: TelemetrySettings,
    environ: Mapping[str, str] | None = None,
    *,
    exporter: SpanExporter | None = None,
) -> Telemetry:
    """Tracing from ``OTEL_*`` (or ``exporter``, for tests); privacy rules from ``settings``."""
    env = os.environ if environ is None else environ
    key = settings.hash_key.reveal().encode() if settings.hash_key else secrets.token_bytes(32)
    if settings.hash_key is None and settings.subject == "hash":
        logger.info("BROKER_TELEMETRY_HASH_KEY unset: subject hashes change on every restart")
    base = Telemetry(subject_mode=settings.subject, hash_key=key)
    if exporter is None:
        name = select_trace_exporter(env)
        if name is None:
            return base
        processor: Any = BatchSpanProcessor(_create_exporter(name))
    else:
        processor = SimpleSpanProcessor(exporter)
    if "OTEL_PROPAGATORS" not in env:
        # W3C trace context only, not the default's baggage too: a caller's baggage header is
        # the caller's to write, and it would ride along on every call to Smithery.
        propagate.set_global_textmap(TraceContextTextMapPropagator())
    attributes = {} if env.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: DEFAULT_SERVICE_NAME}
    # Resource.create reads OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME; TracerProvider reads
    # OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG.
    # A caller's traceparent may say "not sampled"; its decisions are traced all the same (the
    # default sampler would follow the caller and drop them). OTEL_TRACES_SAMPLER overrides.
    sampler = None if env.get("OTEL_TRACES_SAMPLER") else _TRACE_EVERY_DECISION
    provider = TracerProvider(resource=Resource.create(attributes), sampler=sampler)
    provider.add_span_processor(processor)
    base.provider = provider
    base.tracer = provider.get_tracer("broker")
    return base


def select_trace_exporter(environ: Mapping[str, str]) -> str | None:
    """The span exporter the ``OTEL_*`` variables ask for: ``otlp``, ``console``, or None (tracing
    off). Raises ConfigError for one the broker cannot honour.

    ``setup_telemetry`` and ``broker check`` both decide through here, so a setting that would
    stop ``broker serve`` fails the check (the chart's init container) first.
    """
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    name = environ.get("OTEL_TRACES_EXPORTER", "none").strip().lower()
    if name in ("", "none"):
        return None
    if name == "console":
        return name
    if name == "otlp":
        # Only the OTLP/HTTP protobuf exporter is installed (no gRPC, no JSON encoding).
        variable = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
        if not environ.get(variable):
            variable = "OTEL_EXPORTER_OTLP_PROTOCOL"
        protocol = environ.get(variable, "http/protobuf")
        if protocol.strip() != "http/protobuf":
            raise ConfigError([f"{variable}: {protocol!r} is not supported; use http/protobuf"])
        return name
    raise ConfigError([f"OTEL_TRACES_EXPORTER: {name!r} is not supported; use otlp, console, none"])


def _create_exporter(name: str) -> SpanExporter:
    """The exporter ``select_trace_exporter`` chose."""
    if name == "console":
        return ConsoleSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    # The exporter reads OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT, _HEADERS, _TIMEOUT itself.
    return OTLPSpanExporter()


# --- the audit log -------------------------------------------------------------------------------


class AuditLog:
    """JSON lines on stdout, one per decision.

    Not the ``logging`` machinery: a record object, handler lock and flush per decision cost more
    than the rest of a cached token request. Lines written during one event-loop iteration are
    joined into one write at the end of that iteration (``call_soon``), so under load the audit
    log costs one system call per batch, and no line waits longer than the current iteration.
    Disabled until ``setup_logging`` enables it.
    """

    def __init__(self) -> None:
        self.enabled = False
        self.write: Callable[[bytes], Any] = lambda data: sys.stdout.buffer.write(data)
        self._pending: list[bytes] = []
        # Decision ids: a random per-process prefix and a counter (unique without a syscall).
        self._prefix = secrets.token_hex(4)
        self._sequence = 0

    def record(self, event: str, fields: dict[str, Any]) -> None:
        leaked = _FORBIDDEN_FIELDS.intersection(fields)
        if leaked:  # a programming error, caught by tests; never write the record
            raise ValueError(f"audit fields must not carry credentials: {sorted(leaked)}")
        if not self.enabled:
            return
        fields["time"] = round(fields.pop("time", None) or time.time(), 3)
        fields["event"] = event
        self._sequence += 1
        fields["decision_id"] = f"{self._prefix}{self._sequence:08x}"
        context = trace.get_current_span().get_span_context()
        fields["trace_id"] = format(context.trace_id, "032x") if context.is_valid else None
        self._pending.append(_ENCODER.encode(fields) + b"\n")
        if len(self._pending) == 1:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # no event loop (CLI tools): write at once
                self.flush()

    def flush(self) -> None:
        if self._pending:
            data, self._pending = b"".join(self._pending), []
            self.write(data)


audit_log: Final = AuditLog()


def audit(event: str, **fields: Any) -> None:
    """Write one audit record (costs nothing while the audit log is disabled). Its ``time`` is
    now, unless the fields give it (a record made after the fact)."""
    audit_log.record(event, fields)


@contextlib.contextmanager
def capture_audit() -> Iterator[list[bytes]]:
    """Collect audit lines in memory (tests and tooling)."""
    lines: list[bytes] = []
    previous = (audit_log.enabled, audit_log.write)
    audit_log.enabled, audit_log.write = True, lines.append
    try:
        yield lines
    finally:
        audit_log.flush()
        audit_log.enabled, audit_log.write = previous


def setup_logging(level: str = "INFO") -> None:
    """Plain lines on stderr for operators; audit lines as bare JSON on stdout."""
    root = logging.getLogger("broker")
    if getattr(root, "_broker_configured", False):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
    stdout_fd = sys.stdout.fileno()

    def write_all(data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(stdout_fd, view) :]

    audit_log.write = write_all
    audit_log.enabled = True
    root._broker_configured = True  # type: ignore[attr-defined]
