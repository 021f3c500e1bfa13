"""Logging and the audit log: one JSON line per decision on the ``broker.audit`` logger.

Audit records carry identifiers (subject, issuer, rule ids, constraint digest, policy revision)
and never a credential: callers pass no JWT, API key or service token, and ``audit`` refuses field
names that suggest one. Tracing and metrics are set up here too as they grow.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any, Final

import msgspec

_FORBIDDEN_FIELDS: Final = frozenset({"token", "jwt", "api_key", "authorization", "secret"})
_ENCODER: Final = msgspec.json.Encoder()


class AuditLog:
    """JSON lines on stdout, one per decision.

    Not the ``logging`` machinery: a record object, handler lock and flush per decision cost more
    than the rest of a cached token request. Lines written during one event-loop iteration are
    joined into one write at the end of that iteration (``call_soon``), so under load the audit
    log costs one system call per batch, and no line waits longer than the current iteration.
    Disabled until ``setup_logging`` enables it.
    """

    def __init__(self) -> None:
        self.enabled = False
        self.write: Callable[[bytes], Any] = lambda data: sys.stdout.buffer.write(data)
        self._pending: list[bytes] = []

    def record(self, event: str, fields: dict[str, Any]) -> None:
        leaked = _FORBIDDEN_FIELDS.intersection(fields)
        if leaked:  # a programming error, caught by tests; never write the record
            raise ValueError(f"audit fields must not carry credentials: {sorted(leaked)}")
        if not self.enabled:
            return
        fields["time"] = round(time.time(), 3)
        fields["event"] = event
        self._pending.append(_ENCODER.encode(fields) + b"\n")
        if len(self._pending) == 1:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # no event loop (CLI tools): write at once
                self.flush()

    def flush(self) -> None:
        if self._pending:
            data, self._pending = b"".join(self._pending), []
            self.write(data)


audit_log: Final = AuditLog()


def audit(event: str, **fields: Any) -> None:
    """Write one audit record (costs nothing while the audit log is disabled)."""
    audit_log.record(event, fields)


def setup_logging(level: str = "INFO") -> None:
    """Plain lines on stderr for operators; audit lines as bare JSON on stdout."""
    root = logging.getLogger("broker")
    if getattr(root, "_broker_configured", False):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
    stdout_fd = sys.stdout.fileno()

    def write_all(line: bytes) -> None:
        view = memoryview(line)
        while view:
            view = view[os.write(stdout_fd, view) :]

    audit_log.write = write_all
    audit_log.enabled = True
    root._broker_configured = True  # type: ignore[attr-defined]
