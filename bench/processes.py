"""Server processes on inherited loopback sockets: start, check once, stop (always).

The harness binds and listens on ``127.0.0.1`` before starting a server and hands the socket over
with ``--fd``: a request sent right away waits in the kernel's backlog until the server accepts
it, so there is nothing to poll. The parent closes its own copy at once, so a server that dies
makes the next connection fail immediately instead of hanging in the backlog.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import httpx

from bench.errors import HarnessError

LOOPBACK: Final = "127.0.0.1"
BACKLOG: Final = 1024
STARTUP_TIMEOUT_SECONDS: Final = 60.0
STOP_TIMEOUT_SECONDS: Final = 10.0
OUTPUT_TAIL_CHARS: Final = 3000


@dataclass
class Server:
    """One running server: its URL, process and captured output files."""

    name: str
    url: str
    popen: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output_tail(self) -> str:
        """The end of what the server wrote to stderr (and stdout), for error messages."""
        parts = []
        for path in (self.stderr_path, self.stdout_path):
            if path.exists():
                with path.open("rb") as stream:
                    stream.seek(max(0, path.stat().st_size - OUTPUT_TAIL_CHARS))
                    text = stream.read().decode(errors="replace").strip()
                if text:
                    parts.append(f"--- {path.name} (end) ---\n{text}")
        return "\n".join(parts) or "(no output)"

    def cpu_seconds(self) -> float:
        """User + system CPU time the process and its live descendants have used so far.

        From ``/proc/<pid>/stat``; descendants count because the emulator evaluates rpcReqMatch
        in a child ``node`` process (the broker and the baseline have none).
        """
        own = _stat_fields(self.pid)
        if own is None:
            raise HarnessError(self._failure("cannot read its CPU time"))
        ticks = own.cpu_ticks + sum(child.cpu_ticks for child in _descendants(self.pid))
        return ticks / os.sysconf("SC_CLK_TCK")

    def event_loop(self) -> str:
        """``uvloop`` when the process has uvloop's extension loaded, else ``asyncio``.

        A heuristic from ``/proc/<pid>/maps``: uvicorn imports uvloop only to run on it, so a
        server started without it runs on asyncio's default (slower) loop. The harness reports
        it because the baseline runs on uvloop: apps on different loops are not comparable.
        """
        try:
            with open(f"/proc/{self.pid}/maps") as maps:
                return "uvloop" if "/uvloop/" in maps.read() else "asyncio"
        except OSError:
            raise HarnessError(self._failure("cannot read its memory maps")) from None

    def check(self, path: str) -> None:
        """One GET to ``path`` must answer 200; otherwise raise with the server's output."""
        try:
            with httpx.Client(trust_env=False, timeout=STARTUP_TIMEOUT_SECONDS) as client:
                response = client.get(f"{self.url}{path}")
        except httpx.HTTPError as exc:
            raise HarnessError(self._failure(f"GET {path} failed: {exc!r}")) from None
        if response.status_code != 200:
            raise HarnessError(self._failure(f"GET {path} answered {response.status_code}"))

    def ensure_running(self) -> None:
        if self.popen.poll() is not None:
            raise HarnessError(self._failure("the process exited"))

    def _failure(self, what: str) -> str:
        try:  # a server that refused to start is usually exiting right now: get its code
            code: int | None = self.popen.wait(timeout=2)
        except subprocess.TimeoutExpired:
            code = None
        state = "running" if code is None else f"exited with code {code}"
        return f"{self.name} ({state}): {what}\n{self.output_tail()}"

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited in time. Safe to call twice."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=STOP_TIMEOUT_SECONDS)


@dataclass(frozen=True, slots=True)
class _Stat:
    pid: int
    ppid: int
    cpu_ticks: int
    """utime + stime, fields 14 and 15 of proc(5)."""


def _stat_fields(pid: int) -> _Stat | None:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return _Stat(pid, int(fields[1]), int(fields[11]) + int(fields[12]))


def _descendants(pid: int) -> list[_Stat]:
    """Every live process below ``pid`` (one scan of ``/proc``)."""
    stats = [
        s for entry in os.listdir("/proc") if entry.isdigit() and (s := _stat_fields(int(entry)))
    ]
    children: dict[int, list[_Stat]] = {}
    for stat in stats:
        children.setdefault(stat.ppid, []).append(stat)
    found, pending = [], [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child.pid)
    return found


def listening_socket() -> socket.socket:
    """A TCP socket bound to a free loopback port and already listening."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((LOOPBACK, 0))
    sock.listen(BACKLOG)
    return sock


def serve_in_process(
    exits: contextlib.ExitStack, function: str, *args: str, cwd: Path
) -> tuple[str, subprocess.Popen[bytes]]:
    """Run ``function`` (``"module:name"``, an ``async def name(fd, *args)`` that serves on the
    listening socket ``fd``) under uvloop in a child process on a fresh loopback socket; its URL.
    ``exits`` kills it."""
    sock = listening_socket()
    exits.callback(sock.close)
    module, _, name = function.partition(":")
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import sys, uvloop; from {module} import {name}; "
            f"uvloop.run({name}(int(sys.argv[1]), *sys.argv[2:]))",
            str(sock.fileno()),
            *args,
        ],
        pass_fds=(sock.fileno(),),
        cwd=cwd,
    )
    exits.callback(child.kill)
    return f"http://{LOOPBACK}:{sock.getsockname()[1]}", child


def start_server(
    name: str,
    argv: Sequence[str],
    *,
    log_dir: Path,
    cwd: Path,
    env: Mapping[str, str] | None = None,
) -> Server:
    """Start ``argv + ["--fd", N]`` serving on a fresh loopback socket; output goes to files.

    ``BROKER_*`` variables of the caller's environment are not inherited: only ``env`` counts.
    """
    sock = listening_socket()
    host, port = sock.getsockname()
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    child_env.update(env or {})
    stdout_path, stderr_path = log_dir / f"{name}.out", log_dir / f"{name}.err"
    try:
        with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
            popen = subprocess.Popen(
                [*argv, "--fd", str(sock.fileno())],
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                pass_fds=(sock.fileno(),),
                env=child_env,
                cwd=cwd,
            )
    except OSError as exc:
        raise HarnessError(f"{name}: cannot start {argv[0]}: {exc}") from None
    finally:
        sock.close()  # the child holds its own copy
    return Server(name, f"http://{host}:{port}", popen, stdout_path, stderr_path)
