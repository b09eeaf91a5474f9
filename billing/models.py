"""Typed inputs and results of the workflow and its activities, and the ledger's records.

Temporal carries them with `pydantic_data_converter`. None of them holds a secret: the Stripe
key lives only in the worker's settings.
"""

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from billing.constants import PaymentStatus


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)


class PaymentInput(Frozen):
    """Everything the workflow needs, copied from the payment row at billing time."""

    payment_id: str
    customer_id: str
    billing_period: str
    amount: int = Field(gt=0)
    currency: str
    stripe_customer_id: str
    payment_method_id: str


class PaymentResult(Frozen):
    payment_id: str
    status: PaymentStatus
    stripe_payment_intent_id: str | None = None
    amount_received: int | None = None
    failure_code: str | None = None


class AuthorizeInput(Frozen):
    payment_id: str
    amount: int
    currency: str
    stripe_customer_id: str
    payment_method_id: str
    idempotency_key: str


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


class RecordAuthorizationInput(Frozen):
    payment_id: str
    intent_id: str


class FinalizeInput(Frozen):
    payment_id: str
    intent_id: str
    amount_received: int


class RecordFailureInput(Frozen):
    payment_id: str
    failure_code: str
    failure_message: str
    intent_id: str | None = None


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
    created_at: datetime
    updated_at: datetime


class PaymentEvent(Frozen):
    payment_id: str
    from_status: PaymentStatus | None
    to_status: PaymentStatus
    detail: dict[str, object]
    occurred_at: datetime
