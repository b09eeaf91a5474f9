"""A Temporal cancellation request under the SDK's coming default for activation jobs.

temporalio 1.35 has a workflow logic flag, PROCESS_WORKFLOW_ACTIVATION_JOBS_AS_SINGLE_BATCH, off
by default; a TODO in the SDK says to turn it on by default once two published releases know
it, and pyproject.toml asks for `temporalio>=1.35`. With it on, `workflow.wait_condition` raises
CancelledError in whichever task waits when a cancellation request arrives during the wait.
The capture window (and the dunning wait) waits inside the shielded charge task. That task
ended cancelled, and `PaymentWorkflow._charge_until_ended` awaited `asyncio.shield` of it again
and again without yielding: the deadlock detector failed every workflow task, and the payment
stayed `authorized` with its hold. The waits now take that CancelledError for `cancel`.

The test turns the flag on for its in-process worker through the SDK's private default.
"""

import asyncio

import asyncpg
import pytest
import temporalio.worker._workflow
from temporalio.testing import WorkflowEnvironment
from temporalio.worker._workflow_instance import _WorkflowLogicFlag

from billing.constants import PaymentStatus, workflow_id
from billing.ledger import Ledger
from billing.models import PaymentResult
from billing.settings import Settings
from billing.stripe_client import make_stripe_client
from starter import execute
from stripe_sandbox import Sandbox
from tests.crash.harness import wait_for_status
from tests.support import add_customer, running_worker

PERIOD = "2026-11"
END_TIMEOUT_S = 20


async def test_a_cancellation_request_in_the_window_with_single_batch_activations(
    temporal_env: WorkflowEnvironment,
    pool: asyncpg.Pool,
    sandbox: Sandbox,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    single_batch = frozenset({_WorkflowLogicFlag.PROCESS_WORKFLOW_ACTIVATION_JOBS_AS_SINGLE_BATCH})
    monkeypatch.setattr(
        temporalio.worker._workflow, "_DEFAULT_ENABLED_WORKFLOW_LOGIC_FLAGS", single_batch
    )
    await add_customer(Ledger(pool), make_stripe_client(settings), "pm_card_visa")
    client = temporal_env.client
    async with running_worker(settings, client):
        assert await execute(["bill", PERIOD, "--capture-after", "1h"], settings, client) == 0
        [payment] = await Ledger(pool).period_payments(PERIOD)
        await wait_for_status(pool, payment.id, PaymentStatus.AUTHORIZED)
        handle = client.get_workflow_handle(workflow_id(payment.id), result_type=PaymentResult)
        await handle.cancel()
        try:
            async with asyncio.timeout(END_TIMEOUT_S):
                result = await handle.result()
        except TimeoutError:
            await handle.terminate(reason="the test ends; the workflow would spin on")
            raise
    assert result.status == PaymentStatus.CANCELLED
    assert [i["status"] for i in sandbox.payment_intents()] == ["canceled"]
