"""The per-app resources that handlers receive by injection, built once by ``create_app``.

Holds references only; it owns no logic beyond authenticating a bearer header with the clock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from broker.cache import TokenCache
from broker.config import Settings
from broker.identity import DevSigner, Principal, Verifier, bearer_token
from broker.issuance import Issuance
from broker.policy import PolicySet
from broker.upstream import SmitheryClient


@dataclass(slots=True)
class BrokerState:
    settings: Settings
    policy_set: PolicySet
    verifier: Verifier
    upstream: SmitheryClient
    cache: TokenCache
    issuance: Issuance
    clock: Callable[[], float]
    dev_signer: DevSigner | None = None

    def authenticate(self, authorization: str | None) -> Principal:
        return self.verifier.verify(bearer_token(authorization), now=self.clock())

    @property
    def ready(self) -> bool:
        return self.upstream.configured and self.verifier.ready
