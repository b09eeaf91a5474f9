"""Replay recorded histories: a workflow change that breaks running payments fails here."""

from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from tests.record_histories import cases, refund_cases
from worker import WORKFLOW_RUNNER
from workflows.payment import PaymentWorkflow
from workflows.refund import RefundWorkflow
from workflows.stripe_queues import StripeQueues

HISTORIES = {
    path.stem: path.read_text()
    for path in sorted((Path(__file__).parent / "histories").glob("*.json"))
}


def test_histories_are_checked_in() -> None:
    assert set(HISTORIES) >= set(cases()) | set(refund_cases())


@pytest.mark.parametrize("name", HISTORIES)
@pytest.mark.parametrize("stripe_queues", [False, True], ids=["one-queue", "stripe-queues"])
async def test_history_replays(name: str, stripe_queues: bool) -> None:
    """The histories were recorded with every activity on the workflow's queue; the workers
    now schedule the Stripe calls on their own queues (StripeQueues), which replay ignores."""
    history = WorkflowHistory.from_json(name, HISTORIES[name])
    replayer = Replayer(
        workflows=[PaymentWorkflow, RefundWorkflow],
        data_converter=pydantic_data_converter,
        interceptors=[StripeQueues()] if stripe_queues else [],
        workflow_runner=WORKFLOW_RUNNER,
    )
    await replayer.replay_workflow(history)
