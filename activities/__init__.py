"""The activities of the payment workflow and the billing run, listed once for every worker."""

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from activities.ledger_activities import LedgerActivities
from activities.stripe_activities import StripeActivities

if TYPE_CHECKING:  # it imports temporal_ops, which imports the payment workflow, which imports us
    from activities.billing_run_activities import BillingRunActivities

STRIPE_ACTIVITIES = (
    "authorize",
    "capture",
    "void",
    "find_authorization",
    "find_period_intents",
)
RUN_ACTIVITIES = ("launch_page", "period_counts")
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
    stripe: StripeActivities, ledger: LedgerActivities, run: "BillingRunActivities"
) -> list[Callable[..., Awaitable[Any]]]:
    """Every activity the workflows may call, bound to their clients."""
    return (
        [getattr(stripe, n) for n in STRIPE_ACTIVITIES]
        + [getattr(ledger, n) for n in LEDGER_ACTIVITIES]
        + [getattr(run, n) for n in RUN_ACTIVITIES]
    )
