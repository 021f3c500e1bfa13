"""Writing one harness run's results: JSON (everything), a Markdown table and a PNG chart."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.results import Comparison, ScenarioResult


def _num(value: float, digits: int = 0) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:,.{digits}f}"


def _met(result: ScenarioResult) -> str:
    return {True: "yes", False: "**no**", None: "-"}[result.target_met]


def _ratio_cell(comparison: Comparison) -> str:
    cell = _num(comparison.ratio, 2)
    if len(comparison.pair_ratios) > 1:
        low, high = min(comparison.pair_ratios), max(comparison.pair_ratios)
        cell += f" ({low:.2f}-{high:.2f})"
    return cell


def _event_loop_lines(loops: dict[str, str]) -> list[str]:
    if not loops:
        return []
    line = "Event loops: " + ", ".join(f"{name} {loop}" for name, loop in loops.items()) + "."
    if loops.get("broker") != loops.get("baseline"):
        line += (
            " **The broker and the baseline run on different event loops: the ratios compare "
            "the loops as much as the apps.**"
        )
    return [line]


def markdown(meta: dict[str, Any], results: list[ScenarioResult]) -> str:
    machine = meta["machine"]
    lines = [
        f"# Broker benchmark, {meta['started_at']} ({meta['plan']['name']})",
        "",
        f"Machine: {machine['nproc']} CPU(s) ({machine['cpu_model']}), Python {machine['python']}, "
        f"{machine['wrk']}, load average at start {machine['load_average_at_start']}.",
        f"Plan: {meta['plan_description']}.",
        *_event_loop_lines(meta.get("event_loops", {})),
        "",
        *(
            [
                "**Smoke run**: it checks that the harness works; its runs are too short and too "
                "few for the numbers to mean anything.",
                "",
            ]
            if meta["plan"]["name"] == "smoke"
            else []
        ),
        "Medians of alternated runs (baseline, broker, baseline, ...). The ratio is broker req/s "
        "over baseline req/s (range of the per-pair ratios in parentheses): compare ratios, not "
        "absolute numbers, which drift between runs on shared machines. CPU µs/req is the "
        "server process's own CPU time (user + system) per request: it does not depend on how "
        "busy the rest of the machine is. For R4 it is the whole chain a request goes through: "
        "broker + emulator + demo MCP server (with the emulator's node helper) for the broker, "
        "emulator + demo MCP server for the direct calls (the baseline column).",
        "",
        "| scenario | load | baseline req/s | broker req/s | ratio | baseline p50 / p99 ms "
        "| broker p50 / p99 ms | CPU µs/req baseline / broker | target | met |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for result in results:
        for comparison in result.comparisons:
            base, brok = comparison.baseline, comparison.broker
            lines.append(
                f"| {result.id} {result.title} | {comparison.load} | {_num(base.rps)} "
                f"| {_num(brok.rps)} | {_ratio_cell(comparison)} "
                f"| {_num(base.p50_ms, 2)} / {_num(base.p99_ms, 2)} "
                f"| {_num(brok.p50_ms, 2)} / {_num(brok.p99_ms, 2)} "
                f"| {_num(base.cpu_us)} / {_num(brok.cpu_us)} | {result.target} "
                f"| {_met(result)} |"
            )
    lines += ["", "| scenario | result | target | met |", "|---|---|---|---|"]
    for result in results:
        if result.status != "not yet measured":
            summary = result.summary if result.status == "measured" else f"FAILED: {result.summary}"
            lines.append(
                f"| {result.id} {result.title} | {summary} | {result.target} | {_met(result)} |"
            )
    noted = [r for r in results if r.note and r.status == "measured"]
    if noted:
        lines += ["", "How the targets are judged:", ""]
        lines += [f"- {r.id}: {r.note}" for r in noted]
    pending = [r for r in results if r.status == "not yet measured"]
    if pending:
        lines += ["", "Not yet measured:", ""]
        lines += [f"- {r.id} {r.title}: {r.summary}." for r in pending]
    failed = [(r, c) for r in results for c in r.checks if not c.ok]
    if failed:
        lines += ["", "Harness checks FAILED:", ""]
        lines += [f"- {r.id}: {c.name}: {c.detail.splitlines()[0]}" for r, c in failed]
    for section in meta.get("notes", []):
        lines += ["", section]
    return "\n".join(lines) + "\n"


def _short(label: str) -> str:
    """A comparison's label short enough for an axis tick: up to its first comma (R4's paced
    load, "paced 8 conn, think 49 ms (...)", becomes "paced 8 conn"; "c=32" stays)."""
    return label.split(",", 1)[0]


def chart(results: list[ScenarioResult], path: Path, title: str) -> None:
    """Throughput and p99 latency per comparison, broker next to baseline (matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [(f"{r.id} {_short(c.label)}", c) for r in results for c in r.comparisons]
    memory = next((r for r in results if r.id == "R6" and r.status == "measured"), None)
    panels = 3 if memory is not None else 2
    figure, axes = plt.subplots(1, panels, figsize=(5 * panels, 4.5), squeeze=False)
    width = 0.38
    positions = list(range(len(groups)))
    for axis, metric, unit in (
        (axes[0][0], "rps", "requests per second"),
        (axes[0][1], "p99_ms", "p99 latency (ms)"),
    ):
        base = [getattr(c.baseline, metric) for _, c in groups]
        brok = [getattr(c.broker, metric) for _, c in groups]
        axis.bar([p - width / 2 for p in positions], base, width, label="baseline", color="#9aa5b1")
        axis.bar([p + width / 2 for p in positions], brok, width, label="broker", color="#2f6fde")
        axis.set_xticks(positions, [label for label, _ in groups], rotation=20, ha="right")
        values = [v for v in base + brok if v and v > 0 and not math.isnan(v)]
        if values and max(values) > 20 * min(values):  # R4's few hundred req/s next to R1's
            axis.set_yscale("log")
        axis.set_ylabel(unit)
        axis.set_title(unit.split(" (")[0])
        axis.legend()
    if groups:
        for position, (_, comparison) in enumerate(groups):
            axes[0][0].annotate(
                f"x{comparison.ratio:.2f}",
                (position + width / 2, comparison.broker.rps),
                ha="center",
                va="bottom",
                fontsize=8,
            )
    if memory is not None:
        axis = axes[0][2]
        details = memory.details
        token = details["token_string_bytes"]
        other = details["bytes_per_token"] - token
        axis.bar(["R6"], [token], label="token string", color="#2f6fde")
        axis.bar(["R6"], [other], bottom=[token], label="everything else", color="#9aa5b1")
        axis.axhline(1024, color="#c0392b", linestyle="--", label="target 1 KiB")
        axis.set_ylabel("bytes of RSS per cached token")
        axis.set_title("memory per cached token")
        axis.legend()
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_all(
    out_dir: Path, stem: str, meta: dict[str, Any], results: list[ScenarioResult]
) -> tuple[Path, Path, Path]:
    """``<stem>.json``, ``<stem>.md`` and ``<stem>.png`` in ``out_dir``; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path, png_path = (out_dir / f"{stem}{ext}" for ext in (".json", ".md", ".png"))
    document = {**meta, "scenarios": [asdict(r) for r in results]}
    json_path.write_text(json.dumps(_finite(document), indent=2, allow_nan=False) + "\n")
    md_path.write_text(markdown(meta, results))
    chart(results, png_path, f"Broker vs baseline, {meta['started_at']}")
    return json_path, md_path, png_path


def _finite(value: Any) -> Any:
    """``value`` with every NaN or infinity replaced by None (strict JSON has neither)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value
