"""The systems under test, started once per harness run: emulator, broker and baseline.

The emulator and the broker are separate ``broker`` processes (``broker emulator`` and
``broker serve``, configured only through ``BROKER_*`` variables); the baseline is
``python -m bench.baseline`` answering with the broker's real response to the reference JWT, so
both apps send bodies of the same size and shape. Every server is stopped by the caller's
``ExitStack``, whatever happens.
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

    @property
    def servers(self) -> tuple[Server, ...]:
        return (self.emulator, self.broker, self.baseline)

    def ensure_running(self) -> None:
        for server in self.servers:
            server.ensure_running()

    def tokens_minted(self) -> int:
        """The emulator's ``tokens_minted`` counter."""
        try:
            with httpx.Client(trust_env=False, timeout=STARTUP_TIMEOUT_SECONDS) as client:
                response = client.get(f"{self.emulator.url}/_emulator/stats")
                response.raise_for_status()
                return int(response.json()["tokens_minted"])
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            raise HarnessError(f"cannot read the emulator's stats: {exc!r}") from None


def broker_command() -> str:
    path = Path(sys.executable).parent / "broker"
    if not path.exists():
        raise HarnessError(f"{path} not found: install the project first (make install)")
    return str(path)


def broker_env(identity: Identity, emulator_url: str) -> dict[str, str]:
    return {
        "BROKER_POLICIES_DIR": str(ROOT / "policies"),
        "BROKER_SMITHERY_BASE_URL": emulator_url,
        "BROKER_SMITHERY_API_KEY": API_KEY,
        "BROKER_AUTH_ISSUER": ISSUER,
        "BROKER_AUTH_AUDIENCE": AUDIENCE,
        "BROKER_AUTH_JWKS_FILE": str(identity.jwks_path),
        "BROKER_AUTH_ALGORITHMS": ALGORITHM,
    }


def post_token(url: str, jwt: str) -> httpx.Response:
    try:
        with httpx.Client(trust_env=False, timeout=STARTUP_TIMEOUT_SECONDS) as client:
            return client.post(f"{url}{TOKEN_PATH}", headers={"Authorization": f"Bearer {jwt}"})
    except httpx.HTTPError as exc:
        raise HarnessError(f"POST {url}{TOKEN_PATH} failed: {exc!r}") from None


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


def start_stack(exits: contextlib.ExitStack, work_dir: Path, identity: Identity, jwt: str) -> Stack:
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
        env=broker_env(identity, emulator_server.url),
    )
    exits.callback(broker_server.stop)
    emulator_server.check("/health")
    broker_server.check("/readyz")
    reply = _token_reply(broker_server, jwt)
    body_file = work_dir / "baseline-body.json"
    body_file.write_bytes(reply)
    baseline_server = start_server(
        "baseline",
        [sys.executable, "-m", "bench.baseline", "--body-file", str(body_file)],
        log_dir=work_dir,
        cwd=ROOT,
    )
    exits.callback(baseline_server.stop)
    baseline_server.check("/livez")
    baseline_reply = _token_reply(baseline_server, jwt)
    if len(baseline_reply) != len(reply):
        raise HarnessError(
            f"baseline body is {len(baseline_reply)} bytes, the broker's {len(reply)}: "
            "not comparable"
        )
    return Stack(emulator_server, broker_server, baseline_server, json.loads(reply))
