"""Stripe's rate limit is held by the Temporal server, across worker processes.

Two `python worker.py` processes serve the Stripe queues at 5 activity starts/s each queue;
the sandbox records when each request reaches it. Each endpoint's requests stay within that
rate (with the one second of burst that both the engine's and Stripe's token buckets allow),
no request meets a 429, and both processes served every kind of Stripe call.
"""

import asyncio
import time
from pathlib import Path

import asyncpg
from temporalio.api.enums.v1 import EventType
from temporalio.testing import WorkflowEnvironment

from billing.constants import PaymentStatus, workflow_id
from billing.ledger import Ledger
from billing.settings import Settings
from billing.stripe_client import make_stripe_client
from starter import execute
from stripe_sandbox import RequestInfo, Sandbox
from stripe_sandbox.ratelimit import TokenBucket
from tests.support import add_customer, worker_env, worker_processes

PERIOD = "2026-11"
PAYMENTS = 40
PER_SECOND = 5
# Stripe's live limit per endpoint over the default queue rate (25/s over 20/s).
MARGIN = 25 / Settings().stripe_create_per_second
ENDPOINTS = ("payment_intents.list", "payment_intents.create", "payment_intents.capture")


def most_in_one_second(times: list[float]) -> int:
    """The largest number of `times` within any window [t, t + 1 s)."""
    times = sorted(times)
    most, first = 0, 0
    for last, at in enumerate(times):
        while at - times[first] >= 1.0:
            first += 1
        most = max(most, last - first + 1)
    return most


def refused_by_bucket(times: list[float], rate: float) -> int:
    """How many of `times` a Stripe-style limiter would refuse: a token bucket of `rate`
    per second with one second of burst, full at the start."""
    refused = 0
    bucket: TokenBucket | None = None
    for at in sorted(times):
        if bucket is None:
            bucket = TokenBucket(rate, rate, at)
        bucket.refill(at)
        if bucket.tokens < 1.0:
            refused += 1
        else:
            bucket.tokens -= 1.0
    return refused


def test_most_in_one_second() -> None:
    assert most_in_one_second([]) == 0
    assert most_in_one_second([0.0, 0.5, 0.99, 1.0, 1.5, 2.6]) == 3
    assert most_in_one_second([0.0, 1.0, 2.0]) == 1


async def test_two_workers_hold_stripe_to_the_queue_rate(
    temporal_env: WorkflowEnvironment,
    pool: asyncpg.Pool,
    sandbox: Sandbox,
    settings: Settings,
    tmp_path: Path,
) -> None:
    ledger = Ledger(pool)
    stripe = make_stripe_client(settings)
    for _ in range(PAYMENTS):
        await add_customer(ledger, stripe, "pm_card_visa")
    arrivals: dict[str, list[float]] = {endpoint: [] for endpoint in ENDPOINTS}

    def arrived(info: RequestInfo) -> None:
        arrivals[info.endpoint].append(time.monotonic())

    for endpoint in ENDPOINTS:
        sandbox.add_hook(endpoint=endpoint, when="before", callback=arrived, times=None)
    sandbox.rate_limits = True  # test mode: 25 requests/s for the account
    client = temporal_env.client
    environ = worker_env(settings, client.service_client.config.target_host) | {
        "STRIPE_CREATE_PER_SECOND": str(PER_SECOND),
        "STRIPE_CAPTURE_PER_SECOND": str(PER_SECOND),
        "STRIPE_LIST_PER_SECOND": str(PER_SECOND),
    }
    with worker_processes(environ, tmp_path) as workers:
        workers.start()
        workers.start()
        # Launch without waiting, so the test's event loop (which runs the sandbox) is free.
        assert await execute(["bill", PERIOD], settings, client) == 0
        payments = await ledger.period_payments(PERIOD)
        deadline = time.monotonic() + 120
        while any(p.status != PaymentStatus.SUCCEEDED for p in payments):
            assert time.monotonic() < deadline, workers.logs()
            await asyncio.sleep(0.5)
            payments = await ledger.period_payments(PERIOD)

    assert len(payments) == PAYMENTS
    assert sandbox.stats()["rate_limited"] == 0
    for endpoint, times in arrivals.items():
        assert len(times) == PAYMENTS, endpoint
        seen = f"{endpoint}: {most_in_one_second(times)} in one second, {times}"
        # Held to the rate: without the limit 40 requests take well under a second.
        assert max(times) - min(times) >= (PAYMENTS - 2 * PER_SECOND) / PER_SECOND, seen
        # The engine's limit is a token bucket with one second of burst, like Stripe's: any
        # one second holds at most a second's burst plus a second's rate...
        assert most_in_one_second(times) <= 2 * PER_SECOND * MARGIN, seen
        # ...and Stripe's limiter, as far above the queue's rate as Stripe's 25/s is above the
        # default rate, would have refused none of them.
        assert refused_by_bucket(times, PER_SECOND * MARGIN) == 0, seen

    served: dict[str, set[str]] = {}
    for payment in payments:
        history = await client.get_workflow_handle(workflow_id(payment.id)).fetch_history()
        scheduled = {
            e.event_id: e.activity_task_scheduled_event_attributes.activity_type.name
            for e in history.events
            if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        }
        for e in history.events:
            if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
                started = e.activity_task_started_event_attributes
                name = scheduled[started.scheduled_event_id]
                served.setdefault(name, set()).add(started.identity)
    assert set(served) == {"authorize_unless_held", "capture"}  # the list goes with the create
    for name, identities in served.items():
        assert len(identities) == 2, (name, identities)
