"""The billing run: pages, continue-as-new, pacing, the `progress` query, `bill` attaching to a
running run and resuming a stranded payment, and nothing started twice."""

import asyncio
from collections.abc import Callable
from datetime import timedelta

import asyncpg
from stripe import StripeClient
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment

from billing.constants import PaymentStatus, billing_run_id, workflow_id
from billing.ledger import Ledger
from billing.models import BillingPolicy, BillingRunInput, BillingSummary, RunProgress
from billing.settings import Settings
from billing.stripe_client import make_stripe_client
from starter import execute
from stripe_sandbox import Sandbox
from temporal_ops import billing_run, run_progress, start_billing_run
from tests.support import add_customer, running_worker

PERIOD = "2026-11"


def quick_run(*, page_size: int = 1000, pages: int = 10, rate: float = 25.0) -> BillingRunInput:
    """A run that reads its counts often, so that it ends soon after its payments."""
    return BillingRunInput(
        period=PERIOD,
        policy=BillingPolicy(),
        launch_rate=rate,
        page_size=page_size,
        pages_per_run=pages,
        poll_interval=timedelta(milliseconds=200),
        idle_interval=timedelta(seconds=1),
    )


async def customers(ledger: Ledger, stripe: StripeClient, cards: list[str]) -> None:
    await asyncio.gather(*(add_customer(ledger, stripe, card) for card in cards))


async def run_to_the_end(client: Client, run: BillingRunInput, task_queue: str) -> BillingSummary:
    _, started = await start_billing_run(client, run, task_queue)
    assert started
    async with asyncio.timeout(120):
        return await billing_run(client, run.period).result()


async def progress_when(
    client: Client, done: Callable[[RunProgress], bool], *, within_s: float = 60
) -> RunProgress:
    async with asyncio.timeout(within_s):
        while True:
            progress = await run_progress(billing_run(client, PERIOD))
            if done(progress):
                return progress
            await asyncio.sleep(0.2)


async def test_a_run_pages_continues_as_new_and_ends_with_the_period(
    temporal_env: WorkflowEnvironment, pool: asyncpg.Pool, sandbox: Sandbox, settings: Settings
) -> None:
    ledger = Ledger(pool)
    cards = ["pm_card_visa"] * 6 + ["pm_card_chargeDeclined"]
    await customers(ledger, make_stripe_client(settings), cards)
    client = temporal_env.client
    run = quick_run(page_size=2, pages=2)
    async with running_worker(settings, client):
        summary = await run_to_the_end(client, run, settings.task_queue)
        query = f'WorkflowId = "{billing_run_id(PERIOD)}" AND TaskQueue = "{settings.task_queue}"'
        runs = [r async for r in client.list_workflows(query)]

    assert summary.launched.rows_created == 7
    assert summary.launched.started == 7
    assert summary.counts.by_status == {PaymentStatus.SUCCEEDED: 6, PaymentStatus.FAILED: 1}
    assert summary.counts.received == {"usd": 6 * 2500}
    # Four pages of two at two pages a run: the first run and one continued as new.
    statuses = sorted(r.status.name for r in runs if r.status)
    assert statuses == ["COMPLETED", "CONTINUED_AS_NEW"]
    # Each payment was authorized once: nothing was launched twice across the runs.
    assert len(sandbox.payment_intents()) == 7


async def test_billing_again_starts_nothing_twice(
    temporal_env: WorkflowEnvironment, pool: asyncpg.Pool, sandbox: Sandbox, settings: Settings
) -> None:
    ledger = Ledger(pool)
    await customers(ledger, make_stripe_client(settings), ["pm_card_visa"] * 3)
    client = temporal_env.client
    async with running_worker(settings, client):
        assert await execute(["bill", PERIOD, "--wait"], settings, client) == 0
        assert await execute(["bill", PERIOD, "--wait"], settings, client) == 0
        again = await billing_run(client, PERIOD).result()
    assert again.launched.started == 0
    assert again.launched.rows_created == 0
    assert again.launched.already_final == 3
    assert len(sandbox.payment_intents()) == 3


async def test_the_launch_keeps_to_its_rate(
    temporal_env: WorkflowEnvironment, pool: asyncpg.Pool, sandbox: Sandbox, settings: Settings
) -> None:
    """Twelve starts at five a second take at least 11 gaps of 0.2 s: the launch itself never
    bursts. (A lower bound only: a slow machine is slower, never faster.)"""
    ledger = Ledger(pool)
    await customers(ledger, make_stripe_client(settings), ["pm_card_visa"] * 12)
    client = temporal_env.client
    run = quick_run(rate=5.0)
    async with running_worker(settings, client):
        await run_to_the_end(client, run, settings.task_queue)
    starts = sorted(
        [
            (await client.get_workflow_handle(workflow_id(p.id)).describe()).start_time
            for p in await ledger.period_payments(PERIOD)
        ]
    )
    assert starts[-1] - starts[0] >= timedelta(seconds=11 * 0.2 * 0.95)


async def test_progress_and_a_stranded_payment_resumed_by_bill(
    temporal_env: WorkflowEnvironment, pool: asyncpg.Pool, sandbox: Sandbox, settings: Settings
) -> None:
    """Payments held in a capture window keep the run waiting; `progress` shows them. One
    payment's workflow is terminated (stranded: its row open, its run closed); `bill` again
    attaches to the running run and asks it to sweep, and the payment gets a new run."""
    ledger = Ledger(pool)
    await customers(ledger, make_stripe_client(settings), ["pm_card_visa"] * 3)
    client = temporal_env.client
    async with running_worker(settings, client):
        assert await execute(["bill", PERIOD, "--capture-after", "1h"], settings, client) == 0
        progress = await progress_when(
            client, lambda p: p.counts.count(PaymentStatus.AUTHORIZED) == 3
        )
        assert progress.phase == "waiting"
        assert progress.launched.started == 3
        assert progress.counts.total == 3

        stranded = (await ledger.period_payments(PERIOD))[0]
        await client.get_workflow_handle(workflow_id(stranded.id)).terminate("by an operator")
        assert await execute(["bill", PERIOD, "--capture-after", "1h"], settings, client) == 0
        progress = await run_progress(billing_run(client, PERIOD))
        assert progress.launched.resumed == 1  # `bill` returned once its sweep was done
        resumed = await client.get_workflow_handle(workflow_id(stranded.id)).describe()
        assert resumed.status == WorkflowExecutionStatus.RUNNING

        for payment in await ledger.period_payments(PERIOD):
            assert await execute(["cancel", payment.id], settings, client) == 0
        summary = await billing_run(client, PERIOD).result()
    assert summary.counts.by_status == {PaymentStatus.CANCELLED: 3}
    # The resumed run adopted the authorization its terminated run had made.
    assert len(sandbox.payment_intents()) == 3
