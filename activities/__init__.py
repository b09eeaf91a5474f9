"""The activities of the payment workflow and the billing run, listed once for every worker,
with the task queue each runs on.

The ledger and billing-run activities run on the payments queue, next to the workflows. The
Stripe activities run on one queue per Stripe endpoint they call, so that the Temporal server
can hold each to Stripe's per-endpoint rate limit with `max_task_queue_activities_per_second`,
across every worker that polls it. The queue names derive from the payments queue alone (see
`stripe_task_queue`), so the workflow needs no input or setting to find them.
"""

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from activities.ledger_activities import LedgerActivities
from activities.stripe_activities import StripeActivities

if TYPE_CHECKING:  # it imports temporal_ops, which imports the payment workflow, which imports us
    from activities.billing_run_activities import BillingRunActivities

# Stripe endpoint class -> the activities that call it. Stripe limits each endpoint separately
# (25 requests/s in live mode), so each class gets its own queue and its own rate.
STRIPE_QUEUES: dict[str, tuple[str, ...]] = {
    # POST /v1/payment_intents; authorize_unless_held lists the period's intents first, so
    # the list endpoint also sees up to this queue's rate
    "create": ("authorize", "authorize_unless_held"),
    # POST /v1/payment_intents/{id}/capture and /cancel (two endpoints, each under this
    # queue's rate; a read-back retrieve follows only an error or a cancel)
    # Refunds (POST /v1/refunds, after a list of the intent's refunds) are rare: they share
    # this queue's rate rather than hold a queue and a worker of their own.
    # The on-session confirm that asks for 3-D Secure (POST /v1/payment_intents/{id}/confirm)
    # and the read of an intent awaiting it are rare too: they share this queue's rate.
    "capture": ("capture", "void", "refund", "request_authentication", "read_intent"),
    # GET /v1/payment_intents: the list before an authorization
    "list": ("find_authorization", "find_period_intents"),
}
STRIPE_QUEUE_OF = {name: kind for kind, names in STRIPE_QUEUES.items() for name in names}
RUN_ACTIVITIES = ("launch_page", "period_counts")
LEDGER_ACTIVITIES = (
    "read_payment",
    "record_authorization",
    "begin_capture",
    "finalize",
    "record_paid",
    "record_failure",
    "record_decline",
    "record_action_required",
    "begin_attempt",
    "record_cancellation",
    "record_attention",
    "record_refund",
    "record_refund_failure",
)

Activity = Callable[..., Awaitable[Any]]


def stripe_task_queue(task_queue: str, kind: str) -> str:
    """The queue of one Stripe endpoint class, for workflows on `task_queue`."""
    return f"{task_queue}-stripe-{kind}"


@dataclass(frozen=True)
class QueueActivities:
    """One task queue's activities, and the server-side limit on their starts, if any."""

    task_queue: str
    activities: list[Activity]
    per_second: float | None = None


def activities_by_queue(
    task_queue: str,
    stripe: StripeActivities,
    ledger: LedgerActivities,
    run: "BillingRunActivities",
    stripe_per_second: Mapping[str, float],
) -> list[QueueActivities]:
    """The payments queue's activities first, then one entry per Stripe endpoint class with
    its rate from `stripe_per_second` (keyed like STRIPE_QUEUES)."""
    if set(stripe_per_second) != set(STRIPE_QUEUES):
        raise ValueError(
            f"Stripe rates for {sorted(stripe_per_second)}, expected {sorted(STRIPE_QUEUES)}"
        )
    payments = QueueActivities(
        task_queue,
        [getattr(ledger, n) for n in LEDGER_ACTIVITIES] + [getattr(run, n) for n in RUN_ACTIVITIES],
    )
    return [payments] + [
        QueueActivities(
            stripe_task_queue(task_queue, kind),
            [getattr(stripe, n) for n in names],
            stripe_per_second[kind],
        )
        for kind, names in STRIPE_QUEUES.items()
    ]
