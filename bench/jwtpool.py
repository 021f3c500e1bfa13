"""R2's pool of distinct JWTs, and the keep-alive client that warms the broker with it.

The pool holds one RS256 JWT per user (``user-200000``, ...), all signed with the harness's
key, written one ``Bearer <jwt>`` per line for ``post.lua``. ``send_each`` sends every pool entry
once, in pool order, over a few keep-alive connections (raw asyncio streams on uvloop, like the
R5 burst client): it fills the broker's service-token cache for every user of the pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from bench.burst import post_request, read_reply
from bench.errors import HarnessError
from bench.identity import Identity

SEND_TIMEOUT_SECONDS: Final = 600.0
FIRST_SUBJECT: Final = 200_000
"""Pool users are ``user-200000``, ``user-200001``, ...: subjects as long as the reference user's
(``user-000001``), so the broker's answers have the size of the baseline's fixed answer."""
MAX_POOL: Final = 1_000_000 - FIRST_SUBJECT


@dataclass(frozen=True, slots=True)
class JwtPool:
    path: Path
    """One Authorization value (``Bearer <jwt>``) per line, in pool order."""
    authorizations: tuple[str, ...]
    sign_seconds: float

    @property
    def size(self) -> int:
        return len(self.authorizations)


def create_pool(identity: Identity, directory: Path, size: int) -> JwtPool:
    """``size`` JWTs for ``size`` distinct users, written to ``directory/jwt-pool.txt``."""
    if not 0 < size <= MAX_POOL:
        raise HarnessError(f"a JWT pool holds 1 to {MAX_POOL} JWTs, not {size}")
    started = time.perf_counter()
    values = tuple(
        f"Bearer {identity.jwt(f'user-{FIRST_SUBJECT + index:06d}')}" for index in range(size)
    )
    elapsed = time.perf_counter() - started
    path = directory / "jwt-pool.txt"
    path.write_text("\n".join(values) + "\n")
    return JwtPool(path, values, elapsed)


@dataclass(frozen=True, slots=True)
class SendResult:
    statuses: dict[int, int]
    seconds: float


async def _worker(
    host: str, port: int, path: str, requests: Sequence[bytes], statuses: Counter[int]
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        for request in requests:
            writer.write(request)
            reply = await read_reply(reader, time.perf_counter())
            statuses[reply.status] += 1
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _send_each(
    url: str, path: str, authorizations: Sequence[str], connections: int
) -> SendResult:
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or 80
    if host != "127.0.0.1":
        raise HarnessError(f"refusing to send requests anywhere but 127.0.0.1: {url}")
    requests = [post_request(host, port, path, value) for value in authorizations]
    statuses: Counter[int] = Counter()
    started = time.perf_counter()
    # Worker w sends entries w, w + connections, ...: the pool goes out (nearly) in order.
    await asyncio.gather(
        *(
            _worker(host, port, path, requests[first::connections], statuses)
            for first in range(min(connections, len(requests)))
        )
    )
    return SendResult(dict(statuses), time.perf_counter() - started)


async def _bounded(
    url: str, path: str, authorizations: Sequence[str], connections: int
) -> SendResult:
    try:
        async with asyncio.timeout(SEND_TIMEOUT_SECONDS):
            return await _send_each(url, path, authorizations, connections)
    except TimeoutError:
        raise HarnessError(
            f"{len(authorizations)} requests did not finish in {SEND_TIMEOUT_SECONDS} s"
        ) from None
    except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
        raise HarnessError(f"sending the JWT pool to {url}{path} failed: {exc!r}") from None


def send_each(
    url: str, path: str, authorizations: Sequence[str], *, connections: int
) -> SendResult:
    """``POST path`` once per Authorization value, over ``connections`` keep-alive connections."""
    import uvloop

    return uvloop.run(_bounded(url, path, authorizations, connections))
