"""A demo MCP server (a fake GitHub with four tools) and dev connections pointing at it.

For dev mode and the tests: ``create_demo_mcp_app``/``run_demo_mcp`` serve the server with the
official ``mcp`` SDK over stateless Streamable HTTP, and ``seed_dev_connections`` registers it in
the Smithery emulator for the example policies' users. Nothing here imports the rest of
``broker``: the demo stands in for a third party, like the emulator.
"""

from broker.demo.seed import DEV_CONNECTIONS, SeedError, seed_dev_connections
from broker.demo.server import (
    DEMO_SERVER_NAME,
    MCP_PATH,
    create_demo_mcp_app,
    run_demo_mcp,
)

__all__ = [
    "DEMO_SERVER_NAME",
    "DEV_CONNECTIONS",
    "MCP_PATH",
    "SeedError",
    "create_demo_mcp_app",
    "run_demo_mcp",
    "seed_dev_connections",
]
