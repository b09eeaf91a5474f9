"""The refund checks of `reconcile`: Stripe's refunds of the period's PaymentIntents against
the ledger's `refunds` table, one refund at a time.

Pure, like billing/reconcile_checks.py: billing/reconcile.py lists the refunds and hands them
in. A refund Stripe made that the ledger lacks, a refund the ledger says succeeded that Stripe
lacks, and a refund whose amounts differ are findings.
"""

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import stripe

from billing.constants import RefundStatus
from billing.models import RefundRecord
from billing.reconcile_checks import Comparison, Finding, Kind

# Stripe refunds that gave nothing back.
NOT_MADE = frozenset({"failed", "canceled"})


@dataclass(frozen=True)
class RefundView:
    """The fields of a Stripe refund that reconcile reads."""

    id: str
    intent_id: str
    amount: int
    currency: str
    status: str
    customer: str | None = None
    # What the refund workflow writes on its refunds: absent on a refund made elsewhere.
    payment_id: str | None = None
    n: int | None = None

    @classmethod
    def of(cls, refund: stripe.Refund, customer: str | None) -> "RefundView":
        metadata = refund.metadata.to_dict() if refund.metadata else {}
        intent = refund.payment_intent
        n = metadata.get("refund_n")
        return cls(
            id=refund.id,
            intent_id=intent if isinstance(intent, str) else intent.id if intent else "",
            amount=refund.amount,
            currency=refund.currency,
            status=refund.status or "",
            customer=customer,
            payment_id=metadata.get("payment_id"),
            n=int(n) if n and n.isdigit() else None,
        )


def intents_to_list(
    comparison_intents: Iterable[tuple[str, int]],
    ledger_refunds: Sequence[RefundRecord],
    intent_of_payment: Mapping[str, str | None],
) -> list[str]:
    """The intents whose refunds are listed: every capture Stripe shows something refunded
    on (its charge's `amount_refunded`), and every capture the ledger has a refund of.
    `comparison_intents` holds (captured intent id, refunded amount)."""
    wanted = {intent for intent, refunded in comparison_intents if refunded}
    for refund in ledger_refunds:
        intent = intent_of_payment.get(refund.payment_id)
        if intent:
            wanted.add(intent)
    return sorted(wanted)


def check_refunds(
    result: Comparison,
    at_stripe: Sequence[RefundView],
    in_ledger: Sequence[RefundRecord],
    customer_of_payment: Mapping[str, str],
) -> None:
    """Add the refund findings of the period to `result`."""
    by_stripe_id = {r.stripe_refund_id: r for r in in_ledger if r.stripe_refund_id}
    requested = {(r.payment_id, r.n): r for r in in_ledger if r.status == RefundStatus.REQUESTED}
    live = [r for r in at_stripe if r.status not in NOT_MADE]
    for refund in live:
        result.refunds_compared.append(refund.id)
        recorded = by_stripe_id.get(refund.id)
        if recorded is not None:
            if recorded.amount != refund.amount:
                result.findings.append(
                    _finding(
                        Kind.REFUND_AMOUNT,
                        recorded,
                        refund.intent_id,
                        f"Stripe refunded {refund.amount} {refund.currency} as {refund.id}; the "
                        f"ledger's refund {recorded.n} says {recorded.amount}",
                        customer_of_payment,
                    )
                )
        elif (refund.payment_id, refund.n) in requested:
            result.refunds_being_recorded.append(refund.id)
        else:
            made_by = f"refund {refund.n} of payment {refund.payment_id}" if refund.n else "no one"
            result.findings.append(
                Finding(
                    Kind.REFUND_NOT_IN_LEDGER,
                    refund.customer,
                    refund.payment_id,
                    refund.intent_id,
                    f"Stripe refunded {refund.amount} {refund.currency} as {refund.id} "
                    f"(metadata names {made_by}); the ledger has no such refund",
                    refund.amount,
                    refund.currency,
                )
            )
    at_stripe_ids = {r.id for r in live}
    for recorded in in_ledger:
        if recorded.status == RefundStatus.SUCCEEDED and recorded.stripe_refund_id not in (
            at_stripe_ids
        ):
            result.findings.append(
                _finding(
                    Kind.REFUND_NOT_AT_STRIPE,
                    recorded,
                    None,
                    f"the ledger's refund {recorded.n} of {recorded.amount} {recorded.currency} "
                    f"succeeded as {recorded.stripe_refund_id}; Stripe holds no such refund",
                    customer_of_payment,
                )
            )


def _finding(
    kind: Kind,
    recorded: RefundRecord,
    intent_id: str | None,
    detail: str,
    customer_of_payment: Mapping[str, str],
) -> Finding:
    return Finding(
        kind,
        customer_of_payment.get(recorded.payment_id),
        recorded.payment_id,
        intent_id,
        detail,
        recorded.amount,
        recorded.currency,
    )
