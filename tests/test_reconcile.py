"""`starter.py reconcile`: the ledger against Stripe, findings, exit codes, and `--fix`."""

import asyncio
import uuid
from datetime import UTC, datetime

import asyncpg
import pytest
import stripe
from temporalio.testing import WorkflowEnvironment

from billing.constants import PaymentStatus
from billing.demo import seed_demo_customers
from billing.ledger import Ledger, ReconcileLedger
from billing.models import PaymentRecord
from billing.reconcile import IntentView, Kind, VoidOutcome, compare, reconcile
from billing.settings import Settings
from billing.stripe_client import make_stripe_client
from starter import execute
from stripe_sandbox import Sandbox
from tests.support import running_worker

PERIOD = "2026-11"


def record(status: PaymentStatus, **changes: object) -> PaymentRecord:
    now = datetime.now(UTC)
    fields: dict[str, object] = {
        "id": str(uuid.uuid4()),
        "customer_id": str(uuid.uuid4()),
        "billing_period": PERIOD,
        "amount": 1000,
        "currency": "usd",
        "status": status,
        "stripe_payment_intent_id": None,
        "amount_received": None,
        "failure_code": None,
        "failure_message": None,
        "generation": 1,
        "created_at": now,
        "updated_at": now,
    }
    return PaymentRecord.model_validate({**fields, **changes})


def intent(payment_id: str | None, status: str, **changes: object) -> IntentView:
    fields: dict[str, object] = {
        "id": f"pi_{uuid.uuid4().hex[:12]}",
        "customer": "cus_1",
        "status": status,
        "amount": 1000,
        "amount_received": 1000 if status == "succeeded" else 0,
        "amount_capturable": 1000 if status == "requires_capture" else 0,
        "currency": "usd",
        "payment_id": payment_id,
    }
    return IntentView(**{**fields, **changes})  # type: ignore[arg-type]


def kinds(payments: list[PaymentRecord], intents: list[IntentView]) -> list[Kind]:
    return [f.kind for f in compare(PERIOD, payments, intents, {}).findings]


def test_compare_a_clean_period() -> None:
    paid = record(PaymentStatus.SUCCEEDED, amount_received=1000)
    captured = intent(paid.id, "succeeded")
    paid = paid.model_copy(update={"stripe_payment_intent_id": captured.id})
    waiting = record(PaymentStatus.AUTHORIZED)
    held = intent(waiting.id, "requires_capture")
    waiting = waiting.model_copy(update={"stripe_payment_intent_id": held.id})
    declined = record(PaymentStatus.FAILED)
    refused = intent(declined.id, "requires_payment_method")
    result = compare(
        PERIOD, [paid, waiting, declined], [captured, held, refused, intent(None, "succeeded")], {}
    )
    assert result.clean and result.findings == []
    assert result.in_window == [held.id]
    assert result.stripe_captured == result.ledger_succeeded == {"usd": 1000}


def test_compare_finds_each_kind_of_discrepancy() -> None:
    paid = record(PaymentStatus.SUCCEEDED, amount_received=1000, stripe_payment_intent_id="pi_x")
    assert kinds([paid], []) == [Kind.NO_CAPTURE]
    assert kinds([paid], [intent(paid.id, "succeeded", id="pi_x"), intent(paid.id, "succeeded")])[
        0
    ] == (Kind.DOUBLE_CHARGE)
    assert kinds([paid], [intent(paid.id, "succeeded")]) == [Kind.WRONG_INTENT]
    short = intent(paid.id, "succeeded", id="pi_x", amount=900, amount_received=900)
    assert kinds([paid], [short]) == [Kind.AMOUNT, Kind.AMOUNT]
    euros = intent(paid.id, "succeeded", id="pi_x", currency="eur")
    assert kinds([paid], [euros]) == [Kind.CURRENCY]

    failed = record(PaymentStatus.FAILED)
    assert kinds([failed], [intent(failed.id, "succeeded")]) == [Kind.CAPTURED_NOT_SUCCEEDED]
    assert kinds([failed], [intent(failed.id, "requires_capture")]) == [Kind.ORPHAN]
    waiting = record(PaymentStatus.AUTHORIZED, stripe_payment_intent_id="pi_kept")
    assert kinds([waiting], [intent(waiting.id, "requires_capture")]) == [Kind.ORPHAN]
    stranger = str(uuid.uuid4())
    assert kinds([], [intent(stranger, "requires_capture")]) == [Kind.ORPHAN]
    assert kinds([], [intent(stranger, "succeeded")]) == [Kind.CAPTURED_NOT_SUCCEEDED]


def test_compare_leaves_in_flight_and_other_periods_alone() -> None:
    pending = record(PaymentStatus.PENDING)
    being_recorded = intent(pending.id, "requires_capture")
    other_period = record(PaymentStatus.SUCCEEDED, billing_period="2026-10")
    result = compare(
        PERIOD,
        [pending],
        [being_recorded, intent(other_period.id, "succeeded")],
        {other_period.id: other_period},
    )
    assert result.clean and result.in_flight == [being_recorded.id]


async def bill_and_wait(temporal_env: WorkflowEnvironment, settings: Settings, *extra: str) -> None:
    async with running_worker(settings, temporal_env.client):
        assert await execute(["bill", PERIOD, "--wait", *extra], settings, temporal_env.client) == 0


async def extra_intent(
    settings: Settings,
    payment_id: str,
    customer: str,
    method: str,
    *,
    capture: bool,
    amount: int = 777,
    currency: str = "usd",
) -> stripe.PaymentIntent:
    """An intent the workflow never made, carrying the payment's metadata."""
    client = make_stripe_client(settings)
    made = await client.v1.payment_intents.create_async(
        {
            "amount": amount,
            "currency": currency,
            "customer": customer,
            "payment_method": method,
            "confirm": True,
            "off_session": True,
            "capture_method": "manual",
            "metadata": {"payment_id": payment_id},
        }
    )
    if capture:
        made = await client.v1.payment_intents.capture_async(made.id)
    return made


async def a_customer(pool: asyncpg.Pool, payment_id: str) -> tuple[str, str]:
    row = await pool.fetchrow(
        "SELECT c.stripe_customer_id, c.payment_method_id FROM payments p"
        " JOIN customers c ON c.id = p.customer_id WHERE p.id = $1::uuid",
        payment_id,
    )
    assert row is not None
    return row["stripe_customer_id"], row["payment_method_id"]


async def test_a_billed_month_reconciles_clean(
    temporal_env: WorkflowEnvironment,
    pool: asyncpg.Pool,
    sandbox: Sandbox,
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Nine demo customers: visas and mastercards, one hard and one soft decline.
    await seed_demo_customers(Ledger(pool), make_stripe_client(settings), count=9)
    await bill_and_wait(temporal_env, settings)
    capsys.readouterr()
    assert await execute(["reconcile", PERIOD], settings, temporal_env.client) == 0
    output = capsys.readouterr().out
    assert "clean" in output and "discrepancies" in output
    statuses = {p.status for p in await Ledger(pool).period_payments(PERIOD)}
    assert statuses == {PaymentStatus.SUCCEEDED, PaymentStatus.FAILED}


async def test_authorizations_in_their_window_are_not_discrepancies(
    temporal_env: WorkflowEnvironment, pool: asyncpg.Pool, sandbox: Sandbox, settings: Settings
) -> None:
    await seed_demo_customers(Ledger(pool), make_stripe_client(settings), count=2)
    async with running_worker(settings, temporal_env.client):
        assert (
            await execute(["bill", PERIOD, "--capture-after", "1h"], settings, temporal_env.client)
            == 0
        )
        ledger = ReconcileLedger(pool)
        for _ in range(200):
            payments = await ledger.period_payments(PERIOD)
            if all(p.status == PaymentStatus.AUTHORIZED for p in payments):
                break
            await asyncio.sleep(0.1)
        result = await reconcile(ledger, make_stripe_client(settings), PERIOD)
        assert result.clean and len(result.in_window) == 2
        assert await execute(["reconcile", PERIOD], settings, temporal_env.client) == 0
        for payment in payments:
            assert await execute(["cancel", payment.id], settings, temporal_env.client) == 0


async def test_fix_voids_an_orphan_and_never_touches_captured_money(
    temporal_env: WorkflowEnvironment,
    pool: asyncpg.Pool,
    sandbox: Sandbox,
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await seed_demo_customers(Ledger(pool), make_stripe_client(settings), count=2)
    await bill_and_wait(temporal_env, settings)
    first, second = await Ledger(pool).period_payments(PERIOD)
    customer, method = await a_customer(pool, first.id)
    orphan = await extra_intent(settings, first.id, customer, method, capture=False)
    customer, method = await a_customer(pool, second.id)
    double = await extra_intent(settings, second.id, customer, method, capture=True)
    capsys.readouterr()

    assert await execute(["reconcile", PERIOD], settings, temporal_env.client) == 1
    output = capsys.readouterr().out
    assert orphan.id in output and double.id in output and "double charge" in output
    assert {i["id"]: i["status"] for i in sandbox.payment_intents()}[orphan.id] == (
        "requires_capture"
    )

    # --fix voids the orphan; the double charge is captured money: reported, never touched.
    assert await execute(["reconcile", PERIOD, "--fix"], settings, temporal_env.client) == 1
    status_of = {i["id"]: i["status"] for i in sandbox.payment_intents()}
    assert status_of[orphan.id] == "canceled"
    assert status_of[double.id] == "succeeded"
    assert sandbox.stats()["by_endpoint"].get("payment_intents.capture") == 3
    actions = await ReconcileLedger(pool).reconcile_actions(PERIOD)
    assert [(a["intent_id"], a["payment_id"], a["action"], a["outcome"]) for a in actions] == [
        (orphan.id, first.id, "void", "cancelled")
    ]

    # The orphan is gone; only the double charge remains.
    capsys.readouterr()
    assert await execute(["reconcile", PERIOD], settings, temporal_env.client) == 1
    output = capsys.readouterr().out
    assert orphan.id not in output and "double charge" in output


async def test_captured_money_of_an_unsucceeded_payment_is_reported(
    temporal_env: WorkflowEnvironment, pool: asyncpg.Pool, sandbox: Sandbox, settings: Settings
) -> None:
    await seed_demo_customers(Ledger(pool), make_stripe_client(settings), count=1)
    await Ledger(pool).create_period_payments(PERIOD)
    [payment] = await Ledger(pool).period_payments(PERIOD)
    customer, method = await a_customer(pool, payment.id)
    captured = await extra_intent(
        settings,
        payment.id,
        customer,
        method,
        capture=True,
        amount=payment.amount,
        currency=payment.currency,
    )
    result = await reconcile(ReconcileLedger(pool), make_stripe_client(settings), PERIOD, fix=True)
    assert [(f.kind, f.intent_id) for f in result.findings] == [
        (Kind.CAPTURED_NOT_SUCCEEDED, captured.id)
    ]
    assert result.fixes == [] and not result.clean


async def test_an_orphan_of_an_unknown_payment_is_voided_by_fix(
    temporal_env: WorkflowEnvironment, pool: asyncpg.Pool, sandbox: Sandbox, settings: Settings
) -> None:
    await seed_demo_customers(Ledger(pool), make_stripe_client(settings), count=1)
    await bill_and_wait(temporal_env, settings)
    [payment] = await Ledger(pool).period_payments(PERIOD)
    customer, method = await a_customer(pool, payment.id)
    stranger = str(uuid.uuid4())
    orphan = await extra_intent(settings, stranger, customer, method, capture=False)
    ledger = ReconcileLedger(pool)
    result = await reconcile(ledger, make_stripe_client(settings), PERIOD, fix=True)
    assert [(f.kind, f.payment_id) for f in result.findings] == [(Kind.ORPHAN, stranger)]
    assert result.clean
    again = await reconcile(ledger, make_stripe_client(settings), PERIOD, fix=True)
    assert again.findings == [] and again.fixes == []
    [action] = await ledger.reconcile_actions(PERIOD)
    assert (action["intent_id"], action["outcome"], action["amount"]) == (
        orphan.id,
        "cancelled",
        777,
    )


@pytest.mark.parametrize("period", ["2026-13", "november"])
async def test_reconcile_refuses_a_bad_period(period: str, settings: Settings) -> None:
    assert await execute(["reconcile", period], settings) == 2


async def test_fix_leaves_an_open_payments_extra_authorization_to_its_workflow(
    pool: asyncpg.Pool, sandbox: Sandbox, settings: Settings
) -> None:
    """The payment may have re-authorized since reconcile read it: never void under it."""
    ledger = Ledger(pool)
    await seed_demo_customers(ledger, make_stripe_client(settings), count=1)
    await ledger.create_period_payments(PERIOD)
    [payment] = await ledger.period_payments(PERIOD)
    await ledger.transition(payment.id, PaymentStatus.AUTHORIZED, intent_id="pi_recorded")
    customer, method = await a_customer(pool, payment.id)
    extra = await extra_intent(
        settings,
        payment.id,
        customer,
        method,
        capture=False,
        amount=payment.amount,
        currency=payment.currency,
    )

    result = await reconcile(ReconcileLedger(pool), make_stripe_client(settings), PERIOD, fix=True)
    assert [(f.kind, f.intent_id) for f in result.findings] == [(Kind.ORPHAN, extra.id)]
    assert [f.outcome for f in result.fixes] == [VoidOutcome.PAYMENT_STILL_OPEN]
    assert not result.clean
    status_of = {i["id"]: i["status"] for i in sandbox.payment_intents()}
    assert status_of[extra.id] == "requires_capture"
