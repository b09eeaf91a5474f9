"""RefundWorkflow's logic with stub activities: the key, a new key only after a stored 500,
Stripe's refusal recorded as a failure, and what the workflow returns."""

import uuid

from temporalio.client import WorkflowFailureError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from billing.constants import ErrorType, PaymentStatus, RefundStatus, refund_workflow_id
from billing.models import RecordRefundFailureInput, RefundRequest, RefundResult
from tests.stubs import RefundStubs, business_error, refund_input, refused
from worker import WORKFLOW_RUNNER
from workflows.refund import RefundWorkflow


async def run(env: WorkflowEnvironment, stubs: RefundStubs) -> RefundResult:
    queue = f"refund-test-{uuid.uuid4().hex[:8]}"
    refund = refund_input()
    async with Worker(
        env.client,
        task_queue=queue,
        workflows=[RefundWorkflow],
        activities=stubs.all(),
        workflow_runner=WORKFLOW_RUNNER,
    ):
        return await env.client.execute_workflow(
            RefundWorkflow.run,
            refund,
            id=refund_workflow_id(refund.payment_id, refund.n),
            task_queue=queue,
        )


def keys(stubs: RefundStubs) -> list[str]:
    return [i.idempotency_key for i in stubs.inputs("refund") if isinstance(i, RefundRequest)]


async def test_a_refund_is_made_then_recorded(temporal_env: WorkflowEnvironment) -> None:
    stubs = RefundStubs(refund_errors=[RuntimeError("connection reset")])
    result = await run(temporal_env, stubs)
    assert result.status == RefundStatus.SUCCEEDED
    assert (result.stripe_refund_id, result.payment_status) == ("re_1", PaymentStatus.REFUNDED)
    key = f"pay_{result.payment_id}_refund_1"
    assert keys(stubs) == [key, key]  # a retry sends the same key
    assert [n for n, _ in stubs.calls] == ["refund", "refund", "record_refund"]


async def test_a_stored_500_is_sent_again_under_a_new_key(
    temporal_env: WorkflowEnvironment,
) -> None:
    stubs = RefundStubs(refund_errors=[business_error(ErrorType.STRIPE_OUTCOME_UNKNOWN)])
    result = await run(temporal_env, stubs)
    assert result.status == RefundStatus.SUCCEEDED
    key = f"pay_{result.payment_id}_refund_1"
    assert keys(stubs) == [key, f"{key}_r1"]


async def test_stripes_refusal_is_recorded_as_a_failure(temporal_env: WorkflowEnvironment) -> None:
    stubs = RefundStubs(refund_errors=[refused("charge_already_refunded")])
    result = await run(temporal_env, stubs)
    assert (result.status, result.failure_code) == (
        RefundStatus.FAILED,
        "charge_already_refunded",
    )
    [failure] = stubs.inputs("record_refund_failure")
    assert isinstance(failure, RecordRefundFailureInput)
    assert failure.failure_code == "charge_already_refunded"
    assert stubs.inputs("record_refund") == []


async def test_an_unexpected_error_fails_the_workflow_and_records_nothing(
    temporal_env: WorkflowEnvironment,
) -> None:
    """The refund stays `requested` in the ledger: the next `refund` resumes it."""
    stubs = RefundStubs(refund_errors=[business_error(ErrorType.IDEMPOTENCY_CONFLICT)])
    try:
        await run(temporal_env, stubs)
    except WorkflowFailureError:
        pass
    else:
        raise AssertionError("the workflow should have failed")
    assert [n for n, _ in stubs.calls] == ["refund"]
