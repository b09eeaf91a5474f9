"""Compare one billing period's ledger with Stripe, and void orphan authorizations.

Stripe's side is read by listing each customer's PaymentIntents (by customer and `created`) and
matching `metadata.payment_id`; never through search, which lags writes. `--fix` only cancels
uncaptured authorizations that no payment refers to. It never captures, refunds or otherwise
touches captured money, and it records each action in `reconcile_actions`.
"""

import asyncio
import re
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from typing import TypeVar

import stripe
from stripe.params import PaymentIntentListParams

from billing.constants import TERMINAL_STATUSES, PaymentStatus
from billing.ledger import ReconcileLedger
from billing.models import PaymentRecord
from billing.stripe_client import CANCELED, CAPTURABLE, CAPTURED, LIST_PAGE, stored_server_error

# Intents are created after their payment row; the slack covers clocks that disagree.
CREATED_SLACK = timedelta(days=1)
CONCURRENT_CUSTOMERS = 8
READ_ATTEMPTS = 10
VOID_ATTEMPTS = 6
UUID_SHAPE = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
T = TypeVar("T")


class Kind(StrEnum):
    """What disagrees. Every kind is a discrepancy: reconcile exits 1 on any."""

    NO_CAPTURE = "succeeded, no capture"
    DOUBLE_CHARGE = "double charge"
    WRONG_INTENT = "succeeded, other intent recorded"
    CAPTURED_NOT_SUCCEEDED = "captured, payment not succeeded"
    ORPHAN = "orphan authorization"
    AMOUNT = "amount mismatch"
    CURRENCY = "currency mismatch"


@dataclass(frozen=True)
class IntentView:
    """The fields of a PaymentIntent that reconcile compares."""

    id: str
    customer: str | None
    status: str
    amount: int
    amount_received: int
    amount_capturable: int
    currency: str
    payment_id: str | None

    @classmethod
    def of(cls, intent: stripe.PaymentIntent) -> "IntentView":
        customer = intent.customer
        return cls(
            id=intent.id,
            customer=customer if isinstance(customer, str) or customer is None else customer.id,
            status=intent.status,
            amount=intent.amount,
            amount_received=intent.amount_received or 0,
            amount_capturable=intent.amount_capturable or 0,
            currency=intent.currency,
            payment_id=(intent.metadata.to_dict() if intent.metadata else {}).get("payment_id"),
        )


@dataclass(frozen=True)
class Finding:
    kind: Kind
    payment_id: str | None
    intent_id: str | None
    detail: str
    amount: int | None = None
    currency: str | None = None


@dataclass
class Fix:
    intent_id: str
    payment_id: str | None
    outcome: str

    @property
    def resolved(self) -> bool:
        return self.outcome in (VoidOutcome.CANCELLED, VoidOutcome.ALREADY_CANCELLED)


class VoidOutcome(StrEnum):
    CANCELLED = "cancelled"
    ALREADY_CANCELLED = "already cancelled"
    CAPTURED_LEFT_ALONE = "captured meanwhile, left alone"
    PAYMENT_STILL_OPEN = "payment still open, left to its workflow"
    FAILED = "could not cancel"


@dataclass
class Comparison:
    """The outcome of comparing one period: findings, and what is fine but worth showing."""

    period: str
    payments: int = 0
    intents: int = 0
    findings: list[Finding] = field(default_factory=list)
    # Authorizations inside their capture window (payment authorized, intent recorded).
    in_window: list[str] = field(default_factory=list)
    # Authorizations of payments still being authorized: the workflow records or adopts them.
    in_flight: list[str] = field(default_factory=list)
    # Captured at Stripe, and succeeded in the ledger, by currency (minor units).
    stripe_captured: dict[str, int] = field(default_factory=dict)
    ledger_succeeded: dict[str, int] = field(default_factory=dict)
    fixes: list[Fix] = field(default_factory=list)

    @property
    def orphans(self) -> list[Finding]:
        return [f for f in self.findings if f.kind == Kind.ORPHAN]

    @property
    def unresolved(self) -> list[Finding]:
        """Findings that `--fix` did not resolve (all of them without `--fix`)."""
        fixed = {f.intent_id for f in self.fixes if f.resolved}
        return [f for f in self.findings if f.intent_id not in fixed]

    @property
    def clean(self) -> bool:
        return not self.unresolved


def compare(
    period: str,
    payments: Sequence[PaymentRecord],
    intents: Iterable[IntentView],
    elsewhere: Mapping[str, PaymentRecord],
) -> Comparison:
    """Compare a period's payments with the PaymentIntents listed for their customers.

    `elsewhere` holds the known payments of other periods named by some intent's metadata:
    those intents belong to that period and are left out. Intents without our metadata are
    not ours and are left out too.
    """
    result = Comparison(period=period, payments=len(payments))
    by_payment: dict[str, list[IntentView]] = defaultdict(list)
    unknown: list[IntentView] = []
    ours = {p.id for p in payments}
    for intent in intents:
        if intent.payment_id is None or intent.payment_id in elsewhere:
            continue
        result.intents += 1
        if intent.payment_id in ours:
            by_payment[intent.payment_id].append(intent)
        else:
            unknown.append(intent)

    for payment in payments:
        _compare_payment(result, payment, by_payment.get(payment.id, []))
    for intent in unknown:
        _compare_unknown(result, intent)
    return result


def _compare_payment(result: Comparison, payment: PaymentRecord, intents: list[IntentView]) -> None:
    captured = [i for i in intents if i.status == CAPTURED]
    for intent in captured:
        _add(result.stripe_captured, intent.currency, intent.amount_received)
    if payment.status == PaymentStatus.SUCCEEDED:
        _add(result.ledger_succeeded, payment.currency, payment.amount_received or 0)
        if not captured:
            result.findings.append(
                Finding(
                    Kind.NO_CAPTURE,
                    payment.id,
                    payment.stripe_payment_intent_id,
                    "the ledger says succeeded; Stripe holds no captured intent for it",
                )
            )
        elif len(captured) > 1:
            result.findings.append(_double_charge(payment, captured))
        else:
            [intent] = captured
            if intent.id != payment.stripe_payment_intent_id:
                result.findings.append(
                    Finding(
                        Kind.WRONG_INTENT,
                        payment.id,
                        intent.id,
                        f"captured {intent.id}, but the ledger records "
                        f"{payment.stripe_payment_intent_id}",
                    )
                )
            if intent.amount_received != payment.amount_received:
                result.findings.append(
                    Finding(
                        Kind.AMOUNT,
                        payment.id,
                        intent.id,
                        f"Stripe captured {intent.amount_received}, the ledger recorded "
                        f"{payment.amount_received}",
                    )
                )
    else:
        if len(captured) > 1:
            result.findings.append(_double_charge(payment, captured))
        for intent in captured:
            result.findings.append(
                Finding(
                    Kind.CAPTURED_NOT_SUCCEEDED,
                    payment.id,
                    intent.id,
                    f"Stripe captured {intent.amount_received} {intent.currency}; "
                    f"the ledger says {payment.status.value}",
                    intent.amount_received,
                    intent.currency,
                )
            )

    for intent in intents:
        if intent.status in (CAPTURED, CAPTURABLE):
            if intent.amount != payment.amount:
                result.findings.append(
                    Finding(
                        Kind.AMOUNT,
                        payment.id,
                        intent.id,
                        f"intent for {intent.amount}, payment for {payment.amount}",
                    )
                )
            if intent.currency != payment.currency:
                result.findings.append(
                    Finding(
                        Kind.CURRENCY,
                        payment.id,
                        intent.id,
                        f"intent in {intent.currency}, payment in {payment.currency}",
                    )
                )
        if intent.status != CAPTURABLE:
            continue
        recorded = intent.id == payment.stripe_payment_intent_id
        if payment.status == PaymentStatus.AUTHORIZED and recorded:
            result.in_window.append(intent.id)
        elif payment.status not in TERMINAL_STATUSES and payment.status != PaymentStatus.AUTHORIZED:
            result.in_flight.append(intent.id)
        else:
            why = (
                f"the payment is {payment.status.value}"
                if payment.status in TERMINAL_STATUSES
                else f"the payment records {payment.stripe_payment_intent_id}"
            )
            result.findings.append(
                Finding(
                    Kind.ORPHAN,
                    payment.id,
                    intent.id,
                    f"uncaptured authorization of {intent.amount} {intent.currency}; {why}",
                    intent.amount,
                    intent.currency,
                )
            )


def _compare_unknown(result: Comparison, intent: IntentView) -> None:
    if intent.status == CAPTURED:
        _add(result.stripe_captured, intent.currency, intent.amount_received)
        result.findings.append(
            Finding(
                Kind.CAPTURED_NOT_SUCCEEDED,
                intent.payment_id,
                intent.id,
                f"Stripe captured {intent.amount_received} {intent.currency} for a payment "
                "the ledger does not know",
                intent.amount_received,
                intent.currency,
            )
        )
    elif intent.status == CAPTURABLE:
        result.findings.append(
            Finding(
                Kind.ORPHAN,
                intent.payment_id,
                intent.id,
                f"uncaptured authorization of {intent.amount} {intent.currency} for a payment "
                "the ledger does not know",
                intent.amount,
                intent.currency,
            )
        )


def _double_charge(payment: PaymentRecord, captured: list[IntentView]) -> Finding:
    total = sum(i.amount_received for i in captured)
    return Finding(
        Kind.DOUBLE_CHARGE,
        payment.id,
        ", ".join(i.id for i in captured),
        f"{len(captured)} captured intents, {total} {payment.currency} in all",
    )


def _add(totals: dict[str, int], currency: str, amount: int) -> None:
    totals[currency] = totals.get(currency, 0) + amount


async def _read(call: Callable[[], Awaitable[T]]) -> T:
    """A Stripe read, retried through rate limits, lost connections and 5xx: reads are safe
    to repeat. Bounded: the last error is raised."""
    for attempt in range(READ_ATTEMPTS):
        try:
            return await call()
        except (stripe.RateLimitError, stripe.APIConnectionError, stripe.APIError):
            if attempt == READ_ATTEMPTS - 1:
                raise
            await asyncio.sleep(min(0.2 * 2**attempt, 5.0))
    raise AssertionError("unreachable")


async def list_customer_intents(
    client: stripe.StripeClient, customer: str, created_after: int
) -> list[IntentView]:
    """Every PaymentIntent of `customer` created at or after `created_after`, all pages."""
    found: list[IntentView] = []
    params: PaymentIntentListParams = {
        "customer": customer,
        "created": {"gte": created_after},
        "limit": LIST_PAGE,
    }
    while True:
        page = await _read(lambda: client.v1.payment_intents.list_async(params))
        found += [IntentView.of(i) for i in page.data]
        if not page.has_more or not page.data:
            return found
        params["starting_after"] = page.data[-1].id


async def reconcile(
    ledger: ReconcileLedger, client: stripe.StripeClient, period: str, *, fix: bool = False
) -> Comparison:
    """Compare the period with Stripe; with `fix`, void its orphan authorizations."""
    rows = await ledger.period_payments_with_customers(period)
    payments = [p for p, _ in rows]
    customers = sorted({c for _, c in rows})
    intents: list[IntentView] = []
    if payments:
        earliest = min(p.created_at for p in payments) - CREATED_SLACK
        slots = asyncio.Semaphore(CONCURRENT_CUSTOMERS)

        async def listed(customer: str) -> list[IntentView]:
            async with slots:
                return await list_customer_intents(client, customer, int(earliest.timestamp()))

        for found in await asyncio.gather(*(listed(c) for c in customers)):
            intents += found
    ours = {p.id for p in payments}
    named = {i.payment_id for i in intents if i.payment_id and i.payment_id not in ours}
    known = await ledger.payments_by_ids(n for n in named if UUID_SHAPE.match(n))
    elsewhere = {pid: p for pid, p in known.items() if p.billing_period != period}
    result = compare(period, payments, intents, elsewhere)
    if fix:
        for orphan in result.orphans:
            assert orphan.intent_id is not None
            # Read again: a payment may have re-authorized since the comparison, and its
            # workflow may be about to capture this very intent.
            current = await ledger.payment(orphan.payment_id) if orphan.payment_id else None
            if current is not None and current.status not in TERMINAL_STATUSES:
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
            result.fixes.append(Fix(orphan.intent_id, orphan.payment_id, outcome))
    return result


def void_key(intent_id: str, resend: int = 0) -> str:
    """Derived from the intent, so a second `--fix` replays the first one's answer."""
    key = f"reconcile_void_{intent_id}"
    return f"{key}_r{resend}" if resend else key


async def void_orphan(client: stripe.StripeClient, intent_id: str) -> VoidOutcome:
    """Cancel one uncaptured authorization. A captured intent is never touched: Stripe
    refuses to cancel it, and this reads the intent to say so."""
    resend = 0
    for _ in range(VOID_ATTEMPTS):
        try:
            await client.v1.payment_intents.cancel_async(
                intent_id,
                {"cancellation_reason": "abandoned"},
                {"idempotency_key": void_key(intent_id, resend)},
            )
            return VoidOutcome.CANCELLED
        except stripe.StripeError as err:
            intent = await _read(lambda: client.v1.payment_intents.retrieve_async(intent_id))
            if intent.status == CANCELED:
                if err.code == "payment_intent_unexpected_state":
                    return VoidOutcome.ALREADY_CANCELLED
                return VoidOutcome.CANCELLED
            if intent.status == CAPTURED:
                return VoidOutcome.CAPTURED_LEFT_ALONE
            if intent.status != CAPTURABLE:
                return VoidOutcome.FAILED
            if stored_server_error(err):
                resend += 1  # Stripe stored a 500 under the key before it acted
            elif isinstance(err, stripe.RateLimitError | stripe.APIConnectionError):
                await asyncio.sleep(0.5)
            elif not isinstance(err, stripe.APIError):
                return VoidOutcome.FAILED
    return VoidOutcome.FAILED
