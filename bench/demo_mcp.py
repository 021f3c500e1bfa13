"""R4's MCP server: the project's demo server (``broker.demo``) on an inherited loopback socket.

``create_demo_mcp_app`` (stateless Streamable HTTP at ``/mcp``, answers ``text/event-stream``)
served with the same uvicorn settings as the broker and the baseline (``bench.baseline.serve``:
1 worker, uvloop, httptools, lifespan on, which the SDK's session manager needs).

Run: ``python -m bench.demo_mcp --fd N``.
"""

from __future__ import annotations

import argparse

from bench.baseline import serve
from broker.demo import create_demo_mcp_app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.demo_mcp", description=__doc__)
    parser.add_argument("--fd", type=int, required=True, help="inherited listening socket")
    args = parser.parse_args()
    serve(create_demo_mcp_app(host="127.0.0.1"), args.fd)


if __name__ == "__main__":
    main()
