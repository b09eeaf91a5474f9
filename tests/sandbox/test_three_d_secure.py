"""3-D Secure test cards: off-session declines, on-session requires_action, and the customer
passing or failing authentication through the control API."""

from __future__ import annotations

import aiohttp
import pytest
import stripe

from stripe_sandbox import Sandbox
from stripe_sandbox.webhooks import WebhookSettings

from .conftest import SandboxFactory, sdk_client
from .helpers import authorize_params
from .webhook_receiver import Receiver

NEEDS_AUTHENTICATION = [
    "pm_card_authenticationRequired",
    "pm_card_authenticationRequiredOnSetup",
    "pm_card_threeDSecure2Required",
    "pm_card_threeDSecureRequired",
]


async def on_session(
    client: stripe.StripeClient, payment_method: str, return_url: str | None = None
) -> stripe.PaymentIntent:
    params = authorize_params(payment_method)
    del params["off_session"]
    if return_url is not None:
        params["return_url"] = return_url
    return await client.v1.payment_intents.create_async(params)


def event_types(sandbox: Sandbox) -> list[str]:
    return [event["type"] for event in sandbox.events()]


@pytest.mark.parametrize("payment_method", NEEDS_AUTHENTICATION)
async def test_off_session_fails_with_authentication_required(
    sandbox: Sandbox, client: stripe.StripeClient, payment_method: str
) -> None:
    with pytest.raises(stripe.CardError) as failed:
        await client.v1.payment_intents.create_async(authorize_params(payment_method))
    assert failed.value.http_status == 402
    assert failed.value.code == "authentication_required"
    assert failed.value.error is not None and failed.value.error.payment_intent is not None
    assert failed.value.error.payment_intent.status == "requires_payment_method"
    assert event_types(sandbox) == ["payment_intent.created", "payment_intent.payment_failed"]


@pytest.mark.parametrize("payment_method", NEEDS_AUTHENTICATION)
async def test_on_session_requires_action_with_a_redirect_to_the_sandbox(
    sandbox: Sandbox, client: stripe.StripeClient, payment_method: str
) -> None:
    intent = await on_session(client, payment_method, return_url="https://shop.test/back")
    assert intent.status == "requires_action"
    assert intent.next_action is not None
    assert intent.next_action.type == "redirect_to_url"
    redirect = intent.next_action.redirect_to_url
    assert redirect is not None
    assert redirect.url == f"{sandbox.url}/_sandbox/3ds/{intent.id}"
    assert redirect.return_url == "https://shop.test/back"
    assert event_types(sandbox) == ["payment_intent.created", "payment_intent.requires_action"]


async def test_card_set_up_for_off_session_needs_authentication_on_session_only(
    client: stripe.StripeClient,
) -> None:
    card = "pm_card_authenticationRequiredSetupForOffSession"
    off = await client.v1.payment_intents.create_async(authorize_params(card))
    assert off.status == "requires_capture"
    on = await on_session(client, card)
    assert on.status == "requires_action"
    optional = await on_session(client, "pm_card_threeDSecureOptional")
    assert optional.status == "requires_capture"


async def test_passing_authentication_authorizes_and_delivers_the_webhook(
    make_sandbox: SandboxFactory, receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    sandbox = await make_sandbox(webhook_settings=WebhookSettings(retry_base_ms=5))
    client = sdk_client(sandbox)
    endpoint = await client.v1.webhook_endpoints.create_async(
        {"url": receiver.url, "enabled_events": ["payment_intent.amount_capturable_updated"]}
    )
    intent = await on_session(client, "pm_card_authenticationRequired")
    assert intent.next_action is not None and intent.next_action.redirect_to_url is not None
    page_url = intent.next_action.redirect_to_url.url
    assert page_url is not None
    async with http.get(page_url) as response:  # the page the customer is sent to
        assert response.status == 200
        assert intent.id in await response.text()

    path = f"/_sandbox/payment_intents/{intent.id}/3ds/complete"
    async with http.post(sandbox.url + path) as response:
        assert response.status == 200
        assert (await response.json())["status"] == "requires_capture"
    [delivery] = await receiver.wait_for(1)
    assert endpoint.secret is not None
    event = stripe.Webhook.construct_event(delivery.payload, delivery.signature, endpoint.secret)
    assert event.type == "payment_intent.amount_capturable_updated"
    assert event.data.object["id"] == intent.id
    assert event.data.object["amount_capturable"] == 2000
    assert event.request is not None and event.request.id is None  # no API request caused it

    fetched = await client.v1.payment_intents.retrieve_async(intent.id)
    assert fetched.status == "requires_capture"
    assert fetched.next_action is None
    captured = await client.v1.payment_intents.capture_async(intent.id)
    assert captured.status == "succeeded"
    async with http.post(sandbox.url + path) as response:  # no longer waiting
        assert response.status == 400


async def test_failing_authentication_needs_a_new_payment_method(
    sandbox: Sandbox, client: stripe.StripeClient
) -> None:
    intent = await on_session(client, "pm_card_threeDSecure2Required")
    failed = sandbox.fail_authentication(intent.id)
    assert failed["status"] == "requires_payment_method"
    assert failed["next_action"] is None
    assert failed["last_payment_error"]["code"] == "payment_intent_authentication_failure"
    fetched = await client.v1.payment_intents.retrieve_async(intent.id)
    assert fetched.last_payment_error is not None
    assert fetched.last_payment_error.code == "payment_intent_authentication_failure"
    assert event_types(sandbox)[-1] == "payment_intent.payment_failed"
    with pytest.raises(ValueError):
        sandbox.complete_authentication(intent.id)


async def test_a_card_can_decline_after_authentication(
    sandbox: Sandbox, client: stripe.StripeClient
) -> None:
    card = "pm_card_authenticationRequiredChargeDeclinedInsufficientFunds"
    intent = await on_session(client, card)
    declined = sandbox.complete_authentication(intent.id)
    assert declined["status"] == "requires_payment_method"
    assert declined["last_payment_error"]["decline_code"] == "insufficient_funds"
    assert event_types(sandbox)[-2:] == ["charge.failed", "payment_intent.payment_failed"]


async def test_an_intent_waiting_for_authentication_can_be_canceled(
    sandbox: Sandbox, client: stripe.StripeClient, http: aiohttp.ClientSession
) -> None:
    intent = await on_session(client, "pm_card_authenticationRequired")
    canceled = await client.v1.payment_intents.cancel_async(
        intent.id, {"cancellation_reason": "abandoned"}
    )
    assert canceled.status == "canceled"
    assert event_types(sandbox)[-1] == "payment_intent.canceled"
    path = f"/_sandbox/payment_intents/{intent.id}/3ds/complete"
    async with http.post(sandbox.url + path) as response:
        assert response.status == 400
    async with http.post(sandbox.url + "/_sandbox/payment_intents/pi_nope/3ds/fail") as response:
        assert response.status == 404


async def test_confirm_of_an_existing_intent_takes_return_url(
    sandbox: Sandbox, client: stripe.StripeClient
) -> None:
    intent = await client.v1.payment_intents.create_async(
        {"amount": 2000, "currency": "usd", "payment_method": "pm_card_threeDSecure2Required"}
    )
    confirmed = await client.v1.payment_intents.confirm_async(
        intent.id, {"return_url": "https://shop.test/done"}
    )
    assert confirmed.status == "requires_action"
    assert confirmed.next_action is not None and confirmed.next_action.redirect_to_url is not None
    assert confirmed.next_action.redirect_to_url.return_url == "https://shop.test/done"
    authorized = sandbox.complete_authentication(intent.id)
    assert authorized["status"] == "succeeded"  # automatic capture
