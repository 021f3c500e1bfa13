"""``GET /v1/client.js`` and ``/v1/client.d.ts`` in ``broker serve`` mode (no dev signer), and
the dev console's absence there."""

from __future__ import annotations

import fnmatch
import tomllib
from collections.abc import Iterator
from importlib import resources
from typing import Any

import pytest
from litestar.testing import TestClient

from broker.app import PreflightProblems, create_app, guarded
from broker.config import CorsSettings, PoliciesSettings, Secret, Settings, SmitherySettings
from broker.routes.static import etag_matches
from tests.inprocess import ROOT

APP_ORIGIN = "https://app.example.com"


@pytest.fixture
def served() -> Iterator[TestClient[Any]]:
    """The production app, as ``broker serve`` builds it: no dev signer; one app origin."""
    settings = Settings(
        policies=PoliciesSettings(dir=str(ROOT / "policies")),
        smithery=SmitherySettings(base_url="http://emulator.invalid", api_key=Secret("k")),
        cors=CorsSettings(origins=(APP_ORIGIN,)),
    )
    with TestClient(create_app(settings)) as client:
        yield client


def test_client_js_served_as_javascript(served: TestClient[Any]) -> None:
    response = served.get("/v1/client.js")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/javascript; charset=utf-8"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["cache-control"] == "no-cache"
    assert response.content == resources.files("broker").joinpath("static/client.js").read_bytes()
    assert b"export function createBrokerClient" in response.content


def test_client_types_served(served: TestClient[Any]) -> None:
    response = served.get("/v1/client.d.ts")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/typescript; charset=utf-8"
    assert b"export declare function createBrokerClient" in response.content


def test_client_js_revalidates_with_etag(served: TestClient[Any]) -> None:
    first = served.get("/v1/client.js")
    etag = first.headers["etag"]
    assert etag.startswith('"')
    assert etag.endswith('"')
    again = served.get("/v1/client.js", headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == etag
    stale = served.get("/v1/client.js", headers={"If-None-Match": '"something-else"'})
    assert stale.status_code == 200
    assert stale.content == first.content


@pytest.mark.parametrize(
    ("header", "matches"),
    [
        (None, False),
        ("", False),
        ('"abc"', True),
        ('W/"abc"', True),
        ('"x", "abc"', True),
        ("*", True),
        ('"abcd"', False),
        ("abc", False),
    ],
)
def test_etag_matching(header: str | None, matches: bool) -> None:
    assert etag_matches(header, '"abc"') is matches


@pytest.mark.parametrize(
    "path", ["/dev/", "/dev", "/dev/console.js", "/dev/console.css", "/dev/login"]
)
def test_dev_console_absent_in_serve_mode(served: TestClient[Any], path: str) -> None:
    response = served.get(path)
    assert response.status_code in (404, 405)
    assert response.status_code == 404 or path == "/dev/login"
    assert "content-security-policy" not in response.headers
    assert served.post("/dev/login", json={"sub": "a"}).status_code == 404


def test_client_importable_from_the_app_origin(served: TestClient[Any]) -> None:
    """A cross-origin ``import`` is a CORS request: allowed for the configured app origin only."""
    allowed = served.get("/v1/client.js", headers={"Origin": APP_ORIGIN})
    assert allowed.headers["access-control-allow-origin"] == APP_ORIGIN
    other = served.get("/v1/client.js", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers


def test_client_can_read_retry_after_and_date_cross_origin(served: TestClient[Any]) -> None:
    response = served.post("/v1/tokens", headers={"Origin": APP_ORIGIN})
    assert response.status_code == 401
    exposed = {
        h.strip().lower() for h in response.headers["access-control-expose-headers"].split(",")
    }
    assert {"retry-after", "date", "www-authenticate"} <= exposed
    assert "access-control-allow-credentials" not in response.headers


def test_every_static_file_ships_in_the_wheel() -> None:
    """A non-editable install has only what ``package-data`` names: each file must match a glob
    (setuptools globs do not cross directories, hence the check per file)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["broker"]
    package = ROOT / "broker"
    files = [f for f in (package / "static").rglob("*") if f.is_file()]
    assert len(files) >= 5
    for file in files:
        relative = file.relative_to(package).as_posix()
        assert any(
            fnmatch.fnmatchcase(relative, p) and relative.count("/") == p.count("/")
            for p in patterns
        ), f"{relative} is not in [tool.setuptools.package-data] broker"


def test_client_assets_vary_by_origin_for_every_origin(served: TestClient[Any]) -> None:
    """An answer without Access-Control-Allow-Origin (no Origin sent) must not be handed by a
    shared cache to the app's cross-origin import: ``Vary: Origin`` on every answer."""
    for headers in ({}, {"Origin": APP_ORIGIN}, {"Origin": "https://evil.example"}):
        response = served.get("/v1/client.js", headers=headers)
        assert response.headers["vary"] == "Origin", headers


def test_oversized_headers_refusal_is_readable_by_the_app_origin() -> None:
    """The 431 comes from outside Litestar's CORS middleware; without the CORS headers the
    browser reported a network error, and the client retried a refusal that cannot change."""
    settings = Settings(
        policies=PoliciesSettings(dir=str(ROOT / "policies")),
        smithery=SmitherySettings(base_url="http://emulator.invalid", api_key=Secret("k")),
        cors=CorsSettings(origins=(APP_ORIGIN,)),
    )
    with TestClient(guarded(create_app(settings))) as client:
        padding = {"X-Padding": "p" * 40_000}
        allowed = client.post("/v1/tokens", headers={"Origin": APP_ORIGIN, **padding})
        other = client.post("/v1/tokens", headers={"Origin": "https://evil.example", **padding})
    assert allowed.status_code == 431
    assert allowed.headers["access-control-allow-origin"] == APP_ORIGIN
    assert allowed.headers["vary"] == "Origin"
    assert other.status_code == 431
    assert "access-control-allow-origin" not in other.headers


def test_a_refused_cors_preflight_is_problem_details() -> None:
    """Litestar's CORS middleware answers a refused preflight in plain text; the broker's
    errors are problem details with a stable code, whatever layer refuses."""
    settings = Settings(
        policies=PoliciesSettings(dir=str(ROOT / "policies")),
        smithery=SmitherySettings(base_url="http://emulator.invalid", api_key=Secret("k")),
        cors=CorsSettings(origins=(APP_ORIGIN,)),
    )
    preflight = {"Access-Control-Request-Method": "POST"}
    with TestClient(guarded(create_app(settings))) as client:
        allowed = client.options("/v1/tokens", headers={"Origin": APP_ORIGIN, **preflight})
        other = client.options(
            "/v1/tokens", headers={"Origin": "https://evil.example", **preflight}
        )
        bad_header = client.options(
            "/v1/tokens",
            headers={
                "Origin": APP_ORIGIN,
                "Access-Control-Request-Method": "PATCH",
                "Access-Control-Request-Headers": "X-Secret-Thing",
            },
        )
    assert allowed.status_code == 204
    assert allowed.headers["access-control-allow-origin"] == APP_ORIGIN
    assert other.status_code == 400
    assert other.headers["content-type"] == "application/problem+json"
    assert other.headers["cache-control"] == "no-store"
    assert other.json()["code"] == "cors_rejected"
    assert other.json()["detail"].startswith("Not allowed by the broker's CORS settings: origin (")
    assert "access-control-allow-origin" not in other.headers
    assert bad_header.status_code == 400
    assert bad_header.json()["code"] == "cors_rejected"
    assert ": method, headers (" in bad_header.json()["detail"]
    assert "X-Secret-Thing" not in bad_header.text


async def test_preflight_problems_passes_on_any_other_400_as_it_was() -> None:
    """Only Litestar's plain-text CORS refusal is rewritten: another 400 on an OPTIONS with an
    Origin keeps its status, headers and body; an empty Origin is not a preflight at all."""
    other = [
        {
            "type": "http.response.start",
            "status": 400,
            "headers": [(b"content-type", b"application/problem+json"), (b"retry-after", b"3")],
        },
        {"type": "http.response.body", "body": b'{"code":', "more_body": True},
        {"type": "http.response.body", "body": b'"x"}', "more_body": False},
    ]

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        for message in other:
            await send(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    for origin in (APP_ORIGIN.encode(), b""):
        sent.clear()
        scope = {"type": "http", "method": "OPTIONS", "headers": [(b"origin", origin)]}
        await PreflightProblems(inner)(scope, receive, send)  # type: ignore[arg-type]
        assert sent == other, origin
