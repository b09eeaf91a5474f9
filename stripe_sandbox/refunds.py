"""Refunds: create, retrieve, update (metadata) and list, and a refund failing later.

Follows https://stripe.com/docs/api/refunds and https://stripe.com/docs/refunds: a refund
takes back part or all of a captured charge, named directly or through its PaymentIntent;
by default what remains unrefunded. Card refunds succeed at once in test mode. The card's
issuer may still send one back later (a closed or lost card): the refund turns `failed` with
a `failure_reason` and a `failure_balance_transaction`, the money returns to the charge, and
Stripe emits `charge.refund.updated`, `refund.updated` and `refund.failed`. Here the control
API (`fail`) plays the issuer.
"""

from __future__ import annotations

from . import disputes, events
from .charges import add_refund, balance_transaction_id, get_charge
from .errors import invalid_request, resource_missing
from .form import Params
from .listing import list_of_charges
from .params import get_choice, get_int, get_metadata, get_str, reject_unknown, update_metadata
from .store import AccountState, Json

_CREATE_PARAMS = {
    "amount",
    "charge",
    "expand",
    "instructions_email",
    "metadata",
    "payment_intent",
    "reason",
    "refund_application_fee",
    "reverse_transfer",
}
REASONS = ("duplicate", "fraudulent", "requested_by_customer")
# Stripe's `failure_reason` values for a card refund.
FAILURE_REASONS = ("expired_or_canceled_card", "lost_or_stolen_card", "unknown")


def _dollars(amount: int) -> str:
    return f"${amount / 100:,.2f}"


def _refundable_charge(state: AccountState, params: Params) -> Json:
    """The charge named by `charge` or `payment_intent`, checked to be refundable."""
    charge_id = get_str(params, "charge")
    intent_id = get_str(params, "payment_intent")
    if charge_id is None and intent_id is None:
        raise invalid_request(
            "One of the following params should be provided for this request: "
            "payment_intent or charge.",
            code="parameter_missing",
        )
    if intent_id is not None:
        intent = state.payment_intents.get(intent_id)
        if intent is None:
            raise resource_missing("payment_intent", intent_id, "payment_intent", status=400)
        if intent["status"] == "requires_capture":
            raise invalid_request(
                f"This PaymentIntent ({intent_id}) has not been captured: its authorization "
                "cannot be refunded. Cancel the PaymentIntent to release it.",
                param="payment_intent",
                code="charge_not_refundable",
                stored=True,
            )
        if intent["status"] != "succeeded" or intent["latest_charge"] is None:
            raise invalid_request(
                f"This PaymentIntent ({intent_id}) does not have a successful charge to refund.",
                param="payment_intent",
                code="charge_not_refundable",
                stored=True,
            )
        if charge_id is not None and charge_id != intent["latest_charge"]:
            raise invalid_request(
                f"Charge {charge_id} does not belong to PaymentIntent {intent_id}.",
                param="charge",
            )
        charge_id = intent["latest_charge"]
    assert charge_id is not None
    charge = get_charge(state, charge_id, param="charge")
    if charge["status"] != "succeeded" or not charge["captured"]:
        raise invalid_request(
            f"Charge {charge_id} has not been captured and cannot be refunded.",
            param="charge",
            code="charge_not_refundable",
            stored=True,
        )
    if disputes.blocks_refund(state, charge):
        raise invalid_request(
            f"Charge {charge_id} has been charged back; cannot issue a refund.",
            param="charge",
            code="charge_disputed",
            stored=True,
        )
    return charge


def _amount(params: Params, charge: Json) -> int:
    remaining = charge["amount"] - charge["amount_refunded"]
    if remaining <= 0:
        raise invalid_request(
            f"Charge {charge['id']} has already been refunded.",
            code="charge_already_refunded",
            stored=True,
        )
    amount = get_int(params, "amount")
    if amount is None:
        return int(remaining)
    if amount < 1:
        raise invalid_request(
            "Invalid positive integer", param="amount", code="parameter_invalid_integer"
        )
    if amount > remaining:
        raise invalid_request(
            f"Refund amount ({_dollars(amount)}) is greater than unrefunded amount on charge "
            f"({_dollars(remaining)})",
            param="amount",
            code="amount_too_large",
        )
    return amount


def create(state: AccountState, _: str, params: Params) -> Json:
    reject_unknown(params, _CREATE_PARAMS)
    reason = get_choice(params, "reason", REASONS)
    metadata = get_metadata(params)
    charge = _refundable_charge(state, params)
    amount = _amount(params, charge)
    refund_id = state.new_id("re")
    refund: Json = {
        "id": refund_id,
        "object": "refund",
        "amount": amount,
        "balance_transaction": balance_transaction_id(refund_id),
        "charge": charge["id"],
        "created": state.clock.now(),
        "currency": charge["currency"],
        "customer": charge["customer"],
        "customer_account": None,
        "destination_details": {
            "card": {
                "reference": None,
                "reference_status": "pending",
                "reference_type": "acquirer_reference_number",
                "type": "refund",
            },
            "type": "card",
        },
        "metadata": metadata,
        "payment_intent": charge["payment_intent"],
        "payment_method": charge["payment_method"],
        "reason": reason,
        "receipt_number": None,
        "source_transfer_reversal": None,
        "status": "succeeded",
        "transfer_reversal": None,
    }
    state.refunds[refund_id] = refund
    state.remember_order(refund_id)
    add_refund(charge, refund)
    events.record(state, "refund.created", refund)
    events.record(state, "charge.refunded", charge)
    return refund


def _get_refund(state: AccountState, refund_id: str) -> Json:
    refund = state.refunds.get(refund_id)
    if refund is None:
        raise resource_missing("refund", refund_id, "refund")
    return refund


def retrieve(state: AccountState, refund_id: str, params: Params) -> Json:
    reject_unknown(params, {"expand"})
    return _get_refund(state, refund_id)


def update(state: AccountState, refund_id: str, params: Params) -> Json:
    """Only `metadata` can change; an empty value deletes its key."""
    reject_unknown(params, {"expand", "metadata"})
    refund = _get_refund(state, refund_id)
    update_metadata(refund["metadata"], params)
    events.record(state, "refund.updated", refund)
    return refund


def list_refunds(state: AccountState, _: str, params: Params) -> Json:
    oldest_first = list(state.refunds.values())
    return list_of_charges(oldest_first, params, url="/v1/refunds", kind="refund")


def fail(state: AccountState, refund_id: str, failure_reason: str) -> Json:
    """The card's issuer sends a succeeded (or pending) refund back: it ends `failed` and its
    amount is refundable again on the charge. LookupError if there is no such refund,
    ValueError if it has ended already or the reason is not one of Stripe's."""
    if failure_reason not in FAILURE_REASONS:
        raise ValueError(f"failure_reason must be one of {FAILURE_REASONS}, not {failure_reason!r}")
    refund = state.refunds.get(refund_id)
    if refund is None:
        raise LookupError(f"no refund {refund_id}")
    if refund["status"] not in ("succeeded", "pending"):
        raise ValueError(f"refund {refund_id} is {refund['status']}; it cannot fail")
    refund["status"] = "failed"
    refund["failure_reason"] = failure_reason
    refund["failure_balance_transaction"] = state.new_id("txn")
    charge = get_charge(state, refund["charge"])
    charge["amount_refunded"] -= refund["amount"]
    charge["refunded"] = charge["amount_refunded"] >= charge["amount"]
    events.record(state, "charge.refund.updated", refund)
    events.record(state, "refund.updated", refund)
    events.record(state, "refund.failed", refund)
    return refund
