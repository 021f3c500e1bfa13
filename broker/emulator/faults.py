"""Run-time fault injection: make Smithery slow, failing, unreachable or silent, on demand.

Tests of a client's resilience drive it through ``POST /_emulator/faults`` (``routes/control.py``)
with ``{"route", "mode", "status"?, "seconds"?, "retryAfter"?, "count"?}``. ``route`` names an
endpoint family: ``tokens`` (``POST /tokens``), ``mcp`` (``POST /connect/{ns}/{id}/mcp``) or
``connections`` (the ``/connect/{ns}[/{id}]`` CRUD routes). At most one fault per family is
active; setting one replaces the previous one. Modes:

- ``none``: clears the family's fault;
- ``latency``: waits ``seconds``, then serves the request normally (even if the client has gone
  away meanwhile: a slow server still does the work);
- ``status``: answers ``status`` (default 503) in Smithery's error shape for the family (an
  ``{error, message}`` body, or a JSON-RPC error object with a null id for ``mcp``), with
  ``Retry-After: <retryAfter>`` when ``retryAfter`` is given;
- ``reset``: drops the TCP connection without any HTTP response (see "Dropping a connection");
- ``hang``: never answers, until the request is released (below).

``count`` limits a fault to that many requests of the family, after which it clears itself;
without it the fault lasts until replaced, cleared or ``POST /_emulator/reset``. A field the mode
does not use, an unknown field or a bad value is a 400 ``invalid_request``.

``POST`` and ``GET /_emulator/faults`` answer ``{"faults": [<active fault, "count" = what is
left>...], "held": {"tokens": n, "mcp": n, "connections": n}}``; ``POST`` adds ``"released": n``,
the held requests the change let go.

Held requests (``latency`` and ``hang``): changing a family's fault (``none`` or any new fault)
and ``POST /_emulator/reset`` release the requests it holds, which are then served normally (a
delayed request early); that is how a test lets a hung request go. A hung request also ends,
unanswered, when its client disconnects (a client that timed out), so a test that forgets to
clear a hang cannot block the server's shutdown as long as its clients give up. At shutdown (the
app's ``on_shutdown``, and earlier, at the start of uvicorn's shutdown, under ``run_emulator``)
held requests are dropped like ``reset``; another uvicorn server should call
``EmulatorApp.faults.close()`` when its shutdown begins, or set ``timeout_graceful_shutdown``,
since uvicorn waits for running requests before the app's ``on_shutdown``. A fault that clears
itself by ``count`` leaves the requests it holds held.

Faults are applied by ``FaultMiddleware`` to the route handlers that declare a family with
``opt=fault_route_opt(...)``, before the handler (or Litestar) reads anything; ``/health`` and
``/_emulator/*`` declare none, so faults never touch them. Every request that reaches a declared
handler is counted per family, faulted or not, and every application of a fault once
(``received_tokens``, ``received_mcp``, ``received_connections`` and ``faults_applied`` in
``GET /_emulator/stats``).

Dropping a connection (``reset``). ASGI has no message for "close without answering", and under
uvicorn an app that raises or returns before starting a response gets a 500 sent on its behalf.
So ``EmulatorApp`` (``app.py``) calls ``call_with_connection`` for every HTTP request, which
remembers the server's transport: uvicorn's ``send`` is a bound method of its per-request
``RequestResponseCycle``, whose ``transport`` attribute is the connection's asyncio (or uvloop)
transport, in both the ``httptools`` and the ``h11`` implementations. To drop the connection,
the socket's ``SO_LINGER`` is set to zero and the transport aborted, so the kernel sends a TCP
RST (the client sees ``ECONNRESET``: ``httpx.ReadError``, or ``WriteError`` if it was still
sending); then the request waits on ``receive()`` for uvicorn's ``http.disconnect``, so
uvicorn knows the peer is gone and neither sends nor logs anything. In process (Litestar's
``TestClient``, ``httpx.ASGITransport``), or behind a server whose ``send`` does not lead to a
transport (uvicorn with ``--log-level trace`` wraps it), there is no connection to drop: the app
sends nothing and raises ``httpx.ReadError`` out of the ASGI call, which in-process transports
re-raise to the client (a real server would answer 500 instead).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import struct
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Annotated, Any, Literal, Protocol, TypeAlias, cast, get_args

import httpx
import msgspec
from litestar.types import ASGIApp, HTTPReceiveMessage, Receive, Scope, Send
from msgspec import UNSET, Meta, UnsetType

from broker.emulator.errors import (
    EmulatorError,
    InjectedStatusError,
    InvalidRequestError,
    McpInjectedStatusError,
)

FaultRoute: TypeAlias = Literal["tokens", "mcp", "connections"]
FaultMode: TypeAlias = Literal["none", "latency", "status", "reset", "hang"]
ROUTES: tuple[FaultRoute, ...] = get_args(FaultRoute)

FAULT_ROUTE_OPT = "emulator_fault_route"
"""The route handler ``opt`` key naming the family a handler belongs to."""
DEFAULT_STATUS = 503
MAX_SECONDS = 3600.0
"""Longest ``latency``: beyond an hour it is surely a unit mistake (milliseconds)."""
DISCONNECT_TIMEOUT_SECONDS = 5.0
"""How long a dropped request waits for the server to report the disconnect."""

HoldOutcome: TypeAlias = Literal["released", "shutdown", "elapsed", "disconnected"]


class FaultSpec(msgspec.Struct, forbid_unknown_fields=True, frozen=True, omit_defaults=True):
    """A ``POST /_emulator/faults`` body, and an active fault as listed (``count``: what is left).

    Omitted fields stay ``UNSET`` (an explicit null is a 400); ``status`` is filled in when set.
    """

    route: FaultRoute
    mode: FaultMode
    status: Annotated[int, Meta(ge=400, le=599)] | UnsetType = UNSET
    seconds: Annotated[float, Meta(gt=0, le=MAX_SECONDS)] | UnsetType = UNSET
    retry_after: Annotated[int, Meta(ge=0)] | UnsetType = msgspec.field(
        default=UNSET, name="retryAfter"
    )
    count: Annotated[int, Meta(ge=1)] | UnsetType = UNSET


class FaultsView(msgspec.Struct, frozen=True, omit_defaults=True):
    """The active faults (one per family at most), how many requests each family holds now,
    and, after a change, how many held requests it released."""

    faults: list[FaultSpec]
    held: dict[str, int]
    released: int | UnsetType = UNSET


_FIELDS_BY_MODE: dict[str, frozenset[str]] = {
    "none": frozenset(),
    "latency": frozenset({"seconds", "count"}),
    "status": frozenset({"status", "retryAfter", "count"}),
    "reset": frozenset({"count"}),
    "hang": frozenset({"count"}),
}
"""The optional fields each mode uses; giving another is a mistake worth a 400."""


def decode_fault_request(body: bytes) -> FaultSpec:
    """A fault to set, with ``status`` filled in for ``status`` mode; ``InvalidRequestError``
    (400) for anything else: unknown fields, bad values, fields the mode does not use."""
    try:
        spec = msgspec.json.decode(body, type=FaultSpec)
    except msgspec.DecodeError as error:
        raise InvalidRequestError(f"Invalid fault: {error}") from None
    given = {
        name
        for name, value in (
            ("status", spec.status),
            ("seconds", spec.seconds),
            ("retryAfter", spec.retry_after),
            ("count", spec.count),
        )
        if value is not UNSET
    }
    unused = sorted(given - _FIELDS_BY_MODE[spec.mode])
    if unused:
        raise InvalidRequestError(
            f"Invalid fault: `{unused[0]}` does not apply to mode `{spec.mode}`"
        )
    if spec.mode == "latency" and spec.seconds is UNSET:
        raise InvalidRequestError("Invalid fault: mode `latency` needs `seconds`")
    if spec.mode == "status" and spec.status is UNSET:
        return msgspec.structs.replace(spec, status=DEFAULT_STATUS)
    return spec


def fault_route_opt(route: FaultRoute) -> dict[str, Any]:
    """The ``opt`` that puts a route handler in a fault family."""
    return {FAULT_ROUTE_OPT: route}


@dataclass(eq=False, slots=True)
class _Gate:
    """Where the requests a family's fault holds wait; opened once, then replaced."""

    event: asyncio.Event = field(default_factory=asyncio.Event)
    waiting: int = 0
    outcome: HoldOutcome = "released"

    def open(self, outcome: HoldOutcome) -> int:
        released, self.waiting, self.outcome = self.waiting, 0, outcome
        self.event.set()
        return released

    def leave(self) -> None:
        """A request stops waiting on its own (delay over, client gone, cancelled)."""
        if not self.event.is_set():
            self.waiting -= 1


@dataclass(eq=False, slots=True)
class _Active:
    spec: FaultSpec
    remaining: int | None


@dataclass(frozen=True, slots=True)
class AppliedFault:
    """One request's fault, taken by ``Faults.take``; ``gate`` for ``latency`` and ``hang``."""

    route: FaultRoute
    spec: FaultSpec
    gate: _Gate | None

    def error(self) -> EmulatorError:
        """The error a ``status`` fault answers with, in the family's shape."""
        status = self.spec.status if isinstance(self.spec.status, int) else DEFAULT_STATUS
        retry_after = (
            None if isinstance(self.spec.retry_after, UnsetType) else self.spec.retry_after
        )
        phrase = _phrase(status)
        if self.route == "mcp":
            return McpInjectedStatusError(status, phrase, retry_after=retry_after)
        return InjectedStatusError(status, _error_code(phrase), phrase, retry_after=retry_after)


class Faults:
    """One app's faults, the requests they hold, and the per-family request counters.

    Not thread-safe: used from the event loop that serves the app only.
    """

    def __init__(self) -> None:
        self._active: dict[FaultRoute, _Active] = {}
        self._gates: dict[FaultRoute, _Gate] = {}
        self.received: dict[FaultRoute, int] = dict.fromkeys(ROUTES, 0)
        self.applied = 0

    def configure(self, spec: FaultSpec) -> int:
        """Set (or with ``none`` clear) the family's fault; returns how many held requests the
        previous one released."""
        released = self._release(spec.route, "released")
        if spec.mode == "none":
            self._active.pop(spec.route, None)
        else:
            count = None if isinstance(spec.count, UnsetType) else spec.count
            self._active[spec.route] = _Active(spec, count)
        return released

    def reset(self) -> int:
        """Clear every fault and zero the counters; held requests are released, then served."""
        released = sum(self._release(route, "released") for route in ROUTES)
        self._active.clear()
        self.received = dict.fromkeys(ROUTES, 0)
        self.applied = 0
        return released

    def close(self) -> None:
        """The server is stopping: held requests are dropped, so nothing waits for them."""
        for route in ROUTES:
            self._release(route, "shutdown")

    def view(self, *, released: int | None = None) -> FaultsView:
        faults = [
            msgspec.structs.replace(
                active.spec, count=UNSET if active.remaining is None else active.remaining
            )
            for route in ROUTES
            if (active := self._active.get(route)) is not None
        ]
        held: dict[str, int] = {
            route: gate.waiting if (gate := self._gates.get(route)) else 0 for route in ROUTES
        }
        return FaultsView(
            faults=faults, held=held, released=UNSET if released is None else released
        )

    def take(self, route: FaultRoute) -> AppliedFault | None:
        """Count a request of the family and take the fault it gets, if any.

        Synchronous on purpose: a held request is registered before anything else can run,
        so a fault change made after it arrived always sees (and releases) it.
        """
        self.received[route] += 1
        active = self._active.get(route)
        if active is None:
            return None
        if active.remaining is not None:
            active.remaining -= 1
            if active.remaining == 0:
                del self._active[route]
        self.applied += 1
        gate = None
        if active.spec.mode in ("latency", "hang"):
            gate = self._gates.get(route)
            if gate is None:
                gate = self._gates[route] = _Gate()
            gate.waiting += 1
        return AppliedFault(route, active.spec, gate)

    def _release(self, route: FaultRoute, outcome: HoldOutcome) -> int:
        gate = self._gates.pop(route, None)
        return 0 if gate is None else gate.open(outcome)


class FaultMiddleware:
    """Applies its app's faults to the route handlers that declare a family (Litestar
    middleware: ``DefineMiddleware(FaultMiddleware, faults=...)``)."""

    def __init__(self, app: ASGIApp, faults: Faults) -> None:
        self.app = app
        self._faults = faults

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = _family(scope)
        applied = None if route is None else self._faults.take(route)
        if applied is None:
            await self.app(scope, receive, send)
            return
        mode = applied.spec.mode
        if mode == "status":
            raise applied.error()
        if mode == "reset":
            await _drop(receive)
            return
        assert applied.gate is not None
        try:
            if mode == "latency":
                assert not isinstance(applied.spec.seconds, UnsetType)
                outcome = await _delay(applied.gate, applied.spec.seconds)
            else:
                outcome, receive = await _hang(applied.gate, receive)
        finally:
            applied.gate.leave()
        if outcome == "shutdown":
            await _drop(receive)
        elif outcome != "disconnected":
            await self.app(scope, receive, send)


def _family(scope: Scope) -> FaultRoute | None:
    handler = scope.get("route_handler")
    route = None if handler is None else handler.opt.get(FAULT_ROUTE_OPT)
    return cast("FaultRoute", route) if route in ROUTES else None


async def _delay(gate: _Gate, seconds: float) -> HoldOutcome:
    try:
        async with asyncio.timeout(seconds):
            await gate.event.wait()
    except TimeoutError:
        return "elapsed"
    return gate.outcome


async def _hang(gate: _Gate, receive: Receive) -> tuple[HoldOutcome, Receive]:
    """Wait until the gate opens or the client disconnects. The request's body, read meanwhile
    to see the disconnect, is handed on through the returned ``receive``."""
    buffered: list[HTTPReceiveMessage] = []

    async def watch() -> None:
        while (message := await receive())["type"] != "http.disconnect":
            buffered.append(cast("HTTPReceiveMessage", message))

    watcher = asyncio.create_task(watch())
    opened = asyncio.create_task(gate.event.wait())
    try:
        await asyncio.wait((watcher, opened), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        opened.cancel()
        await asyncio.wait((watcher, opened))
    if gate.event.is_set():
        return gate.outcome, _replaying(buffered, receive)
    return "disconnected", receive


def _replaying(buffered: list[HTTPReceiveMessage], receive: Receive) -> Receive:
    async def replay() -> Any:
        return buffered.pop(0) if buffered else await receive()

    return replay


# --- dropping the connection ----------------------------------------------------------------------


class _Transport(Protocol):
    """What is used of an asyncio or uvloop transport."""

    def abort(self) -> None: ...

    def get_extra_info(self, name: str, default: Any = None) -> Any: ...


@dataclass(eq=False, slots=True)
class _Connection:
    transport: _Transport | None
    dropped_in_process: bool = False


_CONNECTION: ContextVar[_Connection | None] = ContextVar("emulator_connection", default=None)


def _transport_of(send: Send) -> _Transport | None:
    """uvicorn's transport behind ``send`` (a bound method of its request cycle), if any."""
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if callable(getattr(transport, "abort", None)) and callable(
        getattr(transport, "get_extra_info", None)
    ):
        return cast("_Transport", transport)
    return None


async def call_with_connection(
    app: Callable[[Scope, Receive, Send], Awaitable[None]],
    scope: Scope,
    receive: Receive,
    send: Send,
) -> None:
    """Serve one HTTP request with ``app``, able to drop its connection (``EmulatorApp``)."""
    connection = _Connection(_transport_of(send))
    token = _CONNECTION.set(connection)
    try:
        await app(scope, receive, send)
    finally:
        _CONNECTION.reset(token)
    if connection.dropped_in_process:
        # No transport to abort: fail the ASGI call itself, as a reset looks to an httpx client.
        raise httpx.ReadError("[Errno 104] Connection reset by peer (injected fault)")


async def _drop(receive: Receive) -> None:
    """Reset the current request's connection; nothing may be sent after this."""
    connection = _CONNECTION.get()
    if connection is None:
        raise RuntimeError("fault injection needs EmulatorApp: no connection to drop")
    if connection.transport is None:
        connection.dropped_in_process = True
        return
    sock = connection.transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            # Linger on, timeout 0: closing sends RST instead of FIN (a reset, not an EOF).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    connection.transport.abort()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(DISCONNECT_TIMEOUT_SECONDS):
            while (await receive())["type"] != "http.disconnect":
                pass


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"


def _error_code(phrase: str) -> str:
    """``Service Unavailable`` -> ``service_unavailable``; unnamed statuses -> ``http_error``."""
    if phrase.startswith("HTTP "):
        return "http_error"
    return re.sub(r"[^a-z0-9]+", "_", phrase.lower()).strip("_")
