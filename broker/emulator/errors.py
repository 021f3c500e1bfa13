"""The emulator's error tree, shaped like Smithery's error bodies.

Each error carries the HTTP status and the ``error`` code Smithery answers with; ``app.py`` turns
them into ``{"error": ..., "message": ...}`` in one place. Handlers raise, they never build error
responses. This module must not import anything from the broker: the emulator is the independent
party the broker is checked against.
"""

from __future__ import annotations


class EmulatorError(Exception):
    """Root of every error the emulator answers on purpose."""

    status_code: int = 500
    code: str = "internal_error"

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


class InvalidRequestError(EmulatorError):
    """A ``POST /tokens`` body that breaks the ``CreateTokenRequest`` schema (TokenError 400)."""

    status_code = 400
    code = "invalid_request"


class ValidationFailedError(EmulatorError):
    """A ``/connect`` body or query that breaks its schema (OpenAPI ``ValidationError``)."""

    status_code = 400
    code = "validation_error"


class InvalidTokenError(EmulatorError):
    """A token given to the introspection endpoint that is malformed or wrongly signed."""

    status_code = 400
    code = "invalid_token"


class UnauthorizedError(EmulatorError):
    """A missing or unknown bearer, or a service token that is expired or tampered with.

    The body stays generic, like Smithery's: the precise reason is not disclosed.
    """

    status_code = 401
    code = "unauthorized"

    def __init__(self, message: str = "Invalid API key") -> None:
        super().__init__(message)


class ForbiddenError(EmulatorError):
    """A valid bearer whose scope does not allow the request."""

    status_code = 403
    code = "forbidden"


class NotFoundError(EmulatorError):
    """A connection that does not exist, or that the bearer's scope may not see."""

    status_code = 404
    code = "not_found"


class ConflictError(EmulatorError):
    """A PUT that would change an existing connection's ``mcpUrl`` (OpenAPI: 409 URL mismatch)."""

    status_code = 409
    code = "conflict"
