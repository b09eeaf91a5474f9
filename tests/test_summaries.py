"""A payment reads in words in the Web UI: its summary and details from the start, and a
summary on each activity and timer of its history."""

from datetime import UTC, datetime, timedelta

import asyncpg
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.testing import WorkflowEnvironment

from billing.constants import workflow_id
from billing.ledger import Ledger
from billing.models import BillingPolicy, PaymentInput
from billing.settings import Settings
from billing.stripe_client import make_stripe_client
from billing.summaries import (
    amount_text,
    authentication_wait_summary,
    capture_window_summary,
    dunning_wait_summary,
    payment_details,
    payment_summary,
)
from starter import execute
from tests.support import add_customer, running_worker

PERIOD = "2026-11"


def payment(amount: int = 1200, currency: str = "eur", **policy: object) -> PaymentInput:
    return PaymentInput(
        payment_id="7f1c",
        customer_id="c-42",
        billing_period=PERIOD,
        amount=amount,
        currency=currency,
        stripe_customer_id="cus_Abc",
        payment_method_id="pm_card_visa",
        policy=BillingPolicy.model_validate(policy),
    )


def test_the_summary_names_customer_amount_and_period() -> None:
    assert payment_summary(payment()) == "Charge cus_Abc 12.00 EUR for 2026-11"


def test_amounts_read_in_the_currencys_decimals() -> None:
    assert amount_text(150000, "usd") == "1,500.00 USD"
    assert amount_text(5000, "jpy") == "5,000 JPY"
    assert amount_text(1500, "kwd") == "1.500 KWD"
    assert payment_summary(payment(5000, "jpy")) == "Charge cus_Abc 5,000 JPY for 2026-11"


def test_the_details_say_what_the_payment_was_started_with() -> None:
    details = payment_details(
        payment(
            capture_delay=timedelta(hours=2),
            dunning_schedule=[timedelta(days=1)],
            authentication_window=timedelta(days=3),
        )
    )
    assert details.splitlines() == [
        "**Payment** 7f1c",
        "**Customer** c-42 (Stripe cus_Abc)",
        "**Card** pm_card_visa",
        "**Capture window** 2h",
        "**Dunning retries after** 1d",
        "**3-D Secure** waits up to 3d",
    ]
    assert "**Capture window** none" in payment_details(payment())
    assert "**3-D Secure** off" in payment_details(payment())


def test_timers_say_how_long_and_until_when() -> None:
    noon = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
    window = capture_window_summary(noon, timedelta(hours=2))
    assert window == "capture window 2h, until 14:00 UTC"
    window = capture_window_summary(noon, timedelta(days=2))
    assert window == "capture window 2d, until 2026-11-30 12:00 UTC"
    dunning = dunning_wait_summary(2, 3, noon, timedelta(minutes=30))
    assert dunning == "dunning retry 2 of 3 in 30m, at 12:30 UTC"
    authentication = authentication_wait_summary("pi_1", noon, timedelta(hours=1))
    assert authentication == "3-D Secure of pi_1: next check in 1h, at 13:00 UTC"


def summaries(events: list[HistoryEvent], event_type: "EventType.ValueType") -> list[str]:
    """The summaries of a history's events of one type, as plain text."""
    return [
        e.user_metadata.summary.data.decode().strip('"')
        for e in events
        if e.event_type == event_type and e.HasField("user_metadata")
    ]


async def test_a_billed_payment_carries_its_summaries(
    temporal_env: WorkflowEnvironment, pool: asyncpg.Pool, settings: Settings
) -> None:
    """A capture window and a soft decline retried once: every step is named."""
    ledger = Ledger(pool)
    stripe = make_stripe_client(settings)
    await add_customer(ledger, stripe, "pm_card_visa", amount=1200)
    await add_customer(ledger, stripe, "pm_card_chargeDeclinedInsufficientFunds", amount=500)
    client = temporal_env.client
    async with running_worker(settings, client):
        bill = ["bill", PERIOD, "--wait", "--capture-after", "1s"]
        assert await execute(bill, settings, client) == 0

    by_amount = {p.amount: p for p in await ledger.period_payments(PERIOD)}
    paid, declined = by_amount[1200], by_amount[500]

    handle = client.get_workflow_handle(workflow_id(paid.id))
    described = await handle.describe()
    [customer] = await pool.fetch(
        "SELECT stripe_customer_id FROM customers WHERE id = $1::uuid", paid.customer_id
    )
    stripe_customer = customer["stripe_customer_id"]
    assert await described.static_summary() == f"Charge {stripe_customer} 12.00 USD for {PERIOD}"
    details = await described.static_details()
    assert details is not None and f"**Payment** {paid.id}" in details
    events = [e async for e in handle.fetch_history_events()]
    activities = summaries(events, EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED)
    [authorize] = [s for s in activities if s.startswith("authorize 12.00 USD on pm_")]
    assert authorize.endswith(f", unless Stripe holds a {PERIOD} charge of {stripe_customer}")
    assert f"capture {paid.stripe_payment_intent_id}" in activities
    [window] = summaries(events, EventType.EVENT_TYPE_TIMER_STARTED)
    assert window.startswith("capture window 1s, until ") and window.endswith(" UTC"), window
    ledger_steps = summaries(events, EventType.EVENT_TYPE_MARKER_RECORDED)
    assert "ledger: read payment" in ledger_steps
    assert "ledger: finalize" in ledger_steps

    declined_events = [
        e async for e in client.get_workflow_handle(workflow_id(declined.id)).fetch_history_events()
    ]
    [dunning] = summaries(declined_events, EventType.EVENT_TYPE_TIMER_STARTED)
    assert dunning.startswith("dunning retry 1 of 1 in 1s, at "), dunning
    assert "ledger: record failure" in summaries(
        declined_events, EventType.EVENT_TYPE_MARKER_RECORDED
    )
