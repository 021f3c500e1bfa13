"""A real Debian ``redis-server`` on a loopback port, for the scale-out tests.

No persistence (``--save '' --appendonly no``), its own temporary directory, a password (so the
URL the broker gets carries one, as in production). Startup is awaited by reading the server's
own log line (polled with a deadline); ``kill`` then ``start`` on the same port is an outage.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

READY_LINE = "Ready to accept connections"
STARTUP_TIMEOUT_SECONDS = 20.0
PASSWORD = "redis-PASSWORD-5d1e"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log = directory / "redis.log"

    @property
    def url(self) -> str:
        return f"redis://:{PASSWORD}@127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None, "redis-server is required (apt-get install redis-server)"
        self.log.write_text("")
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                "--requirepass",
                PASSWORD,
                "--logfile",
                str(self.log),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # Await the server's own "ready" log line (polled with a deadline).
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if READY_LINE in self.log.read_text(errors="replace"):
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.01)
        raise AssertionError("redis-server did not start:\n" + self.log.read_text(errors="replace"))

    def kill(self) -> None:
        """SIGKILL: an outage, not a shutdown."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=15)
        self.process = None

    stop = kill
