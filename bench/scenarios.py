"""The scenario registry: what is measured, how, and against which target.

Every scenario is one ``Scenario`` entry in ``SCENARIOS``. A measured one has a ``run`` function
taking the ``Context`` (plan, servers, identity) and returning a ``ScenarioResult``; one that
cannot be measured yet has ``run=None`` and a ``pending`` reason, and is reported as "not yet
measured" instead of being faked. To add one, write its ``run`` function with the helpers below
(``ab_load`` for A/B wrk runs, ``run_burst``), set it on the entry and document it in
``bench/README.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import secrets
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final, TypeAlias, TypedDict

from bench import profiling
from bench.burst import BurstResult, run_burst
from bench.errors import HarnessError
from bench.identity import Identity
from bench.interleave import WARMUP_ROUNDS as INTERLEAVED_WARMUP_ROUNDS
from bench.interleave import Interleaved, interleave
from bench.jwtpool import JwtPool, create_pool, send_each
from bench.loadgen import THINK_CAP, WrkRun, run_wrk
from bench.plan import FULL, Plan
from bench.processes import Server
from bench.results import (
    App,
    AppSummary,
    Check,
    Comparison,
    Run,
    ScenarioResult,
    percentile,
)
from bench.stack import (
    API_KEY,
    ROOT,
    TOKEN_PATH,
    Stack,
    post,
    post_token,
    start_baseline,
    start_demo_mcp,
)
from bench.workload import (
    DIRECT_PATH,
    MCP_HEADERS,
    PRECHECK_BODY,
    PRECHECK_PATH,
    PROXY_PATH,
    SUPPORT_RULE,
    TOOLS_CALL,
    VERIFIED_TOKEN_PATH,
    jsonrpc_answer,
)

R1_TARGET_RATIO: Final = 0.80
R1_TARGET_CPU_RATIO: Final = 1.25
"""Issue #4: a cached-token request costs at most 1.25x the CPU of the bare Litestar handler."""
R2_TARGET_RATIO: Final = 0.90
R3_TARGET_RATIO: Final = 0.75
R4_TARGET_RATIO: Final = 0.70
R4_TARGET_ADDED_MS: Final = 1.0
R4_UNLOADED_CONCURRENCY: Final = 1
R4_MIN_THINK_MS: Final = 1.0
"""The paced load's shortest mean think time: wrk waits whole milliseconds."""
R4_INTERLEAVED: Final = "one call at a time, interleaved"
"""The label of R4's judged one-at-a-time reading (``bench/interleave.py``)."""
R4_JUDGING: Final = (
    f"The added p50 (<= {R4_TARGET_ADDED_MS:.0f} ms) is judged one call at a time and on the "
    "paced load, "
    f"the throughput ratio (>= {R4_TARGET_RATIO:.2f}) at the saturated concurrencies above "
    "c=1, where the added p50 is reported, not judged. Why: wrk's closed loop keeps a saturated "
    "chain full, and Little's law (requests in flight = throughput x time in the system) then "
    "makes its median latency about c / throughput. The broker-minus-direct p50 there is thus "
    "about c x the proxy's extra CPU per call / the cores: a second reading of the throughput "
    "ratio, not the time the proxy adds to a call. With one call at a time, or with think time "
    "keeping the direct path at a set share of its capacity (the paced load), a call seldom "
    "waits for another, and the gap in p50 is the proxy's own latency. One call at a time is "
    "judged on single calls alternated between the direct path and the broker, round by round "
    "(the median of the per-round differences, until the JSON-RPC response's event is in, where "
    "an MCP client has its answer): whole 10 s wrk runs at c=1 drift with the machine by more "
    "than the target, one run at a time, so the c=1 wrk runs are reported, not judged."
)
"""How R4's targets are judged and why, for the report (``ScenarioResult.note``)."""
R6_TARGET_BYTES: Final = 1024
MICRO_TARGET_US: Final = 10.0
MEMORY_TIMEOUT_SECONDS: Final = 600
MICRO_TIMEOUT_SECONDS: Final = 300
POOL_WARM_CONNECTIONS: Final = 32


@dataclass
class Context:
    plan: Plan
    stack: Stack
    identity: Identity
    reference_jwt: str
    """The JWT the stack was started with: the broker has its service token cached."""
    support_jwt: str
    """R3's and R4's user: ``groups: ["support"]``, so the two support-github rules apply."""
    work_dir: Path
    log: Callable[[str], None]
    profile: frozenset[str] = frozenset()
    """Scenario ids to profile with py-spy after measuring (``--profile``)."""
    out_dir: Path = Path()
    stem: str = ""
    notes: list[str] = field(default_factory=list)
    """Markdown sections for the report (the profiles)."""


@dataclass(frozen=True, slots=True)
class LoadTarget:
    """What wrk sends to one app: a path on a server, an Authorization header (or a JWT pool
    rotated per request), an optional JSON body and extra headers.

    The CPU time of ``server`` and ``also_cpu`` (and their child processes) is read before and
    after every measured run: R4 counts the whole chain of servers a request goes through.
    """

    server: Server
    path: str
    authorization: str = ""
    body: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    pool: JwtPool | None = None
    also_cpu: tuple[Server, ...] = ()

    @property
    def url(self) -> str:
        return f"{self.server.url}{self.path}"

    @property
    def cpu_servers(self) -> tuple[Server, ...]:
        return (self.server, *self.also_cpu)

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds used so far by each server of ``cpu_servers``, by name."""
        return {server.name: server.cpu_seconds() for server in self.cpu_servers}


@dataclass(frozen=True, slots=True)
class Scenario:
    id: str
    title: str
    measures: str
    target: str
    run: Callable[[Context], ScenarioResult] | None = None
    pending: str = ""
    """Why it is not measured yet (when ``run`` is None)."""


# --- helpers shared by scenarios ----------------------------------------------------------------


Targets: TypeAlias = tuple[tuple[App, LoadTarget], ...]
"""The two apps of an A/B load, in the order their runs alternate (baseline first)."""


def ab_load(
    ctx: Context,
    scenario_id: str,
    baseline: LoadTarget,
    broker: LoadTarget,
    concurrencies: Sequence[int] | None = None,
) -> tuple[list[Run], int]:
    """Alternated wrk runs (baseline, broker, baseline, ...) at every concurrency of the plan.

    Each concurrency is one ``alternate`` load labelled ``c=N``. Returns the measured runs and
    the number of tokens the emulator minted during the broker's measured runs. A JWT pool
    rotation continues from run to run (each app has its own position). When the scenario is in
    ``ctx.profile``, one more run per app follows under py-spy (see ``profile_load``).
    """
    targets: Targets = (("baseline", baseline), ("broker", broker))
    positions: dict[App, int] = {"baseline": 0, "broker": 0}
    concurrencies = tuple(concurrencies or ctx.plan.concurrencies)
    runs: list[Run] = []
    mints = 0
    for concurrency in concurrencies:
        measured, minted = alternate(ctx, targets, concurrency, f"c={concurrency}", positions)
        runs += measured
        mints += minted
    if scenario_id in ctx.profile:
        profile_load(ctx, scenario_id, targets, max(concurrencies), positions)
    return runs, mints


def alternate(
    ctx: Context,
    targets: Targets,
    connections: int,
    label: str,
    positions: dict[App, int],
    think_ms: float | None = None,
) -> tuple[list[Run], int]:
    """One load shape: an untimed warm-up run per app, then the plan's measured runs alternated.

    Every run uses ``connections`` wrk connections and, when ``think_ms`` is given, that mean
    think time between a connection's requests (the same for both apps: the same offered
    pattern). Returns the runs, labelled ``label``, and the tokens the emulator minted during
    the broker's measured runs. Each run's ``extra`` holds wrk's numbers, the changes of the
    emulator's counters during it and the CPU per request of every server it counts.
    ``positions`` (each app's place in its JWT pool) is advanced by every run.
    """
    plan, stack, mints = ctx.plan, ctx.stack, 0
    runs: list[Run] = []
    for app, target in targets:
        warm = _wrk(ctx, app, target, connections, plan.warmup_s, positions[app], think_ms)
        positions[app] += warm.sent
    for index in range(plan.runs):
        for app, target in targets:
            stats_before = stack.emulator_stats()
            cpu_before = target.cpu_seconds()
            run = _wrk(ctx, app, target, connections, plan.duration_s, positions[app], think_ms)
            cpu_after = target.cpu_seconds()
            cpu_by_server = {
                name: (cpu_after[name] - cpu_before[name]) / run.requests * 1e6
                for name in cpu_after
            }
            cpu_us = sum(cpu_by_server.values())
            stats_after = stack.emulator_stats()
            emulator = {k: v - stats_before.get(k, 0) for k, v in stats_after.items()}
            minted = emulator.get("tokens_minted", 0) if app == "broker" else 0
            mints += minted
            extra = asdict(run) | {
                "mints": minted,
                "emulator": emulator,
                "cpu_us_by_server": cpu_by_server,
            }
            if think_ms is not None:
                extra["connections"] = connections
                extra["think_ms"] = think_ms
            if target.pool is not None:
                extra["pool"] = {
                    "size": target.pool.size,
                    "first_index": positions[app] % target.pool.size,
                    "distinct_jwts": min(run.sent, target.pool.size),
                }
                positions[app] += run.sent
            runs.append(Run(app, label, index, run.rps, run.p50_ms, run.p99_ms, cpu_us, extra))
            split = (
                " (" + ", ".join(f"{k} {v:,.0f}" for k, v in cpu_by_server.items()) + ")"
                if len(cpu_by_server) > 1
                else ""
            )
            ctx.log(
                f"  {label} run {index + 1}/{plan.runs} {app:8s} {run.rps:9,.0f} req/s  "
                f"p50 {run.p50_ms:6.2f} ms  p99 {run.p99_ms:6.2f} ms  "
                f"CPU {cpu_us:5.0f} us/req{split}"
            )
    return runs, mints


def profile_load(
    ctx: Context,
    scenario_id: str,
    targets: Targets,
    concurrency: int,
    positions: dict[App, int],
) -> None:
    """One extra, unmeasured run per app under py-spy (broker first); adds report sections."""
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    seconds = ctx.plan.duration_s
    for app, target in reversed(targets):
        server = target.server
        ctx.log(f"  profiling the {server.name} with py-spy during one extra run ({concurrency=})")

        def load(app: App = app, target: LoadTarget = target) -> object:
            return _wrk(ctx, app, target, concurrency, seconds, positions[app])

        path = ctx.out_dir / f"{ctx.stem}-{server.name}-{scenario_id.lower()}.pyspy.txt"
        profile = profiling.profile_during(server.pid, seconds, path, load)
        what = f"{scenario_id} at c={concurrency}, as the {app} side"
        ctx.notes.append(profiling.markdown(profile, server.name, what))


def _wrk(
    ctx: Context,
    app: App,
    target: LoadTarget,
    connections: int,
    seconds: int,
    position: int,
    think_ms: float | None = None,
) -> WrkRun:
    ctx.stack.ensure_running()
    for server in target.cpu_servers:
        server.ensure_running()
    run = run_wrk(
        target.url,
        connections=connections,
        threads=min(ctx.plan.threads, connections),
        duration_s=seconds,
        authorization=target.authorization,
        body=target.body,
        headers=target.headers,
        pool_file=None if target.pool is None else target.pool.path,
        pool_offset=position % target.pool.size if target.pool is not None else 0,
        think_ms=think_ms,
    )
    failed = run.errors["status"] + run.errors["connect"]
    if run.requests == 0 or failed:
        raise HarnessError(
            f"{app} at c={connections}: {run.requests} requests, {run.errors['status']} non-2xx, "
            f"{run.errors['connect']} connect errors: the harness is not measuring a good path "
            f"({_one_answer(target, position)})"
        )
    return run


def _one_answer(target: LoadTarget, position: int) -> str:
    """What one more request to ``target`` gets (to say what the failed requests got)."""
    authorization = target.authorization
    if target.pool is not None:
        authorization = target.pool.authorizations[position % target.pool.size]
    try:
        response = post(
            target.url,
            authorization=authorization,
            body=target.body,
            headers=dict(target.headers),
        )
    except HarnessError as exc:
        return f"one more request failed: {exc}"
    return f"one more request: {response.status_code} {response.text[:300]!r}"


def _comparisons(ctx: Context, runs: list[Run], concurrencies: Sequence[int]) -> list[Comparison]:
    plan = ctx.plan
    return [
        Comparison.of(f"c={c}", f"c={c}, {plan.runs}x{plan.duration_s} s", runs)
        for c in concurrencies
    ]


def _ok_reply(response: Any, what: str) -> Any:
    """The JSON body of a 200 answer, or a HarnessError saying what came instead."""
    if response.status_code != 200:
        raise HarnessError(f"{what} answered {response.status_code}: {response.text[:500]}")
    try:
        return response.json()
    except ValueError:
        raise HarnessError(f"{what} answered 200 but no JSON: {response.text[:500]}") from None


def _burst_run(app: App, index: int, result: BurstResult) -> Run:
    wall_s = result.wall_ms / 1000.0
    return Run(
        app,
        f"burst of {result.size}",
        index,
        rps=result.size / wall_s if wall_s > 0 else 0.0,
        p50_ms=percentile(result.latencies_ms, 50),
        p99_ms=percentile(result.latencies_ms, 99),
        cpu_us=math.nan,
        extra={
            "wall_ms": result.wall_ms,
            "max_ms": result.latencies_ms[-1] if result.latencies_ms else None,
            "statuses": {str(k): v for k, v in result.statuses.items()},
        },
    )


def _distinct_tokens(result: BurstResult) -> int:
    tokens = set()
    for body in result.bodies:
        try:
            tokens.add(json.loads(body)["token"])
        except (ValueError, KeyError, TypeError):
            tokens.add(None)
    return len(tokens)


# --- measured scenarios ---------------------------------------------------------------------------


def r1_same_jwt(ctx: Context) -> ScenarioResult:
    authorization = f"Bearer {ctx.reference_jwt}"
    runs, mints = ab_load(
        ctx,
        "R1",
        baseline=LoadTarget(ctx.stack.baseline, TOKEN_PATH, authorization),
        broker=LoadTarget(ctx.stack.broker, TOKEN_PATH, authorization),
    )
    comparisons = _comparisons(ctx, runs, ctx.plan.concurrencies)
    cpu_ratios = {c.label: c.broker.cpu_us / c.baseline.cpu_us for c in comparisons}
    met = all(
        c.ratio >= R1_TARGET_RATIO and cpu_ratios[c.label] <= R1_TARGET_CPU_RATIO
        for c in comparisons
    )
    return ScenarioResult(
        **_meta("R1"),
        status="measured",
        target_met=met,
        summary=", ".join(
            f"{c.label}: ratio {c.ratio:.2f}, CPU {cpu_ratios[c.label]:.2f}x" for c in comparisons
        ),
        comparisons=comparisons,
        runs=runs,
        details={"mints_during_measured_runs": mints},
    )


def r2_fresh_jwt(ctx: Context) -> ScenarioResult:
    plan, stack = ctx.plan, ctx.stack
    pool = create_pool(ctx.identity, ctx.work_dir, plan.jwt_pool)
    ctx.log(f"  {pool.size:,} JWTs for {pool.size:,} users signed in {pool.sign_seconds:.1f} s")
    before = stack.tokens_minted()
    warm = send_each(
        stack.broker.url, TOKEN_PATH, pool.authorizations, connections=POOL_WARM_CONNECTIONS
    )
    warm_mints = stack.tokens_minted() - before
    ctx.log(
        f"  service-token cache warmed for every user in {warm.seconds:.1f} s: "
        f"{warm_mints:,} mints, statuses {warm.statuses}"
    )
    if warm.statuses != {200: pool.size}:
        raise HarnessError(f"warming the pool's users: statuses {warm.statuses}, not all 200")
    first = pool.authorizations[0]
    sizes = {
        app: len(post(f"{server.url}{path}", authorization=first).content)
        for app, server, path in (
            ("broker", stack.broker, TOKEN_PATH),
            ("baseline", stack.baseline, VERIFIED_TOKEN_PATH),
        )
    }
    if sizes["broker"] != sizes["baseline"]:
        ctx.log(f"  note: answer sizes differ for the pool's first user: {sizes}")
    runs, mints = ab_load(
        ctx,
        "R2",
        baseline=LoadTarget(stack.baseline, VERIFIED_TOKEN_PATH, pool=pool),
        broker=LoadTarget(stack.broker, TOKEN_PATH, pool=pool),
    )
    comparisons = _comparisons(ctx, runs, plan.concurrencies)
    broker_runs = [r for r in runs if r.app == "broker"]
    sent = [r.extra["sent"] for r in broker_runs]
    distinct = [r.extra["pool"]["distinct_jwts"] for r in broker_runs]
    uses = math.ceil(max(sent) / pool.size)
    fresh = pool.size > plan.verified_cache_entries
    return ScenarioResult(
        **_meta("R2"),
        status="measured",
        target_met=all(c.ratio >= R2_TARGET_RATIO for c in comparisons),
        summary=(
            ", ".join(f"{c.label}: ratio {c.ratio:.2f}" for c in comparisons)
            + f"; each broker run sent {min(sent):,}-{max(sent):,} requests with "
            f"{min(distinct):,}-{max(distinct):,} distinct JWTs (each at most {uses}x per run; "
            f"pool {pool.size:,} {'>' if fresh else '<='} verified-JWT cache "
            f"{plan.verified_cache_entries:,}: "
            + ("no request can hit it" if fresh else "repeats may hit it")
            + f"); {mints} mint(s) while measuring"
        ),
        comparisons=comparisons,
        runs=runs,
        details={
            "pool_size": pool.size,
            "answer_bytes": sizes,
            "verified_cache_entries": plan.verified_cache_entries,
            "every_request_verified": fresh,
            "sign_seconds": pool.sign_seconds,
            "warm_seconds": warm.seconds,
            "warm_mints": warm_mints,
            "mints_during_measured_runs": mints,
        },
        checks=[
            Check(
                "warm-up: exactly one mint per pool user",
                warm_mints == pool.size,
                f"{warm_mints} mints for {pool.size} users",
            )
        ],
    )


def r3_precheck(ctx: Context) -> ScenarioResult:
    plan, stack = ctx.plan, ctx.stack
    authorization = f"Bearer {ctx.support_jwt}"
    reply = post(
        f"{stack.broker.url}{PRECHECK_PATH}", authorization=authorization, body=PRECHECK_BODY
    )
    decision = _ok_reply(reply, f"broker POST {PRECHECK_PATH}")
    if decision.get("allowed") is not True or decision.get("rule") != SUPPORT_RULE:
        raise HarnessError(f"the precheck was expected to allow by {SUPPORT_RULE}: {decision}")
    precheck_file = ctx.work_dir / "precheck-body.json"
    precheck_file.write_bytes(reply.content)
    with contextlib.ExitStack() as exits:
        baseline = start_baseline(
            exits,
            ctx.work_dir,
            "baseline-precheck",
            ["--body-file", str(stack.token_body_file), "--precheck-body-file", str(precheck_file)],
        )
        base_reply = post(
            f"{baseline.url}{PRECHECK_PATH}", authorization=authorization, body=PRECHECK_BODY
        )
        _ok_reply(base_reply, f"baseline POST {PRECHECK_PATH}")
        if len(base_reply.content) != len(reply.content):
            raise HarnessError(
                f"baseline precheck body is {len(base_reply.content)} bytes, the broker's "
                f"{len(reply.content)}: not comparable"
            )
        loops = {server.name: server.event_loop() for server in (stack.broker, baseline)}
        runs, mints = ab_load(
            ctx,
            "R3",
            baseline=LoadTarget(baseline, PRECHECK_PATH, authorization, PRECHECK_BODY),
            broker=LoadTarget(stack.broker, PRECHECK_PATH, authorization, PRECHECK_BODY),
        )
    comparisons = _comparisons(ctx, runs, plan.concurrencies)
    return ScenarioResult(
        **_meta("R3"),
        status="measured",
        target_met=all(c.ratio >= R3_TARGET_RATIO for c in comparisons),
        summary=", ".join(f"{c.label}: ratio {c.ratio:.2f}" for c in comparisons)
        + f"; every answer allowed by {SUPPORT_RULE} ({len(reply.content)}-byte body)",
        comparisons=comparisons,
        runs=runs,
        details={
            "mints_during_measured_runs": mints,
            "event_loops": loops,
            "request_body_bytes": len(PRECHECK_BODY),
            "response_body_bytes": len(reply.content),
        },
    )


def _mcp_call(target: LoadTarget, what: str) -> dict[str, Any]:
    """Send R4's tools/call once (outside the measured runs); its JSON-RPC ``result``."""
    response = post(
        target.url,
        authorization=target.authorization,
        body=target.body,
        headers=dict(target.headers),
    )
    if response.status_code != 200:
        raise HarnessError(f"{what} answered {response.status_code}: {response.text[:500]}")
    answer = jsonrpc_answer(response.text)
    if answer is None or "result" not in answer or answer["result"].get("isError"):
        raise HarnessError(f"{what} did not answer the tool's result: {response.text[:500]}")
    result: dict[str, Any] = answer["result"]
    return result


@dataclass(frozen=True, slots=True)
class Pacing:
    """How R4's paced load was chosen; kept in the result's details.

    ``connections`` each wait a think time (mean ``think_ms``) between a response and their next
    request, so they offer about ``connections / (think + response time)`` requests per second.
    The think time is chosen so that this is ``utilisation`` of the direct path's capacity: the
    chain is then busy, but a request seldom waits for another, and its latency is what one call
    costs rather than queueing.
    """

    connections: int
    utilisation: float
    capacity_rps: float
    """The direct path's median req/s at ``capacity_concurrency``, the largest measured."""
    capacity_concurrency: int
    response_ms: float
    """The direct path's median p50 at ``response_concurrency``: c=1 (one request on an idle
    chain) when measured, else the lowest concurrency measured."""
    response_concurrency: int
    think_ms: float
    floored: bool
    """The formula gave less than ``R4_MIN_THINK_MS`` and the think time was raised to it. That
    happens when the response time is a saturated p50 (no c=1 in the plan): it already holds the
    queueing a pacing is meant to avoid, so the rate achieved is not the one aimed at."""

    @property
    def label(self) -> str:
        aim = f"direct at {self.utilisation * 100:.0f} % of capacity"
        return f"paced {self.connections} conn, think {self.think_ms:.0f} ms " + (
            f"(floor; aimed: {aim})" if self.floored else f"({aim})"
        )

    @property
    def offered_rps(self) -> float:
        """The direct path's expected rate: connections / (think time + response time)."""
        return self.connections / ((self.think_ms + self.response_ms) / 1000.0)


def r4_pacing(plan: Plan, direct: Mapping[int, AppSummary]) -> Pacing:
    """The paced load's think time from the direct path's closed-loop runs, by concurrency.

    Think time = connections / (utilisation x capacity) - response time: each connection's cycle
    (think, then one request) then lasts connections / (utilisation x capacity), which is the
    rate aimed at. Floored at ``R4_MIN_THINK_MS``.
    """
    saturated = max(direct)
    if saturated <= R4_UNLOADED_CONCURRENCY:
        raise HarnessError(
            "R4's paced load needs a saturated run (a concurrency above 1) to measure the direct "
            f"path's capacity; the plan has only {sorted(direct)}"
        )
    capacity = direct[saturated].rps
    if not capacity > 0:
        raise HarnessError(f"R4: the direct path's req/s at c={saturated} is {capacity}")
    unloaded = R4_UNLOADED_CONCURRENCY if R4_UNLOADED_CONCURRENCY in direct else min(direct)
    response_ms = direct[unloaded].p50_ms
    connections, utilisation = plan.proxy_paced_connections, plan.proxy_paced_utilisation
    think_ms = connections * 1000.0 / (utilisation * capacity) - response_ms
    return Pacing(
        connections=connections,
        utilisation=utilisation,
        capacity_rps=capacity,
        capacity_concurrency=saturated,
        response_ms=response_ms,
        response_concurrency=unloaded,
        think_ms=max(think_ms, R4_MIN_THINK_MS),
        floored=think_ms < R4_MIN_THINK_MS,
    )


def r4_proxy(ctx: Context) -> ScenarioResult:
    from broker.demo import MCP_PATH, SeedError, seed_dev_connections

    plan, stack = ctx.plan, ctx.stack
    with contextlib.ExitStack() as exits:
        demo = start_demo_mcp(exits, ctx.work_dir)
        demo_url = f"{demo.url}{MCP_PATH}"
        try:
            asyncio.run(seed_dev_connections(stack.emulator.url, API_KEY, demo_url))
        except SeedError as exc:
            raise HarnessError(f"seeding the emulator's connections failed: {exc}") from None
        # The service token the broker's proxy forwards for this user (the same cache entry).
        token = _ok_reply(post_token(stack.broker.url, ctx.support_jwt), "broker POST /v1/tokens")
        demo_target = LoadTarget(demo, MCP_PATH, body=TOOLS_CALL, headers=MCP_HEADERS)
        direct = LoadTarget(
            stack.emulator,
            DIRECT_PATH,
            f"Bearer {token['token']}",
            TOOLS_CALL,
            MCP_HEADERS,
            also_cpu=(demo,),
        )
        proxied = LoadTarget(
            stack.broker,
            PROXY_PATH,
            f"Bearer {ctx.support_jwt}",
            TOOLS_CALL,
            MCP_HEADERS,
            also_cpu=(stack.emulator, demo),
        )
        expected = _mcp_call(demo_target, "the demo MCP server")
        for target, what in ((direct, "the emulator (direct)"), (proxied, "the broker's proxy")):
            if _mcp_call(target, what) != expected:
                raise HarnessError(f"{what} answered another result than the demo server")
        loops = {server.name: server.event_loop() for server in (*stack.servers, demo)}
        runs, mints = ab_load(
            ctx, "R4", baseline=direct, broker=proxied, concurrencies=plan.proxy_concurrencies
        )
        closed = dict(
            zip(
                plan.proxy_concurrencies,
                _comparisons(ctx, runs, plan.proxy_concurrencies),
                strict=True,
            )
        )
        # The paced load comes last: its think time needs the direct path's capacity, measured
        # above in the same harness run (absolute numbers drift between runs).
        pacing = r4_pacing(plan, {n: c.baseline for n, c in closed.items()})
        ctx.log(
            f"  {pacing.label}: think time {pacing.think_ms:.1f} ms on average (exponential, "
            f"capped at {THINK_CAP}x) = {pacing.connections} / "
            f"({pacing.utilisation * 100:.0f} % of {pacing.capacity_rps:,.0f} req/s direct at "
            f"c={pacing.capacity_concurrency}) - "
            f"{pacing.response_ms:.2f} ms direct p50 at c={pacing.response_concurrency}"
            + (f", floored at {R4_MIN_THINK_MS:.0f} ms" if pacing.floored else "")
        )
        paced_runs, paced_mints = alternate(
            ctx,
            (("baseline", direct), ("broker", proxied)),
            pacing.connections,
            pacing.label,
            {"baseline": 0, "broker": 0},
            think_ms=pacing.think_ms,
        )
        interleaved, interleaved_stats = _r4_interleaved(ctx, direct, proxied)
    runs += paced_runs
    mints += paced_mints
    paced = Comparison.of(
        pacing.label, f"{pacing.label}, {plan.runs}x{plan.duration_s} s", paced_runs
    )
    comparisons = [*closed.values(), paced]
    for comparison in comparisons:
        comparison.load += " (CPU: whole chain)"
    added = {c.label: c.broker.p50_ms - c.baseline.p50_ms for c in comparisons}
    # The added p50 is judged where requests seldom wait for one another: one at a time (the
    # interleaved calls) and the paced load. Above c=1 the closed loop saturates the chain: the
    # throughput ratio is judged there, and the added p50, which is then a throughput figure,
    # only reported. The c=1 wrk runs are reported too: they drift more than the target.
    added[R4_INTERLEAVED] = interleaved.added("broker", "direct", "event")
    unloaded = closed.get(R4_UNLOADED_CONCURRENCY)
    latency_judged = [paced]
    ratio_judged = [c for n, c in closed.items() if n > R4_UNLOADED_CONCURRENCY]
    latency_labels = {c.label for c in latency_judged}
    expected_calls = 2 * (interleaved.rounds + INTERLEAVED_WARMUP_ROUNDS)
    checks = [
        Check(
            f"{run.label} run {run.index + 1} {run.app}: every request forwarded, none denied",
            run.extra["emulator"].get("mcp_denied", 0) == 0
            and run.extra["emulator"].get("mcp_forwarded", 0) >= run.extra["requests"],
            f"emulator: {run.extra['emulator'].get('mcp_forwarded')} forwarded, "
            f"{run.extra['emulator'].get('mcp_denied')} denied, for {run.extra['requests']} "
            "requests",
        )
        for run in runs
    ]
    checks.append(
        Check(
            f"{R4_INTERLEAVED}: every call forwarded, none denied, no mint",
            interleaved_stats.get("mcp_denied", 0) == 0
            and interleaved_stats.get("mcp_forwarded", 0) >= expected_calls
            and interleaved_stats.get("tokens_minted", 0) == 0,
            f"emulator: {interleaved_stats.get('mcp_forwarded')} forwarded, "
            f"{interleaved_stats.get('mcp_denied')} denied, "
            f"{interleaved_stats.get('tokens_minted')} minted, for {expected_calls} calls",
        )
    )
    met = (
        added[R4_INTERLEAVED] <= R4_TARGET_ADDED_MS
        and all(added[c.label] <= R4_TARGET_ADDED_MS for c in latency_judged)
        and all(c.ratio >= R4_TARGET_RATIO for c in ratio_judged)
    )
    direct_utilisation = paced.baseline.rps / pacing.capacity_rps

    def line(c: Comparison) -> str:
        gap = (
            f"added p50 {added[c.label]:+.2f} ms"
            + (
                ""
                if c.label in latency_labels or c is unloaded
                else " (saturated: reported, not judged)"
            )
            + f" = broker {c.broker.p50_ms:.2f} - direct {c.baseline.p50_ms:.2f} ms"
        )
        if c is paced:
            return (
                f"{c.label}: {gap}; direct {c.baseline.rps:,.0f} req/s "
                f"({direct_utilisation * 100:.0f} % of capacity"
                + (f", think time floored at {R4_MIN_THINK_MS:.0f} ms" if pacing.floored else "")
                + f"), broker {c.broker.rps:,.0f} req/s (ratio {c.ratio:.2f}, not judged)"
            )
        if c is unloaded:
            return (
                f"{c.label}: {gap}; ratio {c.ratio:.2f} (wrk at c=1: reported, not judged, "
                "see the interleaved calls)"
            )
        return f"{c.label}: ratio {c.ratio:.2f}; {gap}"

    one_at_a_time = (
        f"{R4_INTERLEAVED} ({interleaved.rounds} rounds): added p50 "
        f"{added[R4_INTERLEAVED]:+.2f} ms until the JSON-RPC response event (judged; direct p50 "
        f"{interleaved.p50('direct', 'event'):.2f} ms), "
        f"{interleaved.added('broker', 'direct', 'whole'):+.2f} ms until the whole answer "
        "(medians of the per-round differences)"
    )

    return ScenarioResult(
        **_meta("R4"),
        status="measured",
        target_met=met,
        summary="; ".join([one_at_a_time, *(line(c) for c in comparisons)])
        + f"; {mints} mint(s) while measuring",
        comparisons=comparisons,
        runs=runs,
        details={
            "added_p50_ms": added,
            "interleaved": {
                "rounds": interleaved.rounds,
                "warmup_rounds": INTERLEAVED_WARMUP_ROUNDS,
                "p50_ms": {
                    f"{name} {point}": interleaved.p50(name, point)
                    for name in ("direct", "broker")
                    for point in ("event", "whole")
                },
                "added_ms": {
                    "event": interleaved.added("broker", "direct", "event"),
                    "whole": interleaved.added("broker", "direct", "whole"),
                },
                "emulator": interleaved_stats,
            },
            "judged": {
                "added_p50": [R4_INTERLEAVED, *(c.label for c in latency_judged)],
                "throughput_ratio": [c.label for c in ratio_judged],
            },
            "paced": asdict(pacing)
            | {
                "label": pacing.label,
                "think_cap_ms": THINK_CAP * pacing.think_ms,
                "offered_rps_direct": pacing.offered_rps,
                "achieved_rps": {"baseline": paced.baseline.rps, "broker": paced.broker.rps},
                "achieved_direct_utilisation": direct_utilisation,
            },
            "mints_during_measured_runs": mints,
            "event_loops": loops,
        },
        checks=checks,
        note=R4_JUDGING,
    )


def _r4_interleaved(
    ctx: Context, direct: LoadTarget, proxied: LoadTarget
) -> tuple[Interleaved, dict[str, int]]:
    """R4 one call at a time: single calls alternated between the direct path and the broker;
    with the changes of the emulator's counters meanwhile."""
    rounds = ctx.plan.proxy_interleaved_rounds
    stats_before = ctx.stack.emulator_stats()
    result = interleave(
        {
            "direct": (direct.url, direct.authorization),
            "broker": (proxied.url, proxied.authorization),
        },
        rounds,
    )
    stats_after = ctx.stack.emulator_stats()
    stats = {k: v - stats_before.get(k, 0) for k, v in stats_after.items()}
    ctx.log(
        f"  {R4_INTERLEAVED}, {rounds} rounds: p50 direct "
        f"{result.p50('direct', 'event'):.2f} ms, broker {result.p50('broker', 'event'):.2f} ms "
        f"until the response event; added (median per-round difference) "
        f"{result.added('broker', 'direct', 'event'):+.2f} ms, whole answer "
        f"{result.added('broker', 'direct', 'whole'):+.2f} ms"
    )
    return result, stats


def r5_single_flight(ctx: Context) -> ScenarioResult:
    plan, stack = ctx.plan, ctx.stack
    size, label = plan.burst_size, f"burst of {plan.burst_size}"
    reference = f"Bearer {ctx.reference_jwt}"
    for server in (stack.baseline, stack.broker):  # warm-up: cached user, untimed
        run_burst(server.url, TOKEN_PATH, authorization=reference, size=size)
    runs: list[Run] = []
    checks: list[Check] = []
    minted_per_burst: list[int] = []
    for index in range(plan.bursts):
        stack.ensure_running()
        base = run_burst(stack.baseline.url, TOKEN_PATH, authorization=reference, size=size)
        runs.append(_burst_run("baseline", index, base))
        subject = f"user-r5-{index:02d}-{secrets.token_hex(4)}"  # new user: the cache is cold
        authorization = f"Bearer {ctx.identity.jwt(subject)}"
        before = stack.tokens_minted()
        cold = run_burst(stack.broker.url, TOKEN_PATH, authorization=authorization, size=size)
        minted = stack.tokens_minted() - before
        minted_per_burst.append(minted)
        runs.append(_burst_run("broker", index, cold))
        ok = cold.statuses.get(200, 0)
        distinct = _distinct_tokens(cold)
        checks.append(Check(f"burst {index + 1}: exactly 1 mint", minted == 1, f"{minted} mint(s)"))
        checks.append(
            Check(
                f"burst {index + 1}: every request answered 200 with the same token",
                ok == size and distinct == 1,
                f"{ok}/{size} answered 200, {distinct} distinct token(s)",
            )
        )
        ctx.log(
            f"  {label} {index + 1}/{plan.bursts}: baseline p99 {runs[-2].p99_ms:.1f} ms; "
            f"broker p99 {runs[-1].p99_ms:.1f} ms, {minted} mint(s), {ok}/{size} ok"
        )
    comparison = Comparison.of(label, f"{size} at once, {plan.bursts} burst(s)", runs)
    return ScenarioResult(
        **_meta("R5"),
        status="measured",
        target_met=all(m == 1 for m in minted_per_burst),
        summary=(
            f"mints per burst: {', '.join(map(str, minted_per_burst))}; broker p99 "
            f"{comparison.broker.p99_ms:.1f} ms (baseline {comparison.baseline.p99_ms:.1f} ms)"
        ),
        comparisons=[comparison],
        runs=runs,
        details={"mints_per_burst": minted_per_burst},
        checks=checks,
    )


def r6_memory(ctx: Context) -> ScenarioResult:
    entries = ctx.plan.memory_entries
    token_length = len(ctx.stack.token_response["token"])
    argv = [
        sys.executable,
        "-m",
        "bench.memory",
        f"--entries={entries}",
        f"--token-length={token_length}",
    ]
    try:
        done = subprocess.run(
            argv, cwd=ROOT, capture_output=True, text=True, timeout=MEMORY_TIMEOUT_SECONDS
        )
    except subprocess.TimeoutExpired:
        raise HarnessError(f"bench.memory did not finish in {MEMORY_TIMEOUT_SECONDS} s") from None
    if done.returncode != 0:
        raise HarnessError(f"bench.memory failed (exit {done.returncode}):\n{done.stderr}")
    data = json.loads(done.stdout.strip().splitlines()[-1])
    per_token = float(data["bytes_per_token"])
    ctx.log(f"  {entries:,} tokens of {token_length} characters: {per_token:,.0f} B per token")
    return ScenarioResult(
        **_meta("R6"),
        status="measured",
        target_met=per_token <= R6_TARGET_BYTES,
        summary=(
            f"{per_token:,.0f} B per cached token: token string {data['token_string_bytes']} B, "
            f"the entry's other objects {data['entry_objects_bytes'] - data['token_string_bytes']}"
            f" B, cache containers ~{data['container_overhead_bytes']:,.0f} B "
            f"(RSS +{data['rss_growth_bytes'] / 2**20:,.1f} MiB for {entries:,} tokens)"
        ),
        details=data,
        checks=[
            Check(
                "RSS grew while filling the cache",
                data["rss_growth_bytes"] > 0,
                f"{data['rss_growth_bytes']} bytes",
            )
        ],
    )


def micro_precheck(ctx: Context) -> ScenarioResult:
    argv = [sys.executable, "-m", "bench.micro", f"--repeats={ctx.plan.micro_repeats}"]
    try:
        done = subprocess.run(
            argv, cwd=ROOT, capture_output=True, text=True, timeout=MICRO_TIMEOUT_SECONDS
        )
    except subprocess.TimeoutExpired:
        raise HarnessError(f"bench.micro did not finish in {MICRO_TIMEOUT_SECONDS} s") from None
    if done.returncode != 0:
        raise HarnessError(f"bench.micro failed (exit {done.returncode}):\n{done.stderr}")
    data = json.loads(done.stdout.strip().splitlines()[-1])
    allowed, denied = data["allowed"], data["denied"]
    ctx.log(
        f"  {data['rules']} rules: allowed {allowed['median_us']:.2f} us, "
        f"denied {denied['median_us']:.2f} us per message"
    )
    if "MICRO" in ctx.profile:
        ctx.out_dir.mkdir(parents=True, exist_ok=True)
        ctx.log("  profiling bench.micro with py-spy (one more, unmeasured, run)")
        path = ctx.out_dir / f"{ctx.stem}-micro.pyspy.txt"
        profile = profiling.profile_command(argv, path, MICRO_TIMEOUT_SECONDS, ROOT)
        ctx.notes.append(profiling.markdown(profile, "precheck decision", "MICRO, in process"))
    return ScenarioResult(
        **_meta("MICRO"),
        status="measured",
        target_met=max(allowed["median_us"], denied["median_us"]) <= MICRO_TARGET_US,
        summary=(
            f"{data['rules']} rules ({data['rpc_entries']} rpcReqMatch entries): allowed by the "
            f"last rule {allowed['median_us']:.2f} µs, denied by all "
            f"{denied['median_us']:.2f} µs per message (median of {data['repeats']} repeats; "
            f"best {allowed['best_us']:.2f} / {denied['best_us']:.2f} µs)"
        ),
        details=data,
        checks=[
            Check(
                "the allowed message is allowed by the last rule",
                allowed["allowed"] is True and str(allowed["rule"]).startswith("rule-5-"),
                f"allowed={allowed['allowed']} rule={allowed['rule']}",
            ),
            Check(
                "the denied message is denied with one reason per rule",
                denied["allowed"] is False and denied["reasons"] == data["rules"],
                f"allowed={denied['allowed']} reasons={denied['reasons']}",
            ),
        ],
    )


# --- the registry -----------------------------------------------------------------------------

SCENARIOS: Final[tuple[Scenario, ...]] = (
    Scenario(
        "R1",
        "/v1/tokens, same JWT, cached service token",
        "wrk POST /v1/tokens with one JWT on every request (the token comes from the cache), "
        "broker vs the baseline, alternated runs",
        f"throughput ratio broker/baseline >= {R1_TARGET_RATIO:.2f} and CPU per request "
        f"<= {R1_TARGET_CPU_RATIO:.2f}x the baseline's",
        run=r1_same_jwt,
    ),
    Scenario(
        "R2",
        "/v1/tokens, fresh JWT per request",
        "wrk rotating through a pool of distinct JWTs for distinct users (service tokens cached "
        "for all, the pool larger than the verified-JWT cache: every request verifies an RS256 "
        "signature) vs a baseline that verifies the same JWTs with PyJWT",
        f"throughput ratio broker/baseline >= {R2_TARGET_RATIO:.2f}",
        run=r2_fresh_jwt,
    ),
    Scenario(
        "R3",
        "/v1/precheck",
        "wrk POST /v1/precheck (a tools/call with the connection's metadata given, allowed by "
        f"{SUPPORT_RULE}) vs a baseline answering the same-size body to the same POST",
        f"throughput ratio broker/baseline >= {R3_TARGET_RATIO:.2f}",
        run=r3_precheck,
    ),
    Scenario(
        "R4",
        "proxied tools/call (baseline: direct to the emulator)",
        "an MCP tools/call through the broker's proxy (broker -> emulator -> demo MCP server) vs "
        "the same call sent directly to the emulator with the same service token",
        f"added p50 <= {R4_TARGET_ADDED_MS:.0f} ms one call at a time (calls interleaved with "
        "the direct path's, until the JSON-RPC response event) and on the paced load (think time: "
        f"direct path at {FULL.proxy_paced_utilisation * 100:.0f} % of its capacity); throughput "
        f"ratio >= {R4_TARGET_RATIO:.2f} at the saturated concurrencies (c=8, c=32), whose added "
        "p50 is reported, not judged (saturated closed loop: p50 ~ c / throughput, a throughput "
        "figure)",
        run=r4_proxy,
    ),
    Scenario(
        "R5",
        "single-flight on a cold burst",
        "N concurrent POST /v1/tokens for ONE new user (cold cache) fired at once; emulator mints "
        "counted before/after; burst latency vs the same burst to the baseline",
        "exactly 1 mint per burst (p99 reported)",
        run=r5_single_flight,
    ),
    Scenario(
        "R6",
        "memory per cached token",
        "RSS growth of a fresh process filling broker.cache.TokenCache with realistic entries",
        f"<= {R6_TARGET_BYTES} B of RSS per cached token",
        run=r6_memory,
    ),
    Scenario(
        "MICRO",
        "precheck decision",
        "µs per JSON-RPC message for broker.precheck.decide with 5 rules carrying rpcReqMatch, "
        "in process (timeit), for a message the last rule allows and one no rule allows",
        f"<= {MICRO_TARGET_US:.0f} µs per message",
        run=micro_precheck,
    ),
)


class _Meta(TypedDict):
    id: str
    title: str
    measures: str
    target: str


def _meta(scenario_id: str) -> _Meta:
    scenario = next(s for s in SCENARIOS if s.id == scenario_id)
    return {
        "id": scenario.id,
        "title": scenario.title,
        "measures": scenario.measures,
        "target": scenario.target,
    }


def pending_result(scenario: Scenario) -> ScenarioResult:
    return ScenarioResult(
        id=scenario.id,
        title=scenario.title,
        measures=scenario.measures,
        target=scenario.target,
        status="not yet measured",
        summary=scenario.pending,
    )


def failed_result(scenario: Scenario, error: HarnessError) -> ScenarioResult:
    return ScenarioResult(
        id=scenario.id,
        title=scenario.title,
        measures=scenario.measures,
        target=scenario.target,
        status="failed",
        summary=str(error).splitlines()[0],
        checks=[Check("scenario ran", False, str(error))],
    )
