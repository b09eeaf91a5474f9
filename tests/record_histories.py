"""Re-record the histories under tests/histories/: `python -m tests.record_histories`.

Only do this on purpose: the replay test exists to catch a workflow change that would break
payments already running. Record from the old code before changing it, not after.
"""

import asyncio
from pathlib import Path

from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker

from billing.constants import ErrorType, workflow_id
from billing.models import Decline
from billing.stack.temporal import start_local_environment
from tests.stubs import StubActivities, payment_input
from workflows.payment import PaymentWorkflow

HISTORIES = Path(__file__).parent / "histories"
TASK_QUEUE = "record-histories"


def cases() -> dict[str, StubActivities]:
    decline = Decline(
        code="card_declined",
        decline_code="insufficient_funds",
        message="Your card has insufficient funds.",
        intent_id="pi_declined",
    )
    return {
        "payment_succeeded": StubActivities(capture_errors=[RuntimeError("connection reset")]),
        "payment_declined": StubActivities(
            authorize_errors=[
                ApplicationError(
                    decline.message, decline, type=ErrorType.CARD_DECLINED, non_retryable=True
                )
            ]
        ),
    }


async def record() -> None:
    env = await start_local_environment(data_converter=pydantic_data_converter)
    try:
        for name, stubs in cases().items():
            payment = payment_input()
            async with Worker(
                env.client,
                task_queue=TASK_QUEUE,
                workflows=[PaymentWorkflow],
                activities=stubs.all(),
            ):
                handle = await env.client.start_workflow(
                    PaymentWorkflow.run,
                    payment,
                    id=workflow_id(payment.payment_id),
                    task_queue=TASK_QUEUE,
                )
                await handle.result()
            history = await handle.fetch_history()
            (HISTORIES / f"{name}.json").write_text(history.to_json())
            print(f"recorded {name}")
    finally:
        await env.shutdown()


if __name__ == "__main__":
    asyncio.run(record())
