"""The crash matrix: SIGKILL the real `python worker.py` at every point where money or the
ledger moves, start a fresh worker, and check the payment ends right: how many PaymentIntents
Stripe created and how many it captured (one capture at most), no authorization left hanging,
and `reconcile` clean.

Each kill is triggered from outside the product: by a sandbox request hook (before or after
Stripe executes), by a test-installed trigger that makes a ledger transition wait on an
advisory lock the test holds (before the UPDATE, or at COMMIT), or by the payment's state while
it waits in its capture window.

Refunds get the same: a kill before the refund request, while Stripe acts, after Stripe
answered, and around the ledger's record of it. So does 3-D Secure: a kill after Stripe
confirmed the intent on-session, around the ledger's `action_required` and the authorization
that follows the customer's authentication, and while the payment waits for the customer.

The second half plays an operator against the payment, with a kill at the worst moment: a
Temporal cancellation request (the Web UI's "Request Cancellation"), a terminate followed by
`bill`, a cancel written in SQL, a restore of the payments table, a card changed during
dunning, and a customer imported twice.
"""

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import asyncpg
import pytest
from temporalio.api.enums.v1 import EventType, TimeoutType
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from billing.constants import PaymentStatus, RefundStatus, refund_workflow_id, workflow_id
from billing.ledger import Ledger
from billing.ledger_refunds import RefundLedger
from billing.models import NewCustomer, PaymentRecord, PaymentResult, RefundResult
from billing.settings import Settings
from billing.stripe_client import make_stripe_client
from starter import EXIT_REFUND_IN_FLIGHT, execute
from stripe_sandbox import FaultRule, RequestInfo, Sandbox
from temporal_ops import launch_period
from tests.crash.harness import (
    LedgerTrap,
    intent_counts,
    payment_status,
    play_the_servers_timeouts,
    wait_for_event,
    wait_for_new_run,
    wait_for_status,
    wait_for_task_after,
)
from tests.support import WorkerProcesses, add_customer, worker_env, worker_processes
from tests.webhook_support import Hooks
from workflows.payment import STRIPE_TIMEOUT

PERIOD = "2026-11"
VISA = "pm_card_visa"
HARD_DECLINE = "pm_card_chargeDeclined"
SOFT_DECLINE = "pm_card_chargeDeclinedInsufficientFunds"
NEEDS_3DS = "pm_card_authenticationRequired"
# The customer's time to authenticate: the wait ends at this deadline with a read of the intent
# (no webhook receiver runs), long enough to kill and restart the worker within it.
AUTHENTICATION_WINDOW = timedelta(seconds=8)
WINDOW = "3s"
SQL_WINDOW = "5s"  # long enough to write the cancel in SQL before the window ends
LONG_WINDOW = "1h"
# Long enough to change the card and restart the worker before the retry.
SLOW_DUNNING = timedelta(seconds=8)
KILL_TIMEOUT_S = 60
END_TIMEOUT_S = 90
HOLD_TIMEOUT_S = 30
SIGKILLED = -9
LATE_CANCEL = "a cancel came after capture began"

When = Literal["before", "after"]
S = PaymentStatus


# ----- the scene: one customer, the real worker as a process, the CLI ----------------------


@dataclass
class Scene:
    client: Client
    pool: asyncpg.Pool
    sandbox: Sandbox
    settings: Settings
    workers: WorkerProcesses
    killed: asyncio.Event = field(default_factory=asyncio.Event)
    killed_at: float = 0.0  # time.monotonic() of the last kill

    @property
    def ledger(self) -> Ledger:
        return Ledger(self.pool)

    async def customer(self, card: str) -> str:
        """A customer paying with `card`; returns its email."""
        return await add_customer(self.ledger, make_stripe_client(self.settings), card)

    async def bill(self, *args: str, settings: Settings | None = None) -> PaymentRecord:
        """`bill PERIOD ARGS`; returns the period's one payment."""
        assert await execute(["bill", PERIOD, *args], settings or self.settings, self.client) == 0
        [payment] = await self.ledger.period_payments(PERIOD)
        return payment

    async def launch_without_worker(self) -> PaymentRecord:
        """Start the period's payment workflows from this process, as the billing run's
        activity would, while no worker runs; returns the period's one payment."""
        policy = self.settings.billing_policy()
        await launch_period(self.ledger, self.client, PERIOD, self.settings.task_queue, policy)
        [payment] = await self.ledger.period_payments(PERIOD)
        return payment

    async def authenticate(self, payment_id: str) -> None:
        """Once the payment waits `action_required`, the customer passes 3-D Secure."""
        await wait_for_status(self.pool, payment_id, S.ACTION_REQUIRED)
        record = await self.ledger.payment(payment_id)
        assert record is not None and record.stripe_payment_intent_id is not None
        self.sandbox.complete_authentication(record.stripe_payment_intent_id)

    async def reconcile(self) -> int:
        return await execute(["reconcile", PERIOD], self.settings, self.client)

    def handle(self, payment_id: str) -> WorkflowHandle[Any, PaymentResult]:
        """The payment's workflow, its latest run."""
        return self.client.get_workflow_handle(workflow_id(payment_id), result_type=PaymentResult)

    def kill(self, _: RequestInfo | None = None) -> None:
        """SIGKILL the running worker; usable as a sandbox hook."""
        self.workers.started[-1].kill()
        self.killed_at = time.monotonic()
        self.killed.set()

    async def dead(self) -> None:
        """Wait until the kill happened and the worker is gone."""
        async with asyncio.timeout(KILL_TIMEOUT_S):
            await self.killed.wait()
        self.killed.clear()
        assert await asyncio.to_thread(self.workers.started[-1].wait, 30) == SIGKILLED

    async def restart(self, handle: WorkflowHandle[Any, PaymentResult]) -> None:
        """A fresh worker, and at once what the server does when the dead one's timeouts pass."""
        self.workers.start()
        await play_the_servers_timeouts(self.client, handle)

    async def result(self, handle: WorkflowHandle[Any, PaymentResult]) -> PaymentResult:
        async with asyncio.timeout(END_TIMEOUT_S):
            return await handle.result()

    async def bill_again(self, handle: WorkflowHandle[Any, PaymentResult]) -> PaymentResult:
        """A fresh worker and `bill PERIOD --wait`, as an operator resumes a stranded payment."""
        self.workers.start()
        assert await execute(["bill", PERIOD, "--wait"], self.settings, self.client) == 0
        return await self.result(handle)

    async def assert_ended(
        self, payment_id: str, status: PaymentStatus, *, created: int, captured: int
    ) -> PaymentRecord:
        """The row ended `status`; Stripe created `created` PaymentIntents and captured
        `captured`; no authorization, and no intent awaiting authentication, is left; a
        succeeded row records the capture."""
        record = await self.ledger.payment(payment_id)
        assert record is not None and record.status == status, record
        intents = self.sandbox.payment_intents()
        assert intent_counts(intents) == (created, captured), intents
        left = [i for i in intents if i["status"] in ("requires_capture", "requires_action")]
        assert not left, intents
        if captured:
            [capture] = [i for i in intents if i["status"] == "succeeded"]
            assert record.stripe_payment_intent_id == capture["id"]
            assert record.amount_received == capture["amount_received"] == record.amount
        return record


@pytest.fixture
async def scene(
    temporal_env: WorkflowEnvironment,
    pool: asyncpg.Pool,
    sandbox: Sandbox,
    settings: Settings,
    tmp_path: Path,
) -> AsyncIterator[Scene]:
    client = temporal_env.client
    environ = worker_env(settings, client.service_client.config.target_host)
    with worker_processes(environ, tmp_path) as workers:
        yield Scene(client, pool, sandbox, settings, workers)
        print(workers.logs())  # shown by pytest when the test failed


# ----- SIGKILL at each point ---------------------------------------------------------------


@dataclass(frozen=True)
class StripePoint:
    endpoint: str
    when: When


@dataclass(frozen=True)
class LedgerPoint:
    source: PaymentStatus
    target: PaymentStatus
    when: When


@dataclass(frozen=True)
class WindowPoint:
    pass


@dataclass(frozen=True)
class Case:
    id: str
    point: StripePoint | LedgerPoint | WindowPoint
    card: str
    expected: PaymentStatus
    # PaymentIntents Stripe created: one per authorization attempt, a declined one included.
    intents: int
    cancel: bool = False  # the customer cancels while the payment waits in its window
    # Wait for the dead worker's Stripe call to time out (STRIPE_TIMEOUT) instead of failing
    # its attempt at once through play_the_servers_timeouts: about 30 s.
    real_timeout: bool = False

    @property
    def captures(self) -> int:
        return 1 if self.expected == S.SUCCEEDED else 0


def stripe_cases(endpoint: str, name: str, card: str, expected: S, cancel: bool) -> list[Case]:
    return [
        Case(f"{name}-{when}", StripePoint(endpoint, when), card, expected, 1, cancel)
        for when in ("before", "after")
    ]


def ledger_cases(
    source: S, target: S, card: str, expected: S, intents: int, cancel: bool = False
) -> list[Case]:
    return [
        Case(
            f"{source}-{target}-{when}",
            LedgerPoint(source, target, when),
            card,
            expected,
            intents,
            cancel,
        )
        for when in ("before", "after")
    ]


CASES = [
    *stripe_cases("payment_intents.create", "authorize", VISA, S.SUCCEEDED, False),
    Case(
        "authorize-declined-after",
        StripePoint("payment_intents.create", "after"),
        HARD_DECLINE,
        S.FAILED,
        intents=1,
    ),
    Case("capture-before", StripePoint("payment_intents.capture", "before"), VISA, S.SUCCEEDED, 1),
    Case(
        "capture-after",
        StripePoint("payment_intents.capture", "after"),
        VISA,
        S.SUCCEEDED,
        intents=1,
        real_timeout=True,
    ),
    *stripe_cases("payment_intents.cancel", "void", VISA, S.CANCELLED, True),
    *ledger_cases(S.PENDING, S.AUTHORIZED, VISA, S.SUCCEEDED, 1),
    *ledger_cases(S.AUTHORIZED, S.CAPTURING, VISA, S.SUCCEEDED, 1),
    *ledger_cases(S.CAPTURING, S.SUCCEEDED, VISA, S.SUCCEEDED, 1),
    *ledger_cases(S.PENDING, S.FAILED, HARD_DECLINE, S.FAILED, 1),
    # One dunning retry (DUNNING_RETRY_AFTER): two declined attempts.
    *ledger_cases(S.PENDING, S.RETRYING, SOFT_DECLINE, S.FAILED, 2),
    *ledger_cases(S.RETRYING, S.PENDING, SOFT_DECLINE, S.FAILED, 2),
    *ledger_cases(S.AUTHORIZED, S.CANCELLED, VISA, S.CANCELLED, 1, cancel=True),
    Case("capture-window", WindowPoint(), VISA, S.SUCCEEDED, 1),
]


async def capture_retried_after_its_timeout(handle: WorkflowHandle[Any, Any]) -> bool:
    """Whether the capture's last attempt followed a start_to_close timeout of the one
    before, as the server records it in ActivityTaskStarted."""
    scheduled: set[int] = set()
    async for event in handle.fetch_history_events():
        attributes = event.activity_task_scheduled_event_attributes
        if attributes.activity_type.name == "capture":
            scheduled.add(event.event_id)
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            started = event.activity_task_started_event_attributes
            if started.scheduled_event_id in scheduled:
                timeout = started.last_failure.timeout_failure_info.timeout_type
                return started.attempt == 2 and timeout == TimeoutType.TIMEOUT_TYPE_START_TO_CLOSE
    return False


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_sigkill_at(case: Case, scene: Scene, database_url: str) -> None:
    await scene.customer(case.card)
    trap = LedgerTrap(database_url)
    scene.workers.start()
    point = case.point
    if isinstance(point, StripePoint):
        scene.sandbox.add_hook(point.endpoint, point.when, scene.kill)
        if point.when == "before":  # Stripe never executes this first request
            scene.sandbox.add_fault(FaultRule("error_before", endpoint=point.endpoint, nth=1))
    elif isinstance(point, LedgerPoint):
        await trap.arm(point.source, point.target, point.when)

    window = LONG_WINDOW if case.cancel else WINDOW if isinstance(point, WindowPoint) else "0"
    payment = await scene.bill("--capture-after", window)
    handle = scene.handle(payment.id)
    try:
        if case.cancel:
            await wait_for_status(scene.pool, payment.id, S.AUTHORIZED)
            await handle.signal("cancel")
        if isinstance(point, LedgerPoint):
            backend = await trap.wait_until_trapped()
            scene.kill()
            await asyncio.to_thread(scene.workers.started[-1].wait, 30)
            await trap.release(backend)
            # The transition is undone if the kill came before it, kept if after.
            reached = point.source if point.when == "before" else point.target
            assert await payment_status(scene.pool, payment.id) == reached
        elif isinstance(point, WindowPoint):
            await wait_for_status(scene.pool, payment.id, S.AUTHORIZED)
            scene.kill()
        await scene.dead()
        if case.real_timeout:
            scene.workers.start()  # nothing fast-forwarded: the server's timeouts resume it
        else:
            await scene.restart(handle)
        result = await scene.result(handle)
    finally:
        await trap.close()

    assert result.status == case.expected
    await scene.assert_ended(
        payment.id, case.expected, created=case.intents, captured=case.captures
    )
    if case.cancel:
        assert [i["status"] for i in scene.sandbox.payment_intents()] == ["canceled"]
    if case.real_timeout:
        # `bill` may have returned well after the kill: measure from the kill itself.
        assert time.monotonic() - scene.killed_at > STRIPE_TIMEOUT.total_seconds() - 5
        assert await capture_retried_after_its_timeout(handle)
    assert await scene.reconcile() == 0


# ----- operators ---------------------------------------------------------------------------


async def test_a_temporal_cancellation_in_the_window_voids(scene: Scene) -> None:
    """The Web UI's "Request Cancellation" while the payment waits to capture, and the worker
    killed once Stripe voided: the payment ends cancelled like `starter.py cancel`."""
    await scene.customer(VISA)
    scene.sandbox.add_hook("payment_intents.cancel", "after", scene.kill)
    scene.workers.start()
    payment = await scene.bill("--capture-after", LONG_WINDOW)
    handle = scene.handle(payment.id)
    await wait_for_status(scene.pool, payment.id, S.AUTHORIZED)
    await handle.cancel()
    await scene.dead()
    await scene.restart(handle)
    result = await scene.result(handle)

    assert result.status == S.CANCELLED and result.note is None
    assert (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED
    await scene.assert_ended(payment.id, S.CANCELLED, created=1, captured=0)
    assert [i["status"] for i in scene.sandbox.payment_intents()] == ["canceled"]
    assert await scene.reconcile() == 0


async def test_a_temporal_cancellation_before_any_worker_runs_authorizes_nothing(
    scene: Scene,
) -> None:
    """Cancellation requested in the workflow's first task: nothing is sent to Stripe."""
    await scene.customer(VISA)
    payment = await scene.launch_without_worker()
    handle = scene.handle(payment.id)
    await handle.cancel()
    scene.workers.start()
    result = await scene.result(handle)

    assert result.status == S.CANCELLED
    await scene.assert_ended(payment.id, S.CANCELLED, created=0, captured=0)
    assert await scene.reconcile() == 0


async def test_a_temporal_cancellation_while_capture_is_held_changes_nothing(
    scene: Scene,
) -> None:
    """The request arrives while Stripe holds the capture request; the workflow sees it, the
    worker dies, Stripe captures. The payment succeeds and says the cancel came too late."""
    await scene.customer(VISA)
    at_capture, release = asyncio.Event(), asyncio.Event()

    async def hold_then_kill(_: RequestInfo) -> None:
        at_capture.set()
        async with asyncio.timeout(HOLD_TIMEOUT_S):
            await release.wait()
        scene.kill()  # Stripe captures next, for a worker that is gone

    scene.sandbox.add_hook("payment_intents.capture", "before", hold_then_kill)
    scene.workers.start()
    payment = await scene.bill()
    handle = scene.handle(payment.id)
    async with asyncio.timeout(KILL_TIMEOUT_S):
        await at_capture.wait()
    assert await payment_status(scene.pool, payment.id) == S.CAPTURING
    await handle.cancel()
    await wait_for_task_after(handle, EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCEL_REQUESTED)
    release.set()
    await scene.dead()
    await scene.restart(handle)
    result = await scene.result(handle)

    assert result.status == S.SUCCEEDED
    assert result.note is not None and LATE_CANCEL in result.note
    await scene.assert_ended(payment.id, S.SUCCEEDED, created=1, captured=1)
    assert await scene.reconcile() == 0


async def test_terminate_in_the_window_then_bill_resumes_without_a_second_authorization(
    scene: Scene,
) -> None:
    await scene.customer(VISA)
    scene.workers.start()
    payment = await scene.bill("--capture-after", LONG_WINDOW)
    handle = scene.handle(payment.id)
    await wait_for_status(scene.pool, payment.id, S.AUTHORIZED)
    first_run = (await handle.describe()).run_id
    await handle.terminate(reason="an operator, from the Web UI")
    scene.kill()
    await scene.dead()
    result = await scene.bill_again(handle)

    assert (await handle.describe()).run_id != first_run
    assert result.status == S.SUCCEEDED
    await scene.assert_ended(payment.id, S.SUCCEEDED, created=1, captured=1)
    assert await scene.reconcile() == 0


async def test_terminate_after_stripe_captured_then_bill_records_the_capture(
    scene: Scene,
) -> None:
    """Terminated while the row says `capturing` and Stripe has captured, the answer lost
    with the worker: the new run records that capture and charges nothing."""
    await scene.customer(VISA)
    scene.sandbox.add_hook("payment_intents.capture", "after", scene.kill)
    scene.workers.start()
    payment = await scene.bill()
    handle = scene.handle(payment.id)
    await scene.dead()
    await handle.terminate(reason="an operator, from the Web UI")
    assert await payment_status(scene.pool, payment.id) == S.CAPTURING
    result = await scene.bill_again(handle)

    assert result.status == S.SUCCEEDED
    await scene.assert_ended(payment.id, S.SUCCEEDED, created=1, captured=1)
    assert await scene.reconcile() == 0


async def test_a_cancel_sent_before_a_terminate_holds_in_the_run_bill_starts(
    scene: Scene,
) -> None:
    """The customer cancels while no worker runs (what `cancel` sends past its deadline),
    then an operator terminates the workflow and runs `bill` to resume it."""
    await scene.customer(VISA)
    scene.workers.start()
    payment = await scene.bill("--capture-after", LONG_WINDOW)
    handle = scene.handle(payment.id)
    await wait_for_status(scene.pool, payment.id, S.AUTHORIZED)
    scene.kill()
    await scene.dead()
    await handle.signal("cancel")
    await handle.terminate(reason="an operator, from the Web UI")
    result = await scene.bill_again(handle)

    assert result.status == S.CANCELLED, result
    await scene.assert_ended(payment.id, S.CANCELLED, created=1, captured=0)


async def test_terminate_between_the_void_and_its_record_then_bill_ends_cancelled(
    scene: Scene,
) -> None:
    await scene.customer(VISA)
    scene.sandbox.add_hook("payment_intents.cancel", "after", scene.kill)
    scene.workers.start()
    payment = await scene.bill("--capture-after", LONG_WINDOW)
    handle = scene.handle(payment.id)
    await wait_for_status(scene.pool, payment.id, S.AUTHORIZED)
    await handle.signal("cancel")
    await scene.dead()
    await handle.terminate(reason="an operator, from the Web UI")
    result = await scene.bill_again(handle)

    assert intent_counts(scene.sandbox.payment_intents()) == (1, 0)  # no money moved
    assert result.status == S.CANCELLED, result
    await scene.assert_ended(payment.id, S.CANCELLED, created=1, captured=0)
    assert await scene.reconcile() == 0


async def test_cancel_past_its_timeout_while_no_worker_runs_is_recorded(scene: Scene) -> None:
    """The worker dies in the window; `cancel --timeout 1` gives up waiting, exits 6, and the
    next worker cancels the payment."""
    await scene.customer(VISA)
    scene.workers.start()
    payment = await scene.bill("--capture-after", LONG_WINDOW)
    handle = scene.handle(payment.id)
    await wait_for_status(scene.pool, payment.id, S.AUTHORIZED)
    scene.kill()
    await scene.dead()
    cancel = ["cancel", payment.id, "--timeout", "1"]
    assert await execute(cancel, scene.settings, scene.client) == 6
    await scene.restart(handle)
    result = await scene.result(handle)

    assert result.status == S.CANCELLED
    await scene.assert_ended(payment.id, S.CANCELLED, created=1, captured=0)


async def test_a_cancel_written_in_sql_in_the_window_wins_over_capture(scene: Scene) -> None:
    """An operator sets the row `cancelled` in SQL while it is authorized; the worker dies.
    When the window ends the workflow finds the row moved, voids and ends cancelled."""
    await scene.customer(VISA)
    scene.workers.start()
    payment = await scene.bill("--capture-after", SQL_WINDOW)
    handle = scene.handle(payment.id)
    await wait_for_status(scene.pool, payment.id, S.AUTHORIZED)
    updated = await scene.pool.execute(
        "UPDATE payments SET status = 'cancelled' WHERE id = $1::uuid AND status = 'authorized'",
        payment.id,
    )
    assert updated == "UPDATE 1"
    scene.kill()
    await scene.dead()
    await scene.restart(handle)
    result = await scene.result(handle)

    assert result.status == S.CANCELLED
    await scene.assert_ended(payment.id, S.CANCELLED, created=1, captured=0)
    assert [i["status"] for i in scene.sandbox.payment_intents()] == ["canceled"]
    assert await scene.reconcile() == 0


async def test_a_restore_of_the_payments_table_never_charges_again(scene: Scene) -> None:
    """Bill and succeed, lose the payments to a restore of a backup taken before `bill`,
    kill the worker, bill again: the payment made again records the first capture."""
    await scene.customer(VISA)
    scene.workers.start()
    first = await scene.bill("--wait")
    assert await payment_status(scene.pool, first.id) == S.SUCCEEDED
    [charged] = scene.sandbox.payment_intents()
    # A restore replaces the tables; TRUNCATE skips payment_events' append-only row trigger.
    await scene.pool.execute("TRUNCATE stripe_events, refunds, payment_events, payments")
    scene.kill()
    await scene.dead()
    scene.workers.start()
    again = await scene.bill("--wait")
    result = await scene.result(scene.handle(again.id))

    assert again.id != first.id
    assert result.status == S.SUCCEEDED and result.stripe_payment_intent_id == charged["id"]
    record = await scene.assert_ended(again.id, S.SUCCEEDED, created=1, captured=1)
    assert record.stripe_payment_intent_id == charged["id"]
    assert await scene.reconcile() == 0


async def test_a_restore_while_a_payment_waits_in_its_window_still_charges_once(
    scene: Scene,
) -> None:
    """The payments table is restored from a backup taken before `bill` while the payment
    waits in a 3 s window; `bill` again, with an 8 s window, makes a new row whose run adopts
    the live authorization. The first run's window ends first."""
    await scene.customer(VISA)
    scene.workers.start()
    first = await scene.bill("--capture-after", WINDOW)
    await wait_for_status(scene.pool, first.id, S.AUTHORIZED)
    await scene.pool.execute("TRUNCATE stripe_events, refunds, payment_events, payments")
    again = await scene.bill("--capture-after", "8s")
    result = await scene.result(scene.handle(again.id))

    assert result.status == S.SUCCEEDED, result
    await scene.assert_ended(again.id, S.SUCCEEDED, created=1, captured=1)


async def test_a_card_changed_during_dunning_pays_the_next_attempt(scene: Scene) -> None:
    """Soft-declined, the customer gives a new card while the payment waits to retry; the
    worker dies. The next attempt uses the new card, read from the customers table."""
    email = await scene.customer(SOFT_DECLINE)
    slow_dunning = scene.settings.model_copy(update={"dunning_schedule": [SLOW_DUNNING]})
    scene.workers.start()
    payment = await scene.bill(settings=slow_dunning)
    handle = scene.handle(payment.id)
    await wait_for_status(scene.pool, payment.id, S.RETRYING)
    ids = await scene.ledger.stripe_ids_of(email)
    assert ids is not None
    stripe_customer, _ = ids
    stripe = make_stripe_client(scene.settings)
    new_card = await stripe.v1.payment_methods.attach_async(VISA, {"customer": stripe_customer})
    await scene.ledger.upsert_customers(
        [
            NewCustomer(
                email=email,
                stripe_customer_id=stripe_customer,
                payment_method_id=new_card.id,
                monthly_amount=payment.amount,
                currency=payment.currency,
            )
        ]
    )
    assert await payment_status(scene.pool, payment.id) == S.RETRYING
    scene.kill()
    await scene.dead()
    await scene.restart(handle)
    result = await scene.result(handle)

    assert result.status == S.SUCCEEDED
    await scene.assert_ended(payment.id, S.SUCCEEDED, created=2, captured=1)
    declined, paid = scene.sandbox.payment_intents()
    assert declined["status"] == "requires_payment_method"
    assert declined["payment_method"] != new_card.id
    assert paid["payment_method"] == new_card.id
    assert await scene.reconcile() == 0


async def test_a_customer_imported_twice_is_billed_once(scene: Scene, tmp_path: Path) -> None:
    """The same Stripe customer imported again with its email in another case, then `bill`
    again: one customer, one payment, one capture."""
    email = await scene.customer(VISA)
    scene.workers.start()
    payment = await scene.bill("--wait")
    ids = await scene.ledger.stripe_ids_of(email)
    assert ids is not None
    stripe_customer, card = ids
    csv = tmp_path / "customers.csv"
    csv.write_text(
        "email,stripe_customer_id,payment_method_id,monthly_amount,currency\n"
        f"{email.upper()},{stripe_customer},{card},{payment.amount},{payment.currency}\n"
    )
    imported = await execute(["customers", "import", str(csv)], scene.settings, scene.client)
    assert imported == 0

    again = await scene.bill("--wait")
    assert again.id == payment.id
    assert await scene.pool.fetchval("SELECT count(*) FROM customers") == 1
    await scene.assert_ended(payment.id, S.SUCCEEDED, created=1, captured=1)
    assert await scene.reconcile() == 0


# ----- refunds ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RefundCase:
    id: str
    point: StripePoint | LedgerPoint
    # Stripe refuses the killed attempt's request before acting (error_before), so that the
    # kill comes before the refund; without it, Stripe refunds for a worker already gone.
    refused_first: bool = False


REFUND_CASES = [
    RefundCase("before-the-request", StripePoint("refunds.create", "before"), refused_first=True),
    RefundCase("while-stripe-acts", StripePoint("refunds.create", "before")),
    RefundCase("after-stripe-answered", StripePoint("refunds.create", "after")),
    *(
        RefundCase(f"ledger-{when}-recording", LedgerPoint(S.SUCCEEDED, S.REFUNDED, when))
        for when in ("before", "after")
    ),
]


@pytest.mark.parametrize("case", REFUND_CASES, ids=[c.id for c in REFUND_CASES])
async def test_sigkill_during_a_refund(case: RefundCase, scene: Scene, database_url: str) -> None:
    """Killed before the refund request, while Stripe acts, after Stripe answered, and
    before or at the ledger's record of it: one refund at Stripe, and the ledger agrees."""
    await scene.customer(VISA)
    scene.workers.start()
    payment = await scene.bill()
    await wait_for_status(scene.pool, payment.id, S.SUCCEEDED)
    trap = LedgerTrap(database_url)
    point = case.point
    if isinstance(point, StripePoint):
        scene.sandbox.add_hook(point.endpoint, point.when, scene.kill)
        if case.refused_first:
            scene.sandbox.add_fault(FaultRule("error_before", endpoint=point.endpoint, nth=1))
    else:
        await trap.arm(point.source, point.target, point.when)
    try:
        refunding = ["refund", payment.id, "--timeout", "1"]
        assert await execute(refunding, scene.settings, scene.client) == EXIT_REFUND_IN_FLIGHT
        handle = scene.client.get_workflow_handle(
            refund_workflow_id(payment.id, 1), result_type=RefundResult
        )
        if isinstance(point, LedgerPoint):
            backend = await trap.wait_until_trapped()
            scene.kill()
            await asyncio.to_thread(scene.workers.started[-1].wait, 30)
            await trap.release(backend)
            reached = point.source if point.when == "before" else point.target
            assert await payment_status(scene.pool, payment.id) == reached
        await scene.dead()
        await scene.restart(handle)
        async with asyncio.timeout(END_TIMEOUT_S):
            result = await handle.result()
    finally:
        await trap.close()

    assert result.status == RefundStatus.SUCCEEDED and result.payment_status == S.REFUNDED
    [refund] = scene.sandbox.refunds()
    assert refund["payment_intent"] == payment.stripe_payment_intent_id
    assert refund["amount"] == payment.amount and refund["id"] == result.stripe_refund_id
    [row] = await RefundLedger(scene.pool).refunds(payment.id)
    assert (row.status, row.stripe_refund_id, row.amount) == (
        RefundStatus.SUCCEEDED,
        refund["id"],
        payment.amount,
    )
    assert await payment_status(scene.pool, payment.id) == S.REFUNDED
    moves = [(e.from_status, e.to_status) for e in await scene.ledger.events(payment.id)]
    assert moves.count((S.SUCCEEDED, S.REFUNDED)) == 1
    assert await scene.reconcile() == 0


# ----- 3-D Secure ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AwaitingPoint:
    """The payment waits `action_required`: its wait's timer has started."""


Authenticated = Literal["before-the-kill", "while-no-worker-runs", "after-the-restart"]


@dataclass(frozen=True)
class AuthenticationCase:
    id: str
    point: StripePoint | LedgerPoint | AwaitingPoint
    authenticated: Authenticated  # when the customer passes 3-D Secure


AUTHENTICATION_CASES = [
    AuthenticationCase(
        "confirmed-on-session", StripePoint("payment_intents.confirm", "after"), "after-the-restart"
    ),
    *(
        AuthenticationCase(
            f"pending-action_required-{when}",
            LedgerPoint(S.PENDING, S.ACTION_REQUIRED, when),
            "after-the-restart",
        )
        for when in ("before", "after")
    ),
    AuthenticationCase("awaiting-authentication", AwaitingPoint(), "while-no-worker-runs"),
    *(
        AuthenticationCase(
            f"action_required-authorized-{when}",
            LedgerPoint(S.ACTION_REQUIRED, S.AUTHORIZED, when),
            "before-the-kill",
        )
        for when in ("before", "after")
    ),
]


def authenticating(settings: Settings) -> Settings:
    return settings.model_copy(update={"authentication_window": AUTHENTICATION_WINDOW})


@pytest.mark.parametrize("case", AUTHENTICATION_CASES, ids=[c.id for c in AUTHENTICATION_CASES])
async def test_sigkill_during_3d_secure(
    case: AuthenticationCase, scene: Scene, database_url: str
) -> None:
    """The bank asks for authentication; the worker is killed once Stripe confirmed the
    intent on-session, around the ledger's `action_required`, while the payment waits, or
    around the authorization once the customer passed. The one intent is captured once."""
    await scene.customer(NEEDS_3DS)
    trap = LedgerTrap(database_url)
    scene.workers.start()
    point = case.point
    if isinstance(point, StripePoint):
        scene.sandbox.add_hook(point.endpoint, point.when, scene.kill)
    elif isinstance(point, LedgerPoint):
        await trap.arm(point.source, point.target, point.when)
    payment = await scene.bill(settings=authenticating(scene.settings))
    handle = scene.handle(payment.id)
    try:
        if case.authenticated == "before-the-kill":
            await scene.authenticate(payment.id)
        if isinstance(point, LedgerPoint):
            backend = await trap.wait_until_trapped()
            scene.kill()
            await asyncio.to_thread(scene.workers.started[-1].wait, 30)
            await trap.release(backend)
            reached = point.source if point.when == "before" else point.target
            assert await payment_status(scene.pool, payment.id) == reached
        elif isinstance(point, AwaitingPoint):
            await wait_for_status(scene.pool, payment.id, S.ACTION_REQUIRED)
            await wait_for_event(handle, EventType.EVENT_TYPE_TIMER_STARTED)
            scene.kill()
        await scene.dead()
        if case.authenticated == "while-no-worker-runs":
            await scene.authenticate(payment.id)
        await scene.restart(handle)
        if case.authenticated == "after-the-restart":
            await scene.authenticate(payment.id)
        result = await scene.result(handle)
    finally:
        await trap.close()

    assert result.status == S.SUCCEEDED, result
    await scene.assert_ended(payment.id, S.SUCCEEDED, created=1, captured=1)
    assert await scene.reconcile() == 0


# Stripe forgets an idempotency key after 24 hours; a customer may take days to authenticate.
KEYS_FORGOTTEN = timedelta(hours=25)


@pytest.mark.parametrize(
    ("authenticated", "keys_forgotten"),
    [("before-bill", False), ("after-bill", False), ("after-bill", True)],
    ids=["authenticated-before-bill", "authenticated-after-bill", "after-stripe-forgot-the-keys"],
)
async def test_terminate_while_awaiting_authentication_then_bill_resumes_the_same_intent(
    scene: Scene, authenticated: str, keys_forgotten: bool
) -> None:
    """Terminated while it waits `action_required` (a stranded payment), the payment is
    resumed by `bill`: the new run makes no second PaymentIntent, and captures the one the
    customer authenticates, before `bill` or while the new run waits for them, also once
    Stripe has forgotten the keys of the first run's requests."""
    await scene.customer(NEEDS_3DS)
    scene.workers.start()
    settings = authenticating(scene.settings)
    payment = await scene.bill(settings=settings)
    handle = scene.handle(payment.id)
    await wait_for_status(scene.pool, payment.id, S.ACTION_REQUIRED)
    await wait_for_event(handle, EventType.EVENT_TYPE_TIMER_STARTED)
    first_run = (await handle.describe()).run_id
    await handle.terminate(reason="an operator, from the Web UI")
    if keys_forgotten:
        scene.sandbox.clock.advance(KEYS_FORGOTTEN)
    if authenticated == "before-bill":
        await scene.authenticate(payment.id)
    assert (await scene.bill(settings=settings)).id == payment.id
    run = await wait_for_new_run(handle, first_run)
    if authenticated == "after-bill":
        resumed = scene.client.get_workflow_handle(handle.id, run_id=run)
        await wait_for_event(resumed, EventType.EVENT_TYPE_TIMER_STARTED)
        await scene.authenticate(payment.id)
    result = await scene.result(handle)

    assert result.status == S.SUCCEEDED, result
    await scene.assert_ended(payment.id, S.SUCCEEDED, created=1, captured=1)
    assert await scene.reconcile() == 0


async def test_a_webhook_that_arrives_while_no_worker_runs_wakes_the_payment(
    scene: Scene, hooks: Hooks
) -> None:
    """Killed while waiting an hour for the customer, who passes while no worker runs: the
    receiver's signal waits in the history, and the fresh worker captures at once, long
    before the hourly read."""
    await scene.customer(NEEDS_3DS)
    scene.workers.start()
    waiting_an_hour = scene.settings.model_copy(
        update={"authentication_window": timedelta(hours=1)}
    )
    async with hooks.receiving():
        payment = await scene.bill(settings=waiting_an_hour)
        handle = scene.handle(payment.id)
        await wait_for_status(scene.pool, payment.id, S.ACTION_REQUIRED)
        await wait_for_event(handle, EventType.EVENT_TYPE_TIMER_STARTED)
        scene.kill()
        await scene.dead()
        await scene.authenticate(payment.id)
        await hooks.idle()  # the event is handed to the workflow while no worker runs
        await scene.restart(handle)
        result = await scene.result(handle)

    assert result.status == S.SUCCEEDED, result
    await scene.assert_ended(payment.id, S.SUCCEEDED, created=1, captured=1)
    assert await scene.reconcile() == 0
