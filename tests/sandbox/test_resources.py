"""Resources through the real SDK: customers, payment methods, PaymentIntents, sync and async."""

from __future__ import annotations

import asyncio

import pytest
import stripe

from stripe_sandbox import Sandbox

from .helpers import authorize_params, authorized_intent


async def test_customer_create_and_retrieve_async(client: stripe.StripeClient) -> None:
    created = await client.v1.customers.create_async(
        {"email": "ada@example.com", "name": "Ada", "metadata": {"account": "42"}}
    )
    fetched = await client.v1.customers.retrieve_async(created.id)
    assert fetched.id == created.id
    assert fetched.email == "ada@example.com"
    assert fetched.metadata is not None
    assert fetched.metadata.to_dict() == {"account": "42"}
    assert isinstance(fetched.created, int)


async def test_customer_create_and_retrieve_sync(client: stripe.StripeClient) -> None:
    created = await asyncio.to_thread(client.v1.customers.create, {"name": "Grace"})
    fetched = await asyncio.to_thread(client.v1.customers.retrieve, created.id)
    assert fetched.name == "Grace"


async def test_unknown_customer_is_404_resource_missing(client: stripe.StripeClient) -> None:
    with pytest.raises(stripe.InvalidRequestError) as failed:
        await client.v1.customers.retrieve_async("cus_nope")
    assert failed.value.http_status == 404
    assert failed.value.code == "resource_missing"


async def test_attach_test_payment_method_creates_a_customer_card(
    client: stripe.StripeClient,
) -> None:
    customer = await client.v1.customers.create_async({})
    attached = await client.v1.payment_methods.attach_async(
        "pm_card_mastercard", {"customer": customer.id}
    )
    assert attached.id.startswith("pm_") and attached.id != "pm_card_mastercard"
    assert attached.customer == customer.id
    assert attached.card is not None and attached.card.brand == "mastercard"
    fetched = await asyncio.to_thread(client.v1.payment_methods.retrieve, attached.id)
    assert fetched.customer == customer.id
    intent = await client.v1.payment_intents.create_async(
        authorize_params(attached.id, customer=customer.id)
    )
    assert intent.status == "requires_capture"


async def test_attached_declining_card_still_declines(client: stripe.StripeClient) -> None:
    customer = await client.v1.customers.create_async({})
    attached = await client.v1.payment_methods.attach_async(
        "pm_card_chargeDeclinedInsufficientFunds", {"customer": customer.id}
    )
    with pytest.raises(stripe.CardError) as failed:
        await client.v1.payment_intents.create_async(
            authorize_params(attached.id, customer=customer.id)
        )
    assert failed.value.error is not None
    assert failed.value.error.decline_code == "insufficient_funds"


async def test_attach_to_unknown_customer_fails(client: stripe.StripeClient) -> None:
    with pytest.raises(stripe.InvalidRequestError) as failed:
        await client.v1.payment_methods.attach_async("pm_card_visa", {"customer": "cus_nope"})
    assert failed.value.code == "resource_missing"


@pytest.mark.parametrize("payment_method", ["pm_card_visa", "pm_card_mastercard"])
async def test_successful_cards_authorize_for_manual_capture(
    client: stripe.StripeClient, payment_method: str
) -> None:
    intent = await client.v1.payment_intents.create_async(authorize_params(payment_method))
    assert intent.status == "requires_capture"
    assert intent.amount == 2000
    assert intent.amount_capturable == 2000
    assert intent.amount_received == 0
    assert isinstance(intent.latest_charge, str) and intent.latest_charge.startswith("ch_")
    assert intent.capture_method == "manual"


async def test_automatic_capture_succeeds_at_once(client: stripe.StripeClient) -> None:
    intent = await client.v1.payment_intents.create_async(
        authorize_params(capture_method="automatic")
    )
    assert intent.status == "succeeded"
    assert intent.amount_received == 2000
    assert intent.amount_capturable == 0


@pytest.mark.parametrize(
    ("payment_method", "decline_code"),
    [
        ("pm_card_chargeDeclined", "generic_decline"),
        ("pm_card_chargeDeclinedInsufficientFunds", "insufficient_funds"),
        ("pm_card_chargeDeclinedLostCard", "lost_card"),
        ("pm_card_chargeDeclinedStolenCard", "stolen_card"),
    ],
)
async def test_declines_are_402_card_errors_and_keep_the_intent(
    sandbox: Sandbox, client: stripe.StripeClient, payment_method: str, decline_code: str
) -> None:
    with pytest.raises(stripe.CardError) as failed:
        await client.v1.payment_intents.create_async(authorize_params(payment_method))
    error = failed.value
    assert error.http_status == 402
    assert error.code == "card_declined"
    assert error.error is not None
    assert error.error.type == "card_error"
    assert error.error.decline_code == decline_code
    declined = error.error.payment_intent
    assert declined is not None
    assert declined.status == "requires_payment_method"
    assert declined.last_payment_error is not None
    assert declined.last_payment_error.decline_code == decline_code
    fetched = await client.v1.payment_intents.retrieve_async(declined.id)
    assert fetched.status == "requires_payment_method"
    assert [pi["id"] for pi in sandbox.payment_intents()] == [declined.id]


async def test_authentication_required_declines_off_session(client: stripe.StripeClient) -> None:
    with pytest.raises(stripe.CardError) as failed:
        await client.v1.payment_intents.create_async(
            authorize_params("pm_card_authenticationRequired")
        )
    assert failed.value.http_status == 402
    assert failed.value.code == "authentication_required"
    assert failed.value.error is not None
    assert failed.value.error.decline_code == "authentication_required"
    assert failed.value.error.payment_intent is not None
    assert failed.value.error.payment_intent.status == "requires_payment_method"


async def test_authentication_required_on_session_needs_action(
    client: stripe.StripeClient,
) -> None:
    intent = await client.v1.payment_intents.create_async(
        {
            "amount": 2000,
            "currency": "usd",
            "payment_method": "pm_card_authenticationRequired",
            "confirm": True,
        }
    )
    assert intent.status == "requires_action"
    assert intent.next_action is not None


async def test_capture_succeeds_with_amount_to_capture(client: stripe.StripeClient) -> None:
    intent = await authorized_intent(client)
    captured = await client.v1.payment_intents.capture_async(intent.id, {"amount_to_capture": 1500})
    assert captured.status == "succeeded"
    assert captured.amount_received == 1500
    assert captured.amount_capturable == 0
    charge = await client.v1.payment_intents.retrieve_async(
        intent.id, {"expand": ["latest_charge"]}
    )
    assert isinstance(charge.latest_charge, stripe.Charge)
    assert charge.latest_charge.amount_captured == 1500


async def test_capture_sync(client: stripe.StripeClient) -> None:
    intent = await authorized_intent(client)
    captured = await asyncio.to_thread(client.v1.payment_intents.capture, intent.id)
    assert captured.status == "succeeded"
    assert captured.amount_received == 2000


async def test_capturing_twice_is_unexpected_state_not_a_second_charge(
    client: stripe.StripeClient,
) -> None:
    intent = await authorized_intent(client)
    await client.v1.payment_intents.capture_async(intent.id)
    with pytest.raises(stripe.InvalidRequestError) as failed:
        await client.v1.payment_intents.capture_async(intent.id)
    assert failed.value.http_status == 400
    assert failed.value.code == "payment_intent_unexpected_state"
    assert "status of succeeded" in str(failed.value.user_message)
    fetched = await client.v1.payment_intents.retrieve_async(intent.id)
    assert fetched.amount_received == 2000


async def test_capture_of_unconfirmed_intent_is_unexpected_state(
    client: stripe.StripeClient,
) -> None:
    intent = await client.v1.payment_intents.create_async({"amount": 900, "currency": "usd"})
    assert intent.status == "requires_payment_method"
    with pytest.raises(stripe.InvalidRequestError) as failed:
        await client.v1.payment_intents.capture_async(intent.id)
    assert failed.value.code == "payment_intent_unexpected_state"


async def test_cancel_authorization_with_reason(client: stripe.StripeClient) -> None:
    intent = await authorized_intent(client)
    canceled = await client.v1.payment_intents.cancel_async(
        intent.id, {"cancellation_reason": "requested_by_customer"}
    )
    assert canceled.status == "canceled"
    assert canceled.cancellation_reason == "requested_by_customer"
    assert canceled.amount_capturable == 0
    with pytest.raises(stripe.InvalidRequestError) as failed:
        await client.v1.payment_intents.capture_async(intent.id)
    assert failed.value.code == "payment_intent_unexpected_state"


async def test_cancel_sync_from_requires_payment_method(client: stripe.StripeClient) -> None:
    intent = await client.v1.payment_intents.create_async({"amount": 900, "currency": "usd"})
    canceled = await asyncio.to_thread(client.v1.payment_intents.cancel, intent.id)
    assert canceled.status == "canceled"
    assert canceled.cancellation_reason is None


@pytest.mark.parametrize("final", ["succeeded", "canceled"])
async def test_cancel_in_final_status_is_unexpected_state(
    client: stripe.StripeClient, final: str
) -> None:
    intent = await authorized_intent(client)
    if final == "succeeded":
        await client.v1.payment_intents.capture_async(intent.id)
    else:
        await client.v1.payment_intents.cancel_async(intent.id)
    with pytest.raises(stripe.InvalidRequestError) as failed:
        await client.v1.payment_intents.cancel_async(intent.id)
    assert failed.value.http_status == 400
    assert failed.value.code == "payment_intent_unexpected_state"
    assert f"status of {final}" in str(failed.value.user_message)


async def test_retrieve_async_sync_and_unknown(client: stripe.StripeClient) -> None:
    intent = await authorized_intent(client)
    fetched = await client.v1.payment_intents.retrieve_async(intent.id)
    fetched_sync = await asyncio.to_thread(client.v1.payment_intents.retrieve, intent.id)
    assert fetched.to_dict() == fetched_sync.to_dict() == intent.to_dict()
    for field in ("status", "amount", "amount_capturable", "amount_received", "latest_charge"):
        assert field in fetched
    for field in ("cancellation_reason", "last_payment_error", "metadata", "created"):
        assert field in fetched
    with pytest.raises(stripe.InvalidRequestError) as failed:
        await client.v1.payment_intents.retrieve_async("pi_unknown")
    assert failed.value.http_status == 404
    assert failed.value.code == "resource_missing"


async def test_validation_errors(client: stripe.StripeClient) -> None:
    with pytest.raises(stripe.InvalidRequestError) as missing:
        await client.v1.payment_intents.create_async({"currency": "usd"})  # type: ignore[typeddict-item]
    assert missing.value.code == "parameter_missing"
    assert missing.value.param == "amount"
    with pytest.raises(stripe.InvalidRequestError) as unknown_customer:
        await client.v1.payment_intents.create_async(
            {"amount": 900, "currency": "usd", "customer": "cus_nope"}
        )
    assert unknown_customer.value.code == "resource_missing"
    assert unknown_customer.value.param == "customer"


async def test_confirm_an_unconfirmed_intent(client: stripe.StripeClient) -> None:
    intent = await client.v1.payment_intents.create_async(
        {"amount": 900, "currency": "usd", "capture_method": "manual"}
    )
    confirmed = await client.v1.payment_intents.confirm_async(
        intent.id, {"payment_method": "pm_card_visa"}
    )
    assert confirmed.status == "requires_capture"
    assert confirmed.amount_capturable == 900
