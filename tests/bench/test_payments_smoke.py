"""`python -m bench.payments` end to end with ten payments: the JSON has the promised shape."""

import json
import subprocess
import sys
from pathlib import Path

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


def test_ten_payments_each_way(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.payments",
            "--n",
            "10",
            "--limits",
            "off",
            "--jitter-ms",
            "0",
            "--timeout",
            "60",
            "--out",
            str(out),
        ],
        check=True,
        timeout=120,
        capture_output=True,
    )
    results = json.loads(out.read_text())
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
