"""Connection provisioning: users create, list, read and delete their Smithery connections
through the broker, which writes the metadata the policy dictates, never what the client asks for.

Tokens scoped by ``metadata: {userId: ...}`` are only as safe as the metadata on the connections
(SMITHERY-SEMANTICS.md, "Connections": metadata is set by whoever holds the API key). A rule's
``provision`` block says, per user: the namespace, the enforced metadata, the connection-id
prefix, the allowed targets and a per-user limit. The first rule (in policy order) that applies
to the user and whose block renders for the requested namespace decides; none: 403
``no_matching_rule``.

Every decision is audited (``connection.<action>``) and traced (``broker.provision``), never with
the write-only ``headers``. No HTTP here (``routes/connections.py``); Smithery is reached only
through ``upstream``. The selection and target checks are pure; the clock is not used.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Annotated, Any, Final
from urllib.parse import urlsplit

import msgspec

from broker import rpcmatch
from broker.constraints import applicable_rule, claim_text
from broker.errors import (
    CallerError,
    ConnectionNotFoundError,
    ForbiddenError,
    InvalidRequestError,
    NoMatchingRuleError,
    UpstreamProtocolError,
)
from broker.identity import Principal
from broker.metrics import Metrics
from broker.policy import ID_SEPARATORS, ClaimRef, PolicySet, Rule, Template
from broker.revocation import Revocations
from broker.telemetry import Telemetry, audit, deny
from broker.upstream import ConnectionDocument, ConnectionPage, SmitheryClient

SMITHERY_SERVER_URL: Final = "https://server.smithery.ai/"
"""Where a registry server named in ``servers`` is reached: ``{SMITHERY_SERVER_URL}{name}`` or
``.../{name}/mcp``. OPEN: Smithery's docs show both this host and ``*.run.tools`` deployments;
the broker accepts only this documented form for registry names (use ``mcpUrl`` for others)."""
MAX_URL_CHARS: Final = 2048
MAX_HEADERS: Final = 32
MAX_HEADER_VALUE_CHARS: Final = 4096
MAX_METADATA_KEYS: Final = 32
LIST_PAGE_SIZE: Final = 100
"""Smithery's largest page (``limit`` 1-100), used when counting a user's connections."""
EXTRA_COUNT_PAGES: Final = 10
"""Pages a count against ``maxConnections`` may read beyond the full ones it needs."""
_ID_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._~-")

# A token (RFC 9110 §5.1) and a field value without control characters other than tab (§5.5):
# Smithery sends these to the MCP server, so a CR or LF here would be a header injection there.
# ``(?!\n)``: Python's ``$`` also matches before a final newline; JavaScript's does not.
HeaderName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}$(?!\n)")]
HeaderValue = Annotated[
    str,
    msgspec.Meta(pattern=r"^[^\x00-\x08\x0a-\x1f\x7f]*$(?!\n)", max_length=MAX_HEADER_VALUE_CHARS),
]
MetadataKey = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
MetadataValue = Annotated[str, msgspec.Meta(max_length=256)]


class ConnectionRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The body of ``PUT /v1/connections/{namespace}/{connectionId}``."""

    mcpUrl: Annotated[str, msgspec.Meta(max_length=MAX_URL_CHARS)] | None = None
    """Required to create; on update it must equal the current one (Smithery answers 409)."""
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=255)] | None = None
    metadata: Annotated[dict[MetadataKey, MetadataValue], msgspec.Meta(max_length=32)] | None = None
    """Merged under the enforced metadata; an enforced key with another value is refused."""
    headers: (
        Annotated[dict[HeaderName, HeaderValue], msgspec.Meta(max_length=MAX_HEADERS)] | None
    ) = None
    """Passed to Smithery write-only: never logged, returned or traced."""


# --- errors (403s with their own stable codes) ------------------------------------------------


class MetadataNotAllowedError(ForbiddenError):
    code = "metadata_not_allowed"
    title = "Metadata not allowed"


class TargetNotAllowedError(ForbiddenError):
    code = "target_not_allowed"
    title = "Target not allowed"


class ConnectionLimitReachedError(ForbiddenError):
    code = "connection_limit_reached"
    title = "Connection limit reached"


class ConnectionIdNotAllowedError(ForbiddenError):
    code = "connection_id_not_allowed"
    title = "Connection id not allowed"


class ConnectionNotOwnedError(ForbiddenError):
    code = "connection_not_owned"
    title = "Connection belongs to someone else"


# --- selection (pure) ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Entitlement:
    """One rule's ``provision`` block rendered for one user."""

    rule_id: str
    namespace: str
    metadata: dict[str, str]
    id_prefix: str
    servers: tuple[str, ...]
    mcp_url: tuple[str, ...]
    max_connections: int | None
    client_metadata: tuple[str, ...] = ()
    """Metadata keys the client may set besides the enforced ones (``clientMetadata``)."""

    def owns(self, metadata: Mapping[str, Any] | None) -> bool:
        """Every enforced pair is on the connection (string equality, as Smithery's filter)."""
        held = metadata or {}
        return all(held.get(key) == value for key, value in self.metadata.items())

    def allows_target(self, mcp_url: str) -> bool:
        for server in self.servers:
            base = SMITHERY_SERVER_URL + server
            if mcp_url in (base, base + "/mcp"):
                return True
        return any(rpcmatch.compile_pattern(p).search(mcp_url) for p in self.mcp_url)

    def as_json(self) -> dict[str, Any]:
        return {
            "rule": self.rule_id,
            "namespace": self.namespace,
            "metadata": dict(self.metadata),
            "idPrefix": self.id_prefix,
            "servers": list(self.servers),
            "mcpUrl": list(self.mcp_url),
            "maxConnections": self.max_connections,
            "clientMetadata": list(self.client_metadata),
        }


def check_client_metadata(entitlement: Entitlement, metadata: Mapping[str, str]) -> None:
    """Default deny: a client sets only the keys its rule lists in ``clientMetadata``, plus any
    enforced key at the value the policy gives it (an update that sends back the document).
    Any other key could be one a rule grants access by: tagging a connection with it would put
    the connection in the reach of that rule's users."""
    for key, value in metadata.items():
        enforced = entitlement.metadata.get(key)
        if enforced is not None:
            if value != enforced:
                raise MetadataNotAllowedError(f"Metadata {key!r} is set by the policy.")
        elif key not in entitlement.client_metadata:
            allowed = ", ".join(map(repr, entitlement.client_metadata)) or "none"
            raise MetadataNotAllowedError(
                f"Metadata {key!r} is not one clients may set (the policy's clientMetadata: "
                f"{allowed})."
            )


class ProvisionRenderError(Exception):
    """A claim the block needs is missing or unusable: the block does not apply (fail closed)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def render_entitlement(rule: Rule, claims: Mapping[str, Any]) -> Entitlement:
    """Fill ``rule.provision`` from the claims; raises ``ProvisionRenderError``."""
    provision = rule.provision
    if provision is None:
        raise ProvisionRenderError("the rule has no provision block")
    return Entitlement(
        rule_id=rule.id,
        namespace=_fill(provision.namespace, claims),
        metadata={key: _fill(template, claims) for key, template in provision.metadata},
        id_prefix=_fill_id_prefix(provision.id_prefix, claims),
        servers=provision.servers,
        mcp_url=provision.mcp_url,
        max_connections=provision.max_connections,
        client_metadata=provision.client_metadata,
    )


def select_entitlements(
    policy_set: PolicySet, issuer: str, claims: Mapping[str, Any]
) -> tuple[list[Entitlement], list[tuple[str, str]]]:
    """The provision blocks that apply to this user, and (rule id, reason) for those that do
    not. A block applies only when its rule applies (conditions hold and the grant renders)."""
    applied: list[Entitlement] = []
    skipped: list[tuple[str, str]] = []
    for rule in policy_set.rules:
        if rule.provision is None:
            continue
        if not applicable_rule(rule, issuer, claims):
            skipped.append((rule.id, "the rule does not apply"))
            continue
        try:
            applied.append(render_entitlement(rule, claims))
        except ProvisionRenderError as exc:
            skipped.append((rule.id, exc.reason))
    return applied, skipped


def select_entitlement(
    policy_set: PolicySet, issuer: str, claims: Mapping[str, Any], namespace: str
) -> Entitlement | None:
    """The first applying block for ``namespace`` (policy order), or None (default deny)."""
    applied, _ = select_entitlements(policy_set, issuer, claims)
    return next((e for e in applied if e.namespace == namespace), None)


def _fill(template: Template, claims: Mapping[str, Any]) -> str:
    return "".join(
        part if isinstance(part, str) else _claim(claims, part) for part in template.parts
    )


def _claim(claims: Mapping[str, Any], ref: ClaimRef) -> str:
    try:
        return claim_text(claims, ref)
    # claim_text raises constraints' private render error; any failure means the claim is
    # unusable, and the block then does not apply (fail closed).
    except Exception as exc:  # noqa: BLE001
        raise ProvisionRenderError(str(exc)) from None


def _fill_id_prefix(template: Template, claims: Mapping[str, Any]) -> str:
    """The prefix, refusing claim values that would make two users' prefixes overlap.

    At load every placeholder is followed by a separator (``{claims.sub}-``); a value holding
    that separator (``alice-x``) could produce another user's prefix (``alice-``), so such a
    value makes the block not apply. Values must also be connection-id characters.
    """
    out: list[str] = []
    parts = template.parts
    for index, part in enumerate(parts):
        if isinstance(part, str):
            out.append(part)
            continue
        value = _claim(claims, part)
        after = parts[index + 1]
        separator = after[0] if isinstance(after, str) else ID_SEPARATORS[0]
        if separator in value or not set(value) <= _ID_CHARS:
            raise ProvisionRenderError(f"claim {part.path} cannot form a connection id prefix")
        out.append(value)
    return "".join(out)


_BRACKETED_HOST: Final = re.compile(r"\[[0-9A-Fa-f:.]+\](:[0-9]+)?")
"""An IPv6 literal is the whole host: ``[::ffff:a00:1].example.com`` is read as 10.0.0.1 by some
parsers and as a name by patterns."""


FORBIDDEN_HEADERS: Final = frozenset(
    {
        "host",
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "content-length",
        "expect",
    }
)
"""Headers that say how a message travels, not what it means: whoever sends them to the MCP
server (Smithery) sets these itself, and a user's own could split or redirect its requests."""


def check_headers(headers: Mapping[str, str] | None) -> None:
    """The connection's ``headers``: none that belongs to the transport, and no name twice in
    other letter cases (which one a server takes is its own choice), or 400."""
    if not headers:
        return
    seen: set[str] = set()
    for name in headers:
        lower = name.lower()
        if lower in FORBIDDEN_HEADERS:
            raise InvalidRequestError(f"The header {name!r} may not be set on a connection.")
        if lower in seen:
            raise InvalidRequestError(f"The header {name!r} is given twice.")
        seen.add(lower)


def check_mcp_url(url: str) -> str:
    r"""An absolute http(s) URL without credentials, in a form whose host the policy's patterns,
    Python's parser and Smithery's (WHATWG) all read alike, or 400.

    The policy's ``mcpUrl`` patterns are matched against the string, and Smithery (a WHATWG
    parser) dials the host it parses. Where the two can part, a pattern such as
    ``^https://[^/]+\.example\.com/mcp$`` would let ``https://10.0.0.1?.example.com/mcp`` or
    ``https://evil.test\.example.com/mcp`` through to another host. So the host must be
    followed by ``/`` or nothing (not ``?``), an IPv6 literal must be the whole host, and
    backslashes, fragments, percent signs in the authority and anything but printable ASCII
    are refused (a name in another script is written in its ``xn--`` form)."""
    try:
        parts = urlsplit(url)
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        port_ok = False
        parts = None
    if (
        parts is None
        or not port_ok
        or parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.username is not None
        or any(c.isspace() or ord(c) < 0x20 for c in url)
    ):
        raise InvalidRequestError("mcpUrl must be an absolute http(s) URL without credentials.")
    if (
        not (url.isascii() and url.isprintable())
        or "\\" in url
        or "#" in url
        or "%" in parts.netloc
        or ("[" in parts.netloc and _BRACKETED_HOST.fullmatch(parts.netloc) is None)
        or (parts.query and not parts.path)
    ):
        raise InvalidRequestError(
            "mcpUrl must be printable ASCII (xn-- for other scripts), with no backslash, "
            "fragment or percent sign in the host, and a path before any query."
        )
    return url


# --- the use case -------------------------------------------------------------------------------


class KeyedLocks:
    """One ``asyncio.Lock`` per key while anyone holds or waits for it, then forgotten.

    An entry is dropped only when its last user leaves. Dropped when merely unlocked, it went
    while a waiter was about to take it over (a released lock with a waiter reads as unlocked
    until the waiter runs), and a third caller got a fresh lock and ran beside the waiter."""

    __slots__ = ("_entries",)

    def __init__(self) -> None:
        self._entries: dict[Any, tuple[asyncio.Lock, list[int]]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    @contextlib.asynccontextmanager
    async def hold(self, key: Any) -> AsyncIterator[None]:
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = (asyncio.Lock(), [0])
        lock, users = entry
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._entries[key]


@dataclass(slots=True)
class Provisioning:
    policy: Callable[[], PolicySet]
    upstream: SmitheryClient
    telemetry: Telemetry = field(default_factory=Telemetry)
    metrics: Metrics = field(default_factory=Metrics)
    exclusive: Callable[..., AbstractAsyncContextManager[None]] = field(
        default=lambda *_: contextlib.nullcontext()
    )
    """``Cluster.exclusive``: a lock all replicas respect, taken around a create that counts
    against ``maxConnections`` (with the memory backend, nothing)."""
    changed: Callable[[str, str], None] = lambda namespace, connection_id: None
    """Told of each connection written or deleted (``Admission.forget_connection``)."""
    revocations: Revocations | None = None
    """A revoked subject, or one whose provisioning rule is revoked, manages no connection."""
    _locks: KeyedLocks = field(default_factory=KeyedLocks)

    async def put(
        self,
        principal: Principal,
        namespace: str,
        connection_id: str,
        request: ConnectionRequest,
    ) -> tuple[ConnectionDocument, bool]:
        """Create or update one of the caller's connections; returns it and whether it is new."""
        with self._decision("put", principal, namespace, connection_id) as decision:
            entitlement = decision.entitle(self.policy())
            if not connection_id.startswith(entitlement.id_prefix) or connection_id == (
                entitlement.id_prefix
            ):
                raise ConnectionIdNotAllowedError(
                    f"Your connection ids must start with {entitlement.id_prefix!r}."
                )
            client_metadata = request.metadata or {}
            check_client_metadata(entitlement, client_metadata)
            check_headers(request.headers)
            if request.mcpUrl is not None:
                check_mcp_url(request.mcpUrl)
                if not entitlement.allows_target(request.mcpUrl):
                    raise TargetNotAllowedError("The policy does not allow this mcpUrl.")
            # One create at a time per user and namespace, so the limit check and the create
            # cannot interleave: in this process, and across replicas when they share Redis
            # and a limit applies.
            lock_key = (principal.issuer, principal.subject, namespace)
            across = (
                self.exclusive("provision", *lock_key)
                if entitlement.max_connections is not None
                else contextlib.nullcontext()
            )
            try:
                async with self._locks.hold(lock_key), across:
                    document, created = await self._put_locked(
                        entitlement, namespace, connection_id, request, client_metadata
                    )
            finally:
                # Also when the write failed: Smithery may have applied it before a timeout.
                self.changed(namespace, connection_id)
            decision.action = "create" if created else "update"
            return document, created

    async def _put_locked(
        self,
        entitlement: Entitlement,
        namespace: str,
        connection_id: str,
        request: ConnectionRequest,
        client_metadata: Mapping[str, str],
    ) -> tuple[ConnectionDocument, bool]:
        existing = await self._existing(namespace, connection_id)
        if existing is not None and not entitlement.owns(existing.metadata):
            # Never an overwrite: someone else's connection keeps its metadata and target.
            raise ConnectionNotOwnedError("This connection id is taken by another owner.")
        if existing is None:
            if request.mcpUrl is None:
                raise InvalidRequestError("mcpUrl is required to create a connection.")
            limit = entitlement.max_connections
            if limit is not None and await self._count(entitlement, limit) >= limit:
                raise ConnectionLimitReachedError(f"You may have at most {limit} connections.")
        # The enforced keys are written last, so they always win.
        metadata = {**((existing.metadata or {}) if existing else {}), **client_metadata}
        metadata.update(entitlement.metadata)
        body: dict[str, Any] = {"metadata": metadata}
        if request.mcpUrl is not None:
            body["mcpUrl"] = request.mcpUrl
        if request.name is not None:
            body["name"] = request.name
        if request.headers is not None:
            body["headers"] = request.headers
        return await self.upstream.put_connection(namespace, connection_id, body)

    async def list(
        self, principal: Principal, namespace: str, *, cursor: str | None, limit: int | None
    ) -> ConnectionPage:
        """One page of the caller's connections (Smithery filters by the enforced metadata)."""
        with self._decision("list", principal, namespace, None) as decision:
            entitlement = decision.entitle(self.policy())
            page = await self.upstream.list_connections(
                namespace, entitlement.metadata, cursor=cursor, limit=limit
            )
            # Defence in depth: never relay a connection the filter should have excluded.
            mine = [c for c in page.connections if entitlement.owns(c.metadata)]
            return ConnectionPage(connections=mine, nextCursor=page.nextCursor)

    async def get(
        self, principal: Principal, namespace: str, connection_id: str
    ) -> ConnectionDocument:
        with self._decision("read", principal, namespace, connection_id) as decision:
            return await self._owned(decision.entitle(self.policy()), namespace, connection_id)

    async def delete(self, principal: Principal, namespace: str, connection_id: str) -> None:
        with self._decision("delete", principal, namespace, connection_id) as decision:
            entitlement = decision.entitle(self.policy())
            await self._owned(entitlement, namespace, connection_id)
            try:
                await self.upstream.delete_connection(namespace, connection_id)
            finally:  # also when it failed: Smithery may have deleted before a timeout
                self.changed(namespace, connection_id)

    async def _owned(
        self, entitlement: Entitlement, namespace: str, connection_id: str
    ) -> ConnectionDocument:
        """The connection when the caller owns it; otherwise 404, exactly as if it did not exist
        (another user's connection id is not revealed)."""
        not_found = ConnectionNotFoundError(f"No connection {connection_id!r} in {namespace!r}.")
        if not connection_id.startswith(entitlement.id_prefix):
            raise not_found
        document = await self._existing(namespace, connection_id)
        if document is None or not entitlement.owns(document.metadata):
            raise not_found
        return document

    async def _existing(self, namespace: str, connection_id: str) -> ConnectionDocument | None:
        try:
            return await self.upstream.fetch_connection_document(namespace, connection_id)
        except ConnectionNotFoundError:
            return None

    async def _count(self, entitlement: Entitlement, stop_at: int) -> int:
        """The caller's connections in the namespace, counted up to ``stop_at`` pages allow.

        Smithery filters the list by the enforced metadata, so ``stop_at`` connections take
        ``stop_at / LIST_PAGE_SIZE`` pages. Many more pages (short ones, or a filter not applied)
        or a cursor seen before (a loop) would hold the user's create lock without end: a bad
        answer (502), and no create."""
        count, cursor = 0, None
        seen: set[str] = set()
        for _ in range(-(-stop_at // LIST_PAGE_SIZE) + EXTRA_COUNT_PAGES):
            page = await self.upstream.list_connections(
                entitlement.namespace, entitlement.metadata, cursor=cursor, limit=LIST_PAGE_SIZE
            )
            count += sum(1 for c in page.connections if entitlement.owns(c.metadata))
            if count >= stop_at or page.nextCursor is None:
                return count
            if page.nextCursor in seen:
                break
            seen.add(page.nextCursor)
            cursor = page.nextCursor
        raise UpstreamProtocolError(
            "Smithery's list of connections did not end; the connection limit cannot be checked."
        )

    def _decision(
        self, action: str, principal: Principal, namespace: str, connection_id: str | None
    ) -> _Decision:
        return _Decision(self, action, principal, namespace, connection_id)


@dataclass(slots=True)
class _Decision:
    """One audited, traced provisioning decision: ``with`` it around the work.

    Leaving the block normally is an allow; a caller error (403, 404, 400...) is a deny with its
    code as the reason; upstream failures are recorded as ``error``. Never sees ``headers``.
    """

    owner: Provisioning
    action: str
    principal: Principal
    namespace: str
    connection_id: str | None
    rule: str | None = None
    _span: Any = None
    _context: Any = None

    def entitle(self, policy_set: PolicySet) -> Entitlement:
        entitlement = select_entitlement(
            policy_set, self.principal.issuer, self.principal.claims, self.namespace
        )
        if entitlement is None:
            raise NoMatchingRuleError("No policy rule lets you manage connections here.")
        self.rule = entitlement.rule_id
        revocations = self.owner.revocations
        if revocations is not None:  # before anything is done with the API key on their behalf
            revocations.check(self.principal, (entitlement.rule_id,), record=False)
        return entitlement

    def __enter__(self) -> _Decision:
        self._context = self.owner.telemetry.span("broker.provision")
        self._span = self._context.__enter__()
        return self

    def __exit__(self, kind: Any, exc: Any, traceback: Any) -> None:
        if exc is None:
            result, reason = "allow", ""
        elif isinstance(exc, CallerError):
            result, reason = "deny", exc.code
        else:
            result, reason = "error", getattr(exc, "code", type(exc).__name__)
        span = self._span
        if span is not None:
            span.set_attribute("broker.provision.action", self.action)
            span.set_attribute("broker.namespace", self.namespace)
            if self.rule is not None:
                span.set_attribute("broker.rules.matched", [self.rule])
            if result == "allow":
                span.set_attribute("broker.decision", "allow")
            elif result == "deny":
                deny(span, reason)
        self.owner.metrics.inc(
            "broker_provision_decisions_total",
            (("action", self.action), ("result", result), ("reason", reason)),
        )
        audit(
            f"connection.{self.action}",
            subject=self.owner.telemetry.enduser(self.principal.subject),
            issuer=self.principal.issuer,
            namespace=self.namespace,
            connection=self.owner.telemetry.connection(self.connection_id),
            rule=self.rule,
            result=result,
            reason=reason or None,
        )
        self._context.__exit__(kind, exc, traceback)


def render_provisioning(
    policy_set: PolicySet, issuer: str, claims: Mapping[str, Any]
) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """For explanations: the rendered provision blocks as JSON, and why others do not apply."""
    applied, skipped = select_entitlements(policy_set, issuer, claims)
    return [e.as_json() for e in applied], skipped
