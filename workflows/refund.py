"""One workflow per refund of a captured payment: refund -> record_refund.

0. `RefundLedger.reserve`, by the CLI before the start: refund n `requested`, under the
   payment row's lock. No key needed.
1. `refund`: list the intent's refunds; create one under `pay_<id>_refund_<n>` unless Stripe
   already holds refund n.
2. `record_refund` (local): refund n `succeeded`; the payment `partially_refunded` or
   `refunded`, with its payment_events row. Or, when Stripe refused,
   `record_refund_failure` (local): refund n `failed`, with Stripe's code.

The workflow id is `refund-<payment id>-<n>`: one workflow per reserved refund. A retry of step
1 finds the refund its earlier attempt made (by its metadata, `payment_id` and `refund_n`)
before it sends anything, and the key replays Stripe's answer besides, so a crash anywhere
refunds nothing twice. A 500 that Stripe stored under the key, with no refund behind it, is
sent again under `…_r1`, `…_r2`. An error the workflow does not expect fails it and leaves
refund n `requested`: it still counts against what remains, and the next `refund` of the
payment resumes it.
"""

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.ledger_activities import LedgerActivities
    from activities.stripe_activities import StripeActivities
    from billing.constants import (
        PAYMENT_STATUS,
        ErrorType,
        RefundStatus,
        refund_key,
    )
    from billing.models import (
        RecordRefundFailureInput,
        RecordRefundInput,
        RefundInput,
        RefundMade,
        RefundRefusal,
        RefundRequest,
        RefundResult,
    )
    from billing.summaries import amount_text
    from workflows.payment import (
        LEDGER_RETRY,
        LEDGER_TIMEOUT,
        LOCAL_RETRY_THRESHOLD,
        MAX_RESENDS,
        STRIPE_RETRY,
        STRIPE_TIMEOUT,
        business_failure,
    )

# Stripe's answers that end the refund `failed`: it refused (nothing to refund, an amount
# above what remains, a disputed charge…), or does not know the PaymentIntent.
REFUSALS = frozenset({ErrorType.REFUND_REFUSED, ErrorType.STRIPE_REJECTED})


@workflow.defn(name="RefundWorkflow")
class RefundWorkflow:
    @workflow.init
    def __init__(self, input: RefundInput) -> None:
        self._input = input
        self._step = "starting"

    @workflow.query(name="current_step")
    def current_step(self) -> str:
        return self._step

    @workflow.run
    async def run(self, input: RefundInput) -> RefundResult:
        self._step = "refund"
        made = await self._refund()
        if isinstance(made, ApplicationError):
            return await self._record_failure(made)
        self._step = "record_refund"
        status = await workflow.execute_local_activity_method(
            LedgerActivities.record_refund,
            RecordRefundInput(
                payment_id=input.payment_id, n=input.n, refund_id=made.refund_id, amount=made.amount
            ),
            start_to_close_timeout=LEDGER_TIMEOUT,
            retry_policy=LEDGER_RETRY,
            local_retry_threshold=LOCAL_RETRY_THRESHOLD,
            summary="ledger: record refund",
        )
        workflow.upsert_search_attributes([PAYMENT_STATUS.value_set(status)])
        self._step = "done"
        return RefundResult(
            payment_id=input.payment_id,
            n=input.n,
            status=RefundStatus.SUCCEEDED,
            amount=made.amount,
            currency=input.currency,
            stripe_refund_id=made.refund_id,
            payment_status=status,
        )

    async def _refund(self) -> RefundMade | ApplicationError:
        """Step 1, under the refund's key; a new key only after Stripe stored a 500 under the
        last one and holds no refund n. Returns Stripe's refusal as the error."""
        input = self._input
        summary = f"refund {amount_text(input.amount, input.currency)} of {input.intent_id}"
        for resend in range(MAX_RESENDS + 1):
            try:
                return await workflow.execute_activity_method(
                    StripeActivities.refund,
                    RefundRequest(
                        payment_id=input.payment_id,
                        n=input.n,
                        intent_id=input.intent_id,
                        amount=input.amount,
                        reason=input.reason,
                        idempotency_key=refund_key(input.payment_id, input.n, resend),
                    ),
                    start_to_close_timeout=STRIPE_TIMEOUT,
                    retry_policy=STRIPE_RETRY,
                    summary=summary + (f" (new key {resend})" if resend else ""),
                )
            except ActivityError as err:
                failure = business_failure(err)
                if failure is None:
                    raise
                if failure.type in REFUSALS:
                    return failure
                if failure.type != ErrorType.STRIPE_OUTCOME_UNKNOWN or resend == MAX_RESENDS:
                    raise
        raise AssertionError("unreachable")

    async def _record_failure(self, failure: ApplicationError) -> RefundResult:
        input = self._input
        code = failure.type or "refused"
        if failure.type == ErrorType.REFUND_REFUSED and failure.details:
            code = RefundRefusal.model_validate(failure.details[0]).code
        self._step = "record_refund_failure"
        await workflow.execute_local_activity_method(
            LedgerActivities.record_refund_failure,
            RecordRefundFailureInput(
                payment_id=input.payment_id,
                n=input.n,
                failure_code=code,
                failure_message=failure.message,
            ),
            start_to_close_timeout=LEDGER_TIMEOUT,
            retry_policy=LEDGER_RETRY,
            local_retry_threshold=LOCAL_RETRY_THRESHOLD,
            summary="ledger: record refund failure",
        )
        self._step = "done"
        return RefundResult(
            payment_id=input.payment_id,
            n=input.n,
            status=RefundStatus.FAILED,
            amount=input.amount,
            currency=input.currency,
            failure_code=code,
            failure_message=failure.message,
        )
