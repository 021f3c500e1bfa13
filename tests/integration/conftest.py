"""Real servers on loopback: the emulator and the broker as separate processes.

Each server gets a socket that the test binds and listens on *before* the process starts
(``--fd``), so a request sent right away waits in the kernel's backlog: there is nothing to poll
and no sleep anywhere.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BROKER = str(Path(sys.executable).parent / "broker")
API_KEY = "sk-integration-KEY-7f3a9c"
ISSUER = "https://idp.integration.test/"
AUDIENCE = "token-broker-tests"
STARTUP_TIMEOUT_SECONDS = 60.0


def listening_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(512)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()
    return f"http://{host}:{port}"


@dataclass
class Process:
    """A server process with its output captured to files (read after the test)."""

    name: str
    popen: subprocess.Popen[bytes]
    url: str
    out_path: Path
    err_path: Path
    sock: socket.socket | None = None

    def output(self) -> str:
        return self.out_path.read_text(errors="replace") + self.err_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=15)
        if self.sock is not None:
            self.sock.close()


def spawn(
    name: str,
    args: list[str],
    tmp: Path,
    *,
    env: dict[str, str] | None = None,
    sock: socket.socket | None = None,
) -> Process:
    out_path, err_path = tmp / f"{name}.out", tmp / f"{name}.err"
    pass_fds: tuple[int, ...] = ()
    if sock is not None:
        args = [*args, "--fd", str(sock.fileno())]
        pass_fds = (sock.fileno(),)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    with out_path.open("wb") as out, err_path.open("wb") as err:
        popen = subprocess.Popen(
            [BROKER, *args],
            stdout=out,
            stderr=err,
            pass_fds=pass_fds,
            env={**base_env, **(env or {})},
            cwd=ROOT,
        )
    return Process(name, popen, url_of(sock) if sock else "", out_path, err_path, sock)


@dataclass
class Keys:
    """The test identity provider's signing key and JWKS file."""

    private_key: Any
    jwks_path: Path
    issued: list[str] = field(default_factory=list)

    def jwt(self, sub: str, *, lifetime: int = 600, **claims: Any) -> str:
        now = int(time.time())
        payload = {"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "iat": now, "exp": now + lifetime}
        payload.update(claims)
        token = jwt.encode(payload, self.private_key, algorithm="RS256", headers={"kid": "k1"})
        self.issued.append(token)
        return token


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private_key.public_key()))
    jwk.update(kid="k1", use="sig", alg="RS256")
    path = tmp_path_factory.mktemp("idp") / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk]}))
    return Keys(private_key, path)


@pytest.fixture(scope="session")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    tmp = tmp_path_factory.mktemp("emulator")
    process = spawn("emulator", ["emulator", "--api-key", API_KEY], tmp, sock=listening_socket())
    yield process
    process.stop()


def broker_env(keys: Keys, upstream_url: str, **overrides: str) -> dict[str, str]:
    env = {
        "BROKER_POLICIES_DIR": str(ROOT / "policies"),
        "BROKER_SMITHERY_BASE_URL": upstream_url,
        "BROKER_SMITHERY_API_KEY": API_KEY,
        "BROKER_AUTH_ISSUER": ISSUER,
        "BROKER_AUTH_AUDIENCE": AUDIENCE,
        "BROKER_AUTH_JWKS_FILE": str(keys.jwks_path),
        "BROKER_AUTH_ALGORITHMS": "RS256",
    }
    env.update(overrides)
    return env


@pytest.fixture(scope="session")
def broker(
    tmp_path_factory: pytest.TempPathFactory, keys: Keys, emulator: Process
) -> Iterator[Process]:
    tmp = tmp_path_factory.mktemp("broker")
    process = spawn(
        "broker", ["serve"], tmp, env=broker_env(keys, emulator.url), sock=listening_socket()
    )
    yield process
    process.stop()


@pytest.fixture
def start_broker(tmp_path: Path, keys: Keys) -> Iterator[Any]:
    """Start extra brokers with custom settings; all are stopped after the test."""
    started: list[Process] = []

    def start(upstream_url: str, **overrides: str) -> Process:
        process = spawn(
            f"broker{len(started)}",
            ["serve"],
            tmp_path,
            env=broker_env(keys, upstream_url, **overrides),
            sock=listening_socket(),
        )
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
async def http() -> Any:
    async with httpx.AsyncClient(timeout=STARTUP_TIMEOUT_SECONDS, trust_env=False) as client:
        yield client


@pytest.fixture
async def fresh_emulator(emulator: Process, http: httpx.AsyncClient) -> Process:
    """The shared emulator with its counters and connections reset."""
    response = await http.post(f"{emulator.url}/_emulator/reset")
    assert response.status_code == 200
    return emulator


@pytest.fixture
def otlp_receiver(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real OTLP/HTTP receiver process (``tests/otlp_receiver.py``) on a pre-bound socket;
    yields its URL and the file it writes received spans to."""
    sock = listening_socket()
    spans_file = tmp_path / "spans.jsonl"
    receiver = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "tests" / "otlp_receiver.py"),
            "--fd",
            str(sock.fileno()),
            "--out",
            str(spans_file),
        ],
        pass_fds=(sock.fileno(),),
    )
    try:
        yield url_of(sock), spans_file
    finally:
        receiver.terminate()
        receiver.wait(timeout=15)
        sock.close()
