"""Charges: the Charge object a confirmed PaymentIntent creates, its capture, and retrieve.

Follows https://stripe.com/docs/api/charges/object: every field of the object is present,
with a plausible value or null.
"""

from __future__ import annotations

from . import disputes
from .cards import TestCard
from .customers import get_payment_method
from .errors import resource_missing
from .form import Params
from .params import reject_unknown
from .store import AccountState, Json

# How many refunds a charge's embedded `refunds` list shows, newest first (Stripe's default
# page size); `has_more` says when there are more.
EMBEDDED_REFUNDS = 10
_DESCRIPTOR_PREFIX = "SANDBOX"
_RECEIPT_BASE = "https://pay.stripe.com/receipts/payment/"


def balance_transaction_id(object_id: str) -> str:
    """The balance transaction of a captured charge or a refund (not served itself)."""
    return "txn_" + object_id.partition("_")[2]


def _statement_descriptor(intent: Json) -> str:
    descriptor = intent["statement_descriptor"] or _DESCRIPTOR_PREFIX
    if intent["statement_descriptor_suffix"]:
        descriptor = f"{_DESCRIPTOR_PREFIX}* {intent['statement_descriptor_suffix']}"
    return str(descriptor)[:22].upper()


def _payment_method_details(payment_method: Json, amount: int) -> Json:
    card = payment_method["card"]
    return {
        "card": {
            "amount_authorized": amount,
            "authorization_code": None,
            "brand": card["brand"],
            "checks": {
                "address_line1_check": None,
                "address_postal_code_check": None,
                "cvc_check": "pass",
            },
            "country": card["country"],
            "exp_month": card["exp_month"],
            "exp_year": card["exp_year"],
            "extended_authorization": {"status": "disabled"},
            "fingerprint": card["fingerprint"],
            "funding": card["funding"],
            "incremental_authorization": {"status": "unavailable"},
            "installments": None,
            "last4": card["last4"],
            "mandate": None,
            "multicapture": {"status": "unavailable"},
            "network": card["brand"],
            "network_token": {"used": False},
            "network_transaction_id": None,
            "overcapture": {"maximum_amount_capturable": amount, "status": "unavailable"},
            "regulated_status": "unregulated",
            "three_d_secure": None,
            "wallet": None,
        },
        "type": "card",
    }


def _outcome(card: TestCard, *, failed: bool) -> Json:
    return {
        "advice_code": "try_again_later" if failed else None,
        "network_advice_code": None,
        "network_decline_code": "05" if failed else None,
        "network_status": "declined_by_network" if failed else "approved_by_network",
        "reason": card.decline_code if failed else None,
        "risk_level": "normal",
        "risk_score": 20,
        "seller_message": (
            "The bank did not return any further details with this decline."
            if failed
            else "Payment complete."
        ),
        "type": "issuer_declined" if failed else "authorized",
    }


def new_charge(
    state: AccountState, intent: Json, card: TestCard, *, failed: bool, captured: bool
) -> Json:
    """Create the charge of one confirmation attempt of `intent` with `card`."""
    charge_id = state.new_id("ch")
    payment_method = get_payment_method(state, intent["payment_method"])
    charge: Json = {
        "id": charge_id,
        "object": "charge",
        "amount": intent["amount"],
        "amount_captured": 0,
        "amount_refunded": 0,
        "application": None,
        "application_fee": None,
        "application_fee_amount": None,
        "balance_transaction": None,
        "billing_details": {**payment_method["billing_details"], "tax_id": None},
        "calculated_statement_descriptor": None if failed else _statement_descriptor(intent),
        "captured": False,
        "created": state.clock.now(),
        "currency": intent["currency"],
        "customer": intent["customer"],
        "description": intent["description"],
        "disputed": False,
        "failure_balance_transaction": None,
        "failure_code": "card_declined" if failed else None,
        "failure_message": card.decline_message if failed else None,
        "fraud_details": {},
        "livemode": state.livemode,
        "metadata": dict(intent["metadata"]),
        "on_behalf_of": None,
        "outcome": _outcome(card, failed=failed),
        "paid": not failed,
        "payment_intent": intent["id"],
        "payment_method": intent["payment_method"],
        "payment_method_details": _payment_method_details(payment_method, intent["amount"]),
        "receipt_email": intent["receipt_email"],
        "receipt_number": None,
        "receipt_url": _RECEIPT_BASE + charge_id.removeprefix("ch_"),
        "refunded": False,
        "refunds": {
            "object": "list",
            "data": [],
            "has_more": False,
            "total_count": 0,
            "url": f"/v1/charges/{charge_id}/refunds",
        },
        "review": None,
        "shipping": None,
        "source": None,
        "source_transfer": None,
        "statement_descriptor": intent["statement_descriptor"],
        "statement_descriptor_suffix": intent["statement_descriptor_suffix"],
        "status": "failed" if failed else "succeeded",
        "transfer_data": None,
        "transfer_group": intent["transfer_group"],
    }
    state.charges[charge_id] = charge
    if captured:
        capture_charge(state, charge, intent["amount"])
    return charge


def capture_charge(state: AccountState, charge: Json, amount: int) -> None:
    """Capture `amount` of the authorized charge; the rest of the hold is released."""
    charge["captured"] = True
    charge["amount_captured"] = amount
    charge["amount_refunded"] = charge["amount"] - amount
    charge["balance_transaction"] = balance_transaction_id(charge["id"])
    disputes.open_if_disputing_card(state, charge)


def add_refund(charge: Json, refund: Json) -> None:
    """Count a new refund on its charge: amount_refunded, refunded and the `refunds` list."""
    charge["amount_refunded"] += refund["amount"]
    charge["refunded"] = charge["amount_refunded"] >= charge["amount"]
    refunds = charge["refunds"]
    refunds["total_count"] += 1
    refunds["data"].insert(0, refund)
    del refunds["data"][EMBEDDED_REFUNDS:]
    refunds["has_more"] = refunds["total_count"] > EMBEDDED_REFUNDS


def get_charge(state: AccountState, charge_id: str, *, param: str = "id") -> Json:
    charge = state.charges.get(charge_id)
    if charge is None:
        raise resource_missing("charge", charge_id, param, status=404 if param == "id" else 400)
    return charge


def retrieve(state: AccountState, charge_id: str, params: Params) -> Json:
    reject_unknown(params, {"expand"})
    return get_charge(state, charge_id)
