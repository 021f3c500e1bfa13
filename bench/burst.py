"""A cold burst: N connections opened first, then N requests written back to back, all awaited.

Raw asyncio streams (on uvloop when installed) keep the client cheap, so the numbers describe
the server. Each latency runs from the instant the burst starts (just before the first request
is written) to the end of that request's response, which is what a client of a burst sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from bench.errors import HarnessError

BURST_TIMEOUT_SECONDS: Final = 60.0


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: bytes
    latency_ms: float


@dataclass(frozen=True, slots=True)
class BurstResult:
    size: int
    wall_ms: float
    """From the burst's start to its last response."""
    statuses: dict[int, int]
    latencies_ms: list[float]
    bodies: list[bytes]


def post_request(host: str, port: int, path: str, authorization: str) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: {authorization}\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


async def read_reply(reader: asyncio.StreamReader, started: float) -> Reply:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    body = await reader.readexactly(length)
    return Reply(status, body, (time.perf_counter() - started) * 1000.0)


async def _burst(url: str, path: str, authorization: str, size: int) -> BurstResult:
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or 80
    if host != "127.0.0.1":
        raise HarnessError(f"refusing to send a burst anywhere but 127.0.0.1: {url}")
    streams = await asyncio.gather(*(asyncio.open_connection(host, port) for _ in range(size)))
    try:
        request = post_request(host, port, path, authorization)
        started = time.perf_counter()
        for _, writer in streams:
            writer.write(request)
        replies = await asyncio.gather(*(read_reply(reader, started) for reader, _ in streams))
        wall_ms = (time.perf_counter() - started) * 1000.0
    finally:
        for _, writer in streams:
            writer.close()
        for _, writer in streams:
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    return BurstResult(
        size=size,
        wall_ms=wall_ms,
        statuses=dict(Counter(reply.status for reply in replies)),
        latencies_ms=sorted(reply.latency_ms for reply in replies),
        bodies=[reply.body for reply in replies],
    )


async def _bounded(url: str, path: str, authorization: str, size: int) -> BurstResult:
    try:
        async with asyncio.timeout(BURST_TIMEOUT_SECONDS):
            return await _burst(url, path, authorization, size)
    except TimeoutError:
        raise HarnessError(
            f"a burst of {size} did not finish in {BURST_TIMEOUT_SECONDS} s"
        ) from None
    except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
        raise HarnessError(f"a burst of {size} to {url}{path} failed: {exc!r}") from None


def run_burst(url: str, path: str, *, authorization: str, size: int) -> BurstResult:
    """Fire ``size`` concurrent ``POST path`` requests at ``url`` at once and wait for all."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        return asyncio.run(_bounded(url, path, authorization, size))
    return uvloop.run(_bounded(url, path, authorization, size))
