"""Ledger writes: guarded, idempotent transitions of a payment row."""

from collections.abc import Iterator
from contextlib import contextmanager

import asyncpg
from temporalio import activity
from temporalio.exceptions import ApplicationError

from billing.constants import TERMINAL_STATUSES, ErrorType, PaymentStatus
from billing.ledger import Fenced, ForbiddenTransition, Ledger, UnknownPayment
from billing.ledger_refunds import RefundLedger
from billing.models import (
    AttentionRecorded,
    BeginAttemptInput,
    BeginCaptureInput,
    CaptureAllowed,
    FinalizeInput,
    PaymentState,
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
)


@contextmanager
def ledger_rules_are_final() -> Iterator[None]:
    """A broken ledger rule will not mend itself on retry: fail the activity for good."""
    try:
        yield
    except UnknownPayment as err:
        raise ApplicationError(
            str(err), type=ErrorType.UNKNOWN_PAYMENT, non_retryable=True
        ) from err
    except ForbiddenTransition as err:
        raise ApplicationError(
            str(err), type=ErrorType.FORBIDDEN_TRANSITION, non_retryable=True
        ) from err
    except Fenced as err:
        raise ApplicationError(str(err), type=ErrorType.FENCED, non_retryable=True) from err


class LedgerActivities:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._ledger = Ledger(pool)
        self._refunds = RefundLedger(pool)

    @activity.defn(name="record_authorization")
    async def record_authorization(self, input: RecordAuthorizationInput) -> None:
        """Store the charge id: pending -> authorized."""
        with ledger_rules_are_final():
            await self._ledger.transition(
                input.payment_id,
                PaymentStatus.AUTHORIZED,
                intent_id=input.intent_id,
                generation=input.generation,
            )

    @activity.defn(name="read_payment")
    async def read_payment(self, input: ReadPaymentInput) -> PaymentState:
        """The row as it is now, and the customer's current payment method."""
        with ledger_rules_are_final():
            return await self._ledger.payment_state(input.payment_id)

    @activity.defn(name="begin_capture")
    async def begin_capture(self, input: BeginCaptureInput) -> CaptureAllowed:
        """authorized -> capturing, the guard before money moves. If anything else moved the
        row first (an operator's cancel), the capture is refused and says what won. A run
        whose generation is older than the row's is never allowed: it fails, FENCED."""
        with ledger_rules_are_final():
            try:
                await self._ledger.transition(
                    input.payment_id,
                    PaymentStatus.CAPTURING,
                    intent_id=input.intent_id,
                    generation=input.generation,
                )
            except ForbiddenTransition:
                state = await self._ledger.payment_state(input.payment_id)
                return CaptureAllowed(allowed=False, status=state.status)
        return CaptureAllowed(allowed=True, status=PaymentStatus.CAPTURING)

    @activity.defn(name="finalize")
    async def finalize(self, input: FinalizeInput) -> None:
        """capturing -> succeeded, with the amount Stripe captured."""
        with ledger_rules_are_final():
            await self._ledger.transition(
                input.payment_id,
                PaymentStatus.SUCCEEDED,
                intent_id=input.intent_id,
                amount_received=input.amount_received,
                generation=input.generation,
            )

    @activity.defn(name="record_paid")
    async def record_paid(self, input: RecordPaidInput) -> None:
        """An open payment -> succeeded with a capture Stripe already holds for its period
        (a lost row, a restored backup, a run resumed after capture)."""
        with ledger_rules_are_final():
            await self._ledger.transition(
                input.payment_id,
                PaymentStatus.SUCCEEDED,
                intent_id=input.intent_id,
                amount_received=input.amount_received,
                generation=input.generation,
                detail={"reason": "captured_at_stripe"},
            )

    @activity.defn(name="record_attention")
    async def record_attention(self, input: RecordAttentionInput) -> AttentionRecorded:
        """An open status -> needs_attention: the workflow met what it cannot settle alone.
        A payment that has already ended keeps its status, which is returned."""
        with ledger_rules_are_final():
            try:
                await self._ledger.transition(
                    input.payment_id,
                    PaymentStatus.NEEDS_ATTENTION,
                    intent_id=input.intent_id,
                    failure_code=input.reason,
                    failure_message=input.message,
                    generation=input.generation,
                )
            except ForbiddenTransition:
                state = await self._ledger.payment_state(input.payment_id)
                if state.status not in TERMINAL_STATUSES:
                    raise
                return AttentionRecorded(
                    recorded=False, status=state.status, intent_id=state.intent_id
                )
        return AttentionRecorded(recorded=True, status=PaymentStatus.NEEDS_ATTENTION)

    @activity.defn(name="record_failure")
    async def record_failure(self, input: RecordFailureInput) -> None:
        """pending or authorized -> failed, with Stripe's code and message."""
        with ledger_rules_are_final():
            await self._ledger.transition(
                input.payment_id,
                PaymentStatus.FAILED,
                intent_id=input.intent_id,
                failure_code=input.failure_code,
                failure_message=input.failure_message,
                generation=input.generation,
            )

    @activity.defn(name="record_decline")
    async def record_decline(self, input: RecordDeclineInput) -> None:
        """pending -> retrying: a soft decline; the next dunning attempt is scheduled."""
        with ledger_rules_are_final():
            await self._ledger.transition(
                input.payment_id,
                PaymentStatus.RETRYING,
                intent_id=input.decline.intent_id,
                failure_code=input.decline.decline_code or input.decline.code,
                failure_message=input.decline.message,
                generation=input.generation,
            )

    @activity.defn(name="record_action_required")
    async def record_action_required(self, input: RecordActionRequiredInput) -> None:
        """pending -> action_required: the bank asks for 3-D Secure; the customer is asked
        to authenticate at `next_action_url`."""
        with ledger_rules_are_final():
            await self._ledger.transition(
                input.payment_id,
                PaymentStatus.ACTION_REQUIRED,
                intent_id=input.decline.intent_id,
                failure_code=input.decline.decline_code or input.decline.code,
                failure_message=input.decline.message,
                generation=input.generation,
                next_action_url=input.next_action_url,
            )

    @activity.defn(name="begin_attempt")
    async def begin_attempt(self, input: BeginAttemptInput) -> None:
        """retrying or authorized -> pending: a new authorization generation begins."""
        with ledger_rules_are_final():
            await self._ledger.transition(
                input.payment_id,
                PaymentStatus.PENDING,
                generation=input.generation,
                detail={"reason": input.reason},
            )

    @activity.defn(name="record_cancellation")
    async def record_cancellation(self, input: RecordCancellationInput) -> None:
        """pending, retrying or authorized -> cancelled, after any authorization was voided."""
        with ledger_rules_are_final():
            await self._ledger.transition(
                input.payment_id,
                PaymentStatus.CANCELLED,
                intent_id=input.intent_id,
                generation=input.generation,
            )

    @activity.defn(name="record_refund")
    async def record_refund(self, input: RecordRefundInput) -> PaymentStatus:
        """Refund n: requested -> succeeded with Stripe's refund id; the payment moves to
        partially_refunded or refunded. Returns the payment's status."""
        with ledger_rules_are_final():
            return await self._refunds.record_succeeded(
                input.payment_id, input.n, input.refund_id, input.amount
            )

    @activity.defn(name="record_refund_failure")
    async def record_refund_failure(self, input: RecordRefundFailureInput) -> None:
        """Refund n: requested -> failed, with Stripe's code and message."""
        with ledger_rules_are_final():
            await self._refunds.record_failed(
                input.payment_id, input.n, input.failure_code, input.failure_message
            )
