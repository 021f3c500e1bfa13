"""Smithery connections in memory: the ``Connection`` shape, the upsert body, and the store.

Shapes follow the OpenAPI (``Connection``, ``UpsertConnectionRequest``,
``ConnectionsListResponse``). ``headers`` are kept but never returned (write-only, like
Smithery). The store knows nothing about bearers or scopes: routes decide who may see what.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

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
SETUP_URL: str = "https://smithery.ai/connect/setup"
"""Base of the made-up hosted setup page named in ``auth_required`` statuses."""


class ConnectionStatus(msgspec.Struct, frozen=True, omit_defaults=True):
    """OpenAPI ``ConnectionStatus``, the two branches the emulator produces: ``connected``, and
    ``auth_required`` with the hosted ``setupUrl``. The emulator never dials out: the state is
    decided from the target's host (``status_for``)."""

    state: Literal["connected", "auth_required"]
    setup_url: str | UnsetType = msgspec.field(default=UNSET, name="setupUrl")


def status_for(
    namespace: str, connection_id: str, mcp_url: str | None, oauth_hosts: tuple[str, ...]
) -> ConnectionStatus:
    """``auth_required`` for OAuth-style targets (a host containing one of ``oauth_hosts``),
    ``connected`` otherwise (plain URLs and uplink connections)."""
    host = (urlsplit(mcp_url).hostname or "") if mcp_url else ""
    if host and any(marker in host for marker in oauth_hosts):
        return ConnectionStatus(
            state="auth_required", setup_url=f"{SETUP_URL}/{namespace}/{connection_id}"
        )
    return ConnectionStatus(state="connected")


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
    """The body of ``PUT /connect/{namespace}/{connectionId}`` (OpenAPI)."""

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
    """Validate a PUT body; raises ``ValidationFailedError`` with the JSON path."""
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
    ) -> StoredConnection:
        """What an upsert would store, without storing it, so routes can check scope first.

        Per the OpenAPI: ``mcpUrl`` is required to create an http connection; on update an
        omitted field keeps its value, and a different ``mcpUrl`` is a 409.
        """
        existing = self.get(namespace, connection_id)
        if existing is None:
            return StoredConnection(
                namespace=namespace,
                connection=_new_connection(
                    namespace, connection_id, request, created_at, oauth_hosts
                ),
                headers={} if isinstance(request.headers, UnsetType) else dict(request.headers),
            )
        return StoredConnection(
            namespace=namespace,
            connection=_updated_connection(existing.connection, request),
            headers=(
                existing.headers
                if isinstance(request.headers, UnsetType)
                else dict(request.headers)
            ),
        )

    def save(self, item: StoredConnection) -> bool:
        """Store a planned connection; returns whether it was created (not replaced)."""
        key = (item.namespace, item.connection.connection_id)
        created = key not in self._items
        self._items[key] = item
        return created


def _new_connection(
    namespace: str,
    connection_id: str,
    request: UpsertConnectionRequest,
    created_at: str,
    oauth_hosts: tuple[str, ...],
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
        status=status_for(namespace, connection_id, mcp_url, oauth_hosts),
        mock=request.mock,
    )


def _updated_connection(current: Connection, request: UpsertConnectionRequest) -> Connection:
    transport = current.transport if isinstance(request.transport, UnsetType) else request.transport
    mcp_url = current.mcp_url
    if not isinstance(request.mcp_url, UnsetType):
        if current.mcp_url is not None and request.mcp_url != current.mcp_url:
            raise ConflictError("mcpUrl does not match the existing connection's URL")
        mcp_url = request.mcp_url
    if transport == "uplink":
        mcp_url = None
    _check_transport(transport, mcp_url, request)
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
