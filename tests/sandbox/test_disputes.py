"""Disputes through Stripe's test card pm_card_createDispute, and closing them."""

from __future__ import annotations

import aiohttp
import pytest
import stripe

from stripe_sandbox import Sandbox

from .helpers import authorize_params, authorized_intent


async def _disputed_intent(client: stripe.StripeClient) -> stripe.PaymentIntent:
    return await client.v1.payment_intents.create_async(
        authorize_params("pm_card_createDispute", capture_method="automatic")
    )


async def test_the_dispute_card_pays_then_its_charge_is_disputed(
    sandbox: Sandbox, client: stripe.StripeClient
) -> None:
    intent = await _disputed_intent(client)
    assert intent.status == "succeeded"
    assert isinstance(intent.latest_charge, str)
    charge = await client.v1.charges.retrieve_async(intent.latest_charge)
    assert charge.disputed is True and charge.paid is True
    listed = await client.v1.disputes.list_async({"payment_intent": intent.id})
    assert len(listed.data) == 1
    dispute = await client.v1.disputes.retrieve_async(listed.data[0].id)
    assert (dispute.status, dispute.reason, dispute.amount) == (
        "needs_response",
        "fraudulent",
        2000,
    )
    assert dispute.charge == charge.id
    assert dispute.evidence_details.due_by is not None
    assert dispute.evidence_details.due_by > dispute.created
    by_charge = await client.v1.disputes.list_async({"charge": charge.id})
    assert [d.id for d in by_charge.data] == [dispute.id]
    assert ("charge.dispute.created", dispute.id) in sandbox.happened()


async def test_a_manual_capture_is_disputed_only_once_captured(client: stripe.StripeClient) -> None:
    intent = await client.v1.payment_intents.create_async(authorize_params("pm_card_createDispute"))
    assert intent.status == "requires_capture"
    assert (await client.v1.disputes.list_async()).data == []
    await client.v1.payment_intents.capture_async(intent.id)
    assert len((await client.v1.disputes.list_async()).data) == 1


async def test_other_cards_are_not_disputed(client: stripe.StripeClient) -> None:
    intent = await authorized_intent(client)
    await client.v1.payment_intents.capture_async(intent.id)
    assert (await client.v1.disputes.list_async()).data == []
    with pytest.raises(stripe.InvalidRequestError) as missing:
        await client.v1.disputes.retrieve_async("dp_nope")
    assert missing.value.http_status == 404


async def test_a_chargeback_blocks_refunds_until_won(
    sandbox: Sandbox, client: stripe.StripeClient
) -> None:
    intent = await _disputed_intent(client)
    with pytest.raises(stripe.InvalidRequestError) as blocked:
        await client.v1.refunds.create_async({"payment_intent": intent.id})
    assert blocked.value.code == "charge_disputed"
    dispute = sandbox.disputes()[0]
    closed = sandbox.close_dispute(dispute["id"], "won")
    assert closed["status"] == "won"
    refund = await client.v1.refunds.create_async({"payment_intent": intent.id})
    assert refund.amount == 2000


async def test_control_api_closes_a_dispute_once(
    sandbox: Sandbox, client: stripe.StripeClient, http: aiohttp.ClientSession
) -> None:
    await _disputed_intent(client)
    async with http.get(f"{sandbox.url}/_sandbox/disputes") as response:
        (dispute,) = await response.json()
    close = f"{sandbox.url}/_sandbox/disputes/{dispute['id']}/close"
    async with http.post(close, json={"outcome": "maybe"}) as response:
        assert response.status == 400
    async with http.post(close, json={"outcome": "lost"}) as response:
        assert response.status == 200
        assert (await response.json())["status"] == "lost"
    async with http.post(close, json={"outcome": "won"}) as response:
        assert response.status == 400
    nope = f"{sandbox.url}/_sandbox/disputes/dp_nope/close"
    async with http.post(nope, json={"outcome": "won"}) as response:
        assert response.status == 404
    fetched = await client.v1.disputes.retrieve_async(dispute["id"])
    assert fetched.status == "lost" and fetched.is_charge_refundable is False
    assert sandbox.happened()[-1] == ("charge.dispute.closed", dispute["id"])


async def test_an_inquiry_closes_as_warning_closed(
    sandbox: Sandbox, client: stripe.StripeClient
) -> None:
    await client.v1.payment_intents.create_async(
        authorize_params("pm_card_createDisputeInquiry", capture_method="automatic")
    )
    (dispute,) = sandbox.disputes()
    assert dispute["status"] == "warning_needs_response"
    assert sandbox.close_dispute(dispute["id"], "won")["status"] == "warning_closed"
