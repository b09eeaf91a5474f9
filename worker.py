"""Runs the payment, refund and billing-run workflows and their activities until SIGINT or
SIGTERM."""

import asyncio
import logging
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import timedelta
from typing import Any

from pydantic import ValidationError
from temporalio.client import Client
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from activities import QueueActivities, activities_by_queue
from activities.billing_run_activities import BillingRunActivities
from activities.ledger_activities import LedgerActivities
from activities.stripe_activities import StripeActivities
from billing.ledger import Ledger, migrate, open_pool
from billing.logs import configure_logging
from billing.metrics import MetricsUnavailable, worker_runtime
from billing.settings import Settings, describe_invalid
from billing.stripe_client import make_stripe_client
from billing.tracing import start_tracing
from temporal_ops import connect_temporal
from workflows.billing_run import BillingRunWorkflow, MonthlyBillingWorkflow
from workflows.payment import PaymentWorkflow
from workflows.refund import RefundWorkflow
from workflows.stripe_queues import StripeQueues

log = logging.getLogger("billing.worker")
GRACEFUL_SHUTDOWN = timedelta(seconds=10)
# The SDK's workflow sandbox, as it comes: it re-imports the workflow modules for each new
# workflow and refuses the calls that break determinism (the clock, random numbers, I/O) in
# workflow code. Passing every module through saved 5.6 ms of worker CPU per payment (14%), but
# then `datetime.now()` in a workflow ran unrefused (docs/performance.md, "The workflow sandbox");
# tests/test_workflow_sandbox.py holds this runner to refusing it. The worker, the tests, the
# replay tests and the benchmark all use this one runner.
WORKFLOW_RUNNER = SandboxedWorkflowRunner()
EXIT_BAD_SETTING = 2  # as the CLI's exit code for bad input


def stripe_workers(
    client: Client, queues: Sequence[QueueActivities], **options: Any
) -> list[Worker]:
    """One worker per Stripe queue. Its rate goes with every poll, and the Temporal server
    enforces it for the whole queue, however many workers poll it."""
    return [
        Worker(
            client,
            task_queue=queue.task_queue,
            activities=queue.activities,
            max_task_queue_activities_per_second=queue.per_second,
            graceful_shutdown_timeout=GRACEFUL_SHUTDOWN,
            **options,
        )
        for queue in queues
    ]


@asynccontextmanager
async def serving(workers: Sequence[Worker]) -> AsyncIterator[None]:
    """Run `workers` together. On exit all shut down at once, as a single worker would: every
    poll stops, and in-flight activities get their grace period in parallel."""
    async with AsyncExitStack() as stack:
        for each in workers:
            await stack.enter_async_context(each)
        stack.push_async_callback(lambda: asyncio.gather(*(w.shutdown() for w in workers)))
        yield


async def run_worker(
    stop: asyncio.Event, settings: Settings | None = None, client: Client | None = None
) -> None:
    """Serve until `stop` is set, then let in-flight activities finish and close the pool.
    Without `client`, it connects on a runtime serving metrics (METRICS_PORT)."""
    settings = settings or Settings()
    if client is None:
        client = await connect_temporal(settings, runtime=worker_runtime(settings))
        if settings.metrics_address() is not None:
            log.info("Prometheus metrics at http://%s/metrics", settings.metrics_address())
    pool = await open_pool(settings.resolved_database_url())
    try:
        await migrate(pool)
        payments, *stripe_queues = activities_by_queue(
            settings.task_queue,
            StripeActivities(make_stripe_client(settings)),
            LedgerActivities(pool),
            BillingRunActivities(Ledger(pool), client),
            settings.stripe_per_second(),
        )
        worker = Worker(
            client,
            task_queue=settings.task_queue,
            workflows=[PaymentWorkflow, BillingRunWorkflow, MonthlyBillingWorkflow, RefundWorkflow],
            workflow_runner=WORKFLOW_RUNNER,
            activities=payments.activities,
            interceptors=[StripeQueues()],
            graceful_shutdown_timeout=GRACEFUL_SHUTDOWN,
        )
        async with serving([worker, *stripe_workers(client, stripe_queues)]):
            log.info("worker polling task queue %r", settings.task_queue)
            for queue in stripe_queues:
                log.info("Stripe calls on %r at %g/s", queue.task_queue, queue.per_second)
            await stop.wait()
            log.info("shutting down")
    finally:
        await pool.close()


async def serve(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await run_worker(stop, settings)


def main() -> None:
    try:
        settings = Settings()
    except ValidationError as err:
        print(f"error: {describe_invalid(err)}", file=sys.stderr)
        sys.exit(EXIT_BAD_SETTING)
    configure_logging(settings)
    start_tracing(settings, "billing-worker")
    try:
        asyncio.run(serve(settings))
    except MetricsUnavailable as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(EXIT_BAD_SETTING)


if __name__ == "__main__":
    main()
