"""The ledger against a real PostgreSQL: migrations, payment rows, guarded transitions."""

import asyncio
from importlib import resources

import asyncpg
import pytest
from temporalio.exceptions import ApplicationError

from activities.ledger_activities import LedgerActivities
from billing.constants import ErrorType, PaymentStatus
from billing.ledger import (
    Fenced,
    ForbiddenTransition,
    Ledger,
    UnknownPayment,
    migrate,
    open_pool,
)
from billing.models import BeginCaptureInput, CaptureAllowed, FinalizeInput, NewCustomer

PERIOD = "2026-11"


def customer(n: int, *, active: bool = True, amount: int = 1000) -> NewCustomer:
    return NewCustomer(
        email=f"c{n}@example.com",
        stripe_customer_id=f"cus_{n}",
        payment_method_id="pm_card_visa",
        monthly_amount=amount,
        currency="usd",
        active=active,
    )


async def test_migrations_apply_once_even_when_two_processes_start_together(
    database_url: str,
) -> None:
    pools = [await open_pool(database_url) for _ in range(2)]
    try:
        results = await asyncio.gather(*(migrate(p) for p in pools))
        migrations = list(resources.files("billing.migrations").iterdir())
        count = sum(m.name.endswith(".sql") for m in migrations)
        assert sorted(len(r) for r in results) == [0, count]
        assert await migrate(pools[0]) == []
        tables = await pools[0].fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
        )
        assert {t["tablename"] for t in tables} >= {"customers", "payments", "payment_events"}
    finally:
        for p in pools:
            await p.close()


async def test_period_rows_are_created_once_for_active_customers(pool: asyncpg.Pool) -> None:
    ledger = Ledger(pool)
    await ledger.upsert_customers(
        [customer(1), customer(2, amount=2500), customer(3, active=False)]
    )

    assert await ledger.create_period_payments(PERIOD) == 2
    assert await ledger.create_period_payments(PERIOD) == 0

    payments = await ledger.period_payments(PERIOD)
    assert sorted(p.amount for p in payments) == [1000, 2500]
    assert {p.status for p in payments} == {PaymentStatus.PENDING}
    for p in payments:
        events = await ledger.events(p.id)
        assert [(e.from_status, e.to_status) for e in events] == [(None, PaymentStatus.PENDING)]


async def test_amount_is_copied_at_billing_time(pool: asyncpg.Pool) -> None:
    ledger = Ledger(pool)
    await ledger.upsert_customers([customer(1, amount=1000)])
    await ledger.create_period_payments(PERIOD)
    await ledger.upsert_customers([customer(1, amount=9999)])
    [payment] = await ledger.period_payments(PERIOD)
    assert payment.amount == 1000


async def first_payment(ledger: Ledger) -> str:
    await ledger.upsert_customers([customer(1)])
    await ledger.create_period_payments(PERIOD)
    return (await ledger.period_payments(PERIOD))[0].id


async def test_happy_transitions_are_recorded_and_replays_change_nothing(
    pool: asyncpg.Pool,
) -> None:
    ledger = Ledger(pool)
    pid = await first_payment(ledger)

    assert await ledger.transition(pid, PaymentStatus.AUTHORIZED, intent_id="pi_1") is True
    assert await ledger.transition(pid, PaymentStatus.AUTHORIZED, intent_id="pi_1") is False
    assert await ledger.transition(
        pid, PaymentStatus.SUCCEEDED, intent_id="pi_1", amount_received=1000
    )
    assert not await ledger.transition(
        pid, PaymentStatus.SUCCEEDED, intent_id="pi_1", amount_received=1000
    )

    payment = await ledger.payment(pid)
    assert payment is not None
    assert payment.status == PaymentStatus.SUCCEEDED
    assert payment.stripe_payment_intent_id == "pi_1"
    assert payment.amount_received == 1000
    events = await ledger.events(pid)
    assert [e.to_status for e in events] == [
        PaymentStatus.PENDING,
        PaymentStatus.AUTHORIZED,
        PaymentStatus.SUCCEEDED,
    ]
    assert events[1].detail == {"intent_id": "pi_1"}


async def test_a_late_duplicate_of_a_new_attempt_changes_nothing(pool: asyncpg.Pool) -> None:
    ledger = Ledger(pool)
    pid = await first_payment(ledger)
    await ledger.transition(pid, PaymentStatus.AUTHORIZED, intent_id="pi_1", generation=1)
    assert await ledger.transition(pid, PaymentStatus.PENDING, generation=2) is True
    await ledger.transition(pid, PaymentStatus.AUTHORIZED, intent_id="pi_2", generation=2)

    # Generation 2's begin_attempt, run again by a worker whose task had timed out, lands
    # after generation 2 was authorized: it must not reopen the payment.
    assert await ledger.transition(pid, PaymentStatus.PENDING, generation=2) is False

    payment = await ledger.payment(pid)
    assert payment is not None
    assert (payment.status, payment.stripe_payment_intent_id) == (PaymentStatus.AUTHORIZED, "pi_2")
    assert [e.to_status for e in await ledger.events(pid)][-1] == PaymentStatus.AUTHORIZED


async def test_forbidden_transitions_are_loud_and_write_nothing(pool: asyncpg.Pool) -> None:
    ledger = Ledger(pool)
    pid = await first_payment(ledger)

    with pytest.raises(ForbiddenTransition, match="must name the captured PaymentIntent"):
        await ledger.transition(pid, PaymentStatus.SUCCEEDED)

    await ledger.transition(pid, PaymentStatus.AUTHORIZED, intent_id="pi_1")
    with pytest.raises(ForbiddenTransition, match="bound to pi_1"):
        await ledger.transition(pid, PaymentStatus.AUTHORIZED, intent_id="pi_2")

    await ledger.transition(pid, PaymentStatus.FAILED, failure_code="x", failure_message="y")
    with pytest.raises(ForbiddenTransition, match="failed -> authorized"):
        await ledger.transition(pid, PaymentStatus.AUTHORIZED)

    assert len(await ledger.events(pid)) == 3


async def test_unknown_payment_is_an_error(pool: asyncpg.Pool) -> None:
    ledger = Ledger(pool)
    with pytest.raises(UnknownPayment):
        await ledger.transition(
            "00000000-0000-0000-0000-000000000000", PaymentStatus.AUTHORIZED, intent_id="pi_1"
        )
    assert await ledger.payment("not-a-uuid") is None


async def test_payment_events_are_append_only(pool: asyncpg.Pool) -> None:
    ledger = Ledger(pool)
    pid = await first_payment(ledger)
    with pytest.raises(asyncpg.RaiseError, match="append-only"):
        await pool.execute("DELETE FROM payment_events WHERE payment_id = $1::uuid", pid)
    with pytest.raises(asyncpg.RaiseError, match="append-only"):
        await pool.execute("UPDATE payment_events SET to_status = 'failed'")


async def test_schema_rejects_bad_rows(pool: asyncpg.Pool) -> None:
    ledger = Ledger(pool)
    pid = await first_payment(ledger)
    with pytest.raises(asyncpg.CheckViolationError):
        await pool.execute("UPDATE payments SET status = 'paid' WHERE id = $1::uuid", pid)
    with pytest.raises(asyncpg.CheckViolationError):
        await pool.execute(
            "INSERT INTO customers (email, stripe_customer_id, payment_method_id,"
            " monthly_amount, currency) VALUES ('z@example.com', 'cus_z', 'pm_z', 0, 'usd')"
        )


async def test_a_failed_batch_import_writes_nothing(pool: asyncpg.Pool) -> None:
    ledger = Ledger(pool)
    bad = customer(2).model_copy(update={"monthly_amount": -5})  # bypasses validation
    with pytest.raises(asyncpg.CheckViolationError):
        await ledger.upsert_customers([customer(1), bad])
    assert await pool.fetchval("SELECT count(*) FROM customers") == 0


async def test_a_write_from_an_older_generation_is_refused_and_changes_nothing(
    pool: asyncpg.Pool,
) -> None:
    """Hole 6: a late generation-1 record_decline, landing after generation 2 began, moved
    the row back to retrying. Then the refusal was silent: the writer could not tell."""
    ledger = Ledger(pool)
    pid = await first_payment(ledger)
    await ledger.transition(pid, PaymentStatus.RETRYING, failure_code="insufficient_funds")
    await ledger.transition(pid, PaymentStatus.PENDING, generation=2)
    await ledger.transition(pid, PaymentStatus.AUTHORIZED, intent_id="pi_2", generation=2)

    with pytest.raises(Fenced, match="generation 2; a write of generation 1"):
        await ledger.transition(
            pid, PaymentStatus.FAILED, failure_code="insufficient_funds", generation=1
        )

    payment = await ledger.payment(pid)
    assert payment is not None
    assert (payment.status, payment.generation) == (PaymentStatus.AUTHORIZED, 2)
    assert [e.to_status for e in await ledger.events(pid)][-1] == PaymentStatus.AUTHORIZED


async def test_a_payment_past_its_declines_no_longer_shows_them(pool: asyncpg.Pool) -> None:
    ledger = Ledger(pool)
    pid = await first_payment(ledger)
    await ledger.transition(
        pid, PaymentStatus.RETRYING, failure_code="insufficient_funds", failure_message="no"
    )
    await ledger.transition(pid, PaymentStatus.PENDING, generation=2)
    await ledger.transition(pid, PaymentStatus.AUTHORIZED, intent_id="pi_2", generation=2)
    await ledger.transition(pid, PaymentStatus.CAPTURING, intent_id="pi_2", generation=2)
    await ledger.transition(pid, PaymentStatus.SUCCEEDED, intent_id="pi_2", amount_received=1000)

    payment = await ledger.payment(pid)
    assert payment is not None
    assert (payment.failure_code, payment.failure_message) == (None, None)
    retrying = (await ledger.events(pid))[1]
    assert retrying.detail["failure_code"] == "insufficient_funds"  # the history keeps it


async def test_an_operator_cancel_wins_over_a_capture_not_yet_begun(pool: asyncpg.Pool) -> None:
    ledger = Ledger(pool)
    pid = await first_payment(ledger)
    await ledger.transition(pid, PaymentStatus.AUTHORIZED, intent_id="pi_1")
    await pool.execute("UPDATE payments SET status = 'cancelled' WHERE id = $1::uuid", pid)

    with pytest.raises(ForbiddenTransition, match="cancelled -> capturing"):
        await ledger.transition(pid, PaymentStatus.CAPTURING, intent_id="pi_1")


async def test_once_capture_began_cancel_is_refused(pool: asyncpg.Pool) -> None:
    ledger = Ledger(pool)
    pid = await first_payment(ledger)
    await ledger.transition(pid, PaymentStatus.AUTHORIZED, intent_id="pi_1")
    await ledger.transition(pid, PaymentStatus.CAPTURING, intent_id="pi_1")
    with pytest.raises(ForbiddenTransition, match="capturing -> cancelled"):
        await ledger.transition(pid, PaymentStatus.CANCELLED, intent_id="pi_1")


@pytest.mark.parametrize(
    "ended", [PaymentStatus.SUCCEEDED, PaymentStatus.CANCELLED, PaymentStatus.FAILED]
)
async def test_needs_attention_never_overwrites_an_ended_payment(
    pool: asyncpg.Pool, ended: PaymentStatus
) -> None:
    ledger = Ledger(pool)
    pid = await first_payment(ledger)
    await ledger.transition(pid, PaymentStatus.AUTHORIZED, intent_id="pi_1")
    await ledger.transition(
        pid, ended, intent_id="pi_1", amount_received=1000, failure_code="x", failure_message="y"
    )

    with pytest.raises(ForbiddenTransition, match=f"{ended} -> needs_attention"):
        await ledger.transition(
            pid, PaymentStatus.NEEDS_ATTENTION, failure_code="Boom", failure_message="z"
        )

    payment = await ledger.payment(pid)
    assert payment is not None and payment.status == ended
    assert [e.to_status for e in await ledger.events(pid)][-1] == ended


async def test_needs_attention_is_recorded_over_an_open_payment(pool: asyncpg.Pool) -> None:
    ledger = Ledger(pool)
    pid = await first_payment(ledger)
    await ledger.transition(pid, PaymentStatus.AUTHORIZED, intent_id="pi_1")
    await ledger.transition(pid, PaymentStatus.CAPTURING, intent_id="pi_1")
    assert await ledger.transition(
        pid, PaymentStatus.NEEDS_ATTENTION, failure_code="Boom", failure_message="z"
    )
    payment = await ledger.payment(pid)
    assert payment is not None
    assert (payment.status, payment.failure_code) == (PaymentStatus.NEEDS_ATTENTION, "Boom")


async def test_a_capture_from_an_older_generation_is_never_allowed(pool: asyncpg.Pool) -> None:
    """begin_capture answered "allowed" to a run whose generation the row had moved past: it
    captured behind the current generation's back."""
    ledger = Ledger(pool)
    pid = await first_payment(ledger)
    await ledger.transition(pid, PaymentStatus.AUTHORIZED, intent_id="pi_1", generation=1)
    await ledger.transition(pid, PaymentStatus.PENDING, generation=2)
    await ledger.transition(pid, PaymentStatus.AUTHORIZED, intent_id="pi_1", generation=2)
    activities = LedgerActivities(pool)

    with pytest.raises(ApplicationError) as refused:
        await activities.begin_capture(
            BeginCaptureInput(payment_id=pid, intent_id="pi_1", generation=1)
        )
    assert (refused.value.type, refused.value.non_retryable) == (ErrorType.FENCED, True)
    with pytest.raises(ApplicationError) as late:
        await activities.finalize(
            FinalizeInput(payment_id=pid, intent_id="pi_1", amount_received=1000, generation=1)
        )
    assert late.value.type == ErrorType.FENCED

    payment = await ledger.payment(pid)
    assert payment is not None
    assert (payment.status, payment.generation) == (PaymentStatus.AUTHORIZED, 2)
    allowed = await activities.begin_capture(
        BeginCaptureInput(payment_id=pid, intent_id="pi_1", generation=2)
    )
    assert allowed == CaptureAllowed(allowed=True, status=PaymentStatus.CAPTURING)


async def test_a_new_attempt_from_pending_raises_the_generation(pool: asyncpg.Pool) -> None:
    """A new attempt from pending (a lost authorize answer) was a no-op: the row stayed at
    the older generation, whose late writes it then let through."""
    ledger = Ledger(pool)
    pid = await first_payment(ledger)

    assert await ledger.transition(pid, PaymentStatus.PENDING, generation=2) is True
    assert await ledger.transition(pid, PaymentStatus.PENDING, generation=2) is False  # a replay

    payment = await ledger.payment(pid)
    assert payment is not None
    assert (payment.status, payment.generation) == (PaymentStatus.PENDING, 2)
    events = await ledger.events(pid)
    assert [(e.from_status, e.to_status) for e in events] == [
        (None, PaymentStatus.PENDING),
        (PaymentStatus.PENDING, PaymentStatus.PENDING),
    ]
    assert events[-1].detail == {"generation": 2}
    with pytest.raises(Fenced):  # generation 1's late authorization
        await ledger.transition(pid, PaymentStatus.AUTHORIZED, intent_id="pi_1", generation=1)


async def test_the_row_state_counts_its_soft_declines(pool: asyncpg.Pool) -> None:
    ledger = Ledger(pool)
    pid = await first_payment(ledger)
    assert (await ledger.payment_state(pid)).dunning_attempts == 0
    for generation in (1, 2):
        await ledger.transition(pid, PaymentStatus.RETRYING, generation=generation)
        await ledger.transition(pid, PaymentStatus.PENDING, generation=generation + 1)
    await ledger.transition(pid, PaymentStatus.RETRYING, generation=3)
    await ledger.transition(pid, PaymentStatus.RETRYING, generation=3)  # a replay
    state = await ledger.payment_state(pid)
    assert (state.status, state.generation, state.dunning_attempts) == (
        PaymentStatus.RETRYING,
        3,
        3,
    )


async def test_the_url_to_authenticate_lives_only_while_action_is_required(
    pool: asyncpg.Pool,
) -> None:
    ledger = Ledger(pool)
    pid = await first_payment(ledger)
    url = "http://127.0.0.1:12111/_sandbox/3ds/pi_1"
    moved = await ledger.transition(
        pid,
        PaymentStatus.ACTION_REQUIRED,
        intent_id="pi_1",
        failure_code="authentication_required",
        generation=1,
        next_action_url=url,
    )
    assert moved
    waiting = await ledger.payment(pid)
    assert waiting is not None
    assert (waiting.next_action_url, waiting.failure_code) == (url, "authentication_required")
    assert (await ledger.events(pid))[-1].detail["next_action_url"] == url
    with pytest.raises(ForbiddenTransition):  # capture only after the authorization is recorded
        await ledger.transition(pid, PaymentStatus.CAPTURING, intent_id="pi_1", generation=1)

    await ledger.transition(pid, PaymentStatus.AUTHORIZED, intent_id="pi_1", generation=1)
    authorized = await ledger.payment(pid)
    assert authorized is not None
    assert (authorized.next_action_url, authorized.failure_code) == (None, None)
    with pytest.raises(asyncpg.CheckViolationError):  # the URL belongs to action_required
        await pool.execute("UPDATE payments SET next_action_url = 'x' WHERE id = $1::uuid", pid)
