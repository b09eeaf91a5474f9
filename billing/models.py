"""Typed inputs and results of the workflow and its activities, and the ledger's records.

Temporal carries them with `pydantic_data_converter`. None of them holds a secret: the Stripe
key lives only in the worker's settings.
"""

from datetime import datetime, timedelta

from pydantic import BaseModel, ConfigDict, Field

from billing.constants import PaymentStatus


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)


class BillingPolicy(Frozen):
    """How a payment waits and retries, fixed when the workflow starts.

    The defaults are the behaviour before the lifecycle existed (no window, no dunning), so
    that inputs recorded then still mean what they meant.
    """

    capture_delay: timedelta = timedelta(0)
    # Retry times after the first soft decline, e.g. 1, 3 and 5 days.
    dunning_schedule: tuple[timedelta, ...] = ()
    reauthorize_expired: bool = False


class PaymentInput(Frozen):
    """Everything the workflow needs, copied from the payment row at billing time."""

    payment_id: str
    customer_id: str
    billing_period: str
    amount: int = Field(gt=0)
    currency: str
    stripe_customer_id: str
    payment_method_id: str
    policy: BillingPolicy = BillingPolicy()


class PaymentMethodUpdate(Frozen):
    payment_method_id: str = Field(pattern=r"^pm_\w+$")


class PaymentResult(Frozen):
    payment_id: str
    status: PaymentStatus
    stripe_payment_intent_id: str | None = None
    amount_received: int | None = None
    failure_code: str | None = None
    # Anything an operator should read beside the status, e.g. a cancellation that came
    # after capture began.
    note: str | None = None


class AuthorizeInput(Frozen):
    payment_id: str
    amount: int
    currency: str
    stripe_customer_id: str
    payment_method_id: str
    idempotency_key: str
    # Carried as PaymentIntent metadata, so that a (Stripe customer, period) finds its
    # charges at Stripe even when the payment row is lost. None for inputs of older payments.
    billing_period: str | None = None
    customer_id: str | None = None


class Authorization(Frozen):
    intent_id: str
    amount_capturable: int


class Decline(Frozen):
    """Why Stripe declined, carried as the details of a `CardDeclined` ApplicationError."""

    code: str
    decline_code: str | None = None
    message: str
    intent_id: str | None = None


class CaptureInput(Frozen):
    intent_id: str
    idempotency_key: str


class Capture(Frozen):
    intent_id: str
    amount_received: int


class VoidInput(Frozen):
    intent_id: str
    idempotency_key: str


class FindAuthorizationInput(Frozen):
    payment_id: str
    stripe_customer_id: str
    created_after: int


class FindPeriodIntentsInput(Frozen):
    """Which intents belong to the charge (Stripe customer, period): metadata.billing_period,
    or metadata.payment_id for intents created before they carried the period."""

    payment_id: str
    stripe_customer_id: str
    billing_period: str
    created_after: int


class PeriodIntents(Frozen):
    """What Stripe holds for one (Stripe customer, period), oldest first."""

    captured: tuple[Capture, ...] = ()
    capturable: tuple[Authorization, ...] = ()


class ReadPaymentInput(Frozen):
    payment_id: str


class PaymentState(Frozen):
    """The row as a workflow (re)starting or beginning a new generation reads it."""

    status: PaymentStatus
    generation: int
    intent_id: str | None
    payment_method_id: str
    # Soft declines recorded so far (its `retrying` events): a resumed run's dunning goes on
    # from there. Absent from rows read before it existed.
    dunning_attempts: int = 0


class BeginAttemptInput(Frozen):
    payment_id: str
    generation: int
    reason: str


class RecordDeclineInput(Frozen):
    payment_id: str
    generation: int
    decline: Decline


class RecordCancellationInput(Frozen):
    payment_id: str
    intent_id: str | None = None
    generation: int | None = None


class BeginCaptureInput(Frozen):
    payment_id: str
    intent_id: str
    generation: int


class CaptureAllowed(Frozen):
    """Whether the ledger moved `authorized -> capturing`; if not, the status that won."""

    allowed: bool
    status: PaymentStatus


class RecordPaidInput(Frozen):
    """Stripe already holds this period's capture: record it, never charge again."""

    payment_id: str
    intent_id: str
    amount_received: int
    generation: int


class RecordAttentionInput(Frozen):
    payment_id: str
    reason: str
    message: str
    intent_id: str | None = None
    generation: int | None = None


class AttentionRecorded(Frozen):
    """Whether record_attention moved the row to needs_attention; if not, the status the row
    had already ended in (which stands) and the intent it records."""

    recorded: bool
    status: PaymentStatus
    intent_id: str | None = None


class RecordAuthorizationInput(Frozen):
    payment_id: str
    intent_id: str
    generation: int = 1


class FinalizeInput(Frozen):
    payment_id: str
    intent_id: str
    amount_received: int
    generation: int | None = None


class RecordFailureInput(Frozen):
    payment_id: str
    failure_code: str
    failure_message: str
    intent_id: str | None = None
    generation: int | None = None


class NewCustomer(Frozen):
    """One customer as imported from CSV or seeded by the demo."""

    email: str = Field(pattern=r"^[^@\s]+@[^@\s]+$")
    stripe_customer_id: str = Field(pattern=r"^cus_\w+$")
    payment_method_id: str = Field(pattern=r"^pm_\w+$")
    monthly_amount: int = Field(gt=0)
    currency: str = Field(pattern=r"^[a-z]{3}$")
    active: bool = True


class PaymentRecord(Frozen):
    """A payment row as the CLI and the tests read it."""

    id: str
    customer_id: str
    billing_period: str
    amount: int
    currency: str
    status: PaymentStatus
    stripe_payment_intent_id: str | None
    amount_received: int | None
    failure_code: str | None
    failure_message: str | None
    generation: int
    created_at: datetime
    updated_at: datetime


class PaymentEvent(Frozen):
    payment_id: str
    from_status: PaymentStatus | None
    to_status: PaymentStatus
    detail: dict[str, object]
    occurred_at: datetime
