"""The scenario registry: what is measured, how, and against which target.

Every scenario is one ``Scenario`` entry in ``SCENARIOS``. A measured one has a ``run`` function
taking the ``Context`` (plan, servers, identity) and returning a ``ScenarioResult``; one that
cannot be measured yet has ``run=None`` and a ``pending`` reason, and is reported as "not yet
measured" instead of being faked. To add one (R2, R3, R4, the precheck micro benchmark), write
its ``run`` function with the helpers below (``ab_load`` for A/B wrk runs, ``run_burst``), set
it on the entry and document it in ``bench/README.md``.
"""

from __future__ import annotations

import json
import math
import secrets
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final, TypedDict

from bench.burst import BurstResult, run_burst
from bench.errors import HarnessError
from bench.identity import Identity
from bench.loadgen import WrkRun, run_wrk
from bench.plan import Plan
from bench.processes import Server
from bench.results import App, Check, Comparison, Run, ScenarioResult, percentile
from bench.stack import ROOT, TOKEN_PATH, Stack

R1_TARGET_RATIO: Final = 0.80
R6_TARGET_BYTES: Final = 1024
MEMORY_TIMEOUT_SECONDS: Final = 600


@dataclass
class Context:
    plan: Plan
    stack: Stack
    identity: Identity
    reference_jwt: str
    """The JWT the stack was started with: the broker has its service token cached."""
    work_dir: Path
    log: Callable[[str], None]


@dataclass(frozen=True, slots=True)
class LoadTarget:
    """What wrk sends to one app: a path on a server, an Authorization header, an optional body.

    The server's CPU time is read before and after every measured run.
    """

    server: Server
    path: str
    authorization: str = ""
    body: str = ""

    @property
    def url(self) -> str:
        return f"{self.server.url}{self.path}"


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


def ab_load(ctx: Context, baseline: LoadTarget, broker: LoadTarget) -> tuple[list[Run], int]:
    """Alternated wrk runs (baseline, broker, baseline, ...) at every concurrency of the plan.

    One untimed warm-up run per app and concurrency comes first. Returns the measured runs and
    the number of tokens the emulator minted during the broker's measured runs.
    """
    plan, mints = ctx.plan, 0
    runs: list[Run] = []
    targets: tuple[tuple[App, LoadTarget], ...] = (("baseline", baseline), ("broker", broker))
    for concurrency in plan.concurrencies:
        label = f"c={concurrency}"
        for app, target in targets:
            _wrk(ctx, app, target, concurrency, plan.warmup_s)
        for index in range(plan.runs):
            for app, target in targets:
                before = ctx.stack.tokens_minted() if app == "broker" else 0
                cpu_before = target.server.cpu_seconds()
                run = _wrk(ctx, app, target, concurrency, plan.duration_s)
                cpu_us = (target.server.cpu_seconds() - cpu_before) / run.requests * 1e6
                minted = ctx.stack.tokens_minted() - before if app == "broker" else 0
                mints += minted
                extra = asdict(run) | {"mints": minted}
                runs.append(Run(app, label, index, run.rps, run.p50_ms, run.p99_ms, cpu_us, extra))
                ctx.log(
                    f"  {label} run {index + 1}/{plan.runs} {app:8s} {run.rps:9,.0f} req/s  "
                    f"p50 {run.p50_ms:6.2f} ms  p99 {run.p99_ms:6.2f} ms  "
                    f"CPU {cpu_us:5.0f} us/req"
                )
    return runs, mints


def _wrk(ctx: Context, app: App, target: LoadTarget, connections: int, seconds: int) -> WrkRun:
    ctx.stack.ensure_running()
    run = run_wrk(
        target.url,
        connections=connections,
        threads=min(ctx.plan.threads, connections),
        duration_s=seconds,
        authorization=target.authorization,
        body=target.body,
    )
    failed = run.errors["status"] + run.errors["connect"]
    if run.requests == 0 or failed:
        raise HarnessError(
            f"{app} at c={connections}: {run.requests} requests, {run.errors['status']} non-2xx, "
            f"{run.errors['connect']} connect errors: the harness is not measuring a good path"
        )
    return run


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
        baseline=LoadTarget(ctx.stack.baseline, TOKEN_PATH, authorization),
        broker=LoadTarget(ctx.stack.broker, TOKEN_PATH, authorization),
    )
    plan = ctx.plan
    comparisons = [
        Comparison.of(f"c={c}", f"c={c}, {plan.runs}x{plan.duration_s} s", runs)
        for c in plan.concurrencies
    ]
    met = all(c.ratio >= R1_TARGET_RATIO for c in comparisons)
    return ScenarioResult(
        **_meta("R1"),
        status="measured",
        target_met=met,
        summary=", ".join(f"{c.label}: ratio {c.ratio:.2f}" for c in comparisons),
        comparisons=comparisons,
        runs=runs,
        details={"mints_during_measured_runs": mints},
    )


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


# --- the registry -----------------------------------------------------------------------------

SCENARIOS: Final[tuple[Scenario, ...]] = (
    Scenario(
        "R1",
        "/v1/tokens, same JWT, cached service token",
        "wrk POST /v1/tokens with one JWT on every request (the token comes from the cache), "
        "broker vs the baseline, alternated runs",
        f"throughput ratio broker/baseline >= {R1_TARGET_RATIO:.2f}",
        run=r1_same_jwt,
    ),
    Scenario(
        "R2",
        "/v1/tokens, fresh JWT per request",
        "wrk cycling through a pre-generated pool of JWTs (every request pays full verification) "
        "vs a baseline handler that verifies the same JWTs with PyJWT",
        "to be set",
        pending="needs a JWT-pool wrk script and a verifying baseline handler (not built yet)",
    ),
    Scenario(
        "R3",
        "/v1/precheck",
        "wrk POST /v1/precheck with a JSON-RPC message vs the baseline",
        "to be set",
        pending="the broker has no POST /v1/precheck endpoint yet",
    ),
    Scenario(
        "R4",
        "proxied tools/call",
        "an MCP tools/call through the broker's proxy vs the same call sent directly to the "
        "emulator",
        "to be set",
        pending="the broker has no MCP proxy yet",
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
        "µs per JSON-RPC message for the precheck decision function, in process (timeit)",
        "to be set",
        pending="the precheck decision function does not exist yet",
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
