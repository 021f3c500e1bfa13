"""Settings: a frozen tree of msgspec Structs, loaded once from ``BROKER_*`` environment variables.

Each section is a Struct; each field maps mechanically to ``BROKER_<SECTION>_<FIELD>``
(``BROKER_SMITHERY_BASE_URL`` is ``settings.smithery.base_url``). Secret fields accept either the
value (``BROKER_SMITHERY_API_KEY``) or a file path (``BROKER_SMITHERY_API_KEY_FILE``) and are held
in ``Secret``, whose ``repr`` never shows the value.

This module never reads the environment at import time: ``load_settings(environ)`` is called by
``create_app``'s callers (the CLI) and tests build ``Settings(...)`` directly. Problems are
collected and raised together as one ``ConfigError``.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Mapping
from typing import Any, Final, get_args, get_origin, get_type_hints
from urllib.parse import SplitResult, urlsplit

import msgspec
import msgspec.yaml

from broker.errors import ConfigError
from broker.files import FileRefused, read_limited

ENV_PREFIX: Final = "BROKER_"
DEFAULT_SMITHERY_BASE_URL: Final = "https://api.smithery.ai"
DEFAULT_ALGORITHMS: Final = ("RS256", "ES256")
#: Asymmetric JWS algorithms the verifier supports (RFC 7518 §3.1). HMAC algorithms are absent on
#: purpose: a static JWKS of public keys must never be usable as an HMAC secret (key confusion).
SUPPORTED_ALGORITHMS: Final = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
DEFAULT_SECRET_MAX_BYTES: Final = 64 * 1024
MIN_ADMIN_TOKEN_CHARS: Final = 32
_INTEGER: Final = re.compile(r"[+-]?[0-9]+")
_DECIMAL: Final = re.compile(
    r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?|[+-]?(inf|nan)", re.I
)
MAX_ISSUERS_FILE_BYTES: Final = 1024 * 1024


class Secret:
    """A secret string. ``repr``/``str`` are masked; only ``reveal()`` gives the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself. Pass it straight to the one place that needs it; never log it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class PoliciesSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    dir: str = "policies"
    """Directory holding the policy files (``*.yaml``/``*.yml``, not recursive)."""
    reload_interval_seconds: float = 2.0
    """How often the directory is checked for changes; a change is applied once the files have
    not changed for one interval (also reloaded on SIGHUP, at once). 0: never."""


class SmitherySettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    base_url: str = DEFAULT_SMITHERY_BASE_URL
    """Smithery API base URL; the emulator's URL in dev mode and tests."""
    api_key: Secret | None = None
    """The app's Smithery API key. Sent only as the bearer of ``POST /tokens``."""
    connect_timeout_seconds: float = 3.0
    """Time allowed to open a connection to Smithery."""
    timeout_seconds: float = 10.0
    """Time allowed for each read/write of an upstream call; exceeded → 504."""
    max_connections: int = 100
    """Size of the upstream connection pool."""
    mcp_timeout_seconds: float = 300.0
    """Time a proxied MCP response may make no progress: until its head is complete, then
    between its body chunks (tool calls can be slow)."""
    retries: int = 2
    """Extra attempts for a call to Smithery's token or connection API after a connection error,
    timeout, 429 or 5xx (never after 400/401/403; MCP messages are never retried)."""
    retry_base_delay_seconds: float = 0.2
    """First retry waits about this long (jittered), doubling each time..."""
    retry_max_delay_seconds: float = 2.0
    """...up to this; a server's ``Retry-After`` is honoured when longer."""
    deadline_seconds: float = 10.0
    """Total time one upstream call may take, retries included; then 504."""
    breaker_failure_threshold: int = 5
    """Consecutive failed calls that open the circuit (calls then fail at once with 503)."""
    breaker_open_seconds: float = 10.0
    """How long the circuit stays open before one probe call is let through."""
    max_concurrent_calls: int = 64
    """Cap on simultaneous calls to Smithery (token mints and connection reads)."""


class AuthSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    issuer: str | None = None
    """Exact ``iss`` the app users' JWTs must carry."""
    audience: tuple[str, ...] = ()
    """Accepted ``aud`` values (comma-separated); a token must name at least one."""
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    """Allowed JWS algorithms (comma-separated). Never taken from the token; ``none`` and HMAC are
    not supported."""
    jwks_url: str | None = None
    """JWKS URL; overrides OIDC discovery (``<issuer>/.well-known/openid-configuration``)."""
    jwks_file: str | None = None
    """Path of a static JWKS JSON file (air-gapped setups); no network fetch at all."""
    leeway_seconds: int = 30
    """Clock skew tolerated on ``exp``/``nbf``/``iat``."""
    subject_claim: str = "sub"
    """Claim that identifies the user (cache key, audit, ``{claims.sub}``-style policies)."""
    required_claims: tuple[str, ...] = ()
    """Claims every token must carry besides ``exp`` and the subject (comma-separated)."""
    typ: str | None = None
    """Required JWT header ``typ``, e.g. ``at+jwt`` (RFC 9068). Empty: not checked."""
    max_token_age_seconds: int | None = None
    """Refuse tokens issued (``iat``) longer ago than this. Empty: no limit."""
    config_file: str | None = None
    """YAML file listing several issuers; replaces the single-issuer settings above."""
    jwks_default_ttl_seconds: int = 300
    """How long fetched keys are used when the IdP sends no ``Cache-Control: max-age``."""
    jwks_min_ttl_seconds: int = 60
    """Lower bound on the key cache lifetime, whatever ``Cache-Control`` says."""
    jwks_max_ttl_seconds: int = 86_400
    """Upper bound on the key cache lifetime, whatever ``Cache-Control`` says."""
    jwks_refetch_interval_seconds: int = 30
    """A token with an unknown ``kid`` triggers at most one JWKS refetch per issuer per interval."""
    http_timeout_seconds: float = 5.0
    """Time allowed for each discovery or JWKS request to the identity provider, body included."""
    verified_cache_entries: int = 10_000
    """Verified JWTs remembered (by hash, until ``exp``), so a repeated token skips the signature
    check. 0 disables the cache."""


class IssuerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One accepted identity provider (an entry of ``BROKER_AUTH_CONFIG_FILE``'s ``issuers``)."""

    issuer: str
    audiences: tuple[str, ...]
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    jwks_url: str | None = None
    jwks_file: str | None = None
    subject_claim: str = "sub"
    required_claims: tuple[str, ...] = ()
    typ: str | None = None
    leeway_seconds: int = 30
    max_token_age_seconds: int | None = None


class IssuersFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    issuers: tuple[IssuerConfig, ...]


class CorsSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    origins: tuple[str, ...] = ()
    """Browser origins allowed to call the broker (comma-separated). Empty: CORS off."""


class LimitsSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    mint_rate_per_second: float = 0.5
    """Service-token mints per user per second (sustained); 0 disables the limit."""
    mint_burst: int = 10
    """Mints a user may make at once before the rate applies."""
    request_rate_per_second: float = 50.0
    """``/v1/precheck`` and ``/v1/mcp`` requests per user per second; 0 disables the limit."""
    request_burst: int = 100
    """Requests a user may make at once before the rate applies."""
    mcp_calls_per_user: int = 10
    """Proxied MCP calls a user may have in progress at once (per broker process); each holds
    an upstream connection until its answer ends. More: 429 ``rate_limited``. 0 disables."""


class PrecheckSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    exempt_lifecycle: bool = False
    """Let ``initialize``, ``ping`` and ``notifications/*`` skip rpcReqMatch (Smithery must be
    configured the same way; off by default, like Smithery)."""
    max_body_bytes: int = 1024 * 1024
    """Largest JSON-RPC body accepted by ``/v1/precheck`` and ``/v1/mcp``."""
    max_depth: int = 64
    """Deepest JSON nesting accepted in those bodies."""
    connection_cache_seconds: int = 30
    """How long a connection's metadata read from Smithery is reused for decisions."""


class CacheSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    max_entries: int = 10_000
    """Service tokens kept in memory; least recently used are evicted first."""
    refresh_margin_seconds: int = 60
    """A cached token is served only while this much of its life is left..."""
    refresh_margin_ratio: float = 0.2
    """...or this fraction of its lifetime, whichever is larger."""
    refresh_ahead: bool = True
    """Mint a user's next token in the background when the current one nears its margin."""
    backend: str = "memory"
    """``memory`` (each replica alone) or ``redis``: replicas share tokens, single-flight mints,
    rate limits and revocations through ``BROKER_REDIS_URL``, with this cache as a local L1."""
    encryption_key: Secret | None = None
    """Keyring for tokens stored in Redis (YAML: ``active``, ``keys`` by id, ``naming_key``;
    base64 of 32 random bytes each). Required with the ``redis`` backend."""


class RedisSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    url: Secret | None = None
    """``redis://`` or ``rediss://`` (TLS) URL, password included; used with
    ``BROKER_CACHE_BACKEND=redis``."""
    timeout_seconds: float = 0.25
    """Time allowed to connect and for each reply; a slower Redis counts as unavailable."""
    retry_seconds: float = 1.0
    """After a failure, Redis is not tried again for this long (the replica works alone)."""
    key_prefix: str = "token-broker"
    """Prefix of every key the broker writes (separates brokers sharing one Redis)."""
    required_for_readiness: bool = False
    """``/readyz`` answers 503 while Redis is unavailable (default: ready on the local cache)."""
    lock_seconds: float = 15.0
    """Lifetime of the cross-replica locks: a mint, a user's connection create (longer than
    either may take)."""
    lock_wait_seconds: float = 5.0
    """How long a replica waits for another replica's mint (then mints itself) or connection
    create (then 503 `busy`)."""
    sync_interval_seconds: float = 0.25
    """How often each replica checks Redis for new revocations."""


class TelemetrySettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    subject: str = "hash"
    """How the user's subject appears in traces and the audit log: ``raw``, ``hash`` (a keyed
    hash) or ``omit``. Tracing itself is configured by the standard ``OTEL_*`` variables."""
    hash_key: Secret | None = None
    """Key for subject hashes and token fingerprints; set it so hashes match across replicas and
    restarts (a random key per process otherwise)."""
    metrics_port: int = 0
    """Serve ``/metrics`` on this separate port instead of the main one (0: main port)."""


class AdminSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    token: Secret | None = None
    """Bearer credential for operator endpoints (``POST /v1/explain``, ``/v1/admin/revoke``), at
    least 32 characters. Unset: they answer 404 and are left out of ``/schema``."""
    revocation_seconds: int = 900
    """How long ``POST /v1/admin/revoke`` refuses a subject (or rule) by default."""


class ServerSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    """Interface ``broker serve`` listens on (``0.0.0.0`` in containers)."""
    port: int = 8080
    """Port ``broker serve`` listens on."""
    shutdown_delay_seconds: float = 0.0
    """On SIGTERM, keep serving this long with ``/readyz`` answering 503 (so load balancers stop
    sending traffic) before closing the listener."""
    drain_timeout_seconds: int = 25
    """Then wait at most this long for in-flight requests to finish before exiting."""
    keep_alive_seconds: int = 5
    """Idle keep-alive connections are closed after this long."""
    head_timeout_seconds: float = 10.0
    """A request's head (request line and headers) must arrive within this time of the
    connection opening, or of the request's first byte on a reused connection (checked every
    half of it, so at most one and a half of it); 408 and the connection is closed
    (slowloris)."""
    body_timeout_seconds: float = 10.0
    """A request body must arrive within this time (slow clients cannot hold a worker); 408."""
    max_header_bytes: int = 32 * 1024
    """Requests whose headers are larger are refused with 431."""


class Settings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    policies: PoliciesSettings = msgspec.field(default_factory=PoliciesSettings)
    smithery: SmitherySettings = msgspec.field(default_factory=SmitherySettings)
    auth: AuthSettings = msgspec.field(default_factory=AuthSettings)
    cors: CorsSettings = msgspec.field(default_factory=CorsSettings)
    precheck: PrecheckSettings = msgspec.field(default_factory=PrecheckSettings)
    limits: LimitsSettings = msgspec.field(default_factory=LimitsSettings)
    cache: CacheSettings = msgspec.field(default_factory=CacheSettings)
    redis: RedisSettings = msgspec.field(default_factory=RedisSettings)
    telemetry: TelemetrySettings = msgspec.field(default_factory=TelemetrySettings)
    admin: AdminSettings = msgspec.field(default_factory=AdminSettings)
    server: ServerSettings = msgspec.field(default_factory=ServerSettings)


def env_names() -> dict[str, tuple[str, str]]:
    """Every recognised env var → (section, field). Secret fields also get a ``_FILE`` form."""
    names: dict[str, tuple[str, str]] = {}
    for section, section_type in get_type_hints(Settings).items():
        for field, field_type in get_type_hints(section_type).items():
            name = f"{ENV_PREFIX}{section.upper()}_{field.upper()}"
            names[name] = (section, field)
            if _is_secret(field_type):
                names[name + "_FILE"] = (section, field)
    return names


def load_settings(
    environ: Mapping[str, str] | None = None, *, production: bool = False
) -> Settings:
    """Build ``Settings`` from ``BROKER_*`` variables; every problem is reported in one ConfigError.

    With ``production``, the settings ``broker serve`` cannot run without are required too.
    """
    env = os.environ if environ is None else environ
    problems: list[str] = []
    sections: dict[str, Any] = {}
    for section, section_type in get_type_hints(Settings).items():
        values: dict[str, Any] = {}
        for field, field_type in get_type_hints(section_type).items():
            name = f"{ENV_PREFIX}{section.upper()}_{field.upper()}"
            try:
                value = _read_field(env, name, field_type)
            except ValueError as exc:
                problems.append(f"{name}: {exc}")
                continue
            if value is not None:
                values[field] = value
        sections[section] = section_type(**values)
    settings = Settings(**sections)
    problems.extend(settings_problems(settings))
    if production:
        problems.extend(production_problems(settings))
    if problems:
        error = ConfigError(problems)
        error.partial = settings  # invalid fields at their defaults: for further checks only
        raise error
    return settings


def unknown_env_names(environ: Mapping[str, str]) -> list[str]:
    """``BROKER_*`` variables that match no setting: almost always a typo worth a warning."""
    known = env_names()
    return sorted(name for name in environ if name.startswith(ENV_PREFIX) and name not in known)


_BEARER_CREDENTIAL: Final = re.compile(r"[\x21-\x7e]+")


def settings_problems(settings: Settings) -> list[str]:
    """Cross-field checks that hold in every mode."""
    problems: list[str] = []
    if not _is_base_url(settings.smithery.base_url):
        problems.append("BROKER_SMITHERY_BASE_URL: must be an http(s) URL with a host")
    smithery = settings.smithery
    if (
        min(
            smithery.connect_timeout_seconds, smithery.timeout_seconds, smithery.mcp_timeout_seconds
        )
        <= 0
    ):
        problems.append("BROKER_SMITHERY_*TIMEOUT_SECONDS: must be greater than 0")
    if settings.policies.reload_interval_seconds < 0:
        problems.append("BROKER_POLICIES_RELOAD_INTERVAL_SECONDS: must be 0 (never) or positive")
    admin = settings.admin.token
    if admin is not None and len(admin.reveal()) < MIN_ADMIN_TOKEN_CHARS:
        problems.append(
            f"BROKER_ADMIN_TOKEN: must be at least {MIN_ADMIN_TOKEN_CHARS} characters (e.g. "
            "`openssl rand -base64 32`)"
        )
    for name, secret in (
        ("BROKER_SMITHERY_API_KEY", smithery.api_key),
        ("BROKER_ADMIN_TOKEN", settings.admin.token),
    ):
        # Sent or compared as a bearer credential: a control or a space in it would make the
        # HTTP library refuse the header with an error that quotes it (into traces).
        if secret is not None and not _BEARER_CREDENTIAL.fullmatch(secret.reveal()):
            problems.append(f"{name}: must be printable ASCII without spaces (the value is secret)")
    if smithery.retries < 0 or smithery.retries > 10:
        problems.append("BROKER_SMITHERY_RETRIES: must be between 0 and 10")
    if not 0 < smithery.retry_base_delay_seconds <= smithery.retry_max_delay_seconds:
        problems.append("BROKER_SMITHERY_RETRY_*_DELAY_SECONDS: need 0 < BASE <= MAX")
    if smithery.deadline_seconds <= 0 or smithery.breaker_open_seconds <= 0:
        problems.append("BROKER_SMITHERY_DEADLINE/BREAKER_OPEN_SECONDS: must be greater than 0")
    if smithery.breaker_failure_threshold < 1 or smithery.max_concurrent_calls < 1:
        problems.append("BROKER_SMITHERY_BREAKER_FAILURE_THRESHOLD/MAX_CONCURRENT_CALLS: >= 1")
    if settings.smithery.max_connections < 1:
        problems.append("BROKER_SMITHERY_MAX_CONNECTIONS: must be at least 1")
    unsupported = [a for a in settings.auth.algorithms if a not in SUPPORTED_ALGORITHMS]
    if unsupported:
        problems.append(
            f"BROKER_AUTH_ALGORITHMS: unsupported {', '.join(unsupported)}; "
            f"choose from {', '.join(sorted(SUPPORTED_ALGORITHMS))}"
        )
    if not settings.auth.algorithms:
        problems.append("BROKER_AUTH_ALGORITHMS: at least one algorithm is required")
    if settings.auth.leeway_seconds < 0 or settings.auth.leeway_seconds > 300:
        problems.append("BROKER_AUTH_LEEWAY_SECONDS: must be between 0 and 300")
    auth = settings.auth
    if (
        not 1
        <= auth.jwks_min_ttl_seconds
        <= auth.jwks_default_ttl_seconds
        <= auth.jwks_max_ttl_seconds
    ):
        problems.append(
            "BROKER_AUTH_JWKS_*_TTL_SECONDS: need 1 <= MIN_TTL <= DEFAULT_TTL <= MAX_TTL"
        )
    if auth.jwks_refetch_interval_seconds < 1:
        problems.append("BROKER_AUTH_JWKS_REFETCH_INTERVAL_SECONDS: must be at least 1")
    if auth.http_timeout_seconds <= 0:
        problems.append("BROKER_AUTH_HTTP_TIMEOUT_SECONDS: must be greater than 0")
    if auth.verified_cache_entries < 0:
        problems.append("BROKER_AUTH_VERIFIED_CACHE_ENTRIES: must not be negative")
    if auth.config_file and (auth.issuer or auth.jwks_url or auth.jwks_file):
        problems.append(
            "BROKER_AUTH_CONFIG_FILE: set either the config file or BROKER_AUTH_ISSUER (with "
            "its JWKS settings), not both"
        )
    if auth.jwks_url and auth.jwks_file:
        problems.append("BROKER_AUTH_JWKS_URL and BROKER_AUTH_JWKS_FILE: set at most one")
    if not 1024 <= settings.precheck.max_body_bytes <= 16 * 1024 * 1024:
        problems.append("BROKER_PRECHECK_MAX_BODY_BYTES: must be between 1024 and 16777216")
    if not 4 <= settings.precheck.max_depth <= 512:
        problems.append("BROKER_PRECHECK_MAX_DEPTH: must be between 4 and 512")
    if settings.precheck.connection_cache_seconds < 0:
        problems.append("BROKER_PRECHECK_CONNECTION_CACHE_SECONDS: must not be negative")
    limits = settings.limits
    if limits.mint_rate_per_second < 0 or limits.request_rate_per_second < 0:
        problems.append("BROKER_LIMITS_*_RATE_PER_SECOND: must not be negative")
    if limits.mint_burst < 1 or limits.request_burst < 1:
        problems.append("BROKER_LIMITS_*_BURST: must be at least 1")
    if settings.cache.max_entries < 1:
        problems.append("BROKER_CACHE_MAX_ENTRIES: must be at least 1")
    if settings.cache.refresh_margin_seconds < 0:
        problems.append("BROKER_CACHE_REFRESH_MARGIN_SECONDS: must not be negative")
    if not 0 <= settings.cache.refresh_margin_ratio < 1:
        problems.append("BROKER_CACHE_REFRESH_MARGIN_RATIO: must be in [0, 1)")
    problems.extend(_redis_problems(settings))
    problems.extend(
        f"BROKER_CORS_ORIGINS: {origin!r} is not an origin like https://app.example "
        "(scheme and host in lower case, no default port, no path; no wildcard but a lone *)"
        for origin in settings.cors.origins
        if origin != "*" and not _is_origin(origin)
    )
    if settings.telemetry.subject not in ("raw", "hash", "omit"):
        problems.append("BROKER_TELEMETRY_SUBJECT: must be raw, hash or omit")
    if not 0 <= settings.telemetry.metrics_port < 65536:
        problems.append("BROKER_TELEMETRY_METRICS_PORT: must be 0 or a TCP port number")
    server = settings.server
    if server.shutdown_delay_seconds < 0 or server.drain_timeout_seconds < 0:
        problems.append("BROKER_SERVER_SHUTDOWN_DELAY/DRAIN_TIMEOUT_SECONDS: must not be negative")
    if (
        server.keep_alive_seconds < 1
        or server.body_timeout_seconds <= 0
        or server.head_timeout_seconds <= 0
    ):
        problems.append(
            "BROKER_SERVER_KEEP_ALIVE/HEAD_TIMEOUT/BODY_TIMEOUT_SECONDS: must be positive"
        )
    if settings.limits.mcp_calls_per_user < 0:
        problems.append("BROKER_LIMITS_MCP_CALLS_PER_USER: must be 0 (no limit) or positive")
    if not 1024 <= server.max_header_bytes <= 1024 * 1024:
        problems.append("BROKER_SERVER_MAX_HEADER_BYTES: must be between 1024 and 1048576")
    if not 0 < settings.server.port < 65536:
        problems.append("BROKER_SERVER_PORT: must be a TCP port number")
    if settings.telemetry.metrics_port == settings.server.port:
        problems.append("BROKER_TELEMETRY_METRICS_PORT: must differ from BROKER_SERVER_PORT")
    return problems


def _is_base_url(url: str) -> bool:
    """``http(s)://host[:port][/path]``, as the broker's clients of Smithery take it."""
    parts = _http_url(url)
    return parts is not None and not parts.query and not parts.fragment


def is_fetchable(url: str) -> bool:
    """https anywhere; plain http only to loopback hosts (dev mode and tests). The rule for every
    URL the broker fetches identity-provider documents from; checked at start too."""
    parts = _http_url(url)
    if parts is None:
        return False
    if parts.scheme == "https" or parts.hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(parts.hostname or "").is_loopback
    except ValueError:
        return False


def _http_url(url: str) -> SplitResult | None:
    """``url`` split, when it is http(s) with a host and, if any, a valid port."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError for a port that is not one)
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return parts


def _is_origin(origin: str) -> bool:
    """An exact browser origin, written as browsers send it (matching is exact): Litestar reads
    a ``*`` inside one as a pattern, so ``https://app.example.*`` would admit
    ``https://app.example.attacker.net``; and ``https://App.Example`` or
    ``https://app.example:443`` would never match (browsers send the host in lower case and
    leave the default port out)."""
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError:
        return False
    default_port = {"https": 443, "http": 80}.get(parts.scheme)
    return (
        default_port is not None
        and bool(parts.hostname)
        and "*" not in origin
        and not (parts.path or parts.query or parts.fragment or "@" in parts.netloc)
        and origin == origin.lower()
        and port != default_port
    )


def _redis_problems(settings: Settings) -> list[str]:
    problems: list[str] = []
    backend, redis = settings.cache.backend, settings.redis
    if backend not in ("memory", "redis"):
        problems.append("BROKER_CACHE_BACKEND: must be memory or redis")
    if backend == "redis":
        if redis.url is None:
            problems.append(
                "BROKER_REDIS_URL or BROKER_REDIS_URL_FILE: required with "
                "BROKER_CACHE_BACKEND=redis"
            )
        if settings.cache.encryption_key is None:
            problems.append(
                "BROKER_CACHE_ENCRYPTION_KEY or BROKER_CACHE_ENCRYPTION_KEY_FILE: required with "
                "BROKER_CACHE_BACKEND=redis (tokens are stored encrypted)"
            )
    # The URL itself is never echoed: it may carry a password.
    if redis.url is not None:
        url = redis.url.reveal()
        if not url.startswith(("redis://", "rediss://", "unix://")):
            problems.append("BROKER_REDIS_URL: must start with redis://, rediss:// or unix://")
        else:
            try:
                urlsplit(url).port  # noqa: B018 (parsing raises on a bad port)
            except ValueError:
                problems.append("BROKER_REDIS_URL: not a valid URL (check the host and port)")
    if redis.timeout_seconds <= 0 or redis.retry_seconds <= 0 or redis.sync_interval_seconds <= 0:
        problems.append("BROKER_REDIS_TIMEOUT/RETRY/SYNC_INTERVAL_SECONDS: must be greater than 0")
    if redis.lock_seconds <= 0 or redis.lock_wait_seconds <= 0:
        problems.append("BROKER_REDIS_LOCK(_WAIT)_SECONDS: must be greater than 0")
    if not redis.key_prefix or any(c in redis.key_prefix for c in " *?[]"):
        problems.append("BROKER_REDIS_KEY_PREFIX: must be non-empty, without spaces or glob chars")
    if settings.admin.revocation_seconds < 0:
        problems.append("BROKER_ADMIN_REVOCATION_SECONDS: must not be negative")
    return problems


def production_problems(settings: Settings) -> list[str]:
    """What ``broker serve`` needs beyond the defaults: a key, an issuer, an audience, keys."""
    problems: list[str] = []
    if settings.smithery.api_key is None:
        problems.append(
            "BROKER_SMITHERY_API_KEY or BROKER_SMITHERY_API_KEY_FILE: required (the app's API key)"
        )
    if settings.auth.config_file:
        return problems
    if not settings.auth.issuer:
        problems.append(
            "BROKER_AUTH_ISSUER: required (the iss of your users' JWTs), or BROKER_AUTH_CONFIG_FILE"
        )
    if not settings.auth.audience:
        problems.append("BROKER_AUTH_AUDIENCE: required (the aud of your users' JWTs)")
    return problems


def load_issuers(auth: AuthSettings) -> tuple[IssuerConfig, ...]:
    """The accepted issuers: from ``BROKER_AUTH_CONFIG_FILE``, or the single env-configured one.

    Raises ConfigError listing every problem (file unreadable, schema path, bad values).
    """
    if auth.config_file:
        issuers = _read_issuers_file(auth.config_file)
    elif auth.issuer:
        issuers = (
            IssuerConfig(
                issuer=auth.issuer,
                audiences=auth.audience,
                algorithms=auth.algorithms,
                jwks_url=auth.jwks_url,
                jwks_file=auth.jwks_file,
                subject_claim=auth.subject_claim,
                required_claims=auth.required_claims,
                typ=auth.typ,
                leeway_seconds=auth.leeway_seconds,
                max_token_age_seconds=auth.max_token_age_seconds,
            ),
        )
    else:
        return ()
    problems: list[str] = []
    seen: set[str] = set()
    for index, issuer in enumerate(issuers):
        where = f"issuer {issuer.issuer!r}" if auth.config_file else "BROKER_AUTH"
        if issuer.issuer in seen:
            problems.append(f"{where}: listed twice")
        seen.add(issuer.issuer)
        if not issuer.issuer.startswith(("https://", "http://")):
            problems.append(f"{where}: issuer must be an http(s) URL (issuers[{index}])")
        if not issuer.audiences:
            problems.append(f"{where}: at least one audience is required")
        unsupported = [a for a in issuer.algorithms if a not in SUPPORTED_ALGORITHMS]
        if unsupported or not issuer.algorithms:
            problems.append(
                f"{where}: algorithms must be chosen from {', '.join(sorted(SUPPORTED_ALGORITHMS))}"
                + (f" (unsupported: {', '.join(unsupported)})" if unsupported else "")
            )
        if issuer.jwks_url and issuer.jwks_file:
            problems.append(f"{where}: set at most one of jwks_url and jwks_file")
        elif issuer.jwks_url and not is_fetchable(issuer.jwks_url):
            problems.append(f"{where}: jwks_url must be https (plain http on loopback only)")
        elif not issuer.jwks_file and not issuer.jwks_url and not is_fetchable(issuer.issuer):
            problems.append(
                f"{where}: keys are found by discovery from the issuer, which must then be https "
                "(plain http on loopback only); or set jwks_url or jwks_file"
            )
        if not issuer.subject_claim:
            problems.append(f"{where}: subject_claim must not be empty")
        if not 0 <= issuer.leeway_seconds <= 300:
            problems.append(f"{where}: leeway_seconds must be between 0 and 300")
        if issuer.max_token_age_seconds is not None and issuer.max_token_age_seconds < 1:
            problems.append(f"{where}: max_token_age_seconds must be at least 1")
    if problems:
        raise ConfigError(problems)
    return issuers


def _read_issuers_file(path: str) -> tuple[IssuerConfig, ...]:
    try:
        data = read_limited(path, MAX_ISSUERS_FILE_BYTES)
    except FileRefused as exc:
        raise ConfigError([f"BROKER_AUTH_CONFIG_FILE: {path} {exc}"]) from None
    except OSError as exc:
        raise ConfigError(
            [f"BROKER_AUTH_CONFIG_FILE: cannot read {path}: {exc.strerror}"]
        ) from None
    try:
        parsed = msgspec.yaml.decode(data, type=IssuersFile)
    except msgspec.ValidationError as exc:
        raise ConfigError([f"BROKER_AUTH_CONFIG_FILE: {path}: {exc}"]) from None
    except msgspec.DecodeError as exc:
        raise ConfigError([f"BROKER_AUTH_CONFIG_FILE: {path} is not valid YAML: {exc}"]) from None
    if not parsed.issuers:
        raise ConfigError([f"BROKER_AUTH_CONFIG_FILE: {path} lists no issuers"])
    return parsed.issuers


def _is_secret(field_type: Any) -> bool:
    return field_type is Secret or Secret in get_args(field_type)


def _read_field(env: Mapping[str, str], name: str, field_type: Any) -> Any:
    if _is_secret(field_type):
        return _read_secret(env, name)
    raw = env.get(name)
    if raw is None:
        return None
    return _parse(raw, field_type)


def _read_secret(env: Mapping[str, str], name: str) -> Secret | None:
    direct = env.get(name)
    path = env.get(name + "_FILE")
    if direct is not None and path is not None:
        raise ValueError(f"set either {name} or {name}_FILE, not both")
    if path is not None:
        # The path is not echoed: a secret pasted into the _FILE variable by mistake would be.
        file = f"the file {name}_FILE names"
        try:
            value = read_limited(path, DEFAULT_SECRET_MAX_BYTES).decode("utf-8").strip()
        except FileRefused as exc:
            raise ValueError(f"{file} {exc}") from None
        except OSError as exc:
            raise ValueError(f"cannot read {file}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ValueError(f"{file} is not UTF-8 text") from None
    elif direct is not None:
        value = direct.strip()
    else:
        return None
    if not value:
        raise ValueError("is empty")
    return Secret(value)


def _parse(raw: str, field_type: Any) -> Any:
    args = get_args(field_type)
    if get_origin(field_type) is tuple:
        return tuple(item.strip() for item in raw.split(",") if item.strip())
    if type(None) in args:  # Optional[str]
        field_type = next(a for a in args if a is not type(None))
    if field_type is str:
        return raw.strip() or None
    if field_type is int:
        if not _INTEGER.fullmatch(raw.strip()):  # int() also takes "8_080" and Arabic digits
            raise ValueError(f"{_shown(raw)} is not an integer")
        return int(raw.strip())
    if field_type is float:
        if not _DECIMAL.fullmatch(raw.strip()):
            raise ValueError(f"{_shown(raw)} is not a number")
        value = float(raw.strip())
        if not math.isfinite(value):
            raise ValueError(f"{_shown(raw)} is not a finite number")
        return value
    if field_type is bool:
        lowered = raw.strip().lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off"}:
            return False
        raise ValueError(f"{_shown(raw)} is not a boolean (true/false)")
    raise TypeError(f"unsupported setting type {field_type!r}")  # pragma: no cover


def _shown(raw: str) -> str:
    """A value as an error quotes it: the start of a long one only."""
    return repr(raw if len(raw) <= 40 else raw[:40] + "...")
