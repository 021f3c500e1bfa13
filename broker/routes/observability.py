"""``GET /metrics`` (Prometheus text format) and the counts read from live components at scrape
time: token cache, JWKS refreshes, policy revision and reloads."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from litestar import Response, get
from litestar.di import NamedDependency

from broker.metrics import CONTENT_TYPE, Labels
from broker.state import BrokerState

METRIC_HELP: Final = {
    "broker_http_requests_total": "HTTP responses by route template, method and status.",
    "broker_token_decisions_total": "Token requests allowed or denied, by reason code.",
    "broker_mcp_decisions_total": "Precheck and proxy decisions by endpoint, result and reason.",
    "broker_upstream_mints_total": "Calls to Smithery POST /tokens by result.",
    "broker_upstream_request_duration_seconds": "Latency of calls to Smithery by operation.",
    "broker_cache_events_total": "Token cache hits, misses, evictions, single-flight waits.",
    "broker_cache_entries": "Service tokens currently cached.",
    "broker_jwks_refreshes_total": "Identity-provider key set fetches by result.",
    "broker_policy_info": "The policy revision being served (value 1).",
    "broker_policy_reloads_total": "Policy reloads by result.",
    "broker_redis_up": "Whether Redis answers (1) or this replica works alone (0).",
    "broker_redis_errors_total": "Failed Redis operations (errors, timeouts) by operation.",
    "broker_redis_busy_total": "Redis operations skipped because every pooled connection stayed "
    "busy for the Redis timeout (this replica's load), by operation.",
    "broker_shared_cache_events_total": "Shared (Redis) token tier hits, misses, lock waits.",
    "broker_shared_cache_rejected_total": "Redis records that could not be opened, by reason.",
    "broker_revocations_total": "Revocations made on this replica, by scope.",
    "broker_revocations_active": "Revocations currently refusing requests on this replica.",
    "broker_revoked_requests_total": "Requests refused because of a revocation.",
}


def collect_state_metrics(broker: BrokerState) -> Iterable[tuple[str, str, Labels, float]]:
    stats = broker.cache.stats
    for event, value in (
        ("hit", stats.hits),
        ("miss", stats.misses),
        ("eviction", stats.evictions),
        ("wait", stats.waits),
    ):
        yield "broker_cache_events_total", "counter", (("event", event),), value
    yield "broker_cache_entries", "gauge", (), len(broker.cache)
    keys = broker.authenticator.keys
    if keys is not None:
        yield "broker_jwks_refreshes_total", "counter", (("result", "ok"),), keys.refreshes
        yield "broker_jwks_refreshes_total", "counter", (("result", "failed"),), keys.failures
    yield "broker_policy_info", "gauge", (("revision", broker.policy_set.revision),), 1
    reloader = broker.reloader
    yield "broker_policy_reloads_total", "counter", (("result", "ok"),), reloader.reloads
    yield "broker_policy_reloads_total", "counter", (("result", "refused"),), reloader.failures


@get("/metrics", sync_to_thread=False, include_in_schema=False)
def metrics_route(broker: NamedDependency[BrokerState]) -> Response[str]:
    return Response(broker.metrics.render(), media_type=CONTENT_TYPE)
