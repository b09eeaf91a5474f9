"""Pieces of the crash tests: the real worker as a process, kill points on the database side,
and playing the server's timeouts for a worker that died."""

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import EventType, PendingActivityState
from temporalio.api.workflowservice.v1 import ResetStickyTaskQueueRequest
from temporalio.client import Client, WorkflowHandle
from temporalio.exceptions import ApplicationError

from billing.constants import PaymentStatus

# The advisory lock a trapped ledger transition waits on while the test holds it.
TRAP_LOCK = 0x74726170
WAIT_STEP_S = 0.05
WAIT_STEPS = 1200  # one minute
TASK_COMPLETED = EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED


async def payment_status(pool: asyncpg.Pool, payment_id: str) -> PaymentStatus:
    status = await pool.fetchval("SELECT status FROM payments WHERE id = $1::uuid", payment_id)
    return PaymentStatus(status)


async def wait_for_status(pool: asyncpg.Pool, payment_id: str, status: PaymentStatus) -> None:
    for _ in range(WAIT_STEPS):
        if await payment_status(pool, payment_id) == status:
            return
        await asyncio.sleep(WAIT_STEP_S)
    raise TimeoutError(f"payment {payment_id} never reached {status}")


# A test-installed trap: a transition of `payments` whose (from, to) is listed in `crash_trap`
# waits on TRAP_LOCK, either before the UPDATE ("before") or at COMMIT ("after": a deferred
# constraint trigger, so the transition commits once released, whatever happened to the client).
INSTALL_TRAP = """
CREATE TABLE crash_trap (from_status text NOT NULL, to_status text NOT NULL, phase text NOT NULL);

CREATE FUNCTION crash_trap_wait() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT FROM crash_trap WHERE from_status = OLD.status AND to_status = NEW.status
               AND phase = TG_ARGV[0]) THEN
        PERFORM pg_advisory_xact_lock(TG_ARGV[1]::bigint);
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER crash_trap_before BEFORE UPDATE ON payments
    FOR EACH ROW EXECUTE FUNCTION crash_trap_wait('before', '{lock}');

CREATE CONSTRAINT TRIGGER crash_trap_after AFTER UPDATE ON payments
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION crash_trap_wait('after', '{lock}');
""".replace("{lock}", str(TRAP_LOCK))

TRAPPED_BACKEND = """
SELECT l.pid FROM pg_locks l JOIN pg_database d ON d.oid = l.database
WHERE l.locktype = 'advisory' AND NOT l.granted AND d.datname = current_database()
  AND ((l.classid::bigint << 32) | l.objid::bigint) = $1"""

BACKEND_ALIVE = "SELECT count(*) FROM pg_stat_activity WHERE pid = $1"


class LedgerTrap:
    """Holds TRAP_LOCK on its own connection, so that the armed transition waits on it."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self._conn: asyncpg.Connection | None = None

    async def arm(self, source: PaymentStatus, target: PaymentStatus, phase: str) -> None:
        conn = await asyncpg.connect(self.database_url)
        self._conn = conn
        await conn.execute(INSTALL_TRAP)
        await conn.execute(
            "INSERT INTO crash_trap VALUES ($1, $2, $3)", source.value, target.value, phase
        )
        await conn.execute("SELECT pg_advisory_lock($1)", TRAP_LOCK)

    async def wait_until_trapped(self) -> int:
        """The pid of the backend that waits in the trap."""
        assert self._conn is not None
        for _ in range(WAIT_STEPS):
            pid = await self._conn.fetchval(TRAPPED_BACKEND, TRAP_LOCK)
            if pid is not None:
                return int(pid)
            await asyncio.sleep(WAIT_STEP_S)
        raise TimeoutError("no ledger transition reached the trap")

    async def release(self, backend: int) -> None:
        """Disarm, let the trapped backend go on, and wait until it noticed its client died."""
        assert self._conn is not None
        await self._conn.execute("DELETE FROM crash_trap")
        await self._conn.execute("SELECT pg_advisory_unlock($1)", TRAP_LOCK)
        for _ in range(WAIT_STEPS):
            if not await self._conn.fetchval(BACKEND_ALIVE, backend):
                return
            await asyncio.sleep(WAIT_STEP_S)
        raise TimeoutError(f"backend {backend} outlived its killed client")

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()


async def play_the_servers_timeouts(client: Client, handle: WorkflowHandle[object, object]) -> int:
    """Do now what the server does by itself once a dead worker's timeouts pass.

    The killed worker's started Stripe activity attempt is failed, as its 30 s start_to_close
    timeout would fail it, and the engine retries it under the same input; the workflow's
    sticky queue is reset, as its 5 s schedule-to-start timeout would. A ledger write (a local
    activity) is re-run when the killed worker's workflow task times out, after 10 s.
    Returns how many attempts it failed.
    """
    await client.workflow_service.reset_sticky_task_queue(
        ResetStickyTaskQueueRequest(
            namespace=client.namespace, execution=WorkflowExecution(workflow_id=handle.id)
        )
    )
    description = await handle.describe()
    failed = 0
    for pending in description.raw_description.pending_activities:
        if pending.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED:
            activity = client.get_async_activity_handle(
                workflow_id=handle.id, run_id=description.run_id, activity_id=pending.activity_id
            )
            await activity.fail(ApplicationError("the worker running this attempt was killed"))
            failed += 1
    return failed


async def wait_for_task_after(
    handle: WorkflowHandle[Any, Any], event: "EventType.ValueType"
) -> None:
    """Wait until a workflow task completed after `event`: the workflow has seen it."""
    for _ in range(WAIT_STEPS // 4):
        kinds = [e.event_type async for e in handle.fetch_history_events()]
        if event in kinds and TASK_COMPLETED in kinds[kinds.index(event) :]:
            return
        await asyncio.sleep(WAIT_STEP_S * 4)
    raise TimeoutError(f"no workflow task completed after {EventType.Name(event)}")


async def wait_for_event(handle: WorkflowHandle[Any, Any], event: "EventType.ValueType") -> None:
    """Wait until the history of the handle's run holds `event` (a TIMER_STARTED: the
    workflow's task that began a wait has completed)."""
    for _ in range(WAIT_STEPS // 4):
        if event in [e.event_type async for e in handle.fetch_history_events()]:
            return
        await asyncio.sleep(WAIT_STEP_S * 4)
    raise TimeoutError(f"no {EventType.Name(event)} in the history")


async def wait_for_new_run(handle: WorkflowHandle[Any, Any], old_run: str) -> str:
    """Wait until the workflow has a run after `old_run` (resumed by `bill`); its run id."""
    for _ in range(WAIT_STEPS // 4):
        run = (await handle.describe()).run_id
        if run != old_run:
            return run
        await asyncio.sleep(WAIT_STEP_S * 4)
    raise TimeoutError(f"workflow {handle.id} has no run after {old_run}")


def intent_counts(intents: Sequence[Mapping[str, Any]]) -> tuple[int, int]:
    """(PaymentIntents created, of which captured). A declined authorization is created too:
    Stripe keeps it in `requires_payment_method`."""
    return len(intents), sum(i["status"] == "succeeded" for i in intents)
