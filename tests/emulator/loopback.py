"""Real ASGI servers on loopback ports for tests: uvicorn on a socket bound before it starts.

``LoopbackServer`` runs an app in its own thread and event loop, so it can serve while the test
(or a Litestar test client's portal) blocks; ``serve_in_loop`` runs one as a task of the test's
own loop. Both wait for startup on an event, never by polling, and stop the server on exit.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from types import TracebackType
from typing import Any

import uvicorn

STARTUP_TIMEOUT_SECONDS = 20.0
SHUTDOWN_TIMEOUT_SECONDS = 20.0


def bind_loopback_socket() -> socket.socket:
    """A listening socket on a free loopback port: clients may connect before the server runs."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


def _config(app: Any, **overrides: Any) -> uvicorn.Config:
    # log_config=None: uvicorn would otherwise reconfigure the process's logging for every server.
    options: dict[str, Any] = {
        "lifespan": "on",
        "log_config": None,
        "access_log": False,
        "timeout_graceful_shutdown": 5,
        **overrides,
    }
    return uvicorn.Config(app, **options)


class _SignallingServer(uvicorn.Server):
    """A uvicorn server that sets an event once startup has finished, successfully or not, and
    calls ``on_shutdown`` (if any) as soon as its shutdown begins."""

    def __init__(
        self,
        config: uvicorn.Config,
        ready: threading.Event,
        on_shutdown: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(config)
        self._ready = ready
        self._on_shutdown = on_shutdown

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self._on_shutdown is not None:
            self._on_shutdown()
        await super().shutdown(sockets=sockets)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().startup(sockets=sockets)
        finally:
            self._ready.set()

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        # Tests stop servers with should_exit: leave pytest's own signal handlers alone.
        yield


class LoopbackServer:
    """An ASGI app served by uvicorn in a background thread; ``url`` is its base URL.

    ``on_shutdown``: called in the server's loop when its shutdown begins (before uvicorn waits
    for running requests). ``config``: ``uvicorn.Config`` options, e.g. ``http="h11"``.
    """

    def __init__(
        self, app: Any, *, on_shutdown: Callable[[], None] | None = None, **config: Any
    ) -> None:
        self._socket = bind_loopback_socket()
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
        self.port: int = self._socket.getsockname()[1]
        self._ready = threading.Event()
        self._server = _SignallingServer(_config(app, **config), self._ready, on_shutdown)
        self._thread = threading.Thread(target=self._run, name=f"uvicorn {self.url}", daemon=True)

    def _run(self) -> None:
        try:
            self._server.run(sockets=[self._socket])
        finally:
            self._ready.set()

    def __enter__(self) -> LoopbackServer:
        self._thread.start()
        if not self._ready.wait(STARTUP_TIMEOUT_SECONDS) or not self._server.started:
            self._stop()
            raise RuntimeError(f"server at {self.url} did not start")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop()

    def _stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(SHUTDOWN_TIMEOUT_SECONDS)
        self._socket.close()
        if self._thread.is_alive():
            raise RuntimeError(f"server at {self.url} did not stop")


@asynccontextmanager
async def serve_in_loop(app: Any) -> AsyncIterator[str]:
    """Serve ``app`` as a task of the running event loop; yields its base URL."""
    sock = bind_loopback_socket()
    server = _SignallingServer(_config(app), threading.Event())
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        # The socket already listens, so requests made now queue until uvicorn accepts them.
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await task
        sock.close()
        assert server.started, "server did not start"
