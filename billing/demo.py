"""Demo customers: seeded into Stripe (or the sandbox) and Postgres; safe to repeat. Those
whose bank asks for 3-D Secure pass it at the sandbox's page (`AuthenticatingCustomers`)."""

import asyncio
import html
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TypeVar
from urllib.parse import urljoin

import aiohttp
import stripe

from billing.constants import PaymentStatus
from billing.ledger import Ledger
from billing.models import NewCustomer, PaymentEvent, PaymentRecord
from billing.stripe_client import read_retried

DEMO_CUSTOMERS = 50

# A card whose bank asks the customer to authenticate (3-D Secure) before it pays.
NEEDS_3DS = "pm_card_authenticationRequired"
# Most cards pay; a few decline in each of the ways the workflow must handle, and one in
# eleven needs 3-D Secure (customers 10, 21, 32 and 43 of the 50).
DEMO_CARDS = (
    ["pm_card_visa"] * 6
    + ["pm_card_mastercard"] * 2
    + ["pm_card_chargeDeclined", "pm_card_chargeDeclinedInsufficientFunds", NEEDS_3DS]
)
DEMO_CURRENCIES = ("usd", "eur")
# The demo's own dunning schedule, short enough to show a soft decline retried and then failed
# within its wait. `bill` follows DUNNING_SCHEDULE (1, 3 and 5 days by default).
DEMO_DUNNING = (timedelta(seconds=8), timedelta(seconds=16))
# How long the demo waits for the payments to end before it reports.
DEMO_WAIT = timedelta(seconds=40)
# The demo's billing run reads its counts this often while only dunning retries remain, so
# that it ends soon after them.
DEMO_RUN_IDLE = timedelta(seconds=5)


# Seeding is a burst of calls that Stripe's rate limit (25/s in test mode) may refuse.
RATE_LIMIT_ATTEMPTS = 8
T = TypeVar("T")


async def paced(call: Callable[[], Awaitable[T]]) -> T:
    """Run a Stripe write, waiting out 429s with backoff. Every write here carries an
    idempotency key, so repeating it is safe; reads go through `read_retried`."""
    for attempt in range(RATE_LIMIT_ATTEMPTS):
        try:
            return await call()
        except stripe.RateLimitError:
            if attempt == RATE_LIMIT_ATTEMPTS - 1:
                raise
            await asyncio.sleep(min(0.25 * 2**attempt, 5.0))
    raise AssertionError("unreachable")


def demo_email(number: int) -> str:
    return f"demo-{number:03d}@example.com"


def demo_card(number: int) -> str:
    return DEMO_CARDS[number % len(DEMO_CARDS)]


async def _stripe_customer_exists(client: stripe.StripeClient, customer_id: str) -> bool:
    try:
        await read_retried(lambda: client.v1.customers.retrieve_async(customer_id))
    except stripe.InvalidRequestError as err:
        if err.http_status == 404:
            return False
        raise
    return True


async def _create_in_stripe(client: stripe.StripeClient, email: str, card: str) -> tuple[str, str]:
    """A Stripe customer with the test card attached, keyed by email so a retry replays."""
    customer = await paced(
        lambda: client.v1.customers.create_async(
            {"email": email, "description": "demo customer"},
            {"idempotency_key": f"demo_customer_{email}"},
        )
    )
    method = await paced(
        lambda: client.v1.payment_methods.attach_async(
            card,
            {"customer": customer.id},
            {"idempotency_key": f"demo_attach_{email}_{customer.id}"},
        )
    )
    return customer.id, method.id


async def seed_demo_customers(
    ledger: Ledger, client: stripe.StripeClient, count: int = DEMO_CUSTOMERS
) -> list[NewCustomer]:
    """Reuse each demo customer that Stripe still knows; create the others."""
    customers = []
    for number in range(1, count + 1):
        email = demo_email(number)
        known = await ledger.stripe_ids_of(email)
        if known is None or not await _stripe_customer_exists(client, known[0]):
            known = await _create_in_stripe(client, email, demo_card(number))
        customers.append(
            NewCustomer(
                email=email,
                stripe_customer_id=known[0],
                payment_method_id=known[1],
                monthly_amount=500 + (number * 137) % 9500,
                currency=DEMO_CURRENCIES[number % len(DEMO_CURRENCIES)],
            )
        )
    await ledger.upsert_customers(customers)
    return customers


def next_retry(events: Sequence[PaymentEvent], schedule: Sequence[timedelta]) -> datetime | None:
    """When a payment waiting in dunning tries again: the schedule counts from its first soft
    decline. None when it is not waiting, or its schedule is not known here."""
    declines = [
        e  # a move into retrying; a Stripe event's fact stays in its status (from = to)
        for e in events
        if e.to_status == PaymentStatus.RETRYING and e.from_status != PaymentStatus.RETRYING
    ]
    if not declines or events[-1].to_status != PaymentStatus.RETRYING:
        return None
    if len(declines) > len(schedule):
        return None
    return declines[0].occurred_at + schedule[len(declines) - 1]


def went_through_3ds(events: Sequence[PaymentEvent]) -> bool:
    """The payment waited for its customer to pass 3-D Secure at some point."""
    return any(e.to_status == PaymentStatus.ACTION_REQUIRED for e in events)


# The sandbox's 3-D Secure page holds a form per outcome; the customer passes with this one.
_COMPLETE_FORM = re.compile(r'<form\b[^>]*\baction="([^"]*/complete)"', re.IGNORECASE)
PAGE_TIMEOUT = aiohttp.ClientTimeout(total=10)


class AuthenticationNotPassed(Exception):
    """The 3-D Secure page did not answer, named no form to complete, or refused it."""


async def pass_authentication(http: aiohttp.ClientSession, url: str) -> str:
    """Play the customer at `url`, the page the payment recorded as its `next_action_url`: GET
    it, then POST the form whose action ends in `/complete`, as the sandbox's page offers.
    Returns the URL posted to."""
    try:
        async with http.get(url) as page:
            text = await page.text()
            if page.status != 200:
                raise AuthenticationNotPassed(f"GET {url} answered {page.status}")
        found = _COMPLETE_FORM.search(text)
        if found is None:
            raise AuthenticationNotPassed(f"{url} shows no form that completes 3-D Secure")
        action = urljoin(url, html.unescape(found.group(1)))
        async with http.post(action) as done:
            if done.status != 200:
                answer = (await done.text())[:200]
                raise AuthenticationNotPassed(f"POST {action} answered {done.status}: {answer}")
    except (aiohttp.ClientError, TimeoutError) as err:
        raise AuthenticationNotPassed(f"{url}: {type(err).__name__} {err}") from err
    return action


@dataclass
class AuthenticatingCustomers:
    """The customers of payments waiting for 3-D Secure (`action_required`), each visited once.
    With `play` (the embedded sandbox) they pass it at their payment's `next_action_url`;
    else (Stripe) the URL is only shown, for a person to open."""

    http: aiohttp.ClientSession
    play: bool
    visited: set[str] = field(default_factory=set)

    async def visit(self, payments: Sequence[PaymentRecord]) -> list[str]:
        """One line for each payment newly found waiting for its customer."""
        lines = []
        for payment in payments:
            url = payment.next_action_url
            if payment.status != PaymentStatus.ACTION_REQUIRED or payment.id in self.visited:
                continue
            if url is None:
                continue  # recorded without a redirect; nothing here can pass it
            self.visited.add(payment.id)
            if not self.play:
                lines.append(f"payment {payment.id} waits for 3-D Secure: open {url}")
                continue
            try:
                await pass_authentication(self.http, url)
            except AuthenticationNotPassed as err:
                lines.append(f"payment {payment.id}: 3-D Secure not passed at {url}: {err}")
                continue
            lines.append(f"payment {payment.id}: the customer passed 3-D Secure at {url}")
        return lines
