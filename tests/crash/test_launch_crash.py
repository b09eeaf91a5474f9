"""The worker SIGKILLed while the billing run launches the period's payments: the launch is
retried (after its heartbeat timeout), skips what its heartbeats said was done, and every
customer is charged once."""

import asyncio
import signal
from pathlib import Path

import asyncpg
from temporalio.testing import WorkflowEnvironment

from billing.constants import PaymentStatus
from billing.ledger import Ledger
from billing.settings import Settings
from billing.stripe_client import make_stripe_client
from starter import execute
from stripe_sandbox import RequestInfo, Sandbox
from temporal_ops import billing_run
from tests.support import add_customer, worker_env, worker_processes

PERIOD = "2026-11"
CUSTOMERS = 24
RATE = 4.0  # starts a second: the launch takes about six seconds
KILL_AFTER_INTENTS = 6
SIGKILLED = -signal.SIGKILL


async def test_a_worker_killed_mid_launch_starts_every_payment_once(
    temporal_env: WorkflowEnvironment,
    pool: asyncpg.Pool,
    sandbox: Sandbox,
    settings: Settings,
    tmp_path: Path,
) -> None:
    stripe = make_stripe_client(settings)
    cards = ["pm_card_visa"] * CUSTOMERS
    await asyncio.gather(*(add_customer(Ledger(pool), stripe, card) for card in cards))
    settings = settings.model_copy(update={"launch_rate": RATE})
    client = temporal_env.client
    environ = worker_env(settings, client.service_client.config.target_host)
    with worker_processes(environ, tmp_path) as workers:
        first = workers.start()
        killed = asyncio.Event()

        def kill(_: RequestInfo) -> None:
            first.kill()
            killed.set()

        sandbox.add_hook(
            endpoint="payment_intents.create", when="after", callback=kill, nth=KILL_AFTER_INTENTS
        )
        bill = asyncio.create_task(execute(["bill", PERIOD], settings, client))
        async with asyncio.timeout(60):
            await killed.wait()
        assert await asyncio.to_thread(first.wait, 30) == SIGKILLED
        started_before_kill = len(sandbox.payment_intents())
        assert started_before_kill < CUSTOMERS, "the launch ended before the kill"

        workers.start()
        assert await bill == 0
        assert await execute(["bill", PERIOD, "--wait"], settings, client) == 0
        summary = await billing_run(client, PERIOD).result()

    payments = await Ledger(pool).period_payments(PERIOD)
    assert len(payments) == CUSTOMERS
    assert {p.status for p in payments} == {PaymentStatus.SUCCEEDED}
    intents = sandbox.payment_intents()
    assert len(intents) == CUSTOMERS  # one authorization a payment: none started twice
    assert {i["metadata"]["payment_id"] for i in intents} == {p.id for p in payments}
    assert summary.launched.rows_created == CUSTOMERS
    assert summary.counts.by_status == {PaymentStatus.SUCCEEDED: CUSTOMERS}
