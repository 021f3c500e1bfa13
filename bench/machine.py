"""Facts about the machine and software a harness run measured on (stored with the results)."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from typing import Any


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine_info(wrk_version: str) -> dict[str, Any]:
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_total_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "wrk": wrk_version,
        "packages": {
            name: _version(name)
            for name in ("token-broker", "litestar", "uvicorn", "uvloop", "httptools", "pyjwt")
        },
        "load_average_at_start": load_average(),
    }
