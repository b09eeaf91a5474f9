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

Every loop is bounded in count and time. At the end it prints a table and exits 1 if any
payment was double charged, lost, stuck or left an orphan authorization, if a workflow closed
without ending its payment other than by our terminates, if a Stripe customer was captured
more than once in the period or for another amount than the ledger received, if a re-import
added a customer or a payment, if `reconcile` is not clean, or if the sandbox's captured total
differs from the ledger's succeeded total.

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
from typing import Any, TypeVar

import asyncpg
import stripe
from pydantic import SecretStr
from rich.console import Console
from rich.table import Table
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowQueryFailedError
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCError, RPCStatusCode

from billing.constants import TERMINAL_STATUSES, PaymentStatus, workflow_id
from billing.durations import parse_duration
from billing.ledger import Ledger, ReconcileLedger, migrate, open_pool
from billing.models import NewCustomer
from billing.reconcile import reconcile
from billing.settings import Settings
from billing.stripe_client import make_stripe_client
from local_stack.postgres import EmbeddedPostgres
from local_stack.temporal import EmbeddedTemporal
from starter import execute
from stripe_sandbox import FaultRule, Sandbox
from temporal_ops import billing_run, run_progress

ROOT = Path(__file__).resolve().parent.parent
PERIOD = "2026-11"
TASK_QUEUE = "billing-chaos"
STRIPE_KEY = "sk_test_chaos"
VISA = "pm_card_visa"
HARD_DECLINE = "pm_card_chargeDeclined"
SOFT_DECLINE = "pm_card_chargeDeclinedInsufficientFunds"
SEED_CONCURRENCY = 16
TICK_S = 0.2
RUNNING = f'TaskQueue="{TASK_QUEUE}" AND ExecutionStatus="Running"'
CLOSED = f'TaskQueue="{TASK_QUEUE}" AND ExecutionStatus!="Running"'
STATUS_EVERY_S = 1.0
SIGNAL_ATTEMPTS = 5
BILL_ATTEMPTS = 10
DB_ATTEMPTS = 50
WORKER_STOP_TIMEOUT_S = 30
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
    kills: int = 0
    worker_starts: int = 0
    worker_exits: int = 0  # exits we did not cause, e.g. Temporal down at start
    pg_restarts: int = 0
    temporal_restarts: int = 0
    cancels_sent: int = 0
    cancel_requests_sent: int = 0
    terminates_sent: int = 0
    resumed_by_bill: int = 0
    reimports: int = 0
    neighbour_requests: int = 0
    neighbour_429s: int = 0
    events: list[str] = field(default_factory=list)


def card_of(number: int) -> str:
    """Mostly cards that pay; one in twenty hard-declines, one in twenty soft-declines."""
    if number % 20 == 0:
        return HARD_DECLINE
    if number % 20 == 1:
        return SOFT_DECLINE
    return VISA


class Stack:
    """PostgreSQL, the persistent Temporal dev server and the sandbox, under one temp folder."""

    def __init__(self, config: Config) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="billing-chaos-"))
        self.postgres = EmbeddedPostgres(self.root / "postgres")
        self.temporal = EmbeddedTemporal(self.root / "temporal")
        self.sandbox = Sandbox(mode="test", rate_limits=False, seed=config.seed)
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


class Workers:
    """One `python worker.py` at a time, all writing to one log."""

    def __init__(self, environ: dict[str, str], log_path: Path, tally: Tally) -> None:
        self.environ = environ
        self.log_path = log_path
        self.tally = tally
        self.current: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as sink:
            self.current = subprocess.Popen(
                [sys.executable, "worker.py"], cwd=ROOT, env=self.environ, stdout=sink, stderr=sink
            )
        self.tally.worker_starts += 1

    def ensure_running(self) -> None:
        if self.current is None or self.current.poll() is not None:
            if self.current is not None:
                self.tally.worker_exits += 1
            self.start()

    def kill(self) -> None:
        if self.current is not None and self.current.poll() is None:
            self.current.kill()
            self.current.wait(timeout=WORKER_STOP_TIMEOUT_S)
            self.tally.kills += 1
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


async def retried(call: Callable[[], Awaitable[T]], attempts: int = DB_ATTEMPTS) -> T:
    """A read or an idempotent call that may meet PostgreSQL or Temporal restarting."""
    for attempt in range(attempts):
        try:
            return await call()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, RPCError, RuntimeError):
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


# Emails lower-cased: a re-import may have changed their case.
PAYMENTS_WITH_CARDS = """
SELECT p.id::text AS id, p.status, lower(c.email) AS email FROM payments p
JOIN customers c ON c.id = p.customer_id WHERE p.billing_period = $1"""

CUSTOMER_OF_PAYMENT = """
SELECT c.email, c.stripe_customer_id, c.payment_method_id, c.monthly_amount, c.currency
FROM payments p JOIN customers c ON c.id = p.customer_id WHERE p.id = $1::uuid"""


CUSTOMER_PERIODS = """
SELECT stripe_customer_id, status, amount_received FROM payments WHERE billing_period = $1"""

# What operators do to a payment's workflow during the chaos.
CANCEL_SIGNAL = "cancel signal"
CANCEL_REQUEST = "Temporal cancellation request"
TERMINATE = "terminate"
REIMPORT = "re-import, email case changed"


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
    (none where the payment did not succeed)."""
    captured: dict[tuple[str, str], list[int]] = {}
    for intent in intents:
        if intent["status"] == "succeeded":
            key = (intent["customer"], intent["metadata"].get("billing_period", "?"))
            captured.setdefault(key, []).append(intent["amount_received"])
    received = {
        (r["stripe_customer_id"], PERIOD): (r["amount_received"] or 0)
        if r["status"] == PaymentStatus.SUCCEEDED
        else 0
        for r in rows
    }
    twice = sum(len(amounts) > 1 for amounts in captured.values())
    differ = sum(
        sum(captured.get(key, [])) != received.get(key, 0) for key in captured.keys() | received
    )
    return twice, differ


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
        at least one payment each. Cancels go to cards that pay; a terminate or a re-import of
        the customer to any payment."""
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
        client = await Client.connect(
            stack.temporal.address, data_converter=pydantic_data_converter
        )
        pool = await open_pool(database_url, max_size=4)
        workers = Workers(environ, stack.root / "workers.log", self.tally)
        try:
            await migrate(pool)
            self.note(f"seeding {config.n} customers")
            cards = await seed(Ledger(pool), make_stripe_client(settings), config.n)
            add_faults(stack.sandbox, config)
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
                await self._chaos(pool, client, settings, workers, cards)
            finally:
                neighbour.cancel()
                await asyncio.gather(neighbour, return_exceptions=True)
            self.note("chaos over; `bill` resumes what was terminated, one worker finishes")
            stranded = await self._stranded(pool, client, self.attempted[TERMINATE])
            await self._bill_again(pool, client, settings, self.attempted[TERMINATE])
            stuck = await self._settle(pool, client, workers)
            workers.stop()
            return await self._verify(pool, client, settings, cards, stuck + stranded)
        finally:
            workers.kill()
            await pool.close()

    async def _chaos(
        self,
        pool: asyncpg.Pool,
        client: Client,
        settings: Settings,
        workers: Workers,
        cards: dict[str, str],
    ) -> None:
        """Kill workers, restart PostgreSQL and Temporal, and act as operators (see
        self.attempted), until every payment not terminated has ended, at most chaos_s."""
        config = self.config
        begin = time.monotonic()
        rows = await pool.fetch(PAYMENTS_WITH_CARDS, PERIOD)
        plan = {
            pid: (begin + at, kind) for pid, (at, kind) in self._plan_operators(rows, cards).items()
        }
        self.attempted = {
            kind: set() for kind in (CANCEL_SIGNAL, CANCEL_REQUEST, TERMINATE, REIMPORT)
        }
        restarts: list[tuple[float, str, Callable[[], None]]] = [
            (config.pg_restart_at_s, "PostgreSQL restart", self._restart_postgres),
            (config.temporal_restart_at_s, "Temporal restart", self._restart_temporal),
            (config.pg_crash_at_s, "PostgreSQL SIGKILL and start", self._crash_postgres),
        ]
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
            for pid, (when, kind) in list(plan.items()):
                if now >= when:
                    del plan[pid]
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
                if ended and not restarts and not plan:
                    break
            await asyncio.sleep(TICK_S)
        self.note(f"{self.tally.kills} kills so far, {remaining} payments open")

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

    async def _settle(self, pool: asyncpg.Pool, client: Client, workers: Workers) -> int:
        """Wait until every payment ends, or no workflow is left running to end it."""
        deadline = time.monotonic() + self.config.settle_max_s
        remaining = len(await retried(lambda: open_ids(pool)))
        while remaining and time.monotonic() < deadline:
            workers.ensure_running()
            await asyncio.sleep(STATUS_EVERY_S)
            remaining = len(await retried(lambda: open_ids(pool)))
            running = await retried(lambda: client.count_workflows(RUNNING))
            if remaining and not running.count:
                self.note(f"{remaining} payments open, but no workflow runs any more")
                break
        return remaining

    async def _verify(
        self,
        pool: asyncpg.Pool,
        client: Client,
        settings: Settings,
        cards: dict[str, str],
        stuck: int,
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
            should_pay = cards[row["email"]] == VISA and record.id not in cancelled
            if record.status == PaymentStatus.SUCCEEDED and not charged:
                lost += 1  # recorded as paid, never charged
            elif charged and record.status != PaymentStatus.SUCCEEDED:
                lost += 1  # charged, not recorded
            elif should_pay and record.status in TERMINAL_STATUSES and not charged:
                lost += 1  # should have been charged, never was
        comparison = await reconcile(ledger, make_stripe_client(settings), client, PERIOD)
        orphans = len(comparison.orphans) + len(comparison.in_flight)
        stripe_total = sum(i["amount_received"] for found in captured.values() for i in found)
        ledger_total = sum(
            p.amount_received or 0 for p in records.values() if p.status == PaymentStatus.SUCCEEDED
        )
        statuses = Counter(p.status.value for p in records.values())

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
        table.add_row("worker SIGKILLs", str(self.tally.kills))
        table.add_row("worker restarts", str(self.tally.worker_starts - 1))
        table.add_row("worker exits on its own", str(self.tally.worker_exits))
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
        table.add_row("captured at Stripe (minor units)", str(stripe_total))
        table.add_row("succeeded in ledger (minor units)", str(ledger_total))
        table.add_row("reconcile", "clean" if comparison.clean else "DISCREPANCIES")
        table.add_row("seconds", f"{time.monotonic() - self.started:.0f}")
        table.add_row("double charges", str(double))
        table.add_row("lost payments", str(lost))
        table.add_row("stuck payments", str(stuck))
        table.add_row("orphan authorizations", str(orphans))
        table.add_row("customer-periods captured twice", str(charged_twice))
        table.add_row("customer-periods captured != ledger", str(amount_differs))
        table.add_row("workflows closed without a result", str(unexplained))
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
        if self.tally.pg_restarts < 2 or self.tally.temporal_restarts < 1:
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
