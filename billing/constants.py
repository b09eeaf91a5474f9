"""Names shared by the workflow, the worker, the starter and the Web UI: defined once here."""

from enum import StrEnum

from temporalio.common import SearchAttributeKey

TASK_QUEUE = "billing"

BILLING_PERIOD = SearchAttributeKey.for_keyword("BillingPeriod")
CUSTOMER_ID = SearchAttributeKey.for_keyword("CustomerId")
PAYMENT_STATUS = SearchAttributeKey.for_keyword("PaymentStatus")
SEARCH_ATTRIBUTES = (BILLING_PERIOD, CUSTOMER_ID, PAYMENT_STATUS)


class PaymentStatus(StrEnum):
    """A payment's state, the same in Postgres and in the `PaymentStatus` search attribute."""

    PENDING = "pending"
    AUTHORIZED = "authorized"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_STATUSES = frozenset(
    {PaymentStatus.SUCCEEDED, PaymentStatus.FAILED, PaymentStatus.CANCELLED}
)


class ErrorType(StrEnum):
    """`ApplicationError.type` values for business failures that must not be retried."""

    CARD_DECLINED = "CardDeclined"
    INTENT_NOT_CAPTURABLE = "IntentNotCapturable"
    IDEMPOTENCY_CONFLICT = "IdempotencyConflict"
    STRIPE_REJECTED = "StripeRejected"
    FORBIDDEN_TRANSITION = "ForbiddenTransition"
    UNKNOWN_PAYMENT = "UnknownPayment"


def workflow_id(payment_id: str) -> str:
    return f"payment-{payment_id}"


def idempotency_key(payment_id: str, step: str, generation: int) -> str:
    """Stripe idempotency key: derived from the payment, never random (DESIGN.md)."""
    return f"pay_{payment_id}_{step}_{generation}"
