"""Bill 20 customers through the real worker, the dev server, PostgreSQL and the sandbox; the
one asked for 3-D Secure passes it as the demo plays it, and the webhook receiver wakes its
payment."""

import asyncio

import aiohttp
import asyncpg
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from billing.constants import BILLING_PERIOD, PAYMENT_STATUS, PaymentStatus, workflow_id
from billing.demo import (
    NEEDS_3DS,
    AuthenticatingCustomers,
    demo_card,
    demo_email,
    seed_demo_customers,
)
from billing.ledger import Ledger
from billing.settings import Settings
from billing.stripe_client import make_stripe_client
from starter import execute
from stripe_sandbox import Sandbox
from tests.support import running_worker
from tests.webhook_support import Hooks

PERIOD = "2026-11"
CUSTOMERS = 20
EXPECTED_BY_CARD = {
    "pm_card_visa": (PaymentStatus.SUCCEEDED, None),
    "pm_card_mastercard": (PaymentStatus.SUCCEEDED, None),
    "pm_card_chargeDeclined": (PaymentStatus.FAILED, "generic_decline"),
    "pm_card_chargeDeclinedInsufficientFunds": (PaymentStatus.FAILED, "insufficient_funds"),
    NEEDS_3DS: (PaymentStatus.SUCCEEDED, None),
}


async def visible_count(client: Client, query: str, expected: int) -> int:
    """Visibility lags the workflow a little: wait, bounded, for the expected count."""
    count = -1
    for _ in range(100):
        count = (await client.count_workflows(query)).count
        if count == expected:
            break
        await asyncio.sleep(0.1)
    return count


async def pass_3ds(ledger: Ledger, http: aiohttp.ClientSession, customers: int) -> list[str]:
    """Play the demo's customers asked for 3-D Secure until `customers` of them passed it."""
    authenticating = AuthenticatingCustomers(http, play=True)
    lines = []
    for _ in range(600):
        lines += await authenticating.visit(await ledger.period_payments(PERIOD))
        if len(authenticating.visited) == customers:
            break
        await asyncio.sleep(0.1)
    return lines


async def test_a_month_is_billed_exactly_once(
    temporal_env: WorkflowEnvironment,
    pool: asyncpg.Pool,
    sandbox: Sandbox,
    settings: Settings,
    hooks: Hooks,
) -> None:
    client = temporal_env.client
    ledger = Ledger(pool)
    await seed_demo_customers(ledger, make_stripe_client(settings), count=CUSTOMERS)
    emails = await pool.fetch("SELECT id::text, email FROM customers")
    card_of_customer = {
        row["id"]: demo_card(int(row["email"].split("-")[1].split("@")[0])) for row in emails
    }
    assert {demo_email(n) for n in range(1, CUSTOMERS + 1)} == {r["email"] for r in emails}
    assert list(card_of_customer.values()).count(NEEDS_3DS) == 1

    async with running_worker(settings, client), hooks.receiving():
        billing = asyncio.create_task(execute(["bill", PERIOD, "--wait"], settings, client))
        async with aiohttp.ClientSession() as http:
            passed = await pass_3ds(ledger, http, customers=1)
        assert await billing == 0
        await hooks.idle()  # events about ended payments are facts in payment_events by now
        assert len(passed) == 1 and "the customer passed 3-D Secure" in passed[0], passed

        payments = await ledger.period_payments(PERIOD)
        assert len(payments) == CUSTOMERS
        intents_by_payment: dict[str, list[dict[str, object]]] = {}
        for intent in sandbox.payment_intents():
            metadata = intent["metadata"]
            assert isinstance(metadata, dict)
            intents_by_payment.setdefault(metadata["payment_id"], []).append(intent)

        for payment in payments:
            expected_status, expected_code = EXPECTED_BY_CARD[card_of_customer[payment.customer_id]]
            assert payment.status == expected_status, payment
            assert payment.failure_code == expected_code
            intents = intents_by_payment[payment.id]
            intent = intents[-1]
            assert intent["id"] == payment.stripe_payment_intent_id
            if expected_code != "insufficient_funds":
                assert len(intents) == 1
            events = [
                e.to_status
                for e in await ledger.events(payment.id)
                if e.detail.get("by") != "stripe_event"  # a fact the webhook brought
            ]
            if expected_status == PaymentStatus.SUCCEEDED:
                assert intent["status"] == "succeeded"
                assert intent["amount_received"] == payment.amount == payment.amount_received
                asked = (
                    ["action_required"]
                    if card_of_customer[payment.customer_id] == NEEDS_3DS
                    else []
                )
                assert events == ["pending", *asked, "authorized", "capturing", "succeeded"]
            elif expected_code == "insufficient_funds":  # a soft decline: retried once
                assert len(intents) == 2
                assert {i["status"] for i in intents} == {"requires_payment_method"}
                assert events == ["pending", "retrying", "pending", "failed"]
            else:
                assert intent["status"] == "requires_payment_method"
                assert intent["amount_received"] == 0
                assert events == ["pending", "failed"]

            handle = client.get_workflow_handle(workflow_id(payment.id))
            attributes = (await handle.describe()).typed_search_attributes
            assert attributes.get(PAYMENT_STATUS) == payment.status.value
            history = (await handle.fetch_history()).to_json()
            secret = settings.resolved_stripe_key()
            assert secret not in history

        succeeded = sum(p.status == PaymentStatus.SUCCEEDED for p in payments)
        query = (
            f'{BILLING_PERIOD.name}="{PERIOD}" AND {PAYMENT_STATUS.name}="succeeded"'
            f' AND TaskQueue="{settings.task_queue}"'  # other tests bill the same period
        )
        assert await visible_count(client, query, succeeded) == succeeded

        intents_before = sandbox.payment_intents()
        events_before = await pool.fetchval("SELECT count(*) FROM payment_events")
        assert await execute(["bill", PERIOD, "--wait"], settings, client) == 0
        assert sandbox.payment_intents() == intents_before
        assert await pool.fetchval("SELECT count(*) FROM payment_events") == events_before
        for payment in payments:
            runs = await client.count_workflows(f'WorkflowId="{workflow_id(payment.id)}"')
            assert runs.count == 1
