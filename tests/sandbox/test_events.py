"""Events: what the sandbox records for PaymentIntents and charges, and /v1/events."""

from __future__ import annotations

from datetime import timedelta

import pytest
import stripe

from stripe_sandbox import Sandbox

from .helpers import authorize_params, authorized_intent


def types(sandbox: Sandbox) -> list[str]:
    return [event["type"] for event in sandbox.events()]


async def test_authorize_and_capture_record_stripes_events(
    sandbox: Sandbox, client: stripe.StripeClient
) -> None:
    intent = await authorized_intent(client, key="pay_1_auth_1")
    assert types(sandbox) == [
        "payment_intent.created",
        "charge.succeeded",
        "payment_intent.amount_capturable_updated",
    ]
    await client.v1.payment_intents.capture_async(intent.id)
    assert types(sandbox)[3:] == ["charge.captured", "payment_intent.succeeded"]
    created, charged, capturable, captured, succeeded = sandbox.events()
    # data.object is the object as it was when the event happened
    assert created["data"]["object"]["status"] == "requires_confirmation"
    assert capturable["data"]["object"]["status"] == "requires_capture"
    assert capturable["data"]["object"]["amount_capturable"] == 2000
    assert charged["data"]["object"]["captured"] is False
    assert captured["data"]["object"]["captured"] is True
    assert succeeded["data"]["object"]["status"] == "succeeded"
    assert succeeded["data"]["object"]["id"] == intent.id
    assert created["id"].startswith("evt_") and created["object"] == "event"
    assert created["livemode"] is False
    assert created["pending_webhooks"] == 0
    assert created["api_version"]


async def test_an_event_names_the_request_that_caused_it(
    sandbox: Sandbox, client: stripe.StripeClient
) -> None:
    intent = await authorized_intent(client, key="pay_1_auth_1")
    assert intent.last_response is not None
    request = {"id": intent.last_response.request_id, "idempotency_key": "pay_1_auth_1"}
    assert [event["request"] for event in sandbox.events()] == [request] * 3
    replayed = await authorized_intent(client, key="pay_1_auth_1")
    assert replayed.id == intent.id
    assert len(sandbox.events()) == 3  # a replay executes nothing, so records nothing


async def test_automatic_capture_decline_and_cancel(
    sandbox: Sandbox, client: stripe.StripeClient
) -> None:
    await client.v1.payment_intents.create_async(
        authorize_params(capture_method="automatic", payment_id="auto")
    )
    assert types(sandbox) == [
        "payment_intent.created",
        "charge.succeeded",
        "payment_intent.succeeded",
    ]
    with pytest.raises(stripe.CardError):
        await client.v1.payment_intents.create_async(authorize_params("pm_card_chargeDeclined"))
    assert types(sandbox)[3:] == [
        "payment_intent.created",
        "charge.failed",
        "payment_intent.payment_failed",
    ]
    failed = sandbox.events()[-1]["data"]["object"]
    assert failed["last_payment_error"]["decline_code"] == "generic_decline"
    intent = await authorized_intent(client)
    await client.v1.payment_intents.cancel_async(intent.id)
    assert types(sandbox)[-1] == "payment_intent.canceled"


async def test_an_expired_authorization_is_canceled_by_no_request(
    sandbox: Sandbox, client: stripe.StripeClient
) -> None:
    intent = await authorized_intent(client)
    sandbox.clock.advance(timedelta(days=7))
    last = sandbox.events()[-1]
    assert last["type"] == "payment_intent.canceled"
    assert last["data"]["object"]["id"] == intent.id
    assert last["data"]["object"]["cancellation_reason"] == "automatic"
    assert last["request"] == {"id": None, "idempotency_key": None}
    assert last["created"] == sandbox.clock.now()


async def test_list_and_retrieve_events_through_the_sdk(
    sandbox: Sandbox, client: stripe.StripeClient
) -> None:
    for n in range(3):
        intent = await authorized_intent(client, payment_id=f"pay_{n}")
        await client.v1.payment_intents.capture_async(intent.id)
    newest_first = [event["id"] for event in reversed(sandbox.events())]
    assert len(newest_first) == 15

    page = await client.v1.events.list_async({"limit": 4})
    assert [event.id for event in page.data] == newest_first[:4]
    assert page.has_more
    after = await client.v1.events.list_async({"limit": 4, "starting_after": page.data[-1].id})
    assert [event.id for event in after.data] == newest_first[4:8]
    before = await client.v1.events.list_async({"limit": 2, "ending_before": after.data[0].id})
    assert [event.id for event in before.data] == newest_first[2:4]
    every = [event.id async for event in (await client.v1.events.list_async()).auto_paging_iter()]
    assert every == newest_first

    captured = await client.v1.events.list_async({"type": "charge.captured"})
    assert [event.type for event in captured.data] == ["charge.captured"] * 3
    charges = await client.v1.events.list_async({"type": "charge.*"})
    assert {event.type for event in charges.data} == {"charge.succeeded", "charge.captured"}
    assert len(charges.data) == 6

    fetched = await client.v1.events.retrieve_async(newest_first[0])
    assert fetched.type == "payment_intent.succeeded"
    assert isinstance(fetched.data.object, stripe.PaymentIntent)
    assert fetched.data.object.status == "succeeded"
    assert fetched.request is not None and fetched.request.id is not None
    assert fetched.request.id.startswith("req_")


async def test_unknown_event_and_bad_cursor(client: stripe.StripeClient) -> None:
    with pytest.raises(stripe.InvalidRequestError) as missing:
        await client.v1.events.retrieve_async("evt_nope")
    assert missing.value.http_status == 404
    assert missing.value.code == "resource_missing"
    with pytest.raises(stripe.InvalidRequestError) as cursor:
        await client.v1.events.list_async({"starting_after": "evt_nope"})
    assert cursor.value.http_status == 400
