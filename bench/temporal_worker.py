"""The Temporal side of the benchmark: a worker process built like `worker.py`, with the
options under test exposed as flags. It runs until SIGTERM, then writes its SQL statement
count and resource usage as JSON to --stats-out.

    python -m bench.temporal_worker --address HOST:PORT --task-queue Q --database-url URL \
        --stripe-base URL [--max-concurrent-activities N] [--max-cached-workflows N] ...
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import faulthandler
import json
import resource
import signal
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from activities import LEDGER_ACTIVITIES, STRIPE_ACTIVITIES
from activities.ledger_activities import LedgerActivities
from activities.stripe_activities import StripeActivities
from bench import variants
from bench.pacing import stripe_client
from bench.sqlcount import CountingConnection, counting_pool
from billing.ledger import migrate
from workflows.payment import PaymentWorkflow


def activity_methods(stripe_acts: StripeActivities, ledger_acts: LedgerActivities) -> list[Any]:
    """Every activity the workflow may call, as far as this checkout defines them."""
    found = [getattr(stripe_acts, n) for n in STRIPE_ACTIVITIES if hasattr(stripe_acts, n)]
    return found + [getattr(ledger_acts, n) for n in LEDGER_ACTIVITIES if hasattr(ledger_acts, n)]


def worker_options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for name in (
        "max_concurrent_activities",
        "max_concurrent_workflow_tasks",
        "max_cached_workflows",
        "max_activities_per_second",
        "max_task_queue_activities_per_second",
    ):
        value = getattr(args, name)
        if value is not None:
            options[name] = value
    if args.unsandboxed:
        options["workflow_runner"] = UnsandboxedWorkflowRunner()
    return options


async def serve(args: argparse.Namespace) -> dict[str, Any]:
    for variant in args.variant:
        variants.apply(variant)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    client = await Client.connect(args.address, data_converter=pydantic_data_converter)
    pool = await counting_pool(args.database_url, max_size=args.pool_size)
    try:
        await migrate(pool)
        stripe_acts = StripeActivities(
            stripe_client(args.stripe_base, pace_per_endpoint=args.pace_per_endpoint)
        )
        ledger_acts = LedgerActivities(pool)
        worker = Worker(
            client,
            task_queue=args.task_queue,
            workflows=[PaymentWorkflow],
            activities=activity_methods(stripe_acts, ledger_acts),
            graceful_shutdown_timeout=timedelta(seconds=10),
            **worker_options(args),
        )
        async with worker:
            CountingConnection.counter.statements = 0
            print("ready", flush=True)
            await stop.wait()
    finally:
        await pool.close()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "sql_statements": CountingConnection.counter.statements,
        "peak_rss_mb": usage.ru_maxrss / 1024,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--address", required=True)
    parser.add_argument("--task-queue", required=True)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--stripe-base", required=True)
    parser.add_argument("--stats-out", type=Path, required=True)
    parser.add_argument("--pool-size", type=int, default=10)
    parser.add_argument("--pace-per-endpoint", type=float, default=None)
    parser.add_argument("--max-concurrent-activities", type=int, default=None)
    parser.add_argument("--max-concurrent-workflow-tasks", type=int, default=None)
    parser.add_argument("--max-cached-workflows", type=int, default=None)
    parser.add_argument("--max-activities-per-second", type=float, default=None)
    parser.add_argument("--max-task-queue-activities-per-second", type=float, default=None)
    parser.add_argument(
        "--variant", action="append", default=[], choices=variants.VARIANTS, help="measure only"
    )
    parser.add_argument("--profile", type=Path, default=None, help="cProfile stats to this file")
    parser.add_argument(
        "--unsandboxed", action="store_true", help="UnsandboxedWorkflowRunner (measure only)"
    )
    return parser


def main() -> None:
    args = build_parser().parse_args()
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 PID` prints every thread's stack
    if args.profile is None:
        stats = asyncio.run(serve(args))
    else:
        with cProfile.Profile() as profile:
            stats = asyncio.run(serve(args))
        profile.dump_stats(args.profile)
    args.stats_out.write_text(json.dumps(stats))


if __name__ == "__main__":
    main()
