"""Stub activities for pure workflow-logic tests: they record calls and play a script."""

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime

from temporalio import activity
from temporalio.exceptions import ApplicationError

from billing.constants import ErrorType, PaymentStatus, RefundReason
from billing.models import (
    AuthenticateInput,
    Authorization,
    AuthorizeInput,
    AuthorizeUnlessHeldInput,
    BeginAttemptInput,
    BeginCaptureInput,
    BillingPolicy,
    Capture,
    CaptureAllowed,
    CaptureInput,
    Decline,
    FinalizeInput,
    FindAuthorizationInput,
    FindPeriodIntentsInput,
    IntentState,
    PaymentInput,
    PaymentState,
    PeriodIntents,
    ReadIntentInput,
    ReadPaymentInput,
    RecordActionRequiredInput,
    RecordAttentionInput,
    RecordAuthorizationInput,
    RecordCancellationInput,
    RecordDeclineInput,
    RecordFailureInput,
    RecordPaidInput,
    RecordRefundFailureInput,
    RecordRefundInput,
    RefundInput,
    RefundMade,
    RefundRefusal,
    RefundRequest,
    VoidInput,
)


def payment_input(policy: BillingPolicy | None = None) -> PaymentInput:
    return PaymentInput(
        payment_id=str(uuid.uuid4()),
        customer_id=str(uuid.uuid4()),
        billing_period="2026-11",
        amount=4200,
        currency="usd",
        stripe_customer_id="cus_1",
        payment_method_id="pm_card_visa",
        policy=policy or BillingPolicy(),
    )


def declined(decline_code: str, intent_id: str = "pi_declined") -> ApplicationError:
    decline = Decline(
        code="card_declined",
        decline_code=decline_code,
        message=f"declined: {decline_code}",
        intent_id=intent_id,
    )
    return ApplicationError(
        decline.message, decline, type=ErrorType.CARD_DECLINED, non_retryable=True
    )


def intent_state(status: str, intent_id: str = "pi_declined", **fields: object) -> IntentState:
    """A PaymentIntent as request_authentication or read_intent answer it."""
    return IntentState.model_validate({"intent_id": intent_id, "status": status, **fields})


def business_error(error_type: ErrorType) -> ApplicationError:
    return ApplicationError(f"stub {error_type}", type=error_type, non_retryable=True)


@dataclass
class StubActivities:
    """`authorize_errors[i]` is what attempt i raises (None: it authorizes `pi_<key>`);
    `capture_errors` and `void_errors` are raised by successive calls until used up.

    `existing_authorization` is what Stripe holds once authorize has been called (an answer
    that was lost); `held_at_stripe` is what converging finds on successive calls, before
    that. `row` is what read_payment returns (default: pending, generation 1);
    `capture_refused_by` is the status that wins over begin_capture.

    3-D Secure: request_authentication answers `requires_action` with a URL; `intent_reads`
    are what successive read_intent calls answer (then `requires_action` again)."""

    authorize_errors: list[Exception | None] = field(default_factory=list)
    capture_errors: list[Exception] = field(default_factory=list)
    void_errors: list[Exception] = field(default_factory=list)
    existing_authorization: Authorization | None = None
    held_at_stripe: list[PeriodIntents] = field(default_factory=list)
    row: PaymentState | None = None
    payment_methods: list[str] = field(default_factory=list)
    capture_refused_by: PaymentStatus | None = None
    intent_reads: list[IntentState] = field(default_factory=list)
    period_intents_error: Exception | None = None  # raised by every find_period_intents
    begin_capture_error: Exception | None = None  # raised by every begin_capture
    capture_gate: asyncio.Event | None = None
    capture_started: asyncio.Event = field(default_factory=asyncio.Event)
    calls: list[tuple[str, object]] = field(default_factory=list)
    combined: int = 0  # authorize_unless_held activities run
    scheduled: list[tuple[str, datetime]] = field(default_factory=list)
    _reached: dict[str, asyncio.Event] = field(default_factory=dict)

    def _record(self, name: str, input: object) -> None:
        self.calls.append((name, input))
        self.scheduled.append((name, activity.info().scheduled_time))
        self.reached(name).set()

    def reached(self, name: str) -> asyncio.Event:
        """Set once the activity `name` has been called."""
        return self._reached.setdefault(name, asyncio.Event())

    def all(self) -> list[Callable[..., Awaitable[object]]]:
        @activity.defn(name="authorize")
        async def authorize(input: AuthorizeInput) -> Authorization:
            attempt = sum(name == "authorize" for name, _ in self.calls)
            self._record("authorize", input)
            error = self.authorize_errors[attempt] if attempt < len(self.authorize_errors) else None
            if error:
                raise error
            return Authorization(intent_id=f"pi_{input.idempotency_key}", amount_capturable=4200)

        @activity.defn(name="capture")
        async def capture(input: CaptureInput) -> Capture:
            self._record("capture", input)
            self.capture_started.set()
            if self.capture_gate:
                await self.capture_gate.wait()
            if self.capture_errors:
                raise self.capture_errors.pop(0)
            return Capture(intent_id=input.intent_id, amount_received=4200)

        @activity.defn(name="void")
        async def void(input: VoidInput) -> None:
            self._record("void", input)
            if self.void_errors:
                raise self.void_errors.pop(0)

        @activity.defn(name="find_authorization")
        async def find_authorization(input: FindAuthorizationInput) -> Authorization | None:
            self._record("find_authorization", input)
            return self.existing_authorization

        @activity.defn(name="find_period_intents")
        async def find_period_intents(input: FindPeriodIntentsInput) -> PeriodIntents:
            self._record("find_period_intents", input)
            if self.period_intents_error is not None:
                raise self.period_intents_error
            if self.held_at_stripe:
                return self.held_at_stripe.pop(0)
            if self.existing_authorization and "authorize" in self.names():
                return PeriodIntents(capturable=(self.existing_authorization,))
            return PeriodIntents()

        @activity.defn(name="authorize_unless_held")
        async def authorize_unless_held(input: AuthorizeUnlessHeldInput) -> PeriodIntents:
            """As the real one: the list, then authorize when nothing is held. `calls`
            records the two Stripe calls it makes; `combined` counts the activity."""
            self.combined += 1
            held = await find_period_intents(input.find)
            if held.captured or held.capturable:
                return held
            return PeriodIntents(capturable=(await authorize(input.authorize),))

        @activity.defn(name="request_authentication")
        async def request_authentication(input: AuthenticateInput) -> IntentState:
            self._record("request_authentication", input)
            url = f"https://stripe.test/3ds/{input.intent_id}"
            return intent_state("requires_action", input.intent_id, next_action_url=url)

        @activity.defn(name="read_intent")
        async def read_intent(input: ReadIntentInput) -> IntentState:
            self._record("read_intent", input)
            if self.intent_reads:
                return self.intent_reads.pop(0)
            return intent_state("requires_action", input.intent_id)

        @activity.defn(name="read_payment")
        async def read_payment(input: ReadPaymentInput) -> PaymentState:
            self._record("read_payment", input)
            method = self.payment_methods.pop(0) if self.payment_methods else "pm_card_visa"
            return self.row or PaymentState(
                status=PaymentStatus.PENDING, generation=1, intent_id=None, payment_method_id=method
            )

        @activity.defn(name="begin_capture")
        async def begin_capture(input: BeginCaptureInput) -> CaptureAllowed:
            self._record("begin_capture", input)
            if self.begin_capture_error is not None:
                raise self.begin_capture_error
            if self.capture_refused_by is not None:
                return CaptureAllowed(allowed=False, status=self.capture_refused_by)
            return CaptureAllowed(allowed=True, status=PaymentStatus.CAPTURING)

        @activity.defn(name="record_paid")
        async def record_paid(input: RecordPaidInput) -> None:
            self._record("record_paid", input)

        @activity.defn(name="record_attention")
        async def record_attention(input: RecordAttentionInput) -> None:
            self._record("record_attention", input)

        @activity.defn(name="record_authorization")
        async def record_authorization(input: RecordAuthorizationInput) -> None:
            self._record("record_authorization", input)

        @activity.defn(name="finalize")
        async def finalize(input: FinalizeInput) -> None:
            self._record("finalize", input)

        @activity.defn(name="record_failure")
        async def record_failure(input: RecordFailureInput) -> None:
            self._record("record_failure", input)

        @activity.defn(name="record_decline")
        async def record_decline(input: RecordDeclineInput) -> None:
            self._record("record_decline", input)

        @activity.defn(name="begin_attempt")
        async def begin_attempt(input: BeginAttemptInput) -> None:
            self._record("begin_attempt", input)

        @activity.defn(name="record_cancellation")
        async def record_cancellation(input: RecordCancellationInput) -> None:
            self._record("record_cancellation", input)

        @activity.defn(name="record_action_required")
        async def record_action_required(input: RecordActionRequiredInput) -> None:
            self._record("record_action_required", input)

        return [
            authorize,
            capture,
            void,
            find_authorization,
            find_period_intents,
            authorize_unless_held,
            read_payment,
            begin_capture,
            record_paid,
            record_attention,
            record_authorization,
            finalize,
            record_failure,
            record_decline,
            begin_attempt,
            record_cancellation,
            request_authentication,
            read_intent,
            record_action_required,
        ]

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def inputs(self, name: str) -> list[object]:
        return [input for n, input in self.calls if n == name]

    def keys(self, name: str) -> list[str]:
        return [
            i.idempotency_key
            for i in self.inputs(name)
            if isinstance(i, AuthorizeInput | CaptureInput | VoidInput)
        ]

    def when(self, name: str) -> list[datetime]:
        return [t for n, t in self.scheduled if n == name]


def refund_input() -> RefundInput:
    return RefundInput(
        payment_id=str(uuid.uuid4()),
        n=1,
        amount=4200,
        currency="usd",
        reason=RefundReason.REQUESTED_BY_CUSTOMER,
        intent_id="pi_captured",
        billing_period="2026-11",
        customer_id=str(uuid.uuid4()),
    )


def refused(code: str) -> ApplicationError:
    refusal = RefundRefusal(code=code, message=f"Stripe refused: {code}")
    return ApplicationError(
        refusal.message, refusal, type=ErrorType.REFUND_REFUSED, non_retryable=True
    )


@dataclass
class RefundStubs:
    """The refund workflow's activities: `refund_errors` are raised by successive refund
    calls until used up, then it refunds; the ledger records what it is told."""

    refund_errors: list[Exception] = field(default_factory=list)
    payment_status: PaymentStatus = PaymentStatus.REFUNDED
    calls: list[tuple[str, object]] = field(default_factory=list)

    def all(self) -> list[Callable[..., Awaitable[object]]]:
        @activity.defn(name="refund")
        async def refund(input: RefundRequest) -> RefundMade:
            self.calls.append(("refund", input))
            if self.refund_errors:
                raise self.refund_errors.pop(0)
            return RefundMade(refund_id=f"re_{input.n}", amount=input.amount, status="succeeded")

        @activity.defn(name="record_refund")
        async def record_refund(input: RecordRefundInput) -> PaymentStatus:
            self.calls.append(("record_refund", input))
            return self.payment_status

        @activity.defn(name="record_refund_failure")
        async def record_refund_failure(input: RecordRefundFailureInput) -> None:
            self.calls.append(("record_refund_failure", input))

        return [refund, record_refund, record_refund_failure]

    def inputs(self, name: str) -> list[object]:
        return [input for n, input in self.calls if n == name]
