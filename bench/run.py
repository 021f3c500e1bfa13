"""The harness entry point: ``python -m bench.run [--smoke] [--profile [IDS]] [--scenarios IDS]``.

Starts the servers once, runs every selected scenario of the registry in order, stops every
server (always), then writes ``<stamp>.json``, ``.md`` and ``.png`` and prints the Markdown.
Exit status: 0 when the harness worked, 1 when it broke (a server did not start, wrk is missing,
a scenario produced no numbers, a single-flight burst minted more or less than once). A missed
performance target never changes the exit status: ratios are reported, not asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import report
from bench.errors import HarnessError
from bench.identity import create_identity
from bench.loadgen import ensure_wrk
from bench.machine import load_average, machine_info
from bench.plan import FULL, SMOKE, Plan
from bench.results import ScenarioResult
from bench.scenarios import SCENARIOS, Context, failed_result, pending_result
from bench.stack import ROOT, start_stack
from bench.workload import SUPPORT_CLAIMS, SUPPORT_SUBJECT

RESULTS_DIR = ROOT / "bench" / "results"
REFERENCE_SUBJECT = "user-000001"
PROFILED = ("R1", "R2", "R3", "R4", "MICRO")
"""The scenarios ``--profile`` can sample."""


def log(message: str) -> None:
    print(message, flush=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a few seconds: check that the harness works (results go to a temporary directory)",
    )
    parser.add_argument(
        "--scenarios",
        default="",
        help="comma-separated scenario ids to run (default: all); e.g. R1,R5",
    )
    parser.add_argument(
        "--profile",
        nargs="?",
        const="all",
        default="",
        metavar="IDS",
        help="after measuring, sample the apps with py-spy during one extra, unmeasured run "
        f"per app (scenarios {', '.join(PROFILED)}; default: every selected one), e.g. "
        "--profile R4,MICRO",
    )
    parser.add_argument(
        "--out-dir", type=Path, default=None, help=f"default: {RESULTS_DIR.relative_to(ROOT)}"
    )
    return parser.parse_args(argv)


def select(ids: str) -> list[str]:
    known = [s.id for s in SCENARIOS]
    wanted = [i.strip().upper() for i in ids.split(",") if i.strip()] or known
    unknown = sorted(set(wanted) - set(known))
    if unknown:
        raise HarnessError(f"unknown scenario(s) {unknown}; known: {', '.join(known)}")
    return wanted


def select_profiled(ids: str, wanted: list[str]) -> frozenset[str]:
    if not ids:
        return frozenset()
    asked = PROFILED if ids == "all" else [i.strip().upper() for i in ids.split(",") if i.strip()]
    unknown = sorted(set(asked) - set(PROFILED))
    if unknown:
        raise HarnessError(f"cannot profile {unknown}; --profile takes {', '.join(PROFILED)}")
    return frozenset(asked) & frozenset(wanted)


def run_scenarios(ctx: Context, wanted: list[str]) -> list[ScenarioResult]:
    results = []
    for scenario in SCENARIOS:
        if scenario.id not in wanted:
            continue
        if scenario.run is None:
            log(f"{scenario.id} {scenario.title}: not yet measured ({scenario.pending})")
            results.append(pending_result(scenario))
            continue
        log(f"{scenario.id} {scenario.title}")
        started = time.monotonic()
        try:
            result = scenario.run(ctx)
        except HarnessError as exc:
            log(f"  FAILED: {exc}")
            result = failed_result(scenario, exc)
        result.details.setdefault("seconds", round(time.monotonic() - started, 1))
        results.append(result)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    plan: Plan = SMOKE if args.smoke else FULL
    started_at = datetime.now(UTC)
    stem = started_at.strftime("%Y-%m-%d-%H%M%S")
    with contextlib.ExitStack() as exits:
        work_dir = Path(exits.enter_context(tempfile.TemporaryDirectory(prefix="bench-")))
        out_dir: Path = args.out_dir or (work_dir / "results" if args.smoke else RESULTS_DIR)
        try:
            wanted = select(args.scenarios)
            profiled = select_profiled(args.profile, wanted)
            wrk_version = ensure_wrk()
            meta: dict[str, Any] = {
                "started_at": started_at.strftime("%Y-%m-%d %H:%M:%S UTC"),
                "plan": asdict(plan),
                "plan_description": plan.describe(),
                "machine": machine_info(wrk_version),
                "notes": [],
            }
            log(f"bench: {plan.describe()}")
            identity = create_identity(work_dir)
            reference_jwt = identity.jwt(REFERENCE_SUBJECT)
            support_jwt = identity.jwt(SUPPORT_SUBJECT, claims=SUPPORT_CLAIMS)
            with contextlib.ExitStack() as servers:
                stack = start_stack(servers, work_dir, identity, reference_jwt, plan)
                log(
                    f"bench: emulator {stack.emulator.url}, broker {stack.broker.url}, "
                    f"baseline {stack.baseline.url}"
                )
                loops = {server.name: server.event_loop() for server in stack.servers}
                meta["event_loops"] = loops
                if loops["broker"] != loops["baseline"]:
                    log(f"bench: WARNING: the apps run on different event loops: {loops}")
                ctx = Context(
                    plan,
                    stack,
                    identity,
                    reference_jwt,
                    support_jwt,
                    work_dir,
                    log,
                    profile=profiled,
                    out_dir=out_dir,
                    stem=stem,
                    notes=meta["notes"],
                )
                results = run_scenarios(ctx, wanted)
                stack.ensure_running()
        except HarnessError as exc:
            print(f"bench: FAILED: {exc}", file=sys.stderr)
            return 1
        meta["machine"]["load_average_at_end"] = load_average()
        paths = report.write_all(out_dir, stem, meta, results)
        print()
        print(paths[1].read_text())
        where = "temporary, deleted on exit" if args.smoke and args.out_dir is None else "kept"
        log(f"bench: results ({where}): " + ", ".join(str(p) for p in paths))
        broken = [r for r in results if r.broken]
        if broken or not any(r.status == "measured" for r in results):
            print(f"bench: FAILED: {', '.join(r.id for r in broken)} broke", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
