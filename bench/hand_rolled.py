"""The baseline: the hand-rolled two-phase billing loop that teams write without Temporal.

asyncio and asyncpg, no engine. One row per payment moves
`initial -> authorized -> success` (or `failed`):

1. create and confirm an uncaptured PaymentIntent under `pay_<id>_auth_1`;
2. store its id (`initial -> authorized`), with an audit event in the same transaction;
3. capture it under `pay_<id>_capture_1` (an intent already captured counts as captured);
4. mark the row `success`.

Its recovery scan is the loop itself: every pass picks up each row of the period that is not
final and carries it on from its stored state, so a process that died anywhere is resumed by
running it again. Transient Stripe answers (429, 409, 5xx, network) are retried under the same
key with backoff, a bounded number of times; a row that runs out of attempts is left for the
next pass. Every loop is bounded in count and time.

    python -m bench.hand_rolled --database-url URL --stripe-base URL --period 2026-11 \
        --stats-out FILE [--concurrency 100] [--pace-per-endpoint 24]

It prints `ready` once connected, waits for a line on stdin, then bills the period.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import stripe

from bench.pacing import stripe_client
from bench.sqlcount import CountingConnection, counting_pool

SCHEMA = """
CREATE TABLE IF NOT EXISTS hand_rolled_payments (
    id                        uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    customer_id               uuid NOT NULL REFERENCES customers (id),
    billing_period            char(7) NOT NULL,
    amount                    bigint NOT NULL,
    currency                  char(3) NOT NULL,
    status                    text NOT NULL DEFAULT 'initial'
        CHECK (status IN ('initial', 'authorized', 'success', 'failed')),
    stripe_payment_intent_id  text UNIQUE,
    amount_received           bigint,
    failure_code              text,
    created_at                timestamptz NOT NULL DEFAULT now(),
    finalized_at              timestamptz,
    UNIQUE (customer_id, billing_period)
);
CREATE TABLE IF NOT EXISTS hand_rolled_events (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    payment_id   uuid NOT NULL REFERENCES hand_rolled_payments (id),
    from_status  text NOT NULL,
    to_status    text NOT NULL,
    occurred_at  timestamptz NOT NULL DEFAULT now()
);
"""

CREATE_ROWS = """
INSERT INTO hand_rolled_payments (customer_id, billing_period, amount, currency)
SELECT id, $1, monthly_amount, currency FROM customers WHERE active
ON CONFLICT (customer_id, billing_period) DO NOTHING"""

UNFINISHED = """
SELECT p.id::text AS id, p.amount, p.currency, p.status, p.stripe_payment_intent_id,
       c.stripe_customer_id, c.payment_method_id
FROM hand_rolled_payments p JOIN customers c ON c.id = p.customer_id
WHERE p.billing_period = $1 AND p.status IN ('initial', 'authorized')
ORDER BY p.created_at, p.id"""

MOVE = """
UPDATE hand_rolled_payments SET
    status = $3,
    stripe_payment_intent_id = COALESCE($4, stripe_payment_intent_id),
    amount_received = COALESCE($5, amount_received),
    failure_code = COALESCE($6, failure_code),
    finalized_at = CASE WHEN $3 IN ('success', 'failed') THEN now() ELSE finalized_at END
WHERE id = $1::uuid AND status = $2"""

APPEND_EVENT = """
INSERT INTO hand_rolled_events (payment_id, from_status, to_status) VALUES ($1::uuid, $2, $3)"""

ATTEMPTS_PER_CALL = 30
MAX_BACKOFF_S = 5.0
MAX_PASSES = 5


class TransientStripeError(Exception):
    """Retried under the same key; after too many attempts the row waits for the next pass."""


@dataclass
class Tally:
    rate_limited: int = 0
    transient_retries: int = 0
    given_up: int = 0
    succeeded: int = 0
    failed: int = 0
    errors: int = 0


class HandRolledBilling:
    def __init__(self, pool: asyncpg.Pool, client: stripe.StripeClient) -> None:
        self._pool = pool
        self._stripe = client
        self.tally = Tally()

    async def migrate(self) -> None:
        async with self._pool.acquire() as conn:
            await conn.execute(SCHEMA)

    async def launch(self, period: str) -> None:
        async with self._pool.acquire() as conn:
            await conn.execute(CREATE_ROWS, period)

    async def run(self, period: str, concurrency: int, deadline: float) -> None:
        """Recovery scan and billing loop in one: pass over the unfinished rows until none is
        left, at most MAX_PASSES times and until `deadline`."""
        for _ in range(MAX_PASSES):
            rows = await self._pool.fetch(UNFINISHED, period)
            if not rows or time.monotonic() >= deadline:
                return
            queue: asyncio.Queue[asyncpg.Record] = asyncio.Queue()
            for row in rows:
                queue.put_nowait(row)
            workers = [self._drain(queue, deadline) for _ in range(min(concurrency, len(rows)))]
            await asyncio.gather(*workers)

    async def _drain(self, queue: asyncio.Queue[asyncpg.Record], deadline: float) -> None:
        while not queue.empty() and time.monotonic() < deadline:
            row = queue.get_nowait()
            try:
                await self._bill(row)
            except TransientStripeError:
                self.tally.given_up += 1
            except stripe.StripeError:
                self.tally.errors += 1

    async def _bill(self, row: asyncpg.Record) -> None:
        payment_id: str = row["id"]
        intent_id: str | None = row["stripe_payment_intent_id"]
        if row["status"] == "initial":
            try:
                intent = await self._call(
                    lambda: self._stripe.v1.payment_intents.create_async(
                        {
                            "amount": row["amount"],
                            "currency": row["currency"].strip(),
                            "customer": row["stripe_customer_id"],
                            "payment_method": row["payment_method_id"],
                            "confirm": True,
                            "off_session": True,
                            "capture_method": "manual",
                            "metadata": {"payment_id": payment_id},
                        },
                        {"idempotency_key": f"pay_{payment_id}_auth_1"},
                    )
                )
            except stripe.CardError as err:
                await self._move(payment_id, "initial", "failed", failure_code=err.code)
                self.tally.failed += 1
                return
            if intent.status != "requires_capture":
                await self._move(payment_id, "initial", "failed", failure_code=intent.status)
                self.tally.failed += 1
                return
            intent_id = intent.id
            await self._move(payment_id, "initial", "authorized", intent_id=intent_id)
        assert intent_id is not None
        captured = await self._capture(payment_id, intent_id)
        await self._move(payment_id, "authorized", "success", amount_received=captured)
        self.tally.succeeded += 1

    async def _capture(self, payment_id: str, intent_id: str) -> int:
        try:
            intent = await self._call(
                lambda: self._stripe.v1.payment_intents.capture_async(
                    intent_id, options={"idempotency_key": f"pay_{payment_id}_capture_1"}
                )
            )
        except stripe.InvalidRequestError as err:
            if err.code != "payment_intent_unexpected_state":
                raise
            intent = await self._call(
                lambda: self._stripe.v1.payment_intents.retrieve_async(intent_id)
            )
            if intent.status != "succeeded":
                raise
        return int(intent.amount_received)

    async def _call(self, request: Any) -> Any:
        """One Stripe call, retried under the same key on transient answers."""
        for attempt in range(ATTEMPTS_PER_CALL):
            try:
                return await request()
            except stripe.RateLimitError:
                self.tally.rate_limited += 1
            except (stripe.APIConnectionError, stripe.APIError) as err:
                if isinstance(err, stripe.APIError) and (err.http_status or 500) < 500:
                    raise
                self.tally.transient_retries += 1
            except stripe.IdempotencyError:
                raise
            except stripe.StripeError as err:
                if err.http_status != 409:
                    raise
                self.tally.transient_retries += 1
            backoff = min(MAX_BACKOFF_S, 0.1 * 2**attempt)
            await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
        raise TransientStripeError("Stripe kept answering with transient errors")

    async def _move(
        self,
        payment_id: str,
        from_status: str,
        to_status: str,
        *,
        intent_id: str | None = None,
        amount_received: int | None = None,
        failure_code: str | None = None,
    ) -> None:
        """A guarded transition with its audit event; a replay changes nothing."""
        async with self._pool.acquire() as conn, conn.transaction():
            moved = await conn.execute(
                MOVE, payment_id, from_status, to_status, intent_id, amount_received, failure_code
            )
            if moved == "UPDATE 1":
                await conn.execute(APPEND_EVENT, payment_id, from_status, to_status)


async def serve(args: argparse.Namespace) -> dict[str, Any]:
    pool = await counting_pool(args.database_url, max_size=args.pool_size)
    try:
        billing = HandRolledBilling(
            pool, stripe_client(args.stripe_base, pace_per_endpoint=args.pace_per_endpoint)
        )
        await billing.migrate()
        CountingConnection.counter.statements = 0
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        deadline = time.monotonic() + args.max_seconds
        cpu_at_go = own_cpu_seconds()
        await billing.launch(args.period)
        await billing.run(args.period, args.concurrency, deadline)
        # The loop exits when it is done, often before the benchmark reads its CPU from
        # outside, so it reports its own.
        run_cpu = own_cpu_seconds() - cpu_at_go
    finally:
        await pool.close()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "sql_statements": CountingConnection.counter.statements,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "run_cpu_seconds": run_cpu,
        **billing.tally.__dict__,
    }


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--stripe-base", required=True)
    parser.add_argument("--period", required=True)
    parser.add_argument("--stats-out", type=Path, required=True)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--pool-size", type=int, default=10)
    parser.add_argument("--pace-per-endpoint", type=float, default=None)
    parser.add_argument("--max-seconds", type=float, default=900.0)
    return parser


def main() -> None:
    args = build_parser().parse_args()
    stats = asyncio.run(serve(args))
    args.stats_out.write_text(json.dumps(stats))


if __name__ == "__main__":
    main()
