"""The sandbox clock: authorization expiry after 7 days, as Stripe releases uncaptured holds."""

from __future__ import annotations

from datetime import timedelta

import aiohttp
import pytest
import stripe

from stripe_sandbox import Sandbox

from .helpers import authorized_intent


async def test_clock_advances_created_timestamps(
    sandbox: Sandbox, client: stripe.StripeClient
) -> None:
    before = sandbox.clock.now()
    sandbox.clock.advance(timedelta(days=30))
    customer = await client.v1.customers.create_async({})
    assert customer.created >= before + 30 * 86400


async def test_uncaptured_authorization_expires_after_7_days(
    sandbox: Sandbox, client: stripe.StripeClient
) -> None:
    intent = await authorized_intent(client)
    sandbox.clock.advance(timedelta(days=6, hours=23))
    still = await client.v1.payment_intents.retrieve_async(intent.id)
    assert still.status == "requires_capture"
    sandbox.clock.advance(timedelta(hours=1))
    expired = await client.v1.payment_intents.retrieve_async(intent.id)
    assert expired.status == "canceled"
    assert expired.cancellation_reason == "automatic"
    assert expired.amount_capturable == 0
    with pytest.raises(stripe.InvalidRequestError) as failed:
        await client.v1.payment_intents.capture_async(intent.id)
    assert failed.value.code == "payment_intent_unexpected_state"


async def test_captured_intents_do_not_expire(
    sandbox: Sandbox, client: stripe.StripeClient
) -> None:
    intent = await authorized_intent(client)
    await client.v1.payment_intents.capture_async(intent.id)
    sandbox.clock.advance(timedelta(days=8))
    assert [pi["status"] for pi in sandbox.payment_intents()] == ["succeeded"]


async def test_clock_is_advanced_through_the_control_api(
    sandbox: Sandbox, client: stripe.StripeClient, http: aiohttp.ClientSession
) -> None:
    intent = await authorized_intent(client)
    start = sandbox.clock.now()
    async with http.post(f"{sandbox.url}/_sandbox/clock/advance", json={"days": 7}) as response:
        assert response.status == 200
        assert (await response.json())["now"] >= start + 7 * 86400
    fetched = await client.v1.payment_intents.retrieve_async(intent.id)
    assert fetched.status == "canceled"
