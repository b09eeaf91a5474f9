"""Benchmark customers: N Stripe customers with a Visa test card attached, in the sandbox
(while its latency and rate limits are still off) and in the ledger."""

from __future__ import annotations

import asyncio

from bench.pacing import stripe_client
from billing.ledger import Ledger
from billing.models import NewCustomer

SEED_CONCURRENCY = 32


async def seed_customers(ledger: Ledger, sandbox_url: str, n: int) -> list[NewCustomer]:
    client = stripe_client(sandbox_url, pace_per_endpoint=None)
    slots = asyncio.Semaphore(SEED_CONCURRENCY)

    async def one(number: int) -> NewCustomer:
        email = f"bench-{number:06d}@example.com"
        async with slots:
            customer = await client.v1.customers.create_async(
                {"email": email}, {"idempotency_key": f"bench_customer_{number}"}
            )
            method = await client.v1.payment_methods.attach_async(
                "pm_card_visa",
                {"customer": customer.id},
                {"idempotency_key": f"bench_attach_{number}"},
            )
        return NewCustomer(
            email=email,
            stripe_customer_id=customer.id,
            payment_method_id=method.id,
            monthly_amount=500 + (number * 137) % 9500,
            currency="usd",
        )

    customers = list(await asyncio.gather(*(one(i) for i in range(n))))
    await ledger.upsert_customers(customers)
    return customers
