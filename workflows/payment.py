"""One workflow per payment: authorize -> record_authorization -> capture -> finalize."""

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.ledger_activities import LedgerActivities
    from activities.stripe_activities import StripeActivities
    from billing.constants import (
        BILLING_PERIOD,
        CUSTOMER_ID,
        PAYMENT_STATUS,
        ErrorType,
        PaymentStatus,
        idempotency_key,
    )
    from billing.models import (
        AuthorizeInput,
        CaptureInput,
        Decline,
        FinalizeInput,
        PaymentInput,
        PaymentResult,
        RecordAuthorizationInput,
        RecordFailureInput,
    )

NON_RETRYABLE = [t.value for t in ErrorType]

# Stripe: retried without limit, each attempt under the same idempotency key. The attempt
# timeout is short so that a crashed worker's call is re-run quickly.
STRIPE_TIMEOUT = timedelta(seconds=30)
STRIPE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=1),
    non_retryable_error_types=NON_RETRYABLE,
)
LEDGER_TIMEOUT = timedelta(seconds=15)
LEDGER_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=500),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    non_retryable_error_types=NON_RETRYABLE,
)


def business_failure(err: ActivityError) -> ApplicationError | None:
    cause = err.cause
    if isinstance(cause, ApplicationError) and cause.non_retryable:
        return cause
    return None


@workflow.defn(name="PaymentWorkflow")
class PaymentWorkflow:
    @workflow.init
    def __init__(self, input: PaymentInput) -> None:
        self._input = input
        self._step = "starting"
        self._generation = 1

    @workflow.query(name="current_step")
    def current_step(self) -> str:
        return self._step

    @workflow.run
    async def run(self, input: PaymentInput) -> PaymentResult:
        workflow.upsert_search_attributes(
            [
                BILLING_PERIOD.value_set(input.billing_period),
                CUSTOMER_ID.value_set(input.customer_id),
                PAYMENT_STATUS.value_set(PaymentStatus.PENDING),
            ]
        )
        self._step = "authorize"
        try:
            authorization = await workflow.execute_activity_method(
                StripeActivities.authorize,
                AuthorizeInput(
                    payment_id=input.payment_id,
                    amount=input.amount,
                    currency=input.currency,
                    stripe_customer_id=input.stripe_customer_id,
                    payment_method_id=input.payment_method_id,
                    idempotency_key=idempotency_key(input.payment_id, "auth", self._generation),
                ),
                start_to_close_timeout=STRIPE_TIMEOUT,
                retry_policy=STRIPE_RETRY,
            )
        except ActivityError as err:
            failure = business_failure(err)
            if failure is None:
                raise
            return await self._fail(failure, intent_id=None)

        intent_id = authorization.intent_id
        self._step = "record_authorization"
        await workflow.execute_activity_method(
            LedgerActivities.record_authorization,
            RecordAuthorizationInput(payment_id=input.payment_id, intent_id=intent_id),
            start_to_close_timeout=LEDGER_TIMEOUT,
            retry_policy=LEDGER_RETRY,
        )
        self._set_status(PaymentStatus.AUTHORIZED)

        self._step = "capture"
        try:
            capture = await workflow.execute_activity_method(
                StripeActivities.capture,
                CaptureInput(
                    intent_id=intent_id,
                    idempotency_key=idempotency_key(input.payment_id, "capture", self._generation),
                ),
                start_to_close_timeout=STRIPE_TIMEOUT,
                retry_policy=STRIPE_RETRY,
            )
        except ActivityError as err:
            failure = business_failure(err)
            if failure is None:
                raise
            return await self._fail(failure, intent_id=intent_id)

        self._step = "finalize"
        await workflow.execute_activity_method(
            LedgerActivities.finalize,
            FinalizeInput(
                payment_id=input.payment_id,
                intent_id=intent_id,
                amount_received=capture.amount_received,
            ),
            start_to_close_timeout=LEDGER_TIMEOUT,
            retry_policy=LEDGER_RETRY,
        )
        self._set_status(PaymentStatus.SUCCEEDED)
        self._step = "done"
        return PaymentResult(
            payment_id=input.payment_id,
            status=PaymentStatus.SUCCEEDED,
            stripe_payment_intent_id=intent_id,
            amount_received=capture.amount_received,
        )

    async def _fail(self, failure: ApplicationError, *, intent_id: str | None) -> PaymentResult:
        """End the payment `failed`, recording Stripe's decline code when there is one."""
        code = failure.type or "failed"
        if failure.type == ErrorType.CARD_DECLINED and failure.details:
            decline = Decline.model_validate(failure.details[0])
            code = decline.decline_code or decline.code
            intent_id = intent_id or decline.intent_id
        self._step = "record_failure"
        await workflow.execute_activity_method(
            LedgerActivities.record_failure,
            RecordFailureInput(
                payment_id=self._input.payment_id,
                failure_code=code,
                failure_message=failure.message,
                intent_id=intent_id,
            ),
            start_to_close_timeout=LEDGER_TIMEOUT,
            retry_policy=LEDGER_RETRY,
        )
        self._set_status(PaymentStatus.FAILED)
        self._step = "done"
        return PaymentResult(
            payment_id=self._input.payment_id,
            status=PaymentStatus.FAILED,
            stripe_payment_intent_id=intent_id,
            failure_code=code,
        )

    def _set_status(self, status: PaymentStatus) -> None:
        workflow.upsert_search_attributes([PAYMENT_STATUS.value_set(status)])
