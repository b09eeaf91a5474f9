"""Helpers shared by the integration tests."""

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from stripe import StripeClient
from temporalio.client import Client

from billing.ledger import Ledger
from billing.models import NewCustomer
from billing.settings import Settings
from stripe_sandbox import Sandbox
from worker import run_worker


@asynccontextmanager
async def running_worker(settings: Settings, client: Client) -> AsyncIterator[None]:
    """The real worker (`worker.run_worker`) in this process, stopped gracefully at the end."""
    stop = asyncio.Event()
    task = asyncio.create_task(run_worker(stop, settings, client))
    try:
        yield
    finally:
        stop.set()
        await task


async def add_customer(
    ledger: Ledger, stripe: StripeClient, card: str, *, amount: int = 2500
) -> str:
    """A Stripe customer with `card` attached, imported into the ledger; returns its email."""
    email = f"{uuid.uuid4().hex[:12]}@example.com"
    customer = await stripe.v1.customers.create_async({"email": email})
    method = await stripe.v1.payment_methods.attach_async(card, {"customer": customer.id})
    await ledger.upsert_customers(
        [
            NewCustomer(
                email=email,
                stripe_customer_id=customer.id,
                payment_method_id=method.id,
                monthly_amount=amount,
                currency="usd",
            )
        ]
    )
    return email


def intents_of(sandbox: Sandbox, payment_id: str) -> list[dict[str, Any]]:
    """The sandbox's PaymentIntents created for one payment, oldest first."""
    return [i for i in sandbox.payment_intents() if i["metadata"].get("payment_id") == payment_id]
