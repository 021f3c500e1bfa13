"""OIDC discovery and JWKS fetching for the app users' identity providers.

For each issuer without a static key file, ``JwksManager`` finds ``jwks_uri`` through
``<issuer>/.well-known/openid-configuration`` (OpenID Connect Discovery 1.0 §4; the document's
``issuer`` must equal the configured one) unless a JWKS URL is configured, fetches the key set with
async httpx, and hands the parsed keys to the ``Verifier``. Keys are kept for the server's
``Cache-Control: max-age`` clamped to configured bounds, refreshed in the background, and kept
when the identity provider is down. A token with an unknown ``kid`` may trigger one refetch per
issuer per interval, shared by concurrent requests, so forged kids cannot cause a fetch storm.

Only https URLs are fetched, except on loopback hosts (dev and tests), and a discovered
``jwks_uri`` only with the issuer's own scheme. Each fetch has one deadline, body included; a key
set is read up to 100 keys. Nothing here verifies tokens (``identity``) or knows about requests
(``authentication``).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

import httpx
import msgspec

from broker.config import AuthSettings, IssuerConfig, is_fetchable, load_issuers
from broker.errors import ConfigError, IdentityProviderError
from broker.identity import (
    MAX_JWKS_BYTES,
    IssuerRules,
    VerificationKey,
    Verifier,
    load_jwks_file,
    parse_jwks,
)

logger = logging.getLogger("broker.jwks")

DISCOVERY_PATH: Final = "/.well-known/openid-configuration"
MAX_DISCOVERY_BYTES: Final = 256 * 1024
RETRY_AFTER_FAILURE_SECONDS: Final = 10.0
LOGGED_KEY_PROBLEMS: Final = 5
"""Problems with a key set's keys logged one by one per refresh; the rest are counted."""
MAX_LOOP_SLEEP_SECONDS: Final = 60.0
_MAX_AGE: Final = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d{1,10})\"?\s*(?:,|$)", re.IGNORECASE)


@dataclass(slots=True)
class _IssuerState:
    config: IssuerConfig
    jwks_uri: str | None
    discovered: bool = False
    loaded: bool = False
    next_refresh_at: float = 0.0
    last_forced_at: float | None = None
    last_error: str | None = None
    inflight: asyncio.Task[bool] | None = field(default=None, repr=False)


def cache_ttl_seconds(cache_control: str | None, auth: AuthSettings) -> float:
    """The key set's lifetime from ``Cache-Control``, clamped to the configured bounds."""
    ttl = float(auth.jwks_default_ttl_seconds)
    if cache_control:
        lowered = cache_control.lower()
        found = _MAX_AGE.search(lowered)
        if "no-store" in lowered or "no-cache" in lowered:
            ttl = float(auth.jwks_min_ttl_seconds)
        elif found is not None:
            ttl = float(found.group(1))
    return min(max(ttl, auth.jwks_min_ttl_seconds), auth.jwks_max_ttl_seconds)


class JwksManager:
    """Keeps each remote issuer's keys current in a ``Verifier``."""

    def __init__(
        self,
        verifier: Verifier,
        issuers: Sequence[IssuerConfig],
        auth: AuthSettings,
        *,
        clock: Callable[[], float],
        transport: httpx.AsyncBaseTransport | None = None,
        tracer_provider: Any = None,
    ) -> None:
        self._verifier = verifier
        self._auth = auth
        self._clock = clock
        self._states = {
            issuer.issuer: _IssuerState(config=issuer, jwks_uri=issuer.jwks_url)
            for issuer in issuers
        }
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(auth.http_timeout_seconds),
            # Fetches are rare; a fresh connection each time also survives IdP restarts.
            limits=httpx.Limits(max_connections=10, max_keepalive_connections=0),
            trust_env=False,
            follow_redirects=False,
            transport=transport,
            headers={"Accept": "application/json"},
        )
        if tracer_provider is not None:
            from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

            HTTPXClientInstrumentor.instrument_client(self._client, tracer_provider=tracer_provider)
        self._loop_task: asyncio.Task[None] | None = None
        self.refreshes = 0
        self.failures = 0

    @property
    def issuers(self) -> tuple[str, ...]:
        return tuple(self._states)

    def status(self) -> dict[str, dict[str, Any]]:
        """Per issuer: keys loaded once, and the last error (for readiness and operators)."""
        return {
            name: {"loaded": state.loaded, "lastError": state.last_error}
            for name, state in self._states.items()
        }

    async def start(self) -> None:
        """Load every issuer's keys once (failures are logged, retried in the background)."""
        await asyncio.gather(*(self.refresh(name) for name in self._states))
        self._loop_task = asyncio.create_task(self._run(), name="jwks-refresh")

    async def aclose(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        await self._client.aclose()

    async def refresh_due(self) -> None:
        """Refresh every issuer whose key set has reached its lifetime (or failed before)."""
        now = self._clock()
        due = [name for name, state in self._states.items() if state.next_refresh_at <= now]
        await asyncio.gather(*(self.refresh(name) for name in due))

    async def refetch_unknown_kid(self, issuer: str) -> bool:
        """Refetch ``issuer``'s keys for a token naming an unknown ``kid``.

        At most once per ``jwks_refetch_interval_seconds`` per issuer; concurrent callers share
        the fetch. True when a fetch happened and succeeded, so verification is worth retrying.
        """
        state = self._states.get(issuer)
        if state is None:
            return False
        if state.inflight is not None:
            return await asyncio.shield(state.inflight)
        now = self._clock()
        interval = self._auth.jwks_refetch_interval_seconds
        if state.last_forced_at is not None and now - state.last_forced_at < interval:
            return False
        state.last_forced_at = now
        return await self.refresh(issuer)

    async def refresh(self, issuer: str) -> bool:
        """Fetch ``issuer``'s keys now (single-flight). False when it failed; old keys stay."""
        state = self._states[issuer]
        if state.inflight is None:
            state.inflight = asyncio.ensure_future(self._refresh(state))
            state.inflight.add_done_callback(lambda _: setattr(state, "inflight", None))
        return await asyncio.shield(state.inflight)

    async def _fetch_keys(self, state: _IssuerState) -> tuple[tuple[VerificationKey, ...], float]:
        issuer = state.config.issuer
        if state.jwks_uri is None:
            state.jwks_uri = await self._discover(state.config)
            state.discovered = True
        document, cache_control = await self._get_json(state.jwks_uri, MAX_JWKS_BYTES)
        keys, problems = parse_jwks(document, state.config.algorithms)
        for problem in problems[:LOGGED_KEY_PROBLEMS]:
            logger.warning("jwks %s: skipped a key: %s", issuer, problem)
        if len(problems) > LOGGED_KEY_PROBLEMS:
            logger.warning(
                "jwks %s: %d more key problem(s) not logged",
                issuer,
                len(problems) - LOGGED_KEY_PROBLEMS,
            )
        if not keys:
            raise IdentityProviderError("the JWKS holds no key usable with the allowed algorithms")
        return keys, cache_ttl_seconds(cache_control, self._auth)

    async def _refresh(self, state: _IssuerState) -> bool:
        issuer = state.config.issuer
        try:
            keys, ttl = await self._fetch_keys(state)
        except IdentityProviderError as exc:
            self.failures += 1
            state.last_error = exc.detail
            retry = min(RETRY_AFTER_FAILURE_SECONDS, float(self._auth.jwks_min_ttl_seconds))
            state.next_refresh_at = self._clock() + retry
            if state.discovered:
                state.jwks_uri = None  # rediscover next time: the jwks_uri may have moved
            logger.warning(
                "jwks %s: refresh failed, keeping %s: %s",
                issuer,
                "the last good keys" if state.loaded else "no keys",
                exc.detail,
            )
            return False
        self._verifier.set_keys(issuer, keys)
        state.loaded = True
        state.last_error = None
        state.next_refresh_at = self._clock() + ttl
        self.refreshes += 1
        logger.info(
            "jwks %s: %d key(s) loaded (kids %s), next refresh in %.0fs",
            issuer,
            len(keys),
            ",".join(k.kid or "-" for k in keys),
            ttl,
        )
        return True

    async def _discover(self, config: IssuerConfig) -> str:
        url = config.issuer.rstrip("/") + DISCOVERY_PATH
        document, _ = await self._get_json(url, MAX_DISCOVERY_BYTES)
        if not isinstance(document, dict):
            raise IdentityProviderError("discovery document is not a JSON object")
        if document.get("issuer") != config.issuer:
            # OpenID Connect Discovery §4.3: a mismatch means the wrong (or a spoofed) provider.
            raise IdentityProviderError("discovery document names a different issuer")
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not is_fetchable(jwks_uri):
            raise IdentityProviderError("discovery document has no usable https jwks_uri")
        if urlsplit(jwks_uri).scheme != urlsplit(config.issuer).scheme:
            # Plain http is for a loopback issuer (dev, tests): an https issuer's document must
            # not send the broker to http on its own loopback.
            raise IdentityProviderError("discovery document has no usable https jwks_uri")
        return jwks_uri

    async def _get_json(self, url: str, limit_bytes: int) -> tuple[Any, str | None]:
        if not is_fetchable(url):
            raise IdentityProviderError(f"refusing to fetch {url}: https is required")
        try:
            # The whole fetch, not each read: a body that trickles in must not hold it longer.
            async with (
                asyncio.timeout(self._auth.http_timeout_seconds),
                self._client.stream("GET", url) as response,
            ):
                if response.status_code != 200:
                    raise IdentityProviderError(f"GET {url} answered {response.status_code}")
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body.extend(chunk)
                    if len(body) > limit_bytes:
                        raise IdentityProviderError(f"GET {url}: body exceeds {limit_bytes} bytes")
                cache_control = response.headers.get("cache-control")
        except (httpx.TimeoutException, TimeoutError):
            raise IdentityProviderError(f"GET {url} timed out") from None
        except httpx.HTTPError as exc:
            raise IdentityProviderError(f"GET {url} failed: {type(exc).__name__}") from None
        try:
            return msgspec.json.decode(bytes(body)), cache_control
        except msgspec.DecodeError:
            raise IdentityProviderError(f"GET {url}: body is not JSON") from None
        except RecursionError:  # it would end the refresh loop, and keys would never rotate
            raise IdentityProviderError(f"GET {url}: JSON nested too deeply") from None

    async def _run(self) -> None:
        while True:
            await self.refresh_due()
            now = self._clock()
            wake = min((s.next_refresh_at for s in self._states.values()), default=now + 60)
            await asyncio.sleep(min(max(wake - now, 1.0), MAX_LOOP_SLEEP_SECONDS))


def setup_verifier(auth: AuthSettings) -> tuple[Verifier, tuple[IssuerConfig, ...]]:
    """A ``Verifier`` for the configured issuers, with static key files loaded now, and the
    issuers whose keys must be fetched. Raises ConfigError listing every problem."""
    verifier = Verifier()
    remote: list[IssuerConfig] = []
    problems: list[str] = []
    for issuer in load_issuers(auth):
        keys: tuple[VerificationKey, ...] = ()
        if issuer.jwks_file:
            try:
                keys = load_jwks_file(issuer.jwks_file, issuer.algorithms)
            except ConfigError as exc:
                problems.extend(f"{issuer.issuer}: {p}" for p in exc.problems)
        else:
            remote.append(issuer)
        verifier.add_issuer(IssuerRules.from_config(issuer), keys)
    if problems:
        raise ConfigError(problems)
    return verifier, tuple(remote)
