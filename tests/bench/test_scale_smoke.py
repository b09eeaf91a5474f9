"""`python -m bench.scale` with 50 customers in pages of 10, two pages a run: the launch ends,
the run continued as new twice, and the JSON has the promised shape."""

import json
import subprocess
import sys
from pathlib import Path

REQUIRED = {
    "n",
    "payments_started",
    "launch_seconds",
    "payments_started_per_second",
    "runs",
    "continue_as_new",
    "history_length_per_run",
    "worker",
    "starter",
    "temporal_server",
    "postgres",
    "samples",
    "billing_runs",
    "machine",
    "commit",
}


def test_fifty_customers_three_runs(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    subprocess.run(
        [
            sys.executable,
            *("-m", "bench.scale", "--n", "50", "--page-size", "10", "--pages-per-run", "2"),
            *("--timeout", "60", "--out", str(out)),
        ],
        check=True,
        timeout=120,
        capture_output=True,
    )
    result = json.loads(out.read_text())
    assert result.keys() >= REQUIRED
    assert result["n"] == result["payments_started"] == result["rows_created"] == 50
    assert result["payment_workflows_on_server"] == 50
    assert result["launch_seconds"] > 0
    assert result["payments_started_per_second"] > 0
    # Pages 1-2, 3-4, then 5 and the empty sixth: three runs, two of them continued as new.
    assert result["runs"] == 3
    assert result["continue_as_new"] == 2
    assert [r["status"] for r in result["billing_runs"]] == [
        "CONTINUED_AS_NEW",
        "CONTINUED_AS_NEW",
        "TERMINATED",
    ]
    assert [r["pages"] for r in result["billing_runs"]] == [2, 2, 2]
    assert all(length > 0 for length in result["history_length_per_run"])
    worker = result["worker"]
    for key in ("rss_mb_at_launch_start", "rss_mb_at_launch_end", "peak_rss_mb"):
        assert worker[key] > 0
    assert worker["log_warnings_and_errors"] == 0
    assert result["starter"]["peak_rss_mb"] > 0
    assert result["samples"]
    tables = result["postgres"]["tables"]
    assert tables["customers"]["rows"] == tables["payments"]["rows"] == 50
    assert tables["payment_events"]["rows"] == 50
    for sizes in tables.values():
        assert sizes["total_mb"] >= sizes["heap_mb"] > 0
    assert result["machine"]["cores"] >= 1
