"""Reading the operator's files (secrets, key sets, policies, issuers, test cases) with a size
limit that holds whatever the path names.

``Path.stat().st_size`` is 0 for a FIFO or a device, so a limit checked that way lets
``/dev/zero`` fill memory, and opening a FIFO waits for a writer that may never come. Here the
path is opened without waiting, refused unless it is a regular file, and at most one byte more
than the limit is read.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


class FileRefused(ValueError):
    """Not a regular file, or larger than the limit. The message is a phrase to put after the
    file's name ("is not a regular file")."""


def read_limited(path: str | Path, max_bytes: int) -> bytes:
    """The bytes of the regular file ``path``, of at most ``max_bytes``. Raises ``FileRefused``,
    or ``OSError`` when the file cannot be opened or read."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise FileRefused("is not a regular file")
        os.set_blocking(fd, True)
        chunks: list[bytes] = []
        left = max_bytes + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    finally:
        os.close(fd)
    if left <= 0:
        raise FileRefused(f"is larger than {max_bytes} bytes")
    return b"".join(chunks)
