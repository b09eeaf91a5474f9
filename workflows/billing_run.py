"""One billing run per period: launch every active customer's payment at Stripe's pace, then
wait until each has ended and return the period's summary.

launch: page by page (keyset, at most 1,000 customers a page), an activity makes the page's
    rows and starts their PaymentWorkflows, paced at `launch_rate` a second;
wait:   read the period's counts from the ledger, often while payments are on their way,
    rarely while only dunning retries remain; sweep (every page again: stranded payments
    resumed, and missing rows made when `bill` asks) when `bill` asks, or when the counts have
    not moved for `sweep_after` (a day while only dunning retries remain);
end:    the counts by status and the amounts received.

The run continues as new every `pages_per_run` pages, and when its history grows long, so
that a period of a million customers keeps a bounded history. The Schedule's
MonthlyBillingWorkflow starts the run for the month it bills.
"""

from datetime import timedelta
from itertools import pairwise

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

with workflow.unsafe.imports_passed_through():
    from activities.billing_run_activities import BillingRunActivities
    from billing.constants import (
        PaymentStatus,
        billing_run_id,
        period_search_attributes,
    )
    from billing.models import (
        BillingPolicy,
        BillingRunInput,
        BillingSummary,
        LaunchCounts,
        LaunchPageInput,
        LaunchPageResult,
        PeriodCounts,
        RunProgress,
        ScheduledBillingInput,
    )
    from billing.period import billed_period
    from billing.summaries import billing_run_summary

from workflows.payment import wait_until

LAUNCH_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=1),
)
# A launch that stops heartbeating (its worker died) is retried after this; it skips the rows
# its heartbeats said were done.
LAUNCH_HEARTBEAT = timedelta(seconds=20)
READ_TIMEOUT = timedelta(seconds=30)
# While only dunning retries remain, counts that do not move for this long trigger a sweep.
IDLE_SWEEP_AFTER = timedelta(days=1)
# Continue as new past this many events even when the server does not suggest it yet.
HISTORY_LIMIT = 5_000
IN_FLIGHT = (PaymentStatus.PENDING, PaymentStatus.AUTHORIZED, PaymentStatus.CAPTURING)
# Waiting days, for a dunning retry or for the customer to pass 3-D Secure.
OPEN = (*IN_FLIGHT, PaymentStatus.RETRYING, PaymentStatus.ACTION_REQUIRED)
SCHEDULED_START_TIME = SearchAttributeKey.for_datetime("TemporalScheduledStartTime")


def launch_timeout(page: LaunchPageInput) -> timedelta:
    """A whole page at the paced rate, and room for the starts themselves."""
    paced = page.page_size / page.launch_rate if page.launch_rate else 0.0
    return timedelta(seconds=paced) + timedelta(minutes=5)


@workflow.defn(name="BillingRunWorkflow")
class BillingRunWorkflow:
    @workflow.init
    def __init__(self, input: BillingRunInput) -> None:
        self._input = input
        self._phase = "waiting" if input.launch_done else "launching"
        self._launched = input.launched
        self._counts = PeriodCounts()
        # `sweep` signals received, and how many of them a finished sweep has answered.
        self._sweeps_requested = input.sweeps_requested
        self._sweeps_done = input.sweeps_done
        self._sweep_policy = input.sweep_policy or input.policy

    @workflow.query(name="progress")
    def progress(self) -> RunProgress:
        return RunProgress(
            period=self._input.period,
            phase=self._phase,
            launched=self._launched,
            counts=self._counts,
            runs=self._input.runs,
            sweeps_requested=self._sweeps_requested,
            sweeps_done=self._sweeps_done,
        )

    @workflow.signal(name="sweep")
    def sweep(self, policy: BillingPolicy) -> None:
        """Launch again now, under `policy`: `bill` sends this when the run is running. Rows
        missing (a restore) are made, stranded payments resumed, the rest left alone."""
        self._sweeps_requested += 1
        self._sweep_policy = policy

    @workflow.run
    async def run(self, input: BillingRunInput) -> BillingSummary:
        if not input.launch_done:
            await self._launch()
        self._phase = "waiting"
        await self._wait_until_all_ended()
        self._phase = "done"
        return BillingSummary(period=input.period, launched=self._launched, counts=self._counts)

    async def _launch(self) -> None:
        after = self._input.after_customer
        for _ in range(self._input.pages_per_run):
            result = await self._launch_page(self._page(after_customer=after))
            self._launched += result.counts
            self._counts = await self._read_counts()
            after = result.last
            if after is None:
                return
        self._continue(after_customer=after, launch_done=False)

    async def _wait_until_all_ended(self) -> None:
        last_seen, moved_at = None, workflow.now()
        while True:
            asked = self._sweep_asked()
            if asked or workflow.now() - moved_at >= self._stale_after():
                answered = self._sweeps_requested
                await self._sweep(create_rows=asked)
                self._sweeps_done, moved_at = answered, workflow.now()
            self._counts = await self._read_counts()
            if self._counts.count(*OPEN) == 0 and not self._sweep_asked():
                return
            if self._counts != last_seen:
                last_seen, moved_at = self._counts, workflow.now()
            await wait_until(self._sweep_asked, at_most=self._poll_interval())
            if self._history_is_long() and not self._sweep_asked():
                self._continue(after_customer=None, launch_done=True)

    def _poll_interval(self) -> timedelta:
        """`poll_interval` while payments are under way; while only dunning retries remain,
        `idle_interval`, but never longer than the shortest gap of the dunning schedule, so
        that the run ends soon after the last retry."""
        if self._counts.count(*IN_FLIGHT) > 0:
            return self._input.poll_interval
        schedule = (timedelta(0), *self._input.policy.dunning_schedule)
        gaps = [later - earlier for earlier, later in pairwise(schedule)]
        return min([self._input.idle_interval, *gaps])

    def _stale_after(self) -> timedelta:
        """How long unmoving counts mean a payment may be stranded: `sweep_after` while
        payments are under way, a day while only dunning retries (days apart) remain."""
        busy = self._counts.count(*IN_FLIGHT) > 0
        return self._input.sweep_after if busy else max(self._input.sweep_after, IDLE_SWEEP_AFTER)

    def _sweep_asked(self) -> bool:
        return self._sweeps_requested > self._sweeps_done

    async def _sweep(self, *, create_rows: bool) -> None:
        """Every page again, unpaced (the Stripe queues' own limits hold): resume the payments
        whose workflow closed while their row is open, leave running and final ones alone,
        and, when `bill` asked (`create_rows`), make the rows that are missing."""
        after: str | None = None
        while True:
            page = self._page(after_customer=after, policy=self._sweep_policy).model_copy(
                update={"launch_rate": 0.0, "create_rows": create_rows}
            )
            result = await self._launch_page(page)
            found = result.counts
            self._launched += LaunchCounts(
                rows_created=found.rows_created, started=found.started, resumed=found.resumed
            )
            if result.last is None:
                return
            after = result.last

    def _page(
        self, *, after_customer: str | None, policy: BillingPolicy | None = None
    ) -> LaunchPageInput:
        return LaunchPageInput(
            period=self._input.period,
            policy=policy or self._input.policy,
            launch_rate=self._input.launch_rate,
            page_size=self._input.page_size,
            task_queue=self._input.payments_task_queue or workflow.info().task_queue,
            after_customer=after_customer,
        )

    async def _launch_page(self, page: LaunchPageInput) -> LaunchPageResult:
        return await workflow.execute_activity_method(
            BillingRunActivities.launch_page,
            page,
            start_to_close_timeout=launch_timeout(page),
            heartbeat_timeout=LAUNCH_HEARTBEAT,
            retry_policy=LAUNCH_RETRY,
        )

    async def _read_counts(self) -> PeriodCounts:
        return await workflow.execute_local_activity_method(
            BillingRunActivities.period_counts,
            self._input.period,
            start_to_close_timeout=READ_TIMEOUT,
            retry_policy=LAUNCH_RETRY,
        )

    def _history_is_long(self) -> bool:
        info = workflow.info()
        return info.is_continue_as_new_suggested() or info.get_current_history_length() > (
            HISTORY_LIMIT
        )

    def _continue(self, *, after_customer: str | None, launch_done: bool) -> None:
        workflow.continue_as_new(
            self._input.model_copy(
                update={
                    "after_customer": after_customer,
                    "launch_done": launch_done,
                    "launched": self._launched,
                    "runs": self._input.runs + 1,
                    "sweeps_requested": self._sweeps_requested,
                    "sweeps_done": self._sweeps_done,
                    "sweep_policy": self._sweep_policy,
                }
            )
        )


@workflow.defn(name="MonthlyBillingWorkflow")
class MonthlyBillingWorkflow:
    """What the monthly Schedule fires: start the billing run of the month it bills, unless
    that period already has one (running, or completed)."""

    @workflow.run
    async def run(self, input: ScheduledBillingInput) -> str:
        fired = workflow.info().typed_search_attributes.get(SCHEDULED_START_TIME)
        period = billed_period(fired or workflow.now(), input.time_zone, input.in_arrears)
        try:
            await workflow.start_child_workflow(
                BillingRunWorkflow.run,
                BillingRunInput(
                    period=period,
                    policy=input.policy,
                    launch_rate=input.launch_rate,
                    poll_interval=input.poll_interval,
                ),
                id=billing_run_id(period),
                parent_close_policy=workflow.ParentClosePolicy.ABANDON,
                # A failed or terminated run is billed again; a completed one is not.
                id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
                search_attributes=period_search_attributes(period),
                static_summary=billing_run_summary(period),
            )
        except WorkflowAlreadyStartedError:
            return f"{billing_run_id(period)} already exists; nothing new started"
        return f"started {billing_run_id(period)}"
