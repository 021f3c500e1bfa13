"""The rpcReqMatch oracle: a long-lived ``node`` process that evaluates JavaScript regexes.

Smithery matches ``rpcReqMatch`` patterns with JavaScript semantics
(``reference/SMITHERY-SEMANTICS.md``, "rpcReqMatch"), which Python's ``re`` does not reproduce
(``$`` before a trailing newline, Unicode-aware ``\\d``/``\\w``, different syntax). So the emulator
does not interpret patterns at all: ``rpc_oracle.mjs`` does, in node, including the JSON parsing of
the message and the dot-path lookup. This module owns that process: it starts it lazily, speaks
newline-delimited JSON with it (protocol in the ``.mjs`` header), one request in flight at a time,
restarts it when it dies, and stops it on shutdown.

It must not import the broker's matcher (``broker.rpcmatch``) nor cache answers: it is the
independent oracle the broker is checked against. It decides nothing but "does this map match".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SCRIPT_PATH = Path(__file__).with_name("rpc_oracle.mjs")
DEFAULT_NODE_EXECUTABLE = "node"
DEFAULT_MATCH_TIMEOUT_SECONDS = 5.0
"""How long one evaluation may take. A pattern with catastrophic backtracking can run for ever in
node's backtracking engine; after this the process is killed and the request fails."""
STOP_TIMEOUT_SECONDS = 5.0
_MAX_ANSWER_BYTES = 1024 * 1024


class OracleError(Exception):
    """The oracle could not give an answer (node missing, crashed twice, timed out, off-protocol).

    This is not "no match": callers must neither allow nor deny on it, but fail the request.
    """


class _ProcessGoneError(Exception):
    """The node process died or closed its pipes; a fresh one may succeed."""


class RpcMatchOracle:
    """Answers "does this ``rpcReqMatch`` map match this JSON-RPC body" by asking node.

    ``node_executable``: the node binary, looked up on ``PATH`` when not a path.
    ``match_timeout_seconds``: the limit for one evaluation (see ``DEFAULT_MATCH_TIMEOUT_SECONDS``).
    The process is started on the first ``match`` and must be stopped with ``aclose`` from the
    same event loop (the emulator does it in Litestar's ``on_shutdown``).
    """

    def __init__(
        self,
        *,
        node_executable: str = DEFAULT_NODE_EXECUTABLE,
        match_timeout_seconds: float = DEFAULT_MATCH_TIMEOUT_SECONDS,
    ) -> None:
        self._node_executable = node_executable
        self._match_timeout_seconds = match_timeout_seconds
        self._process: asyncio.subprocess.Process | None = None
        self._lock: asyncio.Lock | None = None
        self._next_id = 0

    @property
    def pid(self) -> int | None:
        """The running node process's id, or None when none runs (diagnostics and tests)."""
        process = self._process
        return process.pid if process is not None and process.returncode is None else None

    async def match(self, rules: Mapping[str, str], body: str) -> bool:
        """Whether every ``{dotPath: pattern}`` entry matches the JSON-RPC message ``body``.

        ``body`` is the raw JSON text of the message, parsed by node. An invalid pattern is no
        match. Raises ``OracleError`` when no answer can be had. A process that died since the
        last call is replaced once per call, so a crash never turns into a silent deny.
        """
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            self._next_id += 1
            line = _encode_request(self._next_id, rules, body)
            try:
                answer = await self._exchange(line)
            except _ProcessGoneError:
                # One retry on a fresh process: the previous one may have died for its own reasons.
                try:
                    answer = await self._exchange(line)
                except _ProcessGoneError as error:
                    raise OracleError(
                        f"node exited while evaluating rpcReqMatch: {error}"
                    ) from None
            return _decode_answer(answer, self._next_id)

    async def aclose(self) -> None:
        """Stop the node process (close its stdin, then kill it if it lingers).

        An evaluation in flight finishes first. A later ``match`` starts a new process, so an
        app restarted in another event loop gets its own.
        """
        if self._lock is not None:
            async with self._lock:
                await self._stop_current()
        else:
            await self._stop_current()
        self._lock = None

    async def _stop_current(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            await _stop(process)

    async def _exchange(self, line: bytes) -> bytes:
        process = await self._ensure_started()
        assert process.stdin is not None
        assert process.stdout is not None
        try:
            async with asyncio.timeout(self._match_timeout_seconds):
                process.stdin.write(line)
                await process.stdin.drain()
                answer = await process.stdout.readline()
        except TimeoutError:
            # node is stuck inside the regex engine: it would not read a closed stdin.
            await self._discard(process, graceful=False)
            raise OracleError(
                f"rpcReqMatch evaluation took longer than {self._match_timeout_seconds} s"
            ) from None
        except (BrokenPipeError, ConnectionResetError) as error:
            await self._discard(process)
            raise _ProcessGoneError(str(error)) from None
        if not answer.endswith(b"\n"):
            await self._discard(process)
            raise _ProcessGoneError("no answer (end of output)")
        return answer

    async def _ensure_started(self) -> asyncio.subprocess.Process:
        process = self._process
        if process is not None and process.returncode is None:
            return process
        if process is not None:
            await self._discard(process)
        try:
            process = await asyncio.create_subprocess_exec(
                self._node_executable,
                str(SCRIPT_PATH),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                limit=_MAX_ANSWER_BYTES,
            )
        except OSError as error:
            raise OracleError(f"cannot start {self._node_executable!r}: {error}") from None
        self._process = process
        return process

    async def _discard(self, process: asyncio.subprocess.Process, *, graceful: bool = True) -> None:
        if self._process is process:
            self._process = None
        await _stop(process, graceful=graceful)


def _encode_request(request_id: int, rules: Mapping[str, str], body: str) -> bytes:
    # ensure_ascii keeps the line pure ASCII: no raw U+2028 or lone surrogate can split or break it.
    request = {"id": request_id, "rules": dict(rules), "body": body}
    return json.dumps(request, ensure_ascii=True).encode("ascii") + b"\n"


def _decode_answer(line: bytes, request_id: int) -> bool:
    try:
        answer: Any = json.loads(line)
    except ValueError:
        raise OracleError("node answered something that is not JSON") from None
    if not isinstance(answer, dict) or answer.get("id") != request_id:
        raise OracleError("node answered out of turn")
    ok = answer.get("ok")
    if not isinstance(ok, bool):
        raise OracleError(f"node refused the request: {answer.get('error')!r}")
    # {"ok": false, "error": ...} is an invalid pattern or body: no match, by design.
    return ok


async def _stop(process: asyncio.subprocess.Process, *, graceful: bool = True) -> None:
    """End a node process and reap it, so no pipe transport is left open.

    Gracefully, closing stdin ends the script's read loop; it is killed if it lingers.
    """
    if graceful and process.returncode is None and process.stdin is not None:
        process.stdin.close()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            await process.stdin.wait_closed()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STOP_TIMEOUT_SECONDS):
                await process.wait()
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
    await process.wait()
