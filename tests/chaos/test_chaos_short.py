"""A short chaos soak (`python -m bench.chaos --n 60`) as part of `make test`: payments, refunds
(full, partial, repeated), disputes and webhooks through the real worker and receiver while
both are killed and PostgreSQL and Temporal restart."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHORT_N = 60
SOAK_TIMEOUT_S = 600


@pytest.mark.timeout(SOAK_TIMEOUT_S + 60)
def test_a_short_chaos_soak_loses_nothing_charges_and_refunds_once() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.chaos", "--n", str(SHORT_N), "--chaos-seconds", "35"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=SOAK_TIMEOUT_S,
        check=False,
    )
    report = result.stdout + result.stderr[-5000:]
    assert result.returncode == 0, report
    rows = {
        cells[0]: cells[1]
        for line in result.stdout.splitlines()
        if (cells := [c.strip() for c in line.strip("│ ").split("│")]) and len(cells) == 2
    }
    for zero in (
        "double charges",
        "lost payments",
        "stuck payments",
        "orphan authorizations",
        "customer-periods captured twice",
        "customer-periods captured != ledger",
        "workflows closed without a result",
        "double refunds",
        "stuck refunds",
        "refund workflows still running",
        "webhook events not handed on",
    ):
        assert rows[zero] == "0", report
    assert rows["reconcile"] == "clean", report
    assert int(rows["worker SIGKILLs"]) >= 1, report
    assert int(rows["webhook receiver SIGKILLs"]) == 1, report
    assert int(rows["PostgreSQL restarts"]) >= 2 and int(rows["Temporal restarts"]) >= 1, report
    # What the soak exercised, so that the zeros above mean something: refunds of each kind
    # made and matched at Stripe, disputes opened, webhook events stored and handed on.
    assert int(rows["refunds asked (payments)"]) >= 3, report
    assert int(rows["of them full refunds asked again"]) >= 1, report
    made = int(rows["refunds made (ledger succeeded)"])
    assert made >= 3 and rows["refunds at Stripe"] == str(made), report
    assert rows["refunded at Stripe (minor units)"] == rows["refunded in ledger (minor units)"], (
        report
    )
    assert int(rows["disputes opened"]) >= 1, report
    stored = int(rows["webhook events stored"])
    assert stored >= 1 and rows["webhook events handed on"] == str(stored), report
