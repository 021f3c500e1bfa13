"""One call at a time, alternated call by call between targets: what R4 judges the proxy's added
latency on, and what ``chain_ab --interleaved`` prints.

Whole wrk runs of one target after another drift with the machine (R4's c=1 runs of the direct
path alone ranged over 20 % here), and that drift lands on one target's run and not the other's.
Alternating single calls puts it on every target alike; the median of the per-round differences
to the reference target is then the steadiest reading of what one target adds.

Each call is timed twice: until the JSON-RPC response's event is in (where an MCP client has its
answer and stops reading) and until the whole HTTP answer is in (where wrk stops).
"""

from __future__ import annotations

import socket
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, Literal
from urllib.parse import urlsplit

from bench.errors import HarnessError
from bench.workload import MCP_HEADERS, TOOLS_CALL

WARMUP_ROUNDS: Final = 100
RESULT_MARK: Final = b'"isError":false'
"""In the demo tool's result event: the call answered the tool's result, not an error."""
TIMEOUT_SECONDS: Final = 30.0

Point = Literal["event", "whole"]
Caller = Callable[[], tuple[float, float]]


def blocking_caller(url: str, authorization: str) -> tuple[Caller, Callable[[], None]]:
    """A function that sends R4's call to ``url`` over one keep-alive connection and returns
    the milliseconds until the response event and until the whole answer are in; and one that
    closes the connection. Raises ``HarnessError`` for anything but the tool's result."""
    parts = urlsplit(url)
    sock = socket.create_connection(
        (parts.hostname or "127.0.0.1", parts.port or 80), timeout=TIMEOUT_SECONDS
    )
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    body = TOOLS_CALL.encode()
    headers = "".join(f"{name}: {value}\r\n" for name, value in MCP_HEADERS.items())
    request = (
        f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Authorization: {authorization}\r\n{headers}Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body

    def call() -> tuple[float, float]:
        started = time.perf_counter()
        sock.sendall(request)
        answer = b""
        event = 0.0
        while True:
            data = sock.recv(65536)
            if not data:
                raise HarnessError(f"{url}: the connection closed mid-answer")
            answer += data
            if not event:
                result = answer.find(RESULT_MARK)
                if result >= 0 and answer.find(b"\r\n\r\n", result) >= 0:
                    event = time.perf_counter()
            head, blank, rest = answer.partition(b"\r\n\r\n")
            if not blank:
                continue
            lowered = head.lower()
            if not lowered.startswith(b"http/1.1 200"):
                raise HarnessError(f"{url}: {head[:200]!r}")
            if b"\r\ncontent-length:" in lowered:
                length = int(lowered.split(b"\r\ncontent-length:")[1].split(b"\r\n")[0])
                if len(rest) >= length:
                    break
            elif rest.endswith(b"\r\n0\r\n\r\n"):
                break
        ended = time.perf_counter()
        if not event:
            raise HarnessError(f"{url}: not the tool's result: {answer[:300]!r}")
        return (event - started) * 1000, (ended - started) * 1000

    return call, sock.close


@dataclass(frozen=True, slots=True)
class Interleaved:
    """Every target's times, round by round (one call per target per round)."""

    rounds: int
    times: Mapping[str, list[tuple[float, float]]]
    """By target: (ms until the response event, ms until the whole answer) per round."""

    def _values(self, name: str, point: Point) -> list[float]:
        index = 0 if point == "event" else 1
        return [t[index] for t in self.times[name]]

    def p50(self, name: str, point: Point) -> float:
        return statistics.median(self._values(name, point))

    def added(self, name: str, reference: str, point: Point) -> float:
        """The median of ``name``'s per-round difference to ``reference``, in ms."""
        return statistics.median(
            a - b
            for a, b in zip(self._values(name, point), self._values(reference, point), strict=True)
        )


def interleave(
    targets: Mapping[str, tuple[str, str]], rounds: int, warmup: int = WARMUP_ROUNDS
) -> Interleaved:
    """``warmup`` untimed rounds, then ``rounds`` timed ones; each round sends one call to every
    target (``name -> (url, Authorization)``), in alternating order from round to round."""
    callers: dict[str, Caller] = {}
    closers: list[Callable[[], None]] = []
    try:
        for name, (url, authorization) in targets.items():
            call, close = blocking_caller(url, authorization)
            callers[name] = call
            closers.append(close)
        names = list(callers)
        for _ in range(warmup):
            for name in names:
                callers[name]()
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
        for index in range(rounds):
            for name in names if index % 2 == 0 else names[::-1]:
                times[name].append(callers[name]())
    except OSError as exc:
        raise HarnessError(f"interleaved calls failed: {exc!r}") from None
    finally:
        for close in closers:
            close()
    return Interleaved(rounds, times)
