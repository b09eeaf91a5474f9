"""The Temporal side of the benchmark: a worker process built like `worker.py`, with the
options under test exposed as flags. It runs until SIGTERM, then writes its SQL statement
count and resource usage as JSON to --stats-out.

    python -m bench.temporal_worker --address HOST:PORT --task-queue Q --database-url URL \
        --stripe-base URL [--max-concurrent-activities N] [--max-cached-workflows N] ...

Like `worker.py`, it runs the workflows and ledger activities on Q and the Stripe activities on
one queue per Stripe endpoint class (`activities.STRIPE_QUEUES`), each held by the server to
its rate (`--stripe-create-per-second` and co., by default the settings' defaults). The worker
options below apply to the workers that run the kind of task they are about.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import faulthandler
import json
import resource
import signal
from pathlib import Path
from typing import Any

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import UnsandboxedWorkflowRunner, Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities import STRIPE_QUEUES, activities_by_queue
from activities.billing_run_activities import BillingRunActivities
from activities.ledger_activities import LedgerActivities
from activities.stripe_activities import StripeActivities
from bench import variants
from bench.pacing import stripe_client
from bench.sqlcount import CountingConnection, counting_pool
from billing.ledger import Ledger, migrate
from billing.settings import Settings
from worker import GRACEFUL_SHUTDOWN, WORKFLOW_RUNNER, serving, stripe_workers
from workflows.billing_run import BillingRunWorkflow
from workflows.payment import PaymentWorkflow
from workflows.stripe_queues import StripeQueues

# Options for the payments queue's worker only, and for every worker that runs activities.
WORKFLOW_OPTIONS = (
    "max_concurrent_workflow_tasks",
    "max_cached_workflows",
    "max_task_queue_activities_per_second",
)
ACTIVITY_OPTIONS = ("max_concurrent_activities", "max_activities_per_second")


def worker_options(args: argparse.Namespace, names: tuple[str, ...]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for name in names:
        value = getattr(args, name)
        if value is not None:
            options[name] = value
    if args.unsandboxed and "max_cached_workflows" in names:
        options["workflow_runner"] = UnsandboxedWorkflowRunner()
    elif args.passthrough_all_modules and "max_cached_workflows" in names:
        restrictions = SandboxRestrictions.default.with_passthrough_all_modules()
        options["workflow_runner"] = SandboxedWorkflowRunner(restrictions=restrictions)
    elif "max_cached_workflows" in names:
        options["workflow_runner"] = WORKFLOW_RUNNER
    return options


def stripe_per_second(args: argparse.Namespace) -> dict[str, float]:
    return {kind: getattr(args, f"stripe_{kind}_per_second") for kind in STRIPE_QUEUES}


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
        payments, *stripe_queues = activities_by_queue(
            args.task_queue,
            stripe_acts,
            LedgerActivities(pool),
            BillingRunActivities(Ledger(pool), client),
            stripe_per_second(args),
        )
        activity_options = worker_options(args, ACTIVITY_OPTIONS)
        local = (
            [a for q in stripe_queues for a in q.activities] if "local-all" in args.variant else []
        )
        workers = [
            Worker(
                client,
                task_queue=args.task_queue,
                workflows=[PaymentWorkflow, BillingRunWorkflow],  # the run: --launch run
                activities=payments.activities + local,  # local-all: Stripe calls run here
                interceptors=[StripeQueues()],
                graceful_shutdown_timeout=GRACEFUL_SHUTDOWN,
                **worker_options(args, WORKFLOW_OPTIONS + ACTIVITY_OPTIONS),
            ),
            *stripe_workers(client, stripe_queues, **activity_options),
        ]
        async with serving(workers):
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
    parser.add_argument(
        "--max-task-queue-activities-per-second",
        type=float,
        default=None,
        help="on the payments queue (ledger activities only); the Stripe queues have their own",
    )
    defaults = Settings().stripe_per_second()
    for kind in STRIPE_QUEUES:
        parser.add_argument(
            f"--stripe-{kind}-per-second",
            type=float,
            default=defaults[kind],
            help=f"the {kind} queue's server-side rate (default {defaults[kind]:g})",
        )
    parser.add_argument(
        "--variant", action="append", default=[], choices=variants.VARIANTS, help="measure only"
    )
    parser.add_argument("--profile", type=Path, default=None, help="cProfile stats to this file")
    parser.add_argument(
        "--unsandboxed", action="store_true", help="UnsandboxedWorkflowRunner (measure only)"
    )
    parser.add_argument(
        "--passthrough-all-modules",
        action="store_true",
        help="the sandbox without per-workflow re-imports; it lets datetime.now() through "
        "(measure only)",
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
