"""The one failure type of the harness: something broke, so the numbers cannot be trusted."""

from __future__ import annotations


class HarnessError(Exception):
    """A server did not start, a tool is missing, a scenario produced no numbers or a wrong one.

    Never raised for a slow result: performance ratios are reported, not asserted.
    """
