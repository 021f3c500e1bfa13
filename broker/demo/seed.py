"""Registering the demo MCP server in the Smithery emulator, for the example policies' users.

Dev mode's connections, created through the emulator's public API exactly as an app backend
would create them on Smithery (``PUT /connect/{namespace}/{connectionId}`` with the API key):
``alice-github`` and ``bob-github`` tagged ``userId`` (policies/per-user-connections.yaml) and
``support-github`` tagged with its own id (policies/support-readonly.yaml). The API key is sent
only as the bearer of those calls and never appears in an error. This module does nothing else.
"""

from __future__ import annotations

from types import MappingProxyType

import httpx

DEFAULT_NAMESPACE = "my-app"
SEED_TIMEOUT_SECONDS = 10.0

DEV_CONNECTIONS: MappingProxyType[str, dict[str, str]] = MappingProxyType(
    {
        "alice-github": {"userId": "alice"},
        "bob-github": {"userId": "bob"},
        "support-github": {"connectionId": "support-github"},
    }
)
"""The dev connections' ids and metadata."""


class SeedError(Exception):
    """The emulator refused a connection or could not be reached."""


async def seed_dev_connections(
    emulator_url: str, api_key: str, mcp_url: str, namespace: str = DEFAULT_NAMESPACE
) -> None:
    """Create or update the ``DEV_CONNECTIONS`` in ``namespace``, each pointing at ``mcp_url``.

    ``api_key``: the emulator's API key (a secret: sent as the bearer only). Idempotent: an
    existing connection with the same ``mcpUrl`` is updated in place. Raises ``SeedError``.
    """
    headers = {"Authorization": f"Bearer {api_key}"}
    # trust_env=False: the emulator is local; no proxy from the environment may see the key.
    async with httpx.AsyncClient(
        base_url=emulator_url.rstrip("/"), timeout=SEED_TIMEOUT_SECONDS, trust_env=False
    ) as client:
        for connection_id, metadata in DEV_CONNECTIONS.items():
            body = {"mcpUrl": mcp_url, "name": connection_id, "metadata": metadata}
            try:
                response = await client.put(
                    f"/connect/{namespace}/{connection_id}", json=body, headers=headers
                )
            except httpx.HTTPError as error:
                raise SeedError(
                    f"cannot reach the emulator at {emulator_url}: {type(error).__name__}"
                ) from None
            if response.status_code not in (200, 201):
                raise SeedError(
                    f"the emulator refused connection {connection_id!r}:"
                    f" HTTP {response.status_code} {_error_code(response)}"
                )


def _error_code(response: httpx.Response) -> str:
    """The emulator's ``error`` code only: bodies are not relayed into our errors."""
    try:
        body = response.json()
    except ValueError:
        return "(no JSON body)"
    code = body.get("error") if isinstance(body, dict) else None
    return code if isinstance(code, str) else "(no error code)"
