"""The ledger's side of Stripe's webhooks: find the payment an event concerns, store the event
once by its id, and record that it was handed on (billing/webhooks.py does the receiving).

Storing and handing on are two steps so that a crash between them loses nothing: the event
row is committed first with `handed_at` NULL, and Stripe's retry of the delivery finds it
there and hands it on again. The hand-off runs under the event row's lock, so two deliveries
of one event at once hand it on one after the other, and the second sees the first's mark.
"""

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from billing.ledger import APPEND_EVENT, Ledger, UnknownPayment
from billing.models import StripeEventFact
from billing.stripe_event_facts import StripeEventEnvelope, intent_id_of

PAYMENT_EXISTS = "SELECT id::text FROM payments WHERE id = $1::uuid"

# The payment that holds the intent now, else the one an earlier event of that intent named
# (an older authorization generation of the payment).
PAYMENT_OF_INTENT = """
SELECT id::text FROM payments WHERE stripe_payment_intent_id = $1
UNION ALL
(SELECT payment_id::text FROM stripe_events WHERE intent_id = $1 AND payment_id IS NOT NULL
 ORDER BY received_at LIMIT 1)
LIMIT 1"""

STORE_EVENT = """
INSERT INTO stripe_events (id, type, created, livemode, payment_id, intent_id, payload,
                           handed_at, handed_to)
VALUES ($1, $2, to_timestamp($3), $4, $5::uuid, $6, $7::jsonb,
        CASE WHEN $8 THEN now() END, CASE WHEN $8 THEN 'ignored' END)
ON CONFLICT (id) DO NOTHING
RETURNING id"""

EVENT_HANDED_TO = "SELECT handed_to FROM stripe_events WHERE id = $1"

LOCK_EVENT = "SELECT handed_to FROM stripe_events WHERE id = $1 FOR UPDATE"

PAYMENT_STATUS_LOCKED = "SELECT status FROM payments WHERE id = $1::uuid FOR UPDATE"

MARK_HANDED = "UPDATE stripe_events SET handed_at = now(), handed_to = $2 WHERE id = $1"

EVENTS_OF_PAYMENT = """
SELECT id, type, created, received_at, handed_to FROM stripe_events
WHERE payment_id = $1::uuid ORDER BY created, received_at, id"""

STORED_EVENTS = """
SELECT id, type, payment_id::text, intent_id, handed_to FROM stripe_events
ORDER BY received_at, id"""


class HandedTo(StrEnum):
    WORKFLOW = "workflow"
    LEDGER = "ledger"
    IGNORED = "ignored"


@dataclass(frozen=True)
class PaymentStripeEvent:
    """A stored Stripe event of one payment, as `status` shows it."""

    id: str
    type: str
    created: datetime  # when it happened at Stripe
    received_at: datetime
    handed_to: HandedTo | None  # None: stored, not handed on yet


@dataclass(frozen=True)
class Stored:
    new: bool  # False: a delivery of this event id had stored it already
    handed_to: HandedTo | None  # None while the hand-off is still to do


class StripeEventLedger(Ledger):
    @classmethod
    def sharing_pool_of(cls, ledger: Ledger) -> "StripeEventLedger":
        return cls(ledger._pool)

    async def payment_of(self, event: StripeEventEnvelope, hint: str | None) -> str | None:
        """Our payment the event concerns: `hint` (the object's metadata.payment_id) when the
        ledger has it, else the payment holding the event's PaymentIntent; None when none."""
        if hint is not None and await self._pool.fetchval(PAYMENT_EXISTS, hint) is not None:
            return hint
        intent_id = intent_id_of(event)
        if intent_id is None:
            return None
        found: str | None = await self._pool.fetchval(PAYMENT_OF_INTENT, intent_id)
        return found

    async def store(
        self, event: StripeEventEnvelope, payload: str, payment_id: str | None
    ) -> Stored:
        """Store the event unless its id is stored already; an event of a type not handled is
        stored as handed (`ignored`)."""
        async with self._pool.acquire() as conn, conn.transaction():
            inserted = await conn.fetchval(
                STORE_EVENT,
                event.id,
                event.type,
                event.created,
                event.livemode,
                payment_id,
                intent_id_of(event),
                payload,
                not event.handled,
            )
            handed_to = await conn.fetchval(EVENT_HANDED_TO, event.id)
        return Stored(
            new=inserted is not None, handed_to=None if handed_to is None else HandedTo(handed_to)
        )

    async def hand_off(
        self,
        payment_id: str,
        fact: StripeEventFact,
        signal: Callable[[], Awaitable[bool]],
    ) -> HandedTo:
        """Hand a stored event on, once: `signal` sends it to the payment's running workflow
        and says False when the payment has no open run (closed, or never started); then the
        fact is appended to the payment's `payment_events` (from and to its current status),
        in the same transaction that marks the event handed. An event already handed (by a
        delivery that held the lock first) is not handed again."""
        async with self._pool.acquire() as conn, conn.transaction():
            already = await conn.fetchval(LOCK_EVENT, fact.event_id)
            if already is not None:
                return HandedTo(already)
            if await signal():
                handed_to = HandedTo.WORKFLOW
            else:
                status = await conn.fetchval(PAYMENT_STATUS_LOCKED, payment_id)
                if status is None:
                    raise UnknownPayment(f"payment {payment_id} does not exist")
                detail = {"by": "stripe_event", **fact.model_dump(mode="json", exclude_none=True)}
                await conn.execute(APPEND_EVENT, payment_id, status, status, json.dumps(detail))
                handed_to = HandedTo.LEDGER
            await conn.execute(MARK_HANDED, fact.event_id, handed_to.value)
        return handed_to

    async def events_of(self, payment_id: str) -> list[PaymentStripeEvent]:
        """The payment's stored events, in the order they happened at Stripe."""
        return [
            PaymentStripeEvent(
                id=r["id"],
                type=r["type"],
                created=r["created"],
                received_at=r["received_at"],
                handed_to=None if r["handed_to"] is None else HandedTo(r["handed_to"]),
            )
            for r in await self._pool.fetch(EVENTS_OF_PAYMENT, payment_id)
        ]

    async def stored_events(self) -> list[dict[str, str | None]]:
        """Every stored event (id, type, payment_id, intent_id, handed_to), oldest first."""
        return [dict(r) for r in await self._pool.fetch(STORED_EVENTS)]
