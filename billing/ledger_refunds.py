"""The ledger's refunds: reserve refund n of a payment, then record what Stripe did.

A refund is reserved (`requested`) before Stripe is asked, in one transaction holding the
payment row's lock, so that the refunds requested and succeeded never add up to more than
the payment captured, and a payment has at most one refund in flight. Recording a refund
that succeeded moves the payment to `partially_refunded` or `refunded` in the same
transaction, with its `payment_events` row, as every payment transition is written.
"""

import json
from dataclasses import dataclass

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from billing.constants import (
    REFUNDABLE_STATUSES,
    TERMINAL_STATUSES,
    PaymentStatus,
    RefundReason,
    RefundStatus,
)
from billing.ledger import (
    APPEND_EVENT,
    TRANSITIONS,
    ForbiddenTransition,
    Ledger,
    LedgerError,
    UnknownPayment,
)
from billing.models import RefundRecord
from billing.money import format_amount

S = PaymentStatus
Conn = PoolConnectionProxy  # what `pool.acquire()` hands out

LOCK_PAYMENT_FOR_REFUND = """
SELECT id::text, status, amount_received, currency, stripe_payment_intent_id, billing_period,
       customer_id::text
FROM payments WHERE id = $1::uuid FOR UPDATE"""

REFUND_COLUMNS = """
payment_id::text, n, amount, currency, reason, status, stripe_refund_id, failure_code,
failure_message, request_id, created_at, updated_at"""

REFUNDS_OF_PAYMENT = f"SELECT {REFUND_COLUMNS} FROM refunds WHERE payment_id = $1::uuid ORDER BY n"

LOCK_REFUND = f"""
SELECT {REFUND_COLUMNS} FROM refunds WHERE payment_id = $1::uuid AND n = $2 FOR UPDATE"""

INSERT_REFUND = f"""
INSERT INTO refunds (payment_id, n, amount, currency, reason, request_id)
VALUES ($1::uuid, $2, $3, $4, $5, $6)
RETURNING {REFUND_COLUMNS}"""

REFUND_SUCCEEDED = """
UPDATE refunds SET status = 'succeeded', stripe_refund_id = $3, updated_at = now()
WHERE payment_id = $1::uuid AND n = $2"""

REFUND_FAILED = """
UPDATE refunds SET status = 'failed', failure_code = $3, failure_message = $4, updated_at = now()
WHERE payment_id = $1::uuid AND n = $2"""

REFUNDED_TOTAL = """
SELECT coalesce(sum(amount), 0)::bigint FROM refunds
WHERE payment_id = $1::uuid AND status = 'succeeded'"""

MOVE_PAYMENT = "UPDATE payments SET status = $2, updated_at = now() WHERE id = $1::uuid"

REFUNDS_OF_PERIOD = f"""
SELECT {", ".join(f"r.{c.strip()}" for c in REFUND_COLUMNS.split(","))}
FROM refunds r JOIN payments p ON p.id = r.payment_id
WHERE p.billing_period = $1 ORDER BY r.payment_id, r.n"""


class RefundRefused(LedgerError):
    """The refund asked for is not allowed (nothing was written); the message says why."""


@dataclass(frozen=True)
class Reservation:
    """Refund `refund.n` of a payment, and whether this call reserved it (False: a refund
    asked for the same way was already in flight, and the caller attaches to it)."""

    refund: RefundRecord
    intent_id: str
    billing_period: str
    customer_id: str
    new: bool


def _money(amount: int, currency: str) -> str:
    return f"{format_amount(amount, currency)} {currency.strip().upper()}"


class RefundLedger:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @classmethod
    def sharing_pool_of(cls, ledger: Ledger) -> "RefundLedger":
        return cls(ledger._pool)

    async def refunds(self, payment_id: str) -> list[RefundRecord]:
        try:
            rows = await self._pool.fetch(REFUNDS_OF_PAYMENT, payment_id)
        except asyncpg.DataError:  # not a UUID at all
            return []
        return [RefundRecord(**dict(r)) for r in rows]

    async def period_refunds(self, period: str) -> list[RefundRecord]:
        return [RefundRecord(**dict(r)) for r in await self._pool.fetch(REFUNDS_OF_PERIOD, period)]

    async def reserve(
        self,
        payment_id: str,
        amount: int | None,
        reason: RefundReason,
        request_id: str | None = None,
    ) -> Reservation:
        """Reserve the payment's next refund: `amount` in minor units, None for all that
        remains. A refund of the payment still in flight, asked for with the same amount (or
        None) and reason, is returned instead (`new` False): a repeated command attaches to it.
        With `request_id`, the refund reserved earlier under that id is returned (`new`
        False), in flight or ended: a repeated request never refunds again.

        Raises UnknownPayment, or RefundRefused (writing nothing) when the payment is not
        succeeded or partially_refunded, another refund of it is in flight, or the amount is
        above what remains (captured, less what is refunded or requested).
        """
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                payment = await conn.fetchrow(LOCK_PAYMENT_FOR_REFUND, payment_id)
                if payment is None:
                    raise UnknownPayment(f"unknown payment {payment_id!r}")
                rows = await conn.fetch(REFUNDS_OF_PAYMENT, payment_id)
                refunds = [RefundRecord(**dict(r)) for r in rows]
                refund, new = await self._reserve(
                    conn, payment, refunds, amount, reason, request_id
                )
        except asyncpg.DataError as err:  # not a UUID at all
            raise UnknownPayment(f"unknown payment {payment_id!r}") from err
        return Reservation(
            refund=refund,
            intent_id=payment["stripe_payment_intent_id"],
            billing_period=payment["billing_period"],
            customer_id=payment["customer_id"],
            new=new,
        )

    async def _reserve(
        self,
        conn: Conn,
        payment: asyncpg.Record,
        refunds: list[RefundRecord],
        amount: int | None,
        reason: RefundReason,
        request_id: str | None,
    ) -> tuple[RefundRecord, bool]:
        payment_id, currency = payment["id"], payment["currency"]
        earlier = [r for r in refunds if request_id is not None and r.request_id == request_id]
        if earlier:
            [made] = earlier
            if (amount is not None and amount != made.amount) or reason != made.reason:
                raise RefundRefused(
                    f"request id {request_id!r} is refund {made.n} of payment {payment_id} "
                    f"({_money(made.amount, currency)}, {made.reason}); a different refund "
                    "needs another request id"
                )
            return made, False
        in_flight = [r for r in refunds if r.status == RefundStatus.REQUESTED]
        if in_flight:
            [running] = in_flight
            # A command without --amount asks for all that remains: it is the running refund
            # only if that one refunds all that remained when it was reserved.
            before = (payment["amount_received"] or 0) - sum(
                r.amount for r in refunds if r.status == RefundStatus.SUCCEEDED
            )
            wanted = before if amount is None else amount
            if wanted == running.amount and reason == running.reason:
                return running, False
            raise RefundRefused(
                f"refund {running.n} of payment {payment_id} "
                f"({_money(running.amount, currency)}, {running.reason}) is still in flight; "
                "wait until it ends (`status PAYMENT_ID`), then ask again"
            )
        status = PaymentStatus(payment["status"])
        if status == S.REFUNDED:
            raise RefundRefused(f"payment {payment_id} is refunded: nothing left to refund")
        if status not in REFUNDABLE_STATUSES:
            open_payment = status not in TERMINAL_STATUSES
            hint = "; `cancel` releases a payment not captured yet" if open_payment else ""
            raise RefundRefused(
                f"payment {payment_id} is {status}; only a succeeded or partially_refunded "
                f"payment can be refunded{hint}"
            )
        if amount is not None and amount <= 0:
            raise RefundRefused(f"a refund must be above 0, not {_money(amount, currency)}")
        captured = payment["amount_received"] or 0
        held = sum(r.amount for r in refunds if r.status != RefundStatus.FAILED)
        remaining = captured - held
        if remaining <= 0:
            raise RefundRefused(
                f"payment {payment_id} has nothing left to refund: "
                f"{_money(held, currency)} of {_money(captured, currency)} refunded"
            )
        if amount is not None and amount > remaining:
            raise RefundRefused(
                f"cannot refund {_money(amount, currency)} of payment {payment_id}: only "
                f"{_money(remaining, currency)} of {_money(captured, currency)} remains"
            )
        row = await conn.fetchrow(
            INSERT_REFUND,
            payment_id,
            len(refunds) + 1,
            amount if amount is not None else remaining,
            currency,
            reason.value,
            request_id,
        )
        assert row is not None  # INSERT … RETURNING
        return RefundRecord(**dict(row)), True

    async def record_succeeded(
        self, payment_id: str, n: int, refund_id: str, amount: int
    ) -> PaymentStatus:
        """Refund n succeeded at Stripe as `refund_id`: record it, and move the payment to
        `refunded` once its refunds add up to what it captured, else `partially_refunded`.
        Returns the payment's status. Recording the same refund again changes nothing."""
        async with self._pool.acquire() as conn, conn.transaction():
            payment = await conn.fetchrow(LOCK_PAYMENT_FOR_REFUND, payment_id)
            if payment is None:
                raise UnknownPayment(f"payment {payment_id} does not exist")
            refund = await self._locked_refund(conn, payment_id, n)
            current = PaymentStatus(payment["status"])
            if refund.status == RefundStatus.SUCCEEDED and refund.stripe_refund_id == refund_id:
                return current  # a replay
            if refund.status != RefundStatus.REQUESTED or refund.amount != amount:
                raise ForbiddenTransition(
                    f"refund {n} of payment {payment_id} is {refund.status} "
                    f"({refund.amount}, {refund.stripe_refund_id or 'no Stripe refund'}); "
                    f"it cannot record {refund_id} of {amount}"
                )
            await conn.execute(REFUND_SUCCEEDED, payment_id, n, refund_id)
            total = await conn.fetchval(REFUNDED_TOTAL, payment_id)
            captured = payment["amount_received"] or 0
            to = S.REFUNDED if total >= captured else S.PARTIALLY_REFUNDED
            if current != to:
                if current not in TRANSITIONS[to]:
                    raise ForbiddenTransition(f"payment {payment_id} cannot move {current} -> {to}")
                await conn.execute(MOVE_PAYMENT, payment_id, to.value)
                detail = {"refund": n, "stripe_refund_id": refund_id, "amount_refunded": total}
                await conn.execute(
                    APPEND_EVENT, payment_id, current.value, to.value, json.dumps(detail)
                )
            return to

    async def record_failed(self, payment_id: str, n: int, code: str, message: str) -> None:
        """Stripe refused refund n: it ends failed with the reason and no longer counts
        against what remains. Recording the failure again changes nothing."""
        async with self._pool.acquire() as conn, conn.transaction():
            refund = await self._locked_refund(conn, payment_id, n)
            if refund.status == RefundStatus.FAILED:
                return
            if refund.status != RefundStatus.REQUESTED:
                raise ForbiddenTransition(
                    f"refund {n} of payment {payment_id} is {refund.status}; it cannot fail"
                )
            await conn.execute(REFUND_FAILED, payment_id, n, code, message)

    @staticmethod
    async def _locked_refund(conn: Conn, payment_id: str, n: int) -> RefundRecord:
        row = await conn.fetchrow(LOCK_REFUND, payment_id, n)
        if row is None:
            raise UnknownPayment(f"payment {payment_id} has no refund {n}")
        return RefundRecord(**dict(row))
