"""The monthly Schedule, on the real dev server: it fires on the 1st at 06:00 UTC, bills the
month before, and a second fire for a period starts nothing new.

The time-skipping test server has no Schedules (Temporal does not implement them there), so
the calendar is shown by the server's own next fire times, and the fires by a backfill: the
server runs every action the calendar holds in a past range, with its scheduled time."""

import asyncio
from datetime import UTC, datetime

import asyncpg
import pytest
from temporalio.client import Client, ScheduleBackfill, ScheduleOverlapPolicy
from temporalio.testing import WorkflowEnvironment

from billing.constants import billing_run_id
from billing.period import billed_period
from billing.settings import Settings
from starter import execute
from stripe_sandbox import Sandbox
from temporal_ops import SCHEDULE_ID, schedule_handle
from tests.support import running_worker


async def runs_of(client: Client, period: str, task_queue: str) -> list[str]:
    """The billing runs of `period` on this test's queue, by status; visibility lags a bit."""
    query = f'WorkflowId = "{billing_run_id(period)}" AND TaskQueue = "{task_queue}"'
    found: list[str] = []
    for _ in range(100):
        found = [r.status.name for r in [r async for r in client.list_workflows(query)] if r.status]
        if found and "RUNNING" not in found:
            return found
        await asyncio.sleep(0.1)
    return found


async def fires(client: Client, task_queue: str, expected: int) -> list[str]:
    query = f'WorkflowType = "MonthlyBillingWorkflow" AND TaskQueue = "{task_queue}"'
    results: list[str] = []
    for _ in range(150):
        listed = [r async for r in client.list_workflows(query)]
        done = [r for r in listed if r.status and r.status.name == "COMPLETED"]
        if len(done) >= expected:
            for r in done:
                results.append(await client.get_workflow_handle(r.id, run_id=r.run_id).result())
            return sorted(results)
        await asyncio.sleep(0.1)
    raise AssertionError(f"{len(results)} fires completed, expected {expected}")


def test_the_period_billed_is_the_month_before_in_the_schedules_zone() -> None:
    first = datetime(2026, 12, 1, 6, tzinfo=UTC)
    assert billed_period(first, "UTC", in_arrears=True) == "2026-11"
    assert billed_period(first, "UTC", in_arrears=False) == "2026-12"
    assert billed_period(datetime(2027, 1, 1, 6, tzinfo=UTC), "UTC", True) == "2026-12"
    # 02:00 UTC on the 1st is still the 30th in New York.
    late = datetime(2026, 12, 1, 2, tzinfo=UTC)
    assert billed_period(late, "America/New_York", in_arrears=True) == "2026-10"


async def test_the_schedule_fires_on_the_first_and_bills_each_period_once(
    temporal_env: WorkflowEnvironment,
    pool: asyncpg.Pool,
    sandbox: Sandbox,
    settings: Settings,
    no_schedule: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    client = temporal_env.client
    assert await execute(["schedule", "create"], settings, client) == 0
    assert await execute(["schedule", "create"], settings, client) == 0  # safe to repeat
    out = capsys.readouterr().out
    assert f"schedule {SCHEDULE_ID} created" in out
    assert f"schedule {SCHEDULE_ID} updated" in out
    assert "day 1 of each month at 06:00 UTC" in out

    description = await schedule_handle(client).describe()
    next_fires = description.info.next_action_times[:3]
    assert len(next_fires) == 3
    assert all((t.day, t.hour, t.minute) == (1, 6, 0) for t in next_fires)
    assert len({(t.year, t.month) for t in next_fires}) == 3  # one a month

    async with running_worker(settings, client):
        # The calendar from mid-January to mid-March 2020 holds two fires, 1 February and
        # 1 March (periods no other test bills in the namespace the tests share).
        window = ScheduleBackfill(
            start_at=datetime(2020, 1, 15, tzinfo=UTC),
            end_at=datetime(2020, 3, 15, tzinfo=UTC),
            overlap=ScheduleOverlapPolicy.ALLOW_ALL,
        )
        await schedule_handle(client).backfill(window)
        assert await fires(client, settings.task_queue, 2) == [
            f"started {billing_run_id('2020-01')}",
            f"started {billing_run_id('2020-02')}",
        ]
        # The same fires again: each period already has its run, so nothing starts.
        await schedule_handle(client).backfill(window)
        assert (await fires(client, settings.task_queue, 4))[:2] == [
            f"{billing_run_id('2020-01')} already exists; nothing new started",
            f"{billing_run_id('2020-02')} already exists; nothing new started",
        ]
        assert await runs_of(client, "2020-01", settings.task_queue) == ["COMPLETED"]
        assert await runs_of(client, "2020-02", settings.task_queue) == ["COMPLETED"]
        # `schedule trigger` fires now, for the month before today's.
        assert await execute(["schedule", "trigger"], settings, client) == 0
        today = billed_period(datetime.now(UTC), "UTC", in_arrears=True)
        assert f"it starts {billing_run_id(today)} unless that exists" in capsys.readouterr().out
        assert any(
            billing_run_id(today) in fired for fired in await fires(client, settings.task_queue, 5)
        )

    assert await execute(["schedule", "pause"], settings, client) == 0
    assert "paused" in capsys.readouterr().out
    assert (await schedule_handle(client).describe()).schedule.state.paused
    assert await execute(["schedule", "unpause"], settings, client) == 0
    assert not (await schedule_handle(client).describe()).schedule.state.paused
    assert await execute(["schedule", "delete"], settings, client) == 0
    assert await execute(["schedule", "describe"], settings, client) == 2
    assert "create it with `schedule create`" in capsys.readouterr().err
