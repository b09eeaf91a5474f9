"""Measurements shared by the benchmark runs: process CPU, percentiles, the sandbox log, the
machine."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil

# One line per request, as stripe_sandbox logs it: asctime, logger, then the request.
_SANDBOX_LINE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \S+ POST /v1/payment_intents "
    r"key=pay_(?P<id>[0-9a-f-]{36})_auth_1 status=\S+ .* (?P<ms>[\d.]+)ms$"
)


def cpu_seconds(pid: int | None) -> float:
    """User plus system CPU of one process, with its exited children that it waited for."""
    if pid is None:
        return 0.0
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.NoSuchProcess:
        return 0.0
    return float(times.user + times.system + times.children_user + times.children_system)


def tree_cpu_seconds(pid: int | None) -> float:
    """CPU of a process and of every live descendant (PostgreSQL's backends)."""
    if pid is None:
        return 0.0
    total = cpu_seconds(pid)
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return total
    for child in children:
        try:
            times = child.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def peak_rss_mb(pid: int) -> float | None:
    """VmHWM: the most resident memory the process ever had."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(fraction * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


def first_authorize_arrivals(log_path: Path) -> dict[str, float]:
    """Unix time at which the sandbox first received each payment's authorization request
    (its log time less the request's own duration)."""
    arrivals: dict[str, float] = {}
    with log_path.open(errors="replace") as log:
        for line in log:
            match = _SANDBOX_LINE.match(line.rstrip("\n"))
            if match is None:
                continue
            logged = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            arrived = logged - float(match.group("ms")) / 1000
            payment_id = match.group("id")
            if payment_id not in arrivals or arrived < arrivals[payment_id]:
                arrivals[payment_id] = arrived
    return arrivals


PROJECT_ROOT = Path(__file__).resolve().parent.parent


def machine() -> dict[str, object]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "cpu_model": model,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
    }


def commit() -> dict[str, Any]:
    """The commit measured, and whether the tracked files differed from it."""

    def git(*args: str) -> str:
        result = subprocess.run(
            ["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, check=False
        )
        return result.stdout.strip()

    changed = git("status", "--porcelain", "--untracked-files=no")
    return {"sha": git("rev-parse", "HEAD") or None, "dirty": bool(changed)}


def mean(values: Iterable[float]) -> float:
    items = list(values)
    return sum(items) / len(items) if items else float("nan")
