"""The broker in-process for route tests: real app, real emulator (ASGI transport), dev signer.

Used where a test needs to reach into the app (its clock, its state) or to run many cases
fast; the integration tests run the same pieces as real processes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from litestar.testing import AsyncTestClient

from broker.app import create_app
from broker.config import (
    AdminSettings,
    CorsSettings,
    PoliciesSettings,
    PrecheckSettings,
    Secret,
    Settings,
    SmitherySettings,
)
from broker.emulator import create_emulator_app
from broker.identity import DevSigner
from broker.telemetry import Telemetry

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "sk-inprocess-KEY-42"
SIGNER = DevSigner.generate("https://dev.inprocess.test/", "token-broker-dev")


@dataclass
class Harness:
    client: AsyncTestClient[Any]
    emulator: httpx.AsyncClient
    state: Any

    def jwt(self, sub: str, **claims: Any) -> str:
        return SIGNER.sign({"sub": sub, **claims}, now=self.state.clock(), lifetime_seconds=600)

    def auth(self, sub: str, **claims: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.jwt(sub, **claims)}"}

    async def create_connection(self, namespace: str, connection_id: str, **body: Any) -> None:
        body.setdefault("mcpUrl", "https://mcp.invalid/mcp")
        response = await self.emulator.put(
            f"/connect/{namespace}/{connection_id}",
            json=body,
            headers={"Authorization": f"Bearer {API_KEY}"},
        )
        assert response.status_code in (200, 201), response.text

    async def settle(self) -> None:
        """Run the callbacks the app has queued on its event loop, such as the audit record
        ``Admission.decide`` writes once the request's step ends. The test client serves the
        app on a loop of its own in another thread (a blocking portal), where a call is queued
        behind every callback already there: when it returns, they have run."""
        self.client.blocking_portal.call(asyncio.sleep, 0)


@asynccontextmanager
async def harness(
    policies: Path | None = None,
    *,
    upstream: Callable[[Any], httpx.AsyncBaseTransport] | None = None,
    telemetry: Telemetry | None = None,
    cors_origins: tuple[str, ...] = (),
    admin: AdminSettings | None = None,
    emulator_options: Mapping[str, Any] | None = None,
    **precheck: Any,
) -> AsyncIterator[Harness]:
    """``upstream`` wraps the emulator's ASGI app into the broker's upstream transport;
    ``telemetry`` traces both the broker and the emulator with its provider;
    ``emulator_options`` are more ``create_emulator_app`` arguments (``owned_namespaces``,
    ``clock``...)."""
    emulator_app = create_emulator_app(
        api_key=API_KEY,
        tracer_provider=telemetry.provider if telemetry else None,
        **(emulator_options or {}),
    )
    transport = (upstream or (lambda app: httpx.ASGITransport(app=app)))(emulator_app)
    settings = Settings(
        policies=PoliciesSettings(dir=str(policies or ROOT / "policies")),
        smithery=SmitherySettings(base_url="http://emulator", api_key=Secret(API_KEY)),
        precheck=PrecheckSettings(**precheck),
        cors=CorsSettings(origins=cors_origins),
        admin=admin or AdminSettings(),
    )
    app = create_app(
        settings,
        dev_signer=SIGNER,
        upstream_transport=transport,
        telemetry=telemetry or Telemetry(),
    )
    async with (
        AsyncTestClient(app) as client,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=emulator_app), base_url="http://emulator"
        ) as emulator,
    ):
        yield Harness(client, emulator, app.state.broker)
