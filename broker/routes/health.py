"""``GET /livez`` (the process answers) and ``GET /readyz`` (able to issue tokens)."""

from __future__ import annotations

import msgspec
from litestar import Response, get
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec

from broker.routes.openapi import documented, problem_responses
from broker.state import BrokerState


class Readiness(msgspec.Struct, frozen=True):
    status: str
    policyRevision: str
    checks: dict[str, bool]
    lastReloadError: str | None
    """Why the newest policy files were refused (the previous revision keeps serving)."""


@get(
    "/livez",
    summary="Liveness: the process is up",
    sync_to_thread=False,
    responses=problem_responses(),
    operation_class=documented(),
)
def livez() -> dict[str, str]:
    return {"status": "ok"}


@get(
    "/readyz",
    summary="Readiness: policies loaded, upstream and identity configured",
    sync_to_thread=False,
    responses={
        200: ResponseSpec(Readiness, generate_examples=False, description="Ready"),
        503: ResponseSpec(
            Readiness,
            generate_examples=False,
            description="Not ready (or draining): `checks` says which check failed",
        ),
        **problem_responses(),
    },
    operation_class=documented(),
)
def readyz(broker: NamedDependency[BrokerState]) -> Response[Readiness]:
    checks = {
        "policies": bool(broker.policy_set.rules),
        "upstream": broker.upstream.configured,
        "identity": broker.authenticator.ready,
        "accepting": not broker.draining,
    }
    if broker.cluster is not None and broker.cluster.required_for_readiness:
        checks["redis"] = broker.cluster.ready
    ready = all(checks.values())
    return Response(
        Readiness(
            status="ready" if ready else "not_ready",
            policyRevision=broker.policy_set.revision,
            checks=checks,
            lastReloadError=broker.reloader.last_error,
        ),
        status_code=200 if ready else 503,
    )
