"""The dev console (``GET /dev/`` and its files) in dev mode: strict CSP, nothing inline, no
secrets in the page, and only the console's own files are served."""

from __future__ import annotations

import re
from collections.abc import Iterator
from html.parser import HTMLParser
from typing import Any

import pytest
from litestar.testing import TestClient

from broker.app import create_app
from broker.config import PoliciesSettings, Secret, Settings, SmitherySettings
from broker.routes.dev import CONSOLE_CSP
from tests.inprocess import ROOT, SIGNER

API_KEY = "sk-dev-console-KEY-1b2c"


@pytest.fixture
def dev() -> Iterator[TestClient[Any]]:
    settings = Settings(
        policies=PoliciesSettings(dir=str(ROOT / "policies")),
        smithery=SmitherySettings(base_url="http://emulator.invalid", api_key=Secret(API_KEY)),
    )
    with TestClient(create_app(settings, dev_signer=SIGNER)) as client:
        yield client


class Page(HTMLParser):
    """What the CSP cares about in the console's HTML."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[dict[str, str | None]] = []
        self.inline_script = False
        self.style_elements = 0
        self.style_attributes = 0
        self.event_handlers: list[str] = []
        self.stylesheets: list[str | None] = []
        self.landmarks: set[str] = set()
        self.live_regions = 0
        self.ids: set[str] = set()
        self.label_targets: list[str | None] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "script":
            self.scripts.append(attributes)
            self._in_script = True
        if tag == "style":
            self.style_elements += 1
        if tag == "link" and attributes.get("rel") == "stylesheet":
            self.stylesheets.append(attributes.get("href"))
        if tag in {"main", "header", "nav", "footer"}:
            self.landmarks.add(tag)
        if tag == "label":
            self.label_targets.append(attributes.get("for"))
        if attributes.get("aria-live") or attributes.get("role") in {"status", "alert"}:
            self.live_regions += 1
        if "id" in attributes and attributes["id"] is not None:
            self.ids.add(attributes["id"])
        self.style_attributes += "style" in attributes
        self.event_handlers += [name for name in attributes if name.startswith("on")]

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline_script = True


def test_console_served_with_strict_csp(dev: TestClient[Any]) -> None:
    response = dev.get("/dev/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    csp = response.headers["content-security-policy"]
    assert csp == CONSOLE_CSP
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == "'self'"
    assert directives["style-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert "unsafe" not in csp
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"


def test_readme_documents_the_console_csp() -> None:
    assert f"`Content-Security-Policy: {CONSOLE_CSP}`" in (ROOT / "README.md").read_text()


def test_console_page_has_nothing_inline(dev: TestClient[Any]) -> None:
    page = Page()
    page.feed(dev.get("/dev/").text)
    assert page.scripts == [{"type": "module", "src": "/dev/console.js"}]
    assert not page.inline_script
    assert page.style_elements == 0
    assert page.style_attributes == 0
    assert page.event_handlers == []
    assert page.stylesheets == ["/dev/console.css"]


def test_console_page_is_accessible_by_structure(dev: TestClient[Any]) -> None:
    page = Page()
    page.feed(dev.get("/dev/").text)
    assert {"main", "header"} <= page.landmarks
    assert page.live_regions >= 1
    assert page.label_targets, "form fields have labels"
    missing = [target for target in page.label_targets if target not in page.ids]
    assert missing == [], "every label points at an existing control"


def test_console_carries_no_secret(dev: TestClient[Any]) -> None:
    for path in ("/dev/", "/dev/console.js", "/dev/console.css"):
        body = dev.get(path).text
        assert API_KEY not in body
        assert not re.search(r"eyJ[A-Za-z0-9_-]{10,}\.", body), f"a JWT in {path}"
        assert "localStorage" not in body
        assert "sessionStorage" not in body


@pytest.mark.parametrize(
    ("path", "media_type"),
    [
        ("/dev/console.js", "text/javascript; charset=utf-8"),
        ("/dev/console.css", "text/css; charset=utf-8"),
    ],
)
def test_console_files_served(dev: TestClient[Any], path: str, media_type: str) -> None:
    response = dev.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"] == media_type
    assert response.headers["content-security-policy"] == CONSOLE_CSP


def test_console_script_uses_the_served_client(dev: TestClient[Any]) -> None:
    script = dev.get("/dev/console.js").text
    assert 'from "/v1/client.js"' in script
    assert ".innerHTML" not in script
    assert "insertAdjacentHTML" not in script
    assert dev.get("/v1/client.js").status_code == 200


@pytest.mark.parametrize(
    "path",
    ["/dev/index.html", "/dev/client.js", "/dev/..%2Fclient.js", "/dev/console.mjs", "/dev/x"],
)
def test_only_the_console_files_are_served(dev: TestClient[Any], path: str) -> None:
    assert dev.get(path).status_code == 404


def test_a_login_body_that_is_not_utf8_is_a_400(dev: TestClient[Any]) -> None:
    response = dev.post(
        "/dev/login", content=b'{"sub":"\xff"}', headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_json"


def test_login_claims_nested_thousands_deep_are_a_400(dev: TestClient[Any]) -> None:
    deep = b'{"sub":"alice","x":' + b"[" * 7000 + b"]" * 7000 + b"}"
    response = dev.post("/dev/login", content=deep, headers={"Content-Type": "application/json"})
    assert response.status_code == 400  # was a RecursionError: 500
    assert response.json()["code"] == "invalid_json"
