"""The load generator: real ``wrk`` driven by ``post.lua``, one run in, one ``WrkRun`` out."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from bench.errors import HarnessError

WRK_SCRIPT: Final = Path(__file__).with_name("post.lua")
MARKER: Final = "BENCH-JSON "
REQUEST_TIMEOUT: Final = "5s"
GRACE_SECONDS: Final = 30
THINK_CAP: Final = 10
"""``post.lua`` caps each think time at this many times the mean (kept in step by hand)."""


@dataclass(frozen=True, slots=True)
class WrkRun:
    """One wrk run's numbers; latencies in milliseconds."""

    requests: int
    duration_s: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    errors: dict[str, int]
    sent: int = 0
    """Requests the script formatted from a pool (every one written, completed or not); 0 when
    the run used no pool."""


def ensure_wrk() -> str:
    """wrk's version line; installs the Debian package first when missing and running as root."""
    if shutil.which("wrk") is None:
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            raise HarnessError(
                "wrk is not installed. Install it first (Debian/Ubuntu: "
                "`sudo apt-get install wrk`); the harness installs it by itself only when it runs "
                "as root with apt-get."
            )
        print("bench: wrk not found; installing the Debian package with apt-get", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for argv in (
            ["apt-get", "update", "-qq"],
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "wrk"],
        ):
            done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise HarnessError(f"{' '.join(argv)} failed:\n{done.stdout}{done.stderr}")
        if shutil.which("wrk") is None:
            raise HarnessError("apt-get install wrk succeeded but wrk is still not on PATH")
    # `wrk -v` prints its version and usage, then exits 1.
    probe = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    first = (probe.stdout or probe.stderr).strip().splitlines()
    return first[0].split(" Copyright")[0] if first else "wrk (unknown version)"


def run_wrk(
    url: str,
    *,
    connections: int,
    threads: int,
    duration_s: int,
    authorization: str = "",
    body: str = "",
    headers: Mapping[str, str] | None = None,
    pool_file: Path | None = None,
    pool_offset: int = 0,
    think_ms: float | None = None,
) -> WrkRun:
    """One bounded wrk run against ``url`` (loopback only); raises if wrk produced no numbers.

    ``headers``: sent on every request besides Authorization and Content-Type. ``pool_file``: a
    file of Authorization values, one per line; request i of the run takes value
    ``(pool_offset + i) % size`` (see ``post.lua``). ``think_ms``: the mean think time each
    connection waits before each of its requests (exponentially distributed, capped at 10x the
    mean; see ``post.lua``); None or 0 for none, the closed loop at full speed. The latencies
    never include it; the req/s then is the rate the connections offer, no longer the capacity.
    """
    if think_ms is not None and not (math.isfinite(think_ms) and think_ms >= 0):
        raise HarnessError(f"think time must be a finite number of ms >= 0, not {think_ms!r}")
    for name, value in (headers or {}).items():
        if "\n" in name + value or ":" in name:
            raise HarnessError(f"header {name!r} cannot be passed to wrk")
    if not url.startswith("http://127.0.0.1:"):
        raise HarnessError(f"refusing to load anything but 127.0.0.1: {url}")
    argv = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration_s}s",
        f"--timeout={REQUEST_TIMEOUT}",
        f"--script={WRK_SCRIPT}",
        url,
    ]
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "BENCH_AUTHORIZATION": authorization,
        "BENCH_BODY": body,
        "BENCH_HEADERS": "\n".join(f"{k}: {v}" for k, v in (headers or {}).items()),
        "BENCH_POOL_FILE": "" if pool_file is None else str(pool_file),
        "BENCH_POOL_OFFSET": str(pool_offset),
        "BENCH_THREADS": str(threads),
        "BENCH_THINK_MS": f"{think_ms:.3f}" if think_ms else "",
    }
    try:
        done = subprocess.run(
            argv,
            env=env,
            capture_output=True,
            text=True,
            timeout=duration_s + GRACE_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise HarnessError(f"wrk did not finish within {duration_s + GRACE_SECONDS} s") from None
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith(MARKER)), None)
    if done.returncode != 0 or line is None:
        raise HarnessError(f"wrk failed (exit {done.returncode}):\n{done.stdout}{done.stderr}")
    data = json.loads(line[len(MARKER) :])
    duration = data["duration_us"] / 1e6
    latency = {name: value / 1000.0 for name, value in data["latency_us"].items()}
    return WrkRun(
        requests=data["requests"],
        duration_s=duration,
        rps=data["requests"] / duration if duration > 0 else 0.0,
        p50_ms=latency["p50"],
        p90_ms=latency["p90"],
        p99_ms=latency["p99"],
        max_ms=latency["max"],
        mean_ms=latency["mean"],
        errors={name: int(count) for name, count in data["errors"].items()},
        sent=int(data["sent"]),
    )
