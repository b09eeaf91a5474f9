"""The billing run's own logic over days of virtual time (the time-skipping test server), with
stub activities: it pages and continues as new, waits through a dunning week reading its
counts, sweeps for stranded payments once a day while nothing moves, and ends with the period."""

import uuid
from datetime import datetime, timedelta

from temporalio import activity
from temporalio.client import WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from billing.constants import PaymentStatus
from billing.models import (
    BillingPolicy,
    BillingRunInput,
    BillingSummary,
    LaunchCounts,
    LaunchPageInput,
    LaunchPageResult,
    PeriodCounts,
)
from worker import WORKFLOW_RUNNER
from workflows.billing_run import BillingRunWorkflow

PAGES = 3
DUNNING = timedelta(days=5)


class RunStubs:
    """Three pages of one customer each; the period's two payments retry until DUNNING has
    passed on the test server's clock, then succeed."""

    def __init__(self, env: WorkflowEnvironment) -> None:
        self.env = env
        self.pages: list[LaunchPageInput] = []
        self.started_at: datetime | None = None

    @activity.defn(name="launch_page")
    async def launch_page(self, page: LaunchPageInput) -> LaunchPageResult:
        self.pages.append(page)
        index = int(page.after_customer or 0)
        last = str(index + 1) if index + 1 < PAGES else None
        # The launch makes and starts each page's payment; a sweep finds it running.
        found = LaunchCounts(rows_created=1, started=1) if page.create_rows else LaunchCounts()
        return LaunchPageResult(counts=found, last=last)

    @activity.defn(name="period_counts")
    async def period_counts(self, period: str) -> PeriodCounts:
        now = await self.env.get_current_time()
        self.started_at = self.started_at or now
        status = PaymentStatus.RETRYING if now - self.started_at < DUNNING else None
        if status is None:
            return PeriodCounts(by_status={PaymentStatus.SUCCEEDED: PAGES}, received={"usd": 300})
        return PeriodCounts(by_status={status: PAGES})


async def test_a_run_waits_through_dunning_sweeping_daily_and_ends_with_the_period(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    env = time_skipping_env
    stubs = RunStubs(env)
    queue = f"run-{uuid.uuid4().hex[:8]}"
    run = BillingRunInput(period="2026-11", policy=BillingPolicy(), page_size=1, pages_per_run=2)
    async with Worker(
        env.client,
        task_queue=queue,
        workflows=[BillingRunWorkflow],
        activities=[stubs.launch_page, stubs.period_counts],
        workflow_runner=WORKFLOW_RUNNER,
    ):
        handle = await env.client.start_workflow(
            BillingRunWorkflow.run, run, id=f"billing-run-test-{queue}", task_queue=queue
        )
        summary: BillingSummary = await handle.result()
        ended = await env.get_current_time()

    assert summary.counts.by_status == {PaymentStatus.SUCCEEDED: PAGES}
    assert summary.launched.started == PAGES
    assert stubs.started_at is not None
    assert ended - stubs.started_at >= DUNNING
    # Two pages, then continued as new for the third.
    first = env.client.get_workflow_handle(handle.id, run_id=handle.result_run_id)
    assert (await first.describe()).status == WorkflowExecutionStatus.CONTINUED_AS_NEW
    # After the launch, a sweep (every page again) each day the counts did not move.
    launch, sweeps = stubs.pages[:PAGES], stubs.pages[PAGES:]
    assert [p.after_customer for p in launch] == [None, "1", "2"]
    assert len(sweeps) % PAGES == 0
    assert 4 <= len(sweeps) // PAGES <= 5
    # Its own sweeps resume only: they never bill a customer who came after the launch.
    assert not any(p.create_rows for p in sweeps)
    assert all(p.launch_rate == 0 for p in sweeps)  # unpaced: the Stripe queues' limits hold
