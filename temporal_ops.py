"""Every client-side Temporal operation, in one place: connecting; starting a payment's
workflow (and resuming a stranded one); the period's billing run; waiting; cancel's
update-with-start; handing Stripe's events to a payment; and the monthly Schedule."""

import asyncio
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleCalendarSpec,
    ScheduleHandle,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleRange,
    ScheduleSpec,
    ScheduleState,
    ScheduleUpdate,
    ScheduleUpdateInput,
    WithStartWorkflowOperation,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.common import (
    SearchAttributePair,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.envconfig import ClientConfigProfile
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.runtime import Runtime
from temporalio.service import RPCError, RPCStatusCode

from billing.codec import data_converter
from billing.constants import (
    PAYMENT_STATUS,
    TERMINAL_STATUSES,
    CancelOutcome,
    PaymentStatus,
    billing_run_id,
    period_search_attributes,
    refund_workflow_id,
    starting_search_attributes,
    workflow_id,
)
from billing.ledger import Ledger
from billing.models import (
    BillableRow,
    BillingPolicy,
    BillingRunInput,
    BillingSummary,
    LaunchCounts,
    LaunchPageInput,
    LaunchPageResult,
    PaymentInput,
    RefundInput,
    RefundResult,
    RunProgress,
    ScheduledBillingInput,
    StripeEventFact,
)
from billing.settings import Settings
from billing.summaries import (
    billing_run_summary,
    payment_details,
    payment_summary,
    refund_details,
    refund_summary,
)
from billing.tracing import tracing_interceptors
from workflows.payment import PaymentWorkflow
from workflows.refund import RefundWorkflow

CANCEL_SIGNAL = "cancel"
CANCEL_UPDATE = "cancel_payment"
# The billing run's workflows, named rather than imported: their activities launch payments
# through this module.
BILLING_RUN = "BillingRunWorkflow"
MONTHLY_BILLING = "MonthlyBillingWorkflow"
PROGRESS_QUERY = "progress"
SWEEP_SIGNAL = "sweep"
SCHEDULE_ID = "billing-monthly"
# How many payment starts are in flight at once; the launch rate paces them further.
CONCURRENT_STARTS = 32
QUERY_TIMEOUT = timedelta(seconds=3)
FIRE_TIMEOUT = timedelta(hours=1)


async def connect_temporal(settings: Settings, *, runtime: Runtime | None = None) -> Client:
    """TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TEMPORAL_API_KEY and TLS come from envconfig;
    without an address, the embedded dev server serves. Payloads are encrypted when
    BILLING_CODEC_KEYS is set. `runtime` is the Temporal runtime the client and its workers
    run on (the worker's serves metrics); None: the default."""
    config = ClientConfigProfile.load().to_client_connect_config()
    config.setdefault("target_host", settings.embedded_temporal_address())
    return await Client.connect(
        **config,
        data_converter=data_converter(settings),
        interceptors=tracing_interceptors(settings),
        runtime=runtime,
    )


# ----- one payment's workflow ---------------------------------------------------------------


def payment_input(row: BillableRow, policy: BillingPolicy) -> PaymentInput:
    """What a payment's workflow starts with: the row as billed, and the policy of the run."""
    return PaymentInput(
        payment_id=row.payment_id,
        customer_id=row.customer_id,
        billing_period=row.billing_period,
        amount=row.amount,
        currency=row.currency,
        stripe_customer_id=row.stripe_customer_id,
        payment_method_id=row.payment_method_id,
        policy=policy,
    )


# Whether to ask the server to hand a new payment's first workflow task straight back in the
# start's answer, to a worker in this process on the same client (the billing run's launch
# activity starts payments with the worker's client; the SDK asks only when such a worker has a
# free slot). Off: measured, it saved no CPU and raised p95 (docs/performance.md).
EAGER_START = False


async def start_payment(
    client: Client,
    payment: PaymentInput,
    task_queue: str,
    reuse: WorkflowIDReusePolicy,
    *,
    cancelled: bool = False,
) -> None:
    await client.start_workflow(
        PaymentWorkflow.run,
        payment,
        id=workflow_id(payment.payment_id),
        task_queue=task_queue,
        id_reuse_policy=reuse,
        # Signal-with-start cannot FAIL on a running run: one that another launch just
        # started is sent the cancel it must honour anyway.
        id_conflict_policy=(
            WorkflowIDConflictPolicy.USE_EXISTING if cancelled else WorkflowIDConflictPolicy.FAIL
        ),
        search_attributes=starting_search_attributes(payment.billing_period, payment.customer_id),
        start_signal=CANCEL_SIGNAL if cancelled else None,
        request_eager_start=EAGER_START and not cancelled,  # signal-with-start has no eager form
        static_summary=payment_summary(payment),
        static_details=payment_details(payment),
    )


async def cancel_was_requested(handle: WorkflowHandle[object, object]) -> bool:
    """Whether the run `handle` names was asked to cancel, by any route: the `cancel` signal,
    the `cancel_payment` update, or a Temporal cancellation request (the Web UI). A run that
    resumes a stranded payment must honour what the closed run was asked."""
    async for event in handle.fetch_history_events():
        signaled = event.workflow_execution_signaled_event_attributes.signal_name
        accepted = event.workflow_execution_update_accepted_event_attributes
        match event.event_type:
            case EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCEL_REQUESTED:
                return True
            case EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED if signaled == CANCEL_SIGNAL:
                return True
            case EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED if (
                accepted.accepted_request.input.name == CANCEL_UPDATE
            ):
                return True
    return False


async def launch_or_resume(client: Client, payment: PaymentInput, task_queue: str) -> str:
    """Start the payment's workflow unless one runs; returns which of `LaunchCounts`' fields
    it adds to.

    The workflow id derives from the payment and FAIL on conflict keeps a running one
    single. A payment the ledger holds open whose workflow is closed (terminated, or a row
    restored from a backup) is stranded: it gets a new run (ALLOW_DUPLICATE), which reads the
    row and converges with Stripe before sending anything, so it never charges twice, and
    which starts cancelled if the closed run had been asked to cancel.
    """
    try:
        await start_payment(client, payment, task_queue, WorkflowIDReusePolicy.REJECT_DUPLICATE)
        return "started"
    except WorkflowAlreadyStartedError:
        pass
    closed = client.get_workflow_handle(workflow_id(payment.payment_id))
    if (await closed.describe()).status == WorkflowExecutionStatus.RUNNING:
        return "already_launched"
    cancelled = await cancel_was_requested(closed)
    try:
        await start_payment(
            client, payment, task_queue, WorkflowIDReusePolicy.ALLOW_DUPLICATE, cancelled=cancelled
        )
        return "resumed"
    except WorkflowAlreadyStartedError:  # another launch resumed it first
        return "already_launched"


class Pacer:
    """Lets through at most `rate` callers a second, evenly spaced."""

    def __init__(self, rate: float) -> None:
        self._gap = 1.0 / rate
        self._next = time.monotonic()

    async def wait(self) -> None:
        now = time.monotonic()
        at, self._next = max(now, self._next), max(now, self._next) + self._gap
        if at > now:
            await asyncio.sleep(at - now)


async def launch_rows(
    client: Client,
    rows: Sequence[BillableRow],
    *,
    policy: BillingPolicy,
    task_queue: str,
    rate: float | None,
    on_progress: Callable[[LaunchCounts, str], None] = lambda _c, _id: None,
) -> LaunchCounts:
    """Start (or resume) the workflow of every row not final in the ledger, at most `rate` a
    second (None or 0: unpaced). `on_progress` hears the counts of the leading rows done (in
    row order, as far as they are contiguous) and the customer of the last of them, so that a
    retry may skip them and still add them up."""
    slots = asyncio.Semaphore(CONCURRENT_STARTS)
    pacer = Pacer(rate) if rate else None
    outcomes: list[str | None] = [None] * len(rows)
    prefix = {name: 0 for name in LaunchCounts.model_fields}
    contiguous = 0

    async def launch(index: int, row: BillableRow) -> None:
        nonlocal contiguous
        if row.status in TERMINAL_STATUSES:
            outcomes[index] = "already_final"
        else:
            async with slots:
                if pacer is not None:
                    await pacer.wait()
                payment = payment_input(row, policy)
                outcomes[index] = await launch_or_resume(client, payment, task_queue)
        advanced = False
        while contiguous < len(rows) and (outcome := outcomes[contiguous]) is not None:
            prefix[outcome] += 1
            contiguous += 1
            advanced = True
        if advanced:
            on_progress(LaunchCounts(**prefix), rows[contiguous - 1].customer_id)

    await asyncio.gather(*(launch(i, row) for i, row in enumerate(rows)))
    return LaunchCounts(**prefix)


async def launch_page(
    ledger: Ledger,
    client: Client,
    page: LaunchPageInput,
    *,
    done_through: str | None = None,
    on_progress: Callable[[LaunchCounts, str], None] = lambda _c, _id: None,
) -> LaunchPageResult:
    """One page of a launch: the next active customers' rows, made first when missing (when
    `page.create_rows`). Rows up to customer `done_through` were launched by an earlier
    attempt; skipping by customer, not by position, holds when the page's rows changed
    meanwhile (a customer deactivated or imported)."""
    created, last, rows = await ledger.create_page_payments(
        page.period, page.after_customer, page.page_size, create=page.create_rows
    )
    todo = [r for r in rows if done_through is None or r.customer_id > done_through]
    counts = await launch_rows(
        client,
        todo,
        policy=page.policy,
        task_queue=page.task_queue,
        rate=page.launch_rate,
        on_progress=lambda c, through: on_progress(c + LaunchCounts(rows_created=created), through),
    )
    return LaunchPageResult(counts=counts + LaunchCounts(rows_created=created), last=last)


async def launch_period(
    ledger: Ledger,
    client: Client,
    period: str,
    task_queue: str,
    policy: BillingPolicy,
    *,
    rate: float | None = None,
) -> LaunchCounts:
    """Launch every page of a period from this process, as the billing run does from the
    worker. Only for the benchmark (which times launching apart from the run) and the tests
    that need payments started while no worker runs."""
    total, after = LaunchCounts(), None
    while True:
        page = LaunchPageInput(
            period=period,
            policy=policy,
            launch_rate=rate or 0.0,
            page_size=1000,
            task_queue=task_queue,
            after_customer=after,
        )
        result = await launch_page(ledger, client, page)
        total, after = total + result.counts, result.last
        if after is None:
            return total


async def payment_step(client: Client, payment_id: str) -> str | None:
    """The step a payment's running workflow is at; None when no worker answers."""
    handle = client.get_workflow_handle_for(PaymentWorkflow.run, workflow_id(payment_id))
    try:
        return await handle.query(PaymentWorkflow.current_step, rpc_timeout=QUERY_TIMEOUT)
    except (RPCError, WorkflowQueryFailedError):
        return None


async def closed_state(client: Client, workflow_id: str) -> str | None:
    """None while the workflow runs; else what became of its latest run (`terminated`,
    `failed`, `completed`…), or `missing` when it was never started."""
    try:
        found = await client.get_workflow_handle(workflow_id).describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return "missing"
        raise
    if found.status == WorkflowExecutionStatus.RUNNING:
        return None
    return found.status.name.lower() if found.status else "closed"


async def payment_workflow_state(client: Client, payment_id: str) -> tuple[str, str | None]:
    """The workflow's id, its status's name (or "not started"), and its step if running."""
    handle = client.get_workflow_handle_for(PaymentWorkflow.run, workflow_id(payment_id))
    try:
        description = await handle.describe()
    except RPCError:
        return "not started", None
    status = description.status.name if description.status else "?"
    running = description.status == WorkflowExecutionStatus.RUNNING
    return status, await payment_step(client, payment_id) if running else None


# ----- cancel -------------------------------------------------------------------------------


async def cancel_with_start(
    client: Client, payment: PaymentInput, task_queue: str, deadline_s: float
) -> CancelOutcome | None:
    """Update-with-start `cancel_payment`; None when the deadline passed first.

    A payment whose workflow has not started yet is started already cancelled, so it can
    never authorize; a stranded one (open row, closed workflow) gets a new run that
    converges, then cancels.
    """
    start = WithStartWorkflowOperation(
        PaymentWorkflow.run,
        payment,
        id=workflow_id(payment.payment_id),
        task_queue=task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        search_attributes=starting_search_attributes(payment.billing_period, payment.customer_id),
        static_summary=payment_summary(payment),
        static_details=payment_details(payment),
    )
    try:
        # By name: the SDK's typing of an async update handler does not fit this call.
        outcome = await asyncio.wait_for(
            client.execute_update_with_start_workflow(
                CANCEL_UPDATE, start_workflow_operation=start, result_type=CancelOutcome
            ),
            deadline_s,
        )
        return CancelOutcome(outcome)
    except (TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError):
        return None


async def signal_cancel(client: Client, payment_id: str) -> None:
    """The durable `cancel` signal: recorded now, acted on when a worker runs."""
    handle = client.get_workflow_handle_for(PaymentWorkflow.run, workflow_id(payment_id))
    await handle.signal(PaymentWorkflow.cancel)


# ----- Stripe's events (the webhook receiver) -----------------------------------------------


async def signal_stripe_event(client: Client, payment_id: str, fact: StripeEventFact) -> bool:
    """Hand a Stripe event's fact to the payment's open run (`stripe_event`); False, having
    sent nothing, when the payment has no open run: closed, or never started."""
    handle = client.get_workflow_handle_for(PaymentWorkflow.run, workflow_id(payment_id))
    try:
        await handle.signal(PaymentWorkflow.stripe_event, fact)
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:  # "workflow execution already completed"
            return False
        raise
    return True


async def payment_stripe_events(client: Client, payment_id: str) -> list[StripeEventFact]:
    """The Stripe events the payment's workflow received, each once (a worker must answer)."""
    handle = client.get_workflow_handle_for(PaymentWorkflow.run, workflow_id(payment_id))
    return await handle.query(PaymentWorkflow.stripe_events, rpc_timeout=QUERY_TIMEOUT)


# ----- refunds ------------------------------------------------------------------------------


RefundHandle = WorkflowHandle[RefundWorkflow, RefundResult]


async def start_refund(
    client: Client, refund: RefundInput, task_queue: str, payment_status: PaymentStatus
) -> RefundHandle:
    """Start refund n's workflow, or attach to the one running (a repeated command). A run that
    failed, was terminated or timed out is run again: the ledger still holds refund n
    `requested` only when a run ended without recording it, and a new run finds at Stripe what
    the closed one did. A run that completed recorded its outcome: it is never run again (a new
    run could send the key of a refund recorded `failed` once more), and its result is the
    answer."""
    workflow_id = refund_workflow_id(refund.payment_id, refund.n)
    try:
        return await client.start_workflow(
            RefundWorkflow.run,
            refund,
            id=workflow_id,
            task_queue=task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
            search_attributes=starting_search_attributes(
                refund.billing_period, refund.customer_id
            ).updated(SearchAttributePair(PAYMENT_STATUS, payment_status.value)),
            static_summary=refund_summary(refund),
            static_details=refund_details(refund),
        )
    except WorkflowAlreadyStartedError:  # completed: its recorded outcome stands
        return client.get_workflow_handle_for(RefundWorkflow.run, workflow_id)


async def refund_outcome(handle: RefundHandle, deadline_s: float) -> RefundResult | None:
    """The refund's result; None when `deadline_s` passed first (it goes on)."""
    try:
        return await asyncio.wait_for(handle.result(), deadline_s)
    except TimeoutError:
        return None


async def refund_step(client: Client, payment_id: str, n: int) -> str | None:
    """The step a refund's running workflow is at; None when no worker answers."""
    handle = client.get_workflow_handle_for(RefundWorkflow.run, refund_workflow_id(payment_id, n))
    try:
        return await handle.query(RefundWorkflow.current_step, rpc_timeout=QUERY_TIMEOUT)
    except (RPCError, WorkflowQueryFailedError):
        return None


# ----- the billing run ----------------------------------------------------------------------


RunHandle = WorkflowHandle[Any, BillingSummary]


async def start_billing_run(
    client: Client, run: BillingRunInput, task_queue: str
) -> tuple[RunHandle, bool]:
    """Start the period's run, or find the one running; returns it and whether it is new.

    A run that has completed is followed by a new one: it starts nothing twice, and resumes
    what is stranded.
    """
    try:
        handle: RunHandle = await client.start_workflow(
            BILLING_RUN,
            run,
            id=billing_run_id(run.period),
            result_type=BillingSummary,
            task_queue=task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            search_attributes=period_search_attributes(run.period),
            static_summary=billing_run_summary(run.period),
        )
        return handle, True
    except WorkflowAlreadyStartedError:
        return billing_run(client, run.period), False


async def ask_to_sweep(handle: RunHandle, policy: BillingPolicy) -> None:
    """Ask a running run to launch every page again now, under `policy`: missing rows are
    made and stranded payments resumed; payments already running keep their own policy."""
    await handle.signal(SWEEP_SIGNAL, policy)


def billing_run(client: Client, period: str) -> RunHandle:
    """The period's run, its latest."""
    return client.get_workflow_handle(billing_run_id(period), result_type=BillingSummary)


async def run_progress(handle: RunHandle) -> RunProgress:
    progress: RunProgress = await handle.query(
        PROGRESS_QUERY, result_type=RunProgress, rpc_timeout=QUERY_TIMEOUT
    )
    return progress


# ----- the monthly Schedule -----------------------------------------------------------------


def monthly_schedule(settings: Settings, policy: BillingPolicy) -> Schedule:
    """Day `schedule_day` of each month at `schedule_hour`:00 in `schedule_time_zone`, a run
    for the month before (or, with BILL_IN_ARREARS=false, that month). A fire that finds the
    period's run, running or done, starts nothing; one missed while the server was down runs
    when it is back, within the catch-up window."""
    return Schedule(
        action=ScheduleActionStartWorkflow(
            MONTHLY_BILLING,
            ScheduledBillingInput(
                policy=policy,
                launch_rate=settings.resolved_launch_rate(),
                poll_interval=settings.run_poll_interval,
                time_zone=settings.schedule_time_zone,
                in_arrears=settings.bill_in_arrears,
            ),
            id=f"{SCHEDULE_ID}-fire",
            task_queue=settings.task_queue,
            # A fire that cannot finish (its worker cannot run it) must not hold the overlap
            # policy's SKIP against every later month.
            execution_timeout=FIRE_TIMEOUT,
        ),
        spec=ScheduleSpec(
            calendars=[
                ScheduleCalendarSpec(
                    day_of_month=[ScheduleRange(settings.schedule_day)],
                    hour=[ScheduleRange(settings.schedule_hour)],
                    minute=[ScheduleRange(0)],
                    second=[ScheduleRange(0)],
                    comment="monthly billing",
                )
            ],
            time_zone_name=settings.schedule_time_zone,
        ),
        policy=SchedulePolicy(
            overlap=ScheduleOverlapPolicy.SKIP, catchup_window=settings.schedule_catchup
        ),
        state=ScheduleState(note="bills each month; `starter.py schedule describe`"),
    )


async def create_schedule(client: Client, schedule: Schedule) -> bool:
    """Create the Schedule, or bring the existing one to `schedule` (keeping whether it is
    paused); returns whether it was created now."""
    try:
        await client.create_schedule(SCHEDULE_ID, schedule)
        return True
    except ScheduleAlreadyRunningError:
        pass

    def keep_state(current: ScheduleUpdateInput) -> ScheduleUpdate:
        state = current.description.schedule.state
        schedule.state.paused, schedule.state.note = state.paused, state.note
        return ScheduleUpdate(schedule=schedule)

    await schedule_handle(client).update(keep_state)
    return False


def schedule_handle(client: Client) -> ScheduleHandle:
    return client.get_schedule_handle(SCHEDULE_ID)
