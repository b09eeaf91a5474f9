"""`python worker.py` as a process: graceful shutdown on SIGTERM, mid-payment."""

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
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

ROOT = Path(__file__).resolve().parent.parent
PERIOD = "2026-11"


def worker_env(settings: Settings, env: WorkflowEnvironment) -> dict[str, str]:
    assert settings.database_url and settings.stripe_api_base
    return {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "STRIPE_API_KEY": settings.resolved_stripe_key(),
        "STRIPE_API_BASE": settings.stripe_api_base,
        "TASK_QUEUE": settings.task_queue,
        "TEMPORAL_ADDRESS": env.client.service_client.config.target_host,
    }


@contextmanager
def worker_process(environ: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "worker.py"], cwd=ROOT, env=environ, stdout=out, stderr=out
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


async def test_sigterm_lets_the_in_flight_capture_finish(
    temporal_env: WorkflowEnvironment,
    pool: asyncpg.Pool,
    sandbox: Sandbox,
    settings: Settings,
    tmp_path: Path,
) -> None:
    await seed_demo_customers(Ledger(pool), make_stripe_client(settings), count=1)
    environ = worker_env(settings, temporal_env)
    with worker_process(environ, tmp_path / "first.log") as first:

        def stop_worker(_: RequestInfo) -> None:
            first.send_signal(signal.SIGTERM)

        sandbox.add_hook(endpoint="payment_intents.capture", when="before", callback=stop_worker)
        assert await execute(["bill", PERIOD], settings, temporal_env.client) == 0
        exit_code = await asyncio.to_thread(first.wait, 60)
    log = (tmp_path / "first.log").read_text()
    assert exit_code == 0, log
    assert "shutting down" in log

    [intent] = sandbox.payment_intents()
    assert intent["status"] == "succeeded"
    [payment] = await Ledger(pool).period_payments(PERIOD)
    assert payment.status == PaymentStatus.AUTHORIZED

    with worker_process(environ, tmp_path / "second.log"):
        assert await execute(["bill", PERIOD, "--wait"], settings, temporal_env.client) == 0
    [payment] = await Ledger(pool).period_payments(PERIOD)
    assert payment.status == PaymentStatus.SUCCEEDED
    assert sandbox.stats()["by_endpoint"]["payment_intents.capture"] == 1
