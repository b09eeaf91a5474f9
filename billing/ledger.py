"""The Postgres ledger: the system of record for customers and payments.

All SQL lives here (refunds' in billing/ledger_refunds.py). Every payment write is a guarded
transition that appends to `payment_events` in the same transaction.
"""

import json
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from typing import Any
from uuid import UUID

import asyncpg

from billing.constants import PaymentStatus
from billing.models import (
    BillableRow,
    NewCustomer,
    PaymentEvent,
    PaymentRecord,
    PaymentState,
    PeriodCounts,
)

S = PaymentStatus
_OPEN = frozenset({S.PENDING, S.RETRYING, S.ACTION_REQUIRED, S.AUTHORIZED, S.CAPTURING})

# Allowed previous states of each target state.
TRANSITIONS: Mapping[PaymentStatus, frozenset[PaymentStatus]] = {
    # A new authorization attempt: after a soft decline, after an authorization expired, or
    # when a resumed run finds the intent awaiting authentication gone.
    S.PENDING: frozenset({S.RETRYING, S.ACTION_REQUIRED, S.AUTHORIZED, S.CAPTURING}),
    # A soft decline; from action_required when the card declined after authentication.
    S.RETRYING: frozenset({S.PENDING, S.ACTION_REQUIRED}),
    # The bank asked for 3-D Secure: the customer is asked to authenticate.
    S.ACTION_REQUIRED: frozenset({S.PENDING}),
    # Authorized at once, or once the customer authenticated.
    S.AUTHORIZED: frozenset({S.PENDING, S.ACTION_REQUIRED}),
    # The guard before money moves: an operator's cancel, or any other move, wins over it.
    S.CAPTURING: frozenset({S.AUTHORIZED}),
    # From pending or retrying when Stripe already holds this period's capture (a lost row, a
    # restored backup); from authorized only on the path of payments begun before `capturing`.
    S.SUCCEEDED: _OPEN,
    S.FAILED: _OPEN,
    # Never once capture has begun: then the capture decides.
    S.CANCELLED: frozenset({S.PENDING, S.RETRYING, S.ACTION_REQUIRED, S.AUTHORIZED}),
    # From any open state: it says the row and Stripe may disagree, and a person must look. Never
    # over an ended payment: a capture, a cancel or a failure recorded there stands.
    S.NEEDS_ATTENTION: _OPEN,
    # A refund that succeeded at Stripe (billing/ledger_refunds.py): part, then all of it.
    S.PARTIALLY_REFUNDED: frozenset({S.SUCCEEDED, S.PARTIALLY_REFUNDED}),
    S.REFUNDED: frozenset({S.SUCCEEDED, S.PARTIALLY_REFUNDED}),
}
# Captured, then refunded: a late replay of the capture's record changes nothing.
REFUNDED_AFTER_CAPTURE = frozenset({S.PARTIALLY_REFUNDED, S.REFUNDED})

# States in which the row holds an authorization: a move from one of them to these targets
# must name that PaymentIntent, never another one.
HOLDS_AUTHORIZATION = frozenset({S.AUTHORIZED, S.CAPTURING})
BOUND_TO_RECORDED_INTENT = frozenset({S.CAPTURING, S.SUCCEEDED, S.CANCELLED})
# Moves that show the payment is past its declines: the old decline code no longer applies.
CLEARS_FAILURE = frozenset({S.AUTHORIZED, S.SUCCEEDED})

MIGRATION_LOCK_ID = 0x62696C6C  # any constant shared by every process that migrates

CREATE_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     text PRIMARY KEY,
    applied_at  timestamptz NOT NULL DEFAULT now()
)"""

# Imports serialize: an import checks the rows it may touch, then writes them.
LOCK_CUSTOMERS = "LOCK TABLE customers IN SHARE ROW EXCLUSIVE MODE"

CUSTOMERS_MATCHING = """
SELECT id, email, stripe_customer_id FROM customers
WHERE stripe_customer_id = ANY($1::text[]) OR lower(email) = ANY($2::text[])"""

INSERT_CUSTOMER = """
INSERT INTO customers (email, stripe_customer_id, payment_method_id, monthly_amount, currency,
                       active)
VALUES ($1, $2, $3, $4, $5, $6)"""

UPDATE_CUSTOMER = """
UPDATE customers SET
    email = $1,
    stripe_customer_id = $2,
    payment_method_id = $3,
    monthly_amount = $4,
    currency = $5,
    active = $6,
    updated_at = now()
WHERE id = $7"""

CUSTOMER_BY_EMAIL = """
SELECT stripe_customer_id, payment_method_id FROM customers WHERE lower(email) = lower($1)"""

# One page of active customers in id order (keyset), and their missing rows of the period.
ACTIVE_CUSTOMERS_PAGE = """
SELECT id FROM customers WHERE active AND ($1::uuid IS NULL OR id > $1::uuid)
ORDER BY id LIMIT $2"""

CREATE_PAGE_PAYMENTS = """
WITH created AS (
    INSERT INTO payments (customer_id, billing_period, amount, currency, stripe_customer_id)
    SELECT id, $1, monthly_amount, currency, stripe_customer_id
    FROM customers WHERE id = ANY($2::uuid[])
    ON CONFLICT DO NOTHING
    RETURNING id
)
INSERT INTO payment_events (payment_id, from_status, to_status, detail)
SELECT id, NULL, 'pending', '{"by": "bill"}'::jsonb FROM created"""

BILLABLE_ROWS = """
SELECT p.id::text AS payment_id, p.customer_id::text AS customer_id,
       p.billing_period, p.amount, p.currency, p.status,
       p.stripe_customer_id, c.payment_method_id
FROM payments p JOIN customers c ON c.id = p.customer_id"""

# A page's rows by its key range, so that a row whose customer has since been deactivated is
# still launched (or resumed) by the page it falls in; the last page is open-ended.
PAGE_BILLABLE_ROWS = f"""{BILLABLE_ROWS}
WHERE p.billing_period = $1 AND ($2::uuid IS NULL OR p.customer_id > $2::uuid)
  AND ($3::uuid IS NULL OR p.customer_id <= $3::uuid)
ORDER BY p.customer_id"""

ONE_BILLABLE_ROW = f"{BILLABLE_ROWS} WHERE p.id = $1::uuid"

PERIOD_COUNTS = """
SELECT status, currency, count(*) AS payments, coalesce(sum(amount_received), 0) AS received
FROM payments WHERE billing_period = $1 GROUP BY status, currency"""

PAYMENT_COLUMNS = """
id::text, customer_id::text, billing_period, amount, currency, status,
stripe_payment_intent_id, amount_received, failure_code, failure_message, generation,
next_action_url, created_at, updated_at"""

PAYMENT_BY_ID = f"SELECT {PAYMENT_COLUMNS} FROM payments WHERE id = $1::uuid"

PAYMENTS_OF_PERIOD = (
    f"SELECT {PAYMENT_COLUMNS} FROM payments WHERE billing_period = $1 ORDER BY created_at, id"
)

PAYMENT_STATE = """
SELECT p.status, p.generation, p.stripe_payment_intent_id AS intent_id, c.payment_method_id,
       (SELECT count(*) FROM payment_events e
        WHERE e.payment_id = p.id AND e.to_status = 'retrying'
          AND e.from_status IS DISTINCT FROM 'retrying')::int AS dunning_attempts
FROM payments p JOIN customers c ON c.id = p.customer_id WHERE p.id = $1::uuid"""

EVENTS_OF_PAYMENT = """
SELECT payment_id::text, from_status, to_status, detail, occurred_at
FROM payment_events WHERE payment_id = $1::uuid ORDER BY id"""

LOCK_PAYMENT = """
SELECT status, stripe_payment_intent_id, generation FROM payments WHERE id = $1::uuid
FOR UPDATE"""

APPLY_TRANSITION = """
UPDATE payments SET
    status = $2,
    stripe_payment_intent_id = COALESCE($3, stripe_payment_intent_id),
    amount_received = COALESCE($4, amount_received),
    failure_code = CASE WHEN $8 THEN $5 ELSE COALESCE($5, failure_code) END,
    failure_message = CASE WHEN $8 THEN $6 ELSE COALESCE($6, failure_message) END,
    generation = COALESCE($7, generation),
    authorized_at = CASE WHEN $2 = 'authorized' THEN now() ELSE authorized_at END,
    captured_at = CASE WHEN $2 = 'succeeded' THEN now() ELSE captured_at END,
    cancelled_at = CASE WHEN $2 = 'cancelled' THEN now() ELSE cancelled_at END,
    next_action_url = CASE WHEN $2 = 'action_required' THEN $9 END,
    updated_at = now()
WHERE id = $1::uuid"""

APPEND_EVENT = """
INSERT INTO payment_events (payment_id, from_status, to_status, detail)
VALUES ($1::uuid, $2, $3, $4::jsonb)"""


class LedgerError(Exception):
    """A ledger rule was broken; the message says which and what to do."""


class UnknownPayment(LedgerError):
    pass


class ForbiddenTransition(LedgerError):
    pass


class Fenced(LedgerError):
    """A write from a generation older than the row's: a newer generation owns the payment,
    and the older one may neither capture nor end it."""


class CustomerConflict(LedgerError):
    """An import would put one Stripe customer, or one email, on two customer rows."""


async def open_pool(database_url: str, *, max_size: int = 10) -> asyncpg.Pool:
    """One pool per process: created at start, closed at its end."""
    return await asyncpg.create_pool(database_url, min_size=1, max_size=max_size)


async def migrate(pool: asyncpg.Pool) -> list[str]:
    """Apply the numbered SQL files not yet applied. Safe when processes start at once."""
    migrations = sorted(
        (f for f in resources.files("billing.migrations").iterdir() if f.name.endswith(".sql")),
        key=lambda f: f.name,
    )
    applied_now: list[str] = []
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_ID)
        await conn.execute(CREATE_MIGRATIONS_TABLE)
        done = {row["version"] for row in await conn.fetch("SELECT version FROM schema_migrations")}
        for migration in migrations:
            version = migration.name.removesuffix(".sql")
            if version in done:
                continue
            await conn.execute(migration.read_text())
            await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
            applied_now.append(version)
    return applied_now


class Ledger:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def upsert_customers(self, customers: Iterable[NewCustomer]) -> int:
        """All or nothing: one transaction for the whole batch.

        A customer is its Stripe customer id; emails compare ignoring case. A row updates the
        customer with its Stripe id, else the customer with its email (who moved to a new
        Stripe customer; payments keep the id they billed), else it is new. Raises
        CustomerConflict, writing nothing, when a row's Stripe id and email belong to two
        different customers, when two rows match one customer, or when two rows share a
        Stripe id or an email.
        """
        batch = list(customers)
        _refuse_duplicates(batch)
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(LOCK_CUSTOMERS)
            existing = await conn.fetch(
                CUSTOMERS_MATCHING,
                [c.stripe_customer_id for c in batch],
                [c.email.lower() for c in batch],
            )
            targets = _match_existing(batch, existing)
            rows = [
                (
                    c.email,
                    c.stripe_customer_id,
                    c.payment_method_id,
                    c.monthly_amount,
                    c.currency,
                    c.active,
                )
                for c in batch
            ]
            updates = [(*row, t) for row, t in zip(rows, targets, strict=True) if t is not None]
            inserts = [row for row, t in zip(rows, targets, strict=True) if t is None]
            await conn.executemany(UPDATE_CUSTOMER, updates)
            await conn.executemany(INSERT_CUSTOMER, inserts)
        return len(rows)

    async def stripe_ids_of(self, email: str) -> tuple[str, str] | None:
        """The Stripe customer and payment method of the customer with this email, in any
        case."""
        row = await self._pool.fetchrow(CUSTOMER_BY_EMAIL, email)
        return None if row is None else (row["stripe_customer_id"], row["payment_method_id"])

    async def create_period_payments(self, period: str, page_size: int = 1000) -> int:
        """Create the missing payment rows of a period; returns how many were new."""
        created, after = 0, None
        while True:
            new, after, _ = await self.create_page_payments(period, after, page_size)
            created += new
            if after is None:
                return created

    async def billable_row(self, payment_id: str) -> BillableRow | None:
        try:
            row = await self._pool.fetchrow(ONE_BILLABLE_ROW, payment_id)
        except asyncpg.DataError:  # not a UUID at all
            return None
        return None if row is None else BillableRow(**dict(row))

    async def create_page_payments(
        self, period: str, after_customer: str | None, limit: int, *, create: bool = True
    ) -> tuple[int, str | None, list[BillableRow]]:
        """The next page of the period: the next `limit` active customers after
        `after_customer` (in id order), whose missing rows are created unless `create` is
        false. Returns how many rows were new, the cursor of the next page (None when this
        one was the last), and every row of the period in the page's key range."""
        async with self._pool.acquire() as conn, conn.transaction():
            ids = [r["id"] for r in await conn.fetch(ACTIVE_CUSTOMERS_PAGE, after_customer, limit)]
            created = 0
            if create and ids:
                created = int((await conn.execute(CREATE_PAGE_PAYMENTS, period, ids)).split()[-1])
            last = str(ids[-1]) if len(ids) == limit else None
            rows = await conn.fetch(PAGE_BILLABLE_ROWS, period, after_customer, last)
        return created, last, [BillableRow(**dict(r)) for r in rows]

    async def period_counts(self, period: str) -> PeriodCounts:
        by_status: dict[PaymentStatus, int] = {}
        received: dict[str, int] = {}
        for row in await self._pool.fetch(PERIOD_COUNTS, period):
            status = PaymentStatus(row["status"])
            by_status[status] = by_status.get(status, 0) + row["payments"]
            if row["received"]:
                received[row["currency"]] = received.get(row["currency"], 0) + row["received"]
        return PeriodCounts(by_status=by_status, received=received)

    async def payment(self, payment_id: str) -> PaymentRecord | None:
        try:
            row = await self._pool.fetchrow(PAYMENT_BY_ID, payment_id)
        except asyncpg.DataError:  # not a UUID at all
            return None
        return None if row is None else PaymentRecord(**dict(row))

    async def payment_state(self, payment_id: str) -> PaymentState:
        """The row's status, generation and recorded intent, its soft declines so far (counted
        from its append-only events), and the customer's current payment method (a card
        changed by `customers import` shows here)."""
        row = await self._pool.fetchrow(PAYMENT_STATE, payment_id)
        if row is None:
            raise UnknownPayment(f"payment {payment_id} does not exist")
        return PaymentState(**dict(row))

    async def period_payments(self, period: str) -> list[PaymentRecord]:
        return [
            PaymentRecord(**dict(r)) for r in await self._pool.fetch(PAYMENTS_OF_PERIOD, period)
        ]

    async def events(self, payment_id: str) -> list[PaymentEvent]:
        rows = await self._pool.fetch(EVENTS_OF_PAYMENT, payment_id)
        return [PaymentEvent(**{**dict(r), "detail": json.loads(r["detail"])}) for r in rows]

    async def transition(
        self,
        payment_id: str,
        to: PaymentStatus,
        *,
        intent_id: str | None = None,
        amount_received: int | None = None,
        failure_code: str | None = None,
        failure_message: str | None = None,
        generation: int | None = None,
        next_action_url: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> bool:
        """Move a payment to `to`. Returns False, changing nothing, when it is already there
        (a replay), or when a new attempt (`to` pending) names a generation the row has
        already reached. A new attempt of a newer generation on a `pending` row records that
        generation (an event pending -> pending).

        Raises Fenced, changing nothing, when the write comes from a generation older than the
        row's (a late write of an attempt the workflow has moved past, or a run that a newer
        generation overtook): the writer must learn that it no longer owns the payment.

        Raises ForbiddenTransition when the current state does not allow the move, or when it
        names another PaymentIntent than the authorization the row holds. A new authorization
        attempt records its own PaymentIntent.
        """
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(LOCK_PAYMENT, payment_id)
            if row is None:
                raise UnknownPayment(f"payment {payment_id} does not exist")
            current = PaymentStatus(row["status"])
            recorded_intent = row["stripe_payment_intent_id"]
            if generation is not None and generation < row["generation"]:
                raise Fenced(
                    f"payment {payment_id} is at generation {row['generation']}; a write of "
                    f"generation {generation} ({current} -> {to}) is refused"
                )
            other_intent = bool(intent_id and recorded_intent and intent_id != recorded_intent)
            bound = current in HOLDS_AUTHORIZATION and to in BOUND_TO_RECORDED_INTENT
            if other_intent and (current == to or bound):
                raise ForbiddenTransition(
                    f"payment {payment_id} is bound to {recorded_intent}, not {intent_id}"
                )
            # A new attempt while the row is still pending (an authorize whose answer was lost
            # and nothing recorded since): the row takes the new generation all the same, so
            # that it never lags behind the run and fences the older generation's late writes.
            renewed = (
                to == current == S.PENDING
                and generation is not None
                and generation > row["generation"]
            )
            if current == to and not renewed:
                return False
            if to == S.AUTHORIZED and current == S.CAPTURING and intent_id == recorded_intent:
                return False  # already past recording this authorization: a replay
            if to == PaymentStatus.PENDING and generation == row["generation"]:
                return False  # a late duplicate of a generation's begin_attempt
            if to == S.SUCCEEDED and current in REFUNDED_AFTER_CAPTURE and not other_intent:
                return False  # the capture was recorded, and refunds followed: a replay
            if to == PaymentStatus.SUCCEEDED and intent_id is None:
                raise ForbiddenTransition(
                    f"payment {payment_id}: a move to succeeded must name the captured "
                    "PaymentIntent"
                )
            if current not in TRANSITIONS[to] and not renewed:
                raise ForbiddenTransition(f"payment {payment_id} cannot move {current} -> {to}")
            await conn.execute(
                APPLY_TRANSITION,
                payment_id,
                to.value,
                intent_id,
                amount_received,
                failure_code,
                failure_message,
                generation,
                to in CLEARS_FAILURE,
                next_action_url,
            )
            event_detail = {
                k: v
                for k, v in {
                    "generation": generation,
                    "intent_id": intent_id,
                    "amount_received": amount_received,
                    "failure_code": failure_code,
                    "failure_message": failure_message,
                    "next_action_url": next_action_url,
                    **(detail or {}),
                }.items()
                if v is not None
            }
            await conn.execute(
                APPEND_EVENT, payment_id, current.value, to.value, json.dumps(event_detail)
            )
        return True


def _refuse_duplicates(batch: Sequence[NewCustomer]) -> None:
    seen: dict[str, NewCustomer] = {}
    for c in batch:
        for key in (c.stripe_customer_id, c.email.lower()):
            first = seen.setdefault(key, c)
            if first is not c:
                raise CustomerConflict(
                    f"{_who(first)} and {_who(c)} share {key}; keep one row per customer; "
                    "nothing was imported"
                )


def _match_existing(
    batch: Sequence[NewCustomer], existing: Sequence[asyncpg.Record]
) -> list[UUID | None]:
    """The existing customer each row updates (its id), or None for a new customer."""
    by_stripe_id = {r["stripe_customer_id"]: r for r in existing}
    by_email = {r["email"].lower(): r for r in existing}
    claimed: dict[UUID, NewCustomer] = {}
    targets: list[UUID | None] = []
    for c in batch:
        same_id = by_stripe_id.get(c.stripe_customer_id)
        same_email = by_email.get(c.email.lower())
        if same_id is not None and same_email is not None and same_id["id"] != same_email["id"]:
            raise CustomerConflict(
                f"cannot import {_who(c)}: {c.stripe_customer_id} belongs to the customer "
                f"{same_id['email']} and {c.email} to another customer "
                f"({same_email['stripe_customer_id']}); correct the row, or change the other "
                "customer first; nothing was imported"
            )
        match = same_id if same_id is not None else same_email
        if match is None:
            targets.append(None)
            continue
        other = claimed.setdefault(match["id"], c)
        if other is not c:
            raise CustomerConflict(
                f"{_who(other)} and {_who(c)} both match the customer "
                f"{match['email']} ({match['stripe_customer_id']}); keep one of the two rows; "
                "nothing was imported"
            )
        targets.append(match["id"])
    return targets


def _who(c: NewCustomer) -> str:
    return f"{c.email} ({c.stripe_customer_id})"


# ----- reconcile: the ledger side of `starter.py reconcile` --------------------------------

RECONCILE_PAYMENT_COLUMNS = f"{PAYMENT_COLUMNS}, stripe_customer_id"

RECONCILE_PAYMENTS = f"""
SELECT {RECONCILE_PAYMENT_COLUMNS} FROM payments
WHERE billing_period = $1
ORDER BY created_at, id"""

RECONCILE_PAYMENTS_OF_CUSTOMER = f"""
SELECT {RECONCILE_PAYMENT_COLUMNS} FROM payments
WHERE stripe_customer_id = $1 AND billing_period = $2
ORDER BY created_at, id"""

PAYMENTS_BY_IDS = f"SELECT {PAYMENT_COLUMNS} FROM payments WHERE id = ANY($1::uuid[])"

APPEND_RECONCILE_ACTION = """
INSERT INTO reconcile_actions (billing_period, intent_id, payment_id, action, outcome, amount,
                               currency)
VALUES ($1, $2, $3, $4, $5, $6, $7)"""

RECONCILE_ACTIONS_OF_PERIOD = """
SELECT billing_period, intent_id, payment_id, action, outcome, amount, currency, occurred_at
FROM reconcile_actions WHERE billing_period = $1 ORDER BY id"""


class BilledPayment(PaymentRecord):
    """A payment with the Stripe customer it bills (copied from the customer at `bill` time)."""

    stripe_customer_id: str


class ReconcileLedger(Ledger):
    """Reads for the comparison with Stripe, and the record of what `reconcile --fix` did."""

    @classmethod
    def sharing_pool_of(cls, ledger: Ledger) -> "ReconcileLedger":
        return cls(ledger._pool)

    async def billed_payments(self, period: str) -> list[BilledPayment]:
        """The period's payments, each with the Stripe customer it bills."""
        rows = await self._pool.fetch(RECONCILE_PAYMENTS, period)
        return [BilledPayment(**dict(r)) for r in rows]

    async def billed_payments_of(self, stripe_customer_id: str, period: str) -> list[BilledPayment]:
        """The payments that bill one Stripe customer for the period: one, or none."""
        rows = await self._pool.fetch(RECONCILE_PAYMENTS_OF_CUSTOMER, stripe_customer_id, period)
        return [BilledPayment(**dict(r)) for r in rows]

    async def payments_by_ids(self, ids: Iterable[str]) -> dict[str, PaymentRecord]:
        """Known payments among `ids`, which must all be UUIDs."""
        rows = await self._pool.fetch(PAYMENTS_BY_IDS, sorted(set(ids)))
        return {r["id"]: PaymentRecord(**dict(r)) for r in rows}

    async def record_reconcile_action(
        self,
        period: str,
        intent_id: str,
        payment_id: str | None,
        action: str,
        outcome: str,
        amount: int | None,
        currency: str | None,
    ) -> None:
        await self._pool.execute(
            APPEND_RECONCILE_ACTION,
            period,
            intent_id,
            payment_id,
            action,
            outcome,
            amount,
            currency,
        )

    async def reconcile_actions(self, period: str) -> list[dict[str, Any]]:
        return [dict(r) for r in await self._pool.fetch(RECONCILE_ACTIONS_OF_PERIOD, period)]
