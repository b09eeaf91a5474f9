"""The billing run's activities: launch a page of payments, read the period's counts."""

from temporalio import activity
from temporalio.client import Client

from billing.ledger import Ledger
from billing.models import LaunchCounts, LaunchPageInput, LaunchPageResult, PeriodCounts
from temporal_ops import launch_page


class BillingRunActivities:
    def __init__(self, ledger: Ledger, client: Client) -> None:
        self._ledger = ledger
        self._client = client

    @activity.defn(name="launch_page")
    async def launch_page(self, page: LaunchPageInput) -> LaunchPageResult:
        """Launch one page, heartbeating the counts of the rows done and the customer of the
        last, so that a retry after a crash skips them and still adds them up. (Heartbeats are
        throttled: a retry may find a few more rows already launched.)"""
        earlier, through = LaunchCounts(), None
        details = activity.info().heartbeat_details
        if details:
            earlier, through = LaunchCounts.model_validate(details[0]), str(details[1])

        def beat(counts: LaunchCounts, last_done: str) -> None:
            activity.heartbeat(earlier + counts, last_done)

        result = await launch_page(
            self._ledger, self._client, page, done_through=through, on_progress=beat
        )
        return result.model_copy(update={"counts": earlier + result.counts})

    @activity.defn(name="period_counts")
    async def period_counts(self, period: str) -> PeriodCounts:
        return await self._ledger.period_counts(period)
