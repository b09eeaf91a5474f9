"""Workflow logic with stub activities (the one place mocks are allowed), on the dev server."""

import asyncio

from temporalio.client import WorkflowExecutionStatus
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from billing.constants import (
    BILLING_PERIOD,
    CUSTOMER_ID,
    PAYMENT_STATUS,
    ErrorType,
    PaymentStatus,
    workflow_id,
)
from billing.models import (
    AuthorizeInput,
    Capture,
    CaptureInput,
    Decline,
    PaymentInput,
    PaymentResult,
    PeriodIntents,
    RecordFailureInput,
)
from tests.stubs import StubActivities, payment_input
from worker import WORKFLOW_RUNNER
from workflows.payment import PaymentWorkflow


async def run_payment(
    env: WorkflowEnvironment, task_queue: str, stubs: StubActivities, payment: PaymentInput
) -> PaymentResult:
    async with Worker(
        env.client,
        task_queue=task_queue,
        workflows=[PaymentWorkflow],
        activities=stubs.all(),
        workflow_runner=WORKFLOW_RUNNER,
    ):
        return await env.client.execute_workflow(
            PaymentWorkflow.run, payment, id=workflow_id(payment.payment_id), task_queue=task_queue
        )


async def test_happy_path_runs_the_four_steps_in_order(
    temporal_env: WorkflowEnvironment, task_queue: str
) -> None:
    stubs = StubActivities()
    payment = payment_input()
    result = await run_payment(temporal_env, task_queue, stubs, payment)

    assert result.status == PaymentStatus.SUCCEEDED
    assert result.amount_received == 4200
    assert stubs.names() == [
        "read_payment",
        "find_period_intents",
        "authorize",
        "record_authorization",
        "begin_capture",
        "capture",
        "finalize",
    ]
    [authorize], [capture] = stubs.inputs("authorize"), stubs.inputs("capture")
    assert isinstance(authorize, AuthorizeInput) and isinstance(capture, CaptureInput)
    assert authorize.idempotency_key == f"pay_{payment.payment_id}_auth_1"
    assert not stubs.inputs("find_authorization")
    assert capture.idempotency_key == f"pay_{payment.payment_id}_capture_1"

    handle = temporal_env.client.get_workflow_handle(workflow_id(payment.payment_id))
    attributes = (await handle.describe()).typed_search_attributes
    assert attributes.get(BILLING_PERIOD) == "2026-11"
    assert attributes.get(CUSTOMER_ID) == payment.customer_id
    assert attributes.get(PAYMENT_STATUS) == PaymentStatus.SUCCEEDED


async def test_the_first_authorization_lists_and_authorizes_in_one_activity(
    temporal_env: WorkflowEnvironment, task_queue: str
) -> None:
    """Stripe sees the list before the create, as before, but the engine runs one activity
    task and one workflow task fewer: two activity tasks and three workflow tasks in all."""
    stubs = StubActivities()
    payment = payment_input()
    result = await run_payment(temporal_env, task_queue, stubs, payment)

    assert result.status == PaymentStatus.SUCCEEDED
    assert stubs.combined == 1
    handle = temporal_env.client.get_workflow_handle(workflow_id(payment.payment_id))
    events = [event async for event in handle.fetch_history_events()]
    scheduled = [
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in events
        if e.HasField("activity_task_scheduled_event_attributes")
    ]
    assert scheduled == ["authorize_unless_held", "capture"]
    assert sum(e.HasField("workflow_task_completed_event_attributes") for e in events) == 3


async def test_a_charge_stripe_already_holds_is_recorded_without_authorizing(
    temporal_env: WorkflowEnvironment, task_queue: str
) -> None:
    """A row made again after a restore: the one activity finds the period's capture and
    creates nothing."""
    held = PeriodIntents(captured=(Capture(intent_id="pi_earlier", amount_received=4200),))
    stubs = StubActivities(held_at_stripe=[held])
    result = await run_payment(temporal_env, task_queue, stubs, payment_input())

    assert (result.status, result.stripe_payment_intent_id) == (
        PaymentStatus.SUCCEEDED,
        "pi_earlier",
    )
    assert stubs.combined == 1
    assert stubs.names() == ["read_payment", "find_period_intents", "record_paid"]


async def test_the_query_tells_the_current_step(
    temporal_env: WorkflowEnvironment, task_queue: str
) -> None:
    gate = asyncio.Event()
    stubs = StubActivities(capture_gate=gate)
    payment = payment_input()
    async with Worker(
        temporal_env.client,
        task_queue=task_queue,
        workflows=[PaymentWorkflow],
        activities=stubs.all(),
        workflow_runner=WORKFLOW_RUNNER,
    ):
        handle = await temporal_env.client.start_workflow(
            PaymentWorkflow.run, payment, id=workflow_id(payment.payment_id), task_queue=task_queue
        )
        await asyncio.wait_for(stubs.capture_started.wait(), timeout=20)
        assert await handle.query(PaymentWorkflow.current_step) == "capture"
        gate.set()
        await handle.result()
        assert await handle.query(PaymentWorkflow.current_step) == "done"


async def test_decline_fails_the_payment_with_its_decline_code(
    temporal_env: WorkflowEnvironment, task_queue: str
) -> None:
    decline = Decline(
        code="card_declined",
        decline_code="insufficient_funds",
        message="Your card has insufficient funds.",
        intent_id="pi_declined",
    )
    stubs = StubActivities(
        authorize_errors=[
            ApplicationError(
                decline.message, decline, type=ErrorType.CARD_DECLINED, non_retryable=True
            )
        ]
    )
    payment = payment_input()
    result = await run_payment(temporal_env, task_queue, stubs, payment)

    assert result.status == PaymentStatus.FAILED
    assert result.failure_code == "insufficient_funds"
    assert stubs.names() == ["read_payment", "find_period_intents", "authorize", "record_failure"]
    [failure] = stubs.inputs("record_failure")
    assert isinstance(failure, RecordFailureInput)
    assert failure.intent_id == "pi_declined"
    handle = temporal_env.client.get_workflow_handle(workflow_id(payment.payment_id))
    attributes = (await handle.describe()).typed_search_attributes
    assert attributes.get(PAYMENT_STATUS) == PaymentStatus.FAILED


async def test_transient_capture_errors_are_retried_under_the_same_key(
    temporal_env: WorkflowEnvironment, task_queue: str
) -> None:
    stubs = StubActivities(capture_errors=[RuntimeError("connection reset")] * 2)
    result = await run_payment(temporal_env, task_queue, stubs, payment_input())

    assert result.status == PaymentStatus.SUCCEEDED
    keys = [c.idempotency_key for n, c in stubs.calls if isinstance(c, CaptureInput)]
    assert len(keys) == 3 and len(set(keys)) == 1


async def test_an_intent_that_cannot_be_captured_fails_the_payment(
    temporal_env: WorkflowEnvironment, task_queue: str
) -> None:
    stubs = StubActivities(
        capture_errors=[
            ApplicationError(
                "PaymentIntent pi_1 is canceled",
                type=ErrorType.INTENT_NOT_CAPTURABLE,
                non_retryable=True,
            )
        ]
    )
    payment = payment_input()
    result = await run_payment(temporal_env, task_queue, stubs, payment)

    assert result.status == PaymentStatus.FAILED
    assert result.failure_code == ErrorType.INTENT_NOT_CAPTURABLE
    assert stubs.names() == [
        "read_payment",
        "find_period_intents",
        "authorize",
        "record_authorization",
        "begin_capture",
        "capture",
        "void",
        "record_failure",
    ]
    description = await temporal_env.client.get_workflow_handle(
        workflow_id(payment.payment_id)
    ).describe()
    assert description.status == WorkflowExecutionStatus.COMPLETED


async def test_a_refusal_in_the_first_authorization_is_retaken_one_call_at_a_time(
    temporal_env: WorkflowEnvironment, task_queue: str
) -> None:
    """Stripe refused the create (or the list, which would end needs_attention): the run
    lists, then authorizes, as two activities, and the create's refusal fails the payment."""
    refused = ApplicationError("stub", type=ErrorType.STRIPE_REJECTED, non_retryable=True)
    stubs = StubActivities(authorize_errors=[refused, refused])
    result = await run_payment(temporal_env, task_queue, stubs, payment_input())

    assert (result.status, result.failure_code) == (
        PaymentStatus.FAILED,
        ErrorType.STRIPE_REJECTED,
    )
    assert stubs.combined == 1
    assert stubs.names() == [
        "read_payment",
        "find_period_intents",
        "authorize",
        "find_period_intents",
        "authorize",
        "record_failure",
    ]
