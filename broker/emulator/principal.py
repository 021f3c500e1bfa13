"""Who is calling: the bearer of a request, authenticated as the API key or a service token.

This module reads the ``Authorization`` header and nothing else. It tells the API key (which may
do everything) from a service token (which may do what its scope allows) and refuses unknown,
expired or altered bearers with a generic 401. It decides no route-specific permissions.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from broker.emulator.errors import UnauthorizedError
from broker.emulator.scope import Action, RpcMatcher
from broker.emulator.token import TOKEN_PREFIX, ServiceToken, TokenCodec, TokenInvalidError


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated bearer: ``token`` is None for the API key, which is never restricted."""

    token: ServiceToken | None

    def permits_action(self, action: Action) -> bool:
        return self.token is None or self.token.scope.permits_action(action)

    def permits(self, action: Action, metadata: Mapping[str, Any] | None) -> bool:
        return self.token is None or self.token.scope.permits(action, metadata)

    async def permits_message(
        self,
        action: Action,
        metadata: Mapping[str, Any] | None,
        body: str,
        match: RpcMatcher,
        *,
        skip_rpc_match: bool = False,
    ) -> bool:
        """``Scope.permits_message`` for a token; the API key may send anything."""
        return self.token is None or await self.token.scope.permits_message(
            action, metadata, body, match, skip_rpc_match=skip_rpc_match
        )


def authenticate(
    authorization: str | None, *, api_key: str, codec: TokenCodec, now_ms: int
) -> Principal:
    """The principal behind an ``Authorization: Bearer ...`` header value.

    ``api_key``: the account's secret; compared in constant time. Raises ``UnauthorizedError``
    for a missing header, another scheme, a wrong key, or a token that fails verification or
    has expired. The 401 body does not say which.
    """
    if authorization is None:
        raise UnauthorizedError
    scheme, _, credential = authorization.strip().partition(" ")
    credential = credential.strip()
    if scheme.lower() != "bearer" or not credential:
        raise UnauthorizedError
    if credential.startswith(f"{TOKEN_PREFIX}."):
        try:
            token = codec.decode(credential)
        except TokenInvalidError:
            raise UnauthorizedError from None
        if token.is_expired(now_ms):
            raise UnauthorizedError
        return Principal(token=token)
    if hmac.compare_digest(credential.encode(), api_key.encode()):
        return Principal(token=None)
    raise UnauthorizedError
