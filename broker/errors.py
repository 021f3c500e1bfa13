"""The broker's exception tree and its stable error codes.

Every failure the broker knows about is a ``BrokerError`` subclass carrying a stable snake_case
``code`` and the HTTP status it maps to. Handlers never build error responses: ``app.py`` turns
these into RFC 9457 problem details in one table. This module imports nothing of ours.

Messages (``detail``) must never contain a secret: not the Smithery API key, not a user's JWT,
not a minted service token. Callers pass a safe description; the precise internal reason for
authentication failures lives in ``reason`` and goes only to logs and traces.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


class BrokerError(Exception):
    """Root of every error the broker raises on purpose."""

    status: int = 500
    code: str = "internal_error"
    title: str = "Internal error"

    def __init__(self, detail: str | None = None, *, code: str | None = None) -> None:
        self.detail = detail or self.title
        if code is not None:
            self.code = code
        super().__init__(self.detail)


# --- caller errors (4xx) ------------------------------------------------------------------------


class CallerError(BrokerError):
    """The request cannot be served as sent; retrying it unchanged will fail again."""

    status = 400
    code = "bad_request"
    title = "Bad request"


class InvalidRequestError(CallerError):
    """Body or parameters do not match the endpoint's schema."""

    code = "invalid_request"
    title = "Invalid request"


class InvalidJSONError(CallerError):
    """The body is not a single well-formed JSON document."""

    code = "invalid_json"
    title = "Malformed JSON body"


class UnknownRuleError(CallerError):
    """A rule id named in the request does not exist in the loaded policy set."""

    code = "unknown_rule"
    title = "Unknown rule"


class AuthenticationError(CallerError):
    """The bearer credential is missing or failed verification (RFC 6750 ``invalid_token``).

    ``reason`` is a precise, secret-free snake_case cause (``expired``, ``bad_signature``...) for
    logs and traces only; the HTTP body stays generic so callers cannot probe the verifier.
    """

    status = 401
    code = "invalid_token"
    title = "Authentication required"

    def __init__(self, reason: str) -> None:
        super().__init__("The bearer token is missing or invalid.")
        self.reason = reason


class UnknownKeyError(AuthenticationError):
    """The token names a signing key (``kid``) its issuer's current key set does not hold.

    The one authentication failure that may succeed after refreshing the issuer's keys.
    """

    def __init__(self, issuer: str) -> None:
        super().__init__("unknown_kid")
        self.issuer = issuer


class ForbiddenError(CallerError):
    """The caller is authenticated but the policy grants nothing for this request."""

    status = 403
    code = "forbidden"
    title = "Forbidden"


class NoMatchingRuleError(ForbiddenError):
    """No policy rule applies to the caller's claims (default deny)."""

    code = "no_matching_rule"
    title = "No policy rule applies"


class RuleNotApplicableError(ForbiddenError):
    """The caller asked for a rule that exists but does not apply to them."""

    code = "rule_not_applicable"
    title = "Requested rule does not apply"


class RequestDeniedError(ForbiddenError):
    """A JSON-RPC notification the policy does not allow (requests get a JSON-RPC error).

    ``reasons`` explains the denial (rule, reason, field, pattern): the proxy's job is to explain.
    """

    code = "request_denied"
    title = "Request not permitted by policy"

    def __init__(self, reasons: Sequence[Mapping[str, Any]]) -> None:
        super().__init__("The policy does not allow this JSON-RPC message.")
        self.reasons = [dict(reason) for reason in reasons]


class NotFoundError(CallerError):
    status = 404
    code = "not_found"
    title = "Not found"


class ConnectionNotFoundError(NotFoundError):
    """Smithery has no such connection in that namespace (or the API key cannot see it)."""

    code = "connection_not_found"
    title = "Connection not found"


class PayloadTooLargeError(CallerError):
    status = 413
    code = "payload_too_large"
    title = "Payload too large"


# --- upstream errors (5xx) ----------------------------------------------------------------------


class UpstreamError(BrokerError):
    """Smithery could not give a usable answer. Never carries Smithery's body to the caller."""

    status = 502
    code = "upstream_error"
    title = "Upstream error"
    retry_after_seconds: int | None = None


class UpstreamRejectedError(UpstreamError):
    """Smithery refused the broker's own request (400/401/403, or 404 for a namespace the API
    key does not own on a connection write): a broker, policy or key misconfiguration.

    ``upstream_status`` and ``upstream_code`` are Smithery's status and ``error`` field, for logs.
    """

    code = "upstream_rejected"
    title = "Upstream rejected the request"

    def __init__(self, upstream_status: int, upstream_code: str) -> None:
        super().__init__("Smithery rejected the broker's request; see the broker's logs.")
        self.upstream_status = upstream_status
        self.upstream_code = upstream_code


class UpstreamUnavailableError(UpstreamError):
    status = 503
    code = "upstream_unavailable"
    title = "Upstream unavailable"

    def __init__(
        self, detail: str, *, retry_after_seconds: int = 1, server_retry_after: int | None = None
    ) -> None:
        super().__init__(detail)
        self.retry_after_seconds = retry_after_seconds
        self.server_retry_after = server_retry_after
        """Smithery's own ``Retry-After``, when it sent one (retries wait at least that long)."""


class UpstreamTimeoutError(UpstreamError):
    status = 504
    code = "upstream_timeout"
    title = "Upstream timed out"


class UpstreamProtocolError(UpstreamError):
    """Smithery answered 2xx with a body that does not follow its contract."""

    code = "upstream_bad_response"
    title = "Upstream sent an invalid response"


# --- startup errors -----------------------------------------------------------------------------


class ConfigError(BrokerError):
    """Settings are invalid. Carries every problem found, not just the first."""

    code = "config_invalid"
    title = "Invalid configuration"

    partial: Any = None
    """From ``load_settings``: the settings with each invalid field at its default, so the checks
    that do not depend on those fields can still report their own problems."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(self.problems))


@dataclass(frozen=True, slots=True)
class PolicyProblem:
    """One problem in one policy file: where it is and what is required."""

    file: str
    path: str
    message: str
    rule_id: str | None = None
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        location = self.file
        if self.line is not None:
            location += f":{self.line}"
            if self.column is not None:
                location += f":{self.column}"
        rule = self.rule_id or "-"
        return f"{location}: {rule}: {self.path}: {self.message}"


class PolicyError(BrokerError):
    """The policy set is invalid. The whole set is rejected; ``problems`` lists every error."""

    code = "policy_invalid"
    title = "Invalid policy set"

    def __init__(self, problems: Sequence[PolicyProblem]) -> None:
        self.problems = tuple(problems)
        super().__init__(f"{len(self.problems)} problem(s) in the policy set")


class IdentityProviderError(BrokerError):
    """Discovery or JWKS could not be fetched or used. Logged; never reaches a caller, because
    verification keeps using the last good keys."""

    code = "identity_provider_error"
    title = "Identity provider unavailable"


class PatternError(BrokerError):
    """An rpcReqMatch pattern cannot be compiled with JavaScript-faithful, linear-time semantics."""

    code = "pattern_invalid"
    title = "Invalid rpcReqMatch pattern"
