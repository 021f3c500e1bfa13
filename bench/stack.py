"""The systems under test, started once per harness run: emulator, broker and baseline.

The emulator and the broker are separate ``broker`` processes (``broker emulator`` and
``broker serve``, configured only through ``BROKER_*`` variables); the baseline is
``python -m bench.baseline`` answering with the broker's real response to the reference JWT, so
both apps send bodies of the same size and shape. Every server is stopped by the caller's
``ExitStack``, whatever happens. Scenarios that need one more server (R3's precheck baseline,
R4's demo MCP server) start it with ``start_baseline``/``start_demo_mcp`` on their own
``ExitStack``, so it is stopped when the scenario ends.
"""

from __future__ import annotations

import contextlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx

from bench.errors import HarnessError
from bench.identity import ALGORITHM, AUDIENCE, ISSUER, Identity
from bench.plan import Plan
from bench.processes import STARTUP_TIMEOUT_SECONDS, Server, start_server

ROOT: Final = Path(__file__).resolve().parents[1]
API_KEY: Final = "sk-bench-emulator-only-7c1e"
TOKEN_PATH: Final = "/v1/tokens"
RESPONSE_FIELDS: Final = ("token", "expiresAt", "rules", "policyRevision")


@dataclass
class Stack:
    emulator: Server
    broker: Server
    baseline: Server
    token_response: dict[str, Any]
    """The broker's reply to the reference JWT (the baseline answers these very bytes)."""
    token_body_file: Path
    """That reply, as given to the baseline (``--body-file``)."""

    @property
    def servers(self) -> tuple[Server, ...]:
        return (self.emulator, self.broker, self.baseline)

    def ensure_running(self) -> None:
        for server in self.servers:
            server.ensure_running()

    def emulator_stats(self) -> dict[str, int]:
        """The emulator's counters (``tokens_minted``, ``mcp_forwarded``, ``mcp_denied``, ...)."""
        try:
            with httpx.Client(trust_env=False, timeout=STARTUP_TIMEOUT_SECONDS) as client:
                response = client.get(f"{self.emulator.url}/_emulator/stats")
                response.raise_for_status()
                return {str(k): int(v) for k, v in response.json().items()}
        except (httpx.HTTPError, AttributeError, TypeError, ValueError) as exc:
            raise HarnessError(f"cannot read the emulator's stats: {exc!r}") from None

    def tokens_minted(self) -> int:
        """The emulator's ``tokens_minted`` counter."""
        try:
            return self.emulator_stats()["tokens_minted"]
        except KeyError:
            raise HarnessError("the emulator's stats have no tokens_minted") from None


def broker_command() -> str:
    path = Path(sys.executable).parent / "broker"
    if not path.exists():
        raise HarnessError(f"{path} not found: install the project first (make install)")
    return str(path)


TOKEN_CACHE_HEADROOM: Final = 10_000
"""Service-token cache entries beyond R2's pool: R1's, R4's and R5's users."""
UNREACHABLE_RATE: Final = 1_000_000
"""Requests per user per second (and burst) no benchmark run comes near."""


def broker_env(identity: Identity, emulator_url: str, plan: Plan) -> dict[str, str]:
    return {
        "BROKER_POLICIES_DIR": str(ROOT / "policies"),
        "BROKER_SMITHERY_BASE_URL": emulator_url,
        "BROKER_SMITHERY_API_KEY": API_KEY,
        "BROKER_AUTH_ISSUER": ISSUER,
        "BROKER_AUTH_AUDIENCE": AUDIENCE,
        "BROKER_AUTH_JWKS_FILE": str(identity.jwks_path),
        "BROKER_AUTH_ALGORITHMS": ALGORITHM,
        # R2: every user of the JWT pool keeps its service token (no mint while measuring), and
        # the pool is larger than the verified-JWT cache (every request verifies a signature).
        "BROKER_CACHE_MAX_ENTRIES": str(plan.jwt_pool + TOKEN_CACHE_HEADROOM),
        "BROKER_AUTH_VERIFIED_CACHE_ENTRIES": str(plan.verified_cache_entries),
        # R3 and R4 send thousands of requests per second for one user, R4 dozens at once:
        # the per-user limits stay on (their bookkeeping is measured) but so high that they
        # never refuse.
        "BROKER_LIMITS_REQUEST_RATE_PER_SECOND": str(UNREACHABLE_RATE),
        "BROKER_LIMITS_REQUEST_BURST": str(UNREACHABLE_RATE),
        "BROKER_LIMITS_MCP_CALLS_PER_USER": str(UNREACHABLE_RATE),
    }


def post(
    url: str, *, authorization: str, body: str = "", headers: dict[str, str] | None = None
) -> httpx.Response:
    """One POST (read in full) to a loopback server, for checks outside the measured runs."""
    sent = {"Authorization": authorization, **(headers or {})}
    if body:
        sent["Content-Type"] = "application/json"
    try:
        with httpx.Client(trust_env=False, timeout=STARTUP_TIMEOUT_SECONDS) as client:
            return client.post(url, content=body.encode(), headers=sent)
    except httpx.HTTPError as exc:
        raise HarnessError(f"POST {url} failed: {exc!r}") from None


def post_token(url: str, jwt: str) -> httpx.Response:
    return post(f"{url}{TOKEN_PATH}", authorization=f"Bearer {jwt}")


def _token_reply(server: Server, jwt: str) -> bytes:
    response = post_token(server.url, jwt)
    if response.status_code != 200:
        raise HarnessError(
            f"{server.name}: POST {TOKEN_PATH} answered {response.status_code}: "
            f"{response.text[:500]}\n{server.output_tail()}"
        )
    body = response.json()
    if not isinstance(body, dict) or tuple(body) != RESPONSE_FIELDS:
        raise HarnessError(f"{server.name}: unexpected token response fields: {list(body)}")
    return response.content


def start_baseline(
    exits: contextlib.ExitStack, work_dir: Path, name: str, args: list[str]
) -> Server:
    """A ``python -m bench.baseline`` process (stopped by ``exits``), checked with ``/livez``."""
    server = start_server(
        name, [sys.executable, "-m", "bench.baseline", *args], log_dir=work_dir, cwd=ROOT
    )
    exits.callback(server.stop)
    server.check("/livez")
    return server


def start_demo_mcp(exits: contextlib.ExitStack, work_dir: Path) -> Server:
    """The demo MCP server (``python -m bench.demo_mcp``), stopped by ``exits``.

    It has no health route: the caller's first MCP request waits in the socket's backlog until
    the server accepts it.
    """
    server = start_server(
        "demo-mcp", [sys.executable, "-m", "bench.demo_mcp"], log_dir=work_dir, cwd=ROOT
    )
    exits.callback(server.stop)
    return server


def start_stack(
    exits: contextlib.ExitStack, work_dir: Path, identity: Identity, jwt: str, plan: Plan
) -> Stack:
    """Start and check the three servers; ``jwt`` is the reference JWT (it warms the cache)."""
    broker = broker_command()
    emulator_server = start_server(
        "emulator", [broker, "emulator", "--api-key", API_KEY], log_dir=work_dir, cwd=ROOT
    )
    exits.callback(emulator_server.stop)
    broker_server = start_server(
        "broker",
        [broker, "serve"],
        log_dir=work_dir,
        cwd=ROOT,
        env=broker_env(identity, emulator_server.url, plan),
    )
    exits.callback(broker_server.stop)
    emulator_server.check("/health")
    broker_server.check("/readyz")
    reply = _token_reply(broker_server, jwt)
    body_file = work_dir / "baseline-body.json"
    body_file.write_bytes(reply)
    baseline_server = start_baseline(
        exits,
        work_dir,
        "baseline",
        ["--body-file", str(body_file), "--jwks-file", str(identity.jwks_path)],
    )
    baseline_reply = _token_reply(baseline_server, jwt)
    if len(baseline_reply) != len(reply):
        raise HarnessError(
            f"baseline body is {len(baseline_reply)} bytes, the broker's {len(reply)}: "
            "not comparable"
        )
    return Stack(emulator_server, broker_server, baseline_server, json.loads(reply), body_file)
