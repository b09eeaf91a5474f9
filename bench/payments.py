"""Payments per second, end to end on the embedded stack: the Temporal worker against the
hand-rolled two-phase loop (bench/hand_rolled.py), side by side in one run.

For each Stripe limit setting (`off`, then `live`: 25 requests/s per endpoint, 100/s for the
account) and each system, it bills N payments through the persistent Temporal dev server,
PostgreSQL and a Stripe sandbox process with 150 ms + 0..jitter ms latency per request. Each
run gets its own database and sandbox. The system under test runs in its own process, so its
CPU and memory are its own.

    python -m bench.payments [--n 2000] [--limits off,live] [--systems temporal,hand-rolled]
        [--jitter-ms 50] [--out bench/results/DATE.json] [--label NAME] [--worker-arg=--flag=V]

Figures, per run: payments/s from launch until every row is final; p50/p95/p99 per payment
from its first authorization request reaching Stripe until its row is final (and since
launch); Temporal history events per payment (a sample); the worker's CPU seconds during the
run and its peak RSS; SQL statements per payment; Temporal server and PostgreSQL CPU; Stripe
requests and 429s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import asyncpg
import psutil
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from bench.measure import (
    commit,
    cpu_seconds,
    first_authorize_arrivals,
    machine,
    peak_rss_mb,
    percentile,
    tree_cpu_seconds,
)
from bench.seed import seed_customers
from bench.stack import BenchStack, SandboxProcess, sandbox_process
from billing.constants import workflow_id
from billing.ledger import Ledger, migrate, open_pool
from billing.models import BillingPolicy, BillingRunInput
from temporal_ops import launch_period, start_billing_run

PERIOD = "2026-11"
LATENCY_MS = 150
PROCESS_READY_TIMEOUT_S = 120.0
PROCESS_STOP_TIMEOUT_S = 30.0
POLL_INTERVAL_S = 0.25
# The billing run launches at most this many payments a second: for the benchmark, unpaced.
UNPACED = 1000.0
HISTORY_SAMPLE = 50
RESULTS_DIR = Path(__file__).parent / "results"

FINAL_TEMPORAL = """
SELECT count(*) FROM payments
WHERE billing_period = $1 AND status IN ('succeeded', 'failed', 'cancelled')"""
FINAL_HAND_ROLLED = """
SELECT count(*) FROM hand_rolled_payments
WHERE billing_period = $1 AND status IN ('success', 'failed')"""
OUTCOMES_TEMPORAL = """
SELECT id::text AS id, status, extract(epoch FROM updated_at)::float8 AS finished
FROM payments WHERE billing_period = $1"""
OUTCOMES_HAND_ROLLED = """
SELECT id::text AS id, status, extract(epoch FROM finalized_at)::float8 AS finished
FROM hand_rolled_payments WHERE billing_period = $1"""
SUCCEEDED = ("succeeded", "success")


@dataclass
class RunSpec:
    system: str  # "temporal" or "hand-rolled"
    limits: str  # "off" or "live"
    n: int
    jitter_ms: int
    label: str
    worker_args: list[str] = field(default_factory=list)
    timeout_s: float = 900.0
    processes: int = 1  # Temporal worker processes polling the same queues
    launch: str = "direct"  # "direct": from this process; "run": by the billing run, in the worker


@dataclass
class SystemProcess:
    process: asyncio.subprocess.Process
    stats_path: Path

    async def wait_ready(self) -> None:
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), PROCESS_READY_TIMEOUT_S)
        if line.strip() != b"ready":
            raise RuntimeError(f"the system under test did not start: {line!r}")

    async def stop(self) -> dict[str, Any]:
        if self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), PROCESS_STOP_TIMEOUT_S)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        try:
            stats: dict[str, Any] = json.loads(self.stats_path.read_text())
        except (OSError, ValueError):
            stats = {}
        return stats


async def start_process(argv: list[str], stats_path: Path, log_path: Path) -> SystemProcess:
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
        )
    system = SystemProcess(process, stats_path)
    try:
        await system.wait_ready()
    except BaseException:
        await system.stop()
        raise
    return system


async def wait_until_final(
    pool: asyncpg.Pool, query: str, n: int, deadline: float, systems: list[SystemProcess]
) -> int:
    done = 0
    while time.monotonic() < deadline:
        done = int(await pool.fetchval(query, PERIOD))
        if done >= n:
            return done
        exited = any(system.process.returncode is not None for system in systems)
        if exited and query == FINAL_TEMPORAL:
            raise RuntimeError("a worker exited during the run")
        await asyncio.sleep(POLL_INTERVAL_S)
    return done


async def history_events_per_payment(client: Client, payment_ids: list[str]) -> float:
    sample = random.Random(1).sample(payment_ids, min(HISTORY_SAMPLE, len(payment_ids)))
    counts = []
    for payment_id in sample:
        history = await client.get_workflow_handle(workflow_id(payment_id)).fetch_history()
        counts.append(len(history.events))
    return sum(counts) / len(counts) if counts else float("nan")


async def one_run(stack: BenchStack, client: Client, spec: RunSpec, index: int) -> dict[str, Any]:
    database = f"bench_{index}_{uuid.uuid4().hex[:8]}"
    database_url = stack.new_database(database)
    log_dir = stack.root / "logs"
    log_dir.mkdir(exist_ok=True)
    task_queue = f"bench-{index}-{uuid.uuid4().hex[:8]}"
    pool = await open_pool(database_url)
    try:
        await migrate(pool)
        async with sandbox_process(log_dir, f"{index}") as sandbox:
            await seed_customers(Ledger(pool), sandbox.url, spec.n)
            await sandbox.configure(
                latency_ms=LATENCY_MS,
                jitter_ms=spec.jitter_ms,
                rate_limits=spec.limits == "live",
            )
            return await measured_run(
                stack, client, spec, pool, sandbox, database_url, task_queue, log_dir, index
            )
    finally:
        await pool.close()


async def measured_run(
    stack: BenchStack,
    client: Client,
    spec: RunSpec,
    pool: asyncpg.Pool,
    sandbox: SandboxProcess,
    database_url: str,
    task_queue: str,
    log_dir: Path,
    index: int,
) -> dict[str, Any]:
    def stats_path(k: int) -> Path:
        return log_dir / f"system-{index}-{k}.json"

    if spec.system == "temporal":
        argvs = [
            [
                *("-m", "bench.temporal_worker", "--address", stack.temporal.address),
                *("--task-queue", task_queue, "--database-url", database_url),
                *("--stripe-base", sandbox.url, "--stats-out", str(stats_path(k))),
                *spec.worker_args,
            ]
            for k in range(spec.processes)
        ]
        final_query, outcomes_query = FINAL_TEMPORAL, OUTCOMES_TEMPORAL
    else:
        argvs = [
            [
                *("-m", "bench.hand_rolled", "--database-url", database_url),
                *("--stripe-base", sandbox.url, "--period", PERIOD),
                *("--stats-out", str(stats_path(0))),
                *spec.worker_args,
            ]
        ]
        final_query, outcomes_query = FINAL_HAND_ROLLED, OUTCOMES_HAND_ROLLED
    systems: list[SystemProcess] = []
    try:
        for k, argv in enumerate(argvs):
            log_path = log_dir / f"system-{index}-{k}.log"
            systems.append(await start_process(argv, stats_path(k), log_path))
        system = systems[0]
        pids = [s.process.pid for s in systems]
        sandbox_before = await sandbox.stats()
        cpu_before = sum(cpu_seconds(pid) for pid in pids)
        temporal_before = cpu_seconds(stack.temporal.pid)
        postgres_before = tree_cpu_seconds(stack.postgres.pid)
        starter_before = psutil.Process().cpu_times()
        launched = time.time()
        started = time.monotonic()
        deadline = started + spec.timeout_s
        if spec.system == "temporal" and spec.launch == "run":
            run = BillingRunInput(period=PERIOD, policy=BillingPolicy(), launch_rate=UNPACED)
            await start_billing_run(client, run, task_queue)
        elif spec.system == "temporal":
            await launch_period(Ledger(pool), client, PERIOD, task_queue, BillingPolicy())
        else:
            assert system.process.stdin is not None
            system.process.stdin.write(b"go\n")
            await system.process.stdin.drain()
        launch_seconds = time.monotonic() - started
        done = await wait_until_final(pool, final_query, spec.n, deadline, systems)
        elapsed = time.monotonic() - started
        worker_cpu = sum(cpu_seconds(pid) for pid in pids) - cpu_before
        peaks = [peak_rss_mb(pid) for pid in pids]
        peak_rss = sum(p for p in peaks if p is not None) if None not in peaks else None
        temporal_cpu = cpu_seconds(stack.temporal.pid) - temporal_before
        postgres_cpu = tree_cpu_seconds(stack.postgres.pid) - postgres_before
        starter_after = psutil.Process().cpu_times()
        sandbox_after = await sandbox.stats()
    finally:
        process_stats = merged_stats([await s.stop() for s in systems])
    rows = await pool.fetch(outcomes_query, PERIOD)
    arrivals = first_authorize_arrivals(sandbox.log_path)
    return summarize(
        spec,
        rows=rows,
        arrivals=arrivals,
        done=done,
        elapsed=elapsed,
        launched=launched,
        launch_seconds=launch_seconds,
        worker_cpu=process_stats.get("run_cpu_seconds", worker_cpu),
        peak_rss=peak_rss if peak_rss is not None else process_stats.get("peak_rss_mb"),
        process_stats=process_stats,
        temporal_cpu=temporal_cpu if spec.system == "temporal" else None,
        postgres_cpu=postgres_cpu,
        starter_cpu=(starter_after.user + starter_after.system)
        - (starter_before.user + starter_before.system),
        sandbox_delta=diff_stats(sandbox_before, sandbox_after),
        history_events=(
            await history_events_per_payment(client, [r["id"] for r in rows])
            if spec.system == "temporal"
            else None
        ),
    )


def diff_stats(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    by_endpoint = {
        k: v - before["by_endpoint"].get(k, 0)
        for k, v in after["by_endpoint"].items()
        if v - before["by_endpoint"].get(k, 0)
    }
    by_status = {
        k: v - before["by_status"].get(k, 0)
        for k, v in after["by_status"].items()
        if v - before["by_status"].get(k, 0)
    }
    return {
        "requests": after["requests"] - before["requests"],
        "rate_limited": after["rate_limited"] - before["rate_limited"],
        "by_endpoint": by_endpoint,
        "by_status": by_status,
    }


def merged_stats(per_process: list[dict[str, Any]]) -> dict[str, Any]:
    """One process's stats as they are; several workers' added up (peaks too: the memory of
    the whole fleet), with each process's own under "processes"."""
    if len(per_process) == 1:
        return per_process[0]
    keys = set().union(*per_process)
    merged: dict[str, Any] = {
        key: sum(stats.get(key, 0) for stats in per_process)
        for key in keys
        if all(isinstance(stats.get(key, 0), int | float) for stats in per_process)
    }
    return merged | {"processes": per_process}


def summarize(
    spec: RunSpec,
    *,
    rows: list[asyncpg.Record],
    arrivals: dict[str, float],
    done: int,
    elapsed: float,
    launched: float,
    launch_seconds: float,
    worker_cpu: float,
    peak_rss: float | None,
    process_stats: dict[str, Any],
    temporal_cpu: float | None,
    postgres_cpu: float,
    starter_cpu: float,
    sandbox_delta: dict[str, Any],
    history_events: float | None,
) -> dict[str, Any]:
    finished = [r for r in rows if r["finished"] is not None and r["status"] != "pending"]
    service = sorted(r["finished"] - arrivals[r["id"]] for r in finished if r["id"] in arrivals)
    since_launch = sorted(r["finished"] - launched for r in finished)
    succeeded = sum(1 for r in rows if r["status"] in SUCCEEDED)
    statements = process_stats.get("sql_statements")
    total_cpu = worker_cpu + (temporal_cpu or 0.0) + postgres_cpu + starter_cpu
    return {
        "system": spec.system,
        "stripe_limits": spec.limits,
        "label": spec.label,
        "n": spec.n,
        "completed": done,
        "succeeded": succeeded,
        "failed": len(rows) - succeeded,
        "seconds": round(elapsed, 2),
        "payments_per_second": round(done / elapsed, 2),
        "p50_seconds": round(percentile(service, 0.50), 3),
        "p95_seconds": round(percentile(service, 0.95), 3),
        "p99_seconds": round(percentile(service, 0.99), 3),
        "p50_since_launch_seconds": round(percentile(since_launch, 0.50), 2),
        "p99_since_launch_seconds": round(percentile(since_launch, 0.99), 2),
        "launch_seconds": round(launch_seconds, 2),
        "history_events_per_payment": (
            round(history_events, 1) if history_events is not None else None
        ),
        "worker_cpu_seconds": round(worker_cpu, 2),
        "worker_cpu_ms_per_payment": round(1000 * worker_cpu / max(done, 1), 2),
        "worker_peak_rss_mb": round(peak_rss, 1) if peak_rss is not None else None,
        "sql_statements_per_payment": (
            round(statements / max(done, 1), 2) if statements is not None else None
        ),
        "temporal_server_cpu_seconds": (
            round(temporal_cpu, 2) if temporal_cpu is not None else None
        ),
        "postgres_cpu_seconds": round(postgres_cpu, 2),
        "starter_cpu_seconds": round(starter_cpu, 2),
        # Every process of the system: the worker (or the loop), the Temporal server, PostgreSQL
        # and the launcher. The figure that carries across machines is payments per CPU-second.
        "cpu_ms_per_payment": round(1000 * total_cpu / max(done, 1), 2),
        "payments_per_cpu_second": round(done / total_cpu, 2) if total_cpu else None,
        "stripe_requests": sandbox_delta["requests"],
        "stripe_429s": sandbox_delta["rate_limited"],
        "stripe_requests_by_endpoint": sandbox_delta["by_endpoint"],
        "latency_ms": LATENCY_MS,
        "jitter_ms": spec.jitter_ms,
        "worker_args": spec.worker_args,
        "worker_processes": spec.processes,
        "launch": spec.launch,
        "process_stats": process_stats,
        "machine": machine(),
        "date": date.today().isoformat(),
    }


COLUMNS = (
    ("system", "system", "{}"),
    ("limits", "stripe_limits", "{}"),
    ("label", "label", "{}"),
    ("n", "completed", "{}"),
    ("pay/s", "payments_per_second", "{:.1f}"),
    ("p50 s", "p50_seconds", "{:.2f}"),
    ("p95 s", "p95_seconds", "{:.2f}"),
    ("p99 s", "p99_seconds", "{:.2f}"),
    ("events/pay", "history_events_per_payment", "{}"),
    ("wrk CPU s", "worker_cpu_seconds", "{:.1f}"),
    ("wrk RSS MB", "worker_peak_rss_mb", "{:.0f}"),
    ("SQL/pay", "sql_statements_per_payment", "{}"),
    ("srv CPU s", "temporal_server_cpu_seconds", "{}"),
    ("pg CPU s", "postgres_cpu_seconds", "{:.1f}"),
    ("CPU ms/pay", "cpu_ms_per_payment", "{:.1f}"),
    ("pay/CPU-s", "payments_per_cpu_second", "{:.1f}"),
    ("429s", "stripe_429s", "{}"),
    ("failed", "failed", "{}"),
)


def table(runs: list[dict[str, Any]]) -> str:
    header = [title for title, _, _ in COLUMNS]
    lines = [
        [fmt.format(run[key]) if run[key] is not None else "-" for _, key, fmt in COLUMNS]
        for run in runs
    ]
    widths = [max(len(r[i]) for r in [header, *lines]) for i in range(len(header))]
    out = [
        "  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True))
        for row in [header, *lines]
    ]
    return "\n".join(out)


def ratios(runs: list[dict[str, Any]]) -> list[str]:
    notes = []
    for limits in ("off", "live"):
        temporal = [r for r in runs if r["system"] == "temporal" and r["stripe_limits"] == limits]
        hand = [r for r in runs if r["system"] == "hand-rolled" and r["stripe_limits"] == limits]
        if temporal and hand:
            t, h = temporal[0], hand[0]
            notes.append(
                f"limits {limits}: temporal/hand-rolled throughput "
                f"{t['payments_per_second'] / h['payments_per_second']:.2f}, worker CPU per "
                f"payment {t['worker_cpu_ms_per_payment'] / h['worker_cpu_ms_per_payment']:.1f}x, "
                f"all CPU per payment {t['cpu_ms_per_payment'] / h['cpu_ms_per_payment']:.1f}x"
            )
    return notes


async def run_all(
    specs: list[RunSpec],
    out: Path | None,
    earlier: list[dict[str, Any]],
    server_args: tuple[str, ...] = (),
) -> list[dict[str, Any]]:
    stack = BenchStack(server_args)
    runs: list[dict[str, Any]] = []
    try:
        await asyncio.to_thread(stack.start)
        client = await Client.connect(
            stack.temporal.address, data_converter=pydantic_data_converter
        )
        for index, spec in enumerate(specs):
            print(
                f"[{datetime.now(UTC):%H:%M:%S}] run {index + 1}/{len(specs)}: {spec.system}, "
                f"limits {spec.limits}, n={spec.n} {spec.label}",
                flush=True,
            )
            run = await one_run(stack, client, spec, index)
            runs.append(run)
            print(table([run]).splitlines()[1], flush=True)
            if out is not None:
                write_results(out, earlier + runs)
    finally:
        await asyncio.to_thread(stack.close)
    return runs


def write_results(out: Path, runs: list[dict[str, Any]]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"machine": machine(), "commit": commit(), "runs": runs}, indent=2) + "\n"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--limits", default="off,live")
    parser.add_argument("--systems", default="temporal,hand-rolled")
    parser.add_argument("--jitter-ms", type=int, default=50)
    parser.add_argument("--label", default="default")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--append", action="store_true", help="add to the runs in --out")
    parser.add_argument("--no-out", action="store_true", help="print only")
    parser.add_argument(
        "--worker-arg", action="append", default=[], help="passed to the Temporal worker"
    )
    parser.add_argument(
        "--hand-rolled-arg", action="append", default=[], help="passed to the hand-rolled loop"
    )
    parser.add_argument(
        "--server-arg", action="append", default=[], help="passed to `temporal server start-dev`"
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="per run, seconds")
    parser.add_argument(
        "--launch",
        choices=("direct", "run"),
        default="direct",
        help="Temporal: start the payments from this process (direct, timed apart), or through "
        "the billing run's launch activity in the worker, as the Schedule does (run)",
    )
    parser.add_argument(
        "--worker-processes",
        type=int,
        default=1,
        help="Temporal worker processes on the same queues; their CPU and peak RSS are summed",
    )
    return parser


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    if args.worker_processes < 1:
        parser.error(f"--worker-processes must be 1 or more, not {args.worker_processes}")
    specs = [
        RunSpec(
            system=system,
            limits=limits,
            n=args.n,
            jitter_ms=args.jitter_ms,
            label=args.label,
            worker_args=args.worker_arg if system == "temporal" else args.hand_rolled_arg,
            timeout_s=args.timeout,
            processes=args.worker_processes if system == "temporal" else 1,
            launch=args.launch,
        )
        for limits in args.limits.split(",")
        for system in args.systems.split(",")
    ]
    out = None if args.no_out else args.out or RESULTS_DIR / f"{date.today().isoformat()}.json"
    earlier: list[dict[str, Any]] = []
    if args.append and out is not None and out.exists():
        earlier = json.loads(out.read_text())["runs"]
    runs = asyncio.run(run_all(specs, out, earlier, tuple(args.server_arg)))
    print()
    print(table(runs))
    for note in ratios(runs):
        print(note)
    if out is not None:
        print(f"results: {out}")


if __name__ == "__main__":
    main()
