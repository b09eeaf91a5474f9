"""The activities of the payment workflow, listed once for every worker."""

from collections.abc import Awaitable, Callable
from typing import Any

from activities.ledger_activities import LedgerActivities
from activities.stripe_activities import StripeActivities

STRIPE_ACTIVITIES = (
    "authorize",
    "capture",
    "void",
    "find_authorization",
    "find_period_intents",
)
LEDGER_ACTIVITIES = (
    "read_payment",
    "record_authorization",
    "begin_capture",
    "finalize",
    "record_paid",
    "record_failure",
    "record_decline",
    "begin_attempt",
    "record_cancellation",
    "record_attention",
)


def all_activities(
    stripe: StripeActivities, ledger: LedgerActivities
) -> list[Callable[..., Awaitable[Any]]]:
    """Every activity the payment workflow may call, bound to its clients."""
    return [getattr(stripe, n) for n in STRIPE_ACTIVITIES] + [
        getattr(ledger, n) for n in LEDGER_ACTIVITIES
    ]
