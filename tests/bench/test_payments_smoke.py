"""`python -m bench.payments` end to end with ten payments: the JSON has the promised shape."""

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

REQUIRED = {
    "system",
    "stripe_limits",
    "n",
    "payments_per_second",
    "p50_seconds",
    "p95_seconds",
    "p99_seconds",
    "history_events_per_payment",
    "worker_cpu_seconds",
    "worker_peak_rss_mb",
    "sql_statements_per_payment",
    "cpu_ms_per_payment",
    "payments_per_cpu_second",
    "machine",
}


def run_bench(tmp_path: Path, *args: str) -> dict[str, Any]:
    """Ten payments, limits off, no jitter; the results file."""
    out = tmp_path / "results.json"
    subprocess.run(
        [
            *(sys.executable, "-m", "bench.payments", "--n", "10", "--limits", "off"),
            *("--jitter-ms", "0", "--timeout", "60", "--out", str(out), *args),
        ],
        check=True,
        timeout=120,
        capture_output=True,
    )
    results: dict[str, Any] = json.loads(out.read_text())
    return results


def test_ten_payments_each_way(tmp_path: Path) -> None:
    results = run_bench(tmp_path)
    assert len(results["commit"]["sha"]) == 40
    runs = results["runs"]
    assert [(r["system"], r["stripe_limits"]) for r in runs] == [
        ("temporal", "off"),
        ("hand-rolled", "off"),
    ]
    for run in runs:
        assert run.keys() >= REQUIRED
        assert run["n"] == run["completed"] == run["succeeded"] == 10
        assert run["payments_per_second"] > 0
        assert run["cpu_ms_per_payment"] > run["worker_cpu_ms_per_payment"] > 0
        assert run["payments_per_cpu_second"] > 0
        assert run["machine"]["cores"] >= 1
    assert runs[0]["history_events_per_payment"] > 0
    assert runs[1]["history_events_per_payment"] is None


def test_two_worker_processes_are_measured_as_one_fleet(tmp_path: Path) -> None:
    [run] = run_bench(tmp_path, "--systems", "temporal", "--worker-processes", "2")["runs"]
    assert run["worker_processes"] == 2
    assert run["n"] == run["completed"] == run["succeeded"] == 10
    first, second = run["process_stats"]["processes"]
    assert run["process_stats"]["sql_statements"] == (
        first["sql_statements"] + second["sql_statements"]
    )
    assert run["worker_peak_rss_mb"] > max(first["peak_rss_mb"], second["peak_rss_mb"])


def test_a_fleet_of_no_workers_is_refused() -> None:
    refused = subprocess.run(
        [sys.executable, "-m", "bench.payments", "--worker-processes", "0", "--no-out"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2
    assert "--worker-processes must be 1 or more, not 0" in refused.stderr


def test_payments_launched_by_the_billing_run_in_the_worker(tmp_path: Path) -> None:
    [run] = run_bench(
        tmp_path, "--systems", "temporal", "--launch", "run", "--worker-arg=--variant=eager-start"
    )["runs"]
    assert run["launch"] == "run"
    assert run["n"] == run["completed"] == run["succeeded"] == 10
