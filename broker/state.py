"""The per-app resources that handlers receive by injection, built once by ``create_app``.

Holds references only; the logic lives in the modules these objects come from.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from broker.admission import Admission
from broker.authentication import Authenticator
from broker.cache import TokenCache
from broker.cluster import Cluster
from broker.config import Settings
from broker.identity import DevSigner
from broker.issuance import Issuance
from broker.metrics import Metrics
from broker.policy import PolicySet
from broker.provisioning import Provisioning
from broker.ratelimit import ConcurrencyLimit, RateLimiter
from broker.reload import PolicyReloader
from broker.telemetry import Telemetry
from broker.upstream import SmitheryClient


@dataclass(slots=True)
class BrokerState:
    settings: Settings
    policy_set: PolicySet
    authenticator: Authenticator
    upstream: SmitheryClient
    cache: TokenCache
    issuance: Issuance
    admission: Admission
    clock: Callable[[], float]
    reloader: PolicyReloader
    provisioning: Provisioning
    request_limit: RateLimiter | None = None
    mcp_calls: ConcurrencyLimit | None = None
    """Proxied MCP calls in progress per user (``BROKER_LIMITS_MCP_CALLS_PER_USER``)."""
    draining: bool = False
    """Set on SIGTERM: ``/readyz`` answers 503 while in-flight requests finish."""
    dev_signer: DevSigner | None = None
    telemetry: Telemetry = field(default_factory=Telemetry)
    metrics: Metrics = field(default_factory=Metrics)
    cluster: Cluster | None = None
    """What replicas share (Redis), and revocations; set by ``create_app``."""
