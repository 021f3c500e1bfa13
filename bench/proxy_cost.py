"""The broker's own CPU per proxied MCP call (or per precheck or token call, ``--route``), A/B
between two source trees.

R4 measures the proxy inside the whole chain (emulator, its node helper, the demo MCP server),
which costs ten times the broker and shares the two cores with it: good for the end-to-end
targets, too noisy to tell whether a change to the proxy path helped. This probe puts each
broker in front of a stand-in Smithery that answers from memory (a token, a connection document,
and R4's event-stream answer), alternates wrk runs between the brokers and reports each one's
CPU time per call (median of the runs).

    python -m bench.proxy_cost --trees /path/to/checkout-a /path/to/checkout-b [-c 8] [--runs 6]
        [--instructions CALLS] [--fragmented [MS]] [--route proxy|precheck|tokens] [--profile DIR]

A tree is a checkout of this project (``git worktree add /tmp/a <commit>``); its ``broker``
package is imported from there with this interpreter's installed dependencies. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import httpx

from bench.identity import ALGORITHM, AUDIENCE, ISSUER, create_identity
from bench.loadgen import WrkRun, run_wrk
from bench.processes import listening_socket, serve_in_process
from bench.profiling import markdown, profile_during
from bench.stack import API_KEY
from bench.workload import (
    MCP_HEADERS,
    PRECHECK_BODY,
    PRECHECK_PATH,
    PROXY_PATH,
    SUPPORT_CLAIMS,
    TOOLS_CALL,
)

ROOT: Final = Path(__file__).resolve().parent.parent
EVENT: Final = (
    b'event: message\r\ndata: {"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text",'
    b'"text":"{\\"number\\":1,\\"title\\":\\"Crash when saving an empty widget\\"}"}],'
    b'"isError":false}}\r\n\r\n'
)
# As the emulator sends it: the head, one chunk, then the end of the chunked body, each a write.
MCP_ANSWER: Final = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n\r\n",
    b"%x\r\n%s\r\n" % (len(EVENT), EVENT),
    b"0\r\n\r\n",
)


def _json(body: object) -> bytes:
    data = json.dumps(body).encode()
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
    return head % len(data) + data


FRAGMENT_GAP_SECONDS: Final = 0.001


class StandIn(asyncio.Protocol):
    """Smithery from memory: ``POST /tokens``, ``GET /connect/{ns}/{id}``, and ``.../mcp``.

    ``gap``: seconds between the MCP answer's three writes. 0 writes them back to back, so they
    usually arrive as one; in R4's chain the emulator relays the demo server's stream as it comes,
    and the head, the event and the end reach the broker one by one (``--fragmented``).
    """

    gap = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            lines = self.buffer[:end].decode("latin-1").split("\r\n")
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length :]
            path = lines[0].split(" ")[1]
            if path == "/tokens":
                expires = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(time.time() + 3600))
                self.transport.write(_json({"token": "stand-in-token", "expiresAt": expires}))
            elif path.endswith("/mcp"):
                self._answer(MCP_ANSWER)
            else:
                name = path.rsplit("/", 1)[-1]
                document = {"connectionId": name, "name": name, "mcpUrl": "http://mcp.invalid/"}
                self.transport.write(_json({**document, "metadata": {"connectionId": name}}))

    def _answer(self, parts: tuple[bytes, ...]) -> None:
        if not self.gap:
            for part in parts:
                self.transport.write(part)
            return
        if self.transport.is_closing():  # the broker went away (the end of a run)
            return
        self.transport.write(parts[0])
        if len(parts) > 1:
            asyncio.get_running_loop().call_later(self.gap, self._answer, parts[1:])


async def serve_stand_in(fd: int, gap: str = "0") -> None:
    import socket

    StandIn.gap = float(gap)

    sock = socket.socket(fileno=fd)
    server = await asyncio.get_running_loop().create_server(StandIn, sock=sock)
    await server.serve_forever()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def broker_env(tree: str, upstream: str, jwks_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(Path(tree).resolve()),
        "PYTHONHASHSEED": "0",  # the same work in every process (instruction counts repeat)
        "BROKER_POLICIES_DIR": str(ROOT / "policies"),
        "BROKER_SMITHERY_BASE_URL": upstream,
        "BROKER_SMITHERY_API_KEY": API_KEY,
        "BROKER_AUTH_ISSUER": ISSUER,
        "BROKER_AUTH_AUDIENCE": AUDIENCE,
        "BROKER_AUTH_JWKS_FILE": str(jwks_path),
        "BROKER_AUTH_ALGORITHMS": ALGORITHM,
        "BROKER_LIMITS_REQUEST_RATE_PER_SECOND": "1000000",
        "BROKER_LIMITS_REQUEST_BURST": "1000000",
        "BROKER_LIMITS_MCP_CALLS_PER_USER": "1000000",
    }


def start_broker(
    exits: contextlib.ExitStack, tree: str, env: dict[str, str], wrapper: Sequence[str] = ()
) -> tuple[str, subprocess.Popen[bytes]]:
    """``broker serve`` from ``tree`` on a fresh loopback socket (under ``wrapper``, if any)."""
    sock = listening_socket()
    exits.callback(sock.close)
    process = subprocess.Popen(
        [
            *wrapper,
            sys.executable,
            "-c",
            "import sys; from broker.cli import main; sys.exit(main())",
            "serve",
            "--fd",
            str(sock.fileno()),
        ],
        env=env,
        cwd=tree,
        pass_fds=(sock.fileno(),),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL if wrapper else None,
    )
    exits.callback(process.kill)
    return f"http://127.0.0.1:{sock.getsockname()[1]}", process


@dataclass(frozen=True, slots=True)
class Route:
    """One kind of call: where it goes, what it sends, and a byte string its answer must hold."""

    path: str
    body: str
    headers: Mapping[str, str]
    expect: bytes


ROUTES: Final = {
    "proxy": Route(PROXY_PATH, TOOLS_CALL, MCP_HEADERS, b"Crash"),  # relayed from the stand-in
    "precheck": Route(PRECHECK_PATH, PRECHECK_BODY, {}, b'"allowed":true'),  # R3's call
    "tokens": Route("/v1/tokens", "", {}, b'"token":"stand-in-token"'),  # a cached token
}


def check_call(client: httpx.Client, url: str, route: Route, jwt: str) -> str | None:
    """None when the broker answered the call as expected; otherwise what it answered."""
    headers = {"authorization": f"Bearer {jwt}", **route.headers}
    if route.body:
        headers["content-type"] = "application/json"
    reply = client.post(url + route.path, content=route.body, headers=headers)
    if reply.status_code != 200 or route.expect not in reply.content:
        return f"{route.path} answered {reply.status_code}: {reply.text[:200]}"
    return None


def count_instructions(
    tree: str, env: dict[str, str], route: Route, jwt: str, calls: int, out: Path
) -> float:
    """User-space instructions per call, counted by callgrind (repeatable to ~0.2 %).

    The broker runs under ``valgrind --tool=callgrind`` with counting off; after a warm-up,
    ``callgrind_control`` turns counting on and zeroes it, ``calls`` sequential calls run, and a
    dump gives the total. A control command takes effect when the process next runs, so each is
    followed by calls until it returns: the count's edges are within one call.
    """
    with contextlib.ExitStack() as exits:
        url, process = start_broker(
            exits,
            tree,
            env,
            ("valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"),
        )
        with httpx.Client(timeout=300) as client:
            problem = check_call(client, url, route, jwt)  # waits out the slow start
            if problem is not None:
                raise SystemExit(f"{tree}: {problem}")
            for _ in range(30):
                check_call(client, url, route, jwt)

            def control(option: str) -> None:
                command = subprocess.Popen(
                    ["callgrind_control", option, str(process.pid)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                while command.poll() is None:
                    check_call(client, url, route, jwt)
                if command.returncode != 0:
                    raise SystemExit(f"callgrind_control {option} failed")

            control("--instr=on")
            control("--zero")
            for _ in range(calls):
                problem = check_call(client, url, route, jwt)
                if problem is not None:
                    raise SystemExit(f"{tree}: {problem}")
            control("--dump")
    dumps = sorted(out.parent.glob(out.name + ".*"))
    for line in dumps[-1].read_text().splitlines():
        if line.startswith("summary:"):
            return int(line.split()[1]) / calls
    raise SystemExit(f"no summary in {dumps[-1]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trees", nargs="+", required=True, help="project checkouts to compare")
    parser.add_argument("-c", "--connections", type=int, default=8)
    parser.add_argument("--runs", type=int, default=6, help="measured runs per tree")
    parser.add_argument("--seconds", type=int, default=3, help="length of each run")
    parser.add_argument(
        "--instructions",
        type=int,
        metavar="CALLS",
        help="instead of CPU time under load: count each broker's instructions per call over "
        "CALLS sequential calls with callgrind (valgrind), which the machine's noise does not move",
    )
    parser.add_argument(
        "--fragmented",
        nargs="?",
        type=float,
        const=FRAGMENT_GAP_SECONDS * 1000,
        metavar="MS",
        help=f"the stand-in writes the MCP answer's head, event and end MS apart (default "
        f"{FRAGMENT_GAP_SECONDS * 1000:g} ms), as they reach the broker in R4; with "
        f"--instructions give more (say 50): callgrind slows the broker down some fifty times",
    )
    parser.add_argument(
        "--route",
        choices=sorted(ROUTES),
        default="proxy",
        help="the call measured: the guarded proxy (default), R3's precheck, or a cached token",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="after measuring, sample each broker with py-spy during one more run and write its "
        "collapsed stacks and a summary to DIR",
    )
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="proxy-cost-"))
    identity = create_identity(work)
    jwt = identity.jwt("sam", claims=SUPPORT_CLAIMS)
    route = ROUTES[args.route]
    with contextlib.ExitStack() as exits:
        upstream, _ = serve_in_process(
            exits,
            "bench.proxy_cost:serve_stand_in",
            str((args.fragmented or 0.0) / 1000),
            cwd=ROOT,
        )
        if args.instructions:
            if shutil.which("valgrind") is None:
                print("--instructions needs valgrind (Debian package valgrind)")
                return 1
            for index, tree in enumerate(args.trees):
                env = broker_env(tree, upstream, identity.jwks_path)
                out = work / f"callgrind-{index}.out"
                count = count_instructions(tree, env, route, jwt, args.instructions, out)
                calls = args.instructions
                print(f"{tree}: {count:,.0f} instructions per {args.route} call ({calls} calls)")
            return 0
        brokers: list[tuple[str, str, subprocess.Popen[bytes]]] = []
        for tree in args.trees:
            url, process = start_broker(exits, tree, broker_env(tree, upstream, identity.jwks_path))
            brokers.append((tree, url, process))
        with httpx.Client(timeout=30) as client:
            for tree, url, _ in brokers:
                problem = check_call(client, url, route, jwt)
                if problem is not None:
                    print(f"{tree}: {problem}")
                    return 1

        def load(url: str, seconds: int) -> WrkRun:
            return run_wrk(
                url + route.path,
                connections=args.connections,
                threads=1,
                duration_s=seconds,
                authorization=f"Bearer {jwt}",
                body=route.body,
                headers=dict(route.headers),
            )

        for _, url, _ in brokers:
            load(url, 2)  # warm-up
        cpu: dict[str, list[float]] = {tree: [] for tree in args.trees}
        p50: dict[str, list[float]] = {tree: [] for tree in args.trees}
        for index in range(args.runs):
            for tree, url, process in brokers if index % 2 == 0 else brokers[::-1]:
                before = cpu_seconds(process.pid)
                run = load(url, args.seconds)
                if sum(run.errors.values()):
                    print(f"{tree}: errors {run.errors}")
                    return 1
                cpu[tree].append((cpu_seconds(process.pid) - before) / run.requests * 1e6)
                p50[tree].append(run.p50_ms)
        for tree in args.trees:
            print(
                f"{tree}: c={args.connections} broker CPU {statistics.median(cpu[tree]):.0f} µs "
                f"per {args.route} call (runs: {', '.join(f'{v:.0f}' for v in cpu[tree])}), "
                f"p50 {statistics.median(p50[tree]):.2f} ms"
            )
        if args.profile is not None:
            args.profile.mkdir(parents=True, exist_ok=True)
            for index, (tree, url, process) in enumerate(brokers):
                raw = args.profile / f"broker-{index}.pyspy.txt"
                profile = profile_during(
                    process.pid, args.seconds, raw, functools.partial(load, url, args.seconds)
                )
                summary = markdown(profile, tree, f"{args.route} at c={args.connections}")
                (args.profile / f"broker-{index}.md").write_text(summary)
                print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
