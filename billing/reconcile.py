"""Compare one billing period with Stripe and Temporal, and void orphan authorizations.

It reads the period's payments, then each of their Stripe customers' PaymentIntents (listed by
customer and `created`, never searched, since search lags writes), then the workflow of each
open payment. billing/reconcile_checks.py compares them per (Stripe customer, period). Then
it lists the refunds of every capture with something refunded (or refunded in the ledger),
and billing/reconcile_refunds.py compares them with the ledger's, one by one, with the
workflow of each refund still `requested`. The disputes of disputed captures are listed too,
and those still open counted, as information.

`--fix` only cancels uncaptured authorizations that no open payment holds. It never captures,
refunds or otherwise touches captured money, never restarts a workflow, and records each
action in `reconcile_actions`.
"""

import asyncio
import re
from collections.abc import Sequence
from datetime import timedelta

import stripe
from temporalio.client import Client

from billing.constants import (
    TERMINAL_STATUSES,
    RefundStatus,
    refund_workflow_id,
    resend_key,
    workflow_id,
)
from billing.ledger import BilledPayment, ReconcileLedger
from billing.ledger_refunds import RefundLedger
from billing.models import RefundRecord
from billing.reconcile_checks import (
    Comparison,
    Finding,
    Fix,
    IntentView,
    Kind,
    VoidOutcome,
    belongs,
    compare,
)
from billing.reconcile_refunds import RefundView, check_refunds, intents_to_list
from billing.stripe_client import (
    CAPTURABLE,
    CAPTURED,
    ReadBackFailed,
    cancel_and_read_back,
    list_customer_intents,
    list_intent_disputes,
    list_intent_refunds,
    read_retried,
    stored_server_error,
)
from temporal_ops import closed_state

__all__ = [
    "Comparison",
    "Finding",
    "IntentView",
    "Kind",
    "VoidOutcome",
    "compare",
    "reconcile",
    "void_orphan",
]

# Intents are created after their payment row; the slack covers clocks that disagree.
CREATED_SLACK = timedelta(days=1)
CONCURRENT_CUSTOMERS = 8
CONCURRENT_DESCRIBES = 16
VOID_ATTEMPTS = 6
VOID_PAUSE_SECONDS = 0.5
# Dispute statuses before the card network decides (Stripe's dispute object).
OPEN_DISPUTE_STATUSES = frozenset(
    {"needs_response", "under_review", "warning_needs_response", "warning_under_review"}
)
UUID_SHAPE = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")


async def reconcile(
    ledger: ReconcileLedger,
    client: stripe.StripeClient,
    temporal: Client,
    period: str,
    *,
    fix: bool = False,
) -> Comparison:
    """Compare the period with Stripe and Temporal; with `fix`, void its orphans."""
    payments = await ledger.billed_payments(period)
    intents: list[IntentView] = []
    if payments:
        earliest = min(p.created_at for p in payments) - CREATED_SLACK
        customers = sorted({p.stripe_customer_id for p in payments})
        intents = await stripe_intents(client, customers, int(earliest.timestamp()))
    ours = {p.id for p in payments}
    named = {i.payment_id for i in intents if i.payment_id and i.payment_id not in ours}
    known = await ledger.payments_by_ids(n for n in named if UUID_SHAPE.match(n))
    elsewhere = {pid: p for pid, p in known.items() if p.billing_period != period}
    closed = await closed_workflows(ledger, temporal, payments)
    result = compare(period, payments, intents, elsewhere, closed)
    await compare_refunds(result, ledger, client, temporal, period, payments, intents)
    result.open_disputes = await open_disputes(client, intents, period)
    if fix:
        for orphan in result.orphans:
            result.fixes.append(await _fix_orphan(ledger, client, period, orphan))
    return result


async def compare_refunds(
    result: Comparison,
    ledger: ReconcileLedger,
    client: stripe.StripeClient,
    temporal: Client,
    period: str,
    payments: Sequence[BilledPayment],
    intents: Sequence[IntentView],
) -> None:
    """Stripe's refunds of the period's captures against the ledger's refunds."""
    in_ledger = await RefundLedger.sharing_pool_of(ledger).period_refunds(period)
    ours = [i for i in intents if i.status == CAPTURED and belongs(i, period, {})]
    customer_of_intent = {i.id: i.customer for i in ours}
    listed = intents_to_list(
        ((i.id, i.refunded) for i in ours),
        in_ledger,
        {p.id: p.stripe_payment_intent_id for p in payments},
    )
    slots = asyncio.Semaphore(CONCURRENT_CUSTOMERS)

    async def refunds_of(intent_id: str) -> list[RefundView]:
        async with slots:
            found = await list_intent_refunds(client, intent_id, read=read_retried)
        return [RefundView.of(r, customer_of_intent.get(intent_id)) for r in found]

    at_stripe = [r for found in await asyncio.gather(*map(refunds_of, listed)) for r in found]
    stranded = await stranded_refunds(ledger, temporal, in_ledger)
    customers = {p.id: p.stripe_customer_id for p in payments}
    check_refunds(result, at_stripe, in_ledger, customers, stranded)


async def stranded_refunds(
    ledger: ReconcileLedger, temporal: Client, in_ledger: Sequence[RefundRecord]
) -> dict[tuple[str, int], str]:
    """Refunds `requested` whose workflow is not running, with what became of it (`missing`
    when the CLI stopped between reserving the refund and starting its workflow,
    `terminated`, `failed`…). Nothing will end such a refund until `refund` runs again."""
    requested = [r for r in in_ledger if r.status == RefundStatus.REQUESTED]
    slots = asyncio.Semaphore(CONCURRENT_DESCRIBES)

    async def state(refund: RefundRecord) -> str | None:
        async with slots:
            return await closed_state(temporal, refund_workflow_id(refund.payment_id, refund.n))

    states = await asyncio.gather(*map(state, requested))
    refunds = RefundLedger.sharing_pool_of(ledger)
    stranded = {}
    for refund, workflow in zip(requested, states, strict=True):
        if workflow is None:
            continue
        # Its workflow may have ended the refund after the ledger was read.
        now = {r.n: r.status for r in await refunds.refunds(refund.payment_id)}
        if now.get(refund.n) == RefundStatus.REQUESTED:
            stranded[refund.payment_id, refund.n] = workflow
    return stranded


async def open_disputes(
    client: stripe.StripeClient, intents: Sequence[IntentView], period: str
) -> list[str]:
    """The disputes not decided yet of the period's disputed captures (their ids)."""
    disputed = [i.id for i in intents if i.disputed and belongs(i, period, {})]
    slots = asyncio.Semaphore(CONCURRENT_CUSTOMERS)

    async def disputes_of(intent_id: str) -> list[stripe.Dispute]:
        async with slots:
            return await list_intent_disputes(client, intent_id, read=read_retried)

    found = await asyncio.gather(*map(disputes_of, disputed))
    return [d.id for ds in found for d in ds if d.status in OPEN_DISPUTE_STATUSES]


async def stripe_intents(
    client: stripe.StripeClient, customers: Sequence[str], created_after: int
) -> list[IntentView]:
    """Every PaymentIntent of these Stripe customers since `created_after`, with its latest
    charge (for refunds and disputes); a few customers at a time."""
    slots = asyncio.Semaphore(CONCURRENT_CUSTOMERS)

    async def listed(customer: str) -> list[IntentView]:
        async with slots:
            found = await list_customer_intents(
                client, customer, created_after, read=read_retried, expand=["latest_charge"]
            )
        return [IntentView.of(i) for i in found]

    return [i for found in await asyncio.gather(*(listed(c) for c in customers)) for i in found]


async def closed_workflows(
    ledger: ReconcileLedger, temporal: Client, payments: Sequence[BilledPayment]
) -> dict[str, str]:
    """Open payments whose workflow is not running, with what became of it (`terminated`,
    `failed`, `completed`…, or `missing`). Nothing will move such a payment again."""
    open_payments = [p for p in payments if p.status not in TERMINAL_STATUSES]
    slots = asyncio.Semaphore(CONCURRENT_DESCRIBES)

    async def state(payment: BilledPayment) -> str | None:
        async with slots:
            return await closed_state(temporal, workflow_id(payment.id))

    states = await asyncio.gather(*(state(p) for p in open_payments))
    closed = {}
    for payment, workflow in zip(open_payments, states, strict=True):
        if workflow is None:
            continue
        # Its workflow may have ended the payment after the ledger was read.
        now = await ledger.payment(payment.id)
        if now is not None and now.status not in TERMINAL_STATUSES:
            closed[payment.id] = workflow
    return closed


async def _fix_orphan(
    ledger: ReconcileLedger, client: stripe.StripeClient, period: str, orphan: Finding
) -> Fix:
    assert orphan.kind == Kind.ORPHAN and orphan.intent_id is not None
    # Read again: a payment may have re-authorized since the comparison, and its workflow may
    # be about to capture or adopt this very intent.
    if await _payment_still_open(ledger, period, orphan):
        outcome = VoidOutcome.PAYMENT_STILL_OPEN
    else:
        outcome = await void_orphan(client, orphan.intent_id)
    await ledger.record_reconcile_action(
        period,
        orphan.intent_id,
        orphan.payment_id,
        "void",
        outcome,
        orphan.amount,
        orphan.currency,
    )
    return Fix(orphan.intent_id, orphan.payment_id, outcome)


async def _payment_still_open(ledger: ReconcileLedger, period: str, orphan: Finding) -> bool:
    """Whether the payment the orphan names, or the one billing its customer for the period,
    is open now."""
    named = await ledger.payment(orphan.payment_id) if orphan.payment_id else None
    billing = await ledger.billed_payments_of(orphan.customer, period) if orphan.customer else []
    return any(p.status not in TERMINAL_STATUSES for p in [*billing, *([named] if named else [])])


def void_key(intent_id: str, resend: int = 0) -> str:
    """Derived from the intent, so a second `--fix` replays the first one's answer."""
    return resend_key(f"reconcile_void_{intent_id}", resend)


async def void_orphan(client: stripe.StripeClient, intent_id: str) -> VoidOutcome:
    """Cancel one uncaptured authorization. A captured intent is never touched: Stripe
    refuses to cancel it, and the intent read back says so."""
    resend = 0
    for _ in range(VOID_ATTEMPTS):
        try:
            answer = await cancel_and_read_back(
                client,
                intent_id,
                reason="abandoned",
                idempotency_key=void_key(intent_id, resend),
                read=read_retried,
            )
        except (stripe.RateLimitError, stripe.APIConnectionError, stripe.APIError, ReadBackFailed):
            await asyncio.sleep(VOID_PAUSE_SECONDS)  # the same key replays or makes the call
            continue
        except stripe.StripeError:
            return VoidOutcome.FAILED
        if answer.cancelled_before:
            return VoidOutcome.ALREADY_CANCELLED
        if answer.cancelled:
            return VoidOutcome.CANCELLED
        if answer.captured:
            return VoidOutcome.CAPTURED_LEFT_ALONE
        stored_before_acting = answer.error is not None and stored_server_error(answer.error)
        if answer.intent.status != CAPTURABLE or not stored_before_acting:
            return VoidOutcome.FAILED
        resend += 1  # Stripe stored a 500 under the key before it acted: a new key
    return VoidOutcome.FAILED
