"""The customer's side of 3D Secure: a PaymentIntent in `requires_action` is authenticated
(then charged, as Stripe does once the customer returns) or fails authentication.

Follows https://stripe.com/docs/payments/3d-secure and the PaymentIntent lifecycle in
https://stripe.com/docs/payments/paymentintents/lifecycle.
"""

from __future__ import annotations

import copy
import html

from . import events
from .customers import get_payment_method, test_card_of
from .errors import StripeError
from .payment_intents import authorize
from .store import AccountState, Json

_FAILURE_CODE = "payment_intent_authentication_failure"
_FAILURE_MESSAGE = (
    "The provided PaymentMethod has failed authentication. You can provide "
    "payment_method_data or a new PaymentMethod to attempt to fulfill this PaymentIntent again."
)


class AuthenticationError(ValueError):
    """The intent is not waiting for authentication."""


class UnknownIntent(AuthenticationError):
    pass


def _waiting_intent(state: AccountState, intent_id: str) -> Json:
    intent = state.payment_intents.get(intent_id)
    if intent is None:
        raise UnknownIntent(f"no PaymentIntent {intent_id}")
    if intent["status"] != "requires_action":
        raise AuthenticationError(
            f"PaymentIntent {intent_id} has status {intent['status']}, not requires_action"
        )
    return intent


def complete(state: AccountState, intent_id: str) -> Json:
    """The customer passed 3D Secure: the card is charged now. With manual capture the intent
    becomes `requires_capture` (`payment_intent.amount_capturable_updated`); a card that
    declines after authentication leaves it `requires_payment_method`."""
    intent = _waiting_intent(state, intent_id)
    card = test_card_of(state, intent["payment_method"])
    assert card is not None
    intent["next_action"] = None
    try:
        authorize(state, intent, card)
    except StripeError:
        pass  # the decline is on the intent (last_payment_error) and in its events
    finally:
        state.index_for_search(intent)
    return intent


def fail(state: AccountState, intent_id: str) -> Json:
    """The customer failed 3D Secure: `requires_payment_method` with `last_payment_error`."""
    intent = _waiting_intent(state, intent_id)
    intent["status"] = "requires_payment_method"
    intent["next_action"] = None
    intent["last_payment_error"] = {
        "code": _FAILURE_CODE,
        "doc_url": "https://stripe.com/docs/error-codes/" + _FAILURE_CODE.replace("_", "-"),
        "message": _FAILURE_MESSAGE,
        "payment_method": copy.deepcopy(get_payment_method(state, intent["payment_method"])),
        "type": "invalid_request_error",
    }
    state.index_for_search(intent)
    events.record(state, "payment_intent.payment_failed", intent)
    return intent


def page(intent_id: str, intent: Json | None) -> str:
    """The page `next_action.redirect_to_url.url` shows: what to call to pass or fail."""
    status = "unknown PaymentIntent" if intent is None else f"status {intent['status']}"
    base = f"/_sandbox/payment_intents/{html.escape(intent_id)}/3ds"
    return (
        "<!doctype html><title>Sandbox 3D Secure</title>"
        f"<h1>3D Secure for {html.escape(intent_id)}</h1><p>{html.escape(status)}</p>"
        f'<form method="post" action="{base}/complete"><button>Complete</button></form>'
        f'<form method="post" action="{base}/fail"><button>Fail</button></form>'
    )
