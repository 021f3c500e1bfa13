"""The ``broker`` command: ``serve``, ``dev``, ``check`` and ``emulator``.

Settings are loaded here, once, from the environment and handed to ``create_app``. Every problem
(settings, keys, policies) is printed before exiting non-zero, so an operator fixes them all at
once instead of one per restart.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import stat
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Final, cast

import msgspec
import uvicorn

from broker import __version__
from broker.cluster import load_cluster_keyring
from broker.config import (
    Secret,
    ServerSettings,
    Settings,
    load_settings,
    unknown_env_names,
)
from broker.errors import BrokerError, ConfigError, PolicyError
from broker.explain import effective_issuer, explain, format_text
from broker.files import FileRefused, read_limited
from broker.identity import DevSigner
from broker.jwks import setup_verifier
from broker.policy import PolicySet, load_policy_dir
from broker.policy_lint import lint_policy_set
from broker.policy_testing import load_cases, run_cases
from broker.precheck import Target
from broker.telemetry import select_trace_exporter, setup_logging

if TYPE_CHECKING:
    from litestar.types import ASGIApp

EXIT_OK: Final = 0
EXIT_INVALID: Final = 2
EXIT_LISTEN: Final = 3
"""A port could not be listened on (uvicorn's own code for a failed start)."""
MAX_ARGUMENT_FILE_BYTES: Final = 1024 * 1024
DEV_API_KEY: Final = "dev-api-key"
DEV_AUDIENCE: Final = "token-broker-dev"
DEFAULT_DEV_PORT: Final = 8080
DEFAULT_DEV_UPSTREAM_PORT: Final = 8081
DEFAULT_DEV_MCP_PORT: Final = 8082
LOOPBACK_HOSTS: Final = frozenset({"127.0.0.1", "localhost", "::1"})


class ListenError(Exception):
    """A socket to serve on could not be had; the message is the one line to print."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return _run(parser, args)
    except ListenError as exc:
        print(f"broker: {exc}", file=sys.stderr)
        return EXIT_LISTEN
    except BrokenPipeError:  # output piped into `head`: stop quietly, without a traceback
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    command: str = args.command
    if command == "check":
        return check()
    if command == "serve":
        return serve(host=args.host, port=args.port, fd=args.fd)
    if command == "dev":
        return dev(
            host=args.host,
            port=args.port,
            upstream_port=args.upstream_port,
            mcp_port=args.mcp_port,
            policies=args.policies,
            extra_namespaces=args.namespace,
        )
    if command == "policy":
        return policy_command(args)
    if command == "emulator":
        from broker.emulator import DEFAULT_OWNED_NAMESPACES, create_emulator_app

        if args.host not in LOOPBACK_HOSTS:  # its /_emulator controls take no credential
            print("broker emulator binds to loopback only", file=sys.stderr)
            return EXIT_INVALID
        if not args.api_key or not _printable(args.api_key):
            print(
                "broker emulator: --api-key must be printable ASCII without spaces", file=sys.stderr
            )
            return EXIT_INVALID
        app = create_emulator_app(
            api_key=args.api_key, owned_namespaces=args.namespace or DEFAULT_OWNED_NAMESPACES
        )
        run_server(app, args.host, args.port, fd=args.fd)
        return EXIT_OK
    parser.print_help()
    return EXIT_INVALID


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="broker", description="Policy-aware Smithery service-token broker."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve_cmd = sub.add_parser("serve", help="run the production server (settings from BROKER_*)")
    serve_cmd.add_argument("--host", help="interface to bind (default BROKER_SERVER_HOST)")
    serve_cmd.add_argument("--port", type=_port, help="port (default BROKER_SERVER_PORT)")
    serve_cmd.add_argument("--fd", type=int, help="serve on an inherited listening socket")
    dev_cmd = sub.add_parser(
        "dev", help="run the broker and a Smithery emulator on loopback with a dev identity"
    )
    dev_cmd.add_argument("--host", default="127.0.0.1", help=argparse.SUPPRESS)
    dev_cmd.add_argument("--port", type=_port, default=DEFAULT_DEV_PORT)
    dev_cmd.add_argument("--upstream-port", type=_port, default=DEFAULT_DEV_UPSTREAM_PORT)
    dev_cmd.add_argument(
        "--mcp-port", type=_port, default=DEFAULT_DEV_MCP_PORT, help="port of the demo MCP server"
    )
    dev_cmd.add_argument("--policies", default=None, help="policies directory (default policies)")
    dev_cmd.add_argument(
        "--namespace",
        action="append",
        default=[],
        metavar="NS",
        help="one more namespace the emulator's API key owns (repeatable; the ones the policies "
        "name literally are owned already)",
    )
    sub.add_parser("check", help="validate settings, keys and policies; print every problem")
    policy = sub.add_parser("policy", help="check, explain and test policies")
    policy_sub = policy.add_subparsers(dest="policy_command", required=True)
    p_check = policy_sub.add_parser("check", help="every error and warning in the policy files")
    p_check.add_argument("dirs", nargs="*", metavar="DIR", help="policy directories")
    p_check.add_argument("--strict", action="store_true", help="exit 1 when there are warnings")
    p_explain = policy_sub.add_parser("explain", help="dry run: which rules apply, what is sent")
    p_explain.add_argument("--claims", required=True, help="claims as JSON, or @file")
    p_explain.add_argument("--issuer", default="", help="the token's iss (for issuer conditions)")
    p_explain.add_argument("--request", help="a JSON-RPC message as JSON, or @file")
    p_explain.add_argument("--namespace", help="target namespace for --request")
    p_explain.add_argument("--metadata", help="target connection metadata as JSON, or @file")
    p_explain.add_argument("--policies", help="policy directory (default BROKER_POLICIES_DIR)")
    p_explain.add_argument("--json", action="store_true", help="machine-readable output")
    p_test = policy_sub.add_parser("test", help="run the policy test cases (DIR/tests/*.yaml)")
    p_test.add_argument("dir", nargs="?", metavar="DIR", help="policy directory")
    p_test.add_argument("--tests", help="test case directory (default DIR/tests)")
    emu = sub.add_parser("emulator", help="run the Smithery emulator alone")
    emu.add_argument("--host", default="127.0.0.1")
    emu.add_argument("--port", type=_port, default=DEFAULT_DEV_UPSTREAM_PORT)
    emu.add_argument("--api-key", default=DEV_API_KEY)
    emu.add_argument(
        "--namespace",
        action="append",
        metavar="NS",
        help="a namespace the API key owns, where connections can be written (repeatable;"
        " default my-app, the example policies' namespace)",
    )
    emu.add_argument("--fd", type=int, help="serve on an inherited listening socket")
    return parser


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= 65535):
        raise argparse.ArgumentTypeError(f"{text[:20]!r} is not a TCP port (1-65535)")
    return int(text)


def _printable(text: str) -> bool:
    return text.isascii() and text.isprintable() and " " not in text


def _load(*, production: bool) -> tuple[Settings, PolicySet]:
    """Settings, keys and policies, validated together; raises with every problem found."""
    problems: list[str] = []
    settings = Settings()
    try:
        settings = load_settings(production=production)
    except ConfigError as exc:
        problems.extend(exc.problems)
        settings = exc.partial or settings
    # Each step on its own, so one bad setting or file does not hide another; a step whose own
    # settings are invalid is left out (it would only report the defaults they fell back to).
    steps = (
        (("BROKER_AUTH_",), lambda: setup_verifier(settings.auth)),
        (("BROKER_CACHE_", "BROKER_REDIS_"), lambda: load_cluster_keyring(settings)),
    )
    for prefixes, step in steps:
        if any(p.startswith(prefixes) for p in problems):
            continue
        try:
            step()
        except ConfigError as exc:
            problems.extend(exc.problems)
    try:
        # The very decision ``broker serve`` makes when it sets up tracing.
        select_trace_exporter(os.environ)
    except ConfigError as exc:
        problems.extend(exc.problems)
    policy_set: PolicySet | None = None
    # Even when other settings are invalid, still check the policies the operator pointed at.
    policies_dir = os.environ.get("BROKER_POLICIES_DIR") or settings.policies.dir
    try:
        policy_set = load_policy_dir(policies_dir)
    except PolicyError as exc:
        problems.extend(str(p) for p in exc.problems)
    if problems or policy_set is None:
        raise ConfigError(problems)
    return settings, policy_set


def _report(problems: Sequence[str]) -> None:
    print(f"broker: {len(problems)} problem(s):", file=sys.stderr)
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)


def _warn_unknown_env() -> None:
    for name in unknown_env_names(os.environ):
        print(f"broker: warning: {name} is not a known setting (typo?)", file=sys.stderr)


def check() -> int:
    """``broker check``: exit 0 when settings and policies are valid, 2 listing problems if not."""
    _warn_unknown_env()
    try:
        _, policy_set = _load(production=True)
    except ConfigError as exc:
        _report(exc.problems)
        return EXIT_INVALID
    print(f"broker: ok: {len(policy_set.rules)} rule(s), policy revision {policy_set.revision}")
    return EXIT_OK


class GracefulServer(uvicorn.Server):
    """uvicorn with the broker's shutdown: on SIGTERM mark the app as draining at once
    (``/readyz`` → 503), optionally keep serving for ``delay_seconds`` so load balancers stop
    sending traffic, then let uvicorn stop accepting and finish in-flight requests (bounded by
    ``timeout_graceful_shutdown``), and exit 0 instead of re-raising the signal."""

    def __init__(
        self, config: uvicorn.Config, on_drain: Callable[[], None], delay_seconds: float
    ) -> None:
        super().__init__(config)
        self._on_drain = on_drain
        self._delay_seconds = delay_seconds
        self._draining = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGTERM and not self._draining and self._delay_seconds > 0:
            self._draining = True
            self._on_drain()
            loop = asyncio.get_event_loop()
            loop.call_soon_threadsafe(
                loop.call_later, self._delay_seconds, lambda: self._exit(sig, frame)
            )
            return
        self._on_drain()
        self._exit(sig, frame)

    def _exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        # uvicorn re-raises the signal after a graceful stop; a drained broker exits 0.
        self._captured_signals.clear()


def run_server(
    app: Any,
    host: str,
    port: int,
    *,
    fd: int | None = None,
    extra: Sequence[Any] = (),
    server_settings: ServerSettings | None = None,
    on_drain: Callable[[], None] = lambda: None,
) -> None:
    """Run ``app`` with uvicorn (uvloop + httptools where installed), plus ``extra`` servers
    (``uvicorn.Config`` objects) in the same event loop.

    With ``fd``, serve on an already-listening inherited socket (systemd socket activation, and
    tests, which bind first so there is nothing to wait for).
    """
    from broker.headtimeout import head_timeout_protocol

    limits = server_settings or ServerSettings()
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http=head_timeout_protocol(limits.head_timeout_seconds),
        log_level="warning",
        access_log=False,
        server_header=False,
        # No X-Forwarded-For rewriting: nothing here uses the client address (one ASGI layer less).
        proxy_headers=False,
        lifespan="on",
        timeout_keep_alive=limits.keep_alive_seconds,
        timeout_graceful_shutdown=limits.drain_timeout_seconds,
    )
    server = GracefulServer(config, on_drain, limits.shutdown_delay_seconds)
    main_sockets = listen(host, port) if fd is None else [inherited_socket(fd)]
    others = [(uvicorn.Server(other), listen(other.host, other.port)) for other in extra]

    async def run_all() -> None:
        serving = asyncio.ensure_future(server.serve(sockets=main_sockets))
        # The main server owns the signals; the others stop when it has stopped.
        extra_tasks = [
            asyncio.ensure_future(other._serve(sockets=sockets)) for other, sockets in others
        ]
        await serving
        for other, _ in others:
            other.should_exit = True
        await asyncio.gather(*extra_tasks)

    # uvicorn's own loop choice (uvloop when installed), as ``uvicorn.Server.run`` would make.
    with (
        contextlib.suppress(KeyboardInterrupt),
        asyncio.Runner(loop_factory=config.get_loop_factory()) as runner,
    ):
        runner.run(run_all())


def listen(host: str, port: int) -> list[socket.socket]:
    """TCP sockets listening on ``host``:``port`` (one per address a host name resolves to, IPv4
    and IPv6, as asyncio's own server would), made before any server starts: a port that is taken
    or a name that does not resolve is then one line (``ListenError``), not tracebacks from inside
    a running event loop."""
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ListenError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sockets: list[socket.socket] = []
    try:
        for family, kind, protocol, _, address in dict.fromkeys(addresses):
            sock = socket.socket(family, kind, protocol)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:  # each family on its own socket
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(2048)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise ListenError(f"cannot listen on {host}:{port}: {reason}") from None
    return sockets


def inherited_socket(fd: int) -> socket.socket:
    """The listening socket passed in as file descriptor ``fd`` (``--fd``)."""
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            raise ListenError(f"--fd {fd}: not a socket")
        return socket.socket(fileno=fd)
    except OSError as exc:
        raise ListenError(f"--fd {fd}: {exc.strerror or exc}") from None


def serve(*, host: str | None, port: int | None, fd: int | None = None) -> int:
    from broker.app import create_app

    _warn_unknown_env()
    try:
        settings, policy_set = _load(production=True)
    except ConfigError as exc:
        _report(exc.problems)
        return EXIT_INVALID
    setup_logging()
    app = create_app(settings, policy_set=policy_set)
    extra = []
    if settings.telemetry.metrics_port:
        from broker.app import create_metrics_app
        from broker.headtimeout import head_timeout_protocol

        extra.append(
            uvicorn.Config(
                create_metrics_app(app),
                host=host or settings.server.host,
                port=settings.telemetry.metrics_port,
                http=head_timeout_protocol(settings.server.head_timeout_seconds),
                log_level="warning",
                access_log=False,
                server_header=False,
                # No X-Forwarded-For rewriting: nothing uses the client address.
                proxy_headers=False,
                lifespan="off",
            )
        )
    from broker.app import guarded

    state = app.state.broker
    run_server(
        guarded(app),
        host or settings.server.host,
        settings.server.port if port is None else port,
        fd=fd,
        extra=extra,
        server_settings=settings.server,
        on_drain=lambda: setattr(state, "draining", True),
    )
    return EXIT_OK


def _policies_dir(given: str | None) -> str:
    return given or os.environ.get("BROKER_POLICIES_DIR") or "policies"


def _json_arg(value: str, what: str) -> Any:
    """``--claims '{...}'`` or ``--claims @file.json``."""
    try:
        if value.startswith("@"):
            text = read_limited(value[1:], MAX_ARGUMENT_FILE_BYTES).decode("utf-8")
        else:
            text = value
        return json.loads(text)
    except FileRefused as exc:
        raise ConfigError([f"--{what}: {value[1:]} {exc}"]) from None
    except OSError as exc:
        raise ConfigError([f"--{what}: cannot read {value[1:]}: {exc.strerror}"]) from None
    except RecursionError:
        raise ConfigError([f"--{what}: the JSON is nested too deeply"]) from None
    except ValueError as exc:  # UnicodeDecodeError included
        raise ConfigError([f"--{what}: not valid JSON ({exc})"]) from None


def policy_command(args: argparse.Namespace) -> int:
    try:
        if args.policy_command == "check":
            return policy_check(args.dirs or [_policies_dir(None)], strict=args.strict)
        if args.policy_command == "explain":
            return policy_explain(args)
        return policy_test(_policies_dir(args.dir), args.tests)
    except ConfigError as exc:
        _report(exc.problems)
        return EXIT_INVALID


def policy_check(dirs: Sequence[str], *, strict: bool) -> int:
    """Errors as ``file:line:column: rule-id: $.path: message`` (exit 2), then warnings."""
    errors = 0
    warnings = 0
    for directory in dirs:
        try:
            policy_set = load_policy_dir(directory)
        except PolicyError as exc:
            for problem in exc.problems:
                print(problem)
            errors += len(exc.problems)
            continue
        for warning in lint_policy_set(policy_set):
            print(
                f"{warning.file}:{warning.line}:{warning.column}: {warning.rule_id}: "
                f"{warning.path}: warning: {warning.message}"
            )
            warnings += 1
        print(
            f"{directory}: {len(policy_set.rules)} rule(s), revision {policy_set.revision}",
            file=sys.stderr,
        )
    print(f"{errors} error(s), {warnings} warning(s)", file=sys.stderr)
    if errors:
        return EXIT_INVALID
    return 1 if strict and warnings else EXIT_OK


def policy_explain(args: argparse.Namespace) -> int:
    claims = _json_arg(args.claims, "claims")
    if not isinstance(claims, dict):
        raise ConfigError(["--claims: must be a JSON object"])
    request = _json_arg(args.request, "request") if args.request else None
    metadata = _json_arg(args.metadata, "metadata") if args.metadata else None
    if request is not None and not args.namespace:
        raise ConfigError(["--namespace: required with --request"])
    if metadata is not None and not args.namespace:
        raise ConfigError(["--namespace: required with --metadata"])
    if metadata is not None and not isinstance(metadata, dict):
        raise ConfigError(["--metadata: must be a JSON object"])
    try:
        policy_set = load_policy_dir(_policies_dir(args.policies))
    except PolicyError as exc:
        raise ConfigError([str(p) for p in exc.problems]) from None
    target = Target(args.namespace, metadata) if args.namespace else None
    try:
        issuer = effective_issuer(args.issuer, claims)
    except BrokerError as exc:
        raise ConfigError([f"--issuer: {exc.detail}"]) from None
    try:
        result = explain(
            policy_set,
            claims,
            issuer=issuer,
            request=request,
            target=target,
            exempt_lifecycle=_exempt_lifecycle(),
        )
    except BrokerError as exc:
        raise ConfigError([f"--request: {exc.detail}"]) from None
    if args.json:
        print(json.dumps(result.as_json(), indent=2, ensure_ascii=False))
    else:
        print(format_text(result), end="")
    return EXIT_OK


def _exempt_lifecycle() -> bool:
    """``BROKER_PRECHECK_EXEMPT_LIFECYCLE`` as ``serve`` reads it; a bad value is an error (the
    other settings do not matter to a dry run, so they are not read)."""
    name = "BROKER_PRECHECK_EXEMPT_LIFECYCLE"
    environ = {name: os.environ[name]} if name in os.environ else {}
    return load_settings(environ).precheck.exempt_lifecycle


def policy_test(directory: str, tests: str | None) -> int:
    """Run policy test cases; prints one line per case and ``N passed, M failed``."""
    try:
        policy_set = load_policy_dir(directory)
    except PolicyError as exc:
        raise ConfigError([str(p) for p in exc.problems]) from None
    tests_dir = Path(tests) if tests else Path(directory) / "tests"
    try:
        cases = load_cases(tests_dir)
    except PolicyError as exc:
        raise ConfigError([str(p) for p in exc.problems]) from None
    if not cases:
        raise ConfigError([f"{tests_dir}: no policy test cases found (*.yaml with 'cases:')"])
    results = run_cases(policy_set, cases, exempt_lifecycle=_exempt_lifecycle())
    for result in results:
        status = "PASS" if result.passed else "FAIL"
        print(f"{status} {result.file}: {result.name}")
        for failure in result.failures:
            print(f"     {failure}")
    failed = sum(not r.passed for r in results)
    print(f"{len(results) - failed} passed, {failed} failed")
    return 1 if failed else EXIT_OK


def dev_namespaces(policy_set: PolicySet, extra: Sequence[str] = ()) -> tuple[str, ...]:
    """The namespaces the dev emulator's API key owns: every namespace the policies name
    literally (a grant's or a ``provision`` block's), the example one, and ``extra``."""
    from broker.emulator import DEFAULT_OWNED_NAMESPACES

    names = {*DEFAULT_OWNED_NAMESPACES, *extra}
    for rule in policy_set.rules:
        grants = rule.grant.namespaces
        templates = grants if isinstance(grants, tuple) else (grants,) if grants else ()
        if rule.provision is not None:
            templates = (*templates, rule.provision.namespace)
        names.update(t.source for t in templates if t.is_literal)
    return tuple(sorted(names))


def dev(
    *,
    host: str,
    port: int,
    upstream_port: int,
    mcp_port: int,
    policies: str | None,
    extra_namespaces: Sequence[str] = (),
) -> int:
    """Broker, Smithery emulator and a demo MCP server on loopback, an ephemeral user-signing
    key, ``POST /dev/login``, and emulator connections seeded for the example policies."""
    from broker.app import create_app
    from broker.demo import create_demo_mcp_app, seed_dev_connections
    from broker.emulator import create_emulator_app

    if host not in LOOPBACK_HOSTS:
        print("broker dev binds to loopback only", file=sys.stderr)
        return EXIT_INVALID
    try:
        base = load_settings()
    except ConfigError as exc:
        _report(exc.problems)
        return EXIT_INVALID
    url_host = f"[{host}]" if ":" in host else host  # an IPv6 literal (::1) goes in brackets
    broker_url = f"http://{url_host}:{port}"
    upstream_url = f"http://{url_host}:{upstream_port}"
    settings = msgspec.structs.replace(
        base,
        policies=msgspec.structs.replace(base.policies, dir=policies or base.policies.dir),
        smithery=msgspec.structs.replace(
            base.smithery, base_url=upstream_url, api_key=Secret(DEV_API_KEY)
        ),
        auth=msgspec.structs.replace(
            base.auth,
            issuer=None,
            jwks_file=None,
            jwks_url=None,
            config_file=None,
            audience=(DEV_AUDIENCE,),
        ),
    )
    # What `broker serve` checks before it starts (``_load``), every problem at once.
    problems: list[str] = []
    for step in (
        lambda: load_cluster_keyring(settings),
        lambda: select_trace_exporter(os.environ),
    ):
        try:
            step()
        except ConfigError as exc:
            problems.extend(exc.problems)
    policy_set: PolicySet | None = None
    try:
        policy_set = load_policy_dir(settings.policies.dir)
    except PolicyError as exc:
        problems.extend(str(p) for p in exc.problems)
    if problems or policy_set is None:
        _report(problems)
        return EXIT_INVALID
    setup_logging()
    signer = DevSigner.generate(issuer=f"{broker_url}/dev", audience=DEV_AUDIENCE)
    broker_app = create_app(settings, policy_set=policy_set, dev_signer=signer)
    emulator_app = create_emulator_app(
        api_key=DEV_API_KEY, owned_namespaces=dev_namespaces(policy_set, extra_namespaces)
    )
    mcp_url = f"http://{url_host}:{mcp_port}/mcp"
    from broker.app import HeaderLimit, guarded
    from broker.headtimeout import head_timeout_protocol

    # The header size, head deadline and server settings of `broker serve` on all three (no
    # Server header, no X-Forwarded-For rewriting), its in-flight limit on the broker.
    limits = settings.server
    servers = [
        uvicorn.Server(
            uvicorn.Config(
                app,
                host=host,
                port=app_port,
                http=head_timeout_protocol(limits.head_timeout_seconds),
                log_level="warning",
                lifespan="on",
                access_log=False,
                server_header=False,
                proxy_headers=False,
                timeout_graceful_shutdown=5,
            )
        )
        for app, app_port in (
            (HeaderLimit(cast("ASGIApp", emulator_app), limits.max_header_bytes), upstream_port),
            (
                HeaderLimit(
                    cast("ASGIApp", create_demo_mcp_app(host=host)), limits.max_header_bytes
                ),
                mcp_port,
            ),
            (guarded(broker_app), port),
        )
    ]
    sockets = [listen(host, server.config.port) for server in servers]  # a taken port: one line

    async def run() -> None:
        tasks = [
            asyncio.create_task(server.serve(sockets=listening))
            for server, listening in zip(servers, sockets, strict=True)
        ]
        while not all(server.started for server in servers):
            if any(task.done() for task in tasks):  # failed to start: uvicorn already said why
                for server in servers:
                    server.should_exit = True
                await asyncio.gather(*tasks, return_exceptions=True)
                raise SystemExit(1)
            await asyncio.sleep(0.05)
        await seed_dev_connections(upstream_url, DEV_API_KEY, mcp_url)
        print(dev_banner(broker_url, upstream_url, policy_set, mcp_url), flush=True)
        await asyncio.gather(*tasks)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())
    return EXIT_OK


def dev_banner(
    broker_url: str, upstream_url: str, policy_set: PolicySet, mcp_url: str = "-"
) -> str:
    rules = ", ".join(rule.id for rule in policy_set.rules)
    login = (
        f"curl -s -X POST {broker_url}/dev/login -H 'content-type: application/json' "
        """-d '{"sub": "alice", "email_verified": true}'"""
    )
    extract = "python3 -c 'import json,sys; print(json.load(sys.stdin)[\"access_token\"])'"
    return f"""
Token broker (dev mode) is running.
  broker            {broker_url}          (OpenAPI: {broker_url}/schema)
  Smithery emulator {upstream_url}          (API key: {DEV_API_KEY})
  demo MCP server   {mcp_url}   (connections alice-github, bob-github, support-github)
  dev console       {broker_url}/dev/    (the whole flow in a browser)
  policies          revision {policy_set.revision}: {rules}

Get a JWT for a dev user, then a scoped Smithery service token:

  JWT=$({login} | {extract})
  curl -s -X POST {broker_url}/v1/tokens -H "Authorization: Bearer $JWT"

See exactly what the token allows (the emulator decodes its own tokens):

  SVC=$(curl -s -X POST {broker_url}/v1/tokens -H "Authorization: Bearer $JWT" \\
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
  curl -s -X POST {upstream_url}/_emulator/introspect -H 'content-type: application/json' \\
       -d "{{\\"token\\": \\"$SVC\\"}}"

A user no rule applies to is refused (403 no_matching_rule):

  JWT2=$(curl -s -X POST {broker_url}/dev/login -H 'content-type: application/json' \\
         -d '{{"sub": "mallory"}}' | {extract})
  curl -s -X POST {broker_url}/v1/tokens -H "Authorization: Bearer $JWT2"

Call a tool through the guarded proxy (alice may use her own connection):

  curl -s -X POST {broker_url}/v1/mcp/my-app/alice-github -H "Authorization: Bearer $JWT" \\
       -H 'content-type: application/json' -H 'accept: application/json, text/event-stream' \\
       -d '{{"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {{"name": "search_issues", "arguments": {{"query": "widget"}}}}}}'

A support agent may read issues on the shared connection but not delete repositories; the
broker explains the denial before anything reaches Smithery:

  SUP=$(curl -s -X POST {broker_url}/dev/login -H 'content-type: application/json' \\
        -d '{{"sub": "sam", "groups": ["support"]}}' | {extract})
  curl -s -X POST {broker_url}/v1/mcp/my-app/support-github -H "Authorization: Bearer $SUP" \\
       -H 'content-type: application/json' -H 'accept: application/json, text/event-stream' \\
       -d '{{"jsonrpc": "2.0", "id": 2, "method": "tools/call",
            "params": {{"name": "delete_repository", "arguments": {{"name": "demo"}}}}}}'

Press Ctrl+C to stop.
"""


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
