"""/v1/refunds through the SDK: create, retrieve, update, list, what a refund does to its
charge, and a refund failing later."""

from __future__ import annotations

import aiohttp
import pytest
import stripe

from stripe_sandbox import FaultRule, Sandbox

from .conftest import auth
from .helpers import authorize_params, authorized_intent
from .test_contract import assert_conforms


async def _paid_intent(client: stripe.StripeClient, amount: int = 2000) -> stripe.PaymentIntent:
    return await client.v1.payment_intents.create_async(
        authorize_params(amount=amount, capture_method="automatic")
    )


async def test_refund_of_an_intent_defaults_to_all_that_remains(
    sandbox: Sandbox, client: stripe.StripeClient
) -> None:
    intent = await _paid_intent(client)
    refund = await client.v1.refunds.create_async(
        {"payment_intent": intent.id, "reason": "requested_by_customer", "metadata": {"t": "1"}}
    )
    assert refund.id.startswith("re_")
    assert (refund.amount, refund.status, refund.reason) == (
        2000,
        "succeeded",
        "requested_by_customer",
    )
    assert refund.charge == intent.latest_charge
    assert refund.payment_intent == intent.id
    assert isinstance(refund.charge, str)
    charge = await client.v1.charges.retrieve_async(refund.charge)
    assert (charge.amount_refunded, charge.refunded) == (2000, True)
    assert charge.refunds is not None
    assert [r.id for r in charge.refunds.data] == [refund.id]
    assert sandbox.happened()[-2:] == [
        ("refund.created", refund.id),
        ("charge.refunded", charge.id),
    ]


async def test_partial_refunds_add_up_then_nothing_remains(client: stripe.StripeClient) -> None:
    intent = await _paid_intent(client)
    assert isinstance(intent.latest_charge, str)
    first = await client.v1.refunds.create_async({"charge": intent.latest_charge, "amount": 500})
    with pytest.raises(stripe.InvalidRequestError) as too_much:
        await client.v1.refunds.create_async({"payment_intent": intent.id, "amount": 1600})
    assert too_much.value.http_status == 400
    assert too_much.value.code == "amount_too_large"
    assert too_much.value.param == "amount"
    assert "($15.00)" in str(too_much.value.user_message)
    rest = await client.v1.refunds.create_async({"payment_intent": intent.id})
    assert rest.amount == 1500
    charge = await client.v1.charges.retrieve_async(intent.latest_charge)
    assert (charge.amount_refunded, charge.refunded) == (2000, True)
    assert charge.refunds is not None
    assert [r.id for r in charge.refunds.data] == [rest.id, first.id]
    with pytest.raises(stripe.InvalidRequestError) as again:
        await client.v1.refunds.create_async({"payment_intent": intent.id})
    assert again.value.code == "charge_already_refunded"


async def test_a_partially_captured_charge_refunds_only_what_was_captured(
    client: stripe.StripeClient,
) -> None:
    intent = await authorized_intent(client)
    await client.v1.payment_intents.capture_async(intent.id, {"amount_to_capture": 1200})
    refund = await client.v1.refunds.create_async({"payment_intent": intent.id})
    assert refund.amount == 1200


async def test_an_uncaptured_intent_cannot_be_refunded(client: stripe.StripeClient) -> None:
    intent = await authorized_intent(client)
    with pytest.raises(stripe.InvalidRequestError) as failed:
        await client.v1.refunds.create_async({"payment_intent": intent.id})
    assert failed.value.http_status == 400
    assert failed.value.code == "charge_not_refundable"
    assert isinstance(intent.latest_charge, str)
    with pytest.raises(stripe.InvalidRequestError) as by_charge:
        await client.v1.refunds.create_async({"charge": intent.latest_charge})
    assert by_charge.value.code == "charge_not_refundable"


async def test_refund_needs_a_known_charge_or_intent(client: stripe.StripeClient) -> None:
    with pytest.raises(stripe.InvalidRequestError) as neither:
        await client.v1.refunds.create_async({})
    assert neither.value.code == "parameter_missing"
    with pytest.raises(stripe.InvalidRequestError) as unknown:
        await client.v1.refunds.create_async({"charge": "ch_nope"})
    assert unknown.value.code == "resource_missing"
    intent = await _paid_intent(client)
    with pytest.raises(stripe.InvalidRequestError) as bad_reason:
        await client.v1.refunds.create_async(
            {"payment_intent": intent.id, "reason": "bored"}  # type: ignore[typeddict-item]
        )
    assert bad_reason.value.param == "reason"


async def test_refund_create_is_idempotent(sandbox: Sandbox, client: stripe.StripeClient) -> None:
    intent = await _paid_intent(client)
    options: stripe.RequestOptions = {"idempotency_key": "refund_1"}
    first = await client.v1.refunds.create_async(
        {"payment_intent": intent.id, "amount": 700}, options
    )
    again = await client.v1.refunds.create_async(
        {"payment_intent": intent.id, "amount": 700}, options
    )
    assert again.id == first.id
    assert sandbox.stats()["objects"]["refunds"] == 1
    assert sandbox.stats()["replays"] == 1


async def test_retrieve_update_and_list(client: stripe.StripeClient) -> None:
    one, two = await _paid_intent(client), await _paid_intent(client)
    a = await client.v1.refunds.create_async({"payment_intent": one.id, "amount": 100})
    b = await client.v1.refunds.create_async({"payment_intent": one.id, "amount": 100})
    c = await client.v1.refunds.create_async({"payment_intent": two.id})
    fetched = await client.v1.refunds.retrieve_async(a.id)
    assert fetched.amount == 100
    updated = await client.v1.refunds.update_async(a.id, {"metadata": {"case": "42"}})
    assert updated.metadata is not None and updated.metadata.to_dict() == {"case": "42"}
    cleared = await client.v1.refunds.update_async(a.id, {"metadata": {"case": ""}})
    assert cleared.metadata is not None and cleared.metadata.to_dict() == {}
    everything = await client.v1.refunds.list_async()
    assert [r.id for r in everything.data] == [c.id, b.id, a.id]
    of_one = await client.v1.refunds.list_async({"payment_intent": one.id, "limit": 1})
    assert [r.id for r in of_one.data] == [b.id] and of_one.has_more
    after = await client.v1.refunds.list_async({"payment_intent": one.id, "starting_after": b.id})
    assert [r.id for r in after.data] == [a.id] and not after.has_more
    assert isinstance(two.latest_charge, str)
    of_charge = await client.v1.refunds.list_async({"charge": two.latest_charge})
    assert [r.id for r in of_charge.data] == [c.id]
    with pytest.raises(stripe.InvalidRequestError) as missing:
        await client.v1.refunds.retrieve_async("re_nope")
    assert missing.value.http_status == 404


async def test_refund_endpoints_take_faults(sandbox: Sandbox, client: stripe.StripeClient) -> None:
    intent = await _paid_intent(client)
    sandbox.add_fault(FaultRule(kind="error_before", endpoint="refunds.create", nth=1))
    with pytest.raises(stripe.APIError):
        await client.v1.refunds.create_async({"payment_intent": intent.id})
    refund = await client.v1.refunds.create_async({"payment_intent": intent.id})
    assert refund.amount == 2000
    assert sandbox.stats()["by_endpoint"]["refunds.create"] == 2


async def test_a_refund_the_issuer_sends_back_fails_as_stripes_do(
    sandbox: Sandbox, client: stripe.StripeClient, http: aiohttp.ClientSession
) -> None:
    """`POST /_sandbox/refunds/{id}/fail`: the refund turns `failed` with Stripe's fields, its
    money is refundable again, and Stripe's three events follow; only once."""
    intent = await _paid_intent(client)
    refund = await client.v1.refunds.create_async({"payment_intent": intent.id, "amount": 700})
    fail = f"{sandbox.url}/_sandbox/refunds/{refund.id}/fail"
    async with http.post(fail, json={"failure_reason": "card_on_fire"}) as response:
        assert response.status == 400
    async with http.post(fail, json={}) as response:
        assert response.status == 200
        failed = await response.json()
    assert (failed["status"], failed["failure_reason"]) == ("failed", "expired_or_canceled_card")
    assert failed["failure_balance_transaction"].startswith("txn_")
    async with http.get(f"{sandbox.url}/v1/refunds/{refund.id}", headers=auth()) as response:
        assert_conforms("refund", await response.json())
    fetched = await client.v1.refunds.retrieve_async(refund.id)
    assert (fetched.status, fetched.failure_reason) == ("failed", "expired_or_canceled_card")
    assert isinstance(intent.latest_charge, str)
    charge = await client.v1.charges.retrieve_async(intent.latest_charge)
    assert (charge.amount_refunded, charge.refunded) == (0, False)
    assert charge.refunds is not None and charge.refunds.data[0].status == "failed"
    assert sandbox.happened()[-3:] == [
        ("charge.refund.updated", refund.id),
        ("refund.updated", refund.id),
        ("refund.failed", refund.id),
    ]
    async with http.post(fail, json={}) as response:
        assert response.status == 400  # failed already
    async with http.post(f"{sandbox.url}/_sandbox/refunds/re_nope/fail", json={}) as response:
        assert response.status == 404
    again = await client.v1.refunds.create_async({"payment_intent": intent.id})
    assert again.amount == 2000  # what the failed refund held is refundable again
    assert sandbox.fail_refund(again.id, "lost_or_stolen_card")["failure_reason"] == (
        "lost_or_stolen_card"
    )
