"""Optional (``--profile``): sample a server with py-spy during one extra, unmeasured wrk run
of a scenario (R1 to R4), or run the MICRO probe under py-spy.

py-spy writes collapsed stacks (``--format raw``, one ``frame;frame;... count`` line per stack;
idle threads are not sampled). They are summarised as self time per package or broker module
(additive, sums to 100 % of the busy samples) and inclusive time per function (a frame counts
once per sample that has it anywhere on the stack). Time spent in C (uvloop, httptools, system
calls) is charged to the Python frame that called it.
"""

from __future__ import annotations

import gzip
import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from bench.errors import HarnessError

RATE_HZ: Final = 200
FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


@dataclass(slots=True)
class Profile:
    samples: int
    self_by_area: list[tuple[str, float]] = field(default_factory=list)
    inclusive_by_function: list[tuple[str, float]] = field(default_factory=list)
    raw_path: str = ""


def py_spy_command() -> str:
    local = Path(sys.executable).parent / "py-spy"
    found = str(local) if local.exists() else shutil.which("py-spy")
    if found is None:
        raise HarnessError("--profile needs py-spy: pip install py-spy (it is in the bench extra)")
    return found


def area(file: str) -> str:
    """The package or broker module a source file belongs to."""
    if "/site-packages/" in file:
        return file.split("/site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    match = re.search(r"/(broker/(?:[^/]+/)*[^/]+\.py)$", file)
    if match:
        return match.group(1)
    if re.search(r"/python3\.\d+/", file):
        module = re.split(r"/python3\.\d+/", file, maxsplit=1)[1].split("/", 1)[0]
        return f"stdlib {module.removesuffix('.py')}"
    return file or "unknown"


def summarise(raw: str, top: int = 15) -> Profile:
    total = 0
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [FRAME.match(frame) for frame in stack.split(";")]
        parsed = [f for f in frames if f is not None]
        if not parsed:
            continue
        total += count
        self_time[area(parsed[-1]["file"])] += count
        names = {f"{f['function']} ({area(f['file'])})" for f in parsed}
        for name in names:
            inclusive[name] += count
    if total == 0:
        return Profile(0)
    # The entry chain (main, asyncio.run, ...) is on nearly every stack and says nothing.
    root_level = max(inclusive.values()) - total // 200
    below_root = [(k, v) for k, v in inclusive.most_common() if v < root_level]
    return Profile(
        samples=total,
        self_by_area=[(k, 100.0 * v / total) for k, v in self_time.most_common(top)],
        inclusive_by_function=[(k, 100.0 * v / total) for k, v in below_root[: top * 2]],
    )


def profile_during(pid: int, seconds: int, out_path: Path, load: Callable[[], object]) -> Profile:
    """Record ``pid`` while ``load()`` runs (it must last about ``seconds``), then summarise."""
    argv = [
        py_spy_command(),
        "record",
        f"--pid={pid}",
        f"--duration={seconds}",
        f"--rate={RATE_HZ}",
        "--format=raw",
        "--nonblocking",
        f"--output={out_path}",
    ]
    recorder = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        load()
        output, _ = recorder.communicate(timeout=seconds + 60)
    finally:
        if recorder.poll() is None:
            recorder.kill()
            recorder.wait()
    if recorder.returncode != 0 or not out_path.exists():
        text = output.decode(errors="replace") if recorder.stdout else ""
        raise HarnessError(f"py-spy failed (exit {recorder.returncode}): {text[-2000:]}")
    return _summarise_file(out_path)


def profile_command(argv: list[str], out_path: Path, timeout_s: float, cwd: Path) -> Profile:
    """Run ``argv`` (a Python process) under ``py-spy record`` until it exits, then summarise."""
    command = [
        py_spy_command(),
        "record",
        f"--rate={RATE_HZ * 5}",
        "--format=raw",
        f"--output={out_path}",
        "--",
        *argv,
    ]
    try:
        done = subprocess.run(command, capture_output=True, timeout=timeout_s, cwd=cwd, check=False)
    except subprocess.TimeoutExpired:
        raise HarnessError(f"py-spy {' '.join(argv)} did not finish in {timeout_s} s") from None
    if done.returncode != 0 or not out_path.exists():
        text = (done.stdout + done.stderr).decode(errors="replace")
        raise HarnessError(f"py-spy failed (exit {done.returncode}): {text[-2000:]}")
    return _summarise_file(out_path)


def _summarise_file(out_path: Path) -> Profile:
    profile = summarise(out_path.read_text())
    packed = out_path.with_name(out_path.name + ".gz")
    packed.write_bytes(gzip.compress(out_path.read_bytes()))
    out_path.unlink()
    profile.raw_path = str(packed)
    return profile


def markdown(profile: Profile, app: str, what: str) -> str:
    lines = [
        f"## Where the {app} spends its time ({what}; py-spy, {profile.samples} busy samples)",
        "",
        "Self time by package or broker module (sums to 100 %):",
        "",
        "| area | self % |",
        "|---|---:|",
        *(f"| {name} | {share:.1f} |" for name, share in profile.self_by_area),
        "",
        "Inclusive time by function (a frame counts once per sample that has it on the stack; "
        "the entry chain common to every sample is left out):",
        "",
        "| function (area) | inclusive % |",
        "|---|---:|",
        *(f"| `{name}` | {share:.1f} |" for name, share in profile.inclusive_by_function),
        "",
        f"Collapsed stacks (gzip): `{Path(profile.raw_path).name}`, next to this report.",
    ]
    return "\n".join(lines)
