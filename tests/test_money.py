"""Amounts are shown in their currency's own decimals: a yen is not a hundred of anything."""

from pathlib import Path

import asyncpg
import pytest

from billing.ledger import Ledger
from billing.money import format_amount
from billing.settings import Settings
from starter import execute


@pytest.mark.parametrize(
    ("minor_units", "currency", "shown"),
    [
        (5000, "jpy", "5,000"),
        (1234567, "krw", "1,234,567"),
        (150000, "usd", "1,500.00"),
        (7, "eur", "0.07"),
        (1500, "kwd", "1.500"),
        (123456, "bhd", "123.456"),
        (-250, "usd", "-2.50"),
    ],
)
def test_amounts_use_the_currency_decimals(minor_units: int, currency: str, shown: str) -> None:
    assert format_amount(minor_units, currency) == shown


async def test_the_report_shows_a_yen_payment_in_yen(
    settings: Settings, pool: asyncpg.Pool, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "customers.csv"
    path.write_text(
        "email,stripe_customer_id,payment_method_id,monthly_amount,currency\n"
        "a@example.com,cus_a,pm_card_visa,5000,JPY\n"
        "b@example.com,cus_b,pm_card_visa,5000,usd\n"
    )
    assert await execute(["customers", "import", str(path)], settings) == 0
    await Ledger(pool).create_period_payments("2026-11")
    capsys.readouterr()

    assert await execute(["report", "2026-11"], settings) == 0
    lines = capsys.readouterr().out.splitlines()
    [jpy] = [line for line in lines if " jpy " in line]
    [usd] = [line for line in lines if " usd " in line]
    assert "5,000" in jpy and "50.00" not in jpy
    assert "50.00" in usd
