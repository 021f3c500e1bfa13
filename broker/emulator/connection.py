"""Smithery connections in memory: the ``Connection`` shape, the create/upsert body, the store.

Shapes follow the OpenAPI (``Connection``, ``CreateConnectionRequest``,
``UpsertConnectionRequest``, ``ConnectionsListResponse``). ``headers`` are kept but never returned
(write-only, like Smithery). The store knows nothing about bearers or scopes: routes decide who
may see what.

A connection's target is where its ``headers`` go: its ``mcpUrl`` and its transport. An update
never moves it (``plan_upsert``), so the stored secret headers cannot be sent to a new server.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, urlsplit

import msgspec
from msgspec import UNSET, Meta, UnsetType

from broker.emulator.errors import ConflictError, ValidationFailedError

DEFAULT_LIST_LIMIT = 100
MAX_LIST_LIMIT = 100

Transport = Literal["http", "uplink"]
ConnectionName = Annotated[str, Meta(min_length=1, max_length=255)]


class MockConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, omit_defaults=True):
    """OpenAPI ``MockConfig``: accepted and echoed; the emulator simulates nothing."""

    enabled: bool
    scenario: str | UnsetType = UNSET


DEFAULT_OAUTH_HOSTS: tuple[str, ...] = ("oauth",)
"""Targets whose host contains one of these need OAuth first (``auth_required``)."""
DEFAULT_INPUT_HOSTS: tuple[str, ...] = ("input",)
"""Targets whose host contains one of these need the ``INPUT_PROFILE`` inputs first
(``input_required``)."""
SETUP_URL: str = "https://smithery.ai/connect/setup"
"""Base of the made-up hosted setup page named in ``auth_required``/``input_required``
statuses."""


class HttpInputField(msgspec.Struct, frozen=True, omit_defaults=True):
    """OpenAPI ``HttpInputField``: one input a server asks for."""

    label: str
    description: str | UnsetType = UNSET
    required: bool | UnsetType = UNSET


class CredentialProfileHttp(msgspec.Struct, frozen=True, omit_defaults=True):
    """OpenAPI ``CredentialProfileHttp``: the headers and query parameters a server asks for
    (both optional there: an empty map is left out)."""

    headers: dict[str, HttpInputField] = msgspec.field(default_factory=dict)
    query: dict[str, HttpInputField] = msgspec.field(default_factory=dict)


class MissingInputs(msgspec.Struct, frozen=True):
    """The ``missing`` member of ``input_required``: the required inputs not given yet."""

    headers: list[str]
    query: list[str]


INPUT_PROFILE = CredentialProfileHttp(
    headers={"X-API-Key": HttpInputField(label="API key", required=True)},
    query={"workspace": HttpInputField(label="Workspace", required=True)},
)
"""What an ``input_required`` target asks for (made up, as Smithery reads it from the server's
registry entry): a header, given in the connection's ``headers``, and a query parameter, given
in its ``mcpUrl``. Both can be added by a PUT (the 409 rule's ``input_required`` exception)."""


class ConnectionStatus(msgspec.Struct, frozen=True, omit_defaults=True):
    """OpenAPI ``ConnectionStatus``, the three branches the emulator produces: ``connected``;
    ``auth_required`` with the hosted ``setupUrl``; ``input_required`` with ``setupUrl``,
    ``http`` (what the server asks for) and ``missing``. The emulator never dials out: the state
    is decided from the target's host and the inputs the connection carries (``status_for``)."""

    state: Literal["connected", "auth_required", "input_required"]
    setup_url: str | UnsetType = msgspec.field(default=UNSET, name="setupUrl")
    http: CredentialProfileHttp | UnsetType = UNSET
    missing: MissingInputs | UnsetType = UNSET


def status_for(
    namespace: str,
    connection_id: str,
    mcp_url: str | None,
    headers: dict[str, str],
    *,
    oauth_hosts: tuple[str, ...],
    input_hosts: tuple[str, ...],
) -> ConnectionStatus:
    """``auth_required`` for OAuth-style targets (a host containing one of ``oauth_hosts``);
    ``input_required`` for targets whose host contains one of ``input_hosts`` while the
    ``INPUT_PROFILE`` header is not among ``headers`` or its query parameter not in ``mcp_url``;
    ``connected`` otherwise (plain URLs and uplink connections). The OAuth markers are tried
    first."""
    host = (urlsplit(mcp_url).hostname or "") if mcp_url else ""
    setup_url = f"{SETUP_URL}/{namespace}/{connection_id}"
    if host and any(marker in host for marker in oauth_hosts):
        return ConnectionStatus(state="auth_required", setup_url=setup_url)
    if mcp_url and host and any(marker in host for marker in input_hosts):
        missing = _missing_inputs(mcp_url, headers)
        if missing.headers or missing.query:
            return ConnectionStatus(
                state="input_required", setup_url=setup_url, http=INPUT_PROFILE, missing=missing
            )
    return ConnectionStatus(state="connected")


def _missing_inputs(mcp_url: str, headers: dict[str, str]) -> MissingInputs:
    """The required ``INPUT_PROFILE`` inputs absent from the headers (names compare without
    case, as HTTP's) and from the URL's query."""
    given_headers = {name.lower() for name in headers}
    given_query = {name for name, _ in parse_qsl(urlsplit(mcp_url).query, keep_blank_values=True)}
    return MissingInputs(
        headers=[
            name
            for name, spec in INPUT_PROFILE.headers.items()
            if spec.required is True and name.lower() not in given_headers
        ],
        query=[
            name
            for name, spec in INPUT_PROFILE.query.items()
            if spec.required is True and name not in given_query
        ],
    )


class Connection(msgspec.Struct, frozen=True, omit_defaults=True):
    """OpenAPI ``Connection``. ``mcpUrl`` and ``metadata`` are required but nullable."""

    connection_id: str = msgspec.field(name="connectionId")
    name: str
    mcp_url: str | None = msgspec.field(name="mcpUrl")
    metadata: dict[str, Any] | None
    transport: Transport
    created_at: str | UnsetType = msgspec.field(default=UNSET, name="createdAt")
    status: ConnectionStatus | UnsetType = UNSET
    mock: MockConfig | UnsetType = UNSET


class UpsertConnectionRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The body of ``PUT /connect/{namespace}/{connectionId}`` (OpenAPI
    ``UpsertConnectionRequest``), and of ``POST /connect/{namespace}``: the OpenAPI's
    ``CreateConnectionRequest`` has the very same fields and constraints."""

    transport: Transport | UnsetType = UNSET
    mcp_url: str | UnsetType = msgspec.field(default=UNSET, name="mcpUrl")
    name: ConnectionName | UnsetType = UNSET
    metadata: dict[str, Any] | UnsetType = UNSET
    headers: dict[str, str] | UnsetType = UNSET
    mock: MockConfig | UnsetType = UNSET


class ConnectionsListResponse(msgspec.Struct, frozen=True):
    """OpenAPI ``ConnectionsListResponse``; ``nextCursor`` is null on the last page."""

    connections: list[Connection]
    next_cursor: str | None = msgspec.field(name="nextCursor")


@dataclass(slots=True)
class StoredConnection:
    """A connection with what is never returned: its namespace and its upstream headers."""

    namespace: str
    connection: Connection
    headers: dict[str, str] = field(default_factory=dict)


def decode_upsert_request(body: bytes) -> UpsertConnectionRequest:
    """Validate a PUT or POST body; raises ``ValidationFailedError`` with the JSON path."""
    try:
        request = msgspec.json.decode(body, type=UpsertConnectionRequest)
    except msgspec.ValidationError as error:
        message = str(error)
        raise ValidationFailedError(
            message if " - at `" in message else f"{message} - at `$`"
        ) from None
    except msgspec.DecodeError as error:
        raise ValidationFailedError(f"Malformed JSON body: {error}") from None
    if not isinstance(request.mcp_url, UnsetType):
        url = request.mcp_url
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError for a port out of range
        except ValueError:
            parts = None
        # Whitespace or controls: JavaScript's new URL() refuses them (format: uri).
        if (
            parts is None
            or parts.scheme not in ("http", "https")
            or not parts.netloc
            or any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url)
        ):
            raise ValidationFailedError("Expected an http(s) URL - at `$.mcpUrl`")
    return request


def encode_cursor(connection_id: str) -> str:
    """An opaque cursor: the last connection id of a page (pages are ordered by id)."""
    return base64.urlsafe_b64encode(connection_id.encode()).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: str) -> str:
    padded = cursor + "=" * (-len(cursor) % 4)
    try:
        return base64.b64decode(padded.encode("ascii"), altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeError, ValueError):
        raise ValidationFailedError("Invalid cursor - at `cursor`") from None


class ConnectionStore:
    """All connections of all namespaces, keyed by (namespace, connectionId)."""

    def __init__(self) -> None:
        self._items: dict[tuple[str, str], StoredConnection] = {}

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        self._items.clear()

    def get(self, namespace: str, connection_id: str) -> StoredConnection | None:
        return self._items.get((namespace, connection_id))

    def delete(self, namespace: str, connection_id: str) -> bool:
        return self._items.pop((namespace, connection_id), None) is not None

    def in_namespace(self, namespace: str) -> list[StoredConnection]:
        """The namespace's connections ordered by connection id (the pagination order)."""
        return sorted(
            (item for (ns, _), item in self._items.items() if ns == namespace),
            key=lambda item: item.connection.connection_id,
        )

    def plan_upsert(
        self,
        namespace: str,
        connection_id: str,
        request: UpsertConnectionRequest,
        *,
        created_at: str,
        oauth_hosts: tuple[str, ...] = DEFAULT_OAUTH_HOSTS,
        input_hosts: tuple[str, ...] = DEFAULT_INPUT_HOSTS,
    ) -> StoredConnection:
        """What an upsert would store, without storing it, so routes can check scope first.

        Per the OpenAPI: ``mcpUrl`` is required to create an http connection; on update an
        omitted field keeps its value, and a different target is a 409 (``_check_target``).
        ``status`` is computed afresh from what would be stored.
        """
        existing = self.get(namespace, connection_id)
        if existing is None:
            connection = _new_connection(connection_id, request, created_at)
            headers = {} if isinstance(request.headers, UnsetType) else dict(request.headers)
        else:
            connection = _updated_connection(existing.connection, request)
            headers = (
                existing.headers
                if isinstance(request.headers, UnsetType)
                else dict(request.headers)
            )
        status = status_for(
            namespace,
            connection_id,
            connection.mcp_url,
            headers,
            oauth_hosts=oauth_hosts,
            input_hosts=input_hosts,
        )
        return StoredConnection(
            namespace=namespace,
            connection=msgspec.structs.replace(connection, status=status),
            headers=headers,
        )

    def new_id(self, namespace: str) -> str:
        """A connection id not yet taken in the namespace, for ``POST /connect/{namespace}``.

        OPEN: Smithery's generated ids look like ``clever-dolphin-a9X3`` (OpenAPI example); the
        emulator's are ``conn-`` and 12 random URL-safe characters, which is all a client may
        rely on: an opaque string that is safe in a path segment.
        """
        while True:
            connection_id = f"conn-{secrets.token_urlsafe(9)}"
            if (namespace, connection_id) not in self._items:
                return connection_id

    def save(self, item: StoredConnection) -> bool:
        """Store a planned connection; returns whether it was created (not replaced)."""
        key = (item.namespace, item.connection.connection_id)
        created = key not in self._items
        self._items[key] = item
        return created


def _new_connection(
    connection_id: str, request: UpsertConnectionRequest, created_at: str
) -> Connection:
    transport: Transport = "http" if isinstance(request.transport, UnsetType) else request.transport
    mcp_url = None if isinstance(request.mcp_url, UnsetType) else request.mcp_url
    _check_transport(transport, mcp_url, request)
    return Connection(
        connection_id=connection_id,
        name=connection_id if isinstance(request.name, UnsetType) else request.name,
        mcp_url=mcp_url,
        metadata=None if isinstance(request.metadata, UnsetType) else request.metadata,
        transport=transport,
        created_at=created_at,
        mock=request.mock,
    )


def _updated_connection(current: Connection, request: UpsertConnectionRequest) -> Connection:
    transport = current.transport if isinstance(request.transport, UnsetType) else request.transport
    mcp_url = current.mcp_url if isinstance(request.mcp_url, UnsetType) else request.mcp_url
    if transport == "uplink":
        mcp_url = None
    _check_transport(transport, mcp_url, request)
    _check_target(current, transport, mcp_url)
    return msgspec.structs.replace(
        current,
        name=current.name if isinstance(request.name, UnsetType) else request.name,
        mcp_url=mcp_url,
        metadata=current.metadata if isinstance(request.metadata, UnsetType) else request.metadata,
        transport=transport,
        # OpenAPI MockConfig: "Only honored on first creation; ignored on updates".
    )


def _check_transport(
    transport: Transport, mcp_url: str | None, request: UpsertConnectionRequest
) -> None:
    if transport == "http" and mcp_url is None:
        raise ValidationFailedError("mcpUrl is required for http connections - at `$.mcpUrl`")
    if transport == "uplink" and not isinstance(request.mcp_url, UnsetType):
        raise ValidationFailedError("mcpUrl must be omitted for uplink connections - at `$.mcpUrl`")


def _check_target(current: Connection, transport: Transport, mcp_url: str | None) -> None:
    """409 unless the update keeps the connection's target: its stored ``headers`` (often the
    server's credentials) go wherever the target points, so the target never moves.

    OpenAPI (PUT): "Returns 409 if a different mcpUrl is provided, except while the connection
    is input_required and the new URL keeps the same host and path." An uplink connection's
    ``mcpUrl`` is null, so giving one (a switch to http) is a different ``mcpUrl``.

    OPEN: the contract does not say whether a switch from http to uplink (which drops the URL)
    is allowed. The emulator refuses it with the same 409: allowed, it would let
    http → uplink → http move the headers to any URL without a single "different mcpUrl".
    For the ``input_required`` exception, "the same host and path" is read strictly: scheme,
    user info, host, port and path stay exactly as they were (not even their case changes);
    only the query (and fragment) may, which is where missing query inputs go.
    """
    if transport != current.transport:
        raise ConflictError(
            f"transport cannot change from {current.transport} to {transport}:"
            " it would change the connection's target"
        )
    if mcp_url == current.mcp_url:
        return
    status = current.status
    awaiting_input = not isinstance(status, UnsetType) and status.state == "input_required"
    if not (
        awaiting_input
        and mcp_url is not None
        and current.mcp_url is not None
        and _without_query(mcp_url) == _without_query(current.mcp_url)
    ):
        raise ConflictError("mcpUrl does not match the existing connection's URL")


def _without_query(url: str) -> tuple[str, str, str]:
    """What must stay for the ``input_required`` exception: scheme, authority and path."""
    parts = urlsplit(url)
    return parts.scheme, parts.netloc, parts.path
