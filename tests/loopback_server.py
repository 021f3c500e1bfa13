"""uvicorn serving an ASGI app with a given ``http`` protocol on a loopback socket, in the test's
own event loop (the protocol tests: ``headtimeout``, ``coalescing``)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn


@asynccontextmanager
async def uvicorn_on_loopback(app: Any, http: Any) -> AsyncIterator[int]:
    """The port. The socket listens before serving starts, so a connection made meanwhile waits
    in the backlog: nothing to poll for."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    server = uvicorn.Server(uvicorn.Config(app, http=http, lifespan="off", log_level="warning"))
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        await task
        sock.close()
