"""The Charge object in full, and the PaymentIntent fields added with it."""

from __future__ import annotations

import stripe

from stripe_sandbox import Sandbox

from .helpers import authorize_params, authorized_intent


async def _charge_of(client: stripe.StripeClient, intent: stripe.PaymentIntent) -> stripe.Charge:
    assert isinstance(intent.latest_charge, str)
    return await client.v1.charges.retrieve_async(intent.latest_charge)


async def test_an_authorized_charge_describes_its_card(client: stripe.StripeClient) -> None:
    intent = await client.v1.payment_intents.create_async(authorize_params("pm_card_mastercard"))
    charge = await _charge_of(client, intent)
    details = charge.payment_method_details
    assert details is not None and details.type == "card" and details.card is not None
    card = details.card
    assert (card.brand, card.last4, card.network, card.country) == (
        "mastercard",
        "4444",
        "mastercard",
        "US",
    )
    assert card.exp_month == 12 and card.exp_year == 2034
    assert card.checks is not None and card.checks.cvc_check == "pass"
    assert charge.billing_details.address is not None
    assert charge.captured is False and charge.amount_captured == 0
    assert charge.balance_transaction is None
    assert (charge.disputed, charge.refunded, charge.amount_refunded) == (False, False, 0)
    assert charge.refunds is not None and charge.refunds.data == []
    assert charge.outcome is not None and charge.outcome.type == "authorized"
    assert charge.receipt_url is not None and charge.receipt_url.startswith("https://")
    assert charge.calculated_statement_descriptor == "SANDBOX"


async def test_capture_books_a_balance_transaction(client: stripe.StripeClient) -> None:
    intent = await authorized_intent(client)
    await client.v1.payment_intents.capture_async(intent.id, {"amount_to_capture": 1500})
    charge = await _charge_of(client, intent)
    assert charge.captured is True
    assert charge.amount_captured == 1500
    assert charge.amount_refunded == 500  # the released rest of the hold
    assert isinstance(charge.balance_transaction, str)
    assert charge.balance_transaction.startswith("txn_")


async def test_a_declined_charge_says_why(sandbox: Sandbox, client: stripe.StripeClient) -> None:
    try:
        await client.v1.payment_intents.create_async(
            authorize_params("pm_card_chargeDeclinedInsufficientFunds")
        )
    except stripe.CardError as declined:
        assert declined.error is not None and isinstance(declined.error.charge, str)
        charge = await client.v1.charges.retrieve_async(declined.error.charge)
    else:
        raise AssertionError("the card should have declined")
    assert charge.status == "failed" and charge.paid is False
    assert charge.outcome is not None
    assert (charge.outcome.type, charge.outcome.reason) == ("issuer_declined", "insufficient_funds")
    assert charge.calculated_statement_descriptor is None


async def test_payment_intent_has_amount_details(client: stripe.StripeClient) -> None:
    intent = await authorized_intent(client)
    assert intent.amount_details is not None
    assert intent.amount_details.to_dict() == {"tip": {}}
    assert intent.excluded_payment_method_types is None
