"""Operator CLI: bill a month, inspect and refund payments, import customers, run the demo.

Bad input gets a one-line error on stderr and exit code 2, with nothing written half-way.
"""

import argparse
import asyncio
import json
import re
import sys
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import aiohttp
import asyncpg
import stripe
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from temporalio.client import (
    Client,
    WorkflowFailureError,
    WorkflowQueryFailedError,
    WorkflowUpdateFailedError,
)
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from billing.constants import (
    BILLING_PERIOD,
    TERMINAL_STATUSES,
    CancelOutcome,
    PaymentStatus,
    RefundReason,
    RefundStatus,
    billing_run_id,
    refund_workflow_id,
    workflow_id,
)
from billing.customers_csv import InvalidCsv, read_customers
from billing.demo import (
    DEMO_DUNNING,
    DEMO_RUN_IDLE,
    DEMO_WAIT,
    PAGE_TIMEOUT,
    AuthenticatingCustomers,
    next_retry,
    seed_demo_customers,
    went_through_3ds,
)
from billing.durations import InvalidDuration, check_capture_delay, parse_duration
from billing.ledger import (
    CustomerConflict,
    Ledger,
    ReconcileLedger,
    UnknownPayment,
    migrate,
    open_pool,
)
from billing.ledger_refunds import RefundLedger, RefundRefused
from billing.ledger_stripe_events import HandedTo, StripeEventLedger
from billing.logs import configure_logging
from billing.models import (
    BillingPolicy,
    BillingRunInput,
    LaunchCounts,
    PaymentRecord,
    PeriodCounts,
    RefundInput,
    RunProgress,
)
from billing.money import InvalidAmount, format_amount, parse_amount
from billing.period import InvalidPeriod, billed_period, current_period, parse_period
from billing.reconcile import Comparison, Kind, reconcile
from billing.settings import Settings, describe_invalid
from billing.stripe_client import make_stripe_client
from billing.tracing import start_tracing, tracer
from temporal_ops import (
    ask_to_sweep,
    billing_run,
    cancel_with_start,
    connect_temporal,
    create_schedule,
    monthly_schedule,
    payment_input,
    payment_step,
    payment_workflow_state,
    refund_outcome,
    refund_step,
    run_progress,
    schedule_handle,
    signal_cancel,
    start_billing_run,
    start_refund,
)

EXIT_OK = 0
EXIT_BAD_INPUT = 2
# `bill` reads the run's progress this often, and says after this long without an answer that
# no worker answers (then `bill` returns; `bill --wait` waits on).
FOLLOW_POLL_S = 0.5
NO_WORKER_HINT_S = 6.0
# A run that completes between `bill`'s start and its signal is followed by a new one.
START_ATTEMPTS = 3
NO_WORKER = (
    "no worker answers: the run launches the payments when one runs (`python worker.py`; "
    "`make up` starts one); follow it with `bill {period} --wait`"
)
OPEN_STATUSES = tuple(s for s in PaymentStatus if s not in TERMINAL_STATUSES)

out = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


class CliError(Exception):
    """Shown as one line on stderr; exit code 2."""


@dataclass
class Services:
    settings: Settings
    ledger: Ledger
    client_override: Client | None = None
    _client: Client | None = None

    async def temporal(self) -> Client:
        if self.client_override is not None:
            return self.client_override
        if self._client is None:
            try:
                self._client = await connect_temporal(self.settings)
            except RuntimeError as err:
                raise CliError(
                    f"cannot reach Temporal ({err}); run `make up` or set TEMPORAL_ADDRESS"
                ) from err
        return self._client


@asynccontextmanager
async def services(settings: Settings, client: Client | None) -> AsyncIterator[Services]:
    url = settings.resolved_database_url()
    try:
        pool = await asyncio.wait_for(open_pool(url, max_size=4), timeout=15)
    except (OSError, asyncpg.PostgresError, TimeoutError) as err:
        raise CliError(
            f"cannot reach PostgreSQL ({err}); run `make up` or set DATABASE_URL"
        ) from err
    try:
        await migrate(pool)
        yield Services(settings, Ledger(pool), client_override=client)
    finally:
        await pool.close()


def progress_bar() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
    )


async def bill(
    svc: Services,
    period: str,
    *,
    wait: bool,
    capture_after: timedelta | None = None,
    policy: BillingPolicy | None = None,
    idle_interval: timedelta | None = None,
) -> None:
    """Start the period's billing run, or attach to the one running, and follow it until it
    has launched every payment (with `wait`, until every payment has ended)."""
    client = await svc.temporal()
    settings = svc.settings
    run = BillingRunInput(
        period=period,
        policy=policy or settings.billing_policy(capture_after),
        launch_rate=settings.resolved_launch_rate(),
        poll_interval=settings.run_poll_interval,
        idle_interval=idle_interval or BillingRunInput.model_fields["idle_interval"].default,
    )
    asked: int | None = None  # how many sweeps the running run had been asked for before ours
    for _ in range(START_ATTEMPTS):
        handle, started = await start_billing_run(client, run, settings.task_queue)
        if started:
            out.print(f"started {handle.id}, launching at most {run.launch_rate:g} payments/s")
            break
        try:
            asked = (await run_progress(handle)).sweeps_requested
        except (RPCError, WorkflowQueryFailedError):  # no worker now: the signal still counts
            asked = None
        try:
            await ask_to_sweep(handle, run.policy)
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                continue  # the run completed meanwhile: start the next one
            raise CliError(f"could not reach {handle.id}: {err}") from err
        out.print(
            f"{handle.id} is already running; asked it to launch again now "
            "(missing rows made, stranded payments resumed)"
        )
        break
    else:
        raise CliError(f"{billing_run_id(period)} kept completing as `bill` reached it; run again")
    progress = await follow_run(client, period, to_the_end=wait, sweeps_before=asked)
    if progress is None:
        return
    print_launch_summary(period, progress.launched)
    if wait:
        print_counts(period, progress.counts)


async def follow_run(
    client: Client, period: str, *, to_the_end: bool, sweeps_before: int | None = None
) -> RunProgress | None:
    """Show the run's progress, read from its `progress` query, until it has launched every
    payment (and answered any sweep asked after the first `sweeps_before`) or, `to_the_end`,
    until it has completed. Interrupting leaves the run going.

    The query needs a worker. When none answers for NO_WORKER_HINT_S, following the launch
    returns None (the run launches when a worker comes); following to the end waits on."""
    handle = billing_run(client, period)  # the latest run: it continues as new
    result = asyncio.ensure_future(handle.result())
    loop = asyncio.get_running_loop()
    hint_at = loop.time() + NO_WORKER_HINT_S
    last: RunProgress | None = None
    try:
        with progress_bar() as bar:
            launching = bar.add_task(f"launching {period}", total=None)
            ending = bar.add_task(f"ended in {period}", total=None, visible=to_the_end)
            while not result.done():
                try:
                    last = await run_progress(handle)
                    if hint_at != float("inf"):  # silent until this long without an answer
                        hint_at = loop.time() + NO_WORKER_HINT_S
                except (RPCError, WorkflowQueryFailedError):
                    if loop.time() >= hint_at:
                        hint_at = float("inf")
                        err_console.print(NO_WORKER.format(period=period))
                        if not to_the_end:
                            return None
                if last is not None:
                    total = last.counts.total or None
                    bar.update(launching, completed=last.launched.payments, total=total)
                    ended = last.counts.total - last.counts.count(*OPEN_STATUSES)
                    bar.update(ending, completed=ended, total=total)
                    swept = sweeps_before is None or last.sweeps_done > sweeps_before
                    launched = last.phase != "launching" and swept
                    if launched and not to_the_end:
                        return last
                await asyncio.wait([result], timeout=FOLLOW_POLL_S)
            try:
                summary = result.result()
            except WorkflowFailureError as err:
                raise CliError(
                    f"{billing_run_id(period)} ended without a summary ({err.cause or err}); "
                    f"`bill {period}` starts it again"
                ) from err
            return RunProgress(
                period=period,
                phase="done",
                launched=summary.launched,
                counts=summary.counts,
                runs=last.runs if last else 1,
            )
    finally:
        result.cancel()


def print_launch_summary(period: str, counts: LaunchCounts) -> None:
    table = Table(title=f"bill {period}")
    table.add_column("what")
    table.add_column("count", justify="right")
    table.add_row("payment rows created", str(counts.rows_created))
    table.add_row("workflows started", str(counts.started))
    table.add_row("stranded payments resumed", str(counts.resumed))
    table.add_row("already launched (left alone)", str(counts.already_launched))
    table.add_row("already final (left alone)", str(counts.already_final))
    table.add_row("payments in period", str(counts.payments))
    out.print(table)


def print_counts(period: str, counts: PeriodCounts) -> None:
    table = Table(title=f"{period}: how the payments ended")
    table.add_column("status")
    table.add_column("payments", justify="right")
    for status, count in sorted(counts.by_status.items()):
        table.add_row(status.value, str(count))
    for currency, amount in sorted(counts.received.items()):
        table.add_row(f"received {currency.upper()}", format_amount(amount, currency))
    out.print(table)


def report_rows(payments: Sequence[PaymentRecord]) -> dict[tuple[str, str], list[int]]:
    totals: dict[tuple[str, str], list[int]] = {}
    for p in payments:
        count_amount = totals.setdefault((p.status.value, p.currency), [0, 0])
        count_amount[0] += 1
        count_amount[1] += p.amount
    return dict(sorted(totals.items()))


async def report(svc: Services, period: str, *, as_json: bool) -> None:
    payments = await svc.ledger.period_payments(period)
    totals = report_rows(payments)
    if as_json:
        document = {
            "period": period,
            "totals": [
                {"status": s, "currency": c, "count": n, "amount": a}
                for (s, c), (n, a) in totals.items()
            ],
            "payments": [
                {
                    "id": p.id,
                    "customer_id": p.customer_id,
                    "amount": p.amount,
                    "currency": p.currency,
                    "status": p.status.value,
                    "stripe_payment_intent_id": p.stripe_payment_intent_id,
                    "failure_code": p.failure_code,
                }
                for p in payments
            ],
        }
        print(json.dumps(document, indent=2))
        return
    table = Table(title=f"report {period}: {len(payments)} payments")
    for column in ("status", "currency", "count", "amount"):
        table.add_column(column, justify="right" if column in ("count", "amount") else "left")
    for (status, currency), (count, amount) in totals.items():
        table.add_row(status, currency, str(count), format_amount(amount, currency))
    out.print(table)


async def status(svc: Services, payment_id: str) -> None:
    payment = await svc.ledger.payment(payment_id)
    if payment is None:
        raise CliError(f"unknown payment {payment_id!r}; `report YYYY-MM --json` lists the ids")
    out.print(f"payment   {payment.id}")
    out.print(f"customer  {payment.customer_id}   period {payment.billing_period}")
    out.print(f"amount    {payment.amount} {payment.currency}")
    out.print(f"status    {payment.status.value}")
    out.print(f"intent    {payment.stripe_payment_intent_id or '-'}")
    if payment.failure_code:
        out.print(f"failure   {payment.failure_code}: {payment.failure_message}")
    if payment.status == PaymentStatus.ACTION_REQUIRED:
        where = payment.next_action_url or "Stripe gave no URL; the customer confirms in your app"
        out.print(f"action    the customer must pass 3-D Secure: {where}", highlight=False)
    state, step = await payment_workflow_state(await svc.temporal(), payment.id)
    if state == "not started":
        out.print(
            f"workflow  {workflow_id(payment.id)} not started (run `bill {payment.billing_period}`)"
        )
    else:
        out.print(f"workflow  {workflow_id(payment.id)} {state}{f', step {step}' if step else ''}")
    for event in await svc.ledger.events(payment.id):
        change = f"{event.from_status or '-'} -> {event.to_status}"
        out.print(f"  {event.occurred_at:%Y-%m-%d %H:%M:%S} {change} {event.detail}")
    for r in await RefundLedger.sharing_pool_of(svc.ledger).refunds(payment.id):
        money = f"{format_amount(r.amount, r.currency)} {r.currency.upper()}"
        failure = f"{r.failure_code}: {r.failure_message}" if r.failure_code else "-"
        ended = r.stripe_refund_id or failure
        out.print(
            f"refund {r.n}  {money} {r.reason.value} {r.status.value} {ended} "
            f"({refund_workflow_id(payment.id, r.n)}, {r.created_at:%Y-%m-%d %H:%M:%S})",
            highlight=False,
        )
    for e in await StripeEventLedger.sharing_pool_of(svc.ledger).events_of(payment.id):
        handed = f"handed to {e.handed_to.value}" if e.handed_to else "not handed on yet"
        if e.handed_to == HandedTo.IGNORED:
            handed = "ignored (a type not handled)"
        out.print(
            f"stripe    {e.created:%Y-%m-%d %H:%M:%S} {e.type} {e.id} {handed}", highlight=False
        )


# `cancel` outcomes and their exit codes (documented in the README).
CANCEL_EXIT_CODES = {
    CancelOutcome.CANCELLED: 0,
    CancelOutcome.UNKNOWN_PAYMENT: 2,
    CancelOutcome.ALREADY_CANCELLED: 3,
    CancelOutcome.ALREADY_CAPTURED: 4,
    CancelOutcome.FAILED: 5,
    CancelOutcome.REQUESTED: 6,
    CancelOutcome.NEEDS_ATTENTION: 7,
}
OUTCOME_OF_FINAL_STATUS = {
    PaymentStatus.CANCELLED: CancelOutcome.ALREADY_CANCELLED,
    PaymentStatus.SUCCEEDED: CancelOutcome.ALREADY_CAPTURED,
    PaymentStatus.PARTIALLY_REFUNDED: CancelOutcome.ALREADY_CAPTURED,
    PaymentStatus.REFUNDED: CancelOutcome.ALREADY_CAPTURED,
    PaymentStatus.FAILED: CancelOutcome.FAILED,
    PaymentStatus.NEEDS_ATTENTION: CancelOutcome.NEEDS_ATTENTION,
}
CANCEL_TIMEOUT_S = 30.0


async def cancel(
    svc: Services, payment_id: str, *, deadline_s: float = CANCEL_TIMEOUT_S
) -> tuple[CancelOutcome, str | None]:
    """Ask the payment's workflow to cancel and wait, at most `deadline_s`, for what it
    did. Returns the outcome, and for REQUESTED the step the payment is at.

    Through update-with-start (see `cancel_with_start`). Past the deadline the `cancel` signal
    is sent too, so the request is recorded even when no worker runs now, and takes effect.
    """
    row = await svc.ledger.billable_row(payment_id)
    if row is None:
        return CancelOutcome.UNKNOWN_PAYMENT, None
    if row.status in OUTCOME_OF_FINAL_STATUS:
        return OUTCOME_OF_FINAL_STATUS[row.status], None
    client = await svc.temporal()
    payment = payment_input(row, svc.settings.billing_policy())
    try:
        outcome = await cancel_with_start(client, payment, svc.settings.task_queue, deadline_s)
    except (WorkflowAlreadyStartedError, WorkflowUpdateFailedError, RPCError) as err:
        record = await svc.ledger.payment(payment_id)
        if record is not None and record.status in OUTCOME_OF_FINAL_STATUS:
            return OUTCOME_OF_FINAL_STATUS[record.status], None
        raise CliError(f"could not cancel payment {payment_id}: {err}") from err
    if outcome is not None:
        return outcome, None
    return CancelOutcome.REQUESTED, await request_cancel(svc, payment_id)


async def request_cancel(svc: Services, payment_id: str) -> str:
    """Send the durable `cancel` signal and say where the payment is: its workflow's step,
    or its ledger status when no worker answers."""
    client = await svc.temporal()
    try:
        await signal_cancel(client, payment_id)
    except RPCError as err:
        raise CliError(f"could not send cancel to payment {payment_id}: {err}") from err
    step = await payment_step(client, payment_id)
    if step is not None:
        return step
    record = await svc.ledger.payment(payment_id)
    return f"{record.status.value if record else 'unknown'} (in the ledger)"


# `refund` outcomes besides 0 (refunded) and 2 (refused, nothing written).
EXIT_REFUND_FAILED = 5
EXIT_REFUND_IN_FLIGHT = 6
REFUND_TIMEOUT_S = 30.0


def refund_reason(text: str) -> RefundReason:
    try:
        return RefundReason(text)
    except ValueError:
        choices = ", ".join(r.value for r in RefundReason)
        raise CliError(f"invalid reason {text!r}: expected one of {choices}") from None


# A request id: printable, no spaces, as a ticket number or a UUID would be.
REQUEST_ID = re.compile(r"[A-Za-z0-9._:/#-]{1,200}")


def request_id(text: str) -> str:
    if not REQUEST_ID.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"invalid request id {text!r}: use 1 to 200 letters, digits or . _ : / # -"
        )
    return text


async def refund(
    svc: Services,
    payment_id: str,
    *,
    amount: str | None,
    reason: RefundReason,
    request_id: str | None = None,
    deadline_s: float = REFUND_TIMEOUT_S,
) -> int:
    """Reserve the payment's next refund in the ledger, start its workflow (or attach to the
    refund of the payment in flight, asked the same way), and wait at most `deadline_s` for
    what Stripe did. Refused, with nothing written: an unknown payment, a bad amount, a
    payment not captured or fully refunded, an amount above what remains."""
    payment = await svc.ledger.payment(payment_id)
    if payment is None:
        raise CliError(f"unknown payment {payment_id!r}; `report YYYY-MM --json` lists the ids")
    try:
        minor = parse_amount(amount, payment.currency) if amount is not None else None
    except InvalidAmount as err:
        raise CliError(str(err)) from err
    client = await svc.temporal()  # before anything is written
    try:
        reserved = await RefundLedger.sharing_pool_of(svc.ledger).reserve(
            payment.id, minor, reason, request_id
        )
    except (RefundRefused, UnknownPayment) as err:
        raise CliError(str(err)) from err
    r = reserved.refund
    money = f"{format_amount(r.amount, r.currency)} {r.currency.upper()}"
    workflow = refund_workflow_id(payment.id, r.n)
    try:
        handle = await start_refund(
            client,
            RefundInput(
                payment_id=payment.id,
                n=r.n,
                amount=r.amount,
                currency=r.currency,
                reason=r.reason,
                intent_id=reserved.intent_id,
                billing_period=reserved.billing_period,
                customer_id=reserved.customer_id,
            ),
            svc.settings.task_queue,
            payment.status,
        )
    except RPCError as err:
        raise CliError(
            f"refund {r.n} of {money} is reserved but {workflow} could not start ({err}); "
            "run the same command again to start it"
        ) from err
    if reserved.new:
        out.print(f"refund {r.n} of {money} requested: {workflow}", highlight=False)
    elif r.status != RefundStatus.REQUESTED:
        out.print(
            f"request id {request_id} was refund {r.n} of {money}, already {r.status.value}: "
            "nothing is refunded again",
            highlight=False,
        )
    else:
        out.print(f"refund {r.n} of {money} was already in flight: following {workflow}")
    result = await refund_outcome(handle, deadline_s)
    if result is None:
        step = await refund_step(client, payment.id, r.n) or "no worker answers"
        out.print(f"refund {r.n} still in flight (step: {step}); `status {payment.id}` follows it")
        return EXIT_REFUND_IN_FLIGHT
    if result.status == RefundStatus.FAILED:
        out.print(
            f"refund {r.n} failed: {result.failure_code}: {result.failure_message}",
            highlight=False,
        )
        return EXIT_REFUND_FAILED
    status = result.payment_status.value if result.payment_status else "?"
    out.print(f"refunded {money} ({result.stripe_refund_id}); the payment is {status}")
    return EXIT_OK


EXIT_DISCREPANCY = 1


def table_width(table: Table) -> int:
    return Console(width=10_000).measure(table).maximum


async def reconcile_period(svc: Services, period: str, *, fix: bool) -> int:
    """Compare the period with Stripe and Temporal and print what needs a look; 1 if
    anything does."""
    ledger = ReconcileLedger.sharing_pool_of(svc.ledger)
    temporal = await svc.temporal()
    try:
        result = await reconcile(
            ledger, make_stripe_client(svc.settings), temporal, period, fix=fix
        )
    except stripe.AuthenticationError as err:
        raise CliError(
            f"Stripe refused the key ({err.user_message}); check STRIPE_API_KEY"
        ) from err
    except stripe.APIConnectionError as err:
        raise CliError(f"cannot reach Stripe ({err.user_message}); check STRIPE_API_BASE") from err
    except RPCError as err:
        raise CliError(f"Temporal could not describe a workflow ({err.message})") from err
    print_reconciliation(result)
    return EXIT_OK if result.clean else EXIT_DISCREPANCY


def print_wide(table: Table) -> None:
    """Ids are copied from here into other commands: never wrap or cut them."""
    Console(width=max(out.width, table_width(table)), soft_wrap=True).print(table)


def print_reconciliation(result: Comparison) -> None:
    fixes = {f.intent_id: f.outcome for f in result.fixes}
    if result.findings:
        table = Table(title=f"reconcile {result.period}: {len(result.findings)} findings")
        for column in ("finding", "Stripe customer", "payment", "intent", "detail", "fix"):
            table.add_column(column, no_wrap=True)
        for f in result.findings:
            fix = fixes.get(f.intent_id or "", "-") if f.kind == Kind.ORPHAN else "-"
            table.add_row(
                f.kind.value,
                f.customer or "-",
                f.payment_id or "-",
                f.intent_id or "-",
                f.detail,
                fix,
            )
        print_wide(table)
    if result.refunds:
        table = Table(title=f"refunds and disputes {result.period} (information)")
        for column in ("Stripe customer", "intent", "refunded", "disputed"):
            table.add_column(column, no_wrap=True)
        for r in result.refunds:
            refunded = f"{r.refunded} {r.currency}" if r.refunded else "-"
            table.add_row(r.customer, r.intent_id, refunded, "yes" if r.disputed else "no")
        print_wide(table)
    summary = Table(title=f"reconcile {result.period}")
    summary.add_column("what")
    summary.add_column("count", justify="right")
    summary.add_row("payments", str(result.payments))
    summary.add_row("Stripe customers", str(result.customers))
    summary.add_row("our PaymentIntents listed", str(result.intents))
    summary.add_row("authorizations in their capture window", str(len(result.in_window)))
    summary.add_row("authorizations being captured", str(len(result.being_captured)))
    summary.add_row("authorizations being recorded", str(len(result.in_flight)))
    summary.add_row("captures being recorded", str(len(result.captures_being_recorded)))
    for currency in sorted(set(result.stripe_captured) | set(result.ledger_succeeded)):
        stripe_total = result.stripe_captured.get(currency, 0)
        ledger_total = result.ledger_succeeded.get(currency, 0)
        summary.add_row(
            f"captured at Stripe / succeeded in ledger ({currency})",
            f"{stripe_total} / {ledger_total}",
        )
    summary.add_row("refunded or disputed captures", str(len(result.refunds)))
    summary.add_row("refunds at Stripe compared with the ledger", str(len(result.refunds_compared)))
    summary.add_row("refunds being recorded", str(len(result.refunds_being_recorded)))
    summary.add_row("refunds stranded", str(len(result.of_kind(Kind.REFUND_STRANDED))))
    summary.add_row("open disputes (information)", str(len(result.open_disputes)))
    summary.add_row("stranded payments", str(len(result.of_kind(Kind.STRANDED))))
    summary.add_row("payments needing attention", str(len(result.of_kind(Kind.NEEDS_ATTENTION))))
    summary.add_row("findings", str(len(result.findings)))
    if result.fixes:
        summary.add_row("orphans voided now", str(sum(f.resolved for f in result.fixes)))
    summary.add_row("unresolved", str(len(result.unresolved)))
    out.print(summary)
    if result.left_for_a_person:
        out.print("left for a person:")
        for line in result.left_for_a_person:
            out.print(f"  {line}", highlight=False)
    out.print("clean" if result.clean else "discrepancies found")


async def import_customers(svc: Services, path: Path) -> None:
    try:
        customers = read_customers(path)
    except InvalidCsv as err:
        raise CliError(str(err)) from err
    try:
        count = await svc.ledger.upsert_customers(customers)
    except CustomerConflict as err:
        raise CliError(str(err)) from err
    out.print(f"imported {count} customers from {path}")


def web_ui_url(settings: Settings, namespace: str, period: str) -> str:
    query = quote(f'{BILLING_PERIOD.name}="{period}"')
    base = settings.resolved_temporal_ui_url()
    return f"{base}/namespaces/{namespace}/workflows?query={query}"


async def demo(svc: Services) -> None:
    """Seed, bill this month with the demo's short dunning schedule, wait at most DEMO_WAIT,
    then report, and say when each payment still in dunning tries again. Meanwhile, on the
    embedded sandbox, the customers asked for 3-D Secure pass it (the webhook then wakes their
    payments); on Stripe, their URLs are shown for a person to open."""
    period = current_period()
    customers = await seed_demo_customers(svc.ledger, make_stripe_client(svc.settings))
    out.print(f"seeded {len(customers)} demo customers")
    retries = " and ".join(f"{int(d.total_seconds())} s" for d in DEMO_DUNNING)
    out.print(
        f"demo dunning schedule: a soft decline is retried {retries} after the first one "
        "(`bill` follows DUNNING_SCHEDULE, 1, 3 and 5 days by default)"
    )
    policy = svc.settings.billing_policy().model_copy(update={"dunning_schedule": DEMO_DUNNING})
    await bill(svc, period, wait=False, policy=policy, idle_interval=DEMO_RUN_IDLE)
    async with aiohttp.ClientSession(timeout=PAGE_TIMEOUT) as http:
        authenticating = AuthenticatingCustomers(http, play=svc.settings.stripe_api_key is None)

        async def visit(still_open: list[PaymentRecord]) -> None:
            for line in await authenticating.visit(still_open):
                out.print(line, highlight=False)

        still_open = await wait_until_ended(svc, period, DEMO_WAIT, visit)
    await report(svc, period, as_json=False)
    payments = await svc.ledger.period_payments(period)
    failures = Counter(p.failure_code for p in payments if p.failure_code)
    for code, count in sorted(failures.items()):
        out.print(f"{count} payments failed with {code}")
    events = {p.id: await svc.ledger.events(p.id) for p in payments}
    through_3ds = sum(went_through_3ds(e) for e in events.values())
    out.print(f"{through_3ds} payments went through 3-D Secure")
    for payment in still_open:
        when = next_retry(events[payment.id], DEMO_DUNNING)
        retry = f"retries at {when:%H:%M:%S} UTC" if when else f"is {payment.status.value}"
        out.print(
            f"payment {payment.id} {retry}; follow it with `python starter.py status {payment.id}`"
        )
    namespace = (await svc.temporal()).namespace
    out.print(f"Web UI: {web_ui_url(svc.settings, namespace, period)}")


async def wait_until_ended(
    svc: Services,
    period: str,
    at_most: timedelta,
    on_poll: Callable[[list[PaymentRecord]], Awaitable[None]] | None = None,
) -> list[PaymentRecord]:
    """Poll the ledger until every payment of the period has ended, or `at_most` passed;
    returns those still open. `on_poll` sees the open ones at each poll."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + at_most.total_seconds()
    with progress_bar() as progress:
        task = progress.add_task(f"waiting for {period}", total=None)
        while True:
            payments = await svc.ledger.period_payments(period)
            still_open = [p for p in payments if p.status not in TERMINAL_STATUSES]
            progress.update(task, total=len(payments), completed=len(payments) - len(still_open))
            if not still_open or loop.time() >= deadline:
                return still_open
            if on_poll is not None:
                await on_poll(still_open)
            await asyncio.sleep(0.5)


async def schedule_command(svc: Services, action: str) -> None:
    """create (or bring up to date), describe, pause, unpause, trigger or delete the one
    monthly Schedule."""
    client = await svc.temporal()
    settings = svc.settings
    handle = schedule_handle(client)
    try:
        if action == "create":
            created = await create_schedule(
                client, monthly_schedule(settings, settings.billing_policy())
            )
            out.print(f"schedule {handle.id} {'created' if created else 'updated'}")
        elif action == "pause":
            await handle.pause(note="paused with `starter.py schedule pause`")
        elif action == "unpause":
            await handle.unpause(note="unpaused with `starter.py schedule unpause`")
        elif action == "trigger":
            await handle.trigger()
            period = billed_period(
                datetime.now(UTC), settings.schedule_time_zone, settings.bill_in_arrears
            )
            out.print(f"triggered: it starts {billing_run_id(period)} unless that exists")
            return
        elif action == "delete":
            await handle.delete()
            out.print(f"schedule {handle.id} deleted; billing runs already started go on")
            return
        await describe_schedule(svc)
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            raise CliError(f"no schedule {handle.id}; create it with `schedule create`") from err
        raise


async def describe_schedule(svc: Services) -> None:
    description = await schedule_handle(await svc.temporal()).describe()
    calendar = description.schedule.spec.calendars[0]
    zone = description.schedule.spec.time_zone_name or "UTC"
    state = description.schedule.state
    out.print(
        f"schedule  {description.id}: day {calendar.day_of_month[0].start} of each month at "
        f"{calendar.hour[0].start:02d}:00 {zone}"
    )
    out.print(f"state     {'paused' if state.paused else 'active'}  ({state.note or '-'})")
    for when in description.info.next_action_times[:3]:
        out.print(f"next      {when:%Y-%m-%d %H:%M} UTC")
    for action in description.info.recent_actions[-3:]:
        started = getattr(action.action, "workflow_id", "?")
        out.print(f"fired     {action.scheduled_at:%Y-%m-%d %H:%M} UTC -> {started}")


def positive_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds above 0, not {text!r}")
    return seconds


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)  # prog: starter.py or billing
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    bill_cmd = commands.add_parser(
        "bill", help="start the period's billing run (or attach to it) and follow its launch"
    )
    bill_cmd.add_argument("period", metavar="YYYY-MM")
    bill_cmd.add_argument(
        "--wait", action="store_true", help="follow the run until every payment has ended"
    )
    bill_cmd.add_argument(
        "--capture-after",
        metavar="DELAY",
        help="capture window, e.g. 2h or 1d12h (default: CAPTURE_DELAY, else 0)",
    )
    cancel_cmd = commands.add_parser(
        "cancel",
        help="void a payment not yet captured; exit 0 cancelled, 2 unknown payment, "
        "3 already cancelled, 4 already captured, 5 failed, 6 requested (deadline passed), "
        "7 needs attention",
    )
    cancel_cmd.add_argument("payment_id")
    cancel_cmd.add_argument(
        "--timeout",
        type=positive_seconds,
        default=CANCEL_TIMEOUT_S,
        metavar="SECONDS",
        help=f"how long to wait for the outcome (default {CANCEL_TIMEOUT_S:g}); "
        "the request takes effect either way",
    )
    refund_cmd = commands.add_parser(
        "refund",
        help="give back part or all of a captured payment; exit 0 refunded, 2 refused "
        "(nothing written), 5 Stripe refused it, 6 still in flight at the timeout",
    )
    refund_cmd.add_argument("payment_id")
    refund_cmd.add_argument(
        "--amount", metavar="X.YY", help="in the payment's currency (default: all that remains)"
    )
    refund_cmd.add_argument(
        "--reason",
        default=RefundReason.REQUESTED_BY_CUSTOMER.value,
        metavar="|".join(r.value for r in RefundReason),
        help="Stripe's refund reason (default requested_by_customer)",
    )
    refund_cmd.add_argument(
        "--request-id",
        type=request_id,
        metavar="ID",
        help="your id for this request (a ticket, say): the same id again never refunds "
        "twice, even after the refund ended",
    )
    refund_cmd.add_argument(
        "--timeout",
        type=positive_seconds,
        default=REFUND_TIMEOUT_S,
        metavar="SECONDS",
        help=f"how long to wait for Stripe's answer (default {REFUND_TIMEOUT_S:g}); "
        "the refund goes on either way",
    )
    status_cmd = commands.add_parser(
        "status", help="show one payment, its history, refunds and Stripe events"
    )
    status_cmd.add_argument("payment_id")
    report_cmd = commands.add_parser("report", help="counts and amounts by status")
    report_cmd.add_argument("period", metavar="YYYY-MM")
    report_cmd.add_argument("--json", action="store_true", help="machine-readable output")
    reconcile_cmd = commands.add_parser(
        "reconcile",
        help="compare the ledger with Stripe and Temporal; exit 0 clean, 1 on any finding, "
        "2 bad input",
    )
    reconcile_cmd.add_argument("period", metavar="YYYY-MM")
    reconcile_cmd.add_argument(
        "--fix",
        action="store_true",
        help="void orphan authorizations (never captured money) and record it; "
        "everything else is left for a person",
    )
    customers_cmd = commands.add_parser("customers", help="manage customers")
    customers_sub = customers_cmd.add_subparsers(dest="customers_command", required=True)
    import_cmd = customers_sub.add_parser("import", help="upsert customers from a CSV file")
    import_cmd.add_argument("file", type=Path, metavar="FILE.csv")
    commands.add_parser("demo", help="seed demo customers, bill this month, show the report")
    schedule_cmd = commands.add_parser("schedule", help="the Schedule that bills each month")
    schedule_cmd.add_argument(
        "action", choices=["create", "describe", "pause", "unpause", "trigger", "delete"]
    )
    return parser


async def dispatch(args: argparse.Namespace, settings: Settings, client: Client | None) -> int:
    period = parse_period(args.period) if getattr(args, "period", None) else None
    capture_after = getattr(args, "capture_after", None)
    capture_delay = check_capture_delay(parse_duration(capture_after)) if capture_after else None
    async with services(settings, client) as svc:
        if args.command == "bill":
            assert period is not None
            # The root of the trace that follows each payment to its end (when tracing is on).
            with tracer.start_as_current_span("bill", attributes={"billing.period": period}):
                await bill(svc, period, wait=args.wait, capture_after=capture_delay)
        elif args.command == "cancel":
            outcome, step = await cancel(svc, args.payment_id, deadline_s=args.timeout)
            if outcome == CancelOutcome.REQUESTED:
                out.print(f"{outcome.value}; the payment is at step {step}")
            else:
                too_late = outcome == CancelOutcome.ALREADY_CAPTURED
                refund_hint = f" (too late); use `refund {args.payment_id}` to give money back"
                out.print(f"{outcome.value}{refund_hint if too_late else ''}", highlight=False)
            return CANCEL_EXIT_CODES[outcome]
        elif args.command == "refund":
            return await refund(
                svc,
                args.payment_id,
                amount=args.amount,
                reason=refund_reason(args.reason),
                request_id=args.request_id,
                deadline_s=args.timeout,
            )
        elif args.command == "report":
            assert period is not None
            await report(svc, period, as_json=args.json)
        elif args.command == "status":
            await status(svc, args.payment_id)
        elif args.command == "reconcile":
            assert period is not None
            return await reconcile_period(svc, period, fix=args.fix)
        elif args.command == "customers":
            await import_customers(svc, args.file)
        elif args.command == "demo":
            await demo(svc)
        elif args.command == "schedule":
            await schedule_command(svc, args.action)
    return EXIT_OK


async def execute(
    argv: Sequence[str] | None = None,
    settings: Settings | None = None,
    client: Client | None = None,
) -> int:
    """Run one command; tests pass their own settings and Temporal client."""
    args = build_parser().parse_args(argv)
    try:
        return await dispatch(args, settings or Settings(), client)
    except (CliError, InvalidPeriod, InvalidDuration) as err:
        err_console.print(f"error: {err}", highlight=False, markup=False)
    except ValidationError as err:
        err_console.print(f"error: {describe_invalid(err)}", highlight=False, markup=False)
    return EXIT_BAD_INPUT


def main() -> None:
    try:
        settings = Settings()
    except ValidationError as err:
        err_console.print(f"error: {describe_invalid(err)}", highlight=False, markup=False)
        sys.exit(EXIT_BAD_INPUT)
    configure_logging(settings)
    start_tracing(settings, "billing-starter")
    sys.exit(asyncio.run(execute(settings=settings)))


if __name__ == "__main__":
    main()
