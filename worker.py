"""Runs the payment and billing-run workflows and their activities until SIGINT or SIGTERM."""

import asyncio
import logging
import signal
from datetime import timedelta

from temporalio.client import Client
from temporalio.worker import Worker

from activities import all_activities
from activities.billing_run_activities import BillingRunActivities
from activities.ledger_activities import LedgerActivities
from activities.stripe_activities import StripeActivities
from billing.ledger import Ledger, migrate, open_pool
from billing.settings import Settings
from billing.stripe_client import make_stripe_client
from temporal_ops import connect_temporal
from workflows.billing_run import BillingRunWorkflow, MonthlyBillingWorkflow
from workflows.payment import PaymentWorkflow

log = logging.getLogger("billing.worker")


async def run_worker(
    stop: asyncio.Event, settings: Settings | None = None, client: Client | None = None
) -> None:
    """Serve until `stop` is set, then let in-flight activities finish and close the pool."""
    settings = settings or Settings()
    client = client or await connect_temporal(settings)
    pool = await open_pool(settings.resolved_database_url())
    try:
        await migrate(pool)
        activities = all_activities(
            StripeActivities(make_stripe_client(settings)),
            LedgerActivities(pool),
            BillingRunActivities(Ledger(pool), client),
        )
        worker = Worker(
            client,
            task_queue=settings.task_queue,
            workflows=[PaymentWorkflow, BillingRunWorkflow, MonthlyBillingWorkflow],
            activities=activities,
            graceful_shutdown_timeout=timedelta(seconds=10),
        )
        async with worker:
            log.info("worker polling task queue %r", settings.task_queue)
            await stop.wait()
            log.info("shutting down")
    finally:
        await pool.close()


async def serve() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await run_worker(stop)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    asyncio.run(serve())


if __name__ == "__main__":
    main()
