"""Ledger writes: guarded, idempotent transitions of a payment row."""

from collections.abc import Iterator
from contextlib import contextmanager

import asyncpg
from temporalio import activity
from temporalio.exceptions import ApplicationError

from billing.constants import ErrorType, PaymentStatus
from billing.ledger import ForbiddenTransition, Ledger, UnknownPayment
from billing.models import FinalizeInput, RecordAuthorizationInput, RecordFailureInput


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


class LedgerActivities:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._ledger = Ledger(pool)

    @activity.defn(name="record_authorization")
    async def record_authorization(self, input: RecordAuthorizationInput) -> None:
        """Store the charge id: pending -> authorized."""
        with ledger_rules_are_final():
            await self._ledger.transition(
                input.payment_id, PaymentStatus.AUTHORIZED, intent_id=input.intent_id
            )

    @activity.defn(name="finalize")
    async def finalize(self, input: FinalizeInput) -> None:
        """authorized -> succeeded, with the amount Stripe captured."""
        with ledger_rules_are_final():
            await self._ledger.transition(
                input.payment_id,
                PaymentStatus.SUCCEEDED,
                intent_id=input.intent_id,
                amount_received=input.amount_received,
            )

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
            )
