"""The refund checks of `reconcile`: Stripe's refunds of the period's PaymentIntents against
the ledger's `refunds` table, one refund at a time.

Pure, like billing/reconcile_checks.py: billing/reconcile.py lists the refunds and hands them
in. A refund Stripe made that the ledger lacks, a refund the ledger says succeeded that Stripe
lacks or failed, a refund whose amounts differ, and a refund left `requested` with no workflow
running to end it are findings.
"""

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import stripe

from billing.constants import RefundStatus, refund_workflow_id
from billing.models import RefundRecord
from billing.money import format_amount
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
    failure_reason: str | None = None

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
            failure_reason=refund.to_dict().get("failure_reason"),
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
    stranded: Mapping[tuple[str, int], str] | None = None,
) -> None:
    """Add the refund findings of the period to `result`. `stranded` maps each (payment id,
    n) still `requested` whose workflow is not running to what became of it (`missing`,
    `terminated`…)."""
    stranded = stranded or {}
    by_stripe_id = {r.stripe_refund_id: r for r in in_ledger if r.stripe_refund_id}
    requested = {(r.payment_id, r.n): r for r in in_ledger if r.status == RefundStatus.REQUESTED}
    live = [r for r in at_stripe if r.status not in NOT_MADE]
    not_made = {r.id: r for r in at_stripe if r.status in NOT_MADE}
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
            if (refund.payment_id, refund.n) not in stranded:  # else the finding below says it
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
        workflow = stranded.get((recorded.payment_id, recorded.n))
        if recorded.status == RefundStatus.REQUESTED and workflow is not None:
            made = _made_for(recorded, at_stripe)
            result.findings.append(
                _finding(
                    Kind.REFUND_STRANDED,
                    recorded,
                    made.intent_id if made else None,
                    stranded_detail(recorded, workflow, made),
                    customer_of_payment,
                )
            )
            continue
        if recorded.status != RefundStatus.SUCCEEDED or recorded.stripe_refund_id in at_stripe_ids:
            continue
        failed = not_made.get(recorded.stripe_refund_id or "")
        if failed is not None:
            result.findings.append(
                _finding(
                    Kind.REFUND_FAILED,
                    recorded,
                    failed.intent_id,
                    f"the ledger's refund {recorded.n} of {recorded.amount} {recorded.currency} "
                    f"succeeded as {failed.id}; Stripe's refund is {failed.status} "
                    f"({failed.failure_reason or 'no reason given'}), so nothing went back",
                    customer_of_payment,
                )
            )
        else:
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


def _made_for(recorded: RefundRecord, at_stripe: Sequence[RefundView]) -> RefundView | None:
    """The refund Stripe holds for a ledger refund (by its metadata), a live one first."""
    made = [r for r in at_stripe if (r.payment_id, r.n) == (recorded.payment_id, recorded.n)]
    return next((r for r in made if r.status not in NOT_MADE), made[0] if made else None)


def resume_command(recorded: RefundRecord) -> str:
    """The `refund` command that attaches to this requested refund and starts its workflow
    again: the same amount and reason, which `RefundLedger.reserve` takes for the same ask."""
    amount = format_amount(recorded.amount, recorded.currency).replace(",", "")  # as typed
    return f"refund {recorded.payment_id} --amount {amount} --reason {recorded.reason.value}"


def stranded_detail(recorded: RefundRecord, workflow: str, made: RefundView | None) -> str:
    at_stripe = (
        f"Stripe holds it as {made.id} ({made.status})"
        if made
        else f"Stripe holds no refund {recorded.n}"
    )
    return (
        f"refund {recorded.n} of {recorded.amount} {recorded.currency} is requested, but "
        f"workflow {refund_workflow_id(recorded.payment_id, recorded.n)} is {workflow}; "
        f"{at_stripe}. Resume: `{resume_command(recorded)}`"
    )
