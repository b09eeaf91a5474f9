"""What a Stripe event says, read from its JSON: which payment it may concern and the fact the
webhook receiver hands on (billing/webhooks.py). Pure functions, no I/O.

Event objects follow https://stripe.com/docs/api/events/object; the objects inside them are
PaymentIntents, Charges, Disputes and Refunds, each naming its PaymentIntent.
"""

import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from billing.models import StripeEventFact

# The event types handed to a payment; any other is stored and ignored.
HANDLED_TYPES = frozenset(
    {
        "payment_intent.canceled",
        "payment_intent.amount_capturable_updated",
        "payment_intent.succeeded",
        "payment_intent.payment_failed",
        "charge.refunded",
        "charge.dispute.created",
        "charge.dispute.closed",
    }
)


class EventData(BaseModel):
    object: dict[str, Any]


class StripeEventEnvelope(BaseModel):
    """The fields of a Stripe event the receiver relies on; the rest is kept in the payload."""

    model_config = ConfigDict(extra="allow")

    id: str = Field(pattern=r"^evt_\w+$")
    type: str = Field(min_length=1)
    created: int
    livemode: bool
    data: EventData

    @property
    def handled(self) -> bool:
        return self.type in HANDLED_TYPES


def _text(obj: dict[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if isinstance(value, dict):  # an expanded reference
        value = value.get("id")
    return value if isinstance(value, str) else None


def _amount(obj: dict[str, Any], key: str) -> int | None:
    value = obj.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def intent_id_of(event: StripeEventEnvelope) -> str | None:
    """The PaymentIntent the event's object is, or names."""
    obj = event.data.object
    if obj.get("object") == "payment_intent":
        return _text(obj, "id")
    return _text(obj, "payment_intent")


def payment_id_hint(event: StripeEventEnvelope) -> str | None:
    """The payment our PaymentIntents (and the charges Stripe copies their metadata to) name
    in `metadata.payment_id`, when it is a UUID; None otherwise."""
    metadata = event.data.object.get("metadata")
    value = metadata.get("payment_id") if isinstance(metadata, dict) else None
    if not isinstance(value, str):
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


def fact_of(event: StripeEventEnvelope) -> StripeEventFact:
    """The fact handed to the payment: the event's identity and what its object shows."""
    obj = event.data.object
    kind = obj.get("object")
    fact: dict[str, Any] = {
        "event_id": event.id,
        "type": event.type,
        "created": event.created,
        "intent_id": intent_id_of(event),
        "amount": _amount(obj, "amount"),
    }
    if kind == "payment_intent":
        error = obj.get("last_payment_error")
        fact |= {
            "charge_id": _text(obj, "latest_charge"),
            "status": _text(obj, "status"),
            "amount_capturable": _amount(obj, "amount_capturable"),
            "amount_received": _amount(obj, "amount_received"),
            "failure_code": _failure_code(error) if isinstance(error, dict) else None,
        }
    elif kind == "charge":
        fact |= {
            "charge_id": _text(obj, "id"),
            "status": _text(obj, "status"),
            "amount_refunded": _amount(obj, "amount_refunded"),
            "failure_code": _text(obj, "failure_code"),
        }
    elif kind == "dispute":
        fact |= {
            "charge_id": _text(obj, "charge"),
            "dispute_id": _text(obj, "id"),
            "dispute_status": _text(obj, "status"),
            "dispute_reason": _text(obj, "reason"),
        }
    else:
        fact["charge_id"] = _text(obj, "charge")
    return StripeEventFact(**fact)


def _failure_code(error: dict[str, Any]) -> str | None:
    return _text(error, "decline_code") or _text(error, "code")
