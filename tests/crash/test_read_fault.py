"""A 500 on a read (no idempotency key, nothing stored) must be retried, not end the workflow.

Found by the chaos soak: the sandbox's `error_after` on `payment_intents.list` answers 500 with
`Stripe-Should-Retry: false`. `find_authorization` took that as a stored server error
(`StripeOutcomeUnknown`, non-retryable), and the workflow failed while the payment stayed
`retrying` for good. Reads carry no idempotency key, so their 5xx are now always retried.
"""

import asyncio

import asyncpg
from temporalio.testing import WorkflowEnvironment

from billing.constants import PaymentStatus, workflow_id
from billing.ledger import Ledger
from billing.models import PaymentResult
from billing.settings import Settings
from billing.stripe_client import make_stripe_client
from starter import execute
from stripe_sandbox import FaultRule, Sandbox
from tests.support import add_customer, running_worker

PERIOD = "2026-11"


async def test_a_read_error_while_converging_is_retried(
    temporal_env: WorkflowEnvironment, pool: asyncpg.Pool, sandbox: Sandbox, settings: Settings
) -> None:
    await add_customer(
        Ledger(pool), make_stripe_client(settings), "pm_card_chargeDeclinedInsufficientFunds"
    )
    sandbox.add_fault(FaultRule("error_after", endpoint="payment_intents.list", nth=1))
    client = temporal_env.client
    async with running_worker(settings, client):
        assert await execute(["bill", PERIOD], settings, client) == 0
        [payment] = await Ledger(pool).period_payments(PERIOD)
        handle = client.get_workflow_handle(workflow_id(payment.id), result_type=PaymentResult)
        async with asyncio.timeout(60):
            result = await handle.result()
    assert result.status == PaymentStatus.FAILED
    assert result.failure_code == "insufficient_funds"
