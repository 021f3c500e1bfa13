"""What the scenarios send: paths, bodies, headers and the users' claims, in one place.

R3 and R4 act as a support agent: a JWT whose only extra claim is ``groups: ["support"]``, so
exactly the two ``support-github-*`` rules of ``policies/support-readonly.yaml`` apply (both carry
``rpcReqMatch``); ``email_verified`` is absent, so ``own-connections`` does not. The JSON-RPC
message is a ``tools/call`` of ``get_issue``: the second of those rules allows it.
"""

from __future__ import annotations

import json
from types import MappingProxyType
from typing import Any, Final

NAMESPACE: Final = "my-app"
CONNECTION_ID: Final = "support-github"
"""Seeded by ``broker.demo.seed_dev_connections``, metadata ``{connectionId: support-github}``."""

SUPPORT_SUBJECT: Final = "support-agent-1"
SUPPORT_CLAIMS: Final = MappingProxyType({"groups": ["support"]})
SUPPORT_RULE: Final = "support-github-readonly"
"""The rule that allows ``TOOLS_CALL`` (the first in policy order that does)."""

TOOLS_CALL: Final = (
    '{"jsonrpc":"2.0","id":1,"method":"tools/call",'
    '"params":{"name":"get_issue","arguments":{"number":1}}}'
)
"""R4's message, and the ``request`` of R3's body (issue 1 exists in the demo tracker)."""

PRECHECK_PATH: Final = "/v1/precheck"
PRECHECK_BODY: Final = (
    '{"namespace":"my-app","metadata":{"connectionId":"support-github"},'
    f'"request":{TOOLS_CALL}}}'
)
"""``metadata`` given directly (not ``connectionId``): the decision needs no call to Smithery."""

VERIFIED_TOKEN_PATH: Final = "/v1/verified-tokens"
"""R2's baseline route: PyJWT verification, then the same answer as ``/v1/tokens``."""

PROXY_PATH: Final = f"/v1/mcp/{NAMESPACE}/{CONNECTION_ID}"
DIRECT_PATH: Final = f"/connect/{NAMESPACE}/{CONNECTION_ID}/mcp"
MCP_PROTOCOL_VERSION: Final = "2025-06-18"
MCP_HEADERS: Final[MappingProxyType[str, str]] = MappingProxyType(
    {
        # Streamable HTTP: a POST must accept both; the demo server answers text/event-stream.
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": MCP_PROTOCOL_VERSION,
    }
)
"""Sent on both R4 paths besides ``Content-Type: application/json`` (which goes with a body)."""


def jsonrpc_answer(text: str) -> dict[str, Any] | None:
    """The JSON-RPC answer in an MCP reply (``application/json``, or an SSE ``data:`` line)."""
    for line in text.splitlines() or [text]:
        candidate = line.removeprefix("data:").strip()
        if candidate.startswith("{"):
            try:
                parsed = json.loads(candidate)
            except ValueError:
                continue
            if isinstance(parsed, dict):
                return parsed
    return None
