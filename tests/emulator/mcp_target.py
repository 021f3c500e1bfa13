"""A stand-in MCP server for the emulator's MCP endpoint tests: it records what reaches it.

A raw ASGI app (no framework, so nothing normalises what it sees). It answers by path:

- ``/json``: 200 ``application/json`` with ``JSON_ANSWER``, plus headers the emulator must not
  relay (``Mcp-Session-Id``, ``X-Upstream``);
- ``/sse``: 200 ``text/event-stream``: the first event, then it waits until the test opens
  ``gate`` (proof that the first event reached the client before the stream ended), then two more;
- ``/held``: 200 ``text/event-stream``: the JSON-RPC response to the request (its id echoed),
  then the stream stays open until the test opens ``gate``; ``ended`` is set once it ends;
- ``/accepted``: 202 with no body and no ``Content-Type`` (a notification's answer);
- ``/unauthorized``: 401 ``application/json`` with a JSON-RPC error (relayed as is).
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field
from typing import Any

JSON_ANSWER = b'{"jsonrpc":"2.0","id":1,"result":{"content":[],"from":"target \xc3\xa9"}}'
UNAUTHORIZED_ANSWER = b'{"jsonrpc":"2.0","id":1,"error":{"code":-32001,"message":"Upstream"}}'
SSE_FIRST = b'event: message\ndata: {"jsonrpc":"2.0","method":"notifications/progress"}\n\n'
SSE_GATED = b'event: message\ndata: {"gate":"opened"}\n\n'
SSE_GATE_TIMEOUT = b'event: message\ndata: {"gate":"timed out"}\n\n'
SSE_LAST = b'event: message\ndata: {"jsonrpc":"2.0","id":1,"result":{}}\n\n'
GATE_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class ReceivedRequest:
    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = [value for key, value in self.headers if key == name]
        assert len(values) <= 1, f"{name} sent {len(values)} times"
        return values[0] if values else None

    @property
    def header_names(self) -> set[str]:
        return {key for key, _ in self.headers}


@dataclass
class McpTarget:
    received: list[ReceivedRequest] = field(default_factory=list)
    gate: threading.Event = field(default_factory=threading.Event)
    ended: threading.Event = field(default_factory=threading.Event)

    def reset(self) -> None:
        self.received.clear()
        self.gate.clear()
        self.ended.clear()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        assert scope["type"] == "http"
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.received.append(
            ReceivedRequest(
                method=scope["method"],
                path=scope["path"],
                headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]],
                body=body,
            )
        )
        path = scope["path"]
        if path == "/sse":
            await self._answer_sse(send)
        elif path == "/held":
            await self._answer_held(send, json.loads(body)["id"])
        elif path == "/accepted":
            await send({"type": "http.response.start", "status": 202, "headers": []})
            await send({"type": "http.response.body", "body": b""})
        elif path == "/unauthorized":
            await _answer(send, 401, UNAUTHORIZED_ANSWER)
        else:
            await _answer(
                send,
                200,
                JSON_ANSWER,
                extra_headers=[(b"mcp-session-id", b"upstream-session"), (b"x-upstream", b"1")],
            )

    async def _answer_sse(self, send: Any) -> None:
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": SSE_FIRST, "more_body": True})
        opened = await asyncio.get_running_loop().run_in_executor(
            None, self.gate.wait, GATE_TIMEOUT_SECONDS
        )
        await send(
            {
                "type": "http.response.body",
                "body": SSE_GATED if opened else SSE_GATE_TIMEOUT,
                "more_body": True,
            }
        )
        await send({"type": "http.response.body", "body": SSE_LAST})

    async def _answer_held(self, send: Any, request_id: int | str) -> None:
        answer = {"jsonrpc": "2.0", "id": request_id, "result": {"content": []}}
        event = b"event: message\r\ndata: " + json.dumps(answer).encode() + b"\r\n\r\n"
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": event, "more_body": True})
        await asyncio.get_running_loop().run_in_executor(None, self.gate.wait, GATE_TIMEOUT_SECONDS)
        await send({"type": "http.response.body", "body": b""})
        self.ended.set()


async def _answer(
    send: Any,
    status: int,
    body: bytes,
    *,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [(b"content-type", b"application/json"), *(extra_headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
