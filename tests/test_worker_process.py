"""`python worker.py` as a process: graceful shutdown on SIGTERM, mid-payment."""

import asyncio
import signal
from pathlib import Path

import asyncpg
from temporalio.testing import WorkflowEnvironment

from billing.constants import PaymentStatus
from billing.demo import seed_demo_customers
from billing.ledger import Ledger
from billing.settings import Settings
from billing.stripe_client import make_stripe_client
from starter import execute
from stripe_sandbox import RequestInfo, Sandbox
from tests.support import worker_env, worker_processes

PERIOD = "2026-11"


async def test_sigterm_lets_the_in_flight_capture_finish(
    temporal_env: WorkflowEnvironment,
    pool: asyncpg.Pool,
    sandbox: Sandbox,
    settings: Settings,
    tmp_path: Path,
) -> None:
    await seed_demo_customers(Ledger(pool), make_stripe_client(settings), count=1)
    environ = worker_env(settings, temporal_env.client.service_client.config.target_host)
    with worker_processes(environ, tmp_path) as workers:
        first = workers.start()

        def stop_worker(_: RequestInfo) -> None:
            first.send_signal(signal.SIGTERM)

        sandbox.add_hook(endpoint="payment_intents.capture", when="before", callback=stop_worker)
        # `bill` follows the run's launch through its worker: it returns once one answers.
        bill = asyncio.create_task(execute(["bill", PERIOD], settings, temporal_env.client))
        exit_code = await asyncio.to_thread(first.wait, 60)
        log = workers.logs()
        assert exit_code == 0, log
        assert "shutting down" in log

        [intent] = sandbox.payment_intents()
        assert intent["status"] == "succeeded"
        [payment] = await Ledger(pool).period_payments(PERIOD)
        assert payment.status == PaymentStatus.CAPTURING

        workers.start()
        assert await bill == 0
        assert await execute(["bill", PERIOD, "--wait"], settings, temporal_env.client) == 0
    [payment] = await Ledger(pool).period_payments(PERIOD)
    assert payment.status == PaymentStatus.SUCCEEDED
    assert sandbox.stats()["by_endpoint"]["payment_intents.capture"] == 1
