"""Record the histories under tests/histories/: `python -m tests.record_histories [--all]`.

It records only the cases that have no file yet. Re-record (`--all`) only on purpose: the
replay test exists to catch a workflow change that would break payments already running, so
record from the old code before changing it, not after. `--all` never re-records the FROZEN
cases: they hold the only histories of the paths before each patch.
"""

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from temporalio.client import WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from billing.constants import (
    CancelOutcome,
    ErrorType,
    PaymentStatus,
    refund_workflow_id,
    starting_search_attributes,
    workflow_id,
)
from billing.models import (
    Authorization,
    BillingPolicy,
    Capture,
    IntentState,
    PaymentMethodUpdate,
    PaymentState,
    PeriodIntents,
    RefundInput,
    StripeEventFact,
)
from local_stack.temporal import start_local_environment
from tests.stubs import (
    RefundStubs,
    StubActivities,
    business_error,
    declined,
    intent_state,
    payment_input,
    refund_input,
    refused,
)
from worker import WORKFLOW_RUNNER
from workflows.payment import PaymentWorkflow
from workflows.refund import RefundWorkflow

HISTORIES = Path(__file__).parent / "histories"
TASK_QUEUE = "record-histories"
SECOND = timedelta(seconds=1)
HOUR = timedelta(hours=1)
Handle = WorkflowHandle[PaymentWorkflow, object]


@dataclass
class Case:
    stubs: StubActivities
    policy: BillingPolicy = field(default_factory=BillingPolicy)
    start_signal: str | None = None
    attributes_at_start: bool = True  # as `bill` and `cancel` start payments
    # What an operator or customer does once the payment has started.
    during: Callable[[Handle, StubActivities], Awaitable[None]] | None = None


async def cancel_in_window(handle: Handle, stubs: StubActivities) -> None:
    await stubs.reached("record_authorization").wait()
    await handle.execute_update("cancel_payment", result_type=CancelOutcome)


async def new_card_in_dunning(handle: Handle, stubs: StubActivities) -> None:
    await stubs.reached("record_decline").wait()
    await handle.signal("payment_method_updated", PaymentMethodUpdate(payment_method_id="pm_new"))


# Recorded before the local-ledger-writes patch, without search attributes at start.
BEFORE_LOCAL_LEDGER = frozenset(
    {
        "payment_succeeded",
        "payment_declined",
        "payment_window_then_captured",
        "payment_cancelled_before_authorization",
        "payment_dunning_then_succeeded",
        "payment_expired_then_reauthorized",
        "payment_lost_answer_new_generation",
    }
)


# Recorded 2026-11-28 from the code before the exactly-once-per-period patch: the only
# histories of that path's voids, update, signal and failures.
BEFORE_EXACTLY_ONCE = frozenset(
    {
        "local_ledger_succeeded",
        "local_ledger_dunning_then_succeeded",
        "local_ledger_started_without_attributes",
        "local_ledger_cancelled_in_window",
        "local_ledger_new_card_in_dunning",
        "local_ledger_capture_failed_voided",
        "local_ledger_hard_decline",
    }
)
# Recorded 2026-11-28 before the authorize-unless-held patch: the only histories of a first
# authorization that converges and authorizes as two activities.
BEFORE_AUTHORIZE_UNLESS_HELD = frozenset(
    {
        "exactly_once_succeeded",
        "exactly_once_cancelled_by_temporal",
        "exactly_once_new_card_in_dunning",
        "exactly_once_capture_refused_by_ledger",
        "resume_as_recorded_capturing",
        "resume_as_recorded_dunning",
        # A fresh payment under resume-as-recorded, the state of payments in flight when
        # workers with the patch roll out. Recorded from 6b2a01a with the case of
        # unless_held_succeeded; it has no case here, since this code takes the new path.
        "resume_as_recorded_succeeded",
    }
)
FROZEN = BEFORE_LOCAL_LEDGER | BEFORE_EXACTLY_ONCE | BEFORE_AUTHORIZE_UNLESS_HELD


async def cancel_by_temporal(handle: Handle, stubs: StubActivities) -> None:
    await stubs.reached("record_authorization").wait()
    await handle.cancel()


async def waiting_for_authentication(handle: Handle) -> None:
    """Once the payment waits for the customer (3-D Secure): its wait has begun."""
    for _ in range(600):
        if await handle.query("current_step", result_type=str) == "waiting_for_authentication":
            return
        await asyncio.sleep(0.05)
    raise TimeoutError("the payment never waited for authentication")


async def authenticated_by_webhook(handle: Handle, stubs: StubActivities) -> None:
    await waiting_for_authentication(handle)
    fact = StripeEventFact(
        event_id="evt_authenticated",
        type="payment_intent.amount_capturable_updated",
        created=1795000000,
        intent_id="pi_declined",
        status="requires_capture",
        amount_capturable=4200,
    )
    await handle.signal("stripe_event", fact)


async def cancel_while_awaiting_authentication(handle: Handle, stubs: StubActivities) -> None:
    await waiting_for_authentication(handle)
    await handle.execute_update("cancel_payment", result_type=CancelOutcome)


def needs_authentication(*reads: IntentState) -> StubActivities:
    """The first authorization declines `authentication_required` (3-D Secure); `reads` are
    what reading the intent finds."""
    return StubActivities(
        authorize_errors=[declined("authentication_required")], intent_reads=list(reads)
    )


def resumed_row(status: PaymentStatus, intent_id: str, dunning_attempts: int = 0) -> PaymentState:
    return PaymentState(
        status=status,
        generation=1,
        intent_id=intent_id,
        payment_method_id="pm_card_visa",
        dunning_attempts=dunning_attempts,
    )


def cases() -> dict[str, Case]:
    return {
        "payment_succeeded": Case(StubActivities(capture_errors=[RuntimeError("reset")])),
        "payment_declined": Case(StubActivities(authorize_errors=[declined("insufficient_funds")])),
        "payment_window_then_captured": Case(StubActivities(), BillingPolicy(capture_delay=SECOND)),
        "payment_cancelled_before_authorization": Case(StubActivities(), start_signal="cancel"),
        "payment_dunning_then_succeeded": Case(
            StubActivities(authorize_errors=[declined("insufficient_funds"), None]),
            BillingPolicy(dunning_schedule=(SECOND,)),
        ),
        "payment_expired_then_reauthorized": Case(
            StubActivities(capture_errors=[business_error(ErrorType.AUTHORIZATION_EXPIRED)]),
            BillingPolicy(reauthorize_expired=True),
        ),
        "local_ledger_succeeded": Case(StubActivities(capture_errors=[RuntimeError("reset")])),
        "local_ledger_dunning_then_succeeded": Case(
            StubActivities(authorize_errors=[declined("insufficient_funds"), None]),
            BillingPolicy(dunning_schedule=(SECOND,)),
        ),
        "local_ledger_started_without_attributes": Case(
            StubActivities(), attributes_at_start=False
        ),
        # Recorded 2026-11-28, before the exactly-once round changed the workflow: the paths
        # that move or release money on the local-ledger path.
        "local_ledger_cancelled_in_window": Case(
            StubActivities(), BillingPolicy(capture_delay=HOUR), during=cancel_in_window
        ),
        "local_ledger_new_card_in_dunning": Case(
            StubActivities(authorize_errors=[declined("insufficient_funds"), None]),
            BillingPolicy(dunning_schedule=(HOUR,)),
            during=new_card_in_dunning,
        ),
        "local_ledger_capture_failed_voided": Case(
            StubActivities(capture_errors=[business_error(ErrorType.INTENT_NOT_CAPTURABLE)])
        ),
        "local_ledger_hard_decline": Case(
            StubActivities(authorize_errors=[declined("generic_decline")])
        ),
        "exactly_once_succeeded": Case(StubActivities(capture_errors=[RuntimeError("reset")])),
        "exactly_once_cancelled_by_temporal": Case(
            StubActivities(), BillingPolicy(capture_delay=HOUR), during=cancel_by_temporal
        ),
        "exactly_once_new_card_in_dunning": Case(
            StubActivities(authorize_errors=[declined("insufficient_funds"), None]),
            BillingPolicy(dunning_schedule=(HOUR,)),
            during=new_card_in_dunning,
        ),
        "exactly_once_capture_refused_by_ledger": Case(
            StubActivities(capture_refused_by=PaymentStatus.CANCELLED)
        ),
        # Recorded 2026-11-28 under the resume-as-recorded patch: a run resumed on a
        # capturing row keeps the authorization it records, and one resumed in dunning goes
        # on from the row's soft declines.
        "resume_as_recorded_capturing": Case(
            StubActivities(
                row=resumed_row(PaymentStatus.CAPTURING, "pi_recorded"),
                held_at_stripe=[
                    PeriodIntents(
                        capturable=(
                            Authorization(intent_id="pi_older", amount_capturable=4200),
                            Authorization(intent_id="pi_recorded", amount_capturable=4200),
                        )
                    )
                ],
            )
        ),
        "resume_as_recorded_dunning": Case(
            StubActivities(
                row=resumed_row(PaymentStatus.RETRYING, "pi_declined", dunning_attempts=1),
                authorize_errors=[declined("insufficient_funds")] * 2,
            ),
            BillingPolicy(dunning_schedule=(SECOND, 2 * SECOND)),
        ),
        # Recorded 2026-11-28 under the authorize-unless-held patch: the first authorization
        # lists and authorizes in one activity.
        "unless_held_succeeded": Case(StubActivities(capture_errors=[RuntimeError("reset")])),
        "unless_held_found_capture": Case(
            StubActivities(
                held_at_stripe=[
                    PeriodIntents(captured=(Capture(intent_id="pi_earlier", amount_received=4200),))
                ]
            )
        ),
        "unless_held_new_card_in_dunning": Case(
            StubActivities(authorize_errors=[declined("insufficient_funds"), None]),
            BillingPolicy(dunning_schedule=(HOUR,)),
            during=new_card_in_dunning,
        ),
        "unless_held_rejected_then_one_at_a_time": Case(
            StubActivities(authorize_errors=[business_error(ErrorType.STRIPE_REJECTED)] * 2)
        ),
        # Recorded 2026-11-28 under the three-d-secure patch: the customer authenticates (a
        # webhook's event wakes the wait), lets the deadline pass, the payment is cancelled
        # while it waits, or the authentication fails (read at the deadline).
        "three_d_secure_authenticated": Case(
            needs_authentication(intent_state("requires_capture", amount_capturable=4200)),
            BillingPolicy(authentication_window=HOUR),
            during=authenticated_by_webhook,
        ),
        "three_d_secure_expired": Case(
            needs_authentication(), BillingPolicy(authentication_window=SECOND)
        ),
        "three_d_secure_cancelled_while_waiting": Case(
            needs_authentication(),
            BillingPolicy(authentication_window=HOUR),
            during=cancel_while_awaiting_authentication,
        ),
        "three_d_secure_failed": Case(
            needs_authentication(
                intent_state(
                    "requires_payment_method",
                    error_code="payment_intent_authentication_failure",
                    error_message="The provided PaymentMethod has failed authentication.",
                )
            ),
            BillingPolicy(authentication_window=SECOND),
        ),
        # Recorded 2026-11-28 under the resume-authentication patch: a run resumed on a row
        # that waits `action_required` waits again on the intent Stripe still holds.
        "three_d_secure_resumed_waiting": Case(
            StubActivities(
                row=resumed_row(PaymentStatus.ACTION_REQUIRED, "pi_declined"),
                held_at_stripe=[PeriodIntents(awaiting_action=("pi_declined",))],
                intent_reads=[intent_state("requires_capture", amount_capturable=4200)],
            ),
            BillingPolicy(authentication_window=SECOND),
        ),
        "payment_lost_answer_new_generation": Case(
            StubActivities(
                authorize_errors=[business_error(ErrorType.STRIPE_OUTCOME_UNKNOWN)],
            )
        ),
    }


# Recorded 2026-11-28, the first RefundWorkflow histories.
def refund_cases() -> dict[str, RefundStubs]:
    return {
        "refund_succeeded": RefundStubs(refund_errors=[RuntimeError("reset")]),
        "refund_new_key_after_stored_500": RefundStubs(
            refund_errors=[business_error(ErrorType.STRIPE_OUTCOME_UNKNOWN)],
            payment_status=PaymentStatus.PARTIALLY_REFUNDED,
        ),
        "refund_refused": RefundStubs(refund_errors=[refused("charge_already_refunded")]),
    }


async def record_refund(env: WorkflowEnvironment, name: str, stubs: RefundStubs) -> None:
    refund: RefundInput = refund_input()
    async with Worker(
        env.client,
        task_queue=TASK_QUEUE,
        workflows=[RefundWorkflow],
        activities=stubs.all(),
        workflow_runner=WORKFLOW_RUNNER,
    ):
        handle = await env.client.start_workflow(
            RefundWorkflow.run,
            refund,
            id=refund_workflow_id(refund.payment_id, refund.n),
            task_queue=TASK_QUEUE,
            search_attributes=starting_search_attributes(refund.billing_period, refund.customer_id),
        )
        await handle.result()
    history = await handle.fetch_history()
    (HISTORIES / f"{name}.json").write_text(history.to_json())
    print(f"recorded {name}")


async def record(names: list[str]) -> None:
    env = await start_local_environment(data_converter=pydantic_data_converter)
    try:
        for name, stubs in refund_cases().items():
            if name in names:
                await record_refund(env, name, stubs)
        for name, case in cases().items():
            if name not in names:
                continue
            payment = payment_input(case.policy)
            worker = Worker(
                env.client,
                task_queue=TASK_QUEUE,
                workflows=[PaymentWorkflow],
                activities=case.stubs.all(),
                workflow_runner=WORKFLOW_RUNNER,
            )
            async with worker:
                handle = await env.client.start_workflow(
                    PaymentWorkflow.run,
                    payment,
                    id=workflow_id(payment.payment_id),
                    task_queue=TASK_QUEUE,
                    start_signal=case.start_signal,
                    search_attributes=(
                        starting_search_attributes(payment.billing_period, payment.customer_id)
                        if case.attributes_at_start
                        else None
                    ),
                )
                if case.during is not None:
                    await case.during(handle, case.stubs)
                await handle.result()
            history = await handle.fetch_history()
            (HISTORIES / f"{name}.json").write_text(history.to_json())
            print(f"recorded {name}")
    finally:
        await env.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--all", action="store_true", help="re-record every case")
    args = parser.parse_args()
    names = [
        n
        for n in [*cases(), *refund_cases()]
        if not (HISTORIES / f"{n}.json").exists() or (args.all and n not in FROZEN)
    ]
    asyncio.run(record(names))


if __name__ == "__main__":
    main()
