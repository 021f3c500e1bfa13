"""What the proxy adds to one MCP call on R4's real chain, A/B between source trees, with two
references: the direct call, and the same call through a bare TCP relay.

R4 judges the proxy's added median at c=1 on the whole chain (emulator, its node helper, the demo
MCP server). Its three runs per side swing with the machine; this probe alternates more, shorter
runs of several brokers, the direct call and the relay in one session, and prints each one's
median p50 and what it adds over the direct call. The relay copies bytes between one client
connection and one emulator connection and parses nothing: the cost of the extra hop alone,
which a proxy cannot avoid.

    python -m bench.chain_ab --trees /path/to/checkout-a [/path/to/checkout-b] [--runs 8]
        [--interleaved CALLS]

``--interleaved CALLS`` replaces the wrk runs by one client that sends CALLS rounds of one call
to every target, in alternating order, over one keep-alive connection each, timing every call
until its whole answer is in. Drift of the machine (which moves whole wrk runs by 20 % here) then
falls on every target alike; besides each target's median it prints the median of its per-round
difference to the direct call.

Trees as in ``bench.proxy_cost`` (``git worktree add /tmp/a <commit>``). Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import statistics
import sys
import tempfile
from pathlib import Path

from bench.errors import HarnessError
from bench.identity import create_identity
from bench.interleave import Point, interleave
from bench.loadgen import run_wrk
from bench.processes import serve_in_process, start_server
from bench.proxy_cost import broker_env
from bench.stack import API_KEY, broker_command, post_token, start_demo_mcp
from bench.workload import DIRECT_PATH, MCP_HEADERS, PROXY_PATH, SUPPORT_CLAIMS, TOOLS_CALL

ROOT = Path(__file__).resolve().parent.parent
BROKER_MAIN = "import sys; from broker.cli import main; sys.exit(main())"


class _Pipe(asyncio.Protocol):
    """One side of the relay: what it receives goes out on the other side."""

    def __init__(self, other: _Pipe | None = None) -> None:
        self.other = other
        self.transport: asyncio.Transport | None = None
        self.early: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        other = self.other
        if other is None or other.transport is None:
            self.early.append(data)
        elif not other.transport.is_closing():  # wrk hung up mid-answer: the rest has no reader
            other.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.close()


async def serve_relay(fd: int, port: str) -> None:
    """Relay each connection accepted on ``fd`` to 127.0.0.1:``port``, byte for byte."""
    loop = asyncio.get_running_loop()

    class Front(_Pipe):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            self.connecting = loop.create_task(self._connect())

        async def _connect(self) -> None:
            _, back = await loop.create_connection(lambda: _Pipe(self), "127.0.0.1", int(port))
            assert back.transport is not None
            for data in self.early:
                back.transport.write(data)
            if self.transport is not None and self.transport.is_closing():
                back.transport.close()  # the client left while the relay was connecting
            self.early, self.other = [], back

    server = await loop.create_server(Front, sock=socket.socket(fileno=fd))
    await server.serve_forever()


def print_interleaved(targets: dict[str, tuple[str, str]], calls: int) -> None:
    try:
        result = interleave(targets, calls)
    except HarnessError as exc:
        raise SystemExit(str(exc)) from None
    points: tuple[tuple[Point, str], ...] = (
        ("whole", "whole answer"),
        ("event", "response event"),
    )
    for point, what in points:
        direct = result.p50("direct", point)
        for name in targets:
            median = result.p50(name, point)
            paired = result.added(name, "direct", point)
            print(
                f"{name}: {what}, {calls} interleaved calls: p50 {median:.2f} ms, adds "
                f"{median - direct:+.2f} ms (median per-round difference {paired:+.2f} ms)"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trees", nargs="+", required=True, help="project checkouts to compare")
    parser.add_argument("--runs", type=int, default=8, help="measured runs per target")
    parser.add_argument("--seconds", type=int, default=4, help="length of each run")
    parser.add_argument(
        "--interleaved",
        type=int,
        default=0,
        metavar="CALLS",
        help="instead of wrk runs: CALLS rounds of one call per target, alternated call by call",
    )
    args = parser.parse_args(argv)
    from broker.demo import MCP_PATH, seed_dev_connections

    work = Path(tempfile.mkdtemp(prefix="chain-ab-"))
    identity = create_identity(work)
    jwt = identity.jwt("sam", claims=SUPPORT_CLAIMS)
    with contextlib.ExitStack() as exits:
        emulator = start_server(
            "emulator", [broker_command(), "emulator", "--api-key", API_KEY], log_dir=work, cwd=ROOT
        )
        exits.callback(emulator.stop)
        emulator.check("/health")
        demo = start_demo_mcp(exits, work)
        asyncio.run(seed_dev_connections(emulator.url, API_KEY, f"{demo.url}{MCP_PATH}"))
        targets: dict[str, tuple[str, str]] = {}
        token = ""
        for index, tree in enumerate(args.trees):
            env = broker_env(tree, emulator.url, identity.jwks_path)
            broker = start_server(
                f"broker-{index}",
                [sys.executable, "-c", BROKER_MAIN, "serve"],
                log_dir=work,
                cwd=Path(tree),
                env={k: v for k, v in env.items() if k.startswith(("BROKER_", "PYTHON"))},
            )
            exits.callback(broker.stop)
            broker.check("/readyz")
            token = post_token(broker.url, jwt).json()["token"]
            targets[tree] = (broker.url + PROXY_PATH, f"Bearer {jwt}")
        relay_url, _ = serve_in_process(
            exits, "bench.chain_ab:serve_relay", emulator.url.rsplit(":", 1)[1], cwd=ROOT
        )
        targets["direct"] = (emulator.url + DIRECT_PATH, f"Bearer {token}")
        targets["relay"] = (relay_url + DIRECT_PATH, f"Bearer {token}")

        if args.interleaved:
            print_interleaved(targets, args.interleaved)
            return 0

        def load(name: str, seconds: int) -> float:
            url, authorization = targets[name]
            run = run_wrk(
                url,
                connections=1,
                threads=1,
                duration_s=seconds,
                authorization=authorization,
                body=TOOLS_CALL,
                headers=dict(MCP_HEADERS),
            )
            if sum(run.errors.values()):
                raise SystemExit(f"{name}: errors {run.errors}")
            return run.p50_ms

        names = list(targets)
        for name in names:
            load(name, 2)  # warm-up
        p50: dict[str, list[float]] = {name: [] for name in names}
        for index in range(args.runs):
            for name in names if index % 2 == 0 else names[::-1]:
                p50[name].append(load(name, args.seconds))
        direct = statistics.median(p50["direct"])
        for name in names:
            median = statistics.median(p50[name])
            runs = ", ".join(f"{value:.2f}" for value in p50[name])
            print(f"{name}: c=1 p50 {median:.2f} ms, adds {median - direct:+.2f} ms (runs: {runs})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
