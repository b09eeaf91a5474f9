"""Stripe Event objects: `record()` is the one call a resource module makes when something
happens (events_api.py serves them under /v1/events).

Follows https://stripe.com/docs/api/events/object and https://stripe.com/docs/api/events/types.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .store import AccountState

Json = dict[str, Any]

# The API version events are rendered in (the stripe SDK this project pins); the sandbox
# ignores the Stripe-Version header and renders every object one way.
API_VERSION = "2026-10-28.endive"

# The event types a webhook endpoint may subscribe to: the ones the sandbox records and the
# ones close to them in Stripe's list, so that subscribing to them is not a 400.
EVENT_TYPES: frozenset[str] = frozenset(
    {
        "charge.captured",
        "charge.dispute.closed",
        "charge.dispute.created",
        "charge.dispute.funds_reinstated",
        "charge.dispute.funds_withdrawn",
        "charge.dispute.updated",
        "charge.expired",
        "charge.failed",
        "charge.pending",
        "charge.refund.updated",
        "charge.refunded",
        "charge.succeeded",
        "charge.updated",
        "customer.created",
        "customer.deleted",
        "customer.updated",
        "payment_intent.amount_capturable_updated",
        "payment_intent.canceled",
        "payment_intent.created",
        "payment_intent.partially_funded",
        "payment_intent.payment_failed",
        "payment_intent.processing",
        "payment_intent.requires_action",
        "payment_intent.succeeded",
        "payment_method.attached",
        "payment_method.detached",
        "refund.created",
        "refund.failed",
        "refund.updated",
    }
)


def record(state: AccountState, type_: str, obj: Json) -> Json:
    """Record that `type_` happened to `obj` (its JSON is copied as it is now) and tell the
    listeners (webhook delivery), which set `pending_webhooks`."""
    event_id = state.new_id("evt")
    request = state.current_request or {"id": None, "idempotency_key": None}
    event: Json = {
        "id": event_id,
        "object": "event",
        "api_version": API_VERSION,
        "created": state.clock.now(),
        "data": {"object": copy.deepcopy(obj)},
        "livemode": state.livemode,
        "pending_webhooks": 0,
        "request": dict(request),
        "type": type_,
    }
    state.events[event_id] = event
    for listener in state.event_listeners:
        listener(event)
    return event


def type_matches(pattern: str, type_: str) -> bool:
    """Stripe's `type` filter and `enabled_events`: an exact name, `*`, or `prefix.*`."""
    if pattern == "*":
        return True
    if pattern.endswith(".*"):
        return type_.startswith(pattern[:-1])
    return pattern == type_
