"""A local stand-in for Smithery's API: service tokens (``POST /tokens``) and connections.

It follows ``reference/SMITHERY-SEMANTICS.md`` and Smithery's OpenAPI, and is the independent
party the broker is checked against, so nothing here imports the rest of ``broker``. Where the
contract is silent, its choices are listed in ``SEMANTICS.md`` beside this file. Dev mode and
the tests run it as a real server on loopback (``run_emulator``) or in-process
(``create_emulator_app``).
"""

from broker.emulator.app import DEFAULT_OWNED_NAMESPACES, create_emulator_app, run_emulator

__all__ = ["DEFAULT_OWNED_NAMESPACES", "create_emulator_app", "run_emulator"]
