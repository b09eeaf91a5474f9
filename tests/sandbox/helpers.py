"""Shared request builders for the sandbox contract tests."""

from __future__ import annotations

from typing import Literal

import stripe
from stripe.params import PaymentIntentCreateParams


def authorize_params(
    payment_method: str = "pm_card_visa",
    *,
    amount: int = 2000,
    customer: str | None = None,
    payment_id: str = "pay_1",
    capture_method: Literal["automatic", "automatic_async", "manual"] = "manual",
) -> PaymentIntentCreateParams:
    """The request the billing core sends to authorize: confirm off-session, manual capture."""
    params: PaymentIntentCreateParams = {
        "amount": amount,
        "currency": "usd",
        "payment_method": payment_method,
        "confirm": True,
        "off_session": True,
        "capture_method": capture_method,
        "metadata": {"payment_id": payment_id},
    }
    if customer is not None:
        params["customer"] = customer
    return params


async def authorized_intent(
    client: stripe.StripeClient,
    payment_id: str = "pay_1",
    *,
    customer: str | None = None,
    key: str | None = None,
) -> stripe.PaymentIntent:
    options: stripe.RequestOptions = {"idempotency_key": key} if key else {}
    return await client.v1.payment_intents.create_async(
        authorize_params(payment_id=payment_id, customer=customer), options
    )
