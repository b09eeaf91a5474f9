"""The Stripe webhook receiver (billing/webhooks.py) with the real PostgreSQL, dev server and
worker, the sandbox delivering real signed webhooks to it: events stored once each and handed
to the running workflow or, once it is closed, to the ledger; duplicate and reordered
deliveries; what is refused with nothing written; a receiver killed between storing and
handing on; and the command's settings."""

import asyncio
import json
import time
import uuid
from typing import Any

import aiohttp
import asyncpg
import pytest
from stripe import StripeClient

from billing.constants import PaymentStatus, workflow_id
from billing.ledger import Ledger
from billing.ledger_stripe_events import StripeEventLedger
from billing.models import PaymentRecord
from billing.settings import Settings
from billing.stripe_client import make_stripe_client
from billing.stripe_event_facts import HANDLED_TYPES, StripeEventEnvelope
from billing.webhooks import main
from starter import execute
from stripe_sandbox import Sandbox
from stripe_sandbox.webhook_faults import WebhookFaultRule
from stripe_sandbox.webhooks import signature_header
from temporal_ops import payment_stripe_events, signal_stripe_event
from tests.support import add_customer, running_worker
from tests.webhook_support import IDLE_WITHIN_S, Hooks

PERIOD = "2026-11"
WINDOW = ["--capture-after", "1h"]  # the workflow waits, running, in its capture window


async def start_payment(
    hooks: Hooks, settings: Settings, card: str, *extra: str
) -> tuple[PaymentRecord, StripeClient]:
    stripe = make_stripe_client(settings)
    ledger = Ledger(hooks.pool)
    await add_customer(ledger, stripe, card)
    assert await execute(["bill", PERIOD, *extra], settings, hooks.env.client) == 0
    [payment] = await ledger.period_payments(PERIOD)
    return payment, stripe


async def workflow_closed(hooks: Hooks, payment_id: str) -> None:
    """`bill --wait` returns once the ledger says the payment ended; its workflow may still be
    finishing."""
    await hooks.env.client.get_workflow_handle(workflow_id(payment_id)).result()


async def wait_for_status(ledger: Ledger, payment_id: str, status: PaymentStatus) -> None:
    for _ in range(300):
        payment = await ledger.payment(payment_id)
        if payment is not None and payment.status == status:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"payment {payment_id} never became {status}")


async def ledger_facts(pool: asyncpg.Pool, payment_id: str) -> list[dict[str, Any]]:
    """The payment_events rows the receiver wrote: each a fact, from and to the same status."""
    facts = []
    for event in await Ledger(pool).events(payment_id):
        if event.detail.get("by") == "stripe_event":
            assert event.from_status == event.to_status
            facts.append({**event.detail, "status_then": event.to_status})
    return facts


def event_types(sandbox: Sandbox) -> dict[str, str]:
    return {event["id"]: event["type"] for event in sandbox.events()}


async def assert_each_event_stored_and_handed_once(
    hooks: Hooks, payment_id: str
) -> tuple[list[str], list[str]]:
    """Every event the sandbox made is stored once; each handled one reached either the
    workflow (its query) or the ledger (a payment_events fact), once. Returns the types that
    went to each, in order."""
    stored = await StripeEventLedger(hooks.pool).stored_events()
    sent = event_types(hooks.sandbox)
    assert sorted(row["id"] or "" for row in stored) == sorted(sent)
    by_workflow = [f.event_id for f in await payment_stripe_events(hooks.env.client, payment_id)]
    by_ledger = [f["event_id"] for f in await ledger_facts(hooks.pool, payment_id)]
    assert len(set(by_workflow)) == len(by_workflow)
    assert len(set(by_ledger)) == len(by_ledger)
    for row in stored:
        handed = (row["id"] in by_workflow, row["id"] in by_ledger)
        if row["type"] in HANDLED_TYPES:
            assert row["payment_id"] == payment_id
            expected = {"workflow": (True, False), "ledger": (False, True)}[row["handed_to"] or ""]
            assert handed == expected, row
        else:
            assert row["handed_to"] == "ignored" and handed == (False, False), row
    return [sent[e] for e in by_workflow], [sent[e] for e in by_ledger]


async def test_events_reach_the_running_workflow_then_the_ledger(
    hooks: Hooks, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """Authorized and waiting to capture, the workflow gets the event by signal. Cancelled,
    its workflow closes; what Stripe says after that lands in the ledger."""
    ledger = Ledger(hooks.pool)
    async with running_worker(settings, hooks.env.client), hooks.receiving():
        payment, _ = await start_payment(hooks, settings, "pm_card_visa", *WINDOW)
        await wait_for_status(ledger, payment.id, PaymentStatus.AUTHORIZED)
        await hooks.idle()
        [fact] = await payment_stripe_events(hooks.env.client, payment.id)
        assert fact.type == "payment_intent.amount_capturable_updated"
        assert (fact.status, fact.amount_capturable) == ("requires_capture", 2500)
        row = await ledger.payment(payment.id)
        assert row is not None and fact.intent_id == row.stripe_payment_intent_id
        assert fact.charge_id is not None and fact.charge_id.startswith("ch_")
        # Signals are at least once: the workflow keeps one fact per event id.
        assert await signal_stripe_event(hooks.env.client, payment.id, fact)
        assert await payment_stripe_events(hooks.env.client, payment.id) == [fact]

        assert await execute(["cancel", payment.id], settings, hooks.env.client) == 0
        await hooks.idle()
        to_workflow, to_ledger = await assert_each_event_stored_and_handed_once(hooks, payment.id)
        # The void's event races the workflow's end: it went to one of the two, once.
        assert sorted(to_workflow + to_ledger) == [
            "payment_intent.amount_capturable_updated",
            "payment_intent.canceled",
        ]
        for detail in await ledger_facts(hooks.pool, payment.id):
            assert detail["status_then"] == PaymentStatus.CANCELLED
    assert hooks.secret not in caplog.text


async def test_after_the_workflow_closed_events_are_ledger_facts(
    hooks: Hooks, settings: Settings
) -> None:
    """A captured payment is disputed at once (the sandbox's dispute card); the dispute is
    won and the payment refunded after its workflow ended: facts in payment_events, from and
    to `succeeded`, with what Stripe said."""
    async with running_worker(settings, hooks.env.client), hooks.receiving():
        payment, stripe = await start_payment(hooks, settings, "pm_card_createDispute", "--wait")
        await workflow_closed(hooks, payment.id)
        await hooks.idle()
        [dispute] = hooks.sandbox.disputes()
        hooks.sandbox.close_dispute(dispute["id"], "won")
        await stripe.v1.refunds.create_async({"payment_intent": dispute["payment_intent"]})
        await hooks.idle()
        to_workflow, to_ledger = await assert_each_event_stored_and_handed_once(hooks, payment.id)
    assert {"charge.dispute.closed", "charge.refunded"} <= set(to_ledger)
    assert "charge.dispute.created" in to_workflow + to_ledger
    facts = {fact["type"]: fact for fact in await ledger_facts(hooks.pool, payment.id)}
    closed, refunded = facts["charge.dispute.closed"], facts["charge.refunded"]
    assert (closed["dispute_id"], closed["dispute_status"]) == (dispute["id"], "won")
    assert closed["intent_id"] == dispute["payment_intent"]
    assert (refunded["amount_refunded"], refunded["charge_id"]) == (2500, dispute["charge"])
    assert closed["status_then"] == refunded["status_then"] == PaymentStatus.SUCCEEDED


@pytest.mark.parametrize(
    "fault",
    [
        WebhookFaultRule(kind="duplicate"),
        WebhookFaultRule(kind="reorder", hold=3),
    ],
    ids=["duplicate", "reorder"],
)
async def test_duplicates_and_reordering_change_nothing_wrongly(
    hooks: Hooks, settings: Settings, fault: WebhookFaultRule
) -> None:
    hooks.sandbox.webhooks.add_fault(fault)
    async with running_worker(settings, hooks.env.client), hooks.receiving():
        payment, stripe = await start_payment(hooks, settings, "pm_card_visa", "--wait")
        await workflow_closed(hooks, payment.id)
        assert payment.stripe_payment_intent_id is not None
        await stripe.v1.refunds.create_async({"payment_intent": payment.stripe_payment_intent_id})
        hooks.sandbox.webhooks.release()  # what a reorder still holds
        await hooks.idle()
        to_workflow, to_ledger = await assert_each_event_stored_and_handed_once(hooks, payment.id)
    stats = hooks.sandbox.webhooks.stats()
    assert stats["duplicated" if fault.kind == "duplicate" else "reordered"] > 0
    assert stats["gave_up"] == 0
    handled = sorted(to_workflow + to_ledger)
    assert handled == [
        "charge.refunded",
        "payment_intent.amount_capturable_updated",
        "payment_intent.succeeded",
    ]
    assert "charge.refunded" in to_ledger  # the refund came after the workflow ended
    # Every duplicate delivery was answered 200 as such; nothing failed.
    statuses = {d["status"] for d in hooks.sandbox.webhooks.deliveries()}
    assert statuses == {200}


def signed(hooks: Hooks, body: str, *, secret: str | None = None, at: int | None = None) -> str:
    return signature_header(body, secret or hooks.secret, at or int(time.time()))


def event_body(type_: str, obj: dict[str, Any]) -> str:
    return json.dumps(
        {
            "id": f"evt_{uuid.uuid4().hex[:24]}",
            "object": "event",
            "api_version": "2026-10-28.endive",
            "created": int(time.time()),
            "data": {"object": obj},
            "livemode": False,
            "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None},
            "type": type_,
        }
    )


async def post(hooks: Hooks, body: str, signature: str | None) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers["Stripe-Signature"] = signature
    async with (
        aiohttp.ClientSession() as session,
        session.post(hooks.url, data=body.encode(), headers=headers) as response,
    ):
        return response.status, await response.json()


async def written(pool: asyncpg.Pool) -> tuple[int, int]:
    return (
        await pool.fetchval("SELECT count(*) FROM stripe_events"),
        await pool.fetchval("SELECT count(*) FROM payment_events"),
    )


async def test_what_is_refused_writes_nothing(hooks: Hooks, settings: Settings) -> None:
    ledger = Ledger(hooks.pool)
    await add_customer(ledger, make_stripe_client(settings), "pm_card_visa")
    await ledger.create_period_payments(PERIOD)
    [payment] = await ledger.period_payments(PERIOD)
    ours = {"object": "payment_intent", "id": "pi_ours", "status": "succeeded"}
    good = event_body("payment_intent.succeeded", {**ours, "metadata": {"payment_id": payment.id}})
    before = await written(hooks.pool)
    refused = [
        (good, None, 400, "signature_invalid", "No Stripe-Signature header"),
        (good, signed(hooks, good, secret="whsec_other"), 400, "signature_invalid", "expected"),
        (
            good,
            signed(hooks, good, at=int(time.time()) - 301),
            400,
            "signature_invalid",
            "tolerance",
        ),
        ("{not json", signed(hooks, "{not json"), 400, "body_invalid", "not a Stripe event"),
        ('{"a": 1}', signed(hooks, '{"a": 1}'), 400, "body_invalid", "not a Stripe event"),
    ]
    unknown = [
        event_body(
            "payment_intent.succeeded", {**ours, "metadata": {"payment_id": str(uuid.uuid4())}}
        ),
        event_body("payment_intent.canceled", {**ours, "metadata": {"payment_id": "nope"}}),
        event_body("charge.refunded", {"object": "charge", "id": "ch_x", "payment_intent": "pi_x"}),
        event_body("charge.dispute.created", {"object": "dispute", "payment_intent": "pi_y"}),
    ]
    refused += [
        (b, signed(hooks, b), 404, "resource_missing", "no payment of ours") for b in unknown
    ]
    async with hooks.receiving():
        for body, signature, status, code, says in refused:
            answer = await post(hooks, body, signature)
            assert answer[0] == status, (body, answer)
            assert answer[1]["error"]["code"] == code
            assert says in answer[1]["error"]["message"]
            assert await written(hooks.pool) == before

        # The same event, signed right: stored and, no workflow having started, a ledger fact.
        assert (await post(hooks, good, signed(hooks, good)))[1]["handed_to"] == "ledger"
        assert await written(hooks.pool) == (before[0] + 1, before[1] + 1)
        # A type the receiver does not handle is stored and ignored, ours or not.
        other = event_body("customer.created", {"object": "customer", "id": "cus_x"})
        assert (await post(hooks, other, signed(hooks, other)))[1]["handed_to"] == "ignored"
        assert await written(hooks.pool) == (before[0] + 2, before[1] + 1)


async def test_a_receiver_killed_after_storing_hands_on_when_stripe_retries(
    hooks: Hooks, settings: Settings
) -> None:
    stored = asyncio.Event()

    async def die_after_store(event_id: str) -> None:
        stored.set()
        await asyncio.Event().wait()  # hangs until the receiver is stopped under it

    async with running_worker(settings, hooks.env.client):
        async with hooks.receiving(after_store=die_after_store):
            payment, _ = await start_payment(hooks, settings, "pm_card_visa", *WINDOW)
            async with asyncio.timeout(IDLE_WITHIN_S):
                await stored.wait()
            [row] = [
                r
                for r in await StripeEventLedger(hooks.pool).stored_events()
                if r["handed_to"] is None
            ]
            assert row["type"] == "payment_intent.amount_capturable_updated"
            assert await payment_stripe_events(hooks.env.client, payment.id) == []
        # Killed: the delivery in flight got no answer, so Stripe retries it.
        async with hooks.receiving():
            await hooks.idle()
            [fact] = await payment_stripe_events(hooks.env.client, payment.id)
            assert fact.event_id == row["id"]
            to_workflow, to_ledger = await assert_each_event_stored_and_handed_once(
                hooks, payment.id
            )
            assert (to_workflow, to_ledger) == (["payment_intent.amount_capturable_updated"], [])
            assert await ledger_facts(hooks.pool, payment.id) == []
            assert await execute(["cancel", payment.id], settings, hooks.env.client) == 0
            await hooks.idle()
    attempts = [d for d in hooks.sandbox.webhooks.deliveries() if d["event"] == row["id"]]
    assert attempts[0]["status"] is None and attempts[-1]["status"] == 200


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("STRIPE_WEBHOOK_SECRET", None, "STRIPE_WEBHOOK_SECRET is not set"),
        ("STRIPE_WEBHOOK_SECRET", "sk_test_not_a_webhook_secret", "not a webhook signing secret"),
        ("WEBHOOK_PORT", "0", "WEBHOOK_PORT"),
    ],
)
def test_a_bad_setting_exits_2_with_one_line(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    variable: str,
    value: str | None,
    says: str,
) -> None:
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", "whsec_fine")
    if value is None:
        monkeypatch.delenv(variable)
    else:
        monkeypatch.setenv(variable, value)
    assert main([]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], lines
    assert "sk_test_not_a_webhook_secret" not in lines[0]


async def test_a_fact_on_a_retrying_row_is_no_dunning_attempt(
    hooks: Hooks, settings: Settings
) -> None:
    """A fact is a payment_events row from and to `retrying`: the count of soft declines a
    resumed run goes on from counts only moves into `retrying`."""
    ledger = Ledger(hooks.pool)
    await add_customer(ledger, make_stripe_client(settings), "pm_card_visa")
    await ledger.create_period_payments(PERIOD)
    [payment] = await ledger.period_payments(PERIOD)
    await ledger.transition(payment.id, PaymentStatus.RETRYING, failure_code="insufficient_funds")
    failed = {"object": "payment_intent", "id": "pi_1", "metadata": {"payment_id": payment.id}}
    body = event_body("payment_intent.payment_failed", failed)
    async with hooks.receiving():
        assert (await post(hooks, body, signed(hooks, body)))[1]["handed_to"] == "ledger"
    [fact] = await ledger_facts(hooks.pool, payment.id)
    assert fact["status_then"] == PaymentStatus.RETRYING
    assert (await ledger.payment_state(payment.id)).dunning_attempts == 1


async def test_status_lists_the_payments_stripe_events(
    hooks: Hooks, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """A payment disputed at once, the dispute then won: `status` shows each event stored for
    it, in the order Stripe made them, with where it went; one stored and not handed on yet
    (a receiver that died in between) says so."""
    async with running_worker(settings, hooks.env.client), hooks.receiving():
        payment, _ = await start_payment(hooks, settings, "pm_card_createDispute", "--wait")
        await workflow_closed(hooks, payment.id)
        [dispute] = hooks.sandbox.disputes()
        hooks.sandbox.close_dispute(dispute["id"], "won")
        await hooks.idle()
    body = event_body(
        "charge.dispute.closed",
        {"object": "dispute", "id": "dp_late", "payment_intent": payment.stripe_payment_intent_id},
    )
    events = StripeEventLedger(hooks.pool)
    stored = await events.store(StripeEventEnvelope.model_validate_json(body), body, payment.id)
    assert stored.new and stored.handed_to is None
    capsys.readouterr()
    assert await execute(["status", payment.id], settings, hooks.env.client) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("stripe    ")]
    of_payment = await events.events_of(payment.id)
    assert [line.split()[4] for line in lines] == [e.id for e in of_payment]
    assert len(of_payment) >= 5  # charge.succeeded, the intent's, the dispute's two, the late one
    [late] = [line for line in lines if json.loads(body)["id"] in line]
    assert late.endswith("charge.dispute.closed " + json.loads(body)["id"] + " not handed on yet")
    shown = {line.split()[3]: line for line in lines if line != late}
    assert shown["charge.dispute.closed"].endswith("handed to ledger")
    assert shown["charge.dispute.created"].endswith(("handed to workflow", "handed to ledger"))
    assert shown["charge.succeeded"].endswith("ignored (a type not handled)")
