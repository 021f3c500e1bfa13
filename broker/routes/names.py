"""Validation of namespace and connection-id path segments before they reach Smithery's URLs."""

from __future__ import annotations

import re
from typing import Final

from broker.errors import InvalidRequestError

# ``(?!\n)``: Python's ``$`` also matches before a final newline (JavaScript's, as in the
# OpenAPI document, does not); with it, both end at the string's end.
NAME_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._~-]{0,127}$(?!\n)"
_NAME: Final = re.compile(NAME_PATTERN)


def check_name(kind: str, value: str) -> str:
    """Slugs only: nothing that could change the upstream URL's path (``..``, ``/``, ``%``)."""
    if not _NAME.match(value) or value in {".", ".."} or ".." in value:
        raise InvalidRequestError(
            f"{kind} must be 1-128 letters, digits, '.', '_', '~' or '-', starting with a "
            "letter or digit"
        )
    return value
