"""Names shared by the workflow, the worker, the starter and the Web UI: defined once here."""

from datetime import timedelta
from enum import StrEnum

from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes

TASK_QUEUE = "billing"

BILLING_PERIOD = SearchAttributeKey.for_keyword("BillingPeriod")
CUSTOMER_ID = SearchAttributeKey.for_keyword("CustomerId")
PAYMENT_STATUS = SearchAttributeKey.for_keyword("PaymentStatus")
SEARCH_ATTRIBUTES = (BILLING_PERIOD, CUSTOMER_ID, PAYMENT_STATUS)


class PaymentStatus(StrEnum):
    """A payment's state, the same in Postgres and in the `PaymentStatus` search attribute.

    pending: awaiting an authorization attempt; retrying: a soft decline, waiting for the next
    dunning attempt; authorized: an uncaptured authorization is recorded (the capture window);
    capturing: the ledger allowed the capture, which may already be at Stripe; action_required:
    the customer's bank asks for 3-D Secure, and the payment waits (with a deadline) for the
    customer to authenticate at the recorded `next_action_url`; needs_attention:
    the workflow ended on something it cannot settle alone, after voiding every hold, and a
    person must look (`failure_code` and `failure_message` say why); partially_refunded and
    refunded: captured, then part or all of it given back by `refund` (the `refunds` table).
    """

    PENDING = "pending"
    RETRYING = "retrying"
    ACTION_REQUIRED = "action_required"
    AUTHORIZED = "authorized"
    CAPTURING = "capturing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    NEEDS_ATTENTION = "needs_attention"
    PARTIALLY_REFUNDED = "partially_refunded"
    REFUNDED = "refunded"


def starting_search_attributes(billing_period: str, customer_id: str) -> TypedSearchAttributes:
    """What a payment's workflow shows in the Web UI from its start. Set at start, they cost
    no upsert event and no extra visibility write."""
    return TypedSearchAttributes(
        [
            SearchAttributePair(BILLING_PERIOD, billing_period),
            SearchAttributePair(CUSTOMER_ID, customer_id),
            SearchAttributePair(PAYMENT_STATUS, PaymentStatus.PENDING.value),
        ]
    )


# Statuses a workflow ends in. `bill` leaves such a payment alone; any other is open, and an
# open payment whose workflow is closed is stranded: `bill` resumes it.
TERMINAL_STATUSES = frozenset(
    {
        PaymentStatus.SUCCEEDED,
        PaymentStatus.FAILED,
        PaymentStatus.CANCELLED,
        PaymentStatus.NEEDS_ATTENTION,
        PaymentStatus.PARTIALLY_REFUNDED,
        PaymentStatus.REFUNDED,
    }
)
# Statuses of a payment whose money was captured: a refund may follow only the first two.
CAPTURED_STATUSES = frozenset(
    {PaymentStatus.SUCCEEDED, PaymentStatus.PARTIALLY_REFUNDED, PaymentStatus.REFUNDED}
)
REFUNDABLE_STATUSES = frozenset({PaymentStatus.SUCCEEDED, PaymentStatus.PARTIALLY_REFUNDED})


class RefundStatus(StrEnum):
    """A row of the `refunds` table: `requested` is reserved before Stripe is asked, and counts
    against what remains refundable until it ends `succeeded` or `failed` (Stripe refused)."""

    REQUESTED = "requested"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class RefundReason(StrEnum):
    """Stripe's refund reasons."""

    REQUESTED_BY_CUSTOMER = "requested_by_customer"
    DUPLICATE = "duplicate"
    FRAUDULENT = "fraudulent"


class ErrorType(StrEnum):
    """`ApplicationError.type` values for business failures that must not be retried."""

    CARD_DECLINED = "CardDeclined"
    AUTHORIZATION_EXPIRED = "AuthorizationExpired"
    INTENT_NOT_CAPTURABLE = "IntentNotCapturable"
    ALREADY_CAPTURED = "AlreadyCaptured"
    STRIPE_OUTCOME_UNKNOWN = "StripeOutcomeUnknown"
    IDEMPOTENCY_CONFLICT = "IdempotencyConflict"
    STRIPE_REJECTED = "StripeRejected"
    FORBIDDEN_TRANSITION = "ForbiddenTransition"
    UNKNOWN_PAYMENT = "UnknownPayment"
    # An authorize key first sent so long ago that Stripe may have forgotten it: resending it
    # could authorize a second time, so the workflow converges instead.
    KEY_MAY_BE_FORGOTTEN = "IdempotencyKeyMayBeForgotten"
    # Stripe holds more than one capture for one (Stripe customer, period).
    CHARGED_TWICE = "ChargedTwice"
    # A ledger write from a generation older than the row's: a newer one owns the payment.
    FENCED = "FencedByNewerGeneration"
    # Stripe refused a refund (`charge_already_refunded`, `amount_too_large`…): it ends failed.
    REFUND_REFUSED = "RefundRefused"
    # The customer did not authenticate (3-D Secure) before the payment's deadline.
    AUTHENTICATION_EXPIRED = "AuthenticationExpired"


# A retryable failure type, so never in ErrorType: a 429 waits and tries again.
RATE_LIMITED = "StripeRateLimited"

# Declines that may succeed later; every other decline is final.
SOFT_DECLINE_CODES = frozenset(
    {
        "insufficient_funds",
        "processing_error",
        "try_again_later",
        "issuer_not_available",
        "reenter_transaction",
        "approve_with_id",
        "call_issuer",
    }
)

# The decline of a card whose bank asks the customer to authenticate (3-D Secure): with an
# authentication window in the policy the payment asks the customer, else it is final.
AUTHENTICATION_REQUIRED = "authentication_required"

# An uncaptured authorization lives 7 days, but only about 4 days 18 hours for Visa
# merchant-initiated charges: a capture window must end before the shorter one.
SHORTEST_AUTHORIZATION_LIFETIME = timedelta(days=4, hours=18)


class CancelOutcome(StrEnum):
    """What `cancel` did; each has its own exit code in starter.py."""

    CANCELLED = "cancelled"
    ALREADY_CANCELLED = "already cancelled"
    ALREADY_CAPTURED = "already captured"
    FAILED = "failed"
    NEEDS_ATTENTION = "needs attention"
    UNKNOWN_PAYMENT = "unknown payment"
    # The deadline passed: the request is recorded and takes effect, the outcome is not known.
    REQUESTED = "cancel requested"


WORKFLOW_ID_PREFIX = "payment-"


def workflow_id(payment_id: str) -> str:
    return f"{WORKFLOW_ID_PREFIX}{payment_id}"


def payment_id_of(workflow_id: str) -> str | None:
    """The payment a workflow id names; None for a workflow that is not a payment's."""
    if workflow_id.startswith(WORKFLOW_ID_PREFIX):
        return workflow_id.removeprefix(WORKFLOW_ID_PREFIX)
    return None


def billing_run_id(period: str) -> str:
    """One run per period, whether `bill` or the Schedule started it."""
    return f"billing-run-{period}"


def period_search_attributes(billing_period: str) -> TypedSearchAttributes:
    """A billing run is listed with its period, as its payments are."""
    return TypedSearchAttributes([SearchAttributePair(BILLING_PERIOD, billing_period)])


REFUND_WORKFLOW_ID_PREFIX = "refund-"


def refund_workflow_id(payment_id: str, n: int) -> str:
    """Refund `n` of a payment (n counts the payment's refunds from 1): one workflow each."""
    return f"{REFUND_WORKFLOW_ID_PREFIX}{payment_id}-{n}"


def refund_key(payment_id: str, n: int, resend: int = 0) -> str:
    """Stripe idempotency key of refund `n`; `resend` as in `idempotency_key`."""
    return resend_key(f"pay_{payment_id}_refund_{n}", resend)


def idempotency_key(payment_id: str, step: str, generation: int, resend: int = 0) -> str:
    """Stripe idempotency key: derived from the payment, never random.

    `resend` counts deliberate new keys for a capture or void whose first key Stripe poisoned
    with a stored 500 after the workflow read the intent and saw the call had not taken effect.
    """
    return resend_key(f"pay_{payment_id}_{step}_{generation}", resend)


def void_key(payment_id: str, intent_id: str, resend: int = 0) -> str:
    """Voids key on the intent they release: a payment may release several in one
    generation (extra authorizations found when converging)."""
    return resend_key(f"pay_{payment_id}_void_{intent_id}", resend)


def resend_key(key: str, resend: int) -> str:
    """The key suffix rule: the nth deliberate resend of a call whose key Stripe poisoned
    with a stored 500 (after reading showed the call had not taken effect) adds `_r<n>`."""
    return f"{key}_r{resend}" if resend else key
