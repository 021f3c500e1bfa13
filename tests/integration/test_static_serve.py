"""``broker serve`` as a process: the browser client is served, the dev console is not."""

from __future__ import annotations

import httpx
import pytest

from tests.integration.conftest import Process

pytestmark = pytest.mark.integration


async def test_client_served_by_broker_serve(broker: Process, http: httpx.AsyncClient) -> None:
    script = await http.get(f"{broker.url}/v1/client.js")
    assert script.status_code == 200
    assert script.headers["content-type"] == "text/javascript; charset=utf-8"
    assert "export function createBrokerClient" in script.text
    types = await http.get(f"{broker.url}/v1/client.d.ts")
    assert types.status_code == 200
    assert "BrokerDeniedError" in types.text
    cached = await http.get(
        f"{broker.url}/v1/client.js", headers={"If-None-Match": script.headers["etag"]}
    )
    assert cached.status_code == 304


@pytest.mark.parametrize("path", ["/dev/", "/dev/console.js", "/dev/console.css"])
async def test_no_dev_console_in_broker_serve(
    broker: Process, http: httpx.AsyncClient, path: str
) -> None:
    response = await http.get(f"{broker.url}{path}")
    assert response.status_code == 404
    assert "content-security-policy" not in response.headers
