"""The ledger's refunds on a real PostgreSQL: the reservation's guard, one refund in flight
per payment, recording Stripe's answer, and the payment statuses it leads to."""

import asyncio

import asyncpg
import pytest

from billing.constants import PaymentStatus, RefundReason, RefundStatus
from billing.ledger import ForbiddenTransition, Ledger, UnknownPayment
from billing.ledger_refunds import RefundLedger, RefundRefused
from tests.test_ledger import PERIOD, customer

S = PaymentStatus
BY_CUSTOMER = RefundReason.REQUESTED_BY_CUSTOMER


async def captured_payment(pool: asyncpg.Pool, amount: int = 1000) -> str:
    ledger = Ledger(pool)
    await ledger.upsert_customers([customer(1, amount=amount)])
    await ledger.create_period_payments(PERIOD)
    [payment] = await ledger.period_payments(PERIOD)
    await ledger.transition(payment.id, S.AUTHORIZED, intent_id="pi_1")
    await ledger.transition(payment.id, S.SUCCEEDED, intent_id="pi_1", amount_received=amount)
    return payment.id


async def status(pool: asyncpg.Pool, payment_id: str) -> PaymentStatus:
    payment = await Ledger(pool).payment(payment_id)
    assert payment is not None
    return payment.status


async def test_refunds_move_the_payment_and_replays_change_nothing(pool: asyncpg.Pool) -> None:
    payment_id = await captured_payment(pool)
    refunds = RefundLedger(pool)
    first = await refunds.reserve(payment_id, 400, BY_CUSTOMER)
    assert (first.refund.n, first.refund.amount, first.new, first.intent_id) == (
        1,
        400,
        True,
        "pi_1",
    )
    assert await refunds.record_succeeded(payment_id, 1, "re_1", 400) == S.PARTIALLY_REFUNDED
    assert await refunds.record_succeeded(payment_id, 1, "re_1", 400) == S.PARTIALLY_REFUNDED
    with pytest.raises(ForbiddenTransition):
        await refunds.record_succeeded(payment_id, 1, "re_other", 400)
    second = await refunds.reserve(payment_id, None, RefundReason.DUPLICATE)
    assert (second.refund.n, second.refund.amount) == (2, 600)  # all that remains
    assert await refunds.record_succeeded(payment_id, 2, "re_2", 600) == S.REFUNDED
    moves = [(e.from_status, e.to_status) for e in await Ledger(pool).events(payment_id)]
    assert moves[-2:] == [(S.SUCCEEDED, S.PARTIALLY_REFUNDED), (S.PARTIALLY_REFUNDED, S.REFUNDED)]
    # A late replay of the capture's record changes nothing once refunds followed.
    assert not await Ledger(pool).transition(
        payment_id, S.SUCCEEDED, intent_id="pi_1", amount_received=1000
    )
    assert await status(pool, payment_id) == S.REFUNDED
    with pytest.raises(RefundRefused, match="nothing left to refund"):
        await refunds.reserve(payment_id, None, BY_CUSTOMER)


async def test_concurrent_reservations_never_exceed_what_was_captured(
    pool: asyncpg.Pool,
) -> None:
    payment_id = await captured_payment(pool)
    refunds = RefundLedger(pool)
    outcomes = await asyncio.gather(
        refunds.reserve(payment_id, 700, BY_CUSTOMER),
        refunds.reserve(payment_id, 600, BY_CUSTOMER),
        return_exceptions=True,
    )
    reserved = [o for o in outcomes if not isinstance(o, BaseException)]
    refused = [o for o in outcomes if isinstance(o, RefundRefused)]
    assert len(reserved) == 1 and len(refused) == 1, outcomes
    assert "still in flight" in str(refused[0])
    [row] = await refunds.refunds(payment_id)
    assert row.status == RefundStatus.REQUESTED


async def test_a_failed_refund_frees_its_amount_and_keeps_its_number(pool: asyncpg.Pool) -> None:
    payment_id = await captured_payment(pool)
    refunds = RefundLedger(pool)
    await refunds.reserve(payment_id, 1000, BY_CUSTOMER)
    await refunds.record_failed(payment_id, 1, "charge_already_refunded", "refunded already")
    await refunds.record_failed(payment_id, 1, "charge_already_refunded", "refunded already")
    with pytest.raises(ForbiddenTransition):
        await refunds.record_succeeded(payment_id, 1, "re_1", 1000)
    with pytest.raises(RefundRefused, match=r"only 10\.00 USD of 10\.00 USD remains"):
        await refunds.reserve(payment_id, 1001, BY_CUSTOMER)
    again = await refunds.reserve(payment_id, None, BY_CUSTOMER)
    assert (again.refund.n, again.refund.amount) == (2, 1000)
    assert await status(pool, payment_id) == S.SUCCEEDED


async def test_only_a_captured_payment_can_be_refunded(pool: asyncpg.Pool) -> None:
    ledger = Ledger(pool)
    await ledger.upsert_customers([customer(1)])
    await ledger.create_period_payments(PERIOD)
    [payment] = await ledger.period_payments(PERIOD)
    refunds = RefundLedger(pool)
    with pytest.raises(RefundRefused, match=r"is pending.*`cancel` releases"):
        await refunds.reserve(payment.id, None, BY_CUSTOMER)
    for unknown in ("nope", "00000000-0000-0000-0000-000000000000"):
        with pytest.raises(UnknownPayment):
            await refunds.reserve(unknown, None, BY_CUSTOMER)
    assert await refunds.refunds(payment.id) == []


async def test_the_schema_allows_one_refund_in_flight_per_payment(pool: asyncpg.Pool) -> None:
    payment_id = await captured_payment(pool)
    await RefundLedger(pool).reserve(payment_id, 100, BY_CUSTOMER)
    with pytest.raises(asyncpg.UniqueViolationError):
        await pool.execute(
            "INSERT INTO refunds (payment_id, n, amount, currency, reason)"
            " VALUES ($1::uuid, 2, 100, 'usd', 'duplicate')",
            payment_id,
        )


async def test_a_refund_of_everything_never_joins_a_partial_one_in_flight(
    pool: asyncpg.Pool,
) -> None:
    """`refund P` (all that remains) while `refund P --amount 7.00` ran attached to the partial
    refund, and its exit 0 read as fully refunded."""
    payment_id = await captured_payment(pool)
    refunds = RefundLedger(pool)
    partial = await refunds.reserve(payment_id, 700, BY_CUSTOMER)
    with pytest.raises(RefundRefused, match="still in flight"):
        await refunds.reserve(payment_id, None, BY_CUSTOMER)
    again = await refunds.reserve(payment_id, 700, BY_CUSTOMER)
    assert (again.refund.n, again.new) == (partial.refund.n, False)


async def test_a_repeated_refund_of_everything_joins_the_one_in_flight(pool: asyncpg.Pool) -> None:
    payment_id = await captured_payment(pool)
    refunds = RefundLedger(pool)
    await refunds.reserve(payment_id, 400, BY_CUSTOMER)
    await refunds.record_succeeded(payment_id, 1, "re_1", 400)
    everything = await refunds.reserve(payment_id, None, BY_CUSTOMER)
    again = await refunds.reserve(payment_id, None, BY_CUSTOMER)
    assert (again.refund.n, again.refund.amount, again.new) == (2, everything.refund.amount, False)


async def test_a_request_id_names_one_refund_in_flight_or_ended(pool: asyncpg.Pool) -> None:
    """Without an id, a partial refund asked again after it ended is a second refund; with
    the same request id it is the first one, whatever became of it, and never another."""
    payment_id = await captured_payment(pool)
    refunds = RefundLedger(pool)
    first = await refunds.reserve(payment_id, 300, BY_CUSTOMER, "ticket-42")
    assert (first.refund.n, first.new, first.refund.request_id) == (1, True, "ticket-42")
    again = await refunds.reserve(payment_id, 300, BY_CUSTOMER, "ticket-42")
    assert (again.refund.n, again.new) == (1, False)
    await refunds.record_succeeded(payment_id, 1, "re_1", 300)
    ended = await refunds.reserve(payment_id, 300, BY_CUSTOMER, "ticket-42")
    assert (ended.refund.n, ended.new, ended.refund.status) == (1, False, RefundStatus.SUCCEEDED)
    assert (await refunds.reserve(payment_id, None, BY_CUSTOMER, "ticket-42")).refund.n == 1
    with pytest.raises(RefundRefused, match="a different refund needs another request id"):
        await refunds.reserve(payment_id, 200, BY_CUSTOMER, "ticket-42")
    with pytest.raises(RefundRefused, match="a different refund needs another request id"):
        await refunds.reserve(payment_id, 300, RefundReason.DUPLICATE, "ticket-42")
    other = await refunds.reserve(payment_id, 300, BY_CUSTOMER, "ticket-43")
    assert (other.refund.n, other.new) == (2, True)
    assert [r.amount for r in await refunds.refunds(payment_id)] == [300, 300]
