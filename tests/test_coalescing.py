"""``coalescing``: writes made in one event-loop iteration leave in one transport write; unit tests
with a recording transport, then the broker's uvicorn protocol on a real loopback socket."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import uvloop
from litestar.types import Receive, Scope, Send

from broker.coalescing import FLUSH_BYTES, CoalescingTransport
from broker.headtimeout import head_timeout_protocol
from tests.loopback_server import uvicorn_on_loopback


class Recording:
    """Stands in for a transport: what was done to it, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes]] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.calls.append(("write", bytes(data)))

    def close(self) -> None:
        self.calls.append(("close", b""))
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def write_eof(self) -> None:
        self.calls.append(("eof", b""))

    def get_write_buffer_size(self) -> int:
        return 7  # bytes the socket has not taken yet

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 1234) if name == "peername" else None


async def next_iteration() -> None:
    await asyncio.sleep(0)


def coalescing() -> tuple[CoalescingTransport, Recording]:
    recording = Recording()
    return CoalescingTransport(recording, asyncio.get_running_loop()), recording  # type: ignore[arg-type]


async def test_writes_of_one_iteration_leave_together_at_its_end() -> None:
    transport, recording = coalescing()
    transport.write(b"head ")
    transport.write(b"body")
    assert recording.calls == []  # held until the iteration ends
    await next_iteration()
    assert recording.calls == [("write", b"head body")]


async def test_a_write_in_a_later_iteration_is_its_own_write() -> None:
    transport, recording = coalescing()
    transport.write(b"one")
    await next_iteration()
    transport.write(b"two")
    await next_iteration()
    assert recording.calls == [("write", b"one"), ("write", b"two")]


async def test_more_than_the_flush_size_leaves_at_once() -> None:
    transport, recording = coalescing()
    transport.write(b"a" * FLUSH_BYTES)
    assert recording.calls == []
    transport.write(b"b")
    assert recording.calls == [("write", b"a" * FLUSH_BYTES + b"b")]
    transport.write(b"c")
    await next_iteration()
    assert recording.calls[1:] == [("write", b"c")]


async def test_close_writes_what_is_held_first() -> None:
    transport, recording = coalescing()
    transport.write(b"last words")
    transport.close()
    assert recording.calls == [("write", b"last words"), ("close", b"")]
    await next_iteration()
    assert len(recording.calls) == 2  # the scheduled flush finds nothing held


async def test_writelines_and_write_eof_keep_the_order() -> None:
    transport, recording = coalescing()
    transport.writelines([b"a", b"b"])
    assert transport.get_write_buffer_size() == 7 + 2  # the socket's own, and what is held
    transport.write_eof()
    assert recording.calls == [("write", b"ab"), ("eof", b"")]
    assert transport.get_write_buffer_size() == 7


async def test_a_write_that_is_not_bytes_fails_at_once_and_a_buffer_is_copied() -> None:
    transport, recording = coalescing()
    with pytest.raises(TypeError, match="not str"):
        transport.write("text")
    buffer = bytearray(b"first")
    transport.write(buffer)
    buffer[:] = b"reuse"  # its owner may reuse it as soon as write returns
    await next_iteration()
    assert recording.calls == [("write", b"first")]


async def test_held_bytes_are_dropped_when_the_connection_closed_meanwhile() -> None:
    transport, recording = coalescing()
    transport.write(b"for nobody")
    recording.closing = True  # the peer left: the transport is closing
    await next_iteration()
    assert recording.calls == []
    assert transport.is_closing()


async def test_the_rest_of_the_transport_is_delegated() -> None:
    transport, _ = coalescing()
    assert transport.get_extra_info("peername") == ("127.0.0.1", 1234)


# --- the broker's protocol on a real socket ----------------------------------------------------


ANSWER_HELD = threading.Event()
"""Set by ``/half-closed`` once its answer is written (and held)."""
HALF_CLOSED = threading.Event()
"""Set by the half-closing client once its end of input is sent."""


async def parts(scope: Scope, receive: Receive, send: Send) -> None:
    """``/whole``: head and body in one go; ``/stream``: three chunks, one per iteration;
    ``/big``: a body of three times the flush size."""
    while (await receive()).get("more_body", False):
        pass
    if scope["path"] == "/half-closed":
        body = b'{"ok":true}'
        headers = [(b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        # Still in this iteration, with the answer held: the client half-closes now, so the
        # server's next look at the socket finds its end of input before the flush runs.
        ANSWER_HELD.set()
        assert HALF_CLOSED.wait(10)
        return
    if scope["path"] == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for chunk in (b"one", b"two", b"three"):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await next_iteration()
        await send({"type": "http.response.body", "body": b""})
        return
    body = b"x" * (3 * FLUSH_BYTES) if scope["path"] == "/big" else b'{"ok":true}'
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@asynccontextmanager
async def serving(writes: list[bytes]) -> AsyncIterator[int]:
    """uvicorn with the broker's protocol, recording what it writes to the real transport."""
    base = head_timeout_protocol(5.0)

    class Recorded:
        def __init__(self, transport: asyncio.Transport) -> None:
            self.transport = transport

        def write(self, data: bytes) -> None:
            writes.append(bytes(data))
            self.transport.write(data)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.transport, name)

    class RecordedProtocol(base):  # type: ignore[misc, valid-type]
        def connection_made(self, transport: asyncio.Transport) -> None:
            super().connection_made(Recorded(transport))

    async with uvicorn_on_loopback(parts, RecordedProtocol) as port:
        yield port


async def exchange(port: int, path: str) -> bytes:
    """The whole answer to one request on a connection the client then closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n".encode())
    answer = await reader.read()
    writer.close()
    await writer.wait_closed()
    return answer


async def test_an_answer_built_at_once_leaves_in_one_write() -> None:
    writes: list[bytes] = []
    async with serving(writes) as port, asyncio.timeout(10):
        answer = await exchange(port, "/whole")
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert answer.endswith(b'\r\n\r\n{"ok":true}')
    assert writes == [answer]  # head and body together (uvicorn writes them separately)


async def test_a_stream_still_leaves_part_by_part() -> None:
    writes: list[bytes] = []
    async with serving(writes) as port, asyncio.timeout(10):
        answer = await exchange(port, "/stream")
    assert answer.endswith(b"\r\n\r\n3\r\none\r\n3\r\ntwo\r\n5\r\nthree\r\n0\r\n\r\n")
    assert b"".join(writes) == answer
    # The head goes with the first chunk; each later chunk leaves in the iteration it was sent.
    assert len(writes) == 4
    assert writes[0].endswith(b"\r\n\r\n3\r\none\r\n")


async def test_a_big_answer_arrives_whole() -> None:
    writes: list[bytes] = []
    async with serving(writes) as port, asyncio.timeout(10):
        answer = await exchange(port, "/big")
    assert answer.endswith(b"\r\n\r\n" + b"x" * (3 * FLUSH_BYTES))
    assert b"".join(writes) == answer


def half_closing_client(port: int, answers: list[bytes]) -> None:
    """Sends a request, half-closes once the server has written (and holds) its answer, and
    reads the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /half-closed HTTP/1.1\r\nHost: test\r\n\r\n")
        assert ANSWER_HELD.wait(10)
        sock.shutdown(socket.SHUT_WR)  # the FIN, while the server's loop waits for the flag
        HALF_CLOSED.set()
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        answers.append(answer)


def test_an_answer_held_when_the_client_half_closes_still_leaves() -> None:
    # On uvloop, as the broker serves: it looks at the sockets between the iteration that wrote
    # the answer and the one that flushes it (asyncio's loop flushes first), so it reads the
    # client's end of input, and the transport closes, while the answer is still held.
    writes: list[bytes] = []
    answers: list[bytes] = []
    ANSWER_HELD.clear()
    HALF_CLOSED.clear()

    async def exchange() -> None:
        async with serving(writes) as port, asyncio.timeout(10):
            client = threading.Thread(target=half_closing_client, args=(port, answers))
            client.start()
            await asyncio.to_thread(client.join)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(exchange())
    assert len(answers) == 1
    assert answers[0].startswith(b"HTTP/1.1 200 ")
    assert answers[0].endswith(b'\r\n\r\n{"ok":true}')
