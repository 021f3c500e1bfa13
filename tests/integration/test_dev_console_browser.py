"""The dev console in a real browser: ``broker dev`` as a process, Debian's headless Chromium
driven by Playwright (``tests/browser/console_flow.mjs``) clicking through the whole flow, with
axe-core's WCAG 2.x A/AA and best-practice rules checked on the page at every step.

Screenshots of every step are kept in ``test-artifacts/browser/`` (gitignored) for people and CI
to look at. The broker's audit log is read afterwards as an independent witness that the allowed
and the denied calls really went through its guarded proxy.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import BROKER, ROOT
from tests.integration.test_dev_mode import free_port, pump, read_until

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
BROWSER_DIR = ROOT / "tests" / "browser"
ARTIFACTS = ROOT / "test-artifacts" / "browser"
FLOW_TIMEOUT_SECONDS = 180
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EXPECTED_STEPS = [
    "alice-signed-in",
    "alice-token",
    "alice-connections",
    "alice-tools",
    "allowed-call",
    "denied-call",
    "bob-cannot-see-alice",
]


@dataclass
class DevBroker:
    url: str
    popen: subprocess.Popen[str]
    reader: threading.Thread
    lines: queue.Queue[str]

    def stop(self) -> list[str]:
        """Stop the process (idempotent) and return all the output it had not yet read."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGINT)
            self.popen.wait(timeout=20)
        self.reader.join(timeout=20)
        out = []
        while not self.lines.empty():
            out.append(self.lines.get_nowait())
        return out


@pytest.fixture
def dev_broker() -> Iterator[DevBroker]:
    """A fresh ``broker dev`` on free loopback ports."""
    port, upstream_port, mcp_port = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    env["BROKER_TELEMETRY_SUBJECT"] = "raw"  # the audit log names users and their connections
    popen = subprocess.Popen(
        [
            BROKER,
            "dev",
            "--port",
            str(port),
            "--upstream-port",
            str(upstream_port),
            "--mcp-port",
            str(mcp_port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
        env=env,
    )
    reader, lines = pump(popen)
    dev = DevBroker(f"http://127.0.0.1:{port}", popen, reader, lines)
    try:
        banner = read_until(lines, "is running")
        assert f"{dev.url}/dev/" in banner, "the banner points newcomers at the console"
        yield dev
    finally:
        dev.stop()
        assert popen.stdout is not None
        popen.stdout.close()


def audit_events(output: list[str]) -> list[dict[str, Any]]:
    """The audit log's JSON lines (one per decision) among the process's output."""
    return [
        record
        for record in (json.loads(line) for line in output if line.startswith("{"))
        if "event" in record
    ]


def test_console_flow_in_headless_chromium(dev_broker: DevBroker) -> None:
    node = shutil.which("node")
    assert node is not None, "node is required (see .ci/run)"
    assert CHROMIUM.exists(), "Debian's chromium is required (see .ci/run)"
    assert (BROWSER_DIR / "node_modules" / "playwright-core").is_dir(), "run make test-deps"
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)

    result = subprocess.run(
        [
            node,
            str(BROWSER_DIR / "console_flow.mjs"),
            "--url",
            dev_broker.url,
            "--out",
            str(ARTIFACTS),
            "--chromium",
            str(CHROMIUM),
        ],
        capture_output=True,
        text=True,
        timeout=FLOW_TIMEOUT_SECONDS,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:] + result.stdout[-2000:]
    steps = json.loads(result.stdout.strip().splitlines()[-1])["steps"]
    assert [step["step"] for step in steps] == EXPECTED_STEPS
    for step in steps:
        shot = Path(step["screenshot"])
        assert shot.parent == ARTIFACTS
        assert shot.read_bytes()[:8] == PNG_MAGIC, f"{shot} is not a PNG"
        assert step["accessibilityViolations"] == 0
    assert not (ARTIFACTS / "failure.png").exists()

    # What the broker itself recorded: the two calls went through the proxy, one allowed and one
    # denied, and bob's look-up of alice's connection was refused.
    events = audit_events(dev_broker.stop())
    proxied = [
        (e["connection"], e["tool"], e["result"])
        for e in events
        if e["event"] == "proxy.decision" and e.get("method") == "tools/call"
    ]
    assert proxied == [
        ("alice-github", "search_issues", "allow"),
        ("support-github", "delete_repository", "deny"),
    ]
    reads = [(e["connection"], e["result"]) for e in events if e["event"] == "connection.read"]
    assert reads == [("alice-github", "deny")]
