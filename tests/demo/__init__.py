"""Tests of ``broker.demo``: the demo MCP server, its seeding, and the emulator in front of it."""
