"""The emulator's per-app state: its secrets, its clock, its counters and its connections.

One ``EmulatorState`` is built by ``create_emulator_app`` and injected into every handler, so two
apps in one process never share anything. It holds data, the injected faults (``faults.py``) and
the app's two resources (the node oracle and the MCP relay, both started on first use and closed
by ``aclose`` on shutdown); routes give it meaning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeAlias

import msgspec
from litestar.di import NamedDependency

from broker.emulator.clock import Clock, to_epoch_ms
from broker.emulator.connection import DEFAULT_INPUT_HOSTS, DEFAULT_OAUTH_HOSTS, ConnectionStore
from broker.emulator.faults import Faults
from broker.emulator.principal import Principal, authenticate
from broker.emulator.relay import McpRelay
from broker.emulator.rpc_oracle import RpcMatchOracle
from broker.emulator.token import TokenCodec


class Stats(msgspec.Struct):
    """Counters since start (or the last reset), served by ``GET /_emulator/stats``.

    ``tokens_rejected`` counts ``POST /tokens`` requests answered with an error (400 or 401);
    ``requests_unauthorized`` counts 401s on ``/connect`` (the MCP endpoint included), and
    ``requests_forbidden`` the requests there that the bearer's scope refused: 403s, and the
    writes answered 404 "access denied" (a namespace the API key does not own is not counted).
    On ``POST /connect/{ns}/{id}/mcp``: ``mcp_allowed`` counts messages the token's scope
    allowed, ``mcp_denied`` those it refused (403 ``-32003``), and ``mcp_forwarded`` those the
    MCP server answered (any status).

    ``received_tokens``, ``received_mcp`` and ``received_connections`` count every request that
    reached ``POST /tokens``, ``POST /connect/{ns}/{id}/mcp`` and the ``/connect`` CRUD routes,
    faulted or not; ``faults_applied`` counts requests an injected fault applied to
    (``faults.py``). Flat, like the other counters, so every value is an integer.
    """

    tokens_minted: int = 0
    tokens_rejected: int = 0
    connections: int = 0
    requests_unauthorized: int = 0
    requests_forbidden: int = 0
    mcp_allowed: int = 0
    mcp_denied: int = 0
    mcp_forwarded: int = 0
    received_tokens: int = 0
    received_mcp: int = 0
    received_connections: int = 0
    faults_applied: int = 0


@dataclass(slots=True)
class EmulatorState:
    """Everything one emulator app owns. ``api_key`` is a secret: never log or return it.

    ``exempt_lifecycle``: whether ``initialize``, ``ping`` and ``notifications/*`` skip
    ``rpcReqMatch`` at the MCP endpoint (OPEN switch in SMITHERY-SEMANTICS.md, off by default).
    """

    api_key: str = field(repr=False)
    codec: TokenCodec
    clock: Clock
    exempt_lifecycle: bool = False
    owned_namespaces: frozenset[str] = frozenset()
    """The namespaces the API key owns: the only ones connections can be written in."""
    oauth_hosts: tuple[str, ...] = DEFAULT_OAUTH_HOSTS
    """Connections whose host contains one of these are ``auth_required``."""
    input_hosts: tuple[str, ...] = DEFAULT_INPUT_HOSTS
    """Connections whose host contains one of these are ``input_required`` until they carry
    the inputs ``connection.INPUT_PROFILE`` asks for."""
    stats: Stats = field(default_factory=Stats)
    connections: ConnectionStore = field(default_factory=ConnectionStore)
    oracle: RpcMatchOracle = field(default_factory=RpcMatchOracle)
    relay: McpRelay = field(default_factory=McpRelay)
    faults: Faults = field(default_factory=Faults)

    def now_ms(self) -> int:
        return to_epoch_ms(self.clock())

    def authenticate(self, authorization: str | None) -> Principal:
        return authenticate(
            authorization, api_key=self.api_key, codec=self.codec, now_ms=self.now_ms()
        )

    def snapshot_stats(self) -> Stats:
        received = self.faults.received
        return msgspec.structs.replace(
            self.stats,
            connections=len(self.connections),
            received_tokens=received["tokens"],
            received_mcp=received["mcp"],
            received_connections=received["connections"],
            faults_applied=self.faults.applied,
        )

    def reset(self) -> None:
        """Zero the counters, drop every connection and clear every fault (releasing the
        requests faults hold)."""
        self.stats = Stats()
        self.connections.clear()
        self.faults.reset()

    async def aclose(self) -> None:
        """Drop requests faults hold, stop the node oracle and close the relay's connections
        (Litestar ``on_shutdown``)."""
        self.faults.close()
        try:
            await self.oracle.aclose()
        finally:
            await self.relay.aclose()


EmulatorDependency: TypeAlias = NamedDependency[EmulatorState]
"""How handlers ask for the state: a parameter named ``emulator`` of this type."""
