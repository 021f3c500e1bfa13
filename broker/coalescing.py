"""A transport whose writes during one event-loop iteration leave in one system call.

uvicorn writes a response's head as soon as the application starts the response, then each body
part as it comes: two writes (head, body) for every ordinary answer, three for a chunked one.
On loopback, and more so on a virtual machine, each write is a system call in which the kernel
also delivers the segment to the reader and wakes it; bench/ measured the broker's CPU per
answered request about a quarter lower under load when the parts leave together
(``python -m bench.proxy_cost --route tokens|precheck -c 8``).

So writes are held until the end of the current event-loop iteration (``call_soon``) and then
joined: an answer whose parts are all sent in one iteration (every answer built in memory, and a
proxied answer that arrived whole) leaves in one write, and a part never waits longer than the
rest of the iteration it was sent in. Held bytes past ``FLUSH_BYTES`` leave at once, so uvicorn's
write flow control (pause when the socket's buffer is full) still acts within an iteration.
``close`` and ``write_eof`` write what is held first, and so must the protocol when the peer
half-closes (``eof_received``: the transport closes itself after it). A connection that was
aborted or reset meanwhile drops what is held: nobody would read it.

Nothing here knows HTTP: it wraps the transport uvicorn's protocol is given
(``headtimeout.head_timeout_protocol``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any, Final

FLUSH_BYTES: Final = 64 * 1024
"""Held bytes that leave at once (asyncio's default high-water mark for a transport's buffer)."""


class CoalescingTransport:
    """Delegates to ``transport``; ``write`` is held until the end of the loop iteration."""

    __slots__ = ("_held", "_held_bytes", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] | None = None
        self._held_bytes = 0

    def write(self, data: object) -> None:
        if type(data) is bytes:
            chunk = data
        elif isinstance(data, (bytearray, memoryview)):
            chunk = bytes(data)  # a copy: its owner may reuse the buffer once this returns
        else:  # refused at once, as the transport would: the writer must see it, not the flush
            raise TypeError(f"data must be bytes-like, not {type(data).__name__}")
        if self._held is None:
            self._held = [chunk]
            self._held_bytes = len(chunk)
            self._loop.call_soon(self.flush)
        else:
            self._held.append(chunk)
            self._held_bytes += len(chunk)
        if self._held_bytes > FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        """Write what is held now (nothing if the connection is closing: nobody reads it)."""
        held, self._held = self._held, None
        if not held or self._transport.is_closing():
            return
        self._transport.write(held[0] if len(held) == 1 else b"".join(held))

    def writelines(self, parts: Iterable[object]) -> None:
        for part in parts:
            self.write(part)

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + (self._held_bytes if self._held else 0)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def __getattr__(self, name: str) -> Any:
        # The rest of the transport interface, unchanged (get_extra_info, set_protocol, abort:
        # held bytes are dropped with the connection, ...).
        return getattr(self._transport, name)
