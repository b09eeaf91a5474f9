"""The demo's customers asked for 3-D Secure (billing/demo.py), against the sandbox: on Stripe
their URLs are only shown; a page that refuses the customer is reported, not passed."""

from datetime import UTC, datetime

import aiohttp

from billing.constants import PaymentStatus
from billing.demo import AuthenticatingCustomers
from billing.models import PaymentRecord
from stripe_sandbox import Sandbox

NOW = datetime(2026, 11, 2, tzinfo=UTC)


def waiting(payment_id: str, url: str | None) -> PaymentRecord:
    return PaymentRecord(
        id=payment_id,
        customer_id="c",
        billing_period="2026-11",
        amount=500,
        currency="usd",
        status=PaymentStatus.ACTION_REQUIRED,
        stripe_payment_intent_id="pi_x",
        amount_received=None,
        failure_code="authentication_required",
        failure_message=None,
        generation=1,
        next_action_url=url,
        created_at=NOW,
        updated_at=NOW,
    )


async def test_on_stripe_the_urls_are_shown_once_and_nothing_is_opened() -> None:
    url = "https://hooks.stripe.invalid/3ds/pi_x"
    async with aiohttp.ClientSession() as http:
        pass  # closed: any request through it would raise
    customers = AuthenticatingCustomers(http, play=False)
    payments = [waiting("p1", url), waiting("p2", None)]
    assert await customers.visit(payments) == [f"payment p1 waits for 3-D Secure: open {url}"]
    assert await customers.visit(payments) == []


async def test_a_page_that_refuses_is_reported(sandbox: Sandbox) -> None:
    url = f"{sandbox.url}/_sandbox/3ds/pi_unknown"  # no such intent: the complete is refused
    async with aiohttp.ClientSession() as http:
        customers = AuthenticatingCustomers(http, play=True)
        [line] = await customers.visit([waiting("p1", url)])
    assert line.startswith(f"payment p1: 3-D Secure not passed at {url}: POST ")
    assert "/_sandbox/payment_intents/pi_unknown/3ds/complete answered 4" in line
