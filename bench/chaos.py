"""Chaos soak: N payments through the real worker while everything around it breaks.

- The Stripe sandbox answers with latency, 429s (its test-mode rate limit of 25 requests/s),
  `error_before`, `drop_after` and `error_after`, drawn at random.
- The worker (`python worker.py`) is SIGKILLed and restarted every few seconds.
- PostgreSQL is restarted twice: once cleanly, once by SIGKILL of the postmaster.
- The Temporal dev server, with its SQLite state on disk, is restarted once.

Every loop is bounded in count and time. At the end it prints a table and exits 1 if any
payment was double charged, lost, stuck or left an orphan authorization, if `reconcile` is not
clean, or if the sandbox's captured total differs from the ledger's succeeded total.

    python -m bench.chaos --n 500        # `make chaos N=500`
"""

import argparse
import asyncio
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
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import stripe
from pydantic import SecretStr
from rich.console import Console
from rich.table import Table
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCError

from billing.constants import TERMINAL_STATUSES, PaymentStatus, workflow_id
from billing.durations import parse_duration
from billing.ledger import Ledger, ReconcileLedger, migrate, open_pool
from billing.models import NewCustomer
from billing.reconcile import reconcile
from billing.settings import Settings
from billing.stack.postgres import EmbeddedPostgres
from billing.stack.temporal import EmbeddedTemporal
from billing.stripe_client import make_stripe_client
from starter import execute
from stripe_sandbox import FaultRule, Sandbox

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
STATUS_EVERY_S = 1.0
SIGNAL_ATTEMPTS = 5
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
    cancel_share: float = 0.03
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


PAYMENTS_WITH_CARDS = """
SELECT p.id::text AS id, p.status, c.email FROM payments p
JOIN customers c ON c.id = p.customer_id WHERE p.billing_period = $1"""


async def open_count(pool: asyncpg.Pool) -> int:
    rows = await pool.fetch(PAYMENTS_WITH_CARDS, PERIOD)
    return sum(PaymentStatus(r["status"]) not in TERMINAL_STATUSES for r in rows)


class Soak:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.tally = Tally()
        self.stack = Stack(config)
        self.started = time.monotonic()

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
            billed = await execute(
                ["bill", PERIOD, "--capture-after", config.capture_delay], settings, client
            )
            if billed != 0:
                raise RuntimeError(f"bill failed with exit code {billed}")
            # The first worker meets a backlog, as after an outage: a burst into the rate limit.
            workers.start()
            self.note("billed; chaos begins")
            neighbour = asyncio.create_task(self._neighbour(make_stripe_client(settings)))
            try:
                cancelled = await self._chaos(pool, client, workers, cards)
            finally:
                neighbour.cancel()
                await asyncio.gather(neighbour, return_exceptions=True)
            self.note("chaos over; one worker finishes what is left")
            stuck = await self._settle(pool, client, workers)
            workers.stop()
            return await self._verify(pool, settings, client, cards, cancelled, stuck)
        finally:
            workers.kill()
            await pool.close()

    async def _chaos(
        self, pool: asyncpg.Pool, client: Client, workers: Workers, cards: dict[str, str]
    ) -> set[str]:
        config = self.config
        begin = time.monotonic()
        rows = await pool.fetch(PAYMENTS_WITH_CARDS, PERIOD)
        payable = [r["id"] for r in rows if cards[r["email"]] == VISA]
        to_cancel = self.rng.sample(payable, int(len(payable) * config.cancel_share))
        cancel_at = {pid: begin + self.rng.uniform(1, 20) for pid in to_cancel}
        cancelled: set[str] = set()
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
            for pid, when in list(cancel_at.items()):
                if now >= when:
                    del cancel_at[pid]
                    if await self._send_cancel(client, pid):
                        cancelled.add(pid)
            if now >= next_status:
                next_status = now + STATUS_EVERY_S
                try:
                    remaining = await open_count(pool)
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                    remaining = -1
                if remaining == 0 and not restarts and not cancel_at:
                    break
            await asyncio.sleep(TICK_S)
        self.note(f"{self.tally.kills} kills so far, {remaining} payments open")
        return cancelled

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

    async def _send_cancel(self, client: Client, payment_id: str) -> bool:
        handle = client.get_workflow_handle(workflow_id(payment_id))
        for _ in range(SIGNAL_ATTEMPTS):
            try:
                await handle.signal("cancel")
                self.tally.cancels_sent += 1
                return True
            except RPCError:
                await asyncio.sleep(1)  # Temporal restarting; a finished workflow refuses too
        return False

    async def _settle(self, pool: asyncpg.Pool, client: Client, workers: Workers) -> int:
        """Wait until every payment ends, or no workflow is left running to end it."""
        deadline = time.monotonic() + self.config.settle_max_s
        remaining = await retried(lambda: open_count(pool))
        while remaining and time.monotonic() < deadline:
            workers.ensure_running()
            await asyncio.sleep(STATUS_EVERY_S)
            remaining = await retried(lambda: open_count(pool))
            running = await retried(lambda: client.count_workflows(RUNNING))
            if remaining and not running.count:
                self.note(f"{remaining} payments open, but no workflow runs any more")
                break
        return remaining

    async def _verify(
        self,
        pool: asyncpg.Pool,
        settings: Settings,
        client: Client,
        cards: dict[str, str],
        cancelled: set[str],
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
        out.print(table)

        problems = []
        if double or lost or stuck or orphans:
            problems.append("double charges, lost, stuck or orphans")
        if not comparison.clean:
            problems += [f"reconcile: {f.kind.value} {f.intent_id}" for f in comparison.findings]
        if stripe_total != ledger_total:
            problems.append("the sandbox's captured total differs from the ledger's")
        if self.tally.pg_restarts < 2 or self.tally.temporal_restarts < 1:
            problems.append("the restarts did not all happen")
        for problem in problems:
            log.print(f"FAIL: {problem}")
        return 1 if problems else 0


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
