"""The checks of `reconcile`, as a customer sees their bill: per (Stripe customer, period).

Pure: the caller reads the ledger, Stripe and Temporal (billing/reconcile.py) and hands the
facts in. Stripe's side comes first: every PaymentIntent of the period is grouped by the
Stripe customer it charged, whichever payment id its metadata names.
"""

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import stripe

from billing.constants import CAPTURED_STATUSES, TERMINAL_STATUSES, PaymentStatus, workflow_id
from billing.ledger import BilledPayment
from billing.models import PaymentRecord
from billing.stripe_client import CAPTURABLE, CAPTURED

S = PaymentStatus
# A capture while the ledger says one of these is money the ledger says was not taken.
NOT_CHARGED = frozenset({S.FAILED, S.CANCELLED, S.NEEDS_ATTENTION})
# A capturable intent of a payment in one of these is in flight: authorized after a retry, or
# once the customer passed 3-D Secure, and about to be recorded.
IN_FLIGHT = frozenset({S.PENDING, S.RETRYING, S.ACTION_REQUIRED})


class Kind(StrEnum):
    """What needs a look. Every kind is a finding: reconcile exits 1 on any."""

    DOUBLE_CHARGE = "double charge"
    CAPTURED_NOT_SUCCEEDED = "captured, payment not succeeded"
    NO_CAPTURE = "succeeded, no capture"
    WRONG_INTENT = "succeeded, other intent recorded"
    AMOUNT = "amount mismatch"
    CURRENCY = "currency mismatch"
    ORPHAN = "orphan authorization"
    STRANDED = "stranded"
    NEEDS_ATTENTION = "needs attention"
    # Refunds, compared one by one (billing/reconcile_refunds.py).
    REFUND_NOT_IN_LEDGER = "refund not in ledger"
    REFUND_NOT_AT_STRIPE = "refund not at Stripe"
    REFUND_AMOUNT = "refund amount mismatch"
    REFUND_FAILED = "refund failed at Stripe"
    REFUND_STRANDED = "refund stranded"


# What a person does about each kind `--fix` leaves; `{period}` is filled in.
NEXT_STEP: Mapping[Kind, str] = {
    Kind.DOUBLE_CHARGE: "refund the extra capture by hand in Stripe",
    Kind.CAPTURED_NOT_SUCCEEDED: "refund by hand in Stripe, or correct the payment by hand",
    Kind.NO_CAPTURE: "check the payment in Stripe; the ledger claims money Stripe never took",
    Kind.WRONG_INTENT: "check which PaymentIntent the payment should record",
    Kind.AMOUNT: "compare the captures in Stripe with the payment; refund or correct by hand",
    Kind.CURRENCY: "compare the captures in Stripe with the payment; refund or correct by hand",
    Kind.ORPHAN: "run `reconcile {period} --fix` to void it once its payment has ended",
    Kind.STRANDED: "run `bill {period}` to resume",
    Kind.NEEDS_ATTENTION: "read the reason (`status PAYMENT_ID`) and settle it by hand in Stripe",
    Kind.REFUND_NOT_IN_LEDGER: "find who refunded in Stripe, and record or explain it by hand",
    Kind.REFUND_NOT_AT_STRIPE: "check the refund in Stripe; the ledger says money went back",
    Kind.REFUND_AMOUNT: "compare the refund in Stripe with the ledger's and correct by hand",
    Kind.REFUND_FAILED: "the customer got nothing back: give it back another way, and correct "
    "the ledger's refund by hand",
    Kind.REFUND_STRANDED: "run the `refund` command in the finding's detail again to resume it",
}


@dataclass(frozen=True)
class IntentView:
    """The fields of a PaymentIntent, and of its latest charge, that reconcile reads."""

    id: str
    customer: str | None
    status: str
    amount: int
    amount_received: int
    amount_capturable: int
    currency: str
    payment_id: str | None
    billing_period: str | None = None
    # Refunded after capture, and disputed: from the latest charge, absent = none.
    refunded: int = 0
    disputed: bool = False

    @classmethod
    def of(cls, intent: stripe.PaymentIntent) -> "IntentView":
        customer = intent.customer
        metadata = intent.metadata.to_dict() if intent.metadata else {}
        refunded, disputed = charge_refund(intent.latest_charge)
        return cls(
            id=intent.id,
            customer=customer if isinstance(customer, str) or customer is None else customer.id,
            status=intent.status,
            amount=intent.amount,
            amount_received=intent.amount_received or 0,
            amount_capturable=intent.amount_capturable or 0,
            currency=intent.currency,
            payment_id=metadata.get("payment_id"),
            billing_period=metadata.get("billing_period"),
            refunded=refunded,
            disputed=disputed,
        )


def charge_refund(charge: str | stripe.Charge | None) -> tuple[int, bool]:
    """(refunded after capture, disputed) of a charge, read defensively: a field that is
    absent counts as none, and a charge that was not expanded tells nothing.

    `amount_refunded` also counts what a partial capture released (amount - amount_captured):
    that was never taken, so it is not a refund.
    """
    if not isinstance(charge, stripe.StripeObject):
        return 0, False
    fields = charge.to_dict()
    amount = fields.get("amount") or 0
    captured = fields.get("amount_captured") or 0
    released = amount - captured if captured else 0
    refunded = max((fields.get("amount_refunded") or 0) - released, 0)
    return refunded, bool(fields.get("disputed"))


@dataclass(frozen=True)
class Finding:
    kind: Kind
    customer: str | None
    payment_id: str | None
    intent_id: str | None
    detail: str
    amount: int | None = None
    currency: str | None = None


@dataclass(frozen=True)
class Refund:
    """Information, not a finding: money given back, or disputed, after a capture."""

    customer: str
    intent_id: str
    refunded: int
    currency: str
    disputed: bool


class VoidOutcome(StrEnum):
    CANCELLED = "cancelled"
    ALREADY_CANCELLED = "already cancelled"
    CAPTURED_LEFT_ALONE = "captured meanwhile, left alone"
    PAYMENT_STILL_OPEN = "payment still open, left to its workflow"
    FAILED = "could not cancel"


@dataclass(frozen=True)
class Fix:
    intent_id: str
    payment_id: str | None
    outcome: VoidOutcome

    @property
    def resolved(self) -> bool:
        return self.outcome in (VoidOutcome.CANCELLED, VoidOutcome.ALREADY_CANCELLED)


@dataclass
class Comparison:
    """The outcome of one period: findings, and what is fine but worth showing."""

    period: str
    payments: int = 0
    intents: int = 0
    customers: int = 0
    findings: list[Finding] = field(default_factory=list)
    # Authorizations recorded on an `authorized` row (the capture window) or a `capturing` one.
    in_window: list[str] = field(default_factory=list)
    being_captured: list[str] = field(default_factory=list)
    # Authorizations of payments still pending or retrying: the workflow records or adopts them.
    in_flight: list[str] = field(default_factory=list)
    # Captures of payments still open: the workflow has not recorded them yet.
    captures_being_recorded: list[str] = field(default_factory=list)
    # Captured at Stripe, and succeeded in the ledger, by currency (minor units).
    stripe_captured: dict[str, int] = field(default_factory=dict)
    ledger_succeeded: dict[str, int] = field(default_factory=dict)
    refunds: list[Refund] = field(default_factory=list)
    # Refunds compared one by one (Stripe's ids): all of them, and those at Stripe whose
    # ledger row is still `requested` (their workflow records them).
    refunds_compared: list[str] = field(default_factory=list)
    refunds_being_recorded: list[str] = field(default_factory=list)
    # Disputes of the period's captures not decided yet (Stripe's ids): information.
    open_disputes: list[str] = field(default_factory=list)
    fixes: list[Fix] = field(default_factory=list)

    def of_kind(self, kind: Kind) -> list[Finding]:
        return [f for f in self.findings if f.kind == kind]

    @property
    def orphans(self) -> list[Finding]:
        return self.of_kind(Kind.ORPHAN)

    @property
    def unresolved(self) -> list[Finding]:
        """Findings that `--fix` did not resolve (all of them without `--fix`)."""
        fixed = {f.intent_id for f in self.fixes if f.resolved}
        return [f for f in self.findings if not (f.kind == Kind.ORPHAN and f.intent_id in fixed)]

    @property
    def left_for_a_person(self) -> list[str]:
        """One line per kind of unresolved finding: what to do about it."""
        kinds = dict.fromkeys(f.kind for f in self.unresolved)
        return [f"{k.value}: {NEXT_STEP[k].format(period=self.period)}" for k in kinds]

    @property
    def clean(self) -> bool:
        return not self.unresolved


@dataclass
class _Group:
    """One Stripe customer in the period: the payments that bill it and its intents."""

    customer: str
    payments: list[BilledPayment] = field(default_factory=list)
    intents: list[IntentView] = field(default_factory=list)


def belongs(intent: IntentView, period: str, elsewhere: Mapping[str, PaymentRecord]) -> bool:
    """Whether an intent charges for `period`. Its `billing_period` says so; an intent made
    before that metadata existed belongs unless its payment is another period's."""
    if intent.billing_period is not None:
        return intent.billing_period == period
    return intent.payment_id is not None and intent.payment_id not in elsewhere


def compare(
    period: str,
    payments: Sequence[BilledPayment],
    intents: Iterable[IntentView],
    elsewhere: Mapping[str, PaymentRecord],
    closed_workflows: Mapping[str, str] | None = None,
) -> Comparison:
    """Compare a period's payments with the PaymentIntents listed for their Stripe customers.

    `elsewhere` holds the known payments of other periods named by some intent's metadata.
    `closed_workflows` maps each open payment whose workflow is not running to what became of
    it (`terminated`, `missing`…).
    """
    result = Comparison(period=period, payments=len(payments))
    groups: dict[str, _Group] = {}
    for payment in payments:
        groups.setdefault(payment.stripe_customer_id, _Group(payment.stripe_customer_id))
        groups[payment.stripe_customer_id].payments.append(payment)
    for intent in intents:
        if intent.customer is None or not belongs(intent, period, elsewhere):
            continue
        result.intents += 1
        groups.setdefault(intent.customer, _Group(intent.customer)).intents.append(intent)
    result.customers = len(groups)
    known = _Known(
        by_id={p.id: p for p in payments},
        by_intent={p.stripe_payment_intent_id: p for p in payments if p.stripe_payment_intent_id},
        closed_workflows=closed_workflows or {},
    )
    for group in groups.values():
        _GroupCheck(result, group, known).run()
    for payment in payments:
        _check_payment(result, payment, known.closed_workflows.get(payment.id))
    return result


@dataclass(frozen=True)
class _Known:
    """The period's payments by id and by the intent they record, and the open ones whose
    workflow is gone."""

    by_id: Mapping[str, BilledPayment]
    by_intent: Mapping[str, BilledPayment]
    closed_workflows: Mapping[str, str]


class _GroupCheck:
    """The checks of one (Stripe customer, period)."""

    def __init__(self, result: Comparison, group: _Group, known: _Known) -> None:
        self.result = result
        self.group = group
        self.known = known
        self.captured = [i for i in group.intents if i.status == CAPTURED]
        self.findings: list[Finding] = []

    def run(self) -> None:
        for intent in self.captured:
            _add(self.result.stripe_captured, intent.currency, intent.amount_received)
            if intent.refunded or intent.disputed:
                self.result.refunds.append(
                    Refund(
                        self.group.customer,
                        intent.id,
                        intent.refunded,
                        intent.currency,
                        intent.disputed,
                    )
                )
        for payment in self.group.payments:
            if payment.status in CAPTURED_STATUSES:
                _add(self.result.ledger_succeeded, payment.currency, payment.amount_received or 0)
        self.double_charge()
        for intent in self.captured:
            self.capture(intent)
        for payment in self.group.payments:
            self.succeeded_payment(payment)
        self.totals()
        for intent in self.group.intents:
            self.intent_terms(intent)
            if intent.status == CAPTURABLE:
                self.authorization(intent)
        self.result.findings += self.findings

    def owner(self, intent: IntentView) -> BilledPayment | None:
        """The payment an intent is for: the one that records it, else the one it names."""
        return self.known.by_intent.get(intent.id) or self.known.by_id.get(intent.payment_id or "")

    def add(
        self,
        kind: Kind,
        payment_id: str | None,
        intent_id: str | None,
        detail: str,
        amount: int | None = None,
        currency: str | None = None,
    ) -> None:
        self.findings.append(
            Finding(kind, self.group.customer, payment_id, intent_id, detail, amount, currency)
        )

    def double_charge(self) -> None:
        if len(self.captured) < 2:
            return
        named = sorted({i.payment_id or "-" for i in self.captured})
        self.add(
            Kind.DOUBLE_CHARGE,
            ", ".join(named),
            ", ".join(i.id for i in self.captured),
            f"{len(self.captured)} captures of {self.group.customer} for {self.result.period}: "
            f"{_money(self.captured)}",
        )

    def capture(self, intent: IntentView) -> None:
        owner = self.owner(intent)
        money = f"{intent.amount_received} {intent.currency}"
        if owner is None:
            if len(self.captured) == 1:  # else the double charge says it
                self.add(
                    Kind.CAPTURED_NOT_SUCCEEDED,
                    intent.payment_id,
                    intent.id,
                    f"Stripe captured {money} for a payment the ledger does not know",
                    intent.amount_received,
                    intent.currency,
                )
        elif owner.status in NOT_CHARGED:
            self.add(
                Kind.CAPTURED_NOT_SUCCEEDED,
                owner.id,
                intent.id,
                f"Stripe captured {money}; the ledger says {owner.status.value}",
                intent.amount_received,
                intent.currency,
            )
        elif owner.id in self.known.closed_workflows:
            self.add(
                Kind.CAPTURED_NOT_SUCCEEDED,
                owner.id,
                intent.id,
                f"Stripe captured {money}; the ledger says {owner.status.value} and its "
                f"workflow is {self.known.closed_workflows[owner.id]}, so nothing will record it",
                intent.amount_received,
                intent.currency,
            )
        elif owner.status not in TERMINAL_STATUSES:
            self.result.captures_being_recorded.append(intent.id)

    def succeeded_payment(self, payment: BilledPayment) -> None:
        if payment.status not in CAPTURED_STATUSES:
            return
        if not self.captured:
            self.add(
                Kind.NO_CAPTURE,
                payment.id,
                payment.stripe_payment_intent_id,
                "the ledger says succeeded; Stripe holds no capture for this customer and period",
            )
        elif len(self.captured) == 1 and self.captured[0].id != payment.stripe_payment_intent_id:
            self.add(
                Kind.WRONG_INTENT,
                payment.id,
                self.captured[0].id,
                f"captured {self.captured[0].id}, but the ledger records "
                f"{payment.stripe_payment_intent_id}",
            )

    def totals(self) -> None:
        """What Stripe took from the customer for the period against what the ledger says it
        took; only once every payment of it has ended, and when nothing above explains it."""
        if self.findings or any(p.status not in TERMINAL_STATUSES for p in self.group.payments):
            return
        stripe_side: dict[str, int] = {}
        for intent in self.captured:
            _add(stripe_side, intent.currency, intent.amount_received)
        ledger_side: dict[str, int] = {}
        for p in self.group.payments:
            if p.status in CAPTURED_STATUSES:
                _add(ledger_side, p.currency, p.amount_received or 0)
        if stripe_side == ledger_side:
            return
        kind = Kind.AMOUNT if set(stripe_side) == set(ledger_side) else Kind.CURRENCY
        self.add(
            kind,
            ", ".join(p.id for p in self.group.payments) or None,
            ", ".join(i.id for i in self.captured) or None,
            f"Stripe captured {_totals(stripe_side)} from {self.group.customer} for "
            f"{self.result.period}; the ledger's succeeded amount is {_totals(ledger_side)}",
        )

    def intent_terms(self, intent: IntentView) -> None:
        """A live or captured intent must be for its payment's amount and currency."""
        payment = self.owner(intent)
        if payment is None or intent.status not in (CAPTURED, CAPTURABLE):
            return
        if intent.amount != payment.amount:
            self.add(
                Kind.AMOUNT,
                payment.id,
                intent.id,
                f"intent for {intent.amount}, payment for {payment.amount}",
            )
        if intent.currency != payment.currency:
            self.add(
                Kind.CURRENCY,
                payment.id,
                intent.id,
                f"intent in {intent.currency}, payment in {payment.currency}",
            )

    def authorization(self, intent: IntentView) -> None:
        recorder = self.known.by_intent.get(intent.id)
        owner = self.owner(intent)
        if recorder is not None and recorder.status == S.AUTHORIZED:
            self.result.in_window.append(intent.id)
        elif recorder is not None and recorder.status == S.CAPTURING:
            self.result.being_captured.append(intent.id)
        elif owner is not None and owner.status in IN_FLIGHT:
            self.result.in_flight.append(intent.id)
        else:
            if owner is None:
                why = "for a payment the ledger does not know"
            elif owner.status in TERMINAL_STATUSES:
                why = f"the payment is {owner.status.value}"
            else:
                why = f"the payment records {owner.stripe_payment_intent_id}"
            self.add(
                Kind.ORPHAN,
                intent.payment_id,
                intent.id,
                f"uncaptured authorization of {intent.amount} {intent.currency}; {why}",
                intent.amount,
                intent.currency,
            )


def _check_payment(result: Comparison, payment: BilledPayment, workflow: str | None) -> None:
    if payment.status == S.NEEDS_ATTENTION:
        result.findings.append(
            Finding(
                Kind.NEEDS_ATTENTION,
                payment.stripe_customer_id,
                payment.id,
                payment.stripe_payment_intent_id,
                f"{payment.failure_code or 'no code'}: {payment.failure_message or 'no message'}",
            )
        )
    if payment.status not in TERMINAL_STATUSES and workflow is not None:
        result.findings.append(
            Finding(
                Kind.STRANDED,
                payment.stripe_customer_id,
                payment.id,
                payment.stripe_payment_intent_id,
                f"{payment.status.value}, but workflow {workflow_id(payment.id)} is {workflow}",
            )
        )


def _add(totals: dict[str, int], currency: str, amount: int) -> None:
    totals[currency] = totals.get(currency, 0) + amount


def _money(intents: Sequence[IntentView]) -> str:
    totals: dict[str, int] = {}
    for intent in intents:
        _add(totals, intent.currency, intent.amount_received)
    parts = " + ".join(f"{i.amount_received} {i.currency}" for i in intents)
    return f"{parts} = {_totals(totals)}" if len(intents) > 1 else parts


def _totals(totals: Mapping[str, int]) -> str:
    return ", ".join(f"{amount} {currency}" for currency, amount in sorted(totals.items())) or "0"
