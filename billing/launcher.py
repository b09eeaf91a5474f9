"""Launch a period's payment workflows: safe to re-run, never a second workflow per payment."""

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
)
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

from billing.constants import TERMINAL_STATUSES, starting_search_attributes, workflow_id
from billing.ledger import Ledger
from billing.models import BillingPolicy, PaymentInput, PaymentResult
from billing.summaries import payment_details, payment_summary
from billing.temporal_client import CANCEL_SIGNAL, cancel_was_requested
from workflows.payment import PaymentWorkflow

CONCURRENT_STARTS = 32


@dataclass
class LaunchSummary:
    rows_created: int = 0
    started: int = 0
    resumed: int = 0  # stranded: open in the ledger, their workflow closed
    already_launched: int = 0
    already_final: int = 0

    @property
    def payments(self) -> int:
        return self.started + self.resumed + self.already_launched + self.already_final


async def launch_period(
    ledger: Ledger,
    client: Client,
    period: str,
    task_queue: str,
    policy: BillingPolicy,
    *,
    on_total: Callable[[int], None] = lambda _: None,
    on_progress: Callable[[], None] = lambda: None,
) -> LaunchSummary:
    """Create the period's missing rows, then start one workflow per unfinished payment.

    A payment's policy (capture window, dunning) is fixed when its workflow starts.

    The workflow id derives from the payment, and FAIL on conflict keeps a running one
    single. A payment the ledger holds open whose workflow is closed (terminated, or a row
    restored from a backup) is stranded: it gets a new run (ALLOW_DUPLICATE), which reads the
    row and converges with Stripe before sending anything, so it never charges twice, and
    which starts cancelled if the closed run had been asked to cancel. Rows the ledger holds
    final are never started again.
    """
    summary = LaunchSummary(rows_created=await ledger.create_period_payments(period))
    payments = await ledger.period_payment_inputs(period, policy)
    unfinished = [p for p, status in payments if status not in TERMINAL_STATUSES]
    summary.already_final = len(payments) - len(unfinished)
    on_total(len(unfinished))
    slots = asyncio.Semaphore(CONCURRENT_STARTS)

    async def start_run(
        payment: PaymentInput, reuse: WorkflowIDReusePolicy, cancelled: bool = False
    ) -> None:
        await client.start_workflow(
            PaymentWorkflow.run,
            payment,
            id=workflow_id(payment.payment_id),
            task_queue=task_queue,
            id_reuse_policy=reuse,
            # Signal-with-start cannot FAIL on a running run: one that another `bill` just
            # started is sent the cancel it must honour anyway.
            id_conflict_policy=(
                WorkflowIDConflictPolicy.USE_EXISTING
                if cancelled
                else WorkflowIDConflictPolicy.FAIL
            ),
            search_attributes=starting_search_attributes(
                payment.billing_period, payment.customer_id
            ),
            start_signal=CANCEL_SIGNAL if cancelled else None,
            static_summary=payment_summary(payment),
            static_details=payment_details(payment),
        )

    async def start(payment: PaymentInput) -> None:
        async with slots:
            try:
                await start_run(payment, WorkflowIDReusePolicy.REJECT_DUPLICATE)
                summary.started += 1
            except WorkflowAlreadyStartedError:
                await resume_if_stranded(payment)
            on_progress()

    async def resume_if_stranded(payment: PaymentInput) -> None:
        closed = client.get_workflow_handle(workflow_id(payment.payment_id))
        if (await closed.describe()).status == WorkflowExecutionStatus.RUNNING:
            summary.already_launched += 1
            return
        cancelled = await cancel_was_requested(closed)
        try:
            await start_run(payment, WorkflowIDReusePolicy.ALLOW_DUPLICATE, cancelled)
            summary.resumed += 1
        except WorkflowAlreadyStartedError:  # another `bill` resumed it first
            summary.already_launched += 1

    await asyncio.gather(*(start(p) for p in unfinished))
    return summary


@dataclass(frozen=True)
class NotEnded:
    """A payment whose workflow closed without a result: terminated, or failed by a worker
    from before every error ended in a ledger status."""

    payment_id: str
    why: str


async def wait_for_payments(
    client: Client,
    payment_ids: Sequence[str],
    *,
    on_progress: Callable[[], None] = lambda: None,
) -> list[PaymentResult | NotEnded]:
    async def wait(payment_id: str) -> PaymentResult | NotEnded:
        handle: WorkflowHandle[PaymentWorkflow, PaymentResult] = client.get_workflow_handle(
            workflow_id(payment_id), result_type=PaymentResult
        )
        try:
            result: PaymentResult | NotEnded = await handle.result()
        except WorkflowFailureError as err:
            result = NotEnded(payment_id, str(err.cause or err))
        on_progress()
        return result

    return list(await asyncio.gather(*(wait(p) for p in payment_ids)))
