"""`starter.py reconcile`: per (Stripe customer, period), from Stripe's side; stranded and
needs-attention payments; refunds compared one by one, stranded refunds and open disputes;
exit codes; and what `--fix` does and leaves for a person."""

import asyncio
import uuid
from datetime import UTC, datetime

import asyncpg
import pytest
import stripe
from temporalio.testing import WorkflowEnvironment

from billing.constants import (
    PaymentStatus,
    RefundReason,
    RefundStatus,
    refund_workflow_id,
    starting_search_attributes,
    workflow_id,
)
from billing.demo import seed_demo_customers
from billing.ledger import BilledPayment, Ledger, ReconcileLedger
from billing.ledger_refunds import RefundLedger
from billing.models import BillingPolicy, RefundInput, RefundRecord
from billing.reconcile import IntentView, Kind, VoidOutcome, compare, reconcile
from billing.reconcile_checks import Comparison, charge_refund
from billing.reconcile_refunds import RefundView, check_refunds
from billing.settings import Settings
from billing.stripe_client import (
    LIST_PAGE,
    CancelAnswer,
    ReadBackFailed,
    cancel_and_read_back,
    list_customer_intents,
    make_stripe_client,
    read_once,
    read_retried,
)
from starter import execute
from stripe_sandbox import FaultRule, Sandbox
from temporal_ops import payment_input, start_refund
from tests.support import add_customer, running_worker
from workflows.payment import PaymentWorkflow

PERIOD = "2026-11"


def record(status: PaymentStatus, **changes: object) -> BilledPayment:
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
        "stripe_customer_id": "cus_1",
    }
    return BilledPayment.model_validate({**fields, **changes})


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


def kinds(payments: list[BilledPayment], intents: list[IntentView]) -> list[Kind]:
    return [f.kind for f in compare(PERIOD, payments, intents, {}).findings]


def test_compare_a_clean_period() -> None:
    paid = record(PaymentStatus.SUCCEEDED, amount_received=1000)
    captured = intent(paid.id, "succeeded", billing_period=PERIOD)
    paid = paid.model_copy(update={"stripe_payment_intent_id": captured.id})
    waiting = record(PaymentStatus.AUTHORIZED, stripe_customer_id="cus_2")
    held = intent(waiting.id, "requires_capture", customer="cus_2")
    waiting = waiting.model_copy(update={"stripe_payment_intent_id": held.id})
    capturing = record(PaymentStatus.CAPTURING, stripe_customer_id="cus_3")
    being_captured = intent(capturing.id, "requires_capture", customer="cus_3")
    capturing = capturing.model_copy(update={"stripe_payment_intent_id": being_captured.id})
    declined = record(PaymentStatus.FAILED, stripe_customer_id="cus_4")
    refused = intent(declined.id, "requires_payment_method", customer="cus_4")
    result = compare(
        PERIOD,
        [paid, waiting, capturing, declined],
        [captured, held, being_captured, refused, intent(None, "succeeded")],
        {},
    )
    assert result.clean and result.findings == [] and result.customers == 4
    assert result.in_window == [held.id] and result.being_captured == [being_captured.id]
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
    assert kinds([paid], [euros]) == [Kind.CURRENCY, Kind.CURRENCY]

    for status in (PaymentStatus.FAILED, PaymentStatus.CANCELLED, PaymentStatus.NEEDS_ATTENTION):
        ended = record(status)
        found = kinds([ended], [intent(ended.id, "succeeded")])
        assert found[0] == Kind.CAPTURED_NOT_SUCCEEDED
    failed = record(PaymentStatus.FAILED)
    assert kinds([failed], [intent(failed.id, "requires_capture")]) == [Kind.ORPHAN]
    waiting = record(PaymentStatus.AUTHORIZED, stripe_payment_intent_id="pi_kept")
    assert kinds([waiting], [intent(waiting.id, "requires_capture")]) == [Kind.ORPHAN]
    stranger = str(uuid.uuid4())
    assert kinds([], [intent(stranger, "requires_capture")]) == [Kind.ORPHAN]
    assert kinds([], [intent(stranger, "succeeded")]) == [Kind.CAPTURED_NOT_SUCCEEDED]
    stuck = record(PaymentStatus.NEEDS_ATTENTION, failure_code="x", failure_message="why")
    [finding] = compare(PERIOD, [stuck], [], {}).findings
    assert (finding.kind, finding.detail) == (Kind.NEEDS_ATTENTION, "x: why")


def test_compare_counts_captures_per_customer_and_period_whatever_payment_they_name() -> None:
    paid = record(PaymentStatus.SUCCEEDED, amount_received=1000, stripe_payment_intent_id="pi_x")
    own = intent(paid.id, "succeeded", id="pi_x", billing_period=PERIOD)
    other_period = record(PaymentStatus.SUCCEEDED, billing_period="2026-10")
    # Named after another period's payment, or a payment the ledger never had: this period.
    for named in (other_period.id, str(uuid.uuid4())):
        second = intent(named, "succeeded", billing_period=PERIOD, amount_received=700)
        [finding] = compare(PERIOD, [paid], [own, second], {other_period.id: other_period}).findings
        assert (finding.kind, finding.customer) == (Kind.DOUBLE_CHARGE, "cus_1")
        assert finding.intent_id == f"pi_x, {second.id}"
        assert "1000 usd + 700 usd = 1700 usd" in finding.detail
    # Another period's intent of this customer, by its metadata: left out.
    later = intent(paid.id, "succeeded", billing_period="2026-12")
    assert compare(PERIOD, [paid], [own, later], {}).clean


def test_compare_leaves_in_flight_and_other_periods_alone() -> None:
    pending = record(PaymentStatus.PENDING)
    being_recorded = intent(pending.id, "requires_capture")
    captured_not_recorded = intent(pending.id, "succeeded", billing_period=PERIOD)
    other_period = record(PaymentStatus.SUCCEEDED, billing_period="2026-10")
    result = compare(
        PERIOD,
        [pending],
        [being_recorded, captured_not_recorded, intent(other_period.id, "succeeded")],
        {other_period.id: other_period},
    )
    assert result.clean and result.in_flight == [being_recorded.id]
    assert result.captures_being_recorded == [captured_not_recorded.id]
    # The same capture once the payment's workflow is gone: nothing will record it.
    stranded = compare(
        PERIOD,
        [pending],
        [being_recorded, captured_not_recorded],
        {},
        {pending.id: "terminated"},
    )
    assert [f.kind for f in stranded.findings] == [Kind.CAPTURED_NOT_SUCCEEDED, Kind.STRANDED]


def test_a_refund_counts_what_was_given_back_after_capture_only() -> None:
    def charge(**fields: object) -> stripe.Charge:
        return stripe.Charge.construct_from(
            {"id": "ch_1", "object": "charge", "amount": 1000, **fields}, "sk_test_x"
        )

    assert charge_refund(None) == (0, False)
    assert charge_refund("ch_1") == (0, False)  # not expanded: tells nothing
    assert charge_refund(charge()) == (0, False)  # no refund or dispute fields: none
    # A partial capture releases the rest, which Stripe counts in amount_refunded.
    released = charge(amount_captured=600, amount_refunded=400, refunded=False)
    assert charge_refund(released) == (0, False)
    refunded = charge(amount_captured=600, amount_refunded=650, disputed=True)
    assert charge_refund(refunded) == (250, True)


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
    """An intent the workflow never made, with the metadata older code wrote."""
    return await make_intent(
        settings, customer, method, {"payment_id": payment_id}, amount, currency, capture=capture
    )


async def make_intent(
    settings: Settings,
    customer: str,
    method: str,
    metadata: dict[str, str],
    amount: int,
    currency: str = "usd",
    *,
    capture: bool = True,
    capture_amount: int | None = None,
) -> stripe.PaymentIntent:
    """An authorization made in the sandbox through the SDK; captured unless told not to."""
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
            "metadata": metadata,
        }
    )
    if capture:
        made = await client.v1.payment_intents.capture_async(
            made.id, {"amount_to_capture": capture_amount} if capture_amount else None
        )
    return made


def metadata_of(payment: BilledPayment) -> dict[str, str]:
    """What today's workflow writes on its PaymentIntents."""
    return {
        "payment_id": payment.id,
        "billing_period": payment.billing_period,
        "customer_id": payment.customer_id,
    }


async def a_customer(pool: asyncpg.Pool, payment_id: str) -> tuple[str, str]:
    row = await pool.fetchrow(
        "SELECT c.stripe_customer_id, c.payment_method_id FROM payments p"
        " JOIN customers c ON c.id = p.customer_id WHERE p.id = $1::uuid",
        payment_id,
    )
    assert row is not None
    return row["stripe_customer_id"], row["payment_method_id"]


async def billed(pool: asyncpg.Pool, settings: Settings, customers: int) -> list[BilledPayment]:
    """`customers` new Stripe customers paying 1000 usd, and their payment rows (no workflow)."""
    ledger = Ledger(pool)
    for _ in range(customers):
        await add_customer(ledger, make_stripe_client(settings), "pm_card_visa", amount=1000)
    await ledger.create_period_payments(PERIOD)
    return await ReconcileLedger(pool).billed_payments(PERIOD)


async def settle(pool: asyncpg.Pool, payment: BilledPayment, made: stripe.PaymentIntent) -> None:
    """Record in the ledger that `payment` authorized and captured `made`."""
    ledger = Ledger(pool)
    await ledger.transition(payment.id, PaymentStatus.AUTHORIZED, intent_id=made.id)
    await ledger.transition(
        payment.id,
        PaymentStatus.SUCCEEDED,
        intent_id=made.id,
        amount_received=made.amount_received,
    )


async def test_a_billed_month_reconciles_clean(
    temporal_env: WorkflowEnvironment,
    pool: asyncpg.Pool,
    sandbox: Sandbox,
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Nine demo customers: visas and mastercards, one hard and one soft decline (the tenth's
    # card would ask for 3-D Secure, which needs a customer to pass it).
    await seed_demo_customers(Ledger(pool), make_stripe_client(settings), count=9)
    await bill_and_wait(temporal_env, settings)
    capsys.readouterr()
    assert await execute(["reconcile", PERIOD], settings, temporal_env.client) == 0
    output = capsys.readouterr().out
    assert output.rstrip().endswith("clean") and "left for a person" not in output
    statuses = {p.status for p in await Ledger(pool).period_payments(PERIOD)}
    assert statuses == {PaymentStatus.SUCCEEDED, PaymentStatus.FAILED}


async def test_a_customer_captured_twice_through_two_payment_rows_is_a_double_charge(
    temporal_env: WorkflowEnvironment,
    pool: asyncpg.Pool,
    sandbox: Sandbox,
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Rows from before migration 004: two customer rows on one Stripe customer, one of them
    moved to a Stripe customer of its own before the upgrade. Each row succeeded and records
    its own capture, but both captures charged the same Stripe customer."""
    first, second = await billed(pool, settings, customers=2)
    customer, method = await a_customer(pool, first.id)
    charges = []
    for payment in (first, second):
        made = await make_intent(settings, customer, method, {"payment_id": payment.id}, 1000)
        await settle(pool, payment, made)
        charges.append(made.id)

    result = await reconcile(
        ReconcileLedger(pool), make_stripe_client(settings), temporal_env.client, PERIOD
    )
    found = {(f.kind, f.customer): f for f in result.findings}
    assert set(found) == {
        (Kind.DOUBLE_CHARGE, customer),
        (Kind.NO_CAPTURE, second.stripe_customer_id),
    }
    double = found[Kind.DOUBLE_CHARGE, customer]
    assert set((double.intent_id or "").split(", ")) == set(charges)
    assert set((double.payment_id or "").split(", ")) == {first.id, second.id}
    assert "2000 usd" in double.detail

    # --fix never touches captured money, and says what it leaves.
    capsys.readouterr()
    assert await execute(["reconcile", PERIOD, "--fix"], settings, temporal_env.client) == 1
    output = capsys.readouterr().out
    assert "double charge: refund the extra capture by hand in Stripe" in output
    assert {i["id"]: i["status"] for i in sandbox.payment_intents()} == dict.fromkeys(
        charges, "succeeded"
    )
    assert await ReconcileLedger(pool).reconcile_actions(PERIOD) == []


@pytest.mark.parametrize("captured", [1000, 600], ids=["whole", "partial"])
async def test_a_capture_adopted_by_a_recreated_row_is_compared_by_customer(
    captured: int,
    temporal_env: WorkflowEnvironment,
    pool: asyncpg.Pool,
    sandbox: Sandbox,
    settings: Settings,
) -> None:
    """A restored backup lost the row that charged; `bill` made a new one, which recorded the
    period's capture. Its metadata names the lost row: the customer was charged once, and
    only the amount decides."""
    [payment] = await billed(pool, settings, customers=1)
    customer, method = await a_customer(pool, payment.id)
    lost_row = {**metadata_of(payment), "payment_id": str(uuid.uuid4())}
    made = await make_intent(settings, customer, method, lost_row, 1000, capture_amount=captured)
    await Ledger(pool).transition(
        payment.id, PaymentStatus.SUCCEEDED, intent_id=made.id, amount_received=1000
    )

    result = await reconcile(
        ReconcileLedger(pool), make_stripe_client(settings), temporal_env.client, PERIOD
    )
    assert result.stripe_captured == {"usd": captured}
    assert result.ledger_succeeded == {"usd": 1000}
    # The 400 a partial capture released shows in the charge's amount_refunded; not a refund.
    assert result.refunds == []
    if captured == 1000:
        assert result.clean and result.findings == []
        return
    [finding] = result.findings
    assert (finding.kind, finding.customer, finding.intent_id) == (Kind.AMOUNT, customer, made.id)
    assert "captured 600 usd" in finding.detail and "succeeded amount is 1000 usd" in finding.detail


async def test_open_payments_whose_workflow_is_gone_are_stranded(
    temporal_env: WorkflowEnvironment,
    pool: asyncpg.Pool,
    sandbox: Sandbox,
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """One row was never started, one workflow was terminated, one runs (nothing polls its
    task queue, so it waits): only the first two are stranded."""
    payments = await billed(pool, settings, customers=3)
    never_started, terminated, running = payments
    client = temporal_env.client
    nobody_polls = f"nobody-polls-{uuid.uuid4().hex[:8]}"
    for payment in (terminated, running):
        row = await Ledger(pool).billable_row(payment.id)
        assert row is not None
        await client.start_workflow(
            PaymentWorkflow.run,
            payment_input(row, BillingPolicy()),
            id=workflow_id(payment.id),
            task_queue=nobody_polls,
            search_attributes=starting_search_attributes(PERIOD, payment.customer_id),
        )
    await client.get_workflow_handle(workflow_id(terminated.id)).terminate("by an operator")
    try:
        result = await reconcile(
            ReconcileLedger(pool), make_stripe_client(settings), client, PERIOD
        )
        assert {f.payment_id: (f.kind, f.detail) for f in result.findings} == {
            never_started.id: (
                Kind.STRANDED,
                f"pending, but workflow {workflow_id(never_started.id)} is missing",
            ),
            terminated.id: (
                Kind.STRANDED,
                f"pending, but workflow {workflow_id(terminated.id)} is terminated",
            ),
        }
        capsys.readouterr()
        assert await execute(["reconcile", PERIOD, "--fix"], settings, client) == 1
        output = capsys.readouterr().out
        assert "stranded: run `bill 2026-11` to resume" in output
        assert await ReconcileLedger(pool).reconcile_actions(PERIOD) == []
    finally:
        await client.get_workflow_handle(workflow_id(running.id)).terminate("test over")


async def test_a_capture_while_the_ledger_says_cancelled_is_left_for_a_person(
    temporal_env: WorkflowEnvironment,
    pool: asyncpg.Pool,
    sandbox: Sandbox,
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    [payment] = await billed(pool, settings, customers=1)
    customer, method = await a_customer(pool, payment.id)
    made = await make_intent(settings, customer, method, metadata_of(payment), 1000)
    ledger = Ledger(pool)
    await ledger.transition(payment.id, PaymentStatus.AUTHORIZED, intent_id=made.id)
    await ledger.transition(payment.id, PaymentStatus.CANCELLED, intent_id=made.id)

    result = await reconcile(
        ReconcileLedger(pool), make_stripe_client(settings), temporal_env.client, PERIOD
    )
    assert [(f.kind, f.customer, f.intent_id) for f in result.findings] == [
        (Kind.CAPTURED_NOT_SUCCEEDED, customer, made.id)
    ]
    capsys.readouterr()
    assert await execute(["reconcile", PERIOD, "--fix"], settings, temporal_env.client) == 1
    output = capsys.readouterr().out
    assert "captured, payment not succeeded: refund by hand in Stripe" in output
    assert {i["id"]: i["status"] for i in sandbox.payment_intents()} == {made.id: "succeeded"}
    assert await ReconcileLedger(pool).reconcile_actions(PERIOD) == []


async def test_a_payment_needing_attention_is_reported_with_its_reason(
    temporal_env: WorkflowEnvironment,
    pool: asyncpg.Pool,
    sandbox: Sandbox,
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    [payment] = await billed(pool, settings, customers=1)
    await Ledger(pool).transition(
        payment.id,
        PaymentStatus.NEEDS_ATTENTION,
        failure_code="capture_outcome_unknown",
        failure_message="Stripe kept answering a stored 500",
    )
    capsys.readouterr()
    assert await execute(["reconcile", PERIOD], settings, temporal_env.client) == 1
    output = capsys.readouterr().out
    assert "needs attention" in output and payment.id in output
    assert "capture_outcome_unknown: Stripe kept answering a stored 500" in output
    assert "needs attention: read the reason" in output


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
        result = await reconcile(ledger, make_stripe_client(settings), temporal_env.client, PERIOD)
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


async def test_captured_money_of_a_stranded_payment_is_reported(
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
    result = await reconcile(
        ReconcileLedger(pool), make_stripe_client(settings), temporal_env.client, PERIOD, fix=True
    )
    assert [(f.kind, f.intent_id) for f in result.findings] == [
        (Kind.CAPTURED_NOT_SUCCEEDED, captured.id),
        (Kind.STRANDED, None),
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
    stripe_client = make_stripe_client(settings)
    result = await reconcile(ledger, stripe_client, temporal_env.client, PERIOD, fix=True)
    assert [(f.kind, f.payment_id) for f in result.findings] == [(Kind.ORPHAN, stranger)]
    assert result.clean
    again = await reconcile(ledger, stripe_client, temporal_env.client, PERIOD, fix=True)
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
    temporal_env: WorkflowEnvironment, pool: asyncpg.Pool, sandbox: Sandbox, settings: Settings
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

    result = await reconcile(
        ReconcileLedger(pool), make_stripe_client(settings), temporal_env.client, PERIOD, fix=True
    )
    # No workflow runs it here, so it is stranded too; --fix resumes nothing.
    assert [(f.kind, f.intent_id) for f in result.findings] == [
        (Kind.ORPHAN, extra.id),
        (Kind.STRANDED, "pi_recorded"),
    ]
    assert [f.outcome for f in result.fixes] == [VoidOutcome.PAYMENT_STILL_OPEN]
    assert not result.clean
    status_of = {i["id"]: i["status"] for i in sandbox.payment_intents()}
    assert status_of[extra.id] == "requires_capture"


async def test_the_pager_follows_every_page_and_reads_as_it_is_told(
    pool: asyncpg.Pool, sandbox: Sandbox, settings: Settings
) -> None:
    """`read_once` leaves a read error to its caller (an activity: Temporal retries it);
    `read_retried` retries it here."""
    client = make_stripe_client(settings)
    ledger = Ledger(pool)
    found = await ledger.stripe_ids_of(await add_customer(ledger, client, "pm_card_visa"))
    assert found is not None
    customer, method = found
    made = [
        (await make_intent(settings, customer, method, {"payment_id": "p"}, 100, capture=False)).id
        for _ in range(LIST_PAGE + 1)
    ]

    sandbox.add_fault(FaultRule(kind="error_before", endpoint="payment_intents.list", times=1))
    with pytest.raises(stripe.APIError):
        await list_customer_intents(client, customer, 0, read=read_once)
    sandbox.add_fault(FaultRule(kind="error_before", endpoint="payment_intents.list", nth=2))
    listed = await list_customer_intents(
        client, customer, 0, read=read_retried, expand=["latest_charge"]
    )
    assert [i.id for i in listed] == made[::-1]
    assert all(isinstance(i.latest_charge, stripe.Charge) for i in listed)


async def test_a_void_reads_the_intent_back_when_stripe_does_not_answer_plainly(
    pool: asyncpg.Pool, sandbox: Sandbox, settings: Settings
) -> None:
    client = make_stripe_client(settings)
    ledger = Ledger(pool)
    found = await ledger.stripe_ids_of(await add_customer(ledger, client, "pm_card_visa"))
    assert found is not None
    customer, method = found
    held = await make_intent(settings, customer, method, {}, 1000, capture=False)

    async def cancel(intent_id: str, key: str) -> CancelAnswer:
        return await cancel_and_read_back(
            client, intent_id, reason="abandoned", idempotency_key=key, read=read_once
        )

    answer = await cancel(held.id, "void_1")
    assert (answer.cancelled, answer.cancelled_before, answer.error) == (True, False, None)
    # Someone else voided it first: refused as payment_intent_unexpected_state, read back.
    again = await cancel(held.id, "void_2")
    assert (again.cancelled, again.cancelled_before) == (True, True)
    # Stripe cancelled, then stored a 500 under the key: the intent says what happened.
    sandbox.add_fault(FaultRule(kind="error_after", endpoint="payment_intents.cancel", times=1))
    other = await make_intent(settings, customer, method, {}, 1000, capture=False)
    stored = await cancel(other.id, "void_3")
    assert stored.cancelled and not stored.cancelled_before and stored.error is not None
    # Captured money is never voided; the answer says it is captured.
    taken = await make_intent(settings, customer, method, {}, 1000)
    refused = await cancel(taken.id, "void_4")
    assert refused.captured and not refused.cancelled
    # A read back that fails is told apart from the keyed cancel's own errors.
    sandbox.add_fault(FaultRule(kind="error_after", endpoint="payment_intents.retrieve"))
    with pytest.raises(ReadBackFailed) as failed:
        await cancel(taken.id, "void_5")
    assert isinstance(failed.value.error, stripe.APIError)


def ledger_refund(
    payment_id: str, n: int, amount: int, status: RefundStatus, **more: object
) -> RefundRecord:
    now = datetime.now(UTC)
    return RefundRecord.model_validate(
        {
            "payment_id": payment_id,
            "n": n,
            "amount": amount,
            "currency": "usd",
            "reason": "requested_by_customer",
            "status": status,
            "created_at": now,
            "updated_at": now,
            **more,
        }
    )


def test_refunds_are_compared_one_by_one() -> None:
    paid = record(PaymentStatus.PARTIALLY_REFUNDED, amount_received=1000)
    at_stripe = [
        RefundView("re_same", "pi_1", 300, "usd", "succeeded", "cus_1", paid.id, 1),
        RefundView("re_amount", "pi_1", 200, "usd", "succeeded", "cus_1", paid.id, 2),
        RefundView("re_in_flight", "pi_1", 100, "usd", "succeeded", "cus_1", paid.id, 4),
        RefundView("re_elsewhere", "pi_1", 50, "usd", "succeeded", "cus_1"),
        RefundView("re_failed", "pi_1", 50, "usd", "failed", "cus_1"),
    ]
    in_ledger = [
        ledger_refund(paid.id, 1, 300, RefundStatus.SUCCEEDED, stripe_refund_id="re_same"),
        ledger_refund(paid.id, 2, 250, RefundStatus.SUCCEEDED, stripe_refund_id="re_amount"),
        ledger_refund(paid.id, 3, 100, RefundStatus.SUCCEEDED, stripe_refund_id="re_gone"),
        ledger_refund(paid.id, 4, 100, RefundStatus.REQUESTED),
        ledger_refund(paid.id, 5, 100, RefundStatus.FAILED, failure_code="amount_too_large"),
    ]
    result = Comparison(period=PERIOD)
    check_refunds(result, at_stripe, in_ledger, {paid.id: "cus_1"})
    assert [(f.kind, f.payment_id, f.amount) for f in result.findings] == [
        (Kind.REFUND_AMOUNT, paid.id, 250),
        (Kind.REFUND_NOT_IN_LEDGER, None, 50),
        (Kind.REFUND_NOT_AT_STRIPE, paid.id, 100),
    ]
    assert result.refunds_being_recorded == ["re_in_flight"]
    assert "re_failed" not in result.refunds_compared
    assert not result.clean


async def test_a_refund_made_at_stripe_behind_the_ledgers_back_is_found(
    temporal_env: WorkflowEnvironment,
    pool: asyncpg.Pool,
    sandbox: Sandbox,
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A refund through `starter.py refund` reconciles clean; one made in Stripe's dashboard
    afterwards is a finding, and only that one."""
    await add_customer(Ledger(pool), make_stripe_client(settings), "pm_card_visa", amount=1000)
    await bill_and_wait(temporal_env, settings)
    [payment] = await Ledger(pool).period_payments(PERIOD)
    async with running_worker(settings, temporal_env.client):
        refund = ["refund", payment.id, "--amount", "3.00"]
        assert await execute(refund, settings, temporal_env.client) == 0
    assert await execute(["reconcile", PERIOD], settings, temporal_env.client) == 0
    assert payment.stripe_payment_intent_id is not None
    behind = await make_stripe_client(settings).v1.refunds.create_async(
        {"payment_intent": payment.stripe_payment_intent_id, "amount": 200}
    )
    result = await reconcile(
        ReconcileLedger(pool), make_stripe_client(settings), temporal_env.client, PERIOD
    )
    assert [(f.kind, f.intent_id, f.amount) for f in result.findings] == [
        (Kind.REFUND_NOT_IN_LEDGER, payment.stripe_payment_intent_id, 200)
    ]
    assert behind.id in result.findings[0].detail and len(result.refunds_compared) == 2
    capsys.readouterr()
    assert await execute(["reconcile", PERIOD], settings, temporal_env.client) == 1
    output = capsys.readouterr().out
    assert "refund not in ledger: find who refunded in Stripe" in output


def test_a_stranded_refund_and_one_the_issuer_sent_back_are_findings() -> None:
    """Refund 1 of `paid` is requested and its workflow is gone: stranded, even though Stripe
    made it. Refund 2 succeeded in the ledger and failed at Stripe later. `running`'s
    requested refund has a workflow: being recorded, no finding."""
    paid = record(PaymentStatus.PARTIALLY_REFUNDED, amount_received=150000)
    running = record(PaymentStatus.SUCCEEDED, amount_received=1000)
    at_stripe = [
        RefundView("re_made", "pi_1", 300, "usd", "succeeded", "cus_1", paid.id, 1),
        RefundView("re_back", "pi_1", 200, "usd", "failed", "cus_1", paid.id, 2, "unknown"),
        RefundView("re_running", "pi_2", 100, "usd", "succeeded", "cus_1", running.id, 1),
    ]
    in_ledger = [
        ledger_refund(paid.id, 1, 123456, RefundStatus.REQUESTED),
        ledger_refund(paid.id, 2, 200, RefundStatus.SUCCEEDED, stripe_refund_id="re_back"),
        ledger_refund(running.id, 1, 100, RefundStatus.REQUESTED),
    ]
    result = Comparison(period=PERIOD)
    customers = {paid.id: "cus_1", running.id: "cus_1"}
    check_refunds(result, at_stripe, in_ledger, customers, {(paid.id, 1): "missing"})
    assert [(f.kind, f.payment_id, f.intent_id, f.amount) for f in result.findings] == [
        (Kind.REFUND_STRANDED, paid.id, "pi_1", 123456),
        (Kind.REFUND_FAILED, paid.id, "pi_1", 200),
    ]
    stranded, failed = result.findings
    assert stranded.detail == (
        f"refund 1 of 123456 usd is requested, but workflow refund-{paid.id}-1 is missing; "
        f"Stripe holds it as re_made (succeeded). Resume: "
        f"`refund {paid.id} --amount 1234.56 --reason requested_by_customer`"
    )
    assert "re_back" in failed.detail and "failed (unknown)" in failed.detail
    assert result.refunds_being_recorded == ["re_running"]
    assert result.left_for_a_person == [
        "refund stranded: run the `refund` command in the finding's detail again to resume it",
        "refund failed at Stripe: the customer got nothing back: give it back another way, "
        "and correct the ledger's refund by hand",
    ]


async def settled(pool: asyncpg.Pool, settings: Settings, cards: list[str]) -> list[BilledPayment]:
    """One customer per card, each paying 1000 usd, captured and `succeeded` in the ledger
    without a workflow (none is needed for a final payment)."""
    ledger = Ledger(pool)
    for card in cards:
        await add_customer(ledger, make_stripe_client(settings), card, amount=1000)
    await ledger.create_period_payments(PERIOD)
    payments = await ReconcileLedger(pool).billed_payments(PERIOD)
    for payment in payments:
        customer, method = await a_customer(pool, payment.id)
        await settle(
            pool, payment, await make_intent(settings, customer, method, metadata_of(payment), 1000)
        )
    return await ReconcileLedger(pool).billed_payments(PERIOD)


async def test_a_refund_left_requested_without_its_workflow_is_stranded_until_resumed(
    temporal_env: WorkflowEnvironment,
    pool: asyncpg.Pool,
    sandbox: Sandbox,
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`killed`: the CLI stopped between reserving refund 1 and starting its workflow.
    `terminated`: its refund workflow runs (nothing polls its queue), then is terminated. A
    running refund is no finding; each stranded one is, until the command its finding names
    resumes it."""
    killed, terminated = await settled(pool, settings, ["pm_card_visa", "pm_card_visa"])
    client = temporal_env.client
    refunds = RefundLedger(pool)
    await refunds.reserve(killed.id, 300, RefundReason.REQUESTED_BY_CUSTOMER)
    reserved = await refunds.reserve(terminated.id, None, RefundReason.DUPLICATE)
    await start_refund(
        client,
        RefundInput(
            payment_id=terminated.id,
            n=1,
            amount=reserved.refund.amount,
            currency="usd",
            reason=RefundReason.DUPLICATE,
            intent_id=reserved.intent_id,
            billing_period=PERIOD,
            customer_id=terminated.customer_id,
        ),
        f"nobody-polls-{uuid.uuid4().hex[:8]}",
        PaymentStatus.SUCCEEDED,
    )
    resume_killed = f"refund {killed.id} --amount 3.00 --reason requested_by_customer"
    resume_terminated = f"refund {terminated.id} --amount 10.00 --reason duplicate"

    result = await reconcile(ReconcileLedger(pool), make_stripe_client(settings), client, PERIOD)
    assert [(f.kind, f.payment_id) for f in result.findings] == [(Kind.REFUND_STRANDED, killed.id)]
    assert f"refund-{killed.id}-1 is missing; Stripe holds no refund 1" in result.findings[0].detail
    assert f"`{resume_killed}`" in result.findings[0].detail

    await client.get_workflow_handle(refund_workflow_id(terminated.id, 1)).terminate("by hand")
    capsys.readouterr()
    assert await execute(["reconcile", PERIOD], settings, client) == 1
    output = capsys.readouterr().out
    assert f"refund-{terminated.id}-1 is terminated" in output and resume_terminated in output
    assert "refund stranded: run the `refund` command in the finding's detail again" in output

    async with running_worker(settings, client):
        for command in (resume_killed, resume_terminated):
            assert await execute(command.split(), settings, client) == 0
            assert "was already in flight: following refund-" in capsys.readouterr().out
    assert sorted(r["amount"] for r in sandbox.refunds()) == [300, 1000]
    for payment in (killed, terminated):
        [row] = await refunds.refunds(payment.id)
        assert row.status == RefundStatus.SUCCEEDED
    assert await execute(["reconcile", PERIOD], settings, client) == 0


async def test_a_refund_the_issuer_sent_back_after_it_was_recorded_is_found(
    temporal_env: WorkflowEnvironment,
    pool: asyncpg.Pool,
    sandbox: Sandbox,
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    [payment] = await settled(pool, settings, ["pm_card_visa"])
    async with running_worker(settings, temporal_env.client):
        refund = ["refund", payment.id, "--amount", "4.00"]
        assert await execute(refund, settings, temporal_env.client) == 0
    [row] = await RefundLedger(pool).refunds(payment.id)
    assert row.status == RefundStatus.SUCCEEDED and row.stripe_refund_id is not None
    sandbox.fail_refund(row.stripe_refund_id, "lost_or_stolen_card")

    result = await reconcile(
        ReconcileLedger(pool), make_stripe_client(settings), temporal_env.client, PERIOD
    )
    assert [(f.kind, f.payment_id, f.intent_id, f.amount) for f in result.findings] == [
        (Kind.REFUND_FAILED, payment.id, payment.stripe_payment_intent_id, 400)
    ]
    assert "failed (lost_or_stolen_card)" in result.findings[0].detail
    capsys.readouterr()
    assert await execute(["reconcile", PERIOD], settings, temporal_env.client) == 1
    assert "refund failed at Stripe: the customer got nothing back" in capsys.readouterr().out


async def test_open_disputes_are_counted_as_information(
    temporal_env: WorkflowEnvironment,
    pool: asyncpg.Pool,
    sandbox: Sandbox,
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Two captures disputed at once (the sandbox's dispute card); one dispute is won. The
    other is still open: counted, and no finding."""
    await settled(pool, settings, ["pm_card_createDispute", "pm_card_createDispute"])
    won, still_open = sandbox.disputes()
    sandbox.close_dispute(won["id"], "won")
    result = await reconcile(
        ReconcileLedger(pool), make_stripe_client(settings), temporal_env.client, PERIOD
    )
    assert result.open_disputes == [still_open["id"]]
    assert result.clean and len(result.refunds) == 2  # both charges show `disputed`
    capsys.readouterr()
    assert await execute(["reconcile", PERIOD], settings, temporal_env.client) == 0
    assert "│ open disputes (information)" in capsys.readouterr().out
