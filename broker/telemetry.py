"""Logging and the audit log: one JSON line per decision on the ``broker.audit`` logger.

Audit records carry identifiers (subject, issuer, rule ids, constraint digest, policy revision)
and never a credential: callers pass no JWT, API key or service token, and ``audit`` refuses field
names that suggest one. Tracing and metrics are set up here too as they grow.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Final

import msgspec

audit_logger: Final = logging.getLogger("broker.audit")
_FORBIDDEN_FIELDS: Final = frozenset({"token", "jwt", "api_key", "authorization", "secret"})


def audit(event: str, **fields: Any) -> None:
    """Write one audit record (if the audit logger is enabled; it costs nothing otherwise)."""
    if not audit_logger.isEnabledFor(logging.INFO):
        return
    leaked = _FORBIDDEN_FIELDS.intersection(fields)
    if leaked:  # a programming error, caught by tests; never write the record
        raise ValueError(f"audit fields must not carry credentials: {sorted(leaked)}")
    record = {"time": round(time.time(), 3), "event": event, **fields}
    audit_logger.info(msgspec.json.encode(record).decode())


def setup_logging(level: str = "INFO") -> None:
    """Plain lines on stderr for operators; audit lines as bare JSON on stdout."""
    root = logging.getLogger("broker")
    if getattr(root, "_broker_configured", False):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
    audit_handler = logging.StreamHandler(sys.stdout)
    audit_handler.setFormatter(logging.Formatter("%(message)s"))
    audit_logger.addHandler(audit_handler)
    audit_logger.propagate = False
    audit_logger.setLevel(logging.INFO)
    root._broker_configured = True  # type: ignore[attr-defined]
