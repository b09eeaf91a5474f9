"""Chaos soak: N payments through the real worker while everything around it breaks.

- The Stripe sandbox answers with latency, 429s (its test-mode rate limit of 25 requests/s),
  `error_before`, `drop_after` and `error_after`, drawn at random.
- The worker (`python worker.py`) is SIGKILLed and restarted every few seconds.
- PostgreSQL is restarted twice: once cleanly, once by SIGKILL of the postmaster.
- The Temporal dev server, with its SQLite state on disk, is restarted once.
- Operators act on a few payments: the customer's `cancel` signal, a Temporal cancellation
  request (the Web UI's "Request Cancellation"), a terminate, and `customers import` of the
  customer again with its email's case changed; after the chaos `bill` runs again and resumes
  the terminated ones.
- Operators refund some payments once they succeed, with `starter.py refund`: in full, in part
  (`--amount`), and for a few the same full refund twice at once and once more afterwards.
- Some customers pay with the dispute test card: their captures are disputed at once.
- The webhook receiver (`python -m billing.webhooks`) is registered as the sandbox's endpoint
  for the event types it handles; deliveries are dropped, duplicated, delayed and reordered,
  and the receiver is SIGKILLed once and started again.

Every loop is bounded in count and time. At the end it prints a table and exits 1 if any
payment was double charged, lost, stuck or left an orphan authorization, if a workflow closed
without ending its payment other than by our terminates, if a Stripe customer was captured
more than once in the period or for another amount than the ledger received, if a re-import
added a customer or a payment, if `reconcile` is not clean, if the sandbox's captured total
differs from the ledger's captured total, on a double refund (Stripe holds more refunds of a
payment than the ledger's succeeded ones, two carry the same refund n, or a repeated command
made a second refund), if the refunded totals differ, if a refund is left `requested` or its
workflow running, or if a stored webhook event was never handed on once the deliveries, retries
included, are over.

    python -m bench.chaos --n 500        # `make chaos N=500`
"""

import argparse
import asyncio
import contextlib
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar, cast

import asyncpg
import stripe
from pydantic import SecretStr
from rich.console import Console
from rich.table import Table
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowQueryFailedError,
)
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCError, RPCStatusCode

from billing.constants import (
    CAPTURED_STATUSES,
    TERMINAL_STATUSES,
    PaymentStatus,
    RefundStatus,
    workflow_id,
)
from billing.durations import parse_duration
from billing.ledger import Ledger, ReconcileLedger, migrate, open_pool
from billing.ledger_refunds import RefundLedger
from billing.models import NewCustomer, RefundRecord
from billing.money import format_amount
from billing.reconcile import reconcile
from billing.settings import WEBHOOK_PATH, Settings
from billing.stripe_client import make_stripe_client
from billing.stripe_event_facts import HANDLED_TYPES
from local_stack.ports import LOOPBACK, free_port
from local_stack.postgres import EmbeddedPostgres
from local_stack.temporal import EmbeddedTemporal
from starter import execute
from stripe_sandbox import FaultRule, Sandbox
from stripe_sandbox.webhook_faults import WebhookFaultRule
from stripe_sandbox.webhooks import WebhookDispatcher, WebhookSettings
from temporal_ops import billing_run, run_progress

ROOT = Path(__file__).resolve().parent.parent
PERIOD = "2026-11"
TASK_QUEUE = "billing-chaos"
STRIPE_KEY = "sk_test_chaos"
VISA = "pm_card_visa"
HARD_DECLINE = "pm_card_chargeDeclined"
SOFT_DECLINE = "pm_card_chargeDeclinedInsufficientFunds"
DISPUTE = "pm_card_createDispute"  # pays, then the capture is disputed (chargeback)
PAYING_CARDS = frozenset({VISA, DISPUTE})
SEED_CONCURRENCY = 16
TICK_S = 0.2
RUNNING = f'TaskQueue="{TASK_QUEUE}" AND ExecutionStatus="Running"'
REFUNDS_RUNNING = f'{RUNNING} AND WorkflowType="RefundWorkflow"'
CLOSED = f'TaskQueue="{TASK_QUEUE}" AND ExecutionStatus!="Running"'
STATUS_EVERY_S = 1.0
SIGNAL_ATTEMPTS = 5
BILL_ATTEMPTS = 10
DB_ATTEMPTS = 50
WORKER_STOP_TIMEOUT_S = 30
# A process that exits on its own (PostgreSQL or Temporal down at its start) is started again
# at most this often.
RESPAWN_GAP_S = 1.0
# How long one `refund` command waits for Stripe's answer (it goes on either way), and how
# often it is run again when it was refused or cut off before a refund of the payment ended.
REFUND_WAIT_S = 10
REFUND_ATTEMPTS = 10
# Webhook retries outlast a receiver or PostgreSQL down for a while: 0.25 s doubling, 9
# attempts, about 64 s from the first to the last (Stripe's own go on for 3 days).
WEBHOOK_DELIVERY = WebhookSettings(retry_base_ms=250, max_attempts=9, timeout_ms=5000)
T = TypeVar("T")

out = Console(soft_wrap=True)
log = Console(stderr=True, soft_wrap=True, highlight=False)


@dataclass(frozen=True)
class Config:
    n: int = 500
    seed: int = 1
    kill_every_s: float = 4.0
    # Restarts happen at these times after billing (seconds): PostgreSQL cleanly, Temporal,
    # PostgreSQL by SIGKILL. Chaos goes on until every payment ends, at most chaos_s; then one
    # worker finishes what is left, within settle_max_s.
    pg_restart_at_s: float = 6.0
    temporal_restart_at_s: float = 14.0
    pg_crash_at_s: float = 22.0
    chaos_s: float = 120.0
    settle_max_s: float = 600.0
    # Shares of the payments that operators act on (at least one each) at random times in the
    # first operator_window_s of the chaos: the `cancel` signal and a Temporal cancellation
    # request to payments whose card pays; a terminate, and a re-import of the customer with
    # its email's case changed, to any other payment.
    cancel_share: float = 0.03
    cancel_request_share: float = 0.02
    terminate_share: float = 0.02
    reimport_share: float = 0.02
    operator_window_s: float = 20.0
    # Refunds go to this share of the payments whose card pays (at least three: in full, in
    # part, and in full repeated), each once its payment has succeeded, from refund_from_s to
    # refund_until_s into the chaos (the later ones meet the Temporal restart and the
    # PostgreSQL SIGKILL).
    refund_share: float = 0.1
    refund_from_s: float = 4.0
    refund_until_s: float = 24.0
    # The webhook receiver is SIGKILLed once, at this time into the chaos, and started again
    # once a delivery has failed against it, at most receiver_down_max_s later.
    receiver_kill_at_s: float = 10.0
    receiver_down_max_s: float = 15.0
    webhook_drop_share: float = 0.03
    webhook_duplicate_share: float = 0.1
    webhook_delay_share: float = 0.1
    webhook_delay_ms: int = 1500
    webhook_reorder_share: float = 0.05
    webhook_settle_max_s: float = 120.0
    capture_delay: str = "2s"
    dunning: str = "2s"
    latency_share: float = 0.2
    latency_ms: int = 150
    error_before_share: float = 0.03
    drop_after_share: float = 0.03
    error_after_share: float = 0.02
    # Another system on the same Stripe account reads this often, so that our own requests
    # meet the account's 25 requests/s limit (one worker on 2 cores stays below it alone).
    neighbour_rps: float = 20.0
    keep: bool = False


@dataclass
class Tally:
    pg_restarts: int = 0
    temporal_restarts: int = 0
    cancels_sent: int = 0
    cancel_requests_sent: int = 0
    terminates_sent: int = 0
    resumed_by_bill: int = 0
    reimports: int = 0
    refund_commands: int = 0  # `refund` runs, repeats and runs again after an error included
    refunds_asked: int = 0  # payments a refund was asked for
    repeated_refunds: int = 0  # payments whose full refund was asked again on purpose
    neighbour_requests: int = 0
    neighbour_429s: int = 0
    events: list[str] = field(default_factory=list)


def card_of(number: int) -> str:
    """Mostly cards that pay; one in twenty hard-declines, one in twenty soft-declines, and one
    in twenty pays and is disputed."""
    if number % 20 == 0:
        return HARD_DECLINE
    if number % 20 == 1:
        return SOFT_DECLINE
    if number % 20 == 2:
        return DISPUTE
    return VISA


class Stack:
    """PostgreSQL, the persistent Temporal dev server and the sandbox, under one temp folder."""

    def __init__(self, config: Config) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="billing-chaos-"))
        self.postgres = EmbeddedPostgres(self.root / "postgres")
        self.temporal = EmbeddedTemporal(self.root / "temporal")
        self.sandbox = Sandbox(
            mode="test", rate_limits=False, seed=config.seed, webhook_settings=WEBHOOK_DELIVERY
        )
        self.keep = config.keep

    async def start(self) -> None:
        await asyncio.to_thread(self.postgres.start)
        await asyncio.to_thread(self.temporal.start)
        await self.sandbox.start(port=0)

    async def close(self) -> None:
        try:
            await self.sandbox.stop()
        finally:
            try:
                await asyncio.to_thread(self.temporal.stop)
            finally:
                await asyncio.to_thread(self.postgres.stop)
                if self.keep:
                    log.print(f"kept {self.root}")
                else:
                    shutil.rmtree(self.root, ignore_errors=True)


class Respawned:
    """One process of `argv` at a time (the worker, the webhook receiver), all its runs
    writing to one log; counts its starts, our SIGKILLs and the exits we did not cause."""

    def __init__(self, argv: list[str], environ: dict[str, str], log_path: Path) -> None:
        self.argv = argv
        self.environ = environ
        self.log_path = log_path
        self.current: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.starts = 0
        self.kills = 0
        self.exits = 0  # exits we did not cause, e.g. Temporal down at start

    def start(self) -> None:
        with self.log_path.open("ab") as sink:
            self.current = subprocess.Popen(
                self.argv, cwd=ROOT, env=self.environ, stdout=sink, stderr=sink
            )
        self.started_at = time.monotonic()
        self.starts += 1

    def ensure_running(self) -> None:
        if self.current is None or self.current.poll() is not None:
            if time.monotonic() - self.started_at < RESPAWN_GAP_S:
                return
            if self.current is not None:
                self.exits += 1
            self.start()

    def kill(self) -> None:
        if self.current is not None and self.current.poll() is None:
            self.current.kill()
            self.current.wait(timeout=WORKER_STOP_TIMEOUT_S)
            self.kills += 1
        self.current = None

    def stop(self) -> None:
        """SIGTERM: the worker finishes in-flight activities and exits."""
        if self.current is not None and self.current.poll() is None:
            self.current.send_signal(signal.SIGTERM)
            try:
                self.current.wait(timeout=WORKER_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.current.kill()
                self.current.wait(timeout=WORKER_STOP_TIMEOUT_S)
        self.current = None


# What a call meets while PostgreSQL or Temporal restarts.
RESTARTING = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, RPCError, RuntimeError)


class ReceiverOutage:
    """The webhook receiver's one SIGKILL during the chaos: at `kill_at`, and kept down until
    a delivery attempt has failed against it (so Stripe's retries have work to do), at most
    `down_max_s`; the receiver is kept running before and after."""

    def __init__(
        self,
        receiver: Respawned,
        hooks: WebhookDispatcher,
        kill_at: float,
        down_max_s: float,
        note: Callable[[str], None],
    ) -> None:
        self.receiver = receiver
        self.hooks = hooks
        self.kill_at = kill_at
        self.down_max_s = down_max_s
        self.note = note
        self.down_since: float | None = None
        self.failures_before = 0
        self.over = False

    def tick(self, now: float) -> None:
        if self.down_since is None and now >= self.kill_at and not self.over:
            self.failures_before = self.hooks.stats()["failures"]
            self.receiver.kill()
            self.down_since = now
            self.note("webhook receiver SIGKILL")
        if self.down_since is not None:
            failed = self.hooks.stats()["failures"] - self.failures_before
            if not failed and now - self.down_since < self.down_max_s:
                return
            self.note(
                f"webhook receiver started again after {now - self.down_since:.1f} s, "
                f"{failed} delivery attempts failed meanwhile"
            )
            self.down_since, self.over = None, True
        self.receiver.ensure_running()


async def retried(call: Callable[[], Awaitable[T]], attempts: int = DB_ATTEMPTS) -> T:
    """A read or an idempotent call that may meet PostgreSQL or Temporal restarting."""
    for attempt in range(attempts):
        try:
            return await call()
        except RESTARTING:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(0.5)
    raise AssertionError("unreachable")


async def seed(ledger: Ledger, client: stripe.StripeClient, n: int) -> dict[str, str]:
    """N customers in the sandbox and the ledger; returns each email's card."""
    slots = asyncio.Semaphore(SEED_CONCURRENCY)

    async def one(number: int) -> NewCustomer:
        email = f"chaos-{number:05d}@example.com"
        async with slots:
            customer = await client.v1.customers.create_async({"email": email})
            method = await client.v1.payment_methods.attach_async(
                card_of(number), {"customer": customer.id}
            )
        return NewCustomer(
            email=email,
            stripe_customer_id=customer.id,
            payment_method_id=method.id,
            monthly_amount=500 + (number * 137) % 9500,
            currency="usd" if number % 3 else "eur",
        )

    customers = await asyncio.gather(*(one(i) for i in range(1, n + 1)))
    await ledger.upsert_customers(customers)
    return {c.email: card_of(i) for i, c in enumerate(customers, start=1)}


def add_faults(sandbox: Sandbox, config: Config) -> None:
    sandbox.add_fault(
        FaultRule("latency", probability=config.latency_share, latency_ms=config.latency_ms)
    )
    sandbox.add_fault(FaultRule("error_before", probability=config.error_before_share))
    sandbox.add_fault(FaultRule("drop_after", probability=config.drop_after_share))
    sandbox.add_fault(FaultRule("error_after", probability=config.error_after_share))
    sandbox.rate_limits = True


def add_webhook_faults(sandbox: Sandbox, config: Config) -> None:
    hooks = sandbox.webhooks
    hooks.add_fault(WebhookFaultRule("drop", probability=config.webhook_drop_share))
    hooks.add_fault(WebhookFaultRule("duplicate", probability=config.webhook_duplicate_share))
    hooks.add_fault(
        WebhookFaultRule(
            "delay", probability=config.webhook_delay_share, delay_ms=config.webhook_delay_ms
        )
    )
    hooks.add_fault(WebhookFaultRule("reorder", probability=config.webhook_reorder_share, hold=3))


async def register_receiver(client: stripe.StripeClient, port: int) -> str:
    """The receiver's webhook endpoint in the sandbox, for the event types it hands on;
    returns its signing secret."""
    endpoint = await client.v1.webhook_endpoints.create_async(
        {
            "url": f"http://{LOOPBACK}:{port}{WEBHOOK_PATH}",
            # The SDK types each event type as a Literal; HANDLED_TYPES holds plain strings.
            "enabled_events": cast(Any, sorted(HANDLED_TYPES)),
        }
    )
    assert endpoint.secret is not None  # returned on creation
    return endpoint.secret


# Emails lower-cased: a re-import may have changed their case.
PAYMENTS_WITH_CARDS = """
SELECT p.id::text AS id, p.status, lower(c.email) AS email FROM payments p
JOIN customers c ON c.id = p.customer_id WHERE p.billing_period = $1"""

CUSTOMER_OF_PAYMENT = """
SELECT c.email, c.stripe_customer_id, c.payment_method_id, c.monthly_amount, c.currency
FROM payments p JOIN customers c ON c.id = p.customer_id WHERE p.id = $1::uuid"""


CUSTOMER_PERIODS = """
SELECT stripe_customer_id, status, amount_received FROM payments WHERE billing_period = $1"""

PAYMENT_TO_REFUND = "SELECT status, amount_received, currency FROM payments WHERE id = $1::uuid"

REFUNDS_REQUESTED = "SELECT count(*) FROM refunds WHERE status = 'requested'"

EVENTS_STORED = "SELECT count(*) AS stored, count(handed_at) AS handed FROM stripe_events"

# What operators do to a payment's workflow during the chaos.
CANCEL_SIGNAL = "cancel signal"
CANCEL_REQUEST = "Temporal cancellation request"
TERMINATE = "terminate"
REIMPORT = "re-import, email case changed"
REFUND_FULL = "refund in full"
REFUND_PART = "refund in part"
REFUND_TWICE = "refund in full, asked twice at once and once more after"
REFUND_KINDS = (REFUND_TWICE, REFUND_PART, REFUND_FULL)


async def launched(client: Client, within_s: float = 300) -> None:
    """Until the billing run has launched every payment: `bill` stops following it when no
    worker answers its query (a worker process may still be starting)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        with contextlib.suppress(RPCError, WorkflowQueryFailedError):
            if (await run_progress(billing_run(client, PERIOD))).phase != "launching":
                return
        await asyncio.sleep(0.5)
    raise RuntimeError(f"the billing run did not launch within {within_s:g} s")


async def open_ids(pool: asyncpg.Pool) -> set[str]:
    rows = await pool.fetch(PAYMENTS_WITH_CARDS, PERIOD)
    return {r["id"] for r in rows if PaymentStatus(r["status"]) not in TERMINAL_STATUSES}


def customer_period_breaches(
    intents: list[dict[str, Any]], rows: list[asyncpg.Record]
) -> tuple[int, int]:
    """From the sandbox's own records, per (Stripe customer, period): how many were captured
    more than once, and how many captured another amount than the ledger's amount_received
    (none where the payment captured nothing)."""
    captured: dict[tuple[str, str], list[int]] = {}
    for intent in intents:
        if intent["status"] == "succeeded":
            key = (intent["customer"], intent["metadata"].get("billing_period", "?"))
            captured.setdefault(key, []).append(intent["amount_received"])
    received = {
        (r["stripe_customer_id"], PERIOD): (r["amount_received"] or 0)
        if PaymentStatus(r["status"]) in CAPTURED_STATUSES
        else 0
        for r in rows
    }
    twice = sum(len(amounts) > 1 for amounts in captured.values())
    differ = sum(
        sum(captured.get(key, [])) != received.get(key, 0) for key in captured.keys() | received
    )
    return twice, differ


@dataclass(frozen=True)
class RefundFigures:
    made: int  # refunds the ledger records succeeded
    at_stripe: int  # refunds Stripe made
    doubled: int  # payments refunded twice (see refund_figures)
    ledger_total: int
    stripe_total: int
    stuck: int  # refunds still `requested`


def refund_figures(stripe_refunds: list[dict[str, Any]], rows: list[RefundRecord]) -> RefundFigures:
    """Stripe's refunds (the sandbox's own records) against the ledger's. A payment is refunded
    twice when Stripe holds more refunds of it than the ledger's succeeded ones, when two of
    its Stripe refunds carry the same refund n, or when the ledger holds more than one refund
    of it not failed (the soak asks each payment for one refund: a repeated command must
    attach to it or be refused, never make a second)."""
    made = [r for r in stripe_refunds if r["status"] == "succeeded"]
    succeeded = [r for r in rows if r.status == RefundStatus.SUCCEEDED]
    at_stripe = Counter(r["metadata"].get("payment_id") for r in made)
    in_ledger = Counter(r.payment_id for r in succeeded)
    by_n = Counter((r["metadata"].get("payment_id"), r["metadata"].get("refund_n")) for r in made)
    kept = Counter(r.payment_id for r in rows if r.status != RefundStatus.FAILED)
    doubled = {pid for pid, count in at_stripe.items() if count > in_ledger[pid]}
    doubled |= {pid for (pid, _), count in by_n.items() if count > 1}
    doubled |= {pid for pid, count in kept.items() if count > 1}
    return RefundFigures(
        made=len(succeeded),
        at_stripe=len(made),
        doubled=len(doubled),
        ledger_total=sum(r.amount for r in succeeded),
        stripe_total=sum(r["amount"] for r in made),
        stuck=sum(r.status == RefundStatus.REQUESTED for r in rows),
    )


class Soak:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.tally = Tally()
        self.stack = Stack(config)
        self.started = time.monotonic()
        # Payments each operator action was sent to, whether or not it reached the workflow
        # (an answer lost in a Temporal restart): they may have taken effect.
        self.attempted: dict[str, set[str]] = {}
        self.refunds_planned = 0
        # The refund commands in flight: they wait for Stripe, so they run beside the chaos.
        self.refunding: set[asyncio.Task[None]] = set()

    def note(self, what: str) -> None:
        line = f"[{time.monotonic() - self.started:7.1f}s] {what}"
        self.tally.events.append(line)
        log.print(line)

    async def run(self) -> int:
        try:
            await self.stack.start()
            return await self._run()
        finally:
            await self.stack.close()

    def _plan_operators(
        self, rows: list[asyncpg.Record], cards: dict[str, str]
    ) -> dict[str, tuple[float, str]]:
        """Which payments operators act on, and when (seconds into the chaos): disjoint sets,
        at least one payment each. Cancels and refunds go to cards that pay (not the disputed
        ones: a chargeback takes the money a refund would give back); a terminate or a
        re-import of the customer to any payment."""
        config = self.config
        payable = [r["id"] for r in rows if cards[r["email"]] == VISA]
        others = [r["id"] for r in rows if cards[r["email"]] != VISA]
        plan: dict[str, tuple[float, str]] = {}
        for kind, share in (
            (CANCEL_SIGNAL, config.cancel_share),
            (CANCEL_REQUEST, config.cancel_request_share),
            (TERMINATE, config.terminate_share),
            (REIMPORT, config.reimport_share),
        ):
            among = payable if kind in (CANCEL_SIGNAL, CANCEL_REQUEST) else payable + others
            chosen = self.rng.sample(among, min(len(among), max(1, int(len(rows) * share))))
            payable = [p for p in payable if p not in chosen]
            others = [p for p in others if p not in chosen]
            plan |= {pid: (self.rng.uniform(1, config.operator_window_s), kind) for pid in chosen}
        # Refunds, among the payable ones left: in full repeated, in part, in full, in turn.
        count = min(len(payable), max(len(REFUND_KINDS), int(len(rows) * config.refund_share)))
        for i, pid in enumerate(self.rng.sample(payable, count)):
            when = self.rng.uniform(config.refund_from_s, config.refund_until_s)
            plan[pid] = (when, REFUND_KINDS[i % len(REFUND_KINDS)])
        self.refunds_planned = count
        return plan

    async def _run(self) -> int:
        config, stack = self.config, self.stack
        database_url = stack.postgres.url()
        settings = Settings(
            database_url=database_url,
            stripe_api_key=SecretStr(STRIPE_KEY),
            stripe_api_base=stack.sandbox.url,
            task_queue=TASK_QUEUE,
            dunning_schedule=[parse_duration(config.dunning)],
        )
        environ = {
            **os.environ,
            "DATABASE_URL": database_url,
            "TEMPORAL_ADDRESS": stack.temporal.address,
            "STRIPE_API_KEY": STRIPE_KEY,
            "STRIPE_API_BASE": stack.sandbox.url,
            "TASK_QUEUE": TASK_QUEUE,
            "METRICS_PORT": "0",  # 9464 may be the embedded stack's worker's
        }
        receiver_port = free_port()
        secret = await register_receiver(make_stripe_client(settings), receiver_port)
        receiver_environ = {
            **environ,
            "WEBHOOK_HOST": LOOPBACK,
            "WEBHOOK_PORT": str(receiver_port),
            "STRIPE_WEBHOOK_SECRET": secret,
        }
        client = await Client.connect(
            stack.temporal.address, data_converter=pydantic_data_converter
        )
        pool = await open_pool(database_url, max_size=4)
        workers = Respawned([sys.executable, "worker.py"], environ, stack.root / "workers.log")
        receiver = Respawned(
            [sys.executable, "-m", "billing.webhooks"],
            receiver_environ,
            stack.root / "webhooks.log",
        )
        try:
            await migrate(pool)
            self.note(f"seeding {config.n} customers")
            cards = await seed(Ledger(pool), make_stripe_client(settings), config.n)
            add_faults(stack.sandbox, config)
            add_webhook_faults(stack.sandbox, config)
            receiver.start()
            # The billing run launches the payments from the worker, at its paced rate.
            workers.start()
            billed = await execute(
                ["bill", PERIOD, "--capture-after", config.capture_delay], settings, client
            )
            if billed != 0:
                raise RuntimeError(f"bill failed with exit code {billed}")
            await launched(client)
            self.note("billed; chaos begins")
            neighbour = asyncio.create_task(self._neighbour(make_stripe_client(settings)))
            try:
                await self._chaos(pool, client, settings, workers, receiver, cards)
            finally:
                neighbour.cancel()
                await asyncio.gather(neighbour, return_exceptions=True)
            self.note("chaos over; `bill` resumes what was terminated, one worker finishes")
            stranded = await self._stranded(pool, client, self.attempted[TERMINATE])
            await self._bill_again(pool, client, settings, self.attempted[TERMINATE])
            stuck = await self._settle(pool, client, workers, receiver)
            raised = await self._refund_commands_ended()
            await self._settle_webhooks(receiver)
            workers.stop()
            receiver.stop()
            return await self._verify(
                pool, client, settings, cards, stuck + stranded, workers, receiver, raised
            )
        finally:
            for task in self.refunding:
                task.cancel()
            await asyncio.gather(*self.refunding, return_exceptions=True)
            receiver.kill()
            workers.kill()
            await pool.close()

    async def _chaos(
        self,
        pool: asyncpg.Pool,
        client: Client,
        settings: Settings,
        workers: Respawned,
        receiver: Respawned,
        cards: dict[str, str],
    ) -> None:
        """Kill workers and the webhook receiver, restart PostgreSQL and Temporal, and act as
        operators (see self.attempted), until every payment not terminated has ended and every
        refund was asked for, at most chaos_s."""
        config = self.config
        begin = time.monotonic()
        rows = await pool.fetch(PAYMENTS_WITH_CARDS, PERIOD)
        plan = {
            pid: (begin + at, kind) for pid, (at, kind) in self._plan_operators(rows, cards).items()
        }
        self.attempted = {
            kind: set()
            for kind in (CANCEL_SIGNAL, CANCEL_REQUEST, TERMINATE, REIMPORT, *REFUND_KINDS)
        }
        restarts: list[tuple[float, str, Callable[[], None]]] = [
            (config.pg_restart_at_s, "PostgreSQL restart", self._restart_postgres),
            (config.temporal_restart_at_s, "Temporal restart", self._restart_temporal),
            (config.pg_crash_at_s, "PostgreSQL SIGKILL and start", self._crash_postgres),
        ]
        outage = ReceiverOutage(
            receiver,
            self.stack.sandbox.webhooks,
            begin + config.receiver_kill_at_s,
            config.receiver_down_max_s,
            self.note,
        )
        next_kill = begin + self._kill_gap()
        next_status = begin
        remaining = -1
        while time.monotonic() - begin < config.chaos_s:
            now = time.monotonic()
            if restarts and now - begin >= restarts[0][0]:
                _, what, restart = restarts.pop(0)
                self.note(f"{what} ...")
                await asyncio.to_thread(restart)
                self.note(f"{what} done")
            if now >= next_kill:
                workers.kill()
                workers.start()
                next_kill = now + self._kill_gap()
            workers.ensure_running()
            outage.tick(now)
            for pid, (when, kind) in list(plan.items()):
                if now >= when:
                    del plan[pid]
                    if kind in REFUND_KINDS:
                        if not await self._refund_once_paid(pool, client, settings, pid, kind):
                            plan[pid] = (now + 1, kind)  # not succeeded yet: ask again later
                        continue
                    self.attempted[kind].add(pid)
                    if kind == REIMPORT:
                        await self._reimport(pool, client, settings, pid)
                    else:
                        await self._operate(client, pid, kind)
            if now >= next_status:
                next_status = now + STATUS_EVERY_S
                try:
                    open_now: set[str] | None = await open_ids(pool)
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                    open_now = None
                remaining = -1 if open_now is None else len(open_now)
                # Terminated payments wait for `bill` after the chaos.
                ended = open_now is not None and open_now <= self.attempted[TERMINATE]
                asking = any(not task.done() for task in self.refunding)
                chaos_done = not restarts and outage.over and not plan
                if ended and chaos_done and not asking:
                    break
            await asyncio.sleep(TICK_S)
        self.note(f"{workers.kills} kills so far, {remaining} payments open")

    async def _neighbour(self, client: stripe.StripeClient) -> None:
        """Reads by another system sharing the account, until cancelled."""
        customers = self.stack.sandbox.customers()
        gap = 1 / self.config.neighbour_rps
        while customers:
            customer = self.rng.choice(customers)["id"]
            self.tally.neighbour_requests += 1
            try:
                await client.v1.customers.retrieve_async(customer)
            except stripe.RateLimitError:
                self.tally.neighbour_429s += 1
            except stripe.StripeError:
                pass  # the sandbox's faults hit the neighbour too
            await asyncio.sleep(gap)

    def _kill_gap(self) -> float:
        return self.config.kill_every_s * self.rng.uniform(0.5, 1.5)

    def _restart_postgres(self) -> None:
        self.stack.postgres.restart("fast")
        self.tally.pg_restarts += 1

    def _crash_postgres(self) -> None:
        self.stack.postgres.kill()
        self.stack.postgres.start()
        self.tally.pg_restarts += 1

    def _restart_temporal(self) -> None:
        self.stack.temporal.restart()
        self.tally.temporal_restarts += 1

    async def _operate(self, client: Client, payment_id: str, kind: str) -> None:
        """Send one operator action to the payment's workflow, unless it has closed."""
        handle = client.get_workflow_handle(workflow_id(payment_id))
        for _ in range(SIGNAL_ATTEMPTS):
            try:
                if kind == CANCEL_SIGNAL:
                    await handle.signal("cancel")
                    self.tally.cancels_sent += 1
                elif kind == CANCEL_REQUEST:
                    await handle.cancel()  # the Web UI's "Request Cancellation"
                    self.tally.cancel_requests_sent += 1
                else:
                    await handle.terminate(reason="chaos: an operator terminates")
                    self.tally.terminates_sent += 1
                self.note(f"{kind}: payment {payment_id}")
                return
            except RPCError as err:
                if err.status == RPCStatusCode.NOT_FOUND:
                    return  # the workflow has closed already
                await asyncio.sleep(1)  # Temporal restarting

    async def _refund_once_paid(
        self, pool: asyncpg.Pool, client: Client, settings: Settings, payment_id: str, kind: str
    ) -> bool:
        """Start the refund of `kind` once the payment has succeeded; False while it has not
        (nor ended otherwise) and the refund is to be asked later."""
        try:
            row = await pool.fetchrow(PAYMENT_TO_REFUND, payment_id)
        except RESTARTING:
            return False  # PostgreSQL restarting
        assert row is not None
        status = PaymentStatus(row["status"])
        if status != PaymentStatus.SUCCEEDED:
            if status in TERMINAL_STATUSES:
                self.note(f"{kind}: payment {payment_id} ended {status}, nothing to refund")
                return True
            return False
        self.attempted[kind].add(payment_id)
        argv = ["refund", payment_id, "--timeout", str(REFUND_WAIT_S)]
        if kind == REFUND_PART:
            part = format_amount(max(1, row["amount_received"] // 3), row["currency"])
            argv += ["--amount", part.replace(",", "")]
        self.note(f"{kind}: payment {payment_id} ({' '.join(argv[2:])})")
        task = asyncio.create_task(self._refund(pool, client, settings, argv, kind))
        self.refunding.add(task)
        return True

    async def _refund(
        self, pool: asyncpg.Pool, client: Client, settings: Settings, argv: list[str], kind: str
    ) -> None:
        """One refund command, or for REFUND_TWICE the same command twice at once and then
        once more: a repeat attaches to the refund in flight or is refused, never refunds
        again."""
        self.tally.refunds_asked += 1
        copies = 2 if kind == REFUND_TWICE else 1
        await asyncio.gather(
            *(self._refund_command(pool, client, settings, argv) for _ in range(copies))
        )
        if kind == REFUND_TWICE:
            self.tally.repeated_refunds += 1
            await self._refund_command(pool, client, settings, argv)

    async def _refund_command(
        self, pool: asyncpg.Pool, client: Client, settings: Settings, argv: list[str]
    ) -> None:
        """`refund PAYMENT_ID …`, run again as an operator would while it was refused or cut off
        (PostgreSQL or Temporal restarting) and no refund of the payment has ended: a refund it
        reserved is still `requested` then, and the same command attaches to it."""
        payment_id = argv[1]
        for _ in range(REFUND_ATTEMPTS):
            self.tally.refund_commands += 1
            try:
                code: int | None = await execute(argv, settings, client)
            except (*RESTARTING, WorkflowFailureError):
                code = None
            if code in (0, 5, 6):  # refunded, refused by Stripe, still in flight
                return
            with contextlib.suppress(*RESTARTING):
                refunds = await RefundLedger(pool).refunds(payment_id)
                if any(r.status != RefundStatus.REQUESTED for r in refunds):
                    return  # e.g. a repeat refused: the payment is refunded already
            await asyncio.sleep(1)
        self.note(f"refund of payment {payment_id}: no answer after {REFUND_ATTEMPTS} commands")

    async def _refund_commands_ended(self) -> int:
        """Wait for the refund commands (their refunds have ended, or settle gave up); how
        many raised an error that a restart does not explain."""
        if not self.refunding:
            return 0
        done, running = await asyncio.wait(self.refunding, timeout=REFUND_WAIT_S)
        for task in running:
            task.cancel()
        raised = 0
        for task in done:
            if (err := task.exception()) is not None:
                self.note(f"a refund command raised {type(err).__name__}: {err}")
                raised += 1
        return raised

    async def _reimport(
        self, pool: asyncpg.Pool, client: Client, settings: Settings, payment_id: str
    ) -> None:
        """`customers import` of the payment's customer again, its email's case changed: the
        same Stripe customer, so still one customer and one payment."""
        for _ in range(SIGNAL_ATTEMPTS):
            try:
                row = await pool.fetchrow(CUSTOMER_OF_PAYMENT, payment_id)
                assert row is not None
                csv = self.stack.root / f"reimport-{payment_id}.csv"
                csv.write_text(
                    "email,stripe_customer_id,payment_method_id,monthly_amount,currency\n"
                    f"{row['email'].swapcase()},{row['stripe_customer_id']},"
                    f"{row['payment_method_id']},{row['monthly_amount']},{row['currency']}\n"
                )
                if await execute(["customers", "import", str(csv)], settings, client) == 0:
                    self.tally.reimports += 1
                    self.note(f"{REIMPORT}: {row['email'].swapcase()}")
                    return
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                pass  # PostgreSQL restarting
            await asyncio.sleep(1)

    async def _stranded(self, pool: asyncpg.Pool, client: Client, terminated: set[str]) -> int:
        """Open payments whose workflow closed, other than by our terminates: stuck, and
        counted so, before `bill` resumes them."""

        async def closed(pid: str) -> bool:
            description = await client.get_workflow_handle(workflow_id(pid)).describe()
            return description.status != WorkflowExecutionStatus.RUNNING

        candidates = await retried(lambda: open_ids(pool)) - terminated
        stranded = [pid for pid in candidates if await retried(partial(closed, pid))]
        for pid in stranded:
            self.note(f"payment {pid} is open, but its workflow closed")
        return len(stranded)

    async def _bill_again(
        self, pool: asyncpg.Pool, client: Client, settings: Settings, terminated: set[str]
    ) -> None:
        """`bill` once more, as an operator would: it resumes every terminated payment."""
        self.tally.resumed_by_bill = len(await retried(lambda: open_ids(pool)) & terminated)
        for _ in range(BILL_ATTEMPTS):
            if await execute(["bill", PERIOD], settings, client) == 0:
                return
            await asyncio.sleep(1)
        raise RuntimeError(f"bill failed {BILL_ATTEMPTS} times")

    async def _settle(
        self, pool: asyncpg.Pool, client: Client, workers: Respawned, receiver: Respawned
    ) -> int:
        """Wait until every payment and every refund has ended and each refund command has
        returned, or no workflow is left running to end them. Returns the payments open."""
        deadline = time.monotonic() + self.config.settle_max_s
        while True:
            remaining = len(await retried(lambda: open_ids(pool)))
            requested = await retried(lambda: pool.fetchval(REFUNDS_REQUESTED))
            asking = any(not task.done() for task in self.refunding)
            if not (remaining or requested or asking) or time.monotonic() >= deadline:
                self.note(f"settled: {remaining} payments and {requested} refunds open")
                return remaining
            running = await retried(lambda: client.count_workflows(RUNNING))
            if not running.count and not asking:
                self.note(
                    f"{remaining} payments and {requested} refunds open, "
                    "but no workflow runs any more"
                )
                return remaining
            workers.ensure_running()
            receiver.ensure_running()
            await asyncio.sleep(STATUS_EVERY_S)

    async def _settle_webhooks(self, receiver: Respawned) -> None:
        """Webhook faults off and the held deliveries sent; then wait, the receiver running,
        until no delivery is in flight, retries included (each is answered or given up)."""
        hooks = self.stack.sandbox.webhooks
        hooks.clear_faults()
        hooks.release()
        deadline = time.monotonic() + self.config.webhook_settle_max_s
        while hooks.stats()["in_flight"] and time.monotonic() < deadline:
            receiver.ensure_running()
            await asyncio.sleep(TICK_S)
        self.note(f"webhook deliveries over, {hooks.stats()['in_flight']} still in flight")

    async def _verify(
        self,
        pool: asyncpg.Pool,
        client: Client,
        settings: Settings,
        cards: dict[str, str],
        stuck: int,
        workers: Respawned,
        receiver: Respawned,
        refund_commands_raised: int,
    ) -> int:
        sandbox = self.stack.sandbox
        sandbox.clear_faults()
        sandbox.rate_limits = False
        stats = sandbox.stats()
        rows = await retried(lambda: pool.fetch(PAYMENTS_WITH_CARDS, PERIOD))
        ledger = ReconcileLedger(pool)
        records = {p.id: p for p in await retried(lambda: ledger.period_payments(PERIOD))}
        captured: dict[str, list[dict[str, Any]]] = {}
        for intent in sandbox.payment_intents():
            if intent["status"] == "succeeded":
                captured.setdefault(intent["metadata"]["payment_id"], []).append(intent)

        double = sum(len(found) > 1 for found in captured.values())
        customers = await retried(lambda: pool.fetch(CUSTOMER_PERIODS, PERIOD))
        charged_twice, amount_differs = customer_period_breaches(
            sandbox.payment_intents(), customers
        )
        unexplained = await self._closed_without_result(client)
        customer_rows = await retried(lambda: pool.fetchval("SELECT count(*) FROM customers"))
        cancelled = self.attempted[CANCEL_SIGNAL] | self.attempted[CANCEL_REQUEST]
        lost = 0
        for row in rows:
            record = records[row["id"]]
            charged = bool(captured.get(record.id))
            should_pay = cards[row["email"]] in PAYING_CARDS and record.id not in cancelled
            if record.status in CAPTURED_STATUSES and not charged:
                lost += 1  # recorded as paid, never charged
            elif charged and record.status not in CAPTURED_STATUSES:
                lost += 1  # charged, not recorded
            elif should_pay and record.status in TERMINAL_STATUSES and not charged:
                lost += 1  # should have been charged, never was
        comparison = await reconcile(ledger, make_stripe_client(settings), client, PERIOD)
        orphans = len(comparison.orphans) + len(comparison.in_flight)
        stripe_total = sum(i["amount_received"] for found in captured.values() for i in found)
        ledger_total = sum(
            p.amount_received or 0 for p in records.values() if p.status in CAPTURED_STATUSES
        )
        statuses = Counter(p.status.value for p in records.values())
        refund_rows = await retried(lambda: RefundLedger(pool).period_refunds(PERIOD))
        refunds = refund_figures(sandbox.refunds(), refund_rows)
        refund_runs = (await retried(lambda: client.count_workflows(REFUNDS_RUNNING))).count
        events = await retried(lambda: pool.fetchrow(EVENTS_STORED))
        assert events is not None
        not_handed = events["stored"] - events["handed"]
        hooks = stats["webhooks"]

        table = Table(title=f"chaos soak: {self.config.n} payments")
        table.add_column("what")
        table.add_column("value", justify="right")
        table.add_row("payments", str(len(records)))
        for status in sorted(statuses):
            table.add_row(f"  {status}", str(statuses[status]))
        table.add_row("cancel signals sent", str(self.tally.cancels_sent))
        table.add_row("Temporal cancellation requests", str(self.tally.cancel_requests_sent))
        table.add_row("terminates", str(self.tally.terminates_sent))
        table.add_row("terminated payments resumed by bill", str(self.tally.resumed_by_bill))
        table.add_row("customers re-imported, email case changed", str(self.tally.reimports))
        table.add_row("customer rows", str(customer_rows))
        table.add_row("refunds asked (payments)", str(self.tally.refunds_asked))
        table.add_row("  of them full refunds asked again", str(self.tally.repeated_refunds))
        table.add_row("refund commands run", str(self.tally.refund_commands))
        table.add_row("refunds made (ledger succeeded)", str(refunds.made))
        table.add_row("refunds at Stripe", str(refunds.at_stripe))
        table.add_row("disputes opened", str(len(sandbox.disputes())))
        table.add_row("worker SIGKILLs", str(workers.kills))
        table.add_row("worker restarts", str(workers.starts - 1))
        table.add_row("worker exits on its own", str(workers.exits))
        table.add_row("webhook receiver SIGKILLs", str(receiver.kills))
        table.add_row("webhook receiver exits on its own", str(receiver.exits))
        table.add_row("PostgreSQL restarts", str(self.tally.pg_restarts))
        table.add_row("Temporal restarts", str(self.tally.temporal_restarts))
        for kind, count in sorted(stats["faults"].items()):
            table.add_row(f"faults: {kind}", str(count))
        ours = stats["rate_limited"] - self.tally.neighbour_429s
        table.add_row("faults: 429 rate limited (worker)", str(ours))
        table.add_row(
            "neighbour reads (429s)",
            f"{self.tally.neighbour_requests} ({self.tally.neighbour_429s})",
        )
        table.add_row("Stripe requests", str(stats["requests"]))
        table.add_row("webhook events (deliveries)", f"{hooks['events']} ({hooks['deliveries']})")
        for kind, key in (
            ("drop", "dropped"),
            ("duplicate", "duplicated"),
            ("delay", "delayed"),
            ("reorder", "reordered"),
        ):
            table.add_row(f"webhook faults: {kind}", str(hooks[key]))
        table.add_row(
            "webhook attempts failed (given up)", f"{hooks['failures']} ({hooks['gave_up']})"
        )
        table.add_row("webhook events stored", str(events["stored"]))
        table.add_row("webhook events handed on", str(events["handed"]))
        table.add_row("captured at Stripe (minor units)", str(stripe_total))
        table.add_row("captured in ledger (minor units)", str(ledger_total))
        table.add_row("refunded at Stripe (minor units)", str(refunds.stripe_total))
        table.add_row("refunded in ledger (minor units)", str(refunds.ledger_total))
        table.add_row("reconcile", "clean" if comparison.clean else "DISCREPANCIES")
        table.add_row("seconds", f"{time.monotonic() - self.started:.0f}")
        table.add_row("double charges", str(double))
        table.add_row("lost payments", str(lost))
        table.add_row("stuck payments", str(stuck))
        table.add_row("orphan authorizations", str(orphans))
        table.add_row("customer-periods captured twice", str(charged_twice))
        table.add_row("customer-periods captured != ledger", str(amount_differs))
        table.add_row("workflows closed without a result", str(unexplained))
        table.add_row("double refunds", str(refunds.doubled))
        table.add_row("stuck refunds", str(refunds.stuck))
        table.add_row("refund workflows still running", str(refund_runs))
        table.add_row("webhook events not handed on", str(not_handed))
        out.print(table)

        problems = []
        if double or lost or stuck or orphans:
            problems.append("double charges, lost, stuck or orphans")
        if charged_twice or amount_differs:
            problems.append("a (Stripe customer, period) captured twice or for another amount")
        if unexplained:
            problems.append("workflows closed without a result, other than our terminates")
        if customer_rows != self.config.n or len(records) != self.config.n:
            problems.append("a re-import added a customer or a payment")
        if not comparison.clean:
            problems += [f"reconcile: {f.kind.value} {f.intent_id}" for f in comparison.findings]
        if stripe_total != ledger_total:
            problems.append("the sandbox's captured total differs from the ledger's")
        if refunds.doubled:
            problems.append("a payment refunded twice")
        if refunds.stripe_total != refunds.ledger_total:
            problems.append("the sandbox's refunded total differs from the ledger's")
        if refunds.stuck or refund_runs:
            problems.append("a refund left requested, or its workflow still running")
        if refund_commands_raised:
            problems.append("a refund command raised an error")
        if self.refunds_planned and not self.tally.refunds_asked:
            problems.append("no refund was asked: no payment chosen for one succeeded in time")
        if not_handed:
            problems.append("a stored webhook event was never handed on")
        if self.tally.pg_restarts < 2 or self.tally.temporal_restarts < 1 or receiver.kills < 1:
            problems.append("the restarts did not all happen")
        for problem in problems:
            log.print(f"FAIL: {problem}")
        return 1 if problems else 0

    async def _closed_without_result(self, client: Client) -> int:
        """Closed runs that are neither completed nor one of our terminates: failed, timed
        out, or ended by a cancellation instead of ending the payment."""
        ours = {workflow_id(pid) for pid in self.attempted[TERMINATE]}
        count = 0
        async for run in client.list_workflows(CLOSED):
            if run.status == WorkflowExecutionStatus.COMPLETED:
                continue
            if run.status == WorkflowExecutionStatus.TERMINATED and run.id in ours:
                continue
            self.note(f"workflow {run.id} run {run.run_id} closed {run.status}")
            count += 1
        return count


def parse_args(argv: list[str] | None = None) -> Config:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__)
    parser.add_argument("--n", type=int, default=Config.n, help="payments (default 500)")
    parser.add_argument("--seed", type=int, default=Config.seed)
    parser.add_argument("--kill-every", type=float, default=Config.kill_every_s, metavar="S")
    parser.add_argument(
        "--chaos-seconds",
        type=float,
        default=Config.chaos_s,
        metavar="S",
        help="kill workers for at most S seconds (restarts happen in the first 25 s)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp folder and its logs")
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error("--n must be at least 1")
    if args.chaos_seconds < Config.pg_crash_at_s:
        parser.error(f"--chaos-seconds must be at least {Config.pg_crash_at_s:.0f}")
    return Config(
        n=args.n,
        seed=args.seed,
        kill_every_s=args.kill_every,
        chaos_s=args.chaos_seconds,
        keep=args.keep,
    )


def main(argv: list[str] | None = None) -> None:
    # PostgreSQL restarts on purpose; the pool's reconnect warnings would only be noise.
    logging.getLogger("asyncpg.pool").setLevel(logging.CRITICAL)
    # A worker killed mid-request leaves the sandbox a half-sent body: expected, not news.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    sys.exit(asyncio.run(Soak(parse_args(argv)).run()))


if __name__ == "__main__":
    main()
