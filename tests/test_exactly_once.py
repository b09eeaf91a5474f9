"""The holes of "charged at most once per period, and every payment ends", each reproduced
against the real worker, dev server, PostgreSQL and the sandbox, and closed."""

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from temporalio.api.enums.v1 import PendingActivityState
from temporalio.client import WorkflowExecutionStatus, WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from activities.stripe_activities import StripeActivities
from billing.constants import ErrorType, PaymentStatus, workflow_id
from billing.ledger import Ledger
from billing.models import AuthorizeInput, NewCustomer, PaymentRecord, PaymentResult
from billing.settings import Settings
from billing.stripe_client import make_stripe_client
from starter import execute
from stripe_sandbox import FaultRule, Sandbox
from temporal_ops import billing_run
from tests.support import add_customer, running_worker
from tests.test_lifecycle_integration import assert_captured_once, wait_for_status

PERIOD = "2026-11"
SHORT_WINDOW = ["--capture-after", "3s"]
LONG_WINDOW = ["--capture-after", "1h"]
END_S = 60


def handle_of(env: WorkflowEnvironment, payment: PaymentRecord) -> WorkflowHandle[object, object]:
    return env.client.get_workflow_handle(workflow_id(payment.id), result_type=PaymentResult)


async def ended(env: WorkflowEnvironment, payment: PaymentRecord) -> PaymentResult:
    async with asyncio.timeout(END_S):
        result = await handle_of(env, payment).result()
    assert isinstance(result, PaymentResult)
    return result


async def only_payment(pool: asyncpg.Pool) -> PaymentRecord:
    [payment] = await Ledger(pool).period_payments(PERIOD)
    return payment


def statuses(sandbox: Sandbox) -> list[str]:
    return [i["status"] for i in sandbox.payment_intents()]


async def test_two_live_authorizations_become_one_capture_and_one_void(
    temporal_env: WorkflowEnvironment, pool: asyncpg.Pool, sandbox: Sandbox, settings: Settings
) -> None:
    """Converging found two capturable authorizations: the workflow failed and the row stayed
    open with both holds live. Now the oldest is adopted and the other voided."""
    stripe = make_stripe_client(settings)
    email = await add_customer(Ledger(pool), stripe, "pm_card_visa")
    stripe_customer, method = await Ledger(pool).stripe_ids_of(email) or ("", "")
    held = [
        await stripe.v1.payment_intents.create_async(
            {
                "amount": 2500,
                "currency": "usd",
                "customer": stripe_customer,
                "payment_method": method,
                "confirm": True,
                "off_session": True,
                "capture_method": "manual",
                "metadata": {"payment_id": "a-lost-row", "billing_period": PERIOD},
            }
        )
        for _ in range(2)
    ]
    async with running_worker(settings, temporal_env.client):
        assert await execute(["bill", PERIOD, "--wait"], settings, temporal_env.client) == 0

    payment = await only_payment(pool)
    assert payment.status == PaymentStatus.SUCCEEDED
    by_status = {i["status"]: i["id"] for i in sandbox.payment_intents()}
    assert set(by_status) == {"succeeded", "canceled"}  # one adopted, one voided, none new
    assert payment.stripe_payment_intent_id == by_status["succeeded"]
    assert set(by_status.values()) == {h.id for h in held}


async def test_an_operator_cancel_in_sql_wins_over_the_capture(
    temporal_env: WorkflowEnvironment, pool: asyncpg.Pool, sandbox: Sandbox, settings: Settings
) -> None:
    """The workflow captured anyway, then failed on finalize: charged while cancelled."""
    ledger = Ledger(pool)
    await add_customer(ledger, make_stripe_client(settings), "pm_card_visa")
    async with running_worker(settings, temporal_env.client):
        assert await execute(["bill", PERIOD, *SHORT_WINDOW], settings, temporal_env.client) == 0
        payment = await wait_for_status(ledger, PaymentStatus.AUTHORIZED)
        await pool.execute(
            "UPDATE payments SET status = 'cancelled' WHERE id = $1::uuid", payment.id
        )
        result = await ended(temporal_env, payment)

    assert result.status == PaymentStatus.CANCELLED
    assert statuses(sandbox) == ["canceled"]
    assert (await only_payment(pool)).status == PaymentStatus.CANCELLED


async def test_an_unexpected_ledger_state_ends_needs_attention_with_holds_voided(
    temporal_env: WorkflowEnvironment,
    pool: asyncpg.Pool,
    sandbox: Sandbox,
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A ForbiddenTransition failed the workflow over an open row with a live hold; reconcile,
    bill and cancel could not tell."""
    ledger = Ledger(pool)
    await add_customer(ledger, make_stripe_client(settings), "pm_card_visa")
    async with running_worker(settings, temporal_env.client):
        assert await execute(["bill", PERIOD, *SHORT_WINDOW], settings, temporal_env.client) == 0
        payment = await wait_for_status(ledger, PaymentStatus.AUTHORIZED)
        await pool.execute("UPDATE payments SET status = 'pending' WHERE id = $1::uuid", payment.id)
        result = await ended(temporal_env, payment)
        capsys.readouterr()
        assert await execute(["cancel", payment.id], settings, temporal_env.client) == 7
        assert capsys.readouterr().out.strip() == "needs attention"

    assert result.status == PaymentStatus.NEEDS_ATTENTION
    assert result.failure_code == ErrorType.FORBIDDEN_TRANSITION
    description = await handle_of(temporal_env, payment).describe()
    assert description.status == WorkflowExecutionStatus.COMPLETED
    assert statuses(sandbox) == ["canceled"]
    row = await only_payment(pool)
    assert row.status == PaymentStatus.NEEDS_ATTENTION
    assert row.failure_message and "before capture" in row.failure_message


async def test_a_restored_payments_table_charges_nobody_again(
    temporal_env: WorkflowEnvironment, pool: asyncpg.Pool, sandbox: Sandbox, settings: Settings
) -> None:
    """Rows lost (a restore from a backup taken before `bill`) meant new payment ids, new keys
    and a second charge."""
    await add_customer(Ledger(pool), make_stripe_client(settings), "pm_card_visa")
    async with running_worker(settings, temporal_env.client):
        assert await execute(["bill", PERIOD, "--wait"], settings, temporal_env.client) == 0
        [first_intent] = sandbox.payment_intents()
        await pool.execute("TRUNCATE stripe_events, refunds, payment_events, payments")
        assert await execute(["bill", PERIOD, "--wait"], settings, temporal_env.client) == 0

    assert statuses(sandbox) == ["succeeded"]
    payment = await only_payment(pool)
    assert (payment.status, payment.stripe_payment_intent_id) == (
        PaymentStatus.SUCCEEDED,
        first_intent["id"],
    )
    assert payment.amount_received == 2500


async def test_a_temporal_cancellation_request_cancels_the_payment(
    temporal_env: WorkflowEnvironment, pool: asyncpg.Pool, sandbox: Sandbox, settings: Settings
) -> None:
    """The Web UI's "Request Cancellation" was not the project's cancel: the hold stayed."""
    ledger = Ledger(pool)
    await add_customer(ledger, make_stripe_client(settings), "pm_card_visa")
    async with running_worker(settings, temporal_env.client):
        assert await execute(["bill", PERIOD, *LONG_WINDOW], settings, temporal_env.client) == 0
        payment = await wait_for_status(ledger, PaymentStatus.AUTHORIZED)
        await handle_of(temporal_env, payment).cancel()
        result = await ended(temporal_env, payment)

    assert result.status == PaymentStatus.CANCELLED
    assert statuses(sandbox) == ["canceled"]
    assert sandbox.payment_intents()[0]["cancellation_reason"] == "requested_by_customer"
    assert (await only_payment(pool)).status == PaymentStatus.CANCELLED


async def test_bill_resumes_a_terminated_payment(
    temporal_env: WorkflowEnvironment,
    pool: asyncpg.Pool,
    sandbox: Sandbox,
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A terminate stranded the row open with a live hold, and `bill` said "already
    launched". Now `bill` attaches to the period's running run, which resumes the payment
    (under the run's policy: a new capture window, then the capture)."""
    ledger = Ledger(pool)
    await add_customer(ledger, make_stripe_client(settings), "pm_card_visa")
    async with running_worker(settings, temporal_env.client):
        window = ["--capture-after", "8s"]
        assert await execute(["bill", PERIOD, *window], settings, temporal_env.client) == 0
        payment = await wait_for_status(ledger, PaymentStatus.AUTHORIZED)
        await handle_of(temporal_env, payment).terminate("an operator in the Web UI")
        assert await execute(["bill", PERIOD, "--wait"], settings, temporal_env.client) == 0
        summary = await billing_run(temporal_env.client, PERIOD).result()

    assert "is already running" in capsys.readouterr().out
    assert summary.launched.resumed == 1
    assert_captured_once(sandbox, await only_payment(pool))
    assert len(sandbox.payment_intents()) == 1  # the resumed run adopted the authorization


async def test_a_replayed_5xx_without_should_retry_is_read_back(
    temporal_env: WorkflowEnvironment, pool: asyncpg.Pool, sandbox: Sandbox, settings: Settings
) -> None:
    """Only `Stripe-Should-Retry: false` marked a stored 5xx: without it the same key was
    retried until Stripe forgot it, then a second PaymentIntent was made."""
    sandbox.mark_stored_errors = False
    sandbox.add_fault(FaultRule(kind="error_after", endpoint="payment_intents.create", times=1))
    await add_customer(Ledger(pool), make_stripe_client(settings), "pm_card_visa")
    async with running_worker(settings, temporal_env.client):
        async with asyncio.timeout(END_S):
            assert await execute(["bill", PERIOD, "--wait"], settings, temporal_env.client) == 0

    assert_captured_once(sandbox, await only_payment(pool))
    assert len(sandbox.payment_intents()) == 1


async def test_cancel_has_a_deadline_and_still_takes_effect(
    temporal_env: WorkflowEnvironment,
    pool: asyncpg.Pool,
    sandbox: Sandbox,
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """With no worker answering, `cancel` waited forever. (The row exists, its workflow has
    not started: `bill` would wait for a worker to launch it.)"""
    await add_customer(Ledger(pool), make_stripe_client(settings), "pm_card_visa")
    await Ledger(pool).create_period_payments(PERIOD)
    payment = await only_payment(pool)
    capsys.readouterr()
    code = await execute(["cancel", payment.id, "--timeout", "1"], settings, temporal_env.client)
    assert code == 6
    assert capsys.readouterr().out.strip() == (
        "cancel requested; the payment is at step pending (in the ledger)"
    )
    async with running_worker(settings, temporal_env.client):
        result = await ended(temporal_env, payment)
    assert result.status == PaymentStatus.CANCELLED
    assert sandbox.payment_intents() == []


async def test_a_card_changed_by_import_reaches_a_payment_in_dunning(
    temporal_env: WorkflowEnvironment, pool: asyncpg.Pool, sandbox: Sandbox, settings: Settings
) -> None:
    """The payment method was fixed at start: the dunning retry used the old card."""
    settings = settings.model_copy(update={"dunning_schedule": [timedelta(seconds=4)]})
    ledger = Ledger(pool)
    stripe = make_stripe_client(settings)
    email = await add_customer(ledger, stripe, "pm_card_chargeDeclinedInsufficientFunds")
    stripe_customer, _ = await ledger.stripe_ids_of(email) or ("", "")
    async with running_worker(settings, temporal_env.client):
        assert await execute(["bill", PERIOD], settings, temporal_env.client) == 0
        payment = await wait_for_status(ledger, PaymentStatus.RETRYING)
        card = await stripe.v1.payment_methods.attach_async(
            "pm_card_visa", {"customer": stripe_customer}
        )
        new_card = NewCustomer(
            email=email,
            stripe_customer_id=stripe_customer,
            payment_method_id=card.id,
            monthly_amount=2500,
            currency="usd",
        )
        await ledger.upsert_customers([new_card])
        result = await ended(temporal_env, payment)

    assert result.status == PaymentStatus.SUCCEEDED
    declined, paid = sandbox.payment_intents()
    assert declined["status"] != "succeeded"
    assert (paid["status"], paid["payment_method"]) == ("succeeded", card.id)
    row = await only_payment(pool)
    assert row.failure_code is None  # the soft decline no longer shows once paid


async def test_a_transient_stripe_error_is_kept_in_the_history(
    temporal_env: WorkflowEnvironment, pool: asyncpg.Pool, sandbox: Sandbox, settings: Settings
) -> None:
    """`raise business_failure(err) or err from err` made the error its own cause: the
    failure converter recursed and the history lost the real error."""
    await add_customer(Ledger(pool), make_stripe_client(settings), "pm_card_visa")
    sandbox.add_fault(FaultRule(kind="error_before", endpoint="payment_intents.capture"))
    async with running_worker(settings, temporal_env.client):
        assert await execute(["bill", PERIOD], settings, temporal_env.client) == 0
        payment = await only_payment(pool)
        failure = None
        async with asyncio.timeout(END_S):
            while failure is None:
                description = await handle_of(temporal_env, payment).describe()
                for pending in description.raw_description.pending_activities:
                    started = pending.state != PendingActivityState.PENDING_ACTIVITY_STATE_STARTED
                    if pending.attempt >= 2 and started and pending.HasField("last_failure"):
                        failure = pending.last_failure
                await asyncio.sleep(0.2)
        sandbox.clear_faults()
        result = await ended(temporal_env, payment)

    assert "The sandbox injected this fault on purpose" in failure.message
    assert "recursion" not in failure.message
    assert result.status == PaymentStatus.SUCCEEDED


async def test_an_authorize_key_older_than_a_day_is_not_resent(
    sandbox: Sandbox, settings: Settings
) -> None:
    """Stripe forgets a key after 24 h: a retry later than that would authorize again."""
    env = ActivityEnvironment()
    now = datetime.now(UTC)
    # The retry was queued right after the first attempt; it runs a day later.
    env.info = replace(
        env.info,
        scheduled_time=now - timedelta(hours=24),
        current_attempt_scheduled_time=now - timedelta(hours=24),
    )
    activities = StripeActivities(make_stripe_client(settings))
    request = AuthorizeInput(
        payment_id="p1",
        amount=2500,
        currency="usd",
        stripe_customer_id="cus_x",
        payment_method_id="pm_card_visa",
        idempotency_key="pay_p1_auth_1",
    )
    with pytest.raises(ApplicationError) as raised:
        await env.run(activities.authorize, request)
    assert raised.value.type == ErrorType.KEY_MAY_BE_FORGOTTEN
    assert sandbox.stats()["requests"] == 0


async def test_a_customer_stripe_no_longer_knows_ends_needs_attention(
    temporal_env: WorkflowEnvironment, pool: asyncpg.Pool, sandbox: Sandbox, settings: Settings
) -> None:
    """Stripe refuses to list a deleted customer's PaymentIntents (400): the workflow failed
    over an open row, since releasing the holds lists them again."""
    ledger = Ledger(pool)
    await add_customer(ledger, make_stripe_client(settings), "pm_card_visa")
    await pool.execute("UPDATE customers SET stripe_customer_id = 'cus_deleted'")
    async with running_worker(settings, temporal_env.client):
        assert await execute(["bill", PERIOD], settings, temporal_env.client) == 0
        payment = await only_payment(pool)
        result = await ended(temporal_env, payment)

    assert (result.status, result.failure_code) == (
        PaymentStatus.NEEDS_ATTENTION,
        ErrorType.STRIPE_REJECTED,
    )
    description = await handle_of(temporal_env, payment).describe()
    assert description.status == WorkflowExecutionStatus.COMPLETED
    row = await only_payment(pool)
    assert row.status == PaymentStatus.NEEDS_ATTENTION
    assert row.failure_message and "could not list the period's holds" in row.failure_message
    assert sandbox.payment_intents() == []


async def test_needs_attention_never_overwrites_a_payment_the_ledger_ended(
    temporal_env: WorkflowEnvironment, pool: asyncpg.Pool, sandbox: Sandbox, settings: Settings
) -> None:
    """An operator wrote `succeeded` in SQL during the window: the workflow voided its hold
    and then overwrote the ended row with needs_attention."""
    ledger = Ledger(pool)
    await add_customer(ledger, make_stripe_client(settings), "pm_card_visa")
    async with running_worker(settings, temporal_env.client):
        assert await execute(["bill", PERIOD, *SHORT_WINDOW], settings, temporal_env.client) == 0
        payment = await wait_for_status(ledger, PaymentStatus.AUTHORIZED)
        await pool.execute(
            "UPDATE payments SET status = 'succeeded' WHERE id = $1::uuid", payment.id
        )
        result = await ended(temporal_env, payment)

    assert (result.status, result.failure_code) == (
        PaymentStatus.SUCCEEDED,
        ErrorType.FORBIDDEN_TRANSITION,
    )
    assert result.note and "needs_attention was not recorded over it" in result.note
    assert statuses(sandbox) == ["canceled"]  # the hold is released, nothing captured
    row = await only_payment(pool)
    assert row.status == PaymentStatus.SUCCEEDED
    assert [e.to_status for e in await ledger.events(row.id)][-1] == PaymentStatus.AUTHORIZED
