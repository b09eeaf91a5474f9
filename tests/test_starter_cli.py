"""starter.py as an operator uses it: exit codes, one-line errors, nothing half-written."""

import json
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from billing.ledger import Ledger
from billing.settings import Settings
from local_stack.ports import free_port
from starter import execute

ROOT = Path(__file__).resolve().parent.parent
GOOD_ROWS = [
    "a@example.com,cus_a,pm_card_visa,1500,usd",
    "b@example.com,cus_b,pm_card_visa,2500,EUR,false",
]
HEADER = "email,stripe_customer_id,payment_method_id,monthly_amount,currency,active"


def starter(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "starter.py", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_help_lists_every_command() -> None:
    result = starter("--help")
    assert result.returncode == 0
    for command in (
        "bill",
        "cancel",
        "refund",
        "status",
        "report",
        "reconcile",
        "customers",
        "demo",
    ):
        assert command in result.stdout


@pytest.mark.parametrize("period", ["2026-13", "2026-00", "26-11", "2026-1", "november"])
def test_a_bad_period_is_refused(period: str) -> None:
    assert "invalid billing period" in one_line_error(starter("bill", period))


def test_an_unreachable_database_is_a_clear_error() -> None:
    closed = f"postgresql://postgres@127.0.0.1:{free_port()}/billing"
    error = one_line_error(starter("report", "2026-11", DATABASE_URL=closed))
    assert "cannot reach PostgreSQL" in error and "DATABASE_URL" in error


async def test_an_unreachable_temporal_is_a_clear_error_and_nothing_is_written(
    database_url: str, pool: asyncpg.Pool
) -> None:
    await pool.execute(
        "INSERT INTO customers (email, stripe_customer_id, payment_method_id, monthly_amount,"
        " currency) VALUES ('a@example.com', 'cus_a', 'pm_a', 100, 'usd')"
    )
    result = starter(
        "bill", "2026-11", DATABASE_URL=database_url, TEMPORAL_ADDRESS=f"127.0.0.1:{free_port()}"
    )
    assert "cannot reach Temporal" in one_line_error(result)
    assert await pool.fetchval("SELECT count(*) FROM payments") == 0


async def test_an_unknown_payment_is_a_clear_error(database_url: str, pool: asyncpg.Pool) -> None:
    for payment_id in ("00000000-0000-0000-0000-000000000000", "nope"):
        error = one_line_error(starter("status", payment_id, DATABASE_URL=database_url))
        assert "unknown payment" in error


async def test_customers_import_is_all_or_nothing(
    tmp_path: Path, database_url: str, pool: asyncpg.Pool
) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join([HEADER, *GOOD_ROWS, "c@example.com,cus_c,pm_card_visa,-3,usd"]))
    error = one_line_error(starter("customers", "import", str(bad), DATABASE_URL=database_url))
    assert "line 4" in error and "monthly_amount" in error
    assert await pool.fetchval("SELECT count(*) FROM customers") == 0

    good = tmp_path / "good.csv"
    good.write_text("\n".join([HEADER, *GOOD_ROWS]))
    result = starter("customers", "import", str(good), DATABASE_URL=database_url)
    assert result.returncode == 0, result.stderr
    rows = await pool.fetch("SELECT email, currency, active FROM customers ORDER BY email")
    assert [tuple(r) for r in rows] == [
        ("a@example.com", "usd", True),
        ("b@example.com", "eur", False),
    ]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("email,amount\na@example.com,5", "missing column"),
        (f"{HEADER}\na@example.com,cus_a,pm_card_visa,1500", "wrong number of fields"),
        (f"{HEADER}\nnot-an-email,cus_a,pm_card_visa,1500,usd", "email"),
        (f"{HEADER}\n{GOOD_ROWS[0]}\n{GOOD_ROWS[0]}", "already on line 2"),
        (f"{HEADER}\na@example.com,cus_a,pm_card_visa,1500,usd,maybe", "active must be"),
        (HEADER, "no customer rows"),
    ],
)
async def test_malformed_csv_is_refused(
    tmp_path: Path,
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
    content: str,
    message: str,
) -> None:
    path = tmp_path / "customers.csv"
    path.write_text(content)
    assert await execute(["customers", "import", str(path)], settings) == 2
    assert message in capsys.readouterr().err


async def test_report_json_lists_each_payment(
    settings: Settings, pool: asyncpg.Pool, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "customers.csv"
    path.write_text("\n".join([HEADER, GOOD_ROWS[0]]))
    assert await execute(["customers", "import", str(path)], settings) == 0
    await Ledger(pool).create_period_payments("2026-11")
    capsys.readouterr()

    assert await execute(["report", "2026-11", "--json"], settings) == 0
    document = json.loads(capsys.readouterr().out)
    [payment] = document["payments"]
    assert payment["amount"] == 1500 and payment["currency"] == "usd"
    assert payment["status"] == "pending" and payment["stripe_payment_intent_id"] is None
    assert set(payment) >= {"id", "customer_id", "amount", "currency", "status"}
    assert document["totals"] == [
        {"status": "pending", "currency": "usd", "count": 1, "amount": 1500}
    ]
