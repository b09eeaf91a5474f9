"""The worker's workflow runner still refuses non-deterministic calls in workflow code, although
it no longer re-imports modules for every workflow (worker.WORKFLOW_RUNNER)."""

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from tests.sandbox_workflows import DrawsAtRandom, ReadsTheClock, ReadsWorkflowTime
from worker import WORKFLOW_RUNNER

DEADLINE = timedelta(seconds=30)


async def first_task_failure(client: Client, handle: WorkflowHandle[object, object]) -> str:
    """The error type of the run's first failed workflow task; the run stays open, retrying."""
    deadline = datetime.now(UTC) + DEADLINE
    while datetime.now(UTC) < deadline:
        async for event in handle.fetch_history_events():
            if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED:
                failure = event.workflow_task_failed_event_attributes.failure
                return failure.application_failure_info.type
        await asyncio.sleep(0.2)
    raise AssertionError(f"no workflow task of {handle.id} failed within {DEADLINE}")


@pytest.mark.parametrize("refused", [ReadsTheClock, DrawsAtRandom])
async def test_a_non_deterministic_call_fails_the_workflow_task(
    temporal_env: WorkflowEnvironment, refused: type
) -> None:
    client = temporal_env.client
    queue = f"sandbox-{uuid.uuid4().hex[:8]}"
    async with Worker(
        client,
        task_queue=queue,
        workflows=[refused, ReadsWorkflowTime],
        workflow_runner=WORKFLOW_RUNNER,
    ):
        allowed = await client.execute_workflow(
            ReadsWorkflowTime.run, id=f"{queue}-allowed", task_queue=queue
        )
        assert datetime.fromisoformat(allowed).tzinfo is not None
        handle = await client.start_workflow(
            refused.run,  # type: ignore[attr-defined]
            id=f"{queue}-refused",
            task_queue=queue,
        )
        try:
            error = await first_task_failure(client, handle)
        finally:
            await handle.terminate("test over")
    assert error == "RestrictedWorkflowAccessError"
