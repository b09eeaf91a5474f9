"""A customer is its Stripe customer id, and emails compare ignoring case: a re-import can
never put one Stripe customer on two rows, so it is never billed twice in a period."""

import asyncio
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from temporalio.testing import WorkflowEnvironment

from billing.ledger import CustomerConflict, Ledger
from billing.models import NewCustomer
from billing.settings import Settings
from billing.stripe_client import make_stripe_client
from starter import execute
from stripe_sandbox import Sandbox
from tests.support import running_worker

PERIOD = "2026-11"
HEADER = "email,stripe_customer_id,payment_method_id,monthly_amount,currency"


def csv_file(tmp_path: Path, name: str, *rows: str) -> str:
    path = tmp_path / f"{name}.csv"
    path.write_text("\n".join([HEADER, *rows]) + "\n")
    return str(path)


async def import_file(path: str, settings: Settings) -> int:
    return await execute(["customers", "import", path], settings)


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ")
    return lines[0]


def new(email: str, stripe_id: str) -> NewCustomer:
    return NewCustomer(
        email=email,
        stripe_customer_id=stripe_id,
        payment_method_id="pm_card_visa",
        monthly_amount=1000,
        currency="usd",
    )


async def customer_rows(pool: asyncpg.Pool) -> list[dict[str, Any]]:
    return [dict(r) for r in await pool.fetch("SELECT * FROM customers ORDER BY id")]


async def test_a_re_import_with_another_email_never_bills_a_stripe_customer_twice(
    temporal_env: WorkflowEnvironment,
    pool: asyncpg.Pool,
    sandbox: Sandbox,
    settings: Settings,
    tmp_path: Path,
) -> None:
    stripe = make_stripe_client(settings)
    customer = await stripe.v1.customers.create_async({"email": "Ann@example.com"})
    card = await stripe.v1.payment_methods.attach_async("pm_card_visa", {"customer": customer.id})
    row = f"{customer.id},{card.id},2500,usd"
    client = temporal_env.client
    async with running_worker(settings, client):
        first = csv_file(tmp_path, "first", f"Ann@example.com,{row}")
        assert await import_file(first, settings) == 0
        assert await execute(["bill", PERIOD, "--wait"], settings, client) == 0

        for name, email in (("case", "ann@EXAMPLE.com"), ("moved", "ann.new@example.com")):
            assert await import_file(csv_file(tmp_path, name, f"{email},{row}"), settings) == 0
            assert await execute(["bill", PERIOD, "--wait"], settings, client) == 0

    customers = await customer_rows(pool)
    assert [(c["email"], c["stripe_customer_id"]) for c in customers] == [
        ("ann.new@example.com", customer.id)
    ]
    [payment] = await Ledger(pool).period_payments(PERIOD)
    assert (payment.status, payment.amount_received) == ("succeeded", 2500)
    captured = [i for i in sandbox.payment_intents() if i["status"] == "succeeded"]
    assert [(i["customer"], i["amount_received"]) for i in captured] == [(customer.id, 2500)]
    assert len(sandbox.payment_intents()) == 1


async def test_one_stripe_customer_on_two_rows_is_refused_and_nothing_is_written(
    pool: asyncpg.Pool, settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = csv_file(
        tmp_path,
        "first",
        "a@example.com,cus_a,pm_card_visa,1000,usd",
        "b@example.com,cus_b,pm_card_visa,2000,usd",
    )
    assert await import_file(first, settings) == 0
    before = await customer_rows(pool)
    capsys.readouterr()

    # cus_a is a@'s Stripe customer; b@ (in another case) is the customer on cus_b.
    clash = csv_file(
        tmp_path,
        "clash",
        "c@example.com,cus_c,pm_card_visa,3000,usd",
        "B@example.com,cus_a,pm_card_visa,1000,usd",
    )
    assert await import_file(clash, settings) == 2
    error = one_line_error(capsys)
    assert "cus_a belongs to the customer a@example.com" in error
    assert "another customer (cus_b)" in error and "nothing was imported" in error
    assert await customer_rows(pool) == before


async def test_two_rows_matching_one_customer_are_refused(
    pool: asyncpg.Pool, settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = csv_file(tmp_path, "first", "a@example.com,cus_a,pm_a,1000,usd")
    assert await import_file(first, settings) == 0
    before = await customer_rows(pool)
    capsys.readouterr()

    # One row gives cus_a a new email, the other moves a@ to cus_z: which one is meant?
    both = csv_file(
        tmp_path,
        "both",
        "z@example.com,cus_a,pm_a,1000,usd",
        "A@example.com,cus_z,pm_z,1000,usd",
    )
    assert await import_file(both, settings) == 2
    assert "both match the customer a@example.com (cus_a)" in one_line_error(capsys)
    assert await customer_rows(pool) == before


@pytest.mark.parametrize(
    ("second_row", "message"),
    [
        ("b@example.com,cus_a,pm_card_visa,2000,usd", "line 3: cus_a is already on line 2"),
        (
            "A@Example.COM,cus_b,pm_card_visa,2000,usd",
            "line 3: A@Example.COM is already on line 2 as a@example.com",
        ),
    ],
)
async def test_duplicates_in_one_file_are_refused_naming_both_lines(
    pool: asyncpg.Pool,
    settings: Settings,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    second_row: str,
    message: str,
) -> None:
    path = csv_file(tmp_path, "dup", "a@example.com,cus_a,pm_card_visa,1000,usd", second_row)
    assert await import_file(path, settings) == 2
    error = one_line_error(capsys)
    assert message in error and "keep one row per customer" in error
    assert await customer_rows(pool) == []


async def test_the_ledger_refuses_duplicates_from_any_caller(pool: asyncpg.Pool) -> None:
    with pytest.raises(CustomerConflict, match=r"share a@example\.com"):
        await Ledger(pool).upsert_customers(
            [new("a@example.com", "cus_a"), new("A@example.com", "cus_b")]
        )
    with pytest.raises(CustomerConflict, match="share cus_a"):
        await Ledger(pool).upsert_customers(
            [new("a@example.com", "cus_a"), new("b@example.com", "cus_a")]
        )
    assert await customer_rows(pool) == []


async def test_concurrent_imports_take_turns(pool: asyncpg.Pool) -> None:
    # The imports take turns: the second sees the first's row and updates it, never adds one.
    ledger = Ledger(pool)
    for _ in range(5):
        await asyncio.gather(
            ledger.upsert_customers([new("a@example.com", "cus_a")]),
            ledger.upsert_customers([new("A@example.com", "cus_b")]),
        )
    [row] = await customer_rows(pool)
    assert row["stripe_customer_id"] in {"cus_a", "cus_b"}


async def test_a_customer_who_moved_to_a_new_stripe_customer_keeps_one_row(
    pool: asyncpg.Pool, settings: Settings, tmp_path: Path
) -> None:
    ledger = Ledger(pool)
    first = csv_file(tmp_path, "first", "a@example.com,cus_a,pm_a,1000,usd")
    assert await import_file(first, settings) == 0
    await ledger.create_period_payments(PERIOD)

    moved = csv_file(tmp_path, "moved", "A@example.com,cus_new,pm_new,1500,usd")
    assert await import_file(moved, settings) == 0

    [row] = await customer_rows(pool)
    assert (row["email"], row["stripe_customer_id"], row["payment_method_id"]) == (
        "A@example.com",
        "cus_new",
        "pm_new",
    )
    assert await ledger.stripe_ids_of("a@EXAMPLE.com") == ("cus_new", "pm_new")

    # cus_a, handed to a new row, was billed for November already: no second payment.
    handed = csv_file(tmp_path, "handed", "b@example.com,cus_a,pm_b,2000,usd")
    assert await import_file(handed, settings) == 0
    assert await ledger.create_period_payments(PERIOD) == 0
    assert await ledger.create_period_payments("2026-12") == 2
    # History is not rewritten: November's payment still names the Stripe customer it billed.
    billed = await pool.fetch(
        "SELECT billing_period, stripe_customer_id, amount FROM payments"
        " ORDER BY billing_period, stripe_customer_id"
    )
    assert [tuple(r) for r in billed] == [
        (PERIOD, "cus_a", 1000),
        ("2026-12", "cus_a", 2000),
        ("2026-12", "cus_new", 1500),
    ]


async def test_the_database_refuses_a_second_payment_for_a_stripe_customer_and_period(
    pool: asyncpg.Pool,
) -> None:
    ids = [
        await pool.fetchval(
            "INSERT INTO customers (email, stripe_customer_id, payment_method_id,"
            " monthly_amount, currency) VALUES ($1, $2, 'pm_x', 1000, 'usd') RETURNING id",
            email,
            stripe_id,
        )
        for email, stripe_id in (("a@example.com", "cus_a"), ("b@example.com", "cus_b"))
    ]
    insert_payment = (
        "INSERT INTO payments (customer_id, billing_period, amount, currency,"
        " stripe_customer_id) VALUES ($1, $2, 1000, 'usd', 'cus_a')"
    )
    await pool.execute(insert_payment, ids[0], PERIOD)
    with pytest.raises(asyncpg.UniqueViolationError, match="payments_stripe_customer_period_key"):
        await pool.execute(insert_payment, ids[1], PERIOD)
    await pool.execute(insert_payment, ids[1], "2026-12")  # another period is another payment
    assert await pool.fetchval("SELECT count(*) FROM payments") == 2
