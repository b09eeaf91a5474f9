"""In-memory account state: customers, payment methods, PaymentIntents, charges, refunds
and disputes."""

from __future__ import annotations

import heapq
import random
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import events
from .clock import SandboxClock

Json = dict[str, Any]

_ID_ALPHABET = string.ascii_letters + string.digits

# Stripe releases an uncaptured card authorization after 7 days
# (https://stripe.com/docs/payments/place-a-hold-on-a-payment-method).
AUTHORIZATION_VALIDITY_SECONDS = 7 * 24 * 3600


@dataclass
class IndexedVersion:
    """A snapshot of an object as the search index will see it from `visible_at` on."""

    visible_at: float
    snapshot: Json


@dataclass
class AccountState:
    clock: SandboxClock
    rng: random.Random
    livemode: bool = False
    customers: dict[str, Json] = field(default_factory=dict)
    payment_methods: dict[str, Json] = field(default_factory=dict)
    # which test card (pm_card_*) a stored payment method clones
    payment_method_cards: dict[str, str] = field(default_factory=dict)
    payment_intents: dict[str, Json] = field(default_factory=dict)
    charges: dict[str, Json] = field(default_factory=dict)
    refunds: dict[str, Json] = field(default_factory=dict)
    disputes: dict[str, Json] = field(default_factory=dict)
    # (event type, object id) of what refunds and disputes did, oldest first (happenings.py)
    # insertion sequence, to order objects created in the same second
    sequence: dict[str, int] = field(default_factory=dict)
    search_versions: dict[str, list[IndexedVersion]] = field(default_factory=dict)
    search_lag_seconds: float = 0.0
    # Events (events.py), the webhook endpoints they go to, and who hears of each new event.
    events: dict[str, Json] = field(default_factory=dict)
    webhook_endpoints: dict[str, Json] = field(default_factory=dict)
    webhook_secrets: dict[str, str] = field(default_factory=dict)
    event_listeners: list[Callable[[Json], None]] = field(default_factory=list)
    # The API request being executed ({id, idempotency_key}); None for the sandbox's own acts.
    current_request: Json | None = None
    # Where the sandbox serves (http://127.0.0.1:PORT), for URLs it hands out.
    base_url: str = ""
    _expiries: list[tuple[int, str]] = field(default_factory=list)
    _next_sequence: int = 0

    def new_id(self, prefix: str) -> str:
        return prefix + "_" + "".join(self.rng.choices(_ID_ALPHABET, k=24))

    def remember_order(self, object_id: str) -> None:
        self._next_sequence += 1
        self.sequence[object_id] = self._next_sequence

    def index_for_search(self, intent: Json) -> None:
        """Record a write; search sees it only after the configured indexing lag."""
        now = self.clock.time()
        versions = self.search_versions.setdefault(intent["id"], [])
        versions.append(IndexedVersion(now + self.search_lag_seconds, _snapshot(intent)))
        # Versions older than the newest already-visible one can never be seen again.
        visible = [i for i, v in enumerate(versions) if v.visible_at <= now]
        if visible:
            del versions[: visible[-1]]

    def searchable_version(self, intent_id: str, now: float) -> Json | None:
        versions = self.search_versions.get(intent_id, [])
        visible = [i for i, v in enumerate(versions) if v.visible_at <= now]
        if not visible:
            return None
        newest = visible[-1]
        del versions[:newest]
        return versions[0].snapshot

    def schedule_expiry(self, intent_id: str, authorized_at: int) -> None:
        heapq.heappush(self._expiries, (authorized_at + AUTHORIZATION_VALIDITY_SECONDS, intent_id))

    def expire_authorizations(self) -> None:
        """Cancel uncaptured authorizations whose hold has lapsed (reason `automatic`)."""
        now = self.clock.now()
        while self._expiries and self._expiries[0][0] <= now:
            _, intent_id = heapq.heappop(self._expiries)
            intent = self.payment_intents.get(intent_id)
            if intent is None or intent["status"] != "requires_capture":
                continue
            intent["status"] = "canceled"
            intent["cancellation_reason"] = "automatic"
            intent["canceled_at"] = now
            intent["amount_capturable"] = 0
            self.index_for_search(intent)
            events.record(self, "payment_intent.canceled", intent)


def _snapshot(intent: Json) -> Json:
    return {
        "id": intent["id"],
        "metadata": dict(intent["metadata"]),
        "customer": intent["customer"],
        "status": intent["status"],
        "amount": intent["amount"],
        "currency": intent["currency"],
        "created": intent["created"],
    }
