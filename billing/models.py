"""Typed inputs and results of the workflow and its activities, and the ledger's records.

Temporal carries them with `pydantic_data_converter`. None of them holds a secret: the Stripe
key lives only in the worker's settings.
"""

from datetime import datetime, timedelta

from pydantic import BaseModel, ConfigDict, Field

from billing.constants import PaymentStatus, RefundReason, RefundStatus


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
    # How long a payment whose bank asks for 3-D Secure waits for the customer to
    # authenticate; zero: `authentication_required` is a final decline, as before.
    authentication_window: timedelta = timedelta(0)
    # Where Stripe sends the customer back after authenticating.
    authentication_return_url: str | None = None


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
    # Intents waiting for the customer to authenticate (3-D Secure): they hold nothing yet,
    # but would become authorizations if the customer authenticated.
    awaiting_action: tuple[str, ...] = ()


class AuthorizeUnlessHeldInput(Frozen):
    """A payment's first authorization: what Stripe holds for the period (`find`), else a
    new authorization (`authorize`)."""

    find: FindPeriodIntentsInput
    authorize: AuthorizeInput


class AuthenticateInput(Frozen):
    """Confirm an intent that failed off-session with `authentication_required` again,
    on-session, so that Stripe gives the URL where the customer authenticates."""

    intent_id: str
    payment_method_id: str
    return_url: str | None
    idempotency_key: str


class IntentState(Frozen):
    """A PaymentIntent as Stripe holds it now: its status, the URL where the customer
    authenticates while it is `requires_action`, and its last error when it failed."""

    intent_id: str
    status: str
    amount_capturable: int = 0
    amount_received: int = 0
    next_action_url: str | None = None
    error_code: str | None = None
    decline_code: str | None = None
    error_message: str | None = None


class ReadIntentInput(Frozen):
    intent_id: str


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


class RecordActionRequiredInput(Frozen):
    """The decline that asked for authentication (it names the intent), and where the
    customer authenticates."""

    payment_id: str
    generation: int
    decline: Decline
    next_action_url: str | None  # None when Stripe's next action is not a redirect


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
    # Where the customer authenticates, while the payment is `action_required`.
    next_action_url: str | None = None
    created_at: datetime
    updated_at: datetime


class PaymentEvent(Frozen):
    payment_id: str
    from_status: PaymentStatus | None
    to_status: PaymentStatus
    detail: dict[str, object]
    occurred_at: datetime


# ----- the billing run: one workflow per period that launches its payments -------------------


class BillableRow(Frozen):
    """A payment row with what starting its workflow needs; the ledger's side of a launch."""

    payment_id: str
    customer_id: str
    billing_period: str
    amount: int
    currency: str
    status: PaymentStatus
    stripe_customer_id: str
    payment_method_id: str


class LaunchCounts(Frozen):
    """What launching did, added up over pages and continue-as-new."""

    rows_created: int = 0
    started: int = 0
    resumed: int = 0  # stranded: open in the ledger, their workflow closed
    already_launched: int = 0
    already_final: int = 0

    @property
    def payments(self) -> int:
        return self.started + self.resumed + self.already_launched + self.already_final

    def __add__(self, other: "LaunchCounts") -> "LaunchCounts":
        return LaunchCounts(
            **{name: getattr(self, name) + getattr(other, name) for name in type(self).model_fields}
        )


class PeriodCounts(Frozen):
    """The period's payments by status, and the amounts captured by currency."""

    by_status: dict[PaymentStatus, int] = {}
    received: dict[str, int] = {}

    @property
    def total(self) -> int:
        return sum(self.by_status.values())

    def count(self, *statuses: PaymentStatus) -> int:
        return sum(self.by_status.get(s, 0) for s in statuses)


class BillingRunInput(Frozen):
    """A period's billing run. The fields from `after_customer` on carry the run's state
    across continue-as-new."""

    period: str = Field(pattern=r"^\d{4}-(0[1-9]|1[0-2])$")
    policy: BillingPolicy
    # Payments started per second: the Stripe create queue's rate, so that started payments
    # do not pile up behind it.
    launch_rate: float = Field(default=20.0, gt=0)
    page_size: int = Field(default=1000, gt=0, le=1000)
    pages_per_run: int = Field(default=10, gt=0)
    # While payments are on their way, the run reads the ledger this often; while every open
    # payment waits for a dunning retry, this much less often.
    poll_interval: timedelta = timedelta(seconds=5)
    idle_interval: timedelta = timedelta(minutes=10)
    # When the counts have not moved for this long while payments are under way (for a day
    # while only dunning retries remain), the run launches every page again: stranded
    # payments (workflow terminated, row restored from a backup) are resumed.
    sweep_after: timedelta = timedelta(minutes=30)
    # The payments' task queue; None: the run's own. The scale benchmark points it at a queue
    # no worker polls, to time the launch alone.
    payments_task_queue: str | None = None
    after_customer: str | None = None
    launched: LaunchCounts = LaunchCounts()
    launch_done: bool = False
    runs: int = 1
    sweeps_requested: int = 0
    sweeps_done: int = 0
    sweep_policy: BillingPolicy | None = None


class LaunchPageInput(Frozen):
    period: str
    policy: BillingPolicy
    launch_rate: float
    page_size: int
    task_queue: str  # the payments' own
    after_customer: str | None = None  # the page's keyset cursor
    # False for the run's own sweeps: they resume, and never bill a customer who was not
    # there when the period was launched (or `bill` last ran).
    create_rows: bool = True


class LaunchPageResult(Frozen):
    counts: LaunchCounts
    last: str | None  # the cursor for the next page; None when this page was the last


class RunProgress(Frozen):
    """What the run's `progress` query answers."""

    period: str
    phase: str  # launching, waiting, done
    launched: LaunchCounts
    counts: PeriodCounts
    runs: int  # this run and the ones it continued as new from
    # `sweep` signals received, and how many a finished sweep has answered: `bill` waits
    # until the one it sent is answered.
    sweeps_requested: int = 0
    sweeps_done: int = 0


class BillingSummary(Frozen):
    """A billing run's result: what it launched, and how every payment of the period ended."""

    period: str
    launched: LaunchCounts
    counts: PeriodCounts


class ScheduledBillingInput(Frozen):
    """What the monthly Schedule passes to each run it fires."""

    policy: BillingPolicy
    launch_rate: float = Field(default=20.0, gt=0)
    poll_interval: timedelta = timedelta(seconds=5)
    time_zone: str = "UTC"
    # Bill the month before the fire time (in arrears), or the month of it.
    in_arrears: bool = True


# ----- refunds: one workflow per refund of a captured payment --------------------------------


class RefundRecord(Frozen):
    """A row of the `refunds` table."""

    payment_id: str
    n: int
    amount: int
    currency: str
    reason: RefundReason
    status: RefundStatus
    stripe_refund_id: str | None = None
    failure_code: str | None = None
    failure_message: str | None = None
    request_id: str | None = None  # the id `refund --request-id` gave, if any
    created_at: datetime
    updated_at: datetime


class RefundInput(Frozen):
    """Refund `n` of a payment, as reserved in the ledger before its workflow starts."""

    payment_id: str
    n: int = Field(ge=1)
    amount: int = Field(gt=0)
    currency: str
    reason: RefundReason
    intent_id: str  # the captured PaymentIntent
    billing_period: str
    customer_id: str


class RefundRequest(Frozen):
    """What the `refund` activity sends to Stripe."""

    payment_id: str
    n: int
    intent_id: str
    amount: int
    reason: RefundReason
    idempotency_key: str


class RefundMade(Frozen):
    """The refund Stripe holds for a request, made now or found."""

    refund_id: str
    amount: int
    status: str  # Stripe's: succeeded, pending…


class RefundRefusal(Frozen):
    """Why Stripe refused a refund, carried as the details of a `RefundRefused` error."""

    code: str
    message: str


class RecordRefundInput(Frozen):
    payment_id: str
    n: int
    refund_id: str
    amount: int


class RecordRefundFailureInput(Frozen):
    payment_id: str
    n: int
    failure_code: str
    failure_message: str


class RefundResult(Frozen):
    payment_id: str
    n: int
    status: RefundStatus
    amount: int
    currency: str
    stripe_refund_id: str | None = None
    failure_code: str | None = None
    failure_message: str | None = None
    payment_status: PaymentStatus | None = None  # after a refund that succeeded


# ----- Stripe's events, as the webhook receiver hands them to a payment ---------------------


class StripeEventFact(Frozen):
    """What one Stripe event says about a payment, as the webhook receiver hands it on: the
    `stripe_event` signal to the running workflow, or a `payment_events` row's detail once the
    workflow is closed. Stripe sends events at least once and in any order: `event_id` is the
    identity, and `created` (Stripe's clock, Unix seconds) the order they happened in."""

    event_id: str
    type: str
    created: int
    intent_id: str | None = None
    charge_id: str | None = None
    # The PaymentIntent's status, or the charge's, as the event shows it.
    status: str | None = None
    amount: int | None = None
    amount_capturable: int | None = None
    amount_received: int | None = None
    amount_refunded: int | None = None
    failure_code: str | None = None
    dispute_id: str | None = None
    dispute_status: str | None = None
    dispute_reason: str | None = None
