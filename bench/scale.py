"""Launching one period for N customers through the real BillingRunWorkflow, timed alone.

It starts its own embedded PostgreSQL and Temporal dev server (SQLite with the same pragmas
and dynamic config as `make up`) in a temporary folder, seeds N active customers with one
INSERT ... SELECT generate_series (fake but well-formed `cus_`/`pm_` ids: no Stripe call is
made), runs `worker.py` as a subprocess, and starts the period's billing run with its
payments on a task queue that no worker polls and a launch rate high enough to leave the
launch unpaced. When the run's `progress` query leaves "launching", the run is terminated
(it would wait for payments that never run) and the figures are written as JSON.

    python -m bench.scale [--n 10000] [--launch-rate 10000] [--page-size 1000]
        [--pages-per-run 10] [--out bench/results/DATE-scale-N.json]

Figures: payments started per second and time to launch (from the run's own history, and as
polled); each run's history length and the continue-as-new count; each page's activity
time; the worker's RSS at the start and end of the launch, sampled every second and at its
peak (VmHWM); this process's peak RSS; CPU of worker, Temporal server and PostgreSQL during
the launch; PostgreSQL table, heap and index sizes; the Temporal SQLite file's size.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import asyncpg
import psutil
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowQueryFailedError
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCError

from bench.measure import commit, cpu_seconds, machine, peak_rss_mb, tree_cpu_seconds
from bench.stack import BenchStack
from billing.constants import billing_run_id
from billing.ledger import migrate, open_pool
from billing.models import BillingPolicy, BillingRunInput, RunProgress
from temporal_ops import billing_run, run_progress, start_billing_run

PERIOD = "2026-11"
RUN_QUEUE = "scale-run"
# No worker polls this queue: the payments are started and then left alone.
UNPOLLED_QUEUE = "scale-payments-unpolled"
ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).parent / "results"
WORKER_READY_LINE = "worker polling task queue"
WORKER_READY_TIMEOUT_S = 120.0
WORKER_STOP_TIMEOUT_S = 30.0
SAMPLE_INTERVAL_S = 1.0
TABLES = ("customers", "payments", "payment_events")
MB = 2**20

SEED_CUSTOMERS = """
INSERT INTO customers (email, stripe_customer_id, payment_method_id, monthly_amount, currency)
SELECT format('scale-%s@example.com', lpad(g::text, 8, '0')),
       'cus_scale' || lpad(g::text, 8, '0'),
       'pm_scale' || lpad(g::text, 8, '0'),
       500 + (g * 137) % 9500,
       'usd'
FROM generate_series(1, $1::int) AS g"""

TABLE_SIZES = """
SELECT pg_total_relation_size($1::regclass) AS total,
       pg_relation_size($1::regclass) AS heap,
       pg_indexes_size($1::regclass) AS indexes"""


@dataclass
class WorkerProcess:
    """`worker.py` as a child process, its log in a file."""

    process: asyncio.subprocess.Process
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def rss_mb(self) -> float | None:
        try:
            return float(psutil.Process(self.pid).memory_info().rss) / MB
        except psutil.NoSuchProcess:
            return None

    async def wait_ready(self) -> None:
        deadline = time.monotonic() + WORKER_READY_TIMEOUT_S
        while WORKER_READY_LINE not in self.log_path.read_text(errors="replace"):
            if self.process.returncode is not None:
                raise RuntimeError(f"the worker exited during start; see {self.log_path}")
            if time.monotonic() >= deadline:
                raise RuntimeError(f"the worker did not start; see {self.log_path}")
            await asyncio.sleep(0.1)

    async def stop(self) -> None:
        if self.process.returncode is not None:
            return
        self.process.terminate()
        try:
            await asyncio.wait_for(self.process.wait(), WORKER_STOP_TIMEOUT_S)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


async def start_worker(address: str, database_url: str, log_path: Path) -> WorkerProcess:
    # Nothing from this shell's Temporal profile: the worker talks to the bench's server only.
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEMPORAL_")}
    env |= {
        "TEMPORAL_ADDRESS": address,
        "TEMPORAL_NAMESPACE": "default",
        "DATABASE_URL": database_url,
        "TASK_QUEUE": RUN_QUEUE,
        # Never called (the payments run nowhere); a closed loopback port if it were.
        "STRIPE_API_BASE": "http://127.0.0.1:9",
        "METRICS_PORT": "0",  # 9464 may be the embedded stack's worker's
    }
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(ROOT / "worker.py"),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )
    worker = WorkerProcess(process, log_path)
    try:
        await worker.wait_ready()
    except BaseException:
        await worker.stop()
        raise
    return worker


def own_rss_mb() -> float:
    return float(psutil.Process().memory_info().rss) / MB


def own_peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def process_rss_mb(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        return float(psutil.Process(pid).memory_info().rss) / MB
    except psutil.NoSuchProcess:
        return None


async def seed(pool: asyncpg.Pool, n: int) -> float:
    started = time.monotonic()
    async with pool.acquire() as conn:
        await conn.execute(SEED_CUSTOMERS, n)
        await conn.execute("ANALYZE customers")
    return time.monotonic() - started


async def table_sizes(pool: asyncpg.Pool) -> dict[str, dict[str, float]]:
    sizes: dict[str, dict[str, float]] = {}
    for table in TABLES:
        row = await pool.fetchrow(TABLE_SIZES, table)
        assert row is not None
        rows = await pool.fetchval(f"SELECT count(*) FROM {table}")
        sizes[table] = {
            "rows": int(rows),
            "total_mb": round(row["total"] / MB, 2),
            "heap_mb": round(row["heap"] / MB, 2),
            "indexes_mb": round(row["indexes"] / MB, 2),
        }
    return sizes


@dataclass
class Sample:
    seconds: float
    worker_rss_mb: float | None
    temporal_rss_mb: float | None
    started: int | None  # payments started so far, as the run's progress query says
    phase: str | None

    def row(self) -> list[Any]:
        worker, server = self.worker_rss_mb, self.temporal_rss_mb
        return [
            round(self.seconds, 1),
            None if worker is None else round(worker, 1),
            None if server is None else round(server, 1),
            self.started,
            self.phase,
        ]


@dataclass
class Launch:
    polled_seconds: float
    progress: RunProgress
    samples: list[Sample] = field(default_factory=list)
    query_failures: int = 0


async def query_progress(client: Client) -> RunProgress | None:
    try:
        return await run_progress(billing_run(client, PERIOD))
    except (RPCError, WorkflowQueryFailedError):
        return None  # the run is between tasks or continuing as new; asked again next second


async def watch_launch(
    client: Client, worker: WorkerProcess, temporal_pid: int | None, timeout_s: float
) -> Launch:
    """Every second: the worker's and the Temporal server's RSS and the run's progress, until
    the run leaves "launching"."""
    started = time.monotonic()
    samples: list[Sample] = []
    failures = 0
    tick = started
    while True:
        rss, server_rss = worker.rss_mb(), process_rss_mb(temporal_pid)
        progress = await query_progress(client)
        now = time.monotonic()
        failures += progress is None
        samples.append(
            Sample(
                seconds=now - started,
                worker_rss_mb=rss,
                temporal_rss_mb=server_rss,
                started=None if progress is None else progress.launched.started,
                phase=None if progress is None else progress.phase,
            )
        )
        if progress is not None and progress.phase != "launching":
            return Launch(now - started, progress, samples, failures)
        if worker.process.returncode is not None:
            raise RuntimeError(f"the worker exited during the launch; see {worker.log_path}")
        if now - started > timeout_s:
            raise TimeoutError(f"the launch did not end within {timeout_s:.0f}s")
        tick += SAMPLE_INTERVAL_S
        await asyncio.sleep(max(0.0, tick - time.monotonic()))


async def run_histories(client: Client, expected_runs: int) -> list[dict[str, Any]]:
    """Each run of the period's billing run, oldest first: status, history length, and its
    launch_page activities' times (scheduled to completed)."""
    query = f'WorkflowId = "{billing_run_id(PERIOD)}"'
    deadline = time.monotonic() + 30
    while True:  # visibility may trail the last continue-as-new by a moment
        executions = [e async for e in client.list_workflows(query)]
        if len(executions) >= expected_runs or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    executions.sort(key=lambda e: e.start_time)
    runs = []
    for execution in executions:
        handle = client.get_workflow_handle(execution.id, run_id=execution.run_id)
        history = await handle.fetch_history()
        scheduled: dict[int, datetime] = {}
        pages: list[float] = []
        attempts = 0
        event_types: dict[str, int] = {}
        completed_at: datetime | None = None
        for event in history.events:
            at = event.event_time.ToDatetime().replace(tzinfo=UTC)
            name = EventType.Name(event.event_type).removeprefix("EVENT_TYPE_")
            event_types[name] = event_types.get(name, 0) + 1
            if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                scheduled[event.event_id] = at
            elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
                attempts = max(attempts, event.activity_task_started_event_attributes.attempt)
            elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
                attributes = event.activity_task_completed_event_attributes
                pages.append((at - scheduled[attributes.scheduled_event_id]).total_seconds())
                completed_at = at
        first = history.events[0].event_time.ToDatetime().replace(tzinfo=UTC)
        # Visibility may not show the termination yet; the run itself knows its status.
        described = (await handle.describe()).status
        status = described.name if described else None
        runs.append(
            {
                "run_id": execution.run_id,
                "status": status,
                "history_length": len(history.events),
                "visibility_history_length": execution.history_length,
                "pages": len(pages),
                "page_seconds": [round(p, 2) for p in pages],
                "most_attempts_of_a_page": attempts,
                "event_types": event_types,
                "started_at": first.isoformat(),
                "last_page_completed_at": completed_at.isoformat() if completed_at else None,
            }
        )
    return runs


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    starter_rss_at_start = own_rss_mb()
    stack = BenchStack()
    try:
        await asyncio.to_thread(stack.start)
        database_url = stack.new_database("scale")
        pool = await open_pool(database_url)
        try:
            return await measure_on(stack, pool, database_url, args, starter_rss_at_start)
        finally:
            await pool.close()
    finally:
        await asyncio.to_thread(stack.close)


async def measure_on(
    stack: BenchStack,
    pool: asyncpg.Pool,
    database_url: str,
    args: argparse.Namespace,
    starter_rss_at_start: float,
) -> dict[str, Any]:
    await migrate(pool)
    log(f"seeding {args.n} customers")
    seed_seconds = await seed(pool, args.n)
    client = await Client.connect(stack.temporal.address, data_converter=pydantic_data_converter)
    log_dir = stack.root / "logs"
    log_dir.mkdir(exist_ok=True)
    worker = await start_worker(stack.temporal.address, database_url, log_dir / "worker.log")
    try:
        worker_rss_at_start = worker.rss_mb()
        worker_cpu = cpu_seconds(worker.pid)
        temporal_cpu = cpu_seconds(stack.temporal.pid)
        postgres_cpu = tree_cpu_seconds(stack.postgres.pid)
        starter_cpu = sum(psutil.Process().cpu_times()[:2])
        run = BillingRunInput(
            period=PERIOD,
            policy=BillingPolicy(),
            launch_rate=args.launch_rate,
            page_size=args.page_size,
            pages_per_run=args.pages_per_run,
            payments_task_queue=UNPOLLED_QUEUE,
        )
        log(f"launching {args.n} payments")
        await start_billing_run(client, run, RUN_QUEUE)
        launch = await watch_launch(client, worker, stack.temporal.pid, args.timeout)
        worker_rss_at_end = worker.rss_mb()
        worker_cpu = cpu_seconds(worker.pid) - worker_cpu
        temporal_cpu = cpu_seconds(stack.temporal.pid) - temporal_cpu
        postgres_cpu = tree_cpu_seconds(stack.postgres.pid) - postgres_cpu
        starter_cpu = sum(psutil.Process().cpu_times()[:2]) - starter_cpu
        log(f"launched in {launch.polled_seconds:.1f}s (polled); terminating the run")
        # It would wait for payments that never run; the dev server's state goes with its
        # temporary folder, so the payment workflows are left as they are.
        await billing_run(client, PERIOD).terminate(reason="scale benchmark: launch measured")
        runs = await run_histories(client, launch.progress.runs)
        payment_workflows = (await client.count_workflows('WorkflowType = "PaymentWorkflow"')).count
        worker_peak = peak_rss_mb(worker.pid)
        temporal_rss = process_rss_mb(stack.temporal.pid)
        temporal_peak = peak_rss_mb(stack.temporal.pid) if stack.temporal.pid else None
    finally:
        await worker.stop()
    problems = worker_log_problems(worker.log_path)
    sizes = await table_sizes(pool)
    return summarize(
        args,
        launch=launch,
        runs=runs,
        seed_seconds=seed_seconds,
        payment_workflows=payment_workflows,
        worker={
            "rss_mb_at_launch_start": worker_rss_at_start,
            "rss_mb_at_launch_end": worker_rss_at_end,
            "peak_rss_mb": worker_peak,
            "cpu_seconds": worker_cpu,
            "log_warnings_and_errors": len(problems),
            "log_problems_first": problems[:5],
        },
        temporal={
            "cpu_seconds": temporal_cpu,
            "rss_mb_at_end": temporal_rss,
            "peak_rss_mb": temporal_peak,
            "sqlite_mb": sqlite_mb(stack),
        },
        postgres={"cpu_seconds": postgres_cpu, "tables": sizes},
        starter={
            "rss_mb_at_start": starter_rss_at_start,
            "cpu_seconds": starter_cpu,
            "peak_rss_mb": own_peak_rss_mb(),
        },
    )


def worker_log_problems(log_path: Path) -> list[str]:
    """The worker's WARNING and ERROR lines (a retried page, a slow heartbeat...)."""
    lines = log_path.read_text(errors="replace").splitlines()
    return [line for line in lines if " WARNING " in line or " ERROR " in line]


def sqlite_mb(stack: BenchStack) -> float:
    files = [stack.temporal.db_file, *stack.temporal.data_dir.glob("temporal.db-*")]
    return round(sum(f.stat().st_size for f in files if f.exists()) / MB, 1)


def rounded(values: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 1) if isinstance(v, float) else v for k, v in values.items()}


def summarize(
    args: argparse.Namespace,
    *,
    launch: Launch,
    runs: list[dict[str, Any]],
    seed_seconds: float,
    payment_workflows: int,
    worker: dict[str, Any],
    temporal: dict[str, Any],
    postgres: dict[str, Any],
    starter: dict[str, Any],
) -> dict[str, Any]:
    launched = launch.progress.launched
    started_at = datetime.fromisoformat(runs[0]["started_at"])
    ends = [r["last_page_completed_at"] for r in runs if r["last_page_completed_at"]]
    ended_at = datetime.fromisoformat(max(ends)) if ends else started_at
    launch_seconds = (ended_at - started_at).total_seconds()
    pages = [p for r in runs for p in r["page_seconds"]]
    rss = [s.worker_rss_mb for s in launch.samples if s.worker_rss_mb is not None]
    return {
        "n": args.n,
        "period": PERIOD,
        "launch_rate": args.launch_rate,
        "page_size": args.page_size,
        "pages_per_run": args.pages_per_run,
        "payments_started": launched.started,
        "rows_created": launched.rows_created,
        "payment_workflows_on_server": payment_workflows,
        "launch_seconds": round(launch_seconds, 2),
        "launch_seconds_polled": round(launch.polled_seconds, 2),
        "payments_started_per_second": round(launched.started / launch_seconds, 1)
        if launch_seconds
        else None,
        "seed_seconds": round(seed_seconds, 2),
        "runs": len(runs),
        "continue_as_new": sum(1 for r in runs if r["status"] == "CONTINUED_AS_NEW"),
        "history_length_per_run": [r["history_length"] for r in runs],
        "page_seconds": {
            "count": len(pages),
            "mean": round(sum(pages) / len(pages), 2) if pages else None,
            "min": min(pages, default=None),
            "max": max(pages, default=None),
            "first_10_mean": round(sum(pages[:10]) / len(pages[:10]), 2) if pages else None,
            "last_10_mean": round(sum(pages[-10:]) / len(pages[-10:]), 2) if pages else None,
        },
        "worker": {
            **rounded(worker),
            "rss_mb_sampled_min": round(min(rss), 1) if rss else None,
            "rss_mb_sampled_max": round(max(rss), 1) if rss else None,
        },
        "starter": rounded(starter),
        "temporal_server": rounded(temporal),
        "postgres": {
            "cpu_seconds": round(postgres["cpu_seconds"], 1),
            "tables": postgres["tables"],
        },
        "progress_query_failures": launch.query_failures,
        # [seconds since the run started, worker RSS MB, Temporal server RSS MB,
        #  payments started, phase]
        "samples": [s.row() for s in launch.samples],
        "billing_runs": runs,
        "machine": machine(),
        "commit": commit(),
        "date": date.today().isoformat(),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def log(message: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {message}", flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=10_000, help="active customers")
    parser.add_argument(
        "--launch-rate", type=float, default=10_000.0, help="payments/s the run may start"
    )
    parser.add_argument("--page-size", type=int, default=1000, help="customers a page, <= 1000")
    parser.add_argument("--pages-per-run", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=3600.0, help="for the launch, seconds")
    parser.add_argument("--out", type=Path, default=None)
    return parser


def main() -> None:
    args = build_parser().parse_args()
    out = args.out or RESULTS_DIR / f"{date.today().isoformat()}-scale-{args.n}.json"
    result = asyncio.run(measure(args))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    worker = result["worker"]
    print(
        f"n={result['n']}: {result['payments_started']} started in {result['launch_seconds']}s "
        f"({result['payments_started_per_second']}/s), {result['runs']} runs "
        f"(histories {result['history_length_per_run']}), worker RSS "
        f"{worker['rss_mb_at_launch_start']} -> {worker['rss_mb_at_launch_end']} MB "
        f"(peak {worker['peak_rss_mb']}), starter peak {result['starter']['peak_rss_mb']} MB"
    )
    print(f"results: {out}")


if __name__ == "__main__":
    main()
